#include "isolate/clone_vm.h"

#if defined(__x86_64__)
asm(".text\n"
    ".globl cloister_clone3_vm\n"
    ".hidden cloister_clone3_vm\n"
    ".type cloister_clone3_vm,@function\n"
    "cloister_clone3_vm:\n"
    "  mov %rdx, %r8\n"  // fn and arg: r8 and r9 survive the syscall
    "  mov %rcx, %r9\n"
    "  mov $435, %eax\n"  // __NR_clone3
    "  syscall\n"
    "  test %rax, %rax\n"
    "  jz 1f\n"
    "  ret\n"
    "1:\n"  // the child, on its own stack
    "  xor %ebp, %ebp\n"
    "  mov %r9, %rdi\n"
    "  call *%r8\n"
    "  mov $231, %eax\n"  // __NR_exit_group, should fn ever return
    "  mov $127, %edi\n"
    "  syscall\n"
    "  hlt\n"
    ".size cloister_clone3_vm, .-cloister_clone3_vm\n");
#endif

// A child that shares the caller's memory (clone3 with CLONE_VM): no page
// tables copied, no copy-on-write faults left behind in the caller. Used
// for the children that only make a namespace or exec: the init's clone
// child (spawn.cc) and the maker of a user namespace (userns.cc).
//
// Such a child runs on a stack of its own, which no C function can switch
// to: cloister_clone3_vm does, as glibc's clone does for clone(2). The
// child may only make system calls through child_syscall (no libc: no PLT
// lookup, no errno, no lock the caller may hold), and must not return.
#pragma once

#include <linux/sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>

#include <type_traits>

// A system call's argument as child_syscall takes it: a pointer or a number.
template <class T>
constexpr long child_arg(T v) {
  if constexpr (std::is_pointer_v<T>)
    return reinterpret_cast<long>(v);
  else
    return static_cast<long>(v);
}

#if defined(__x86_64__)
#define CLOISTER_CLONE3_VM 1
// -errno on failure.
static inline long child_syscall(long n, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0,
                                 long a5 = 0) {
  register long r10 asm("r10") = a4;
  register long r8 asm("r8") = a5;
  long ret;
  asm volatile("syscall"
               : "=a"(ret)
               : "a"(n), "D"(a1), "S"(a2), "d"(a3), "r"(r10), "r"(r8)
               : "rcx", "r11", "memory");
  return ret;
}
// Returns the child's pid, or -errno; the child runs fn(arg) on args->stack
// (16-byte aligned, args->stack_size bytes) and exits 127 should fn return.
extern "C" long cloister_clone3_vm(clone_args*, size_t, void (*fn)(void*), void* arg);
#else
static inline long child_syscall(long n, long a1 = 0, long a2 = 0, long a3 = 0, long a4 = 0,
                                 long a5 = 0) {
  long r = ::syscall(n, a1, a2, a3, a4, a5);
  return r < 0 ? -errno : r;
}
#endif

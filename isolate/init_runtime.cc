// The C runtime of cloister-init on x86_64: its entry point and the few libc
// functions the init's steps call, each a raw system call. The init is then
// a program of about 30 KiB with no libc start-up (no IRELATIVE relocations,
// no CPUID probing, no locale, no TLS, no stdio): half a millisecond less
// per cold sandbox than a static glibc build (the copy into the memfd and
// the start-up), and much less code in every sandbox's PID 1.
//
// The declarations are glibc's (the init's sources include its headers);
// only the definitions are ours. errno is one static int: the init is single
// threaded, and its payload (which shares its memory until execve) only
// writes errno on the way to reporting a failure.
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#if !defined(__x86_64__)
#error "init_runtime.cc is the x86_64 runtime of cloister-init; other targets link glibc"
#endif

namespace {

int g_errno = 0;

inline long raw(long n, long a = 0, long b = 0, long c = 0, long d = 0, long e = 0, long f = 0) {
  register long r10 asm("r10") = d;
  register long r8 asm("r8") = e;
  register long r9 asm("r9") = f;
  long ret;
  asm volatile("syscall"
               : "=a"(ret)
               : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
               : "rcx", "r11", "memory");
  return ret;
}

// A libc return: -1 with errno set, or the value.
inline long ret(long r) {
  if (r < 0 && r > -4096) {
    g_errno = static_cast<int>(-r);
    return -1;
  }
  return r;
}

template <class T>
long L(T* v) {
  return reinterpret_cast<long>(v);
}
template <class T>
long L(T v) {
  return static_cast<long>(v);
}

// The kernel's struct sigaction (not glibc's: its mask is 8 bytes).
struct KSigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)();
  uint64_t mask;
};
constexpr unsigned long kSaRestorer = 0x04000000;

// The heap: bump allocation in 1 MiB mappings; the init frees nothing.
char* g_heap = nullptr;
size_t g_heap_left = 0;

}  // namespace

// Signal handlers return through this: rt_sigreturn.
extern "C" void cloister_init_restorer();
asm(".text\n"
    ".globl cloister_init_restorer\n"
    ".hidden cloister_init_restorer\n"
    ".type cloister_init_restorer,@function\n"
    "cloister_init_restorer:\n"
    "  mov $15, %eax\n"
    "  syscall\n"
    "  hlt\n"
    ".size cloister_init_restorer, .-cloister_init_restorer\n");

// The entry point: argc and argv from the initial stack, main, exit_group.
asm(".text\n"
    ".globl _start\n"
    ".type _start,@function\n"
    "_start:\n"
    "  xor %ebp, %ebp\n"
    "  mov (%rsp), %rdi\n"
    "  lea 8(%rsp), %rsi\n"
    "  and $-16, %rsp\n"
    "  call main\n"
    "  mov %eax, %edi\n"
    "  mov $231, %eax\n"
    "  syscall\n"
    "  hlt\n"
    ".size _start, .-_start\n");

// clone(fn, stack, flags, arg): the child runs fn(arg) on stack, then exits
// with its result. rdi=fn, rsi=stack, edx=flags, rcx=arg.
asm(".text\n"
    ".globl clone\n"
    ".type clone,@function\n"
    "clone:\n"
    "  and $-16, %rsi\n"
    "  mov %rdi, %r8\n"  // fn and arg survive the syscall in r8/r9
    "  mov %rcx, %r9\n"
    "  mov %edx, %edi\n"    // flags
    "  xor %edx, %edx\n"    // parent_tid
    "  xor %r10d, %r10d\n"  // child_tid
    "  mov $56, %eax\n"
    "  syscall\n"
    "  test %rax, %rax\n"
    "  jz 1f\n"
    "  jl 2f\n"
    "  ret\n"
    "2:\n"
    "  neg %rax\n"
    "  mov %eax, %edi\n"
    "  push %rax\n"
    "  call cloister_init_set_errno\n"
    "  pop %rax\n"
    "  mov $-1, %rax\n"
    "  ret\n"
    "1:\n"
    "  xor %ebp, %ebp\n"
    "  mov %r9, %rdi\n"
    "  call *%r8\n"
    "  mov %eax, %edi\n"
    "  mov $60, %eax\n"
    "  syscall\n"
    "  hlt\n"
    ".size clone, .-clone\n");

extern "C" {

void cloister_init_set_errno(int e) {
  g_errno = e;
}

int* __errno_location() noexcept {
  return &g_errno;
}

long syscall(long n, ...) noexcept {
  va_list ap;
  va_start(ap, n);
  long a = va_arg(ap, long), b = va_arg(ap, long), c = va_arg(ap, long), d = va_arg(ap, long),
       e = va_arg(ap, long), f = va_arg(ap, long);
  va_end(ap);
  return ret(raw(n, a, b, c, d, e, f));
}

int prctl(int option, ...) noexcept {
  va_list ap;
  va_start(ap, option);
  unsigned long a = va_arg(ap, unsigned long), b = va_arg(ap, unsigned long),
                c = va_arg(ap, unsigned long), d = va_arg(ap, unsigned long);
  va_end(ap);
  return static_cast<int>(ret(raw(SYS_prctl, option, L(a), L(b), L(c), L(d))));
}

int fcntl(int fd, int cmd, ...) {
  va_list ap;
  va_start(ap, cmd);
  long arg = va_arg(ap, long);
  va_end(ap);
  return static_cast<int>(ret(raw(SYS_fcntl, fd, cmd, arg)));
}

int open(const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  long mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, int) : 0;
  va_end(ap);
  return static_cast<int>(ret(raw(SYS_openat, AT_FDCWD, L(path), flags, mode)));
}

int ioctl(int fd, unsigned long req, ...) noexcept {
  va_list ap;
  va_start(ap, req);
  long arg = va_arg(ap, long);
  va_end(ap);
  return static_cast<int>(ret(raw(SYS_ioctl, fd, L(req), arg)));
}

int mount(const char* src, const char* target, const char* type, unsigned long flags,
          const void* data) noexcept {
  return static_cast<int>(ret(raw(SYS_mount, L(src), L(target), L(type), L(flags), L(data))));
}
int umount2(const char* target, int flags) noexcept {
  return static_cast<int>(ret(raw(SYS_umount2, L(target), flags)));
}
int move_mount(int from_fd, const char* from, int to_fd, const char* to,
               unsigned int flags) noexcept {
  return static_cast<int>(ret(raw(SYS_move_mount, from_fd, L(from), to_fd, L(to), flags)));
}
int open_tree(int dfd, const char* path, unsigned int flags) noexcept {
  return static_cast<int>(ret(raw(SYS_open_tree, dfd, L(path), flags)));
}
int fsopen(const char* fs, unsigned int flags) noexcept {
  return static_cast<int>(ret(raw(SYS_fsopen, L(fs), flags)));
}
int fsconfig(int fd, unsigned int cmd, const char* key, const void* value, int aux) noexcept {
  return static_cast<int>(ret(raw(SYS_fsconfig, fd, cmd, L(key), L(value), aux)));
}
int fsmount(int fd, unsigned int flags, unsigned int attr) noexcept {
  return static_cast<int>(ret(raw(SYS_fsmount, fd, flags, attr)));
}
int mount_setattr(int fd, const char* path, unsigned int flags, struct mount_attr* attr,
                  size_t size) noexcept {
  return static_cast<int>(ret(raw(SYS_mount_setattr, fd, L(path), flags, L(attr), L(size))));
}
int setns(int fd, int type) noexcept {
  return static_cast<int>(ret(raw(SYS_setns, fd, type)));
}
int unshare(int flags) noexcept {
  return static_cast<int>(ret(raw(SYS_unshare, flags)));
}
int chdir(const char* path) noexcept {
  return static_cast<int>(ret(raw(SYS_chdir, L(path))));
}
int fchdir(int fd) noexcept {
  return static_cast<int>(ret(raw(SYS_fchdir, fd)));
}
int chroot(const char* path) noexcept {
  return static_cast<int>(ret(raw(SYS_chroot, L(path))));
}
int chmod(const char* path, mode_t mode) noexcept {
  return static_cast<int>(ret(raw(SYS_chmod, L(path), mode)));
}
int chown(const char* path, uid_t uid, gid_t gid) noexcept {
  return static_cast<int>(ret(raw(SYS_chown, L(path), uid, gid)));
}
int mkdirat(int dir, const char* path, mode_t mode) noexcept {
  return static_cast<int>(ret(raw(SYS_mkdirat, dir, L(path), mode)));
}
int fstatat(int dir, const char* path, struct stat* st, int flags) noexcept {
  return static_cast<int>(ret(raw(SYS_newfstatat, dir, L(path), L(st), flags)));
}
int openat(int dir, const char* path, int flags, ...) {
  va_list ap;
  va_start(ap, flags);
  long mode = (flags & (O_CREAT | O_TMPFILE)) ? va_arg(ap, int) : 0;
  va_end(ap);
  return static_cast<int>(ret(raw(SYS_openat, dir, L(path), flags, mode)));
}
int mkdir(const char* path, mode_t mode) noexcept {
  return static_cast<int>(ret(raw(SYS_mkdir, L(path), mode)));
}
int mknod(const char* path, mode_t mode, dev_t dev) noexcept {
  return static_cast<int>(ret(raw(SYS_mknod, L(path), mode, L(dev))));
}
int symlink(const char* target, const char* path) noexcept {
  return static_cast<int>(ret(raw(SYS_symlink, L(target), L(path))));
}
int socket(int domain, int type, int protocol) noexcept {
  return static_cast<int>(ret(raw(SYS_socket, domain, type, protocol)));
}
int close(int fd) {
  return static_cast<int>(ret(raw(SYS_close, fd)));
}
ssize_t read(int fd, void* buf, size_t n) {
  return ret(raw(SYS_read, fd, L(buf), L(n)));
}
ssize_t write(int fd, const void* buf, size_t n) {
  return ret(raw(SYS_write, fd, L(buf), L(n)));
}
ssize_t recvmsg(int fd, struct msghdr* m, int flags) {
  return ret(raw(SYS_recvmsg, fd, L(m), flags));
}
ssize_t sendmsg(int fd, const struct msghdr* m, int flags) {
  return ret(raw(SYS_sendmsg, fd, L(m), flags));
}
[[noreturn]] void _exit(int code) {
  for (;;) raw(SYS_exit_group, code);
}
pid_t waitpid(pid_t pid, int* status, int options) {
  return static_cast<pid_t>(ret(raw(SYS_wait4, pid, L(status), options, 0)));
}
int kill(pid_t pid, int sig) noexcept {
  return static_cast<int>(ret(raw(SYS_kill, pid, sig)));
}
mode_t umask(mode_t mask) noexcept {
  return static_cast<mode_t>(raw(SYS_umask, mask));
}
pid_t setsid() noexcept {
  return static_cast<pid_t>(ret(raw(SYS_setsid)));
}
int setrlimit(__rlimit_resource_t resource, const struct rlimit* rl) noexcept {
  return static_cast<int>(ret(raw(SYS_prlimit64, 0, resource, L(rl), 0)));
}
int setpriority(__priority_which_t which, id_t who, int prio) noexcept {
  return static_cast<int>(ret(raw(SYS_setpriority, which, who, prio)));
}
int getrusage(__rusage_who_t who, struct rusage* ru) noexcept {
  return static_cast<int>(ret(raw(SYS_getrusage, who, L(ru))));
}
int sethostname(const char* name, size_t len) noexcept {
  return static_cast<int>(ret(raw(SYS_sethostname, L(name), L(len))));
}
int execve(const char* path, char* const argv[], char* const envp[]) noexcept {
  return static_cast<int>(ret(raw(SYS_execve, L(path), L(argv), L(envp))));
}
int poll(struct pollfd* fds, nfds_t n, int timeout) {
  return static_cast<int>(ret(raw(SYS_poll, L(fds), L(n), timeout)));
}
int dup2(int from, int to) noexcept {
  return static_cast<int>(ret(raw(SYS_dup2, from, to)));
}
void* mmap(void* addr, size_t len, int prot, int flags, int fd, off_t off) noexcept {
  long r = raw(SYS_mmap, L(addr), L(len), prot, flags, fd, off);
  if (r < 0 && r > -4096) {
    g_errno = static_cast<int>(-r);
    return MAP_FAILED;
  }
  return reinterpret_cast<void*>(r);
}

int sigemptyset(sigset_t* set) noexcept {
  memset(set, 0, sizeof *set);
  return 0;
}
int sigfillset(sigset_t* set) noexcept {
  memset(set, 0xff, sizeof *set);
  return 0;
}
int sigprocmask(int how, const sigset_t* set, sigset_t* old) noexcept {
  return static_cast<int>(ret(raw(SYS_rt_sigprocmask, how, L(set), L(old), 8)));
}
int sigaction(int sig, const struct sigaction* act, struct sigaction* old) noexcept {
  KSigaction k{};
  if (act) {
    k.handler = act->sa_handler;
    k.flags = static_cast<unsigned long>(act->sa_flags) | kSaRestorer;
    k.restorer = cloister_init_restorer;
    memcpy(&k.mask, &act->sa_mask, sizeof k.mask);
  }
  KSigaction o{};
  long r = ret(raw(SYS_rt_sigaction, sig, act ? L(&k) : 0, old ? L(&o) : 0, 8));
  if (r == 0 && old) {
    memset(old, 0, sizeof *old);
    old->sa_handler = o.handler;
    old->sa_flags = static_cast<int>(o.flags);
    memcpy(&old->sa_mask, &o.mask, sizeof o.mask);
  }
  return static_cast<int>(r);
}

void* malloc(size_t n) noexcept {
  n = (n + 15) & ~size_t{15};
  if (n > g_heap_left) {
    size_t chunk = n > (1u << 20) ? (n + 4095) & ~size_t{4095} : (1u << 20);
    void* p = mmap(nullptr, chunk, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    g_heap = static_cast<char*>(p);
    g_heap_left = chunk;
  }
  void* out = g_heap;
  g_heap += n;
  g_heap_left -= n;
  return out;
}
void* aligned_alloc(size_t align, size_t n) noexcept {
  // malloc's blocks are 16-byte aligned, which is all the init asks for.
  return align <= 16 ? malloc(n) : nullptr;
}
void free(void*) noexcept {}

size_t strlen(const char* s) noexcept {
  size_t n = 0;
  while (s[n]) ++n;
  return n;
}
long strtol(const char* s, char** end, int base) noexcept {
  // Decimal only (the init parses fd numbers).
  long v = 0;
  const char* p = s;
  bool neg = *p == '-';
  if (neg || *p == '+') ++p;
  const char* digits = p;
  while (base == 10 && *p >= '0' && *p <= '9' && v < (1L << 40)) v = v * 10 + (*p++ - '0');
  if (end) *end = const_cast<char*>(p == digits ? s : p);
  return neg ? -v : v;
}
void* memset(void* d, int c, size_t n) noexcept {
  auto* p = static_cast<volatile unsigned char*>(d);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<unsigned char>(c);
  return d;
}
void* memcpy(void* d, const void* s, size_t n) noexcept {
  auto* o = static_cast<volatile unsigned char*>(d);
  auto* i = static_cast<const unsigned char*>(s);
  for (size_t k = 0; k < n; ++k) o[k] = i[k];
  return d;
}
void* memmove(void* d, const void* s, size_t n) noexcept {
  auto* o = static_cast<volatile unsigned char*>(d);
  auto* i = static_cast<const unsigned char*>(s);
  if (o < i) {
    for (size_t k = 0; k < n; ++k) o[k] = i[k];
  } else {
    for (size_t k = n; k-- > 0;) o[k] = i[k];
  }
  return d;
}
int memcmp(const void* a, const void* b, size_t n) noexcept {
  auto* x = static_cast<const unsigned char*>(a);
  auto* y = static_cast<const unsigned char*>(b);
  for (size_t k = 0; k < n; ++k)
    if (x[k] != y[k]) return x[k] < y[k] ? -1 : 1;
  return 0;
}

}  // extern "C"

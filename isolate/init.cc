// cloister-init: PID 1 of every sandbox, a program of its own.
//
// The library execs it from a sealed memfd (isolate/init_program.h) in the
// child of its clone3, before anything of the sandbox exists, so the init is
// no copy of its caller: it holds no other executor's config, no caller's
// environment (its own is empty), no other session's data, only what its
// setup message (isolate/init_wire.h) brings. /proc/1/exe leads to the
// sealed memfd, which cannot be written, and to no host file.
//
// It is non-dumpable from its first instruction, before any payload exists:
// /proc/1/{mem,environ,fd,exe,cwd,root,syscall,...}, ptrace and pidfd_getfd
// of it are refused to the payload (they need CAP_SYS_PTRACE over the init,
// which no payload has), so nothing the payload does reaches the init's
// memory or its two pipes to the library. Its parent-death signal
// (SIGKILL, set before the exec) ends it, and with it the pid namespace,
// whatever ends the caller.
//
// The steps, in order (kSteps): the pool's network namespace, the mounts
// and pivot_root (or the template), hostname, rlimits, the library's go
// (cgroup attach, its network namespace), a cgroup namespace rooted at the
// sandbox's own cgroup, the payload's user namespace (all before it need
// host root), bounding set, no_new_privs, seccomp, groups, gid,
// uid, capabilities, the command, work dir. A failing step is reported as
// {step, errno, detail} on the report pipe and ends the init. Then it forks
// the payload and stays as its reaper and signal forwarder; at the payload's
// exit it writes the wait status to the status pipe and exits, which kills
// whatever is left in the namespace.
#include <fcntl.h>
#include <linux/openat2.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "isolate/capabilities.h"
#include "isolate/fd.h"
#include "isolate/init_wire.h"
#include "isolate/mounts.h"
#include "isolate/namespaces.h"
#include "isolate/rlimits.h"
#include "isolate/seccomp.h"
#include "isolate/sysctl.h"
#include "isolate/userns.h"

namespace cloister::init {
namespace {

using wire::SetupFixed;

constexpr size_t kMaxFds = 4096;

// Everything the init knows, from its setup and then its command.
struct Init {
  int ctl = -1;
  int report_fd = -1;
  SetupFixed fx{};
  const uint32_t* groups = nullptr;
  const wire::WireRlimit* rlimits = nullptr;
  mounts::OpView* ops = nullptr;
  const sock_filter* filter = nullptr;
  const char* hostname = "";
  const char* sysctls = nullptr;  // path, value, path, value, ...
  int* fds = nullptr;
  size_t nfds = 0;
  int detail = 0;  // a failing step's detail

  // The command's part.
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* const* candidates = nullptr;
  size_t ncandidates = 0;
  const char* work_dir = "/";
  const char* beneath = nullptr;
  const char* beneath_rest = ".";
  int exec_fd = -1;
  bool exec_fd_inherit = false;
  int stdio[3] = {-1, -1, -1};
  bool controlling_tty = false;
  int devnull = -1;
  // Detached (OCI) inits: the start gate, the console socket, the pty size.
  int gate = -1;
  int console = -1;
  uint16_t rows = 0, cols = 0;
  uint32_t umask = wire::kNoUmask;

  int fd(int32_t index) const {
    return index >= 0 && static_cast<size_t>(index) < nfds ? fds[index] : -1;
  }
  int report() const { return report_fd; }
  int status() const { return fd(fx.fd_status); }
};

[[noreturn]] void report_and_exit(int fd, SpawnStep step, int err, int detail = 0) {
  wire::Report r{static_cast<int32_t>(step), err, detail};
  if (fd >= 0) {
    ssize_t n;
    do n = ::write(fd, &r, sizeof r);
    while (n < 0 && errno == EINTR);
  }
  ::_exit(wire::kSetupFailedExit);
}

bool read_full(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Takes n elements of T off the body at *off; null when the body is short.
template <class T>
const T* take(const char* body, size_t len, size_t* off, size_t n) {
  if (n > (len - *off) / sizeof(T)) return nullptr;
  const T* p = reinterpret_cast<const T*>(body + *off);
  *off += n * sizeof(T);
  return p;
}

// The setup message: returns 0, EPIPE when the library went away first, or
// EPROTO when it is malformed.
int receive_setup(Init& in) {
  wire::SetupHeader h{};
  if (!read_full(in.ctl, &h, sizeof h)) return EPIPE;
  if (h.magic != wire::kSetupMagic || h.version != wire::kVersion || h.body_len > wire::kMaxBody ||
      h.body_len < sizeof(SetupFixed) || h.nfds > kMaxFds)
    return EPROTO;
  // The body stays for the init's whole life (the op views point into it),
  // and an aligned allocation keeps the casts below legal.
  char* body = static_cast<char*>(std::aligned_alloc(16, (h.body_len + 15) / 16 * 16));
  in.fds = static_cast<int*>(std::malloc((h.nfds + 1) * sizeof(int)));
  if (!body || !in.fds) return ENOMEM;
  if (!read_full(in.ctl, body, h.body_len)) return EPIPE;
  while (in.nfds < h.nfds) {
    char one;
    size_t got = 0;
    ssize_t n = recv_fds(in.ctl, &one, 1, in.fds + in.nfds, h.nfds - in.nfds, &got);
    if (n == 0) return EPIPE;
    if (n < 0) return errno == EMSGSIZE ? EPROTO : errno;
    if (got == 0) return EPROTO;
    in.nfds += got;
  }
  size_t off = 0;
  const size_t len = h.body_len;
  std::memcpy(&in.fx, body, sizeof in.fx);
  off += sizeof in.fx;
  const SetupFixed& fx = in.fx;
  if (fx.ngroups > 65536 || fx.nrlimits > 64 || fx.nops > 65536 || fx.nfilter > BPF_MAXINSNS)
    return EPROTO;
  in.groups = take<uint32_t>(body, len, &off, fx.ngroups);
  in.rlimits = take<wire::WireRlimit>(body, len, &off, fx.nrlimits);
  const auto* ops = take<wire::WireOp>(body, len, &off, fx.nops);
  in.filter = take<sock_filter>(body, len, &off, fx.nfilter);
  const char* strings = take<char>(body, len, &off, fx.strings_len);
  if (!in.groups || !in.rlimits || !ops || !in.filter || !strings || off != len) return EPROTO;
  if (fx.strings_len == 0 || strings[fx.strings_len - 1] != '\0') return EPROTO;
  auto str = [&](uint32_t o, const char** out) {
    if (o == wire::kNoString) {
      *out = nullptr;
      return true;
    }
    if (o >= fx.strings_len) return false;
    *out = strings + o;
    return true;
  };
  if (!str(fx.hostname, &in.hostname) || !in.hostname) return EPROTO;
  if (fx.nsysctls > 1024) return EPROTO;
  if (fx.nsysctls) {
    if (!str(fx.sysctls, &in.sysctls) || !in.sysctls) return EPROTO;
    // Each string ends before the table does (its last byte is NUL).
    size_t o = fx.sysctls;
    for (uint32_t i = 0; i < 2 * fx.nsysctls; ++i) {
      if (o >= fx.strings_len) return EPROTO;
      o += std::strlen(strings + o) + 1;
    }
  }
  if (fx.last_cap < 0 || fx.last_cap > 63) return EPROTO;
  if (fx.ntrees > in.nfds || fx.fd_trees < 0 ||
      static_cast<size_t>(fx.fd_trees) + fx.ntrees > in.nfds)
    return EPROTO;
  if (in.status() < 0 && !(fx.flags & wire::kSetupDetached)) return EPROTO;
  in.ops = static_cast<mounts::OpView*>(std::malloc((fx.nops + 1) * sizeof(mounts::OpView)));
  if (!in.ops) return ENOMEM;
  for (uint32_t i = 0; i < fx.nops; ++i) {
    const wire::WireOp& w = ops[i];
    mounts::OpView& o = in.ops[i];
    if (w.kind > static_cast<uint8_t>(mounts::OpKind::kLast)) return EPROTO;
    o.kind = static_cast<mounts::OpKind>(w.kind);
    o.optional = w.optional != 0;
    o.in_volume = w.in_volume != 0;
    o.source = w.tree;
    o.flags = w.flags;
    o.mode = w.mode;
    o.dev = w.dev;
    if (!str(w.src, &o.src) || !str(w.path, &o.path) || !str(w.data, &o.data) || !o.path)
      return EPROTO;
  }
  return 0;
}

// --- the steps ---------------------------------------------------------------

// SIOCSIFFLAGS on lo: our own namespace's (unprivileged), which no
// library thread could enter to send the prepared netlink request.
int loopback_up() {
  int s = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (s < 0) return errno;
  ifreq r{};
  std::memcpy(r.ifr_name, "lo", 3);
  int rc = ::ioctl(s, SIOCGIFFLAGS, &r);
  if (rc == 0) {
    r.ifr_flags = static_cast<short>(r.ifr_flags | IFF_UP);
    rc = ::ioctl(s, SIOCSIFFLAGS, &r);
  }
  int e = rc == 0 ? 0 : errno;
  ::close(s);
  return e;
}

int join_pool_netns(Init& in) {
  if (in.fx.flags & wire::kSetupJoin) {
    // The container's namespaces but its user namespace (joined last, as
    // for every sandbox: the others are the host's user namespace's).
    const int target = in.fd(in.fx.fd_join);
    if (target < 0) return EBADF;
    if (::setns(target, CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWPID |
                            CLONE_NEWCGROUP) != 0)
      return errno;
    ::close(target);
    return 0;
  }
  for (auto [index, type] :
       {std::pair{in.fx.fd_ipcns, CLONE_NEWIPC}, std::pair{in.fx.fd_utsns, CLONE_NEWUTS}}) {
    const int fd = in.fd(index);
    if (fd < 0) continue;
    if (::setns(fd, type) != 0) return errno;
    ::close(fd);
  }
  if (in.fx.flags & wire::kSetupLoopbackUp) return loopback_up();
  const int ns = in.fd(in.fx.fd_netns);
  if (ns < 0) return 0;
  if (::setns(ns, CLONE_NEWNET) != 0) return errno;
  ::close(ns);
  return 0;
}

// Writes n in decimal to a /proc/sys file; 0 or errno.
int write_number(const char* path, uint32_t n) {
  char buf[16];
  int len = 0;
  do buf[sizeof buf - 1 - len++] = static_cast<char>('0' + n % 10);
  while ((n /= 10) != 0);
  int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  ssize_t w = ::write(fd, buf + sizeof buf - len, static_cast<size_t>(len));
  int e = w == len ? 0 : (w < 0 ? errno : EIO);
  ::close(fd);
  return e;
}

// Unprivileged: our user namespace's own bounds (the kernel's per-user
// counters are checked at every level, ours first). The files show the
// reader's user namespace, and are ours to write as its root.
int bound_userns_counters(Init& in) {
  if (in.fx.max_inotify_instances) {
    in.detail = 0;
    if (int e = write_number("/proc/sys/user/max_inotify_instances", in.fx.max_inotify_instances))
      return e;
  }
  if (in.fx.max_inotify_watches) {
    in.detail = 1;
    if (int e = write_number("/proc/sys/user/max_inotify_watches", in.fx.max_inotify_watches))
      return e;
  }
  return 0;
}

int mount_root(Init& in) {
  if (in.fx.flags & wire::kSetupJoin) return 0;  // the container's mounts, joined
  int* trees = in.fds + in.fx.fd_trees;
  size_t ntrees = in.fx.ntrees;
  if (in.fx.flags & wire::kSetupOwnUserns) {
    // Our CloneTree ops make the trees: room for the highest index.
    ntrees = 0;
    for (uint32_t i = 0; i < in.fx.nops; ++i)
      if (in.ops[i].kind == mounts::OpKind::CloneTree && in.ops[i].source >= 0)
        ntrees = std::max(ntrees, static_cast<size_t>(in.ops[i].source) + 1);
    trees = static_cast<int*>(std::malloc((ntrees + 1) * sizeof(int)));
    if (!trees) return ENOMEM;
    for (size_t i = 0; i < ntrees; ++i) trees[i] = -1;
  }
  int failed = -1;
  int e = mounts::run_ops(in.ops, in.fx.nops, trees, ntrees, in.fd(in.fx.fd_tpl_ns),
                          in.fd(in.fx.fd_tpl_root), &failed);
  in.detail = failed;
  // The trees and the template are mounted or entered now: no fd of the
  // host's trees stays behind.
  for (size_t i = 0; i < ntrees; ++i)
    if (trees[i] >= 0) ::close(trees[i]);
  if (int f = in.fd(in.fx.fd_tpl_ns); f >= 0) ::close(f);
  if (int f = in.fd(in.fx.fd_tpl_root); f >= 0) ::close(f);
  return e;
}

// Before the mounts: through the host's /proc/sys, whose net and ipc
// entries are those of the writer's namespaces, our own by now.
int set_sysctls(Init& in) {
  if (in.fx.flags & wire::kSetupJoin) return 0;  // the container's, set at its create
  const char* p = in.sysctls;
  for (uint32_t i = 0; i < in.fx.nsysctls; ++i) {
    const char* value = p + std::strlen(p) + 1;
    if (!(in.fx.flags & wire::kSetupOwnNetnsFirst) && std::strlen(p) > 14 &&
        std::memcmp(p, "/proc/sys/net/", 14) == 0) {
      in.detail = static_cast<int>(i);
      return EPERM;
    }
    if (int e = sysctl::apply(p, value); e != 0) {
      in.detail = static_cast<int>(i);
      return e;
    }
    p = value + std::strlen(value) + 1;
  }
  return 0;
}

int set_hostname(Init& in) {
  if (in.fx.flags & wire::kSetupJoin) return 0;  // the container's, joined
  if (in.hostname[0] == '\0') return 0;          // a joined uts namespace's own
  return namespaces::set_hostname(in.hostname);
}

int set_rlimits(Init& in) {
  for (uint32_t i = 0; i < in.fx.nrlimits; ++i) {
    const wire::WireRlimit& w = in.rlimits[i];
    in.detail = static_cast<int>(i);
    if (int e = rlimits::apply({w.resource, w.soft, w.hard})) return e;
  }
  return 0;
}

// The library lets us go once this process is in all its cgroups (v1
// controllers need it to write our pid) and, unless the pool had one, with
// the network namespace it made meanwhile: both ran while we set up the
// mounts. Before the bounding set, seccomp and the uid change: setns needs
// what they take. EOF means the library failed or is gone.
int wait_for_go(Init& in) {
  if (!(in.fx.flags & wire::kSetupWaitGo)) return 0;
  char go;
  int ns = -1;
  size_t nfds = 0;
  if (recv_fds(in.ctl, &go, 1, &ns, 1, &nfds) != 1) ::_exit(wire::kSetupFailedExit);
  if (nfds == 1) {
    if (::setns(ns, CLONE_NEWNET) != 0) {
      in.detail = 1;
      return errno;
    }
    ::close(ns);
  }
  return 0;
}

// Now that every cgroup holds us: the sandbox's own cgroup becomes the root
// of what it sees (/proc/self/cgroup shows "/", no host path).
int unshare_cgroup_ns(Init& in) {
  if (in.fx.flags & wire::kSetupJoin) return 0;  // the container's, joined
  return ::unshare(CLONE_NEWCGROUP) == 0 ? 0 : errno;
}

// Last of what needs host root, first of what the payload's credentials
// are made of: from here on capabilities hold in the payload's user
// namespace only (and the bounding set is full again: dropped next).
int join_userns(Init& in) {
  const int ns = in.fd(in.fx.fd_userns);
  return ns < 0 ? 0 : userns::enter(ns);
}

int drop_bounding(Init& in) {
  return capabilities::drop_bounding(in.fx.capabilities, in.fx.last_cap);
}

int no_new_privs(Init& in) {
  if (!(in.fx.flags & wire::kSetupNoNewPrivs)) return 0;
  return ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 ? 0 : errno;
}

// Before the uid change: without no_new_privs, installing a filter needs
// CAP_SYS_ADMIN, which only uid 0 still has here.
int install_seccomp(Init& in) {
  return seccomp::install(in.filter, in.fx.nfilter);
}

int set_groups(Init& in) {
  ::prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0);
  // Denied in a namespace an ordinary user made; its groups (none mapped,
  // shown as nogroup) stay: the library refused any configured.
  if (in.fx.flags & wire::kSetupDenySetgroups) return 0;
  static_assert(sizeof(gid_t) == sizeof(uint32_t));
  return ::syscall(SYS_setgroups, in.fx.ngroups, in.groups) == 0 ? 0 : errno;
}

int set_gid(Init& in) {
  gid_t g = in.fx.gid;
  return ::syscall(SYS_setresgid, g, g, g) == 0 ? 0 : errno;
}

int set_uid(Init& in) {
  uid_t u = in.fx.uid;
  if (::syscall(SYS_setresuid, u, u, u) != 0) return errno;
  // A uid change resets the dumpable flag to the system's suid_dumpable;
  // ours stays off whatever that is.
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return errno;
  // A uid or gid change also clears the parent-death signal: set it again,
  // then make sure the caller did not die in between (its end of our
  // control socket closes with it). A detached init has none: it outlives
  // its caller, and is ended by whoever reaps it.
  if (!(in.fx.flags & wire::kSetupDetached) && ::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
    return errno;
  pollfd p{in.ctl, POLLRDHUP, 0};
  if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)))
    ::_exit(wire::kSetupFailedExit);
  return 0;
}

int set_capabilities(Init& in) {
  return capabilities::apply(in.fx.capabilities, in.fx.last_cap);
}

// The command: a warm init waits here for its caller; EOF means the sandbox
// was dropped unused (exit quietly). EPROTO for a malformed message.
int receive_command(Init& in) {
  wire::CallHeader h{};
  int fds[wire::kCallMaxFds] = {-1, -1, -1, -1, -1, -1};
  size_t nfds = 0;
  ssize_t got = recv_fds(in.ctl, &h, sizeof h, fds, wire::kCallMaxFds, &nfds);
  if (got == 0) ::_exit(wire::kSetupFailedExit);
  if (got < 0) return errno;
  if (got != static_cast<ssize_t>(sizeof h)) ::_exit(wire::kSetupFailedExit);
  if (h.magic != wire::kCallMagic || h.body_len > wire::kMaxBody || h.argc == 0 ||
      h.argc > wire::kMaxBody || h.envc > wire::kMaxBody || h.ncand > wire::kMaxBody ||
      static_cast<size_t>(__builtin_popcount(h.flags & wire::kCallFdFlags)) != nfds)
    return EPROTO;
  const size_t nstr = size_t{h.argc} + h.envc + h.ncand + 3;
  const size_t ptrs = (size_t{h.argc} + 1 + h.envc + 1 + h.ncand + 1) * sizeof(char*);
  void* mem = ::mmap(nullptr, ptrs + h.body_len + 1, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return errno;
  char** vec = static_cast<char**>(mem);
  char* body = static_cast<char*>(mem) + ptrs;
  if (!read_full(in.ctl, body, h.body_len)) ::_exit(wire::kSetupFailedExit);
  body[h.body_len] = '\0';
  const char* strs[3];  // work_dir, beneath, beneath_rest
  size_t off = 0, v = 0;
  for (size_t i = 0; i < nstr; ++i) {
    if (off >= h.body_len) return EPROTO;
    char* str = body + off;
    off += ::strlen(str) + 1;
    if (off > h.body_len) return EPROTO;
    if (i == h.argc) vec[v++] = nullptr;                   // end of argv
    if (i == size_t{h.argc} + h.envc) vec[v++] = nullptr;  // end of envp
    if (i < nstr - 3)
      vec[v++] = str;
    else
      strs[i - (nstr - 3)] = str;
  }
  vec[v] = nullptr;  // after the candidates (there may be none)
  in.argv = vec;
  in.envp = vec + h.argc + 1;
  in.candidates = const_cast<const char* const*>(vec + h.argc + 1 + h.envc + 1);
  in.ncandidates = h.ncand;
  in.work_dir = strs[0];
  in.beneath = (h.flags & wire::kCallBeneath) ? strs[1] : nullptr;
  in.beneath_rest = strs[2];
  size_t k = 0;
  in.stdio[0] = (h.flags & wire::kCallStdin) ? fds[k++] : -1;
  in.stdio[1] = (h.flags & wire::kCallStdout) ? fds[k++] : -1;
  in.stdio[2] = (h.flags & wire::kCallStderr) ? fds[k++] : -1;
  in.exec_fd = (h.flags & wire::kCallExecFd) ? fds[k++] : -1;
  in.gate = (h.flags & wire::kCallGate) ? fds[k++] : -1;
  in.console = (h.flags & wire::kCallConsole) ? fds[k++] : -1;
  // Only a detached init waits for a start; a gate would keep any other
  // waiting forever.
  if (in.gate >= 0 && !(in.fx.flags & wire::kSetupDetached)) return EPROTO;
  in.exec_fd_inherit = h.flags & wire::kCallExecFdInherit;
  in.controlling_tty = h.flags & wire::kCallTty;
  in.rows = h.rows;
  in.cols = h.cols;
  in.umask = h.umask;
  ::close(in.ctl);
  in.ctl = -1;
  return 0;
}

int enter_work_dir(Init& in) {
  if (!in.beneath) {
    in.detail = 0;
    return ::chdir(in.work_dir) == 0 ? 0 : errno;
  }
  // In the sandbox's own view, after pivot_root: the check is the use.
  in.detail = 1;
  int root = openat2_raw(AT_FDCWD, in.beneath, O_PATH | O_DIRECTORY,
                         RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
  if (root < 0) return errno;
  in.detail = 2;
  int wd = openat2_raw(root, in.beneath_rest, O_PATH | O_DIRECTORY,
                       RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS);
  if (wd < 0) return errno;
  if (::fchdir(wd) != 0) return errno;
  ::close(wd);
  ::close(root);
  return 0;
}

// The sandbox's own null device, for the payload's absent stdio.
int open_devnull(Init& in) {
  in.devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  return in.devnull >= 0 ? 0 : errno;
}

// A terminal (an OCI container's, a Process's pty): a pty of the sandbox's own devpts (so that
// the payload's tty, ttyname and job control work), whose master goes to
// the runtime's caller over the console socket; the slave is the payload's
// stdio and becomes its controlling terminal.
int open_console(Init& in) {
  if (in.console < 0) return 0;
  in.detail = 0;
  int master = ::open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) return errno;
  // A joined init opens the path in a sandbox that has been running: what
  // is there must be the pty multiplexer (5:2), not a file of its making.
  struct stat st {};
  if (::syscall(SYS_newfstatat, master, "", &st, AT_EMPTY_PATH) != 0) return errno;
  if (!S_ISCHR(st.st_mode) || major(st.st_rdev) != 5 || minor(st.st_rdev) != 2) return ENOTTY;
  int unlock = 0;
  in.detail = 1;
  if (::ioctl(master, TIOCSPTLCK, &unlock) != 0) return errno;
  in.detail = 2;
  int slave = ::ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (slave < 0) return errno;
  if (in.rows || in.cols) {
    winsize ws{};
    ws.ws_row = in.rows;
    ws.ws_col = in.cols;
    in.detail = 3;
    if (::ioctl(slave, TIOCSWINSZ, &ws) != 0) return errno;
  }
  // runc sends the pty's name with it; containerd and conmon only take the fd.
  static const char kName[] = "/dev/ptmx";
  in.detail = 4;
  if (send_fds(in.console, kName, sizeof kName - 1, &master, 1) < 0) return errno;
  ::close(master);
  ::close(in.console);
  in.console = -1;
  for (int& fd : in.stdio) fd = slave;
  in.controlling_tty = true;
  return 0;
}

// A detached init reports its command missing at `create`, as runc does,
// rather than as an exit after `start`: the first candidate that exists
// must be executable by the payload's ids.
int find_command(Init& in) {
  if (in.gate < 0 || in.exec_fd >= 0) return 0;
  int err = ENOENT;
  for (size_t i = 0; i < in.ncandidates; ++i) {
    if (::syscall(SYS_faccessat, AT_FDCWD, in.candidates[i], X_OK) == 0) return 0;
    if (errno != ENOENT && errno != ENOTDIR) err = errno;
  }
  return err;
}

// Until `start` a detached init is PID 1 of a namespace with no payload: a
// signal from outside (kill, delete --force) ends it, as runc's would.
void exit_on_signal(int sig) {
  ::_exit(128 + sig);
}

int wait_for_start(Init& in) {
  if (in.umask != wire::kNoUmask) ::umask(static_cast<mode_t>(in.umask & 0777));
  if (in.gate < 0) return 0;
  struct sigaction sa {};
  sa.sa_handler = exit_on_signal;
  for (int s = 1; s < NSIG; ++s)
    if (s != SIGKILL && s != SIGSTOP && s != SIGCHLD) ::sigaction(s, &sa, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  wire::Report created{static_cast<int32_t>(SpawnStep::None), 0, 0};
  if (::write(in.report(), &created, sizeof created) != static_cast<ssize_t>(sizeof created))
    return errno ? errno : EIO;
  char go;
  ssize_t n;
  do n = ::read(in.gate, &go, 1);
  while (n < 0 && errno == EINTR);
  if (n != 1) ::_exit(wire::kSetupFailedExit);
  ::close(in.gate);
  in.gate = -1;
  // run_payload blocks every signal again while it sets its handlers.
  sigset_t all;
  sigfillset(&all);
  ::sigprocmask(SIG_SETMASK, &all, nullptr);
  return 0;
}

struct Step {
  SpawnStep id;
  int (*run)(Init&);
};

// The whole order, in one place.
constexpr Step kSteps[] = {
    {SpawnStep::Loopback, join_pool_netns},
    {SpawnStep::UserNsLimits, bound_userns_counters},
    {SpawnStep::Sysctl, set_sysctls},
    {SpawnStep::Mounts, mount_root},
    {SpawnStep::Hostname, set_hostname},
    {SpawnStep::Rlimits, set_rlimits},
    {SpawnStep::Go, wait_for_go},
    {SpawnStep::CgroupNs, unshare_cgroup_ns},
    {SpawnStep::UserNs, join_userns},
    {SpawnStep::BoundingSet, drop_bounding},
    {SpawnStep::NoNewPrivs, no_new_privs},
    {SpawnStep::Seccomp, install_seccomp},
    {SpawnStep::Groups, set_groups},
    {SpawnStep::Gid, set_gid},
    {SpawnStep::Uid, set_uid},
    {SpawnStep::Capabilities, set_capabilities},
    {SpawnStep::Command, receive_command},
    {SpawnStep::WorkDir, enter_work_dir},
    {SpawnStep::Stdio, open_devnull},
    {SpawnStep::Console, open_console},
    {SpawnStep::Exec, find_command},
    {SpawnStep::Start, wait_for_start},
};

// --- the payload and the reaper ----------------------------------------------

volatile pid_t g_payload = -1;

void forward_signal(int sig) {
  if (g_payload > 0) {
    ::kill(g_payload, sig);
    return;
  }
  // In the payload before its execve: act as if no handler were installed.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  ::sigaction(sig, &dfl, nullptr);
  ::kill(static_cast<pid_t>(::syscall(SYS_getpid)), sig);
}

// Closes every fd except those in keep (an unsorted, small array).
void close_all_but(int* keep, int nkeep) noexcept {
  for (int i = 1; i < nkeep; ++i)  // insertion sort: no allocation
    for (int j = i; j > 0 && keep[j - 1] > keep[j]; --j) {
      int t = keep[j - 1];
      keep[j - 1] = keep[j];
      keep[j] = t;
    }
  unsigned lo = 0;
  for (int i = 0; i < nkeep; ++i) {
    if (keep[i] < 0) continue;
    unsigned k = static_cast<unsigned>(keep[i]);
    if (k > lo) ::syscall(SYS_close_range, lo, k - 1, 0);
    lo = k + 1;
  }
  ::syscall(SYS_close_range, lo, ~0U, 0);
}

void unblock_all_signals() noexcept {
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

// Runs in the payload, which shares the init's memory until its execve
// (CLONE_VM | CLONE_VFORK): async-signal-safe, writes nothing the init reads.
[[noreturn]] void payload_main(const Init& in) noexcept {
  const int rw = in.report();
  ::setsid();
  // Move the stdio sources out of 0-2 before placing them, in case one of
  // them already sits on a low number.
  int src[3];
  for (int i = 0; i < 3; ++i) {
    int from = in.stdio[i] >= 0 ? in.stdio[i] : in.devnull;
    src[i] = ::fcntl(from, F_DUPFD_CLOEXEC, 3);
    if (src[i] < 0) report_and_exit(rw, SpawnStep::Stdio, errno, i);
  }
  int xfd = -1;
  if (in.exec_fd >= 0) {
    // Above 0-2, like the stdio sources; CLOEXEC unless a script needs it.
    xfd = ::fcntl(in.exec_fd, F_DUPFD_CLOEXEC, 3);
    if (xfd < 0 || (in.exec_fd_inherit && ::fcntl(xfd, F_SETFD, 0) != 0))
      report_and_exit(rw, SpawnStep::Exec, errno);
  }
  for (int i = 0; i < 3; ++i)
    if (::dup2(src[i], i) < 0) report_and_exit(rw, SpawnStep::Stdio, errno, i);
  // A new session has no controlling terminal; a pty slave on 0 becomes it,
  // so that job control, ^C and SIGWINCH reach the payload.
  if (in.controlling_tty && ::ioctl(0, TIOCSCTTY, 0) < 0)
    report_and_exit(rw, SpawnStep::Stdio, errno, 0);
  int keep[] = {0, 1, 2, rw, xfd};
  close_all_but(keep, 5);
  // A joined init is no PID 1 whose death ends the namespace: its payload
  // dies with it instead (after every credential change, which clears it).
  // Its parent is outside the payload's pid namespace, so getppid() is 0
  // while it lives: anything else means it died before the signal was set.
  if (in.fx.flags & wire::kSetupJoin) {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0)
      report_and_exit(rw, SpawnStep::Exec, errno);
    if (::syscall(SYS_getppid) != 0) ::_exit(wire::kSetupFailedExit);
  }
  // execve resets the init's handlers (caught -> default); a signal caught in
  // between is re-raised by forward_signal with the default action.
  unblock_all_signals();
  if (xfd >= 0) {
    // The very file the policy checked (policy/paths.h), never a path.
    ::syscall(SYS_execveat, xfd, "", in.argv, in.envp, AT_EMPTY_PATH);
    report_and_exit(rw, SpawnStep::Exec, errno);
  }
  int err = ENOENT;
  for (size_t i = 0; i < in.ncandidates; ++i) {
    ::execve(in.candidates[i], in.argv, in.envp);
    // Like execvp: remember that something was found but not executable.
    if (errno != ENOENT && errno != ENOTDIR) err = errno;
  }
  report_and_exit(rw, SpawnStep::Exec, err);
}

// The payload's stack until its execve.
alignas(64) char g_payload_stack[64 * 1024];

int payload_entry(void* arg) {
  payload_main(*static_cast<const Init*>(arg));
}

[[noreturn]] void run_payload(Init& in) {
  const int rw = in.report();
  const int status_w = in.status();
  // Handlers first, then the fork, then unblock: a signal that arrives in
  // between is held, not lost, and finds g_payload set.
  struct sigaction sa {};
  sa.sa_handler = forward_signal;
  sa.sa_flags = SA_RESTART;
  for (int s = 1; s < NSIG; ++s)
    if (s != SIGKILL && s != SIGSTOP && s != SIGCHLD) ::sigaction(s, &sa, nullptr);
  // The payload shares the init's memory until it execs (CLONE_VM, with the
  // init suspended meanwhile: CLONE_VFORK), so no page table is copied for
  // it. It runs on a stack of its own and writes nothing the init reads.
  long child = ::clone(payload_entry, g_payload_stack + sizeof g_payload_stack,
                       CLONE_VM | CLONE_VFORK | SIGCHLD, &in);
  if (child < 0) report_and_exit(rw, SpawnStep::ForkPayload, errno);
  g_payload = static_cast<pid_t>(child);
  // The init keeps nothing of the payload's: the library sees EOF on the
  // report pipe when the payload execs, and on stdio when the payload's tree
  // closes it.
  {
    int keep[] = {status_w};
    close_all_but(keep, 1);
  }
  unblock_all_signals();
  // A joined init is no PID 1 whose exit ends what its payload left: it
  // ends the payload's process group (the payload leads it, from its
  // setsid), while the payload's zombie still holds the group's number. One
  // that left the group stays in the sandbox until that ends.
  if (in.fx.flags & wire::kSetupJoin) {
    siginfo_t si{};
    while (::syscall(SYS_waitid, P_PID, g_payload, &si, WEXITED | WNOWAIT | __WALL, nullptr) != 0 &&
           errno == EINTR) {
    }
    ::kill(-g_payload, SIGKILL);
  }
  for (;;) {
    int status = 0;
    pid_t w = ::waitpid(-1, &status, __WALL);
    if (w < 0) {
      if (errno == EINTR) continue;
      ::_exit(wire::kSetupFailedExit);  // ECHILD: cannot happen while the payload lives
    }
    if (w != g_payload) continue;
    wire::InitStatus msg{};
    msg.wait_status = status;
    // Zombies first; then ECHILD means nothing but this init is left in the
    // namespace, and the library may report the exit before our own exit
    // has torn the namespaces down.
    while ((w = ::waitpid(-1, &status, WNOHANG | __WALL)) > 0) {
    }
    msg.alone = w < 0 && errno == ECHILD;
    struct rusage ru {};
    ::getrusage(RUSAGE_CHILDREN, &ru);
    msg.max_rss_kib = ru.ru_maxrss;
    msg.cpu_usec = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000LL + ru.ru_utime.tv_usec +
                   ru.ru_stime.tv_usec;
    ssize_t n;
    do n = ::write(status_w, &msg, sizeof msg);
    while (n < 0 && errno == EINTR);
    // Our exit tears the namespaces down, which nobody waits for when we
    // are alone: background work.
    // (A joined init owns no namespace: its exit is quick, and waited for.)
    if (msg.alone && (in.fx.flags & wire::kSetupBackgroundExit) &&
        !(in.fx.flags & wire::kSetupJoin))
      ::setpriority(PRIO_PROCESS, 0, 19);
    // Exiting as PID 1 kills whatever the payload left behind. A detached
    // init's reaper learns the payload's status from ours.
    if (in.fx.flags & wire::kSetupDetached)
      ::_exit(WIFEXITED(msg.wait_status) ? WEXITSTATUS(msg.wait_status)
                                         : 128 + WTERMSIG(msg.wait_status));
    ::_exit(0);
  }
}

}  // namespace
}  // namespace cloister::init

int main(int argc, char** argv) {
  using namespace cloister;
  using namespace cloister::init;
  // First: nothing may read or write this process's memory, nor reopen its
  // fds, through /proc or ptrace (the payload does not exist yet).
  ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
  ::prctl(PR_SET_NAME, "cloister-init", 0, 0, 0);
  Init in;
  auto fd_arg = [&](int i) {
    char* end = nullptr;
    long v = i < argc ? std::strtol(argv[i], &end, 10) : -1;
    return end && *end == '\0' && v >= 0 && v < 1 << 20 ? static_cast<int>(v) : -1;
  };
  in.ctl = fd_arg(1);
  in.report_fd = fd_arg(2);
  if (argc != 3 || in.ctl < 0 || in.report_fd < 0) return wire::kSetupFailedExit;
  // Inherited without close-on-exec (that is how they got here): the
  // payload must never hold either. Above 0-2 too (a caller may have had
  // those closed), which the payload's stdio takes.
  for (int* fd : {&in.ctl, &in.report_fd}) {
    if (*fd < 3) {
      int moved = ::fcntl(*fd, F_DUPFD_CLOEXEC, 3);
      if (moved < 0) report_and_exit(in.report_fd, SpawnStep::Setup, errno);
      ::close(*fd);
      *fd = moved;
    } else if (::fcntl(*fd, F_SETFD, FD_CLOEXEC) != 0) {
      report_and_exit(in.report_fd, SpawnStep::Setup, errno);
    }
  }
  if (int e = receive_setup(in)) {
    if (e == EPIPE) ::_exit(wire::kSetupFailedExit);  // the library gave up
    report_and_exit(in.report(), SpawnStep::Setup, e);
  }
  for (const Step& s : kSteps) {
    in.detail = 0;
    if (int e = s.run(in)) report_and_exit(in.report(), s.id, e, in.detail);
  }
  run_payload(in);
}

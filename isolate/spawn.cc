#include "isolate/spawn.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <thread>

#include "isolate/capabilities.h"
#include "isolate/namespaces.h"

namespace cloister {
namespace {

// What the child reports when a step fails.
struct Report {
  int32_t step;
  int32_t err;
  int32_t detail;
};

// What the init tells the parent when its payload exits.
struct InitStatus {
  int32_t wait_status;
  int32_t alone;        // no other process is left in the sandbox
  int64_t max_rss_kib;  // the largest resident set among the reaped processes
};

// The command, sent to an init that has set itself up: this header (with the
// fds as SCM_RIGHTS: stdin, stdout, stderr, exec fd, those present), then
// body_len bytes of NUL-terminated strings: argv, envp, the exec candidates,
// work_dir, beneath, beneath_rest.
struct CallHeader {
  uint32_t magic;
  uint32_t body_len;
  uint32_t argc, envc, ncand;
  uint32_t flags;
};
constexpr uint32_t kCallMagic = 0x636c7331;  // "cls1"
constexpr uint32_t kCallStdin = 1, kCallStdout = 2, kCallStderr = 4, kCallExecFd = 8,
                   kCallExecFdInherit = 16, kCallTty = 32, kCallBeneath = 64;
constexpr uint32_t kMaxCallBody = 64u << 20;

// The nice value of the library's background work (warm inits being set
// up, network namespaces made ahead, sandboxes tearing down): it must not take
// the CPU from sandboxes that are starting or running.
constexpr int kBackgroundNice = 19;

// Spawned::set_background_teardown.
std::atomic<bool> g_background_teardown{true};

// Exit code of a child that failed before exec; the parent reads the reason
// from the report pipe, so the value only has to be recognisable in ps.
constexpr int kSetupFailedExit = 125;

// Everything the child reads: the sandbox's part laid out before the clone,
// the command's part (argv to controlling_tty) filled in by the init from the
// parent's message.
struct ChildContext {
  const SpawnSpec* spec;
  const mounts::MountPlan* mounts;
  const seccomp::Filter* filter;
  int netns;  // join this fresh network namespace (pool), or -1
  char* const* argv;
  char* const* envp;
  const char* const* candidates;  // paths to try for argv[0], in order
  size_t ncandidates;
  const char* work_dir;
  const char* beneath;       // policy: enter work_dir beneath this dir, or null
  const char* beneath_rest;  // work_dir relative to it ("." for itself)
  int exec_fd;               // policy: exec this fd, or -1
  bool exec_fd_inherit;
  const char* hostname;
  int stdio[3];
  bool controlling_tty;  // stdin is a pty slave: make it the controlling terminal
  int report_w;
  int status_w;
  int ctl;               // the parent's go, then the command (CallHeader)
  bool wait_go;          // a go comes first (cgroup attach, a network namespace to join)
  int devnull;           // host /dev/null, opened before the clone
  bool background_exit;  // the caller leaves our exit to its reaper thread
  const mounts::MountTemplate* mount_template;  // or null: the full plan
};

// The init's view of its payload, for the signal handler.
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

[[noreturn]] void report_and_exit(int fd, SpawnStep step, int err, int detail = 0) {
  Report r{static_cast<int32_t>(step), err, detail};
  ssize_t n;
  do n = ::write(fd, &r, sizeof r);
  while (n < 0 && errno == EINTR);
  ::_exit(kSetupFailedExit);
}

// Closes every fd except those in keep (an unsorted, small array).
void close_all_but(int* keep, int nkeep) noexcept {
  for (int i = 1; i < nkeep; ++i)  // insertion sort: no allocation
    for (int j = i; j > 0 && keep[j - 1] > keep[j]; --j) std::swap(keep[j - 1], keep[j]);
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

[[noreturn]] void payload_main(const ChildContext& c) noexcept {
  const int rw = c.report_w;
  ::setsid();
  // Move the stdio sources out of 0-2 before placing them, in case one of
  // them already sits on a low number.
  int src[3];
  for (int i = 0; i < 3; ++i) {
    int from = c.stdio[i] >= 0 ? c.stdio[i] : c.devnull;
    src[i] = ::fcntl(from, F_DUPFD_CLOEXEC, 3);
    if (src[i] < 0) report_and_exit(rw, SpawnStep::Stdio, errno, i);
  }
  int xfd = -1;
  if (c.exec_fd >= 0) {
    // Above 0-2, like the stdio sources; CLOEXEC unless a script needs it.
    xfd = ::fcntl(c.exec_fd, F_DUPFD_CLOEXEC, 3);
    if (xfd < 0 || (c.exec_fd_inherit && ::fcntl(xfd, F_SETFD, 0) != 0))
      report_and_exit(rw, SpawnStep::Exec, errno);
  }
  for (int i = 0; i < 3; ++i)
    if (::dup2(src[i], i) < 0) report_and_exit(rw, SpawnStep::Stdio, errno, i);
  // A new session has no controlling terminal; a pty slave on 0 becomes it,
  // so that job control, ^C and SIGWINCH reach the payload.
  if (c.controlling_tty && ::ioctl(0, TIOCSCTTY, 0) < 0)
    report_and_exit(rw, SpawnStep::Stdio, errno, 0);
  int keep[] = {0, 1, 2, rw, xfd};
  close_all_but(keep, 5);
  // execve resets the init's handlers (caught -> default); a signal caught in
  // between is re-raised by forward_signal with the default action.
  unblock_all_signals();
  if (xfd >= 0) {
    // The very file the policy checked (policy/paths.h), never a path.
    ::syscall(SYS_execveat, xfd, "", c.argv, c.envp, AT_EMPTY_PATH);
    report_and_exit(rw, SpawnStep::Exec, errno);
  }
  int err = ENOENT;
  for (size_t i = 0; i < c.ncandidates; ++i) {
    ::execve(c.candidates[i], c.argv, c.envp);
    // Like execvp: remember that something was found but not executable.
    if (errno != ENOENT && errno != ENOTDIR) err = errno;
  }
  report_and_exit(rw, SpawnStep::Exec, err);
}

// The payload's stack until its execve (each init has its own copy).
alignas(64) char g_payload_stack[64 * 1024];

int payload_entry(void* arg) {
  payload_main(*static_cast<const ChildContext*>(arg));
}

// One message of len bytes (all of them: MSG_WAITALL) with up to maxfds fds
// (SCM_RIGHTS, received close-on-exec) into fds; *nfds gets their number.
// Returns the bytes read (0 at EOF), or -1 with errno; async-signal-safe.
ssize_t recv_with_fds(int sock, void* buf, size_t len, int* fds, size_t maxfds,
                      size_t* nfds) noexcept {
  alignas(cmsghdr) char cbuf[CMSG_SPACE(4 * sizeof(int))];
  iovec iov{buf, len};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = cbuf;
  m.msg_controllen = CMSG_SPACE(maxfds * sizeof(int));
  ssize_t got;
  do got = ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC | MSG_WAITALL);
  while (got < 0 && errno == EINTR);
  *nfds = 0;
  for (cmsghdr* cm = got >= 0 ? CMSG_FIRSTHDR(&m) : nullptr; cm; cm = CMSG_NXTHDR(&m, cm))
    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
      *nfds = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      std::memcpy(fds, CMSG_DATA(cm), *nfds * sizeof(int));
    }
  return got;
}

// Reads exactly n bytes; false on EOF or error.
bool read_full(int fd, char* p, size_t n) noexcept {
  while (n > 0) {
    ssize_t r = ::read(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// The init's side of CallHeader: fills the command's part of c. Returns 0 or
// errno (EPROTO for a malformed message).
int receive_call(ChildContext& c) noexcept {
  CallHeader h{};
  int fds[4] = {-1, -1, -1, -1};
  size_t nfds = 0;
  ssize_t got = recv_with_fds(c.ctl, &h, sizeof h, fds, 4, &nfds);
  if (got < 0) return errno;
  if (got != static_cast<ssize_t>(sizeof h)) return EPIPE;  // the parent gave up
  if (h.magic != kCallMagic || h.body_len > kMaxCallBody || h.argc == 0 ||
      static_cast<size_t>(__builtin_popcount(h.flags & 15)) != nfds)
    return EPROTO;
  const size_t nstr = size_t{h.argc} + h.envc + h.ncand + 3;
  const size_t ptrs = (size_t{h.argc} + 1 + h.envc + 1 + h.ncand) * sizeof(char*);
  void* mem = ::mmap(nullptr, ptrs + h.body_len + 1, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return errno;
  char** vec = static_cast<char**>(mem);
  char* body = static_cast<char*>(mem) + ptrs;
  if (!read_full(c.ctl, body, h.body_len)) return EPIPE;
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
  c.argv = vec;
  c.envp = vec + h.argc + 1;
  c.candidates = const_cast<const char* const*>(vec + h.argc + 1 + h.envc + 1);
  c.ncandidates = h.ncand;
  c.work_dir = strs[0];
  c.beneath = (h.flags & kCallBeneath) ? strs[1] : nullptr;
  c.beneath_rest = strs[2];
  size_t k = 0;
  c.stdio[0] = (h.flags & kCallStdin) ? fds[k++] : -1;
  c.stdio[1] = (h.flags & kCallStdout) ? fds[k++] : -1;
  c.stdio[2] = (h.flags & kCallStderr) ? fds[k++] : -1;
  c.exec_fd = (h.flags & kCallExecFd) ? fds[k++] : -1;
  c.exec_fd_inherit = h.flags & kCallExecFdInherit;
  c.controlling_tty = h.flags & kCallTty;
  return 0;
}

[[noreturn]] void init_main(const ChildContext& parent_view) noexcept {
  // Our own copy: the command's part is filled in below.
  ChildContext c = parent_view;
  const int rw = c.report_w;
  // Signals stay blocked (from the parent) until our own handlers are set.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  ::prctl(PR_SET_NAME, "cloister-init", 0, 0, 0);
  {
    const int tpl_ns = c.mount_template ? c.mount_template->ns.get() : -1;
    const int tpl_root = c.mount_template ? c.mount_template->root.get() : -1;
    int keep[] = {c.report_w, c.status_w, c.ctl, c.devnull, c.netns, tpl_ns, tpl_root, 0, 1, 2};
    close_all_but(keep, static_cast<int>(std::size(keep)));
  }
  if (c.netns >= 0) {
    if (::setns(c.netns, CLONE_NEWNET) != 0) report_and_exit(rw, SpawnStep::Loopback, errno);
    ::close(c.netns);
  }
  int failed_op = -1;
  if (int e = c.mounts->execute(&failed_op, c.mount_template))
    report_and_exit(rw, SpawnStep::Mounts, e, failed_op);
  if (c.mount_template) {
    ::close(c.mount_template->ns.get());
    ::close(c.mount_template->root.get());
  }
  if (int e = namespaces::set_hostname(c.hostname)) report_and_exit(rw, SpawnStep::Hostname, e);
  for (size_t i = 0; i < c.spec->rlimits.size(); ++i)
    if (int e = rlimits::apply(c.spec->rlimits[i]))
      report_and_exit(rw, SpawnStep::Rlimits, e, static_cast<int>(i));
  // The parent lets us go once this process is in all its cgroups (v1
  // controllers need the parent to write our pid) and, unless the pool had
  // one, with the network namespace it made meanwhile: both ran while we set
  // up the mounts. EOF instead means the parent failed or is gone. Before
  // the bounding set, seccomp and the uid change: setns needs what they take.
  if (c.wait_go) {
    char go;
    int ns = -1;
    size_t nfds = 0;
    if (recv_with_fds(c.ctl, &go, 1, &ns, 1, &nfds) != 1) ::_exit(kSetupFailedExit);
    if (nfds == 1) {
      if (::setns(ns, CLONE_NEWNET) != 0) report_and_exit(rw, SpawnStep::Loopback, errno);
      ::close(ns);
    }
  }
  if (int e = capabilities::drop_bounding(c.spec->capabilities))
    report_and_exit(rw, SpawnStep::BoundingSet, e);
  if (c.spec->no_new_privileges && ::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
    report_and_exit(rw, SpawnStep::NoNewPrivs, errno);
  // Before the uid change: without no_new_privs, installing a filter needs
  // CAP_SYS_ADMIN, which only uid 0 still has here.
  if (int e = seccomp::apply(*c.filter)) report_and_exit(rw, SpawnStep::Seccomp, e);
  // Raw syscalls: glibc's set*id wrappers signal every thread of the parent,
  // which do not exist in this copy of it.
  const Identity& id = c.spec->user;
  ::prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0);
  if (::syscall(SYS_setgroups, id.groups.size(), id.groups.data()) != 0)
    report_and_exit(rw, SpawnStep::Groups, errno);
  if (::syscall(SYS_setresgid, id.gid, id.gid, id.gid) != 0)
    report_and_exit(rw, SpawnStep::Gid, errno);
  if (::syscall(SYS_setresuid, id.uid, id.uid, id.uid) != 0)
    report_and_exit(rw, SpawnStep::Uid, errno);
  if (int e = capabilities::apply(c.spec->capabilities))
    report_and_exit(rw, SpawnStep::Capabilities, e);
  // Set up: now the command. A warm init (Sandbox's pool) waits here for its
  // caller; EOF means the sandbox was dropped unused.
  if (int e = receive_call(c)) {
    if (e == EPIPE) ::_exit(kSetupFailedExit);
    report_and_exit(rw, SpawnStep::Command, e);
  }
  ::close(c.ctl);
  if (c.beneath) {
    // In the sandbox's own view, after pivot_root: the check is the use.
    open_how how{};
    how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int root = static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, c.beneath, &how, sizeof how));
    if (root < 0) report_and_exit(rw, SpawnStep::WorkDir, errno, 1);
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
    int wd;
    do wd = static_cast<int>(::syscall(SYS_openat2, root, c.beneath_rest, &how, sizeof how));
    while (wd < 0 && errno == EAGAIN);
    if (wd < 0) report_and_exit(rw, SpawnStep::WorkDir, errno, 2);
    if (::fchdir(wd) != 0) report_and_exit(rw, SpawnStep::WorkDir, errno, 2);
    ::close(wd);
    ::close(root);
  } else if (::chdir(c.work_dir) != 0) {
    report_and_exit(rw, SpawnStep::WorkDir, errno);
  }

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
                       CLONE_VM | CLONE_VFORK | SIGCHLD, const_cast<ChildContext*>(&c));
  if (child < 0) report_and_exit(rw, SpawnStep::ForkPayload, errno);
  g_payload = static_cast<pid_t>(child);
  // The init keeps nothing of the payload's: the parent sees EOF on the
  // report pipe when the payload execs, and on stdio when the payload's tree
  // closes it.
  {
    int keep[] = {c.status_w};
    close_all_but(keep, 1);
  }
  unblock_all_signals();
  for (;;) {
    int status = 0;
    pid_t w = ::waitpid(-1, &status, __WALL);
    if (w < 0) {
      if (errno == EINTR) continue;
      ::_exit(kSetupFailedExit);  // ECHILD: cannot happen while the payload lives
    }
    if (w == g_payload) {
      InitStatus msg{};
      msg.wait_status = status;
      // Zombies first; then ECHILD means nothing but this init is left in
      // the namespace, and the parent may report the exit before our own
      // exit has torn the namespaces down.
      while ((w = ::waitpid(-1, &status, WNOHANG | __WALL)) > 0) {
      }
      msg.alone = w < 0 && errno == ECHILD;
      struct rusage ru {};
      ::getrusage(RUSAGE_CHILDREN, &ru);
      msg.max_rss_kib = ru.ru_maxrss;
      ssize_t n;
      do n = ::write(c.status_w, &msg, sizeof msg);
      while (n < 0 && errno == EINTR);
      // Our exit tears the namespaces down, which nobody waits for when we
      // are alone: background work.
      if (msg.alone && c.background_exit) ::setpriority(PRIO_PROCESS, 0, kBackgroundNice);
      // Exiting as PID 1 kills whatever the payload left behind.
      ::_exit(0);
    }
  }
}

// True on the library's own threads that live as long as the process: they
// may clone sandboxes themselves (PR_SET_PDEATHSIG follows the cloning thread).
thread_local bool t_long_lived = false;

// Runs fn on one long-lived thread: PR_SET_PDEATHSIG fires when the thread
// that cloned exits, and an embedding daemon may call from short-lived ones.
class SpawnerThread {
 public:
  static SpawnerThread& get() {
    static SpawnerThread* t = new SpawnerThread;  // never destroyed: outlives all sandboxes
    return *t;
  }
  void run(const std::function<void()>& fn) {
    std::packaged_task<void()> task(fn);
    auto done = task.get_future();
    {
      std::lock_guard lk(mu_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    done.wait();
  }

 private:
  SpawnerThread() {
    std::thread([this] {
      t_long_lived = true;
      for (;;) {
        std::packaged_task<void()> task;
        {
          std::unique_lock lk(mu_);
          cv_.wait(lk, [&] { return !queue_.empty(); });
          task = std::move(queue_.front());
          queue_.pop_front();
        }
        task();
      }
    }).detach();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::packaged_task<void()>> queue_;
};

// The candidate paths for argv[0], the way execvp searches PATH.
std::vector<std::string> exec_candidates(const Command& cmd) {
  const std::string& name = cmd.argv[0];
  if (name.find('/') != std::string::npos) return {name};
  std::string path = "/usr/local/bin:/usr/bin:/bin";
  for (const auto& e : cmd.env)
    if (e.starts_with("PATH=")) path = e.substr(5);
  std::vector<std::string> out;
  size_t i = 0;
  while (i <= path.size()) {
    size_t j = path.find(':', i);
    if (j == std::string::npos) j = path.size();
    std::string dir = path.substr(i, j - i);
    if (dir.empty()) dir = ".";
    out.push_back(dir + "/" + name);
    i = j + 1;
  }
  return out;
}

Error describe_failure(const Command& cmd, const Report& r) {
  auto step = static_cast<SpawnStep>(r.step);
  std::string what = std::string(step_name(step));
  switch (step) {
    case SpawnStep::WorkDir:
      what = "work dir " + cmd.work_dir;
      break;
    case SpawnStep::Exec:
      what = "exec '" + cmd.argv[0] + "'";
      break;
    default:
      break;
  }
  Error e = sys_error(what, r.err);
  if (step == SpawnStep::WorkDir && r.err == ENOENT)
    e = make_error(ErrorKind::NotFound,
                   "work dir " + cmd.work_dir + " does not exist in the sandbox", r.err);
  if (step == SpawnStep::WorkDir && !cmd.work_dir_beneath.empty() &&
      (r.err == EXDEV || r.err == ELOOP))
    e = make_error(ErrorKind::Invalid,
                   r.detail == 1 ? "allowed dir " + cmd.work_dir_beneath + " is a symlink"
                                 : "work dir " + cmd.work_dir + " leads out of allowed dir " +
                                       cmd.work_dir_beneath,
                   r.err);
  if (step == SpawnStep::Exec) {
    e.at_exec = true;
    if (r.err == ENOENT) e.message = "command '" + cmd.argv[0] + "' not found";
    if (r.err == ENOEXEC) e.kind = ErrorKind::Invalid;
  }
  return e;
}

}  // namespace

std::string_view step_name(SpawnStep step) {
  switch (step) {
    case SpawnStep::None:
      return "none";
    case SpawnStep::Command:
      return "receive the command";
    case SpawnStep::Signals:
      return "signals";
    case SpawnStep::Loopback:
      return "network namespace";
    case SpawnStep::Mounts:
      return "mounts";
    case SpawnStep::Hostname:
      return "hostname";
    case SpawnStep::Rlimits:
      return "rlimits";
    case SpawnStep::BoundingSet:
      return "capability bounding set";
    case SpawnStep::NoNewPrivs:
      return "no_new_privs";
    case SpawnStep::Seccomp:
      return "seccomp";
    case SpawnStep::Groups:
      return "setgroups";
    case SpawnStep::Gid:
      return "setgid";
    case SpawnStep::Uid:
      return "setuid";
    case SpawnStep::Capabilities:
      return "capabilities";
    case SpawnStep::WorkDir:
      return "work dir";
    case SpawnStep::ForkPayload:
      return "fork payload";
    case SpawnStep::Stdio:
      return "stdio";
    case SpawnStep::Exec:
      return "exec";
  }
  return "unknown step";
}

uint64_t Sandbox::mount_generation_locked() const {
  // Any mount or unmount on the host since the last look (POLLPRI on the
  // mount table) makes copies of the host's trees taken before it stale.
  if (!mountinfo_) mountinfo_ = Fd(::open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC));
  pollfd p{mountinfo_.get(), POLLPRI, 0};
  if (!mountinfo_ || (::poll(&p, 1, 0) == 1 && (p.revents & (POLLPRI | POLLERR)))) ++mount_gen_;
  return mount_gen_;
}

uint64_t Sandbox::mount_generation() const {
  std::lock_guard lk(template_mu_);
  return mount_generation_locked();
}

std::shared_ptr<const mounts::MountTemplate> Sandbox::mount_template(uint64_t* gen) const {
  std::lock_guard lk(template_mu_);
  // A one-shot caller keeps nothing open: no template, no watch on the
  // mount table (nor warm inits, which start with the second spawn).
  if (++template_uses_ < 2) {
    *gen = mount_gen_;
    return nullptr;
  }
  // Read before a build: a change during it is seen at the next look.
  *gen = mount_generation_locked();
  if (!mounts_.templatable() || template_broken_) return nullptr;
  if (template_ && template_gen_ != *gen) template_.reset();
  if (!template_) {
    auto t = mounts_.build_template();
    if (!t) {
      // The full plan works everywhere; the template is only faster.
      template_broken_ = true;
      return nullptr;
    }
    template_ = std::make_shared<const mounts::MountTemplate>(std::move(*t));
    template_gen_ = *gen;
  }
  return template_;
}

Result<std::shared_ptr<const Sandbox>> Sandbox::prepare(const SpawnSpec& spec) {
  auto sb = std::make_shared<Sandbox>();
  sb->spec_ = spec;
  auto plan = mounts::MountPlan::prepare(spec);
  if (!plan) return fail(plan.error().wrap("mount plan"));
  sb->mounts_ = std::move(*plan);
  auto filter = seccomp::load(spec.seccomp_profile);
  if (!filter) return fail(filter.error().wrap("seccomp profile"));
  sb->filter_ = std::move(*filter);
  if (spec.network == NetworkMode::None) {
    auto lo = network::LoopbackUp::prepare();
    if (!lo) return fail(lo.error());
    sb->loopback_ = std::move(*lo);
  }
  sb->clone_flags_ = namespaces::clone_flags(spec.network);
  if (auto e = namespaces::check_hostname(spec.hostname); !e) return fail(e.error());
  return std::shared_ptr<const Sandbox>(std::move(sb));
}

// An init cloned and setting itself up, not given its command yet: made per
// spawn, or ahead of time for the sandbox's pool (Sandbox::take_warm).
struct PendingInit {
  Spawned out;
  Fd report;  // read end: EOF at the payload's exec, or a Report
  Fd ctl;     // the parent's end of the init's control socket
  bool templated = false;
  bool background = false;  // cloned by the prestart thread, at its priority
  uint64_t mount_gen = 0;   // Sandbox::mount_generation() when cloned
  const cgroups::Manager* manager = nullptr;
  Status attached;
  Status netns_made;
};

namespace {

// Sends len bytes with the nfds fds (SCM_RIGHTS); no SIGPIPE. Returns what
// sendmsg returns.
ssize_t send_with_fds(int sock, const void* buf, size_t len, const int* fds, size_t nfds) {
  alignas(cmsghdr) char cbuf[CMSG_SPACE(4 * sizeof(int))] = {};
  iovec iov{const_cast<void*>(buf), len};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  if (nfds) {
    m.msg_control = cbuf;
    m.msg_controllen = CMSG_SPACE(nfds * sizeof(int));
    cmsghdr* cm = CMSG_FIRSTHDR(&m);
    cm->cmsg_level = SOL_SOCKET;
    cm->cmsg_type = SCM_RIGHTS;
    cm->cmsg_len = CMSG_LEN(nfds * sizeof(int));
    std::memcpy(CMSG_DATA(cm), fds, nfds * sizeof(int));
  }
  ssize_t n;
  do n = ::sendmsg(sock, &m, MSG_NOSIGNAL);
  while (n < 0 && errno == EINTR);
  return n;
}

}  // namespace

// Clones an init, with its cgroup, and lets it go (cgroup attach, a network
// namespace): everything but the command.
Result<std::unique_ptr<PendingInit>> clone_init(
    const SpawnSpec& spec, const mounts::MountPlan& plan, const seccomp::Filter& filter,
    const network::LoopbackUp* loopback, uint64_t clone_flags,
    std::shared_ptr<const mounts::MountTemplate> tpl, cgroups::Manager* cgroups) {
  auto p = std::make_unique<PendingInit>();
  p->manager = cgroups;
  Spawned& out = p->out;
  if (cgroups) {
    auto cg = cgroups->create(spec.limits);
    if (!cg) return fail(cg.error().wrap("cgroup"));
    out.cgroup_.emplace(std::move(*cg));
  } else if (!spec.limits.empty()) {
    return fail(invalid("limits are set but no cgroup manager is available"));
  }

  auto report = make_pipe();
  auto status = make_pipe();
  if (!report || !status) return fail(internal("spawn pipes", EMFILE));
  // A fresh network namespace from the pool, or one we make while the child
  // sets up its mounts (not CLONE_NEWNET, which would make it first).
  Fd netns;
  bool make_netns = false;
  if (clone_flags & CLONE_NEWNET) {
    netns = network::NetnsPool::get().take();
    make_netns = !netns;
    clone_flags &= ~static_cast<uint64_t>(CLONE_NEWNET);
  }
  const bool attach = out.cgroup_ && out.cgroup_->needs_attach();
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return fail(sys_error("socketpair"));
  Fd ctl_child(sv[0]);
  p->ctl = Fd(sv[1]);
  auto devnull = open_fd("/dev/null", O_RDWR);
  if (!devnull) return fail(devnull.error());

  ChildContext ctx{};
  ctx.spec = &spec;
  ctx.mounts = &plan;
  ctx.filter = &filter;
  ctx.netns = netns.get();
  ctx.exec_fd = -1;
  ctx.stdio[0] = ctx.stdio[1] = ctx.stdio[2] = -1;
  ctx.hostname = spec.hostname.c_str();
  ctx.report_w = report->write.get();
  ctx.status_w = status->write.get();
  ctx.ctl = ctl_child.get();
  ctx.wait_go = attach || make_netns;
  ctx.devnull = devnull->get();
  ctx.background_exit = g_background_teardown;
  ctx.mount_template = tpl.get();
  p->templated = tpl != nullptr;
  // The child enters the template's namespace and unshares its own copy: a
  // copy of the host's from the clone would only be detached again.
  if (tpl) clone_flags &= ~static_cast<uint64_t>(CLONE_NEWNS);

  int pidfd = -1;
  long pid = -1;
  int clone_errno = 0;
  auto do_clone = [&] {
    clone_args args{};
    args.flags = clone_flags | CLONE_PIDFD;
    args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
    // No exit signal: an embedding program's SIGCHLD handling or
    // waitpid(-1) never sees (or reaps) the sandbox; we wait on the pidfd.
    args.exit_signal = 0;
    if (out.cgroup_ && out.cgroup_->clone_fd() >= 0) {
      args.flags |= CLONE_INTO_CGROUP;
      args.cgroup = static_cast<uint64_t>(out.cgroup_->clone_fd());
    }
    // The child starts with every signal blocked so that no handler of the
    // caller's runs in it; it installs its own before unblocking.
    sigset_t all, old;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    pid = ::syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) init_main(ctx);
    clone_errno = errno;
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  };
  if (::gettid() == ::getpid() || t_long_lived)
    do_clone();
  else
    SpawnerThread::get().run(do_clone);
  if (pid < 0) return fail(sys_error("clone3", clone_errno));
  out.pid_ = static_cast<pid_t>(pid);
  out.pidfd_ = Fd(pidfd);
  out.status_ = std::move(status->read);
  p->report = std::move(report->read);

  // From here a failure must not leave the child behind: ~Spawned kills and
  // reaps it and removes the cgroup. The child sets itself up while we
  // attach it (v1 controllers) and make its network namespace; it waits for
  // "go" only before it drops its privileges, and exits if the control
  // socket closes without one.
  if (attach) p->attached = out.cgroup_->attach(out.pid_);
  Result<Fd> made = Fd();
  if (make_netns) made = network::make_netns(*loopback);
  if (!made) p->netns_made = fail(made.error());
  if (ctx.wait_go && p->attached && made) {
    const int ns = made->get();
    // EPIPE: the child failed already; its report says why.
    (void)send_with_fds(p->ctl.get(), "g", 1, &ns, *made ? 1 : 0);
  }
  // Our time is free until the child has set itself up.
  if (cgroups) cgroups->cleanup_stale_once();
  return p;
}

// Sends the command to a pending init and waits until it runs (EOF on the
// report pipe at the payload's exec) or has failed.
Result<Spawned> give_command(PendingInit& p, const Sandbox& sb, const Command& cmd,
                             const Stdio& stdio) {
  // Header first, with the fds; then the strings.
  std::vector<std::string> cand = exec_candidates(cmd);
  std::string beneath_rest = ".";
  const std::string& b = cmd.work_dir_beneath;
  if (!b.empty() && cmd.work_dir.size() > b.size())
    beneath_rest = cmd.work_dir.substr(b == "/" ? 1 : b.size() + 1);
  std::string body;
  for (const auto& a : cmd.argv) body.append(a).push_back('\0');
  for (const auto& e : cmd.env) body.append(e).push_back('\0');
  for (const auto& c : cand) body.append(c).push_back('\0');
  body.append(cmd.work_dir).push_back('\0');
  body.append(b).push_back('\0');
  body.append(beneath_rest).push_back('\0');
  if (body.size() > kMaxCallBody)
    return fail(make_error(ErrorKind::Limit, "command and environment exceed 64 MiB"));
  CallHeader h{kCallMagic,
               static_cast<uint32_t>(body.size()),
               static_cast<uint32_t>(cmd.argv.size()),
               static_cast<uint32_t>(cmd.env.size()),
               static_cast<uint32_t>(cand.size()),
               0};
  int fds[4];
  size_t nfds = 0;
  auto add = [&](int fd, uint32_t flag) {
    if (fd < 0) return;
    fds[nfds++] = fd;
    h.flags |= flag;
  };
  add(stdio.in, kCallStdin);
  add(stdio.out, kCallStdout);
  add(stdio.err, kCallStderr);
  add(cmd.exec_fd, kCallExecFd);
  if (cmd.exec_fd >= 0 && cmd.exec_fd_inherit) h.flags |= kCallExecFdInherit;
  if (stdio.controlling_tty) h.flags |= kCallTty;
  if (!b.empty()) h.flags |= kCallBeneath;
  // A warm init was set up at background priority: the command runs at ours.
  if (p.background) {
    errno = 0;
    int nice = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
    if (errno == 0) ::setpriority(PRIO_PROCESS, static_cast<id_t>(p.out.pid_), nice);
  }
  // A send that fails means the init is gone: its report (below) says why.
  ssize_t n = send_with_fds(p.ctl.get(), &h, sizeof h, fds, nfds);
  if (n == static_cast<ssize_t>(sizeof h))
    for (size_t off = 0; off < body.size();) {
      ssize_t w = write_nosigpipe(p.ctl.get(), body.data() + off, body.size() - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
  p.ctl.reset();

  Report r{};
  size_t got = 0;
  while (got < sizeof r) {
    ssize_t k = ::read(p.report.get(), reinterpret_cast<char*>(&r) + got, sizeof r - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    got += static_cast<size_t>(k);
  }
  if (got == sizeof r) {
    Error e = describe_failure(cmd, r);
    if (static_cast<SpawnStep>(r.step) == SpawnStep::Mounts)
      e = sys_error("mounts: " + sb.mounts().describe(r.detail, p.templated), r.err);
    p.out.reap();
    return fail(std::move(e));
  }
  if (got != 0) return fail(internal("short report from the sandbox"));
  if (!p.attached) return fail(p.attached.error().wrap("cgroup attach"));
  if (!p.netns_made) return fail(p.netns_made.error().wrap("network namespace"));
  if (n != static_cast<ssize_t>(sizeof h)) return fail(sys_error("send the command", EPIPE));
  return std::move(p.out);
}

// The thread that makes warm inits, one at a time, for every sandbox that
// asks (Sandbox::refill).
class Prestarter {
 public:
  static Prestarter& get() {
    static Prestarter* p = new Prestarter;  // never destroyed: its inits follow it
    return *p;
  }
  // Returns once nothing is queued or being made.
  void drain() {
    std::unique_lock lk(mu_);
    idle_.wait(lk, [&] { return queue_.empty() && !busy_; });
  }
  void request(std::weak_ptr<const Sandbox> sb, std::shared_ptr<cgroups::Manager> cgroups) {
    {
      std::lock_guard lk(mu_);
      queue_.emplace_back(std::move(sb), std::move(cgroups));
      if (!started_) {
        started_ = true;
        std::thread([this] { loop(); }).detach();
      }
    }
    cv_.notify_one();
  }

 private:
  void loop() {
    t_long_lived = true;
    // Background work: it gets what the callers leave of the CPUs. The inits
    // cloned here inherit it until their command comes (give_command).
    ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), kBackgroundNice);
    std::unique_lock lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return !queue_.empty(); });
      auto [weak, cgroups] = std::move(queue_.front());
      queue_.pop_front();
      busy_ = true;
      lk.unlock();
      if (auto sb = weak.lock()) {
        for (;;) {
          bool need;
          {
            std::lock_guard wl(sb->warm_mu_);
            need = sb->warm_.size() < Sandbox::kWarmInits && !sb->warming_;
            sb->warming_ = need;
          }
          if (!need) break;
          // A failure here is left for the next spawn, which starts its own
          // init and reports the error to its caller.
          auto p = sb->start_init(cgroups.get());
          std::lock_guard wl(sb->warm_mu_);
          if (p) {
            (*p)->background = true;
            sb->warm_.push_back(std::move(*p));
          }
          sb->warming_ = false;
          sb->warm_cv_.notify_all();
          if (!p) break;
        }
      }
      // The last owner may be us: the sandbox (and its warm init) goes here.
      cgroups.reset();
      weak.reset();
      lk.lock();
      busy_ = false;
      if (queue_.empty()) idle_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_, idle_;
  bool busy_ = false;
  std::deque<std::pair<std::weak_ptr<const Sandbox>, std::shared_ptr<cgroups::Manager>>> queue_;
  bool started_ = false;
};

Sandbox::Sandbox() = default;
Sandbox::~Sandbox() = default;  // a warm init is killed, reaped and its cgroup removed

std::unique_ptr<PendingInit> Sandbox::take_warm(const cgroups::Manager* cgroups) const {
  std::unique_lock lk(warm_mu_);
  ++spawns_;
  // One being cloned is nearer to ready than one we would clone now.
  warm_cv_.wait(lk, [&] { return !warm_.empty() || !warming_; });
  // Their mounts copied the host's trees when they were made: after a mount
  // on the host since, they go (killed and reaped) and new ones start.
  if (warm_.empty()) return nullptr;  // (a one-shot caller never opens the mount table)
  const uint64_t gen = mount_generation();
  while (!warm_.empty() && warm_.front()->mount_gen != gen) warm_.pop_front();
  for (auto it = warm_.begin(); it != warm_.end(); ++it)
    if ((*it)->manager == cgroups) {
      auto p = std::move(*it);
      warm_.erase(it);
      return p;
    }
  return nullptr;
}

void Sandbox::refill(const std::shared_ptr<cgroups::Manager>& cgroups) const {
  {
    std::lock_guard lk(warm_mu_);
    // A process that starts one sandbox never pays for a second.
    if (spawns_ < 2 || warm_.size() >= Sandbox::kWarmInits || warming_) return;
  }
  Prestarter::get().request(weak_from_this(), cgroups);
}

Result<std::unique_ptr<PendingInit>> Sandbox::start_init(cgroups::Manager* cgroups) const {
  uint64_t gen = 0;
  auto tpl = mount_template(&gen);
  auto p = clone_init(spec_, mounts_, filter_, loopback_ ? &*loopback_ : nullptr, clone_flags_,
                      std::move(tpl), cgroups);
  if (p) (*p)->mount_gen = gen;
  return p;
}

Result<Spawned> spawn(const Sandbox& sb, const Command& cmd, const Stdio& stdio,
                      const std::shared_ptr<cgroups::Manager>& cgroups) {
  if (cmd.argv.empty() || cmd.argv[0].empty()) return fail(invalid("empty command"));
  if (cmd.work_dir.empty() || cmd.work_dir[0] != '/')
    return fail(invalid("work dir '" + cmd.work_dir + "' is not an absolute path"));
  const std::string& b = cmd.work_dir_beneath;
  if (!b.empty() && cmd.work_dir != b && b != "/" && !cmd.work_dir.starts_with(b + "/"))
    return fail(invalid("work dir " + cmd.work_dir + " is not below " + b));

  std::unique_ptr<PendingInit> p = sb.take_warm(cgroups.get());
  if (!p) {
    auto cold = sb.start_init(cgroups.get());
    if (!cold) return fail(cold.error());
    p = std::move(*cold);
  }
  return give_command(*p, sb, cmd, stdio);
}

Spawned& Spawned::operator=(Spawned&& o) noexcept {
  if (this == &o) return *this;
  if (pid_ > 0 && !reaped_) {
    kill();
    reap();
  }
  release();
  pid_ = std::exchange(o.pid_, -1);
  pidfd_ = std::move(o.pidfd_);
  status_ = std::move(o.status_);
  cgroup_ = std::move(o.cgroup_);
  o.cgroup_.reset();
  reaped_ = std::exchange(o.reaped_, true);
  exit_read_ = o.exit_read_;
  got_message_ = o.got_message_;
  alone_ = o.alone_;
  wait_status_ = o.wait_status_;
  max_rss_ = o.max_rss_;
  return *this;
}

Spawned::~Spawned() {
  if (pid_ > 0 && !reaped_) {
    kill();
    reap();
  }
  release();
}

Status Spawned::signal(int sig) {
  if (reaped_) return fail(invalid("process has exited"));
  if (sig == SIGKILL) return kill();
  if (::syscall(SYS_pidfd_send_signal, pidfd_.get(), sig, nullptr, 0) != 0)
    return fail(sys_error("signal"));
  return {};
}

Status Spawned::kill() {
  if (reaped_) return {};
  // SIGKILL to the init of a pid namespace kills every process in it.
  if (::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0) != 0 && errno != ESRCH)
    return fail(sys_error("kill"));
  if (cgroup_) return cgroup_->kill();
  return {};
}

bool Spawned::read_exit() {
  if (exit_read_) return alone_;
  if (!status_) return false;
  InitStatus msg{};
  ssize_t n;
  do n = ::read(status_.get(), &msg, sizeof msg);
  while (n < 0 && errno == EINTR);
  status_.reset();
  exit_read_ = true;
  if (n != static_cast<ssize_t>(sizeof msg)) return false;  // the init died first
  got_message_ = true;
  wait_status_ = msg.wait_status;
  max_rss_ = static_cast<uint64_t>(msg.max_rss_kib) * 1024;
  alone_ = msg.alone != 0;
  return alone_;
}

Result<int> Spawned::reap() {
  if (reaped_) return wait_status_;
  siginfo_t info{};
  struct rusage ru {};
  // The raw syscall: it also returns the rusage of the init and of every
  // descendant it reaped, a peak memory figure for when the init could not
  // send its own.
  for (;;) {
    if (::syscall(SYS_waitid, P_PIDFD, pidfd_.get(), &info, WEXITED | __WALL, &ru) == 0) break;
    if (errno != EINTR) return fail(sys_error("waitid"));
  }
  reaped_ = true;
  read_exit();
  if (got_message_) return wait_status_;
  max_rss_ = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  if (info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED) {
    wait_status_ = info.si_status & 0x7f;  // as if the payload got the init's signal
  } else {
    // The init exited before its payload did: it failed during setup.
    wait_status_ = (info.si_status & 0xff) << 8;
  }
  return wait_status_;
}

namespace {

// The library's reaper: one thread, running only while it has sandboxes
// whose inits are on their way out.
class Reaper {
 public:
  static Reaper& get() {
    static Reaper* r = new Reaper;  // never destroyed: may outlive statics
    return *r;
  }
  void add(Spawned s) {
    {
      std::lock_guard lk(mu_);
      pending_.push_back(std::make_unique<Spawned>(std::move(s)));
      // Started once and kept: a thread made and ended per sandbox cost more
      // than the teardown it ran.
      if (!started_) {
        started_ = true;
        std::thread([this] { loop(); }).detach();
      }
    }
    work_.notify_one();
  }
  void drain() {
    std::unique_lock lk(mu_);
    idle_.wait(lk, [&] { return pending_.empty() && !busy_; });
  }

 private:
  void loop() {
    std::unique_lock lk(mu_);
    for (;;) {
      work_.wait(lk, [&] { return !pending_.empty(); });
      std::unique_ptr<Spawned> s = std::move(pending_.front());
      pending_.pop_front();
      busy_ = true;
      lk.unlock();
      // Blocks until this init is gone (it exits by itself: it is alone).
      (void)s->reap();
      (void)s->release();
      s.reset();
      lk.lock();
      busy_ = false;
      if (pending_.empty()) idle_.notify_all();
    }
  }
  std::mutex mu_;
  std::condition_variable work_, idle_;
  std::deque<std::unique_ptr<Spawned>> pending_;
  bool started_ = false;
  bool busy_ = false;
};

}  // namespace

void Spawned::set_background_teardown(bool on) {
  g_background_teardown = on;
}

void Spawned::retire(Spawned&& s) {
  if (s.pid_ <= 0 || s.reaped_ || !s.alone_) {
    Spawned gone = std::move(s);  // killed and reaped by its destructor
    return;
  }
  if (!g_background_teardown) {
    // The init is on its way out by itself: a kill would only wait longer.
    (void)s.reap();
    (void)s.release();
    return;
  }
  Reaper::get().add(std::move(s));
}

void Spawned::drain_retired() {
  Prestarter::get().drain();
  Reaper::get().drain();
  network::NetnsPool::get().wait_idle();
}

Result<cgroups::Usage> Spawned::usage() const {
  cgroups::Usage u;
  if (cgroup_) {
    auto r = cgroup_->usage();
    if (!r) return fail(r.error());
    u = *r;
  }
  // Without a memory cgroup: the largest resident set of any process.
  if (u.memory_peak == 0) u.memory_peak = max_rss_;
  return u;
}

Status Spawned::release() {
  if (!cgroup_) return {};
  auto s = cgroup_->destroy();
  cgroup_.reset();
  return s;
}

}  // namespace cloister

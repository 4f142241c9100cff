#include "isolate/spawn.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/ioctl.h>
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

// Exit code of a child that failed before exec; the parent reads the reason
// from the report pipe, so the value only has to be recognisable in ps.
constexpr int kSetupFailedExit = 125;

// Everything the child reads, laid out before the clone.
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
  int go_r;     // the parent's go (with a network namespace to join), or -1
  int devnull;  // host /dev/null, opened before the clone
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

[[noreturn]] void init_main(const ChildContext& c) noexcept {
  const int rw = c.report_w;
  // Signals stay blocked (from the parent) until our own handlers are set.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  ::prctl(PR_SET_NAME, "cloister-init", 0, 0, 0);
  {
    const int tpl_ns = c.mount_template ? c.mount_template->ns.get() : -1;
    const int tpl_root = c.mount_template ? c.mount_template->root.get() : -1;
    int keep[] = {c.stdio[0], c.stdio[1], c.stdio[2], c.report_w, c.status_w, c.go_r, c.devnull,
                  c.netns,    c.exec_fd,  tpl_ns,     tpl_root,   0,          1,      2};
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
  if (c.go_r >= 0) {
    char go;
    iovec iov{&go, 1};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf;
    m.msg_controllen = sizeof cbuf;
    ssize_t got;
    do got = ::recvmsg(c.go_r, &m, MSG_CMSG_CLOEXEC);
    while (got < 0 && errno == EINTR);
    if (got != 1) ::_exit(kSetupFailedExit);
    ::close(c.go_r);
    cmsghdr* cm = CMSG_FIRSTHDR(&m);
    if (cm && cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_RIGHTS) {
      int ns;
      std::memcpy(&ns, CMSG_DATA(cm), sizeof ns);
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
      // Exiting as PID 1 kills whatever the payload left behind.
      ::_exit(0);
    }
  }
}

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
    case SpawnStep::WaitParent:
      return "wait for parent";
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

std::shared_ptr<const mounts::MountTemplate> Sandbox::mount_template() const {
  if (!mounts_.templatable()) return nullptr;
  std::lock_guard lk(template_mu_);
  if (template_broken_ || ++template_uses_ < 2) return nullptr;
  if (template_) {
    // Any mount or unmount on the host since the last look: the template's
    // copies of the host trees may be stale.
    pollfd p{mountinfo_.get(), POLLPRI, 0};
    if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLPRI | POLLERR))) template_.reset();
  }
  if (!template_) {
    // Opened before the build: a change in between is seen at the next spawn.
    if (!mountinfo_) mountinfo_ = Fd(::open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC));
    auto t = mountinfo_ ? mounts_.build_template() : fail(sys_error("open /proc/self/mountinfo"));
    if (!t) {
      // The full plan works everywhere; the template is only faster.
      template_broken_ = true;
      return nullptr;
    }
    template_ = std::make_shared<const mounts::MountTemplate>(std::move(*t));
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

Result<Spawned> spawn(const Sandbox& sb, const Command& cmd, const Stdio& stdio,
                      cgroups::Manager* cgroups) {
  if (cmd.argv.empty() || cmd.argv[0].empty()) return fail(invalid("empty command"));
  if (cmd.work_dir.empty() || cmd.work_dir[0] != '/')
    return fail(invalid("work dir '" + cmd.work_dir + "' is not an absolute path"));

  // Everything the child touches is allocated here.
  std::vector<char*> argv, envp;
  for (const auto& a : cmd.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (const auto& e : cmd.env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  std::vector<std::string> cand = exec_candidates(cmd);
  std::vector<const char*> cand_ptrs;
  for (const auto& c : cand) cand_ptrs.push_back(c.c_str());

  Spawned out;
  if (cgroups) {
    auto cg = cgroups->create(sb.spec_.limits);
    if (!cg) return fail(cg.error().wrap("cgroup"));
    out.cgroup_.emplace(std::move(*cg));
  } else if (!sb.spec_.limits.empty()) {
    return fail(invalid("limits are set but no cgroup manager is available"));
  }

  auto report = make_pipe();
  auto status = make_pipe();
  uint64_t clone_flags = sb.clone_flags_;
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
  Fd go_r, go_w;
  if (attach || make_netns) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
      return fail(sys_error("socketpair"));
    go_r = Fd(sv[0]);
    go_w = Fd(sv[1]);
  }
  if (!report || !status) return fail(internal("spawn pipes", EMFILE));
  auto devnull = open_fd("/dev/null", O_RDWR);
  if (!devnull) return fail(devnull.error());

  ChildContext ctx{};
  ctx.spec = &sb.spec_;
  ctx.mounts = &sb.mounts_;
  ctx.filter = &sb.filter_;
  ctx.netns = netns.get();
  ctx.argv = argv.data();
  ctx.envp = envp.data();
  ctx.candidates = cand_ptrs.data();
  ctx.ncandidates = cand_ptrs.size();
  ctx.work_dir = cmd.work_dir.c_str();
  std::string beneath_rest = ".";
  if (!cmd.work_dir_beneath.empty()) {
    const std::string& b = cmd.work_dir_beneath;
    if (cmd.work_dir != b && b != "/" && !cmd.work_dir.starts_with(b + "/"))
      return fail(invalid("work dir " + cmd.work_dir + " is not below " + b));
    if (cmd.work_dir.size() > b.size())
      beneath_rest = cmd.work_dir.substr(b == "/" ? 1 : b.size() + 1);
    ctx.beneath = b.c_str();
    ctx.beneath_rest = beneath_rest.c_str();
  }
  ctx.exec_fd = cmd.exec_fd;
  ctx.exec_fd_inherit = cmd.exec_fd_inherit;
  ctx.hostname = sb.spec_.hostname.c_str();
  ctx.stdio[0] = stdio.in;
  ctx.stdio[1] = stdio.out;
  ctx.stdio[2] = stdio.err;
  ctx.controlling_tty = stdio.controlling_tty;
  ctx.report_w = report->write.get();
  ctx.status_w = status->write.get();
  ctx.go_r = go_r.get();
  ctx.devnull = devnull->get();
  std::shared_ptr<const mounts::MountTemplate> mount_template = sb.mount_template();
  ctx.mount_template = mount_template.get();
  // The child enters the template's namespace and unshares its own copy: a
  // copy of the host's from the clone would only be detached again.
  if (mount_template) clone_flags &= ~static_cast<uint64_t>(CLONE_NEWNS);

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
  if (::gettid() == ::getpid())
    do_clone();
  else
    SpawnerThread::get().run(do_clone);
  if (pid < 0) return fail(sys_error("clone3", clone_errno));
  out.pid_ = static_cast<pid_t>(pid);
  out.pidfd_ = Fd(pidfd);
  out.status_ = std::move(status->read);
  report->write.reset();
  status->write.reset();
  go_r.reset();
  netns.reset();

  // From here a failure must not leave the child behind: ~Spawned kills and
  // reaps it and removes the cgroup. The child sets itself up while we
  // attach it (v1 controllers); it waits for "go" only before it forks the
  // payload, and exits if the go pipe closes without one.
  Status attached;
  if (attach) attached = out.cgroup_->attach(out.pid_);
  Result<Fd> made = Fd();
  if (make_netns) made = network::make_netns(*sb.loopback_);
  if (go_w && attached && made) {
    char go = 'g';
    iovec iov{&go, 1};
    alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (*made) {
      m.msg_control = cbuf;
      m.msg_controllen = sizeof cbuf;
      cmsghdr* cm = CMSG_FIRSTHDR(&m);
      cm->cmsg_level = SOL_SOCKET;
      cm->cmsg_type = SCM_RIGHTS;
      cm->cmsg_len = CMSG_LEN(sizeof(int));
      int fd = made->get();
      std::memcpy(CMSG_DATA(cm), &fd, sizeof fd);
    }
    // EPIPE: the child failed already; its report says why.
    (void)::sendmsg(go_w.get(), &m, MSG_NOSIGNAL);
  }
  go_w.reset();
  // Our time is free until the child has set itself up.
  if (cgroups) cgroups->cleanup_stale_once();

  Report r{};
  size_t got = 0;
  while (got < sizeof r) {
    ssize_t n = ::read(report->read.get(), reinterpret_cast<char*>(&r) + got, sizeof r - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += static_cast<size_t>(n);
  }
  if (got == sizeof r) {
    Error e = describe_failure(cmd, r);
    if (static_cast<SpawnStep>(r.step) == SpawnStep::Mounts)
      e = sys_error("mounts: " + sb.mounts_.describe(r.detail, mount_template != nullptr), r.err);
    out.reap();
    return fail(std::move(e));
  }
  if (got != 0) return fail(internal("short report from the sandbox"));
  if (!attached) return fail(attached.error().wrap("cgroup attach"));
  if (!made) return fail(made.error().wrap("network namespace"));
  return out;
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
    std::lock_guard lk(mu_);
    pending_.push_back(std::make_unique<Spawned>(std::move(s)));
    if (!running_) {
      running_ = true;
      std::thread([this] { loop(); }).detach();
    }
  }
  void drain() {
    std::unique_lock lk(mu_);
    idle_.wait(lk, [&] { return pending_.empty() && !running_; });
  }

 private:
  void loop() {
    std::unique_lock lk(mu_);
    while (!pending_.empty()) {
      std::unique_ptr<Spawned> s = std::move(pending_.front());
      pending_.pop_front();
      lk.unlock();
      // Blocks until this init is gone (it exits by itself: it is alone).
      (void)s->reap();
      (void)s->release();
      s.reset();
      lk.lock();
    }
    running_ = false;
    idle_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable idle_;
  std::deque<std::unique_ptr<Spawned>> pending_;
  bool running_ = false;
};

}  // namespace

std::atomic<bool> g_background_teardown{true};

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
  Reaper::get().drain();
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

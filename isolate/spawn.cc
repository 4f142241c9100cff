#include "isolate/spawn.h"
#include "isolate/userns.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/capability.h>
#include <linux/close_range.h>
#include <linux/magic.h>
#include <linux/sched.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <future>
#include <thread>
#include <type_traits>
#include <unordered_set>

#include "isolate/capabilities.h"
#include "isolate/clone_vm.h"
#include "isolate/init_program.h"
#include "isolate/namespaces.h"
#include "isolate/pending_init.h"
#include "isolate/seccomp.h"

namespace cloister {

struct SpawnInternals {
  // Clones an init, with its cgroup, sends it its setup and lets it go
  // (cgroup attach, a network namespace): everything but the command.
  // With a join, the init enters that running sandbox instead of making one.
  static Result<std::unique_ptr<PendingInit>> clone_init(const Sandbox&, cgroups::Manager*,
                                                         const Detach* detach = nullptr,
                                                         Join* join = nullptr);
  // Sends the command to a pending init and waits until it runs (EOF on the
  // report pipe at the payload's exec) or has failed.
  // A join's wait for the exec is bounded (kJoinStartDeadline).
  static Result<Spawned> give_command(PendingInit&, const Sandbox&, const Command&, const Stdio&,
                                      const Detach* detach = nullptr, bool joined = false);
  static Result<Spawned> spawn(const Sandbox&, const Command&, const Stdio&,
                               const std::shared_ptr<cgroups::Manager>&);
  static Result<Created> create_detached(const Sandbox&, const Command&, const Stdio&,
                                         cgroups::Manager*, const Detach&);
  static Result<Spawned> spawn_joined(const Sandbox&, const Command&, const Stdio&, Join&);
};
namespace {

// Spawned::set_background_teardown.
std::atomic<bool> g_background_teardown{true};

// True on the library's own threads that live as long as the process.
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

Error describe_failure(const Command& cmd, const wire::Report& r) {
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

// --- the setup message (init_wire.h) ----------------------------------------

// Encodes everything of the sandbox the init needs, but for the fds and the
// per-spawn flags (patched into SetupFixed by clone_init).
std::string encode_setup(const SpawnSpec& spec, const std::vector<mounts::OpView>& ops,
                         const seccomp::Filter& filter) {
  std::string strings;
  auto add = [&](const char* s) -> uint32_t {
    if (!s) return wire::kNoString;
    auto off = static_cast<uint32_t>(strings.size());
    strings.append(s);
    strings.push_back('\0');
    return off;
  };
  wire::SetupFixed fx{};
  fx.capabilities = spec.capabilities | spec.inert_capabilities;
  fx.last_cap = capabilities::last_cap();
  fx.flags = spec.no_new_privileges ? wire::kSetupNoNewPrivs : 0;
  fx.uid = spec.user.uid;
  fx.gid = spec.user.gid;
  fx.ngroups = static_cast<uint32_t>(spec.user.groups.size());
  fx.nrlimits = static_cast<uint32_t>(spec.rlimits.size());
  fx.nops = static_cast<uint32_t>(ops.size());
  fx.nfilter = static_cast<uint32_t>(filter.insns().size());
  fx.hostname = add(spec.hostname.c_str());
  fx.sysctls = static_cast<uint32_t>(strings.size());
  for (const auto& s : spec.sysctls) {
    // Checked by Sandbox::prepare.
    auto path = sysctl::path_of(s, spec.network != NetworkMode::Host);
    add(path ? path->c_str() : "");
    add(s.value.c_str());
    ++fx.nsysctls;
  }
  if (spec.unprivileged) {
    // The kernel counts an ordinary user's inotify instances and watches
    // across all its processes, sandboxes included: each sandbox may take
    // half of what the user may have, so that one cannot starve the user's
    // other programs.
    auto half = [](const char* file) -> uint32_t {
      auto v = read_file(file);
      if (!v) return 0;
      unsigned long n = std::strtoul(v->c_str(), nullptr, 10);
      return n >= 2 && n <= 0xffffffffUL ? static_cast<uint32_t>(n / 2) : 0;
    };
    fx.max_inotify_instances = half("/proc/sys/user/max_inotify_instances");
    fx.max_inotify_watches = half("/proc/sys/user/max_inotify_watches");
  }
  std::vector<wire::WireOp> wops;
  for (const auto& o : ops) {
    wire::WireOp w{};
    w.kind = static_cast<uint8_t>(o.kind);
    w.optional = o.optional;
    w.in_volume = o.in_volume;
    w.tree = o.source;
    w.mode = o.mode;
    w.flags = o.flags;
    w.dev = o.dev;
    w.src = add(o.src);
    w.path = add(o.path);
    w.data = add(o.data);
    wops.push_back(w);
  }
  fx.strings_len = static_cast<uint32_t>(strings.size());
  std::string body;
  auto put = [&](const void* p, size_t n) { body.append(static_cast<const char*>(p), n); };
  put(&fx, sizeof fx);
  for (gid_t g : spec.user.groups) {
    uint32_t v = g;
    put(&v, sizeof v);
  }
  for (const auto& l : spec.rlimits) {
    wire::WireRlimit w{l.resource, 0, l.soft, l.hard};
    put(&w, sizeof w);
  }
  put(wops.data(), wops.size() * sizeof(wire::WireOp));
  put(filter.insns().data(), filter.insns().size() * sizeof(sock_filter));
  put(strings.data(), strings.size());
  return body;
}

// What the clone child needs, laid out before the clone.
struct ExecArgs {
  int program;  // the init's sealed memfd
  int ctl;
  int report_w;
  char* const* argv;
  char* const* envp;
  // Unprivileged (CLONE_NEWUSER): the lines of our own maps, "0 ID 1\n",
  // written by the child before its exec, which keeps its capabilities in
  // the new namespace only as uid 0 there. Null otherwise.
  const char* uid_map = nullptr;
  const char* gid_map = nullptr;
  // Unprivileged with a subordinate range: newuidmap and newgidmap write
  // the maps from outside; the child waits for one byte here before its
  // exec (EOF: they failed, exit). -1 otherwise.
  int maps_written = -1;
  int maps_written_w = -1;  // its write end, which the child closes first
  bool pdeathsig = true;    // off for a detached (OCI) init
};

// Writes the whole of text to path (the child's raw calls); 0 or -errno.
long write_proc_file(const char* path, const char* text) noexcept {
  long fd = child_syscall(SYS_openat, AT_FDCWD, reinterpret_cast<long>(path), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return fd;
  long len = 0;
  while (text[len]) ++len;
  long r = child_syscall(SYS_write, fd, reinterpret_cast<long>(text), len);
  child_syscall(SYS_close, fd);
  if (r < 0) return r;
  return r == len ? 0 : -EIO;
}

// The clone child: makes ctl and report_w the only fds that survive, and
// execs the init. It shares the caller's memory (CLONE_VM) until then: raw
// system calls only, nothing written but the report of a failed exec.
[[noreturn]] void exec_init(void* arg) noexcept {
  const ExecArgs& x = *static_cast<const ExecArgs*>(arg);
  constexpr auto l = [](auto v) { return child_arg(v); };
  // The caller may be killed at any time from here on: its death kills
  // the init (and the init's death the namespace). Set before the exec,
  // which keeps it; the init finds out about a caller gone before this
  // line by the EOF on its control socket.
  if (x.pdeathsig) child_syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  // A session of its own: no controlling terminal of the caller's for the
  // payload to push input into (TIOCSTI), nor the caller's session's
  // scheduling group (/proc/1/autogroup, which an unprivileged sandbox's
  // root owns) to change.
  child_syscall(SYS_setsid);
  // Every fd of the caller's, also those it opened without O_CLOEXEC, goes
  // at the exec; the init's two stay.
  long r = 0;
  if (x.maps_written >= 0) {
    child_syscall(SYS_close, x.maps_written_w);
    char b;
    r = child_syscall(SYS_read, x.maps_written, l(&b), 1);
    if (r != 1)
      for (;;) child_syscall(SYS_exit_group, wire::kSetupFailedExit);
    r = 0;
  }
  // An ordinary user may map its own ids once setgroups is denied.
  if (x.uid_map) {
    r = write_proc_file("/proc/self/setgroups", "deny");
    if (r == 0) r = write_proc_file("/proc/self/uid_map", x.uid_map);
    if (r == 0) r = write_proc_file("/proc/self/gid_map", x.gid_map);
  }
  if (r == 0) r = child_syscall(SYS_close_range, 0, l(~0U), CLOSE_RANGE_CLOEXEC);
  if (r == 0) r = child_syscall(SYS_fcntl, x.ctl, F_SETFD, 0);
  if (r == 0) r = child_syscall(SYS_fcntl, x.report_w, F_SETFD, 0);
  if (r == 0)
    r = child_syscall(SYS_execveat, x.program, l(""), l(x.argv), l(x.envp), AT_EMPTY_PATH);
  wire::Report rep{static_cast<int32_t>(SpawnStep::ExecInit), static_cast<int32_t>(-r), 0};
  child_syscall(SYS_write, x.report_w, l(&rep), sizeof rep);
  for (;;) child_syscall(SYS_exit_group, wire::kSetupFailedExit);
}

// Sends the setup: header and body, then the fds in one-byte messages.
Status send_setup(int ctl, const wire::SetupFixed& fx, std::string_view rest,
                  const std::vector<int>& fds) {
  wire::SetupHeader h{wire::kSetupMagic, wire::kVersion,
                      static_cast<uint32_t>(sizeof fx + rest.size()),
                      static_cast<uint32_t>(fds.size())};
  iovec iov[3] = {{&h, sizeof h},
                  {const_cast<wire::SetupFixed*>(&fx), sizeof fx},
                  {const_cast<char*>(rest.data()), rest.size()}};
  msghdr m{};
  m.msg_iov = iov;
  m.msg_iovlen = 3;
  while (m.msg_iovlen > 0) {
    ssize_t n = ::sendmsg(ctl, &m, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail(sys_error("send the setup", n < 0 ? errno : EPIPE));
    // A short write: on from where it stopped.
    auto k = static_cast<size_t>(n);
    while (m.msg_iovlen > 0 && k >= m.msg_iov->iov_len) {
      k -= m.msg_iov->iov_len;
      ++m.msg_iov;
      --m.msg_iovlen;
    }
    if (m.msg_iovlen > 0) {
      m.msg_iov->iov_base = static_cast<char*>(m.msg_iov->iov_base) + k;
      m.msg_iov->iov_len -= k;
    }
  }
  for (size_t off = 0; off < fds.size();) {
    size_t k = std::min(kMaxPassFds, fds.size() - off);
    if (send_fds(ctl, "F", 1, fds.data() + off, k) != 1)
      return fail(sys_error("send the setup's fds"));
    off += k;
  }
  return {};
}

}  // namespace

void mark_long_lived_thread() {
  t_long_lived = true;
}

std::string_view step_name(SpawnStep step) {
  switch (step) {
    case SpawnStep::None:
      return "none";
    case SpawnStep::ExecInit:
      return "exec the init program";
    case SpawnStep::Setup:
      return "receive the setup";
    case SpawnStep::Command:
      return "receive the command";
    case SpawnStep::Loopback:
      return "network namespace";
    case SpawnStep::Mounts:
      return "mounts";
    case SpawnStep::Hostname:
      return "hostname";
    case SpawnStep::Rlimits:
      return "rlimits";
    case SpawnStep::Sysctl:
      return "sysctl";
    case SpawnStep::Go:
      return "wait for the cgroup attach";
    case SpawnStep::CgroupNs:
      return "cgroup namespace";
    case SpawnStep::UserNs:
      return "join the user namespace";
    case SpawnStep::UserNsLimits:
      return "bound the user namespace's inotify counters";
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
    case SpawnStep::Console:
      return "console";
    case SpawnStep::Start:
      return "wait for start";
  }
  return "unknown step";
}

namespace {

// newuidmap PID 0 UID 1 1 SUB N, and newgidmap likewise: the setuid
// helpers check the ranges against /etc/subuid and /etc/subgid. Their exit
// status may be lost to an embedding program that reaps every child, so
// success is read off the child's maps. Their stderr makes the error.
Status write_subid_maps(pid_t child, const userns::Map& m) {
  // setgroups denied first, as for a map the user writes itself: with it
  // allowed, the init could drop the user's supplementary groups, and a
  // file that shuts one of them out (0604 root:group) would open up. We own
  // the namespace, so we may; it must precede the gid map.
  if (auto s = write_file("/proc/" + std::to_string(child) + "/setgroups", "deny"); !s)
    return fail(s.error().wrap("deny setgroups in the sandbox's user namespace"));
  for (bool uid : {true, false}) {
    const char* prog = uid ? userns::kNewUidmap : userns::kNewGidmap;
    const std::string own = std::to_string(uid ? m.uid_base : m.gid_base);
    const std::string sub = std::to_string(uid ? m.sub_uid_base : m.sub_gid_base);
    const std::string pid = std::to_string(child), count = std::to_string(m.sub_size);
    const char* argv[] = {prog, pid.c_str(), "0",           own.c_str(), "1",
                          "1",  sub.c_str(), count.c_str(), nullptr};
    auto err = make_pipe();
    if (!err) return fail(err.error());
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, err->write.get(), 2);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    char* envp[] = {nullptr};
    pid_t helper = -1;
    int rc = ::posix_spawn(&helper, prog, &fa, nullptr, const_cast<char* const*>(argv), envp);
    posix_spawn_file_actions_destroy(&fa);
    err->write.reset();
    if (rc != 0) return fail(sys_error(std::string("run ") + prog, rc));
    std::string said;
    char buf[512];
    ssize_t n;
    while ((n = ::read(err->read.get(), buf, sizeof buf)) != 0) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      if (said.size() < 2048) said.append(buf, static_cast<size_t>(n));
    }
    while (::waitpid(helper, nullptr, 0) < 0 && errno == EINTR) {
    }
    auto map = read_file("/proc/" + pid + (uid ? "/uid_map" : "/gid_map"));
    if (!map || map->empty()) {
      while (!said.empty() && (said.back() == '\n' || said.back() == ' ')) said.pop_back();
      return fail(make_error(ErrorKind::PermissionDenied,
                             std::string(prog) + " " + pid + " 0 " + own + " 1 1 " + sub + " " +
                                 count + " failed" + (said.empty() ? "" : ": " + said)));
    }
  }
  return {};
}

// The rules of SpawnSpec::unprivileged, and a clear word for an ordinary
// user who did not set it.
Status check_unprivileged(const SpawnSpec& spec) {
  if (!spec.unprivileged) {
    if (::geteuid() != 0)
      return fail(make_error(ErrorKind::PermissionDenied,
                             "uid " + std::to_string(::geteuid()) +
                                 " is not root: an ordinary user's sandbox is unprivileged "
                                 "(SpawnSpec::unprivileged; executors set it themselves)"));
    return {};
  }
  if (spec.userns_pool)
    return fail(invalid("a range per sandbox (SpawnSpec::userns_pool) needs root"));
  if (::geteuid() == 0)
    return fail(
        invalid("an unprivileged sandbox is an ordinary user's: root's would map host "
                "root to 0 inside (leave SpawnSpec::unprivileged unset)"));
  const userns::Map own = userns::own_ids();
  if (!spec.userns || spec.userns->uid_base != own.uid_base ||
      spec.userns->gid_base != own.gid_base || spec.userns->size != 1)
    return fail(
        invalid("an unprivileged sandbox maps the caller's own uid and gid to 0, and "
                "nothing else but its subordinate range (userns::own_ids(), "
                "userns::own_subids())"));
  if (spec.userns->sub_size == 0 && (spec.user.uid != 0 || spec.user.gid != 0))
    return fail(invalid("user " + std::to_string(spec.user.uid) + ":" +
                        std::to_string(spec.user.gid) +
                        ": an ordinary user's sandbox maps one uid and one gid, 0 inside (a "
                        "range in /etc/subuid and /etc/subgid, and Debian's uidmap, map more)"));
  if (!spec.user.groups.empty())
    return fail(
        invalid("user: supplementary groups are refused in an ordinary user's sandbox: "
                "setgroups is denied there, since dropping the user's own groups would "
                "open files that shut one of them out"));
  // The init exec'd in the sandbox's user namespace: with CAP_SYS_PTRACE
  // there a payload could reach its memory and its status pipe.
  if (spec.capabilities & (1ull << CAP_SYS_PTRACE))
    return fail(
        invalid("cap_add SYS_PTRACE is refused in an unprivileged sandbox: it would "
                "reach the sandbox's init, which runs in the same user namespace"));
  return {};
}

}  // namespace

Sandbox::Sandbox() = default;
Sandbox::~Sandbox() = default;  // warm inits are killed, reaped, their cgroups removed

Result<std::shared_ptr<const Sandbox>> Sandbox::prepare(const SpawnSpec& spec) {
  auto sb = std::make_shared<Sandbox>();
  sb->spec_ = spec;
  auto plan = mounts::MountPlan::prepare(spec);
  if (!plan) return fail(plan.error().wrap("mount plan"));
  sb->mounts_ = std::move(*plan);
  auto filter = seccomp::load(spec.seccomp_profile);
  if (!filter) return fail(filter.error().wrap("seccomp profile"));
  if (spec.network == NetworkMode::None) {
    auto lo = network::LoopbackUp::prepare();
    if (!lo) return fail(lo.error());
    sb->loopback_ = std::move(*lo);
  }
  sb->clone_flags_ = namespaces::clone_flags(spec.network);
  if (spec.unprivileged) sb->clone_flags_ |= CLONE_NEWUSER;
  // With a uts namespace joined, an empty hostname keeps the one it has.
  if (!spec.hostname.empty() || spec.uts_ns_path.empty())
    if (auto e = namespaces::check_hostname(spec.hostname); !e) return fail(e.error());
  if (spec.unprivileged && (!spec.ipc_ns_path.empty() || !spec.uts_ns_path.empty()))
    return fail(invalid("joining an ipc or uts namespace by path needs root"));
  for (const auto& s : spec.sysctls)
    if (auto p = sysctl::path_of(s, spec.network != NetworkMode::Host); !p) return fail(p.error());
  if (auto s = check_unprivileged(spec); !s) return fail(s.error());
  // Held in name only: without a user namespace of the payload's (or in
  // an ordinary user's, which owns every namespace) they would be real.
  if (spec.inert_capabilities && (!spec.userns || spec.unprivileged ||
                                  (spec.inert_capabilities & ~userns::kInertCapabilities)))
    return fail(
        invalid("inert capabilities: only those that hold over nothing, in a sandbox "
                "with a user namespace of its own that is not an ordinary user's"));
  if (spec.userns) {
    if (auto s = userns::check_capabilities(spec.capabilities, spec.unprivileged); !s)
      return fail(s.error());
    if (auto s = userns::check_ids(*spec.userns, spec.user.uid, spec.user.gid,
                                   spec.user.groups.data(), spec.user.groups.size());
        !s)
      return fail(s.error());
  }
  sb->setup_full_ = encode_setup(spec, sb->mounts_.views(false), *filter);
  if (sb->mounts_.templatable())
    sb->setup_templated_ = encode_setup(spec, sb->mounts_.views(true), *filter);
  if (sb->setup_full_.size() > wire::kMaxBody)
    return fail(make_error(ErrorKind::Limit, "the sandbox's setup exceeds 64 MiB"));
  return std::shared_ptr<const Sandbox>(std::move(sb));
}

Result<std::shared_ptr<const Sandbox::SlotSetup>> Sandbox::slot_setup(const userns::Map& m) const {
  std::lock_guard lk(slots_mu_);
  auto& slot = slots_[m.uid_base];
  if (slot) return slot;
  SpawnSpec spec = spec_;
  spec.userns = m;
  auto plan = mounts::MountPlan::prepare(spec);
  if (!plan) return fail(plan.error().wrap("mount plan"));
  auto filter = seccomp::load(spec.seccomp_profile);
  if (!filter) return fail(filter.error().wrap("seccomp profile"));
  auto made = std::make_shared<SlotSetup>();
  made->mounts = std::move(*plan);
  made->setup = encode_setup(spec, made->mounts.views(false), *filter);
  slot = made;
  return slot;
}

Result<int> Sandbox::userns_fd() const {
  // An unprivileged sandbox's clone makes its own; so does each start of a
  // sandbox with a range of its own (clone_init).
  if (!spec_.userns || spec_.unprivileged || spec_.userns_pool) return -1;
  // One namespace for every sandbox of this spec, made at its first start
  // (an executor that never starts one, or a caller the policy refuses,
  // never needs it): an init only joins it, with no map to write.
  std::lock_guard lk(userns_mu_);
  if (!userns_ && userns_error_) {
    // Its ids held against the leases of every pool, for the sandbox's
    // life. A lease in the way now may be gone at the next start: not kept.
    auto hold = userns::hold_shared(*spec_.userns);
    if (!hold) return fail(hold.error());
    auto ns = userns::make(*spec_.userns);
    if (ns) {
      userns_hold_ = std::move(*hold);
      userns_ = std::move(*ns);
    } else {
      userns_error_ = fail(ns.error());
    }
  }
  if (!userns_error_) return fail(userns_error_.error());
  return userns_.get();
}

void Sandbox::refill(const std::shared_ptr<cgroups::Manager>& cgroups) const {
  warm_.refill(*this, cgroups);
}

Result<std::unique_ptr<PendingInit>> Sandbox::start_init(cgroups::Manager* cgroups) const {
  return SpawnInternals::clone_init(*this, cgroups);
}

Result<std::unique_ptr<PendingInit>> SpawnInternals::clone_init(const Sandbox& sb,
                                                                cgroups::Manager* cgroups,
                                                                const Detach* detach,
                                                                Join* joined) {
  const SpawnSpec& spec = sb.spec_;
  Join* jn = joined ? joined : detach ? detach->join : nullptr;
  const bool join = jn != nullptr;
  if (join && !jn->pidfd) return fail(invalid("joining a sandbox needs its init's pidfd"));
  if (join && spec.unprivileged)
    return fail(
        invalid("an unprivileged caller's sandbox cannot be joined: its namespaces "
                "are entered only through its own user namespace"));
  if (detach && !join && spec.userns_pool)
    return fail(
        invalid("a uid range per sandbox (userns: sandbox) cannot be leased for a "
                "container that outlives its runtime's process"));
  auto program = init_program::fd();
  if (!program) return fail(program.error());
  Result<int> userns_fd = join ? Result<int>(jn->userns.get()) : sb.userns_fd();
  if (!userns_fd) return fail(userns_fd.error());
  // A range of its own: leased for the sandbox's life, a namespace with
  // its map, and (for a slot other than the first) that slot's setup.
  Fd lease;  // its lock
  Fd own_userns;
  const mounts::MountPlan* plan = &sb.mounts_;
  const std::string* full_setup = &sb.setup_full_;
  std::shared_ptr<const Sandbox::SlotSetup> slot;
  std::optional<userns::Map> slot_map;
  if (spec.userns_pool && !join) {
    auto l = userns::lease(*spec.userns_pool);
    if (!l) return fail(l.error());
    auto ns = userns::make(l->map);
    if (!ns) return fail(ns.error());
    own_userns = std::move(*ns);
    userns_fd = own_userns.get();
    if (l->map != *spec.userns) {
      auto made = sb.slot_setup(l->map);
      if (!made) return fail(made.error());
      slot = std::move(*made);
      plan = &slot->mounts;
      full_setup = &slot->setup;
    }
    lease = std::move(l->lock);
    slot_map = l->map;
  }
  uint64_t gen = 0;
  std::shared_ptr<const mounts::MountTemplate> tpl = join ? nullptr : sb.templates_.get(&gen);
  // Without a template the init mounts the sources itself: pinned and
  // cloned now, so that what is mounted is what was checked.
  std::vector<Fd> trees;
  if (!tpl && !spec.unprivileged && !join) {
    auto made = plan->make_trees(*userns_fd);
    if (!made) return fail(made.error().wrap("mount plan"));
    trees = std::move(*made);
  }

  auto p = std::make_unique<PendingInit>();
  p->manager = cgroups;
  p->mount_gen = gen;
  p->templated = tpl != nullptr;
  Spawned& out = p->out;
  out.userns_lease_ = std::move(lease);
  if (!spec.unprivileged) p->ids = slot_map ? slot_map : join && jn->ids ? jn->ids : spec.userns;
  if (join && !detach && jn->cgroup && jn->cgroup->clone_fd() >= 0 &&
      jn->cgroup->kills_atomically()) {
    // A cgroup of the exec's own below the session's, in out: a kill or a
    // timeout of the exec ends its whole tree and nothing else of the
    // sandbox, and its stats and top list its tree. (An OCI exec joins the
    // container's cgroup itself, as runc's: the runtime exits at once.)
    auto own = jn->cgroup->make_child();
    if (!own) return fail(own.error().wrap("the exec's cgroup"));
    out.cgroup_.emplace(std::move(*own));
    p->home = &*jn->cgroup;
  } else if (join) {
    // The container's cgroup, never ours to remove: not in out.
  } else if (cgroups) {
    auto cg = cgroups->create(spec.limits, detach ? detach->cgroup : std::string());
    if (!cg) return fail(cg.error().wrap("cgroup"));
    out.cgroup_.emplace(std::move(*cg));
  } else if (!spec.limits.empty()) {
    return fail(invalid("limits are set but no cgroup manager is available"));
  }

  auto report = make_pipe();
  if (!report) return fail(report.error());
  auto status = make_pipe();
  if (!status) return fail(status.error());
  // A fresh network namespace from the pool, or one we make while the child
  // sets up its mounts (not CLONE_NEWNET, which would make it first).
  // The cgroup the init is cloned into.
  // (An exec's own is in out; the v1 directories it attaches to are the
  // session's.)
  cgroups::Cgroup* cg = out.cgroup_ ? &*out.cgroup_ : join && jn->cgroup ? &*jn->cgroup : nullptr;
  cgroups::Cgroup* attach_cg = join && jn->cgroup ? &*jn->cgroup : cg;
  uint64_t clone_flags = join ? 0 : sb.clone_flags_;
  Fd netns;
  bool make_netns = false;
  bool given_host_netns = false;
  if (!spec.netns_path.empty() && !join) {
    // (SpawnSpec::netns_path: checked to be a network namespace.)
    auto given = namespaces::open_path(spec.netns_path, CLONE_NEWNET);
    if (!given) return fail(given.error());
    netns = std::move(*given);
    // A path may name the host's own namespace: its sysctls are the host's.
    given_host_netns = namespaces::is_host(netns.get(), CLONE_NEWNET);
    for (const auto& s : spec.sysctls)
      if (given_host_netns && sysctl::is_net(s))
        return fail(invalid("sysctl " + s.key + ": the network namespace " + spec.netns_path +
                            " is the host's, so this would change the host's network"));
    clone_flags &= ~static_cast<uint64_t>(CLONE_NEWNET);
  }
  // An ipc or uts namespace given by path (a pod's, from containerd's CRI)
  // is joined instead of made; the host's never is, as leaving one out of
  // the config is refused.
  Fd ipcns, utsns;
  for (auto [path, flag, out] : {std::tuple{&spec.ipc_ns_path, CLONE_NEWIPC, &ipcns},
                                 std::tuple{&spec.uts_ns_path, CLONE_NEWUTS, &utsns}}) {
    if (path->empty() || join) continue;
    auto ns = namespaces::open_path(*path, flag);
    if (!ns) return fail(ns.error());
    if (namespaces::is_host(ns->get(), flag))
      return fail(invalid(*path + " is the host's " + (flag == CLONE_NEWIPC ? "ipc" : "uts") +
                          " namespace: a sandbox never shares the host's"));
    *out = std::move(*ns);
    clone_flags &= ~static_cast<uint64_t>(flag);
  }
  // (An unprivileged sandbox's comes with its clone, owned by its user
  // namespace: one the library made it could not enter.)
  if ((clone_flags & CLONE_NEWNET) && !spec.unprivileged && !netns) {
    netns = network::NetnsPool::get().take();
    // Sysctls are written before the mounts, in the init's own network
    // namespace, and a sysfs shows the network namespace of its mounter:
    // the init must have its own from the start.
    if (!netns && (!spec.sysctls.empty() || spec.sysfs)) {
      auto made = network::make_netns(*sb.loopback_);
      if (!made) return fail(made.error());
      netns = std::move(*made);
    }
    make_netns = !netns;
    clone_flags &= ~static_cast<uint64_t>(CLONE_NEWNET);
  }
  // The init enters its cgroup namespace itself, once it is in every cgroup.
  clone_flags &= ~static_cast<uint64_t>(CLONE_NEWCGROUP);
  // The init enters the template's namespace and unshares its own copy: a
  // copy of the caller's from the clone would only be detached again.
  if (tpl) clone_flags &= ~static_cast<uint64_t>(CLONE_NEWNS);
  const bool attach = attach_cg && attach_cg->needs_attach();
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return fail(sys_error("socketpair"));
  Fd ctl_child(sv[0]);
  p->ctl = Fd(sv[1]);

  // The init's argv names its two fds; its environment is empty.
  const std::string ctl_arg = std::to_string(ctl_child.get());
  const std::string report_arg = std::to_string(report->write.get());
  char* init_argv[] = {const_cast<char*>("cloister-init"), const_cast<char*>(ctl_arg.c_str()),
                       const_cast<char*>(report_arg.c_str()), nullptr};
  char* init_envp[] = {nullptr};
  ExecArgs x{*program, ctl_child.get(), report->write.get(), init_argv, init_envp};
  x.pdeathsig = detach == nullptr;
  std::string uid_map, gid_map;
  const bool subids = spec.unprivileged && spec.userns->sub_size != 0;
  std::optional<Pipe> maps_written;
  if (spec.unprivileged) {
    // A process that changed its uid without an exec since is not dumpable:
    // its /proc files, the maps among them, are root's.
    if (::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != 1)
      return fail(make_error(ErrorKind::PermissionDenied,
                             "the calling process is not dumpable (a uid change without an "
                             "exec since?): the sandbox's /proc/PID/uid_map is then root's; "
                             "exec, or prctl(PR_SET_DUMPABLE, 1), first"));
    if (subids) {
      auto p = make_pipe();
      if (!p) return fail(p.error());
      maps_written = std::move(*p);
      x.maps_written = maps_written->read.get();
      x.maps_written_w = maps_written->write.get();
    } else {
      uid_map = "0 " + std::to_string(spec.userns->uid_base) + " 1\n";
      gid_map = "0 " + std::to_string(spec.userns->gid_base) + " 1\n";
      x.uid_map = uid_map.c_str();
      x.gid_map = gid_map.c_str();
    }
  }

  int pidfd = -1;
  long pid = -1;
  int clone_errno = 0;
  auto do_clone = [&] {
    clone_args args{};
    args.flags = clone_flags | CLONE_PIDFD;
    args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
    // No exit signal while the child shares our memory. (The kernel makes
    // it SIGCHLD again once the init has exec'd: reap() copes with an
    // embedding program that reaps every child.)
    args.exit_signal = 0;
    if (cg && cg->clone_fd() >= 0) {
      args.flags |= CLONE_INTO_CGROUP;
      args.cgroup = static_cast<uint64_t>(cg->clone_fd());
    }
    // The child starts with every signal blocked so that no handler of the
    // caller's runs in it (nor in the init before it sets its own).
    sigset_t all, old;
    sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
#ifdef CLOISTER_CLONE3_VM
    // The child's stack, for the few calls before its exec (this thread
    // sleeps meanwhile: CLONE_VFORK). Not where the child must wait for
    // newuidmap, which this thread runs: a copy of us then (as below).
    alignas(64) char stack[16 * 1024];
    if (!subids) {
      args.flags |= CLONE_VM | CLONE_VFORK;
      args.stack = reinterpret_cast<uint64_t>(stack);
      args.stack_size = sizeof stack;
      long r = cloister_clone3_vm(&args, sizeof args, exec_init, &x);
      if (r < 0) {
        clone_errno = static_cast<int>(-r);
      } else {
        pid = r;
      }
    } else
#endif
    {
      pid = ::syscall(SYS_clone3, &args, sizeof args);
      if (pid == 0) exec_init(&x);
      clone_errno = errno;
    }
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  };
  if (::gettid() == ::getpid() || t_long_lived)
    do_clone();
  else
    SpawnerThread::get().run(do_clone);
  if (pid < 0) return fail(sys_error("clone3", clone_errno));
  out.pid_ = static_cast<pid_t>(pid);
  out.pidfd_ = Fd(pidfd);
  if (subids) {
    maps_written->read.reset();
    // On failure the child reads EOF and exits (~Spawned kills and reaps it
    // anyway).
    if (auto st = write_subid_maps(out.pid_, *spec.userns); !st) return fail(st.error());
    if (write_nosigpipe(maps_written->write.get(), "m", 1) != 1)
      return fail(sys_error("let the sandbox's init go after its maps"));
  }
  out.status_ = std::move(status->read);
  p->report = std::move(report->read);
  report->write.reset();
  ctl_child.reset();

  // The setup, with its fds: the status pipe, the pool's network namespace,
  // the template, the sources' trees. A failure to send means the init is
  // gone already (its exec failed): its report says why.
  const std::string& body = tpl ? sb.setup_templated_ : *full_setup;
  wire::SetupFixed fx;
  std::memcpy(&fx, body.data(), sizeof fx);
  std::vector<int> fds;
  auto add_fd = [&](int fd) -> int32_t {
    if (fd < 0) return -1;
    fds.push_back(fd);
    return static_cast<int32_t>(fds.size() - 1);
  };
  const bool wait_go = attach || make_netns;
  fx.flags |=
      (wait_go ? wire::kSetupWaitGo : 0) | (g_background_teardown ? wire::kSetupBackgroundExit : 0);
  if (spec.unprivileged)
    fx.flags |= wire::kSetupOwnUserns | (clone_flags & CLONE_NEWNET ? wire::kSetupLoopbackUp : 0) |
                wire::kSetupDenySetgroups;
  if (detach) fx.flags |= wire::kSetupDetached;
  if (join) fx.flags |= wire::kSetupJoin;
  // The init is in a network namespace of its own from its first step
  // (cloned into one, or joining the one sent): net.* sysctls may go there.
  if (!make_netns && !given_host_netns && (netns || (clone_flags & CLONE_NEWNET)))
    fx.flags |= wire::kSetupOwnNetnsFirst;
  // A detached init's status is its own exit status.
  fx.fd_status = add_fd(detach ? -1 : status->write.get());
  fx.fd_netns = add_fd(netns.get());
  fx.fd_ipcns = add_fd(ipcns.get());
  fx.fd_utsns = add_fd(utsns.get());
  fx.fd_tpl_ns = add_fd(tpl ? tpl->ns.get() : -1);
  fx.fd_tpl_root = add_fd(tpl ? tpl->root.get() : -1);
  fx.fd_userns = add_fd(*userns_fd);
  fx.fd_join = add_fd(join ? jn->pidfd.get() : -1);
  fx.fd_trees = static_cast<int32_t>(fds.size());
  fx.ntrees = static_cast<uint32_t>(trees.size());
  for (const auto& t : trees) fds.push_back(t.get());
  (void)send_setup(p->ctl.get(), fx, std::string_view(body).substr(sizeof fx), fds);
  status->write.reset();
  netns.reset();
  trees.clear();

  // From here a failure must not leave the child behind: ~Spawned kills and
  // reaps it and removes the cgroup. The child sets itself up while we
  // attach it (v1 controllers) and make its network namespace; it waits for
  // "go" only before it drops its privileges, and exits if the control
  // socket closes without one.
  if (attach) p->attached = attach_cg->attach(out.pid_, cg->clone_fd() >= 0);
  Result<Fd> made = Fd();
  if (make_netns) made = network::make_netns(*sb.loopback_);
  if (!made) p->netns_made = fail(made.error());
  if (wait_go && p->attached && made) {
    const int ns = made->get();
    // EPIPE: the child failed already; its report says why.
    (void)send_fds(p->ctl.get(), "g", 1, &ns, *made ? 1 : 0);
  }
  // Our time is free until the child has set itself up.
  if (cgroups) cgroups->cleanup_stale_once();
  return p;
}

namespace {
// The init's exit, peeked at (it stays to be reaped): its exit code, or
// -1 while it runs or when a signal ended it.
int peek_exit_code(const Spawned& s) {
  siginfo_t info{};
  if (::waitid(P_PIDFD, static_cast<id_t>(s.pidfd()), &info, WEXITED | WNOHANG | WNOWAIT) != 0 ||
      info.si_pid == 0 || info.si_code != CLD_EXITED)
    return -1;
  return info.si_status;
}
// Whether an init that exited did so at the end of its payload: with 0, or
// with the payload's status if detached (kSetupFailedExit is the init's own
// failure, which comes after a report).
bool ran_to_its_end(const Spawned& s, const Detach* detach) {
  const int code = peek_exit_code(s);
  return code >= 0 && (detach ? code != wire::kSetupFailedExit : code == 0);
}
}  // namespace

Result<Spawned> SpawnInternals::give_command(PendingInit& p, const Sandbox& sb, const Command& cmd,
                                             const Stdio& stdio, const Detach* detach,
                                             bool joined) {
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
  if (body.size() > wire::kMaxBody)
    return fail(make_error(ErrorKind::Limit, "command and environment exceed 64 MiB"));
  wire::CallHeader h{wire::kCallMagic,
                     static_cast<uint32_t>(body.size()),
                     static_cast<uint32_t>(cmd.argv.size()),
                     static_cast<uint32_t>(cmd.env.size()),
                     static_cast<uint32_t>(cand.size()),
                     0,
                     0,
                     0,
                     wire::kNoUmask};
  int fds[wire::kCallMaxFds];
  size_t nfds = 0;
  auto add = [&](int fd, uint32_t flag) {
    if (fd < 0) return;
    fds[nfds++] = fd;
    h.flags |= flag;
  };
  // Anonymous pipes among the payload's stdio are given to its user, as
  // containerd gives a user namespace's root its pipes: /dev/stdout,
  // /dev/stderr and /proc/self/fd/N open through them only for their owner
  // (a payload's `echo x > /dev/stderr`). Nothing else (a file, a tty, a
  // socket the caller passed) changes owner.
  if (!sb.spec_.unprivileged) {
    const uid_t uid = (p.ids ? p.ids->uid_base : 0) + sb.spec_.user.uid;
    const gid_t gid = (p.ids ? p.ids->gid_base : 0) + sb.spec_.user.gid;
    for (int fd : {stdio.in, stdio.out, stdio.err}) {
      struct statfs fs;
      struct stat st;
      if (fd >= 0 && ::fstatfs(fd, &fs) == 0 && fs.f_type == PIPEFS_MAGIC &&
          ::fstat(fd, &st) == 0 && (st.st_uid != uid || st.st_gid != gid))
        (void)::fchown(fd, uid, gid);
    }
  }
  add(stdio.in, wire::kCallStdin);
  add(stdio.out, wire::kCallStdout);
  add(stdio.err, wire::kCallStderr);
  add(cmd.exec_fd, wire::kCallExecFd);
  if (stdio.console >= 0) {
    if (detach) return fail(invalid("a detached init's terminal comes through its Detach"));
    add(stdio.console, wire::kCallConsole);
    h.rows = stdio.rows;
    h.cols = stdio.cols;
  }
  if (detach) {
    if (detach->gate < 0 && !detach->join)
      return fail(invalid("a detached init needs a start gate"));
    add(detach->gate, wire::kCallGate);
    add(detach->console, wire::kCallConsole);
    h.rows = detach->rows;
    h.cols = detach->cols;
    if (detach->umask) h.umask = *detach->umask & 0777;
  }
  if (cmd.exec_fd >= 0 && cmd.exec_fd_inherit) h.flags |= wire::kCallExecFdInherit;
  if (stdio.controlling_tty) h.flags |= wire::kCallTty;
  if (!b.empty()) h.flags |= wire::kCallBeneath;
  // A warm init was set up at background priority: the command runs at ours.
  if (p.background) {
    errno = 0;
    int nice = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
    if (errno == 0) ::setpriority(PRIO_PROCESS, static_cast<id_t>(p.out.pid_), nice);
  }
  // A send that fails means the init is gone: its report (below) says why.
  ssize_t n = send_fds(p.ctl.get(), &h, sizeof h, fds, nfds);
  if (n == static_cast<ssize_t>(sizeof h))
    for (size_t off = 0; off < body.size();) {
      ssize_t w = write_nosigpipe(p.ctl.get(), body.data() + off, body.size() - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }

  // Our end of the control socket stays open until the payload runs: its
  // closing is how an init that changed its uid (which clears its death
  // signal) learns that we died before it could set the signal again.
  wire::Report r{};
  size_t got = 0;
  const auto deadline = std::chrono::steady_clock::now() + kJoinStartDeadline;
  while (got < sizeof r) {
    if (joined) {
      // The report, or EOF; or the init's death (the new process, stopped
      // before its exec, may still hold the pipe); or the deadline.
      pollfd w[2] = {{p.report.get(), POLLIN, 0}, {p.out.pidfd_.get(), POLLIN, 0}};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      int rc = left.count() > 0 ? ::poll(w, 2, static_cast<int>(left.count())) : 0;
      if (rc < 0 && errno == EINTR) continue;
      if (rc > 0 && !w[0].revents && w[1].revents && ran_to_its_end(p.out, detach)) {
        // The payload exec'd and has ended already, and a copy of the
        // pipe's write end lives on in a process another thread of ours
        // cloned meanwhile (the prestart thread's next init, an embedding
        // program's fork), until that process's exec.
        break;
      }
      if (rc == 0 || (!w[0].revents && w[1].revents)) {
        // Killed, not waited for: a file system request its server read and
        // never answers holds even a killed process (FUSE), and the reaper
        // takes it whenever it goes.
        Spawned::retire_killed(std::move(p.out));
        return fail(
            make_error(ErrorKind::Timeout,
                       rc == 0 ? "the sandbox held up the new process before its exec for " +
                                     std::to_string(kJoinStartDeadline.count() / 1000) +
                                     " s (a process of the sandbox stopped it, or its work dir or "
                                     "command waits on a file system that does not answer)"
                               : "the joining init ended before the new process's exec"));
      }
    }
    ssize_t k = ::read(p.report.get(), reinterpret_cast<char*>(&r) + got, sizeof r - got);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    got += static_cast<size_t>(k);
  }
  const bool created = detach && got == sizeof r && r.step == static_cast<int32_t>(SpawnStep::None);
  if (got == sizeof r && !created) {
    Error e = describe_failure(cmd, r);
    if (static_cast<SpawnStep>(r.step) == SpawnStep::Sysctl && r.detail >= 0 &&
        static_cast<size_t>(r.detail) < sb.spec_.sysctls.size())
      e = sys_error("sysctl " + sb.spec_.sysctls[r.detail].key, r.err);
    if (static_cast<SpawnStep>(r.step) == SpawnStep::Mounts)
      e = sys_error("mounts: " + sb.mounts_.describe(r.detail, p.templated), r.err);
    p.out.kill_and_reap();
    return fail(std::move(e));
  }
  p.ctl.reset();
  if (detach && detach->gate >= 0 && !created) {
    p.out.kill_and_reap();
    return fail(internal("the container's init ended during its setup"));
  }
  if (got != 0 && !created) return fail(internal("short report from the sandbox"));
  // EOF: the payload exec'd - or the init died without a word (it exits
  // with kSetupFailedExit only before its payload exists).
  if (peek_exit_code(p.out) == wire::kSetupFailedExit)
    return fail(internal("the sandbox's init ended during its setup"));
  if (!p.attached) return fail(p.attached.error().wrap("cgroup attach"));
  if (!p.netns_made) return fail(p.netns_made.error().wrap("network namespace"));
  if (n != static_cast<ssize_t>(sizeof h)) return fail(sys_error("send the command", EPIPE));
  if (p.home) {
    // The payload is forked (in the exec's cgroup, from the init's): the
    // init leaves, so that the exec's cgroup holds its tree only, and
    // neither the exec's kill nor the sandbox's reaches the init, which
    // reaps what they killed. Not once it has exited (its pid, if an
    // embedding program reaped it, may be another process's by now). Should
    // the move fail, the exec runs on, ended through its init as where
    // there is no cgroup of its own.
    pollfd alive{p.out.pidfd_.get(), POLLIN, 0};
    if (::poll(&alive, 1, 0) == 0 && p.home->move_to_exec_inits(p.out.pid_))
      p.out.payload_cgroup_ = true;
  }
  p.out.ids_ = p.ids;
  return std::move(p.out);
}

namespace {
Status check_command(const Command& cmd) {
  if (cmd.argv.empty() || cmd.argv[0].empty()) return fail(invalid("empty command"));
  if (cmd.work_dir.empty() || cmd.work_dir[0] != '/')
    return fail(invalid("work dir '" + cmd.work_dir + "' is not an absolute path"));
  const std::string& b = cmd.work_dir_beneath;
  if (!b.empty() && !mounts::within(cmd.work_dir, b))
    return fail(invalid("work dir " + cmd.work_dir + " is not below " + b));
  return {};
}
}  // namespace

Result<Created> create_detached(const Sandbox& sb, const Command& cmd, const Stdio& stdio,
                                cgroups::Manager* cgroups, const Detach& d) {
  return SpawnInternals::create_detached(sb, cmd, stdio, cgroups, d);
}

Result<Spawned> spawn(const Sandbox& sb, const Command& cmd, const Stdio& stdio,
                      const std::shared_ptr<cgroups::Manager>& cgroups) {
  return SpawnInternals::spawn(sb, cmd, stdio, cgroups);
}

Result<Spawned> spawn_joined(const Sandbox& sb, const Command& cmd, const Stdio& stdio, Join join) {
  return SpawnInternals::spawn_joined(sb, cmd, stdio, join);
}

Result<Spawned> SpawnInternals::spawn_joined(const Sandbox& sb, const Command& cmd,
                                             const Stdio& stdio, Join& join) {
  if (auto s = check_command(cmd); !s) return fail(s.error());
  // The sandbox may have ended since join_point: its init is then gone or
  // a zombie, whose namespaces cannot be entered (the init reports ESRCH).
  auto p = clone_init(sb, nullptr, nullptr, &join);
  if (!p) return fail(p.error());
  return give_command(**p, sb, cmd, stdio, nullptr, true);
}

Result<Created> SpawnInternals::create_detached(const Sandbox& sb, const Command& cmd,
                                                const Stdio& stdio, cgroups::Manager* cgroups,
                                                const Detach& d) {
  if (auto s = check_command(cmd); !s) return fail(s.error());
  auto p = clone_init(sb, cgroups, &d);
  if (!p) return fail(p.error());
  auto s = give_command(**p, sb, cmd, stdio, &d);
  if (!s) return fail(s.error());
  Created c;
  c.pid = s->pid_;
  // Left to its reaper: neither killed nor reaped here, its cgroup kept.
  if (s->cgroup_) {
    c.cgroup_paths = s->cgroup_->paths();
    s->cgroup_->forget();
    s->cgroup_.reset();
  }
  s->reaped_ = true;
  return c;
}

Result<Spawned> SpawnInternals::spawn(const Sandbox& sb, const Command& cmd, const Stdio& stdio,
                                      const std::shared_ptr<cgroups::Manager>& cgroups) {
  if (auto s = check_command(cmd); !s) return fail(s.error());

  std::unique_ptr<PendingInit> p = sb.warm_.take(cgroups.get(), sb.templates_);
  if (!p) {
    auto cold = sb.start_init(cgroups.get());
    if (!cold) return fail(cold.error());
    p = std::move(*cold);
  }
  return give_command(*p, sb, cmd, stdio);
}

Spawned& Spawned::operator=(Spawned&& o) noexcept {
  if (this == &o) return *this;
  kill_and_reap();
  (void)release();
  pid_ = std::exchange(o.pid_, -1);
  pidfd_ = std::move(o.pidfd_);
  status_ = std::move(o.status_);
  cgroup_ = std::move(o.cgroup_);
  o.cgroup_.reset();
  userns_lease_ = std::move(o.userns_lease_);
  ids_ = o.ids_;
  reaped_ = std::exchange(o.reaped_, true);
  payload_cgroup_ = o.payload_cgroup_;
  exit_read_ = o.exit_read_;
  got_message_ = o.got_message_;
  alone_ = o.alone_;
  wait_status_ = o.wait_status_;
  max_rss_ = o.max_rss_;
  cpu_usec_ = o.cpu_usec_;
  return *this;
}

Spawned::~Spawned() {
  kill_and_reap();
  (void)release();
}

void Spawned::kill_and_reap() noexcept {
  if (pid_ > 0 && !reaped_) {
    (void)kill();
    (void)reap();
  }
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
  if (payload_cgroup_) {
    // The init goes once it has reaped the tree; should the tree outlast
    // the wait (a process stuck in the kernel), the init is killed as well.
    Status s = cgroup_->kill();
    if (!s) ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
    return s;
  }
  // SIGKILL to the init of a pid namespace kills every process in it.
  if (::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0) != 0 && errno != ESRCH)
    return fail(sys_error("kill"));
  if (cgroup_) return cgroup_->kill();
  return {};
}

void Spawned::end() {
  if (reaped_) return;
  if (payload_cgroup_) return cgroup_->kill_async();
  ::syscall(SYS_pidfd_send_signal, pidfd_.get(), SIGKILL, nullptr, 0);
  if (cgroup_) cgroup_->kill_async();
}

bool Spawned::read_exit() {
  if (exit_read_) return alone_;
  if (!status_) return false;
  wire::InitStatus msg{};
  ssize_t n;
  do n = ::read(status_.get(), &msg, sizeof msg);
  while (n < 0 && errno == EINTR);
  status_.reset();
  exit_read_ = true;
  if (n != static_cast<ssize_t>(sizeof msg)) return false;  // the init died first
  got_message_ = true;
  wait_status_ = msg.wait_status;
  max_rss_ = static_cast<uint64_t>(msg.max_rss_kib) * 1024;
  cpu_usec_ = msg.cpu_usec > 0 ? static_cast<uint64_t>(msg.cpu_usec) : 0;
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
    if (errno == ECHILD) {
      // Reaped by someone else: an embedding program that waits for every
      // child (waitpid(-1), or SIGCHLD set to SIG_IGN) took the init's exit
      // (an exec'd child always signals SIGCHLD at exit). The payload's
      // status, if the init sent it, is still ours.
      reaped_ = true;
      read_exit();
      if (!got_message_) wait_status_ = SIGKILL;
      return wait_status_;
    }
    if (errno != EINTR) return fail(sys_error("waitid"));
  }
  reaped_ = true;
  read_exit();
  if (got_message_) return wait_status_;
  max_rss_ = static_cast<uint64_t>(ru.ru_maxrss) * 1024;
  cpu_usec_ = static_cast<uint64_t>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
              static_cast<uint64_t>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
  if (info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED) {
    wait_status_ = info.si_status & 0x7f;  // as if the payload got the init's signal
  } else {
    // The init exited before its payload did: it failed during setup.
    wait_status_ = (info.si_status & 0xff) << 8;
  }
  return wait_status_;
}

namespace {

// The library's reaper: one thread, started with the first sandbox retired
// to it, that reaps each init whenever it is gone, in any order: one that
// takes its time (a tree stuck in an uninterruptible wait, killed but not
// dead) holds up no other. It holds no fd of its own: while it has inits
// to wait for it polls their pidfds, and looks for new ones every 20 ms.
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
      ++outstanding_;
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
    idle_.wait(lk, [&] { return outstanding_ == 0; });
  }
  bool drain_for(std::chrono::milliseconds limit) {
    std::unique_lock lk(mu_);
    return idle_.wait_for(lk, limit, [&] { return outstanding_ == 0; });
  }

 private:
  void loop() {
    std::vector<std::unique_ptr<Spawned>> active;
    for (;;) {
      {
        std::unique_lock lk(mu_);
        if (active.empty()) work_.wait(lk, [&] { return !pending_.empty(); });
        for (auto& p : pending_) active.push_back(std::move(p));
        pending_.clear();
      }
      std::vector<pollfd> fds;
      for (const auto& s : active) fds.push_back({s->pidfd(), POLLIN, 0});
      if (::poll(fds.data(), fds.size(), 20) < 0) continue;
      size_t done = 0;
      for (size_t i = active.size(); i-- > 0;) {
        // Exited (or no pidfd to wait on): this reap does not block.
        if (fds[i].fd >= 0 && !fds[i].revents) continue;
        (void)active[i]->reap();
        (void)active[i]->release();
        active.erase(active.begin() + static_cast<std::ptrdiff_t>(i));
        ++done;
      }
      if (done) {
        std::lock_guard lk(mu_);
        outstanding_ -= done;
        if (outstanding_ == 0) idle_.notify_all();
      }
    }
  }
  std::mutex mu_;
  std::condition_variable work_, idle_;
  std::deque<std::unique_ptr<Spawned>> pending_;
  size_t outstanding_ = 0;  // added and not yet reaped and released
  bool started_ = false;
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

void Spawned::retire_killed(Spawned&& s) {
  if (s.pid_ <= 0 || s.reaped_ || !g_background_teardown) {
    Spawned gone = std::move(s);
    return;
  }
  s.end();
  // The reaper's reap() waits for the init, which exits once every process
  // of its pid namespace is gone.
  Reaper::get().add(std::move(s));
}

bool Spawned::drain_retired_for(std::chrono::milliseconds limit) {
  WarmPool::drain();
  if (!Reaper::get().drain_for(limit)) return false;
  network::NetnsPool::get().wait_idle();
  return true;
}

void Spawned::drain_retired() {
  WarmPool::drain();
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
  // Without a memory cgroup: the largest resident set of any process; and
  // without a cgroup, the time of the processes the init reaped.
  if (u.memory_peak == 0) u.memory_peak = max_rss_;
  if (!cgroup_) u.cpu_usec = cpu_usec_;
  return u;
}

Result<cgroups::Live> Spawned::live() const {
  if (reaped_ || !cgroup_) return cgroups::Live{};
  return cgroup_->live();
}

Result<std::vector<pid_t>> Spawned::pids() const {
  std::vector<pid_t> out;
  if (reaped_ || pid_ <= 0) return out;
  if (cgroup_) return cgroup_->pids();
  // Breadth first from the init; a process that exits meanwhile just ends
  // its branch. A pid reused while we walk could show up twice, or loop:
  // each is taken once, and the list never grows past kMax.
  constexpr size_t kMax = 65536;
  std::unordered_set<pid_t> seen{pid_};
  out.push_back(pid_);
  for (size_t i = 0; i < out.size() && out.size() < kMax; ++i) {
    const std::string task = "/proc/" + std::to_string(out[i]) + "/task";
    DIR* d = ::opendir(task.c_str());
    if (!d) continue;
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      int fd = ::open((task + "/" + e->d_name + "/children").c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) continue;
      std::string text;
      char buf[4096];
      for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
        text.append(buf, static_cast<size_t>(n));
      ::close(fd);
      size_t pos = 0;
      while (pos < text.size()) {
        size_t end = text.find(' ', pos);
        if (end == std::string::npos) end = text.size();
        const auto p = static_cast<pid_t>(std::strtol(text.c_str() + pos, nullptr, 10));
        if (end > pos && p > 0 && out.size() < kMax && seen.insert(p).second) out.push_back(p);
        pos = end + 1;
      }
    }
    ::closedir(d);
  }
  return out;
}

Result<Join> Spawned::join_point() const {
  if (pid_ <= 0 || exited() || exit_read_)
    return fail(invalid("the sandbox's payload has exited: nothing to join"));
  Join j;
  j.pidfd = Fd(::fcntl(pidfd_.get(), F_DUPFD_CLOEXEC, 3));
  if (!j.pidfd) return fail(sys_error("dup the sandbox's pidfd"));
  // Not reaped, so pid_ is still this init, zombie or not. Its user
  // namespace is joined where it is not ours (a sandbox with userns: host
  // runs in ours).
  const std::string ns = "/proc/" + std::to_string(pid_) + "/ns/user";
  j.userns = Fd(::open(ns.c_str(), O_RDONLY | O_CLOEXEC));
  if (!j.userns) return fail(sys_error("the sandbox's user namespace (" + ns + ")"));
  struct stat theirs {
  }, ours{};
  if (::fstat(j.userns.get(), &theirs) != 0 || ::stat("/proc/self/ns/user", &ours) != 0)
    return fail(sys_error("stat a user namespace"));
  if (theirs.st_ino == ours.st_ino && theirs.st_dev == ours.st_dev) j.userns.reset();
  // Without a cgroup (none could be made here) the process joins none.
  if (cgroup_) {
    auto b = cgroup_->borrow();
    if (!b) return fail(b.error());
    j.cgroup.emplace(std::move(*b));
  }
  j.ids = ids_;
  return j;
}

Status Spawned::release() {
  if (!cgroup_) return {};
  auto s = cgroup_->destroy();
  cgroup_.reset();
  return s;
}

}  // namespace cloister

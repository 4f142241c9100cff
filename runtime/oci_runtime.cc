#include "runtime/oci_runtime.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <nlohmann/json.hpp>

#include "isolate/devices.h"
#include "isolate/fd.h"
#include "isolate/spawn.h"
#include "oci/bundle.h"

extern char** environ;

namespace cloister::ociruntime {
namespace {

using json = nlohmann::json;

// Below each hierarchy's root: the cgroups of containers whose config names
// none (containerd and podman always do).
constexpr const char* kDefaultCgroupParent = "cloister-oci";

std::string dir_of(const Globals& g, const std::string& id) {
  return g.root + "/" + id;
}

Error not_found(const std::string& id) {
  return make_error(ErrorKind::NotFound, "container " + id + " does not exist");
}

// Field 22 of /proc/PID/stat (after the command's closing parenthesis, which
// the command itself may contain), and whether the process is alive (not a
// zombie).
std::optional<uint64_t> start_time_of(pid_t pid, bool* alive = nullptr) {
  auto text = read_file("/proc/" + std::to_string(pid) + "/stat");
  if (!text) return std::nullopt;
  size_t close = text->rfind(')');
  if (close == std::string::npos || close + 2 >= text->size()) return std::nullopt;
  const char* p = text->c_str() + close + 2;
  const char state = *p;
  if (alive) *alive = state != 'Z' && state != 'X';
  // Fields from 3 (state) on: start time is field 22.
  for (int field = 3; field < 22; ++field) {
    p = std::strchr(p, ' ');
    if (!p) return std::nullopt;
    ++p;
  }
  return std::strtoull(p, nullptr, 10);
}

bool alive(const State& s) {
  if (s.pid <= 0) return false;
  bool live = false;
  auto t = start_time_of(s.pid, &live);
  return t && *t == s.start_time && live;
}

Result<std::shared_ptr<cgroups::Manager>> manager() {
  static std::shared_ptr<cgroups::Manager> m;
  if (m) return m;
  cgroups::Options o;
  o.base = "/";  // cgroupsPath names a path from each hierarchy's root, as runc's do
  o.bound_base = false;
  o.sweep_stale = false;
  auto made = cgroups::Manager::open(o);
  if (!made) return fail(made.error().wrap("cgroups"));
  m = *made;
  return m;
}

std::string now_rfc3339() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  ::gmtime_r(&ts.tv_sec, &t);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &t);
  char frac[32];
  std::snprintf(frac, sizeof frac, ".%09ldZ", ts.tv_nsec);
  return std::string(buf) + frac;
}

// Written beside, then renamed over: a reader sees the old file or the new.
cloister::Status write_atomic(const std::string& path, std::string_view data, mode_t mode) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
  if (fd < 0) return fail(sys_error("create " + tmp));
  Fd f(fd);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(f.get(), data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return fail(sys_error("write " + tmp));
    off += static_cast<size_t>(n);
  }
  f.reset();
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail(sys_error("rename " + tmp));
  return {};
}

json to_json(const State& s) {
  return json{{"ociVersion", s.oci_version}, {"id", s.id},
              {"bundle", s.bundle},          {"pid", s.pid},
              {"startTime", s.start_time},   {"started", s.started},
              {"cgroup", s.cgroup},          {"created", s.created},
              {"annotations", s.annotations}};
}

cloister::Status save(const Globals& g, const State& s) {
  return write_atomic(dir_of(g, s.id) + "/state.json", to_json(s).dump(), 0600);
}

Result<State> load(const Globals& g, const std::string& id) {
  if (auto s = check_id(id); !s) return fail(s.error());
  auto text = read_file(dir_of(g, id) + "/state.json");
  if (!text) {
    if (text.error().code == ENOENT) return fail(not_found(id));
    return fail(text.error());
  }
  json j = json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return fail(internal("state of container " + id + " is damaged: " + dir_of(g, id)));
  State s;
  try {
    s.oci_version = j.at("ociVersion").get<std::string>();
    s.id = j.at("id").get<std::string>();
    s.bundle = j.at("bundle").get<std::string>();
    s.pid = j.at("pid").get<pid_t>();
    s.start_time = j.at("startTime").get<uint64_t>();
    s.started = j.at("started").get<bool>();
    s.cgroup = j.at("cgroup").get<std::string>();
    s.created = j.at("created").get<std::string>();
    s.annotations = j.at("annotations").get<std::map<std::string, std::string>>();
  } catch (const json::exception& e) {
    return fail(internal("state of container " + id + " is damaged: " + e.what()));
  }
  s.status = Status::Stopped;
  if (alive(s)) {
    s.status = s.started ? Status::Running : Status::Created;
    if (auto m = manager())
      if (auto cg = (*m)->open_named(s.cgroup); cg && cg->frozen()) s.status = Status::Paused;
  }
  return s;
}

// An exclusive lock on the container's directory for a verb that changes
// it: two starts, or a delete during a kill, are serialised.
Result<Fd> lock(const Globals& g, const std::string& id) {
  int fd = ::open(dir_of(g, id).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return fail(not_found(id));
    return fail(sys_error("open " + dir_of(g, id)));
  }
  Fd f(fd);
  while (::flock(f.get(), LOCK_EX) != 0)
    if (errno != EINTR) return fail(sys_error("lock " + dir_of(g, id)));
  return f;
}

cloister::Status run_hooks(const std::vector<oci::Hook>& hooks, const State& s,
                           const std::string& kind) {
  const std::string input = s.state_json();
  for (const auto& h : hooks) {
    auto in = make_pipe();
    if (!in) return fail(in.error());
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in->read.get(), 0);
    std::vector<char*> argv, envp;
    for (const auto& a : h.args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (const auto& e : h.env) envp.push_back(const_cast<char*>(e.c_str()));
    envp.push_back(nullptr);
    pid_t pid = -1;
    int rc = ::posix_spawn(&pid, h.path.c_str(), &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    in->read.reset();
    if (rc != 0) return fail(sys_error(kind + " hook " + h.path, rc));
    (void)write_nosigpipe(in->write.get(), input.data(), input.size());
    in->write.reset();
    int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    Fd pf(pidfd);
    if (h.timeout_s > 0 && pidfd >= 0) {
      pollfd p{pidfd, POLLIN, 0};
      if (::poll(&p, 1, h.timeout_s * 1000) == 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        return fail(make_error(ErrorKind::Timeout, kind + " hook " + h.path + " timed out after " +
                                                       std::to_string(h.timeout_s) + " s"));
      }
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
      return fail(invalid(kind + " hook " + h.path + " failed (" +
                          (WIFEXITED(status) ? "exit " + std::to_string(WEXITSTATUS(status))
                                             : "signal " + std::to_string(WTERMSIG(status))) +
                          ")"));
  }
  return {};
}

// The config as create read it, kept in the container's directory: later
// verbs (hooks, exec) never read the bundle again, which may have changed.
Result<oci::Bundle> bundle_of(const Globals& g, const State& s) {
  auto text = read_file(dir_of(g, s.id) + "/config.json");
  if (!text) return fail(text.error());
  return oci::parse_bundle(*text, s.bundle, s.id);
}
// Only the hooks: the whole lowering (a seccomp profile compiled, the user
// namespace's range read) would cost start and delete milliseconds.
oci::Hooks hooks_of(const Globals& g, const State& s) {
  auto text = read_file(dir_of(g, s.id) + "/config.json");
  if (!text) return {};
  auto h = oci::parse_hooks(*text);
  return h ? *h : oci::Hooks{};
}

cloister::Status signal_init(const State& s, int sig) {
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, s.pid, 0));
  if (pidfd < 0)
    return fail(make_error(ErrorKind::NotFound, "container " + s.id + " is not running"));
  Fd pf(pidfd);
  // The pidfd pins the process: once it is open, a start time that still
  // matches is this container's init, not a later process with its pid.
  if (!alive(s))
    return fail(make_error(ErrorKind::NotFound, "container " + s.id + " is not running"));
  if (::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0) != 0)
    return fail(sys_error("signal container " + s.id));
  return {};
}

Result<int> connect_console(const std::string& path) {
  sockaddr_un a{};
  if (path.size() >= sizeof a.sun_path) return fail(invalid("--console-socket path is too long"));
  a.sun_family = AF_UNIX;
  std::memcpy(a.sun_path, path.c_str(), path.size());
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return fail(sys_error("socket"));
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    Error e = sys_error("connect to --console-socket " + path);
    ::close(fd);
    return fail(e);
  }
  return fd;
}

// process.oomScoreAdj, set on this process so that the clone inherits it:
// inside the container's user namespace it could only be raised.
cloister::Status apply_oom_score_adj(const oci::Bundle& b) {
  if (!b.oom_score_adj) return {};
  const std::string v = std::to_string(*b.oom_score_adj);
  int fd = ::open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return fail(sys_error("process.oomScoreAdj: open /proc/self/oom_score_adj"));
  Fd f(fd);
  if (::write(f.get(), v.data(), v.size()) != static_cast<ssize_t>(v.size()))
    return fail(sys_error("process.oomScoreAdj: set " + v));
  return {};
}

// The process's stdio: a pty whose master goes to --console-socket where it
// has a terminal, else the caller's own fds (the shim's pipes, conmon's),
// as runc passes them.
struct CallerIo {
  Fd console;
  Stdio stdio;
  Detach detach(const oci::Bundle& b) const {
    Detach d;
    d.console = console.get();
    d.rows = b.rows;
    d.cols = b.cols;
    d.umask = b.umask;
    return d;
  }
};
Result<CallerIo> caller_io(const oci::Bundle& b, const std::string& console_socket) {
  CallerIo io;
  if (b.terminal != !console_socket.empty())
    return fail(invalid(b.terminal ? "process.terminal is set but no --console-socket was given"
                                   : "--console-socket was given but process.terminal is not set"));
  if (b.terminal) {
    auto c = connect_console(console_socket);
    if (!c) return fail(c.error());
    io.console = Fd(*c);
    return io;
  }
  auto open_fd = [](int fd) { return ::fcntl(fd, F_GETFD) >= 0 ? fd : -1; };
  io.stdio.in = open_fd(0);
  io.stdio.out = open_fd(1);
  io.stdio.err = open_fd(2);
  return io;
}

// Removes what create left in the container's directory, and the directory.
void remove_dir(const Globals& g, const std::string& id) {
  const std::string d = dir_of(g, id);
  for (const char* f : {"state.json", "state.json.tmp", "start.fifo", "seccomp.json",
                        "seccomp.json.tmp", "config.json", "config.json.tmp"})
    ::unlink((d + "/" + f).c_str());
  ::rmdir(d.c_str());
}

// Ends a container: SIGKILL to its init (its pid namespace goes with it),
// then its cgroup, killed and removed.
cloister::Status destroy(const State& s) {
  if (alive(s)) (void)signal_init(s, SIGKILL);
  auto m = manager();
  if (!m) return fail(m.error());
  auto cg = (*m)->open_named(s.cgroup);
  if (!cg) return cg.error().kind == ErrorKind::NotFound ? cloister::Status{} : fail(cg.error());
  if (cg->frozen()) (void)cg->freeze(false);
  const auto paths = cg->paths();
  auto st = cg->destroy();
  // The runtime's own parent of containers without a cgroupsPath goes with
  // the last of them (rmdir fails while another is in it).
  if (st && s.cgroup.starts_with(std::string(kDefaultCgroupParent) + "/"))
    for (const auto& p : paths) ::rmdir(p.substr(0, p.rfind('/')).c_str());
  return st;
}

}  // namespace

std::string_view status_name(Status s) {
  switch (s) {
    case Status::Created:
      return "created";
    case Status::Running:
      return "running";
    case Status::Paused:
      return "paused";
    case Status::Stopped:
      return "stopped";
  }
  return "unknown";
}

std::string State::state_json() const {
  json j{{"ociVersion", oci_version.empty() ? oci::kOciVersion : oci_version},
         {"id", id},
         {"status", status_name(status)},
         {"pid", status == Status::Stopped ? 0 : pid},
         {"bundle", bundle},
         {"rootfs", ""},
         {"created", created},
         {"owner", ""}};
  j["annotations"] = annotations;
  j.erase("rootfs");
  return j.dump(2) + "\n";
}

cloister::Status check_id(const std::string& id) {
  if (id.empty() || id.size() > 1024 || id == "." || id == "..")
    return fail(invalid("container ID '" + id + "' is not valid"));
  for (unsigned char c : id)
    if (!(std::isalnum(c) || c == '_' || c == '+' || c == '-' || c == '.'))
      return fail(invalid("container ID '" + id + "' has a character outside [A-Za-z0-9_+.-]"));
  return {};
}

cloister::Status create(const Globals& g, const CreateOptions& o) {
  if (auto s = check_id(o.id); !s) return s;
  if (o.preserve_fds > 0)
    return fail(invalid("--preserve-fds: passing extra fds to the container is not supported"));
  // mkdir -p: containerd's shim passes ROOT/NAMESPACE.
  for (size_t i = 1; i <= g.root.size(); ++i)
    if (i == g.root.size() || g.root[i] == '/')
      if (::mkdir(g.root.substr(0, i).c_str(), 0700) != 0 && errno != EEXIST)
        return fail(sys_error("make the state dir --root " + g.root));
  const std::string dir = dir_of(g, o.id);
  if (::mkdir(dir.c_str(), 0700) != 0) {
    if (errno == EEXIST)
      return fail(make_error(ErrorKind::Invalid, "container " + o.id + " already exists", EEXIST));
    return fail(sys_error("make " + dir));
  }
  // From here on a failure leaves nothing: the directory, and the init and
  // cgroup once made.
  std::optional<State> made;
  auto undo = [&](Error e) -> cloister::Status {
    if (made) (void)destroy(*made);
    remove_dir(g, o.id);
    return fail(std::move(e));
  };
  char* real = ::realpath(o.bundle.c_str(), nullptr);
  if (!real) return undo(sys_error("bundle " + o.bundle));
  const std::string bundle_dir(real);
  ::free(real);
  auto text = read_file(bundle_dir + "/config.json");
  if (!text) return undo(text.error().wrap("bundle " + bundle_dir));
  auto b = oci::parse_bundle(*text, bundle_dir, o.id);
  if (!b) return undo(b.error());
  if (auto s = write_atomic(dir + "/config.json", *text, 0600); !s) return undo(s.error());
  if (g.warn)
    for (const auto& w : b->warnings) g.warn("config.json: " + w);
  if (!b->seccomp_json.empty()) {
    const std::string path = dir + "/seccomp.json";
    if (auto s = write_atomic(path, b->seccomp_json, 0600); !s) return undo(s.error());
    b->spec.seccomp_profile = path;
  }
  auto sb = Sandbox::prepare(b->spec);
  if (!sb) return undo(sb.error());
  auto m = manager();
  if (!m) return undo(m.error());
  const std::string fifo = dir + "/start.fifo";
  if (::mkfifo(fifo.c_str(), 0600) != 0) return undo(sys_error("mkfifo " + fifo));
  int gfd = ::open(fifo.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW);
  if (gfd < 0) return undo(sys_error("open " + fifo));
  Fd gate(gfd);
  auto io = caller_io(*b, o.console_socket);
  if (!io) return undo(io.error());
  Detach d = io->detach(*b);
  d.gate = gate.get();
  if (auto st = apply_oom_score_adj(*b); !st) return undo(st.error());
  std::string cgroup =
      b->cgroups_path.empty() ? std::string(kDefaultCgroupParent) + "/" + o.id : b->cgroups_path;
  while (!cgroup.empty() && cgroup.front() == '/') cgroup.erase(0, 1);
  d.cgroup = cgroup;
  auto c = create_detached(**sb, b->command, io->stdio, m->get(), d);
  if (!c) return undo(c.error());
  auto made_cgroup = [&]() -> cloister::Status {
    // The init has made the container's nodes: no mknod from here on.
    if (!b->spec.limits.devices) return {};
    auto cg = (*m)->open_named(cgroup);
    if (!cg) return fail(cg.error());
    return with_context(cg->narrow_devices(devices::without_mknod(*b->spec.limits.devices)),
                        "device policy");
  };
  State s;
  s.oci_version = b->oci_version;
  s.id = o.id;
  s.bundle = bundle_dir;
  s.pid = c->pid;
  s.cgroup = cgroup;
  s.created = now_rfc3339();
  s.annotations = b->annotations;
  s.status = Status::Created;
  made = s;
  auto t = start_time_of(c->pid);
  if (!t) return undo(internal("the container's init ended during create"));
  s.start_time = *t;
  made = s;
  if (auto st = made_cgroup(); !st) return undo(st.error());
  if (auto st = save(g, s); !st) return undo(st.error());
  if (auto st = run_hooks(b->hooks.create_runtime, s, "createRuntime"); !st)
    return undo(st.error());
  if (auto st = run_hooks(b->hooks.prestart, s, "prestart"); !st) return undo(st.error());
  if (!o.pid_file.empty())
    if (auto st = write_atomic(o.pid_file, std::to_string(c->pid), 0644); !st)
      return undo(st.error().wrap("--pid-file"));
  return {};
}

cloister::Status start(const Globals& g, const std::string& id) {
  auto l = lock(g, id);
  if (!l) return fail(l.error());
  auto s = load(g, id);
  if (!s) return fail(s.error());
  if (s->status != Status::Created)
    return fail(invalid("cannot start container " + id + ": it is " +
                        std::string(status_name(s->status)) + ", not created"));
  const std::string fifo = dir_of(g, id) + "/start.fifo";
  int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    if (errno == ENXIO) return fail(invalid("cannot start container " + id + ": its init is gone"));
    return fail(sys_error("open " + fifo));
  }
  Fd f(fd);
  if (write_nosigpipe(f.get(), "1", 1) != 1) return fail(sys_error("start container " + id));
  s->started = true;
  s->status = Status::Running;
  if (auto st = save(g, *s); !st) return st;
  // A failing poststart hook is a warning: the container runs on.
  (void)run_hooks(hooks_of(g, *s).poststart, *s, "poststart");
  return {};
}

Result<State> state(const Globals& g, const std::string& id) {
  return load(g, id);
}

cloister::Status kill(const Globals& g, const std::string& id, int sig, bool all) {
  auto s = load(g, id);
  if (!s) return fail(s.error());
  if (s->status == Status::Stopped)
    return fail(make_error(ErrorKind::NotFound, "container " + id + " is not running"));
  if (!all) return signal_init(*s, sig);
  auto m = manager();
  if (!m) return fail(m.error());
  auto cg = (*m)->open_named(s->cgroup);
  if (!cg) return fail(cg.error());
  // Frozen while signalled, so that no pid of the list is freed and taken
  // by another process in between; SIGKILL is the kernel's cgroup.kill.
  cloister::Status st;
  if (sig == SIGKILL) {
    st = cg->kill();
  } else {
    const bool was_frozen = cg->frozen();
    if (!was_frozen) st = cg->freeze(true);
    if (st) {
      auto list = cg->pids();
      if (list)
        for (pid_t p : *list) ::kill(p, sig);
      else
        st = fail(list.error());
      if (!was_frozen) (void)cg->freeze(false);
    }
  }
  return st;
}

cloister::Status remove(const Globals& g, const std::string& id, bool force) {
  if (auto s = check_id(id); !s) return s;
  auto l = lock(g, id);
  if (!l) {
    if (l.error().kind == ErrorKind::NotFound && force) return {};
    return fail(l.error());
  }
  auto s = load(g, id);
  if (!s) {
    // An aborted create may leave a directory without a state.
    if (s.error().kind == ErrorKind::NotFound) {
      remove_dir(g, id);
      if (force) return {};
    }
    return fail(s.error());
  }
  if ((s->status == Status::Running || s->status == Status::Paused) && !force)
    return fail(invalid("cannot delete container " + id + ": it is " +
                        std::string(status_name(s->status)) + " (stop it, or --force)"));
  if (auto st = destroy(*s); !st) return st;
  s->status = Status::Stopped;
  (void)run_hooks(hooks_of(g, *s).poststop, *s, "poststop");
  remove_dir(g, id);
  return {};
}

Result<std::vector<pid_t>> pids(const Globals& g, const std::string& id) {
  auto s = load(g, id);
  if (!s) return fail(s.error());
  auto m = manager();
  if (!m) return fail(m.error());
  auto cg = (*m)->open_named(s->cgroup);
  if (!cg) {
    if (cg.error().kind == ErrorKind::NotFound) return std::vector<pid_t>{};
    return fail(cg.error());
  }
  auto out = cg->pids();
  return out;
}

cloister::Status pause(const Globals& g, const std::string& id, bool on) {
  auto l = lock(g, id);
  if (!l) return fail(l.error());
  auto s = load(g, id);
  if (!s) return fail(s.error());
  if (on && s->status != Status::Running)
    return fail(
        invalid("cannot pause container " + id + ": it is " + std::string(status_name(s->status))));
  if (!on && s->status != Status::Paused)
    return fail(invalid("cannot resume container " + id + ": it is not paused"));
  auto m = manager();
  if (!m) return fail(m.error());
  auto cg = (*m)->open_named(s->cgroup);
  if (!cg) return fail(cg.error());
  auto st = cg->freeze(on);
  return st;
}

Result<std::vector<State>> list(const Globals& g) {
  std::vector<State> out;
  DIR* d = ::opendir(g.root.c_str());
  if (!d) {
    if (errno == ENOENT) return out;
    return fail(sys_error("open --root " + g.root));
  }
  std::vector<std::string> ids;
  while (dirent* e = ::readdir(d))
    if (e->d_type == DT_DIR && e->d_name[0] != '.') ids.emplace_back(e->d_name);
  ::closedir(d);
  std::sort(ids.begin(), ids.end());
  for (const auto& id : ids)
    if (auto s = load(g, id)) out.push_back(std::move(*s));
  return out;
}

Result<std::string> stats_json(const Globals& g, const std::string& id) {
  auto s = load(g, id);
  if (!s) return fail(s.error());
  auto m = manager();
  if (!m) return fail(m.error());
  auto cg = (*m)->open_named(s->cgroup);
  if (!cg) return fail(cg.error());
  auto u = cg->usage();
  auto p = cg->pids();
  if (!u) return fail(u.error());
  json data{{"cpu", {{"usage", {{"total", u->cpu_usec * 1000}}}}},
            {"memory", {{"usage", {{"max", u->memory_peak}}}, {"oom_kill", u->oom_kills}}},
            {"pids", {{"current", p ? p->size() : 0}}}};
  return json{{"type", "stats"}, {"id", id}, {"data", data}}.dump();
}

cloister::Status update(const Globals& g, const std::string& id, const cgroups::Limits& limits) {
  auto s = load(g, id);
  if (!s) return fail(s.error());
  if (s->status == Status::Stopped) return fail(invalid("container " + id + " is not running"));
  auto m = manager();
  if (!m) return fail(m.error());
  auto cg = (*m)->open_named(s->cgroup);
  if (!cg) return fail(cg.error());
  auto st = (*m)->update(*cg, limits);
  return st;
}

Result<std::string> process_template(const Globals& g, const std::string& id) {
  auto s = load(g, id);
  if (!s) return fail(s.error());
  auto text = read_file(dir_of(g, id) + "/config.json");
  if (!text) return fail(text.error());
  json c = json::parse(*text, nullptr, false);
  if (c.is_discarded() || !c.is_object() || !c.contains("process"))
    return fail(invalid("the bundle of container " + id + " has no process"));
  return c["process"].dump();
}

Result<int> exec(const Globals& g, const std::string& id, const ExecOptions& o) {
  auto s = load(g, id);
  if (!s) return fail(s.error());
  if (s->status != Status::Running && s->status != Status::Created)
    return fail(invalid("cannot exec in container " + id + ": it is " +
                        std::string(status_name(s->status))));
  auto container = bundle_of(g, *s);
  if (!container) return fail(container.error());
  auto b = oci::parse_exec_process(*container, o.process_json);
  if (!b) return fail(b.error());
  if (g.warn)
    for (const auto& w : b->warnings) g.warn("process: " + w);
  if (!b->seccomp_json.empty()) b->spec.seccomp_profile = dir_of(g, id) + "/seccomp.json";
  auto sb = Sandbox::prepare(b->spec);
  if (!sb) return fail(sb.error());
  auto m = manager();
  if (!m) return fail(m.error());
  auto cg = (*m)->open_named(s->cgroup);
  if (!cg) return fail(cg.error());
  Join join;
  join.pidfd = Fd(static_cast<int>(::syscall(SYS_pidfd_open, s->pid, 0)));
  if (!join.pidfd) return fail(invalid("container " + id + " is not running"));
  if (!alive(*s)) return fail(invalid("container " + id + " is not running"));
  if (b->spec.userns) {
    join.userns =
        Fd(::open(("/proc/" + std::to_string(s->pid) + "/ns/user").c_str(), O_RDONLY | O_CLOEXEC));
    if (!join.userns) return fail(sys_error("the user namespace of container " + id));
  }
  join.cgroup.emplace(std::move(*cg));
  auto io = caller_io(*b, o.console_socket);
  if (!io) return fail(io.error());
  Detach d = io->detach(*b);
  if (auto st = apply_oom_score_adj(*b); !st) return fail(st.error());
  d.join = &join;
  auto c = create_detached(**sb, b->command, io->stdio, nullptr, d);
  if (!c) return fail(c.error());
  if (!o.pid_file.empty())
    if (auto st = write_atomic(o.pid_file, std::to_string(c->pid), 0644); !st) {
      ::kill(c->pid, SIGKILL);
      return fail(st.error().wrap("--pid-file"));
    }
  if (o.detach) return 0;
  int status = 0;
  for (;;) {
    pid_t w = ::waitpid(c->pid, &status, __WALL);
    if (w == c->pid) break;
    if (w < 0 && errno != EINTR) return fail(sys_error("wait for the exec in " + id));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

Result<int> run(const Globals& g, const CreateOptions& o, bool detach) {
  if (auto st = create(g, o); !st) return fail(st.error());
  auto s = load(g, o.id);
  if (!s) return fail(s.error());
  if (auto st = start(g, o.id); !st) {
    (void)remove(g, o.id, true);
    return fail(st.error());
  }
  if (detach) return 0;
  // The init is our child here (we cloned it): its exit status is the
  // payload's. It was cloned with no exit signal: __WALL.
  int status = 0;
  for (;;) {
    pid_t w = ::waitpid(s->pid, &status, __WALL);
    if (w == s->pid) break;
    if (w < 0 && errno != EINTR) return fail(sys_error("wait for container " + o.id));
  }
  if (auto st = remove(g, o.id, true); !st) return fail(st.error());
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace cloister::ociruntime

// cloister: the command-line client. Each verb is a thin layer over
// libcloister; `exec` runs a command in-process through the library, the
// service verbs (run, ps, attach, logs, kill, wait, rm, executors) go through
// cloisterd with the client library (runtime/client.h).
#include <fcntl.h>
#include <poll.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <termios.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "isolate/cgroups.h"
#include "isolate/signals.h"
#include "oci/container.h"
#include "oci/load.h"
#include "oci/reference.h"
#include "oci/registry.h"
#include "oci/store.h"
#include "runtime/adhoc.h"
#include "runtime/client.h"
#include "runtime/config.h"
#include "runtime/copy.h"
#include "runtime/executor.h"
#include "runtime/pump.h"

using namespace cloister;

namespace {

constexpr const char* kDefaultConfig = "/etc/cloister/cloister.yaml";

// --json anywhere before the command: errors as JSON too (on stderr, as
// the text ones), {"error": {"kind", "message", "errno"}}.
bool g_json_errors = false;

int report(const Error& e) {
  if (g_json_errors) {
    const nlohmann::json j = {
        {"error",
         {{"kind", std::string(kind_name(e.kind))}, {"message", e.what()}, {"errno", e.code}}}};
    std::fprintf(stderr, "%s\n",
                 j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else {
    std::fprintf(stderr, "cloister: %s: %s\n", std::string(kind_name(e.kind)).c_str(),
                 e.what().c_str());
  }
  return exit_code_for(e);
}

struct ExecOptions {
  std::string config = kDefaultConfig;
  std::string executor;
  std::string session;  // --session: into this running session, through cloisterd
  bool tty = false, detach = false;
  std::string name;
  std::vector<std::string> env;
  std::string work_dir;
  std::string state_dir;  // overrides the config's images.state_dir
  bool interactive = false;
  double timeout = 0;
  std::vector<std::string> argv;
  std::string command;        // a command string instead of argv (policy/command.h)
  bool config_given = false;  // -c: else the default config only where it exists
  AdhocFlags sandbox;         // flags describing the sandbox or overriding its fields
  std::vector<std::string> env_files;
};

// KEY=VALUE lines of an --env-file (docker's: # comments and blank lines
// skipped, a bare KEY taken from our own environment).
Status read_env_file(const std::string& path, std::vector<std::string>& out) {
  FILE* f = std::fopen(path.c_str(), "re");
  if (!f) return fail(sys_error("--env-file " + path));
  char* line = nullptr;
  size_t cap = 0;
  ssize_t n;
  int lineno = 0;
  Status st;
  while ((n = ::getline(&line, &cap, f)) >= 0) {
    ++lineno;
    std::string l(line, static_cast<size_t>(n));
    while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
    const size_t first = l.find_first_not_of(" \t");
    if (first == std::string::npos || l[first] == '#') continue;
    l = l.substr(first);
    if (l.find('=') == std::string::npos) {
      const char* v = std::getenv(l.c_str());
      if (!v) continue;
      l += "=" + std::string(v);
    }
    if (l[0] == '=') {
      st = fail(invalid("--env-file " + path + ":" + std::to_string(lineno) +
                        ": a line needs KEY=VALUE"));
      break;
    }
    out.push_back(std::move(l));
  }
  std::free(line);
  std::fclose(f);
  return st;
}

int run_exec(const ExecOptions& o) {
  // One sandbox, then exit: no thread for its teardown.
  Spawned::set_background_teardown(false);
  // An executor of the config, its fields overridden by flags; or one the flags describe
  // (an image, or the host's view), in the config where there is one.
  Result<ExecutorConfig> lowered = fail(internal("unset"));
  if (!o.executor.empty() && !o.sandbox.any()) {
    auto config = load_config(o.config);
    if (!config) return report(config.error());
    const ExecutorConfig* ec = config->find(o.executor);
    if (!ec)
      return report(
          make_error(ErrorKind::NotFound, "no executor named '" + o.executor + "' in " + o.config));
    lowered = *ec;
  } else {
    // -x needs its config; a new sandbox takes the default one only where
    // this user can read it (an administrator's 0600 file is not theirs).
    const bool use_config =
        o.config_given || !o.executor.empty() || ::access(o.config.c_str(), R_OK) == 0;
    lowered = lower_adhoc(o.sandbox, use_config ? o.config : "", o.executor);
  }
  if (!lowered) return report(lowered.error());
  ExecutorConfig chosen = std::move(*lowered);
  const ExecutorConfig* ec = &chosen;
  if (!o.state_dir.empty()) chosen.state_dir = o.state_dir;
  // A container runs its image's Cmd when given none; a host executor needs one.
  if (o.argv.empty() && o.command.empty() && ec->kind != ExecutorKind::Container)
    return report(invalid("give the command (after --) or --command"));
  auto executor = Executor::create(chosen);
  if (!executor) return report(executor.error());

  ExecRequest req;
  req.argv = o.argv;
  req.command = o.command;
  req.work_dir = o.work_dir;
  req.stdin_open = o.interactive;
  req.timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000));
  std::vector<std::string> env;
  for (const auto& file : o.env_files)
    if (auto st = read_env_file(file, env); !st) return report(st.error());
  env.insert(env.end(), o.env.begin(), o.env.end());
  for (const auto& kv : env) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      return report(invalid("-e expects KEY=VALUE, got '" + kv + "'"));
    req.env.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  auto process = (*executor)->exec(std::move(req));
  if (!process) return report(process.error());
  if (auto s = (*process)->start(); !s) return report(s.error());
  auto status = pump(**process, o.interactive ? STDIN_FILENO : -1, STDOUT_FILENO, STDERR_FILENO,
                     {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH});
  // The sandbox's teardown (its init's exit, its cgroup) ends here, before we do.
  process->reset();
  if (!status) return report(status.error());
  if (status->timed_out)
    std::fprintf(stderr, "cloister: TIMEOUT: command killed after %.3g s\n", o.timeout);
  if (status->stdout_truncated || status->stderr_truncated)
    std::fprintf(stderr, "cloister: LIMIT: output truncated at the executor's output_limit (%s)\n",
                 status->stdout_truncated && status->stderr_truncated ? "stdout, stderr"
                 : status->stdout_truncated                           ? "stdout"
                                                                      : "stderr");
  return status->code();
}

// --- info and version ---

struct HostFeatures {
  std::string kernel, cgroups, seccomp;
  bool userns = false, overlay = false, pidfd = false;
};

HostFeatures host_features() {
  HostFeatures f;
  utsname u{};
  if (::uname(&u) == 0) f.kernel = u.release;
  auto m = cgroups::Manager::shared();
  f.cgroups =
      m ? std::string(cgroups::layout_name((*m)->layout())) : "none (" + m.error().what() + ")";
  const scmp_version* v = ::seccomp_version();
  f.seccomp =
      v ? std::to_string(v->major) + "." + std::to_string(v->minor) + "." + std::to_string(v->micro)
        : "?";
  std::ifstream max("/proc/sys/user/max_user_namespaces");
  long n = 0;
  f.userns = (max >> n) && n > 0;
  f.overlay = oci::overlay_available();
  const int pfd = static_cast<int>(::syscall(SYS_pidfd_open, ::getpid(), 0));
  f.pidfd = pfd >= 0;
  if (pfd >= 0) ::close(pfd);
  return f;
}

std::string features_line() {
  const HostFeatures f = host_features();
  return "kernel " + f.kernel + ", cgroups " + f.cgroups + ", libseccomp " + f.seccomp +
         (f.userns ? ", userns" : ", no userns") + (f.overlay ? ", overlay" : ", no overlay") +
         (f.pidfd ? ", pidfd" : ", no pidfd");
}

int run_info(const std::string& state_dir, bool as_json) {
  const HostFeatures f = host_features();
  nlohmann::json j = {
      {"version", CLOISTER_VERSION}, {"commit", CLOISTER_COMMIT}, {"kernel", f.kernel},
      {"cgroups", f.cgroups},        {"libseccomp", f.seccomp},   {"userns", f.userns},
      {"overlay", f.overlay},        {"pidfd", f.pidfd},          {"uid", ::geteuid()}};
  auto dir = oci::resolve_state_dir(state_dir);
  if (dir) {
    j["store"] = {{"path", *dir}};
    // Read-only: a store that does not exist is said, not made.
    if (::access(dir->c_str(), F_OK) == 0) {
      if (auto store = oci::Store::open(*dir)) {
        if (auto used = store->disk_usage()) j["store"]["bytes"] = *used;
        if (auto images = store->list_images()) j["store"]["images"] = images->size();
      }
    } else {
      j["store"]["exists"] = false;
    }
  }
  if (as_json) {
    std::printf("%s\n", j.dump(2).c_str());
    return 0;
  }
  for (auto& [k, v] : j.items()) {
    if (k == "store") {
      for (auto& [sk, sv] : v.items())
        std::printf("store.%-10s %s\n", sk.c_str(),
                    sv.is_string() ? sv.get<std::string>().c_str() : sv.dump().c_str());
      continue;
    }
    std::printf("%-16s %s\n", k.c_str(),
                v.is_string() ? v.get<std::string>().c_str() : v.dump().c_str());
  }
  return 0;
}

// --- image verbs (oci/): load, images, rmi, prune ---

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "KB", "MB", "GB", "TB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1000 && u < 4) v /= 1000, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", v, units[u]);
  return buf;
}

Result<oci::Store> open_store(const std::string& state_dir) {
  auto dir = oci::resolve_state_dir(state_dir);
  if (!dir) return fail(dir.error());
  return oci::Store::open(*dir);
}

void print_json_line(const nlohmann::json& j) {
  std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

int run_load(const std::string& state_dir, const std::string& path, const std::string& name,
             bool as_json) {
  auto store = open_store(state_dir);
  if (!store) return report(store.error());
  oci::ImportOptions opt;
  if (!as_json)
    opt.layer_done = [](size_t i, const oci::Descriptor& d, bool cached) {
      std::fprintf(stderr, "layer %zu %s: %s\n", i, d.digest.str().substr(0, 19).c_str(),
                   cached ? "already present" : "applied");
    };
  auto images = oci::load_images(*store, path, name, opt);
  if (!images) return report(images.error());
  nlohmann::json out = nlohmann::json::array();
  for (const auto& r : *images) {
    if (as_json)
      out.push_back({{"reference", r.reference}, {"manifest", r.manifest.str()}});
    else
      std::printf("loaded %s (%s)\n", r.reference.c_str(), r.manifest.str().c_str());
  }
  if (as_json) print_json_line(out);
  return 0;
}

int run_images(const std::string& state_dir, bool as_json) {
  auto store = open_store(state_dir);
  if (!store) return report(store.error());
  auto images = store->list_images();
  if (!images) return report(images.error());
  if (as_json) {
    nlohmann::json out = nlohmann::json::array();
    for (const auto& r : *images)
      out.push_back({{"reference", r.reference},
                     {"manifest", r.manifest.str()},
                     {"config", r.config.str()},
                     {"layers", r.chain_ids.size()},
                     {"size", r.size},
                     {"created", r.created}});
    std::printf("%s\n", out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  std::printf("%-50s %-19s %6s %10s\n", "REFERENCE", "MANIFEST", "LAYERS", "SIZE");
  for (const auto& r : *images)
    std::printf("%-50s %-19s %6zu %10s\n", r.reference.c_str(),
                r.manifest.str().substr(0, 19).c_str(), r.chain_ids.size(),
                human_bytes(r.size).c_str());
  auto used = store->disk_usage();
  if (used)
    std::printf("store %s uses %s on disk\n", store->root().c_str(), human_bytes(*used).c_str());
  return 0;
}

int run_rmi(const std::string& state_dir, const std::vector<std::string>& refs, bool as_json) {
  auto store = open_store(state_dir);
  if (!store) return report(store.error());
  auto lock = store->lock(true);
  if (!lock) return report(lock.error());
  for (const auto& r : refs) {
    auto ref = oci::parse_reference(r);
    if (!ref) return report(ref.error());
    if (auto s = store->remove_image(ref->str()); !s) return report(s.error());
    if (as_json)
      print_json_line({{"removed", ref->str()}});
    else
      std::printf("removed %s\n", ref->str().c_str());
  }
  return 0;
}

int run_prune(const std::string& state_dir, bool as_json) {
  auto store = open_store(state_dir);
  if (!store) return report(store.error());
  auto lock = store->lock(true);
  if (!lock) return report(lock.error());
  auto r = store->prune();
  if (!r) return report(r.error());
  if (as_json) {
    auto used = store->disk_usage();
    print_json_line({{"blobs", r->blobs},
                     {"layers", r->layers},
                     {"staging", r->staging},
                     {"freed", r->bytes},
                     {"store", store->root()},
                     {"used", used ? *used : 0}});
    return 0;
  }
  std::printf("removed %d blobs, %d layers, %d staging entries: %s freed\n", r->blobs, r->layers,
              r->staging, human_bytes(r->bytes).c_str());
  auto used = store->disk_usage();
  if (used)
    std::printf("store %s uses %s on disk\n", store->root().c_str(), human_bytes(*used).c_str());
  return 0;
}
// --progress: bars on stderr ("tty", the default on a terminal), JSON lines
// on stderr ("json", only when asked) or nothing ("none", the default
// elsewhere, and with -q).
int run_pull(const std::string& state_dir, const std::string& reference,
             const oci::RegistryOptions& ropt, std::string progress, bool quiet, bool as_json) {
  auto store = open_store(state_dir);
  if (!store) return report(store.error());
  if (progress.empty()) progress = ::isatty(STDERR_FILENO) && !quiet ? "tty" : "none";
  const bool tty = progress == "tty";
  std::mutex mu;
  std::map<size_t, std::pair<uint64_t, uint64_t>> layers;  // done, total
  std::map<size_t, uint64_t> last_reported;
  std::map<size_t, std::string> states;
  int drawn = 0;
  // One bar per layer, redrawn in place (cursor up over the previous ones).
  auto redraw = [&] {
    if (drawn) std::fprintf(stderr, "\033[%dA", drawn);
    for (auto& [k, v] : layers) {
      const int width = 30;
      int fill = v.second ? static_cast<int>(width * v.first / v.second) : width;
      std::string bar(static_cast<size_t>(fill), '#');
      bar.resize(width, '-');
      auto st = states.find(k);
      std::fprintf(stderr, "\r\033[Klayer %-3zu [%s] %9s / %-9s %s\n", k, bar.c_str(),
                   human_bytes(v.first).c_str(), human_bytes(v.second).c_str(),
                   st == states.end() ? "" : st->second.c_str());
    }
    drawn = static_cast<int>(layers.size());
  };
  oci::ImportOptions opt;
  opt.progress = [&](size_t i, uint64_t done, uint64_t total) {
    if (progress == "none") return;
    std::lock_guard g(mu);
    layers[i] = {done, total};
    auto& last = last_reported[i];
    if (done == last || (done - last < (1u << 20) && done != total)) return;
    last = done;
    if (tty) {
      redraw();
    } else {
      std::fprintf(stderr, "{\"event\":\"progress\",\"layer\":%zu,\"bytes\":%llu,\"total\":%llu}\n",
                   i, static_cast<unsigned long long>(done),
                   static_cast<unsigned long long>(total));
    }
  };
  opt.layer_done = [&](size_t i, const oci::Descriptor& d, bool cached) {
    if (progress == "none") return;
    std::lock_guard g(mu);
    states[i] = cached ? "already present" : "done";
    if (layers[i].second == 0) layers[i] = {d.size, d.size};
    if (tty)
      redraw();
    else
      std::fprintf(stderr, "{\"event\":\"layer\",\"layer\":%zu,\"digest\":\"%s\",\"cached\":%s}\n",
                   i, d.digest.str().c_str(), cached ? "true" : "false");
  };
  auto rec = oci::pull_image(*store, reference, ropt, opt);
  if (!rec) {
    Error e = rec.error();
    for (const char* down : {"Couldn't connect", "Couldn't resolve", "Connection refused",
                             "timed out", "SSL connect error"})
      if (e.message.find(down) != std::string::npos) {
        e.message +=
            " (is the registry up and reachable from here? --mirror REGISTRY=HOST "
            "for another, --insecure HOST for one over plain HTTP)";
        break;
      }
    return report(e);
  }
  if (as_json)
    std::printf("%s\n", nlohmann::json{{"reference", rec->reference},
                                       {"manifest", rec->manifest.str()},
                                       {"config", rec->config.str()},
                                       {"layers", rec->chain_ids.size()},
                                       {"size", rec->size}}
                            .dump()
                            .c_str());
  else if (quiet)
    std::printf("%s\n", rec->manifest.str().c_str());
  else
    std::printf("pulled %s (%s)\n", rec->reference.c_str(), rec->manifest.str().c_str());
  return 0;
}
// --- end image verbs ---

// ---------------------------------------------------------------------------
// Service verbs (through cloisterd).

using json = nlohmann::json;
using namespace std::chrono_literals;

struct Global {
  std::string socket = default_socket_path();
  bool json = false;
};

struct RunOptions {
  bool detach = false, interactive = false, tty = false;
  std::vector<std::string> env;
  std::string work_dir, log_file, executor, name;
  std::optional<protocol::SessionRef> into;  // `exec --session`: the session (id or name) to run in
  double timeout = 0;
  std::vector<std::string> argv;
};

void print_json(const json& j) {
  std::printf("%s\n", j.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
}

// The terminal in raw mode for as long as this lives.
class RawTerminal {
 public:
  explicit RawTerminal(int fd) : fd_(fd) {
    if (!::isatty(fd) || ::tcgetattr(fd, &saved_) != 0) return;
    termios raw = saved_;
    ::cfmakeraw(&raw);
    active_ = ::tcsetattr(fd, TCSANOW, &raw) == 0;
  }
  ~RawTerminal() {
    if (active_) ::tcsetattr(fd_, TCSANOW, &saved_);
  }

 private:
  int fd_;
  termios saved_{};
  bool active_ = false;
};

std::optional<PtyRequest> window_size(int fd) {
  winsize ws{};
  if (::ioctl(fd, TIOCGWINSZ, &ws) != 0 || ws.ws_row == 0) return std::nullopt;
  return PtyRequest{ws.ws_row, ws.ws_col};
}

// Signals the CLI forwards to a session, taken through a signalfd.
struct SignalFd {
  sigset_t set{};
  Fd fd;
  SignalFd() {
    sigemptyset(&set);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH}) sigaddset(&set, s);
    ::sigprocmask(SIG_BLOCK, &set, nullptr);
    fd = Fd(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
  }
};

// What a stream loop ends with.
struct StreamEnd {
  std::optional<ExitStatus> status;
  bool ended = false;     // "end" of a non-following logs
  bool detached = false;  // the detach keys were typed
};

// --detach-keys as docker takes them: comma-separated "ctrl-X" (X a letter
// or one of @[\]^_) or single characters; "" turns detaching off.
Result<std::string> parse_detach_keys(const std::string& spec) {
  std::string out;
  if (spec.empty()) return out;
  size_t pos = 0;
  for (;;) {
    size_t end = spec.find(',', pos);
    std::string k = spec.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    if (k.size() == 1) {
      out += k[0];
    } else if (k.size() == 6 && k.starts_with("ctrl-") &&
               ((k[5] >= 'a' && k[5] <= 'z') || std::strchr("@[\\]^_", k[5]))) {
      out += static_cast<char>((k[5] >= 'a' && k[5] <= 'z' ? k[5] - 'a' + 'A' : k[5]) & 0x1f);
    } else {
      return fail(invalid("--detach-keys: '" + k +
                          "' is not a key (ctrl-a..ctrl-z, ctrl-@, ctrl-[, ctrl-\\, ctrl-], "
                          "ctrl-^, ctrl-_, or one character)"));
    }
    if (end == std::string::npos) return out;
    pos = end + 1;
  }
}

// Copies a session's output to our stdout/stderr until it exits (or, with
// follow=false, until the buffered output is replayed); forwards stdin and
// signals while it runs.
Result<StreamEnd> stream_session(Connection& c, uint64_t sid, bool forward_stdin, bool pty,
                                 bool forward_signals, std::string_view detach_keys = {}) {
  SignalFd sig;
  bool stdin_open = forward_stdin;
  StreamEnd end;
  size_t matched = 0;  // of detach_keys, held back from the session
  for (;;) {
    for (;;) {
      auto m = c.next(0ms);
      if (!m) {
        if (m.error().kind == ErrorKind::Timeout) break;
        return fail(m.error());
      }
      if (m->data) {
        // As `cloister exec` (runtime/pump.cc): what our side cannot take is
        // dropped, the payload's output keeps draining.
        if (m->session == sid)
          (void)write_all(m->stream == protocol::StreamId::Stderr ? STDERR_FILENO : STDOUT_FILENO,
                          m->bytes);
        continue;
      }
      const json& j = m->control;
      if (j.contains("ok") && !j.value("ok", true))
        std::fprintf(stderr, "cloister: %s\n",
                     error_from_json(j.value("error", json::object())).what().c_str());
      if (!j.contains("event")) continue;
      auto ev = protocol::parse_event(j);
      if (!ev) return fail(ev.error());
      if (!*ev) continue;
      const protocol::Event& e = **ev;
      const bool shutdown = std::holds_alternative<protocol::ShutdownEvent>(e);
      if (protocol::session_of(e) != sid && !shutdown) continue;
      if (const auto* x = std::get_if<protocol::EvictedEvent>(&e))
        std::fprintf(stderr, "cloister: %s bytes %llu-%llu were evicted before they were read\n",
                     std::string(protocol::stream_name(x->stream)).c_str(),
                     static_cast<unsigned long long>(x->from),
                     static_cast<unsigned long long>(x->to));
      if (const auto* x = std::get_if<protocol::ExitEvent>(&e)) {
        if (x->error) return fail(*x->error);
        end.status = x->status;
        return end;
      }
      if (std::holds_alternative<protocol::EndEvent>(e)) {
        end.ended = true;
        return end;
      }
      if (shutdown || std::holds_alternative<protocol::RemovedEvent>(e))
        return fail(internal(std::string("the session was removed (service ") +
                             (shutdown ? "shutdown" : "removed") + ")"));
    }
    pollfd p[3] = {{c.fd(), POLLIN, 0},
                   {sig.fd.get(), POLLIN, 0},
                   {stdin_open ? STDIN_FILENO : -1, POLLIN, 0}};
    if (::poll(p, 3, -1) < 0 && errno != EINTR) return fail(sys_error("poll"));
    if (p[1].revents & POLLIN) {
      signalfd_siginfo si;
      while (::read(sig.fd.get(), &si, sizeof si) == sizeof si) {
        int s = static_cast<int>(si.ssi_signo);
        if (s == SIGWINCH) {
          if (auto ws = window_size(STDIN_FILENO); ws && pty)
            (void)c.send(protocol::Resize{sid, ws->rows, ws->cols});
        } else if (forward_signals) {
          (void)c.send(protocol::Signal{sid, s});
        } else {
          return end;  // logs -f: ^C stops following
        }
      }
    }
    if (p[2].revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[65536];
      ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
      if (n > 0) {
        // Bytes that may begin the detach keys are held until the next one
        // decides; the keys themselves never reach the session.
        std::string out;
        for (ssize_t i = 0; i < n; ++i) {
          const char b = buf[i];
          if (!detach_keys.empty() && b == detach_keys[matched]) {
            if (++matched < detach_keys.size()) continue;
            if (!out.empty()) (void)c.send_stdin(sid, out);
            (void)c.call(protocol::Detach{sid});
            std::fprintf(stderr, "\r\ncloister: detached from session %llu\r\n",
                         static_cast<unsigned long long>(sid));
            end.detached = true;
            return end;
          }
          if (matched > 0) out.append(detach_keys.substr(0, matched));
          matched = 0;
          if (!detach_keys.empty() && b == detach_keys[0])
            matched = 1;
          else
            out += b;
        }
        if (!out.empty())
          if (auto s = c.send_stdin(sid, out); !s) return fail(s.error());
      } else if (n == 0 || errno != EINTR) {
        stdin_open = false;
        // A terminal session keeps its stdin: our EOF is not its EOF.
        if (!pty) (void)c.send(protocol::CloseStdin{sid});
      }
    }
  }
}

int finish(const ExitStatus& st, double timeout) {
  if (st.timed_out)
    std::fprintf(stderr, "cloister: TIMEOUT: command killed after %.3g s\n", timeout);
  return st.code();
}

// The connection, or an error that says what to do about the usual causes.
Result<std::unique_ptr<Connection>> dial(const Global& g) {
  auto c = Connection::connect(g.socket);
  if (c) return c;
  Error e = c.error();
  if (e.code == ENOENT || e.code == ECONNREFUSED)
    e.message +=
        " (is cloisterd running? `systemctl start cloister.socket`, or `cloisterd "
        "--config FILE`; --socket or $CLOISTER_SOCKET for another socket)";
  else if (e.code == EACCES || e.code == EPERM)
    e.message += " (the socket is for root and its group: is your user in it? `id -nG`)";
  return fail(std::move(e));
}

int run_service(const Global& g, const RunOptions& o) {
  auto c = dial(g);
  if (!c) return report(c.error());
  protocol::Launch req;
  if (o.into) {
    req.kind = protocol::Launch::Kind::Exec;
    req.session = *o.into;
  } else {
    req.executor = o.executor;
  }
  req.argv = o.argv;
  for (const auto& kv : o.env) {
    auto eq = kv.find('=');
    if (eq == std::string::npos || eq == 0)
      return report(invalid("-e expects KEY=VALUE, got '" + kv + "'"));
    req.env.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  // The command's terminal is shown on ours: it is what ours is (as ssh
  // passes it), unless -e says otherwise. (The library's default: xterm.)
  const bool has_term = std::any_of(req.env.begin(), req.env.end(),
                                    [](const auto& kv) { return kv.first == "TERM"; });
  if (const char* term = std::getenv("TERM"); o.tty && term && *term && !has_term)
    req.env.emplace_back("TERM", term);
  req.work_dir = o.work_dir;
  if (o.timeout > 0) req.timeout_ms = static_cast<uint64_t>(o.timeout * 1000);
  req.log_file = o.log_file;
  req.name = o.name;
  req.stdin_open = o.interactive;
  req.detached = o.detach;
  std::optional<PtyRequest> pty;
  if (o.tty) pty = window_size(STDIN_FILENO).value_or(PtyRequest{});
  if (pty) req.pty = protocol::PtySize{pty->rows, pty->cols};

  if (o.detach) {
    auto r = (*c)->call(req);
    if (!r) return report(r.error());
    if (g.json)
      print_json({{"session", (*r)["session"]}, {"pid", (*r)["pid"]}});
    else
      std::printf("%llu\n", static_cast<unsigned long long>((*r)["session"].get<uint64_t>()));
    return 0;
  }
  // Our own stdio is handed to the payload only when it is a pipe, socket or
  // terminal (check_passed_stdio); a file or directory is relayed through
  // the service instead, as with a pty.
  // Never into a session (`exec --session`), which may be another caller's:
  // its processes could take over what we pass (our terminal).
  const bool pass = !o.into && (!o.interactive || check_passed_stdio(STDIN_FILENO, "stdin")) &&
                    check_passed_stdio(STDOUT_FILENO, "stdout") &&
                    check_passed_stdio(STDERR_FILENO, "stderr");
  if (pty || !pass) {
    std::optional<RawTerminal> raw;
    if (pty) raw.emplace(STDIN_FILENO);
    auto r = (*c)->call(req);
    if (!r) return report(r.error());
    uint64_t sid = (*r)["session"].get<uint64_t>();
    auto end = stream_session(**c, sid, pty || o.interactive, pty.has_value(), true);
    raw.reset();
    if (!end) return report(end.error());
    (void)(*c)->call(protocol::Remove{sid});
    return end->status ? finish(*end->status, o.timeout) : 0;
  }
  // Attached without a terminal: our own stdio goes to the payload with
  // SCM_RIGHTS, so output reaches the terminal or pipe directly.
  auto devnull = open_fd("/dev/null", O_RDWR);
  if (!devnull) return report(devnull.error());
  int fds[3] = {o.interactive ? STDIN_FILENO : devnull->get(), STDOUT_FILENO, STDERR_FILENO};
  req.stdio = protocol::Launch::Stdio::Passed;
  req.stdin_open = false;
  SignalFd sig;
  auto r = (*c)->call(req, fds);
  if (!r) return report(r.error());
  uint64_t sid = (*r)["session"].get<uint64_t>();
  auto wait_id = (*c)->send(protocol::Wait{sid});
  if (!wait_id) return report(wait_id.error());
  for (;;) {
    pollfd p[2] = {{(*c)->fd(), POLLIN, 0}, {sig.fd.get(), POLLIN, 0}};
    auto m = (*c)->next(0ms);
    if (!m && m.error().kind != ErrorKind::Timeout) return report(m.error());
    if (m) {
      const json& j = m->control;
      if (!m->data && j.value("id", json()).is_number_unsigned() &&
          j["id"].get<uint64_t>() == *wait_id) {
        if (!j.value("ok", false)) return report(error_from_json(j["error"]));
        (void)(*c)->call(protocol::Remove{sid});
        return finish(status_from_json(j["status"]), o.timeout);
      }
      if (!m->data && j.value("event", "") == "shutdown")
        return report(internal("the service shut down"));
      continue;
    }
    if (::poll(p, 2, -1) < 0 && errno != EINTR) return report(sys_error("poll"));
    if (p[1].revents & POLLIN) {
      signalfd_siginfo si;
      while (::read(sig.fd.get(), &si, sizeof si) == sizeof si)
        if (si.ssi_signo != SIGWINCH)
          (void)(*c)->send(protocol::Signal{sid, static_cast<int>(si.ssi_signo)});
    }
  }
}

std::string fmt_status(const json& e) {
  if (e.is_null()) return "-";
  if (e.value("timed_out", false)) return "timeout";
  if (e.value("signal", 0) > 0) return "signal " + std::to_string(e.value("signal", 0));
  return "exit " + std::to_string(e.value("exit_code", -1));
}

int verb_ps(const Global& g) {
  auto c = dial(g);
  if (!c) return report(c.error());
  auto r = (*c)->call(protocol::List{});
  if (!r) return report(r.error());
  if (g.json) {
    print_json((*r)["sessions"]);
    return 0;
  }
  std::printf("%-8s %-16s %-12s %-8s %-8s %-20s %-10s %s\n", "SESSION", "NAME", "EXECUTOR", "PID",
              "STATE", "STARTED", "EXIT", "COMMAND");
  for (auto& s : (*r)["sessions"]) {
    std::string cmd;
    for (auto& a : s["argv"]) cmd += (cmd.empty() ? "" : " ") + a.get<std::string>();
    std::printf("%-8llu %-16s %-12s %-8d %-8s %-20s %-10s %s\n",
                static_cast<unsigned long long>(s["session"].get<uint64_t>()),
                s.value("name", "-").c_str(), s.value("executor", "").c_str(), s.value("pid", -1),
                s.value("state", "").c_str(), s.value("started_at", "").c_str(),
                fmt_status(s["exit"]).c_str(), cmd.c_str());
  }
  return 0;
}

int verb_executors(const Global& g) {
  auto c = dial(g);
  if (!c) return report(c.error());
  auto r = (*c)->call(protocol::ListExecutors{});
  if (!r) return report(r.error());
  if (g.json) {
    print_json((*r)["executors"]);
    return 0;
  }
  for (auto& e : (*r)["executors"])
    std::printf("%-16s %s\n", e.value("name", "").c_str(),
                e.value("available", false)
                    ? e.value("kind", "").c_str()
                    : ("unavailable: " + error_from_json(e["error"]).what()).c_str());
  return 0;
}

int verb_attach(const Global& g, const protocol::SessionRef& sid, bool interactive,
                const std::string& keys_spec, bool sig_proxy) {
  auto keys = parse_detach_keys(keys_spec);
  if (!keys) return report(keys.error());
  auto c = dial(g);
  if (!c) return report(c.error());
  auto r = (*c)->call(protocol::Attach{sid, 0, 0});
  if (!r) return report(r.error());
  const bool pty = (*r).value("pty", false);
  std::optional<RawTerminal> raw;
  if (pty) {
    raw.emplace(STDIN_FILENO);
    if (auto ws = window_size(STDIN_FILENO))
      (void)(*c)->send(protocol::Resize{sid, ws->rows, ws->cols});
  }
  auto end = stream_session(**c, (*r)["session"].get<uint64_t>(), interactive || pty, pty,
                            sig_proxy, *keys);
  raw.reset();
  if (!end) return report(end.error());
  return end->status ? end->status->code() : 0;
}

// --tail N: the last N lines of each stream (0: none, then --follow's);
// absent: all of it.
int verb_logs(const Global& g, const protocol::SessionRef& sid, bool follow,
              std::optional<size_t> tail_lines) {
  auto c = dial(g);
  if (!c) return report(c.error());
  if (!tail_lines) {
    auto r = (*c)->call(protocol::Attach{sid, 0, 0, follow});
    if (!r) return report(r.error());
    auto end = stream_session(**c, (*r)["session"].get<uint64_t>(), false, false, false);
    if (!end) return report(end.error());
    return 0;
  }
  // --tail: collect what is buffered, print the last lines of each stream,
  // then follow from where the replay ended.
  auto r = (*c)->call(protocol::Attach{sid, 0, 0, false});
  if (!r) return report(r.error());
  std::string text[2];
  uint64_t ends[2] = {0, 0};
  for (bool done = false; !done;) {
    auto m = (*c)->next();
    if (!m) return report(m.error());
    if (m->data) {
      text[m->stream == protocol::StreamId::Stderr ? 1 : 0] += m->bytes;
      continue;
    }
    if (!m->control.contains("event")) continue;
    auto ev = protocol::parse_event(m->control);
    if (!ev) return report(ev.error());
    if (!*ev) continue;
    if (const auto* end = std::get_if<protocol::EndEvent>(&**ev)) {
      ends[0] = end->stdout_end;
      ends[1] = end->stderr_end;
      done = true;
    } else if (std::holds_alternative<protocol::ExitEvent>(**ev)) {
      done = true;
      follow = false;
    }
  }
  const size_t tail = *tail_lines;
  for (int i = 0; i < 2; ++i) {
    size_t at = text[i].size(), lines = 0;
    if (tail == 0) continue;
    if (!text[i].empty() && text[i].back() == '\n') --at;
    while (at > 0 && lines < tail)
      if (text[i][--at] == '\n') ++lines;
    if (lines == tail && at > 0) ++at;
    (void)write_all(i == 0 ? STDOUT_FILENO : STDERR_FILENO, std::string_view(text[i]).substr(at));
  }
  if (!follow) return 0;
  auto f = (*c)->call(protocol::Attach{sid, ends[0], ends[1]});
  if (!f) return report(f.error());
  auto end = stream_session(**c, (*f)["session"].get<uint64_t>(), false, false, false);
  if (!end) return report(end.error());
  return 0;
}

int verb_simple(const Global& g, json req) {
  auto c = dial(g);
  if (!c) return report(c.error());
  auto r = (*c)->call(std::move(req));
  if (!r) return report(r.error());
  if (g.json) print_json({{"ok", true}});
  return 0;
}

// `stats`: one line per sample, as `podman stats` shows them; CPU % over the
// last interval. Without --no-stream, a sample a second until the session
// has exited (or the caller stops us).
int verb_stats(const Global& g, const protocol::SessionRef& sid, bool no_stream) {
  auto c = dial(g);
  if (!c) return report(c.error());
  if (!g.json)
    std::printf("%-8s %-8s %-10s %-10s %-10s %-6s %-21s %s\n", "SESSION", "CPU %", "CPU TIME",
                "MEM", "MEM PEAK", "PIDS", "BLOCK I/O", "STATE");
  uint64_t last_cpu = 0;
  auto last_t = std::chrono::steady_clock::now();
  for (bool first = true;; first = false) {
    auto r = (*c)->call(protocol::Stats{sid});
    if (!r) return report(r.error());
    const json& st = (*r)["stats"];
    const auto now = std::chrono::steady_clock::now();
    const uint64_t cpu = st.value("cpu_time_us", uint64_t{0});
    if (g.json) {
      json line = *r;
      line.erase("id");
      line.erase("ok");
      std::printf("%s\n", line.dump(-1, ' ', false, json::error_handler_t::replace).c_str());
    } else {
      const double us = std::chrono::duration<double, std::micro>(now - last_t).count();
      std::string pct =
          first ? "--" : std::to_string(static_cast<int>(100.0 * (cpu - last_cpu) / us));
      std::printf("%-8llu %-8s %-10s %-10s %-10s %-6llu %-21s %s\n",
                  static_cast<unsigned long long>((*r)["session"].get<uint64_t>()), pct.c_str(),
                  (std::to_string(cpu / 1000) + "ms").c_str(),
                  human_bytes(st.value("memory", uint64_t{0})).c_str(),
                  human_bytes(st.value("memory_peak", uint64_t{0})).c_str(),
                  static_cast<unsigned long long>(st.value("pids", uint64_t{0})),
                  (human_bytes(st.value("io_read_bytes", uint64_t{0})) + " / " +
                   human_bytes(st.value("io_write_bytes", uint64_t{0})))
                      .c_str(),
                  (*r).value("state", "").c_str());
    }
    std::fflush(stdout);
    if (no_stream || (*r).value("state", "") == "exited") return 0;
    last_cpu = cpu;
    last_t = now;
    std::this_thread::sleep_for(std::chrono::seconds(1));
  }
}

// `top`: the session's processes, as `podman top` lists them.
int verb_top(const Global& g, const protocol::SessionRef& sid) {
  auto c = dial(g);
  if (!c) return report(c.error());
  auto r = (*c)->call(protocol::Top{sid});
  if (!r) return report(r.error());
  if (g.json) {
    print_json((*r)["processes"]);
    return 0;
  }
  std::printf("%-8s %-8s %-8s %-6s %-5s %-10s %s\n", "PID", "HOSTPID", "PPID", "UID", "STAT",
              "TIME", "COMMAND");
  for (auto& p : (*r)["processes"]) {
    std::string cmd;
    for (auto& a : p["argv"]) cmd += (cmd.empty() ? "" : " ") + a.get<std::string>();
    std::printf(
        "%-8llu %-8llu %-8llu %-6llu %-5s %-10s %s\n",
        static_cast<unsigned long long>(p.value("ns_pid", uint64_t{0})),
        static_cast<unsigned long long>(p.value("pid", uint64_t{0})),
        static_cast<unsigned long long>(p.value("ppid", uint64_t{0})),
        static_cast<unsigned long long>(p.value("uid", uint64_t{0})), p.value("state", "").c_str(),
        (std::to_string(p.value("cpu_time_us", uint64_t{0}) / 1000) + "ms").c_str(), cmd.c_str());
  }
  return 0;
}

protocol::SessionRef session_key(const std::string& ref);

// A `cp` argument: SESSION:PATH (the session part holds no '/'), else a
// local path ("-" for stdin or stdout).
struct CpArg {
  std::optional<std::string> session;
  std::string path;
};
CpArg cp_arg(const std::string& a) {
  const size_t colon = a.find(':');
  if (colon == std::string::npos || colon == 0 || a.substr(0, colon).find('/') != std::string::npos)
    return {std::nullopt, a};
  return {a.substr(0, colon), a.substr(colon + 1)};
}

// `cp`: a tar stream into or out of a session's sandbox (runtime/copy.h),
// as `podman cp`: SESSION:PATH DEST (DEST a directory, or "-" for the tar
// on stdout) or SRC SESSION:DIR (SRC a local path, or "-" for a tar on
// stdin). The stream goes through a pipe whose other end the service gets.
int verb_cp(const Global& g, const std::string& src_arg, const std::string& dst_arg) {
  const CpArg src = cp_arg(src_arg), dst = cp_arg(dst_arg);
  if (src.session.has_value() == dst.session.has_value())
    return report(
        invalid("cp copies between a session and here: one of SRC and DEST is "
                "SESSION:PATH, the other a local path or -"));
  const CpArg& remote = src.session ? src : dst;
  const std::string& local = src.session ? dst.path : src.path;
  const bool in = dst.session.has_value();
  if (remote.path.empty() || remote.path[0] != '/')
    return report(invalid("the path in the session must be absolute, got '" + remote.path + "'"));
  if (local.empty()) return report(invalid("an empty local path"));
  Fd into;  // where a copy out is extracted
  if (!in && local != "-") {
    into = Fd(::open(local.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!into) return report(sys_error("cp: " + local + " (an existing directory)"));
  }
  auto c = dial(g);
  if (!c) return report(c.error());
  auto pipe = make_pipe();
  if (!pipe) return report(pipe.error());
  const int theirs = in ? pipe->read.get() : pipe->write.get();
  auto id = (*c)->send(
      protocol::Cp{session_key(*remote.session),
                   in ? protocol::Cp::Direction::In : protocol::Cp::Direction::Out, remote.path},
      std::span<const int>(&theirs, 1));
  if (!id) return report(id.error());
  (in ? pipe->read : pipe->write).reset();
  Status moved;
  if (in) {
    Fd out = std::move(pipe->write);
    if (local == "-") {
      char buf[64 * 1024];
      for (;;) {
        ssize_t n = ::read(0, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) moved = fail(sys_error("read stdin"));
        if (n <= 0) break;
        if (moved = write_all(out.get(), std::string_view(buf, static_cast<size_t>(n))); !moved)
          break;
      }
    } else if (auto w = copy::write_local(local, out.get()); !w) {
      moved = fail(w.error());
    }
  } else if (local == "-") {
    char buf[64 * 1024];
    for (;;) {
      ssize_t n = ::read(pipe->read.get(), buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) moved = fail(sys_error("read the copy"));
      if (n <= 0) break;
      if (moved = write_all(1, std::string_view(buf, static_cast<size_t>(n))); !moved) break;
    }
  } else {
    if (auto r = copy::extract(pipe->read.get(), into.get()); !r) moved = fail(r.error());
  }
  // Our end goes first: the service's copy sees the end of the stream (or
  // that nobody reads it) and replies.
  pipe->read.reset();
  pipe->write.reset();
  auto r = (*c)->reply(*id);
  if (!r) return report(r.error());
  if (!moved) return report(moved.error().wrap("cp " + local));
  if (g.json) print_json(*r);
  return 0;
}

// `events`: the service's session events as JSON lines, until it goes away
// or we are stopped.
int verb_events(const Global& g) {
  auto c = dial(g);
  if (!c) return report(c.error());
  auto r = (*c)->call(protocol::Events{});
  if (!r) return report(r.error());
  for (;;) {
    auto m = (*c)->next();
    if (!m) return report(m.error());
    if (m->data) continue;
    auto ev = protocol::parse_event(m->control);
    if (!ev) return report(ev.error());
    if (!*ev || !(std::holds_alternative<protocol::SessionEvent>(**ev) ||
                  std::holds_alternative<protocol::ImageEvent>(**ev)))
      continue;
    print_json(m->control);
    std::fflush(stdout);
  }
}

// `inspect`: the service's JSON, as `podman inspect` prints its own.
int verb_inspect(const Global& g, const protocol::SessionRef& sid) {
  auto c = dial(g);
  if (!c) return report(c.error());
  auto r = (*c)->call(protocol::Inspect{sid});
  if (!r) return report(r.error());
  json out = *r;
  out.erase("id");
  out.erase("ok");
  std::printf("%s\n", out.dump(2, ' ', false, json::error_handler_t::replace).c_str());
  return 0;
}

int verb_wait(const Global& g, const protocol::SessionRef& sid) {
  auto c = dial(g);
  if (!c) return report(c.error());
  auto r = (*c)->call(protocol::Wait{sid});
  if (!r) return report(r.error());
  if (g.json) print_json((*r)["status"]);
  return status_from_json((*r)["status"]).code();
}

// A session as the user names it: digits are an id; anything else is a
// name, which the service resolves. (At most 19 digits: always a uint64_t;
// longer ones go as a string, which the service refuses as a name.)
protocol::SessionRef session_key(const std::string& ref) {
  const bool digits =
      !ref.empty() && ref.size() <= 19 &&
      std::all_of(ref.begin(), ref.end(), [](unsigned char ch) { return ch >= '0' && ch <= '9'; });
  return digits ? protocol::SessionRef(std::stoull(ref)) : protocol::SessionRef(ref);
}

// --- end service verbs ------------------------------------------------------

}  // namespace

int main(int argc, char** argv) {
  // Output goes to our own stdout/stderr; a closed reader must give EPIPE
  // (handled), not kill us before the payload's status is known.
  ::signal(SIGPIPE, SIG_IGN);
  // 0, 1 and 2 are always taken: else the service connection (or any fd we
  // open) would land there and be handed to a payload as its stdio.
  for (int fd = 0; fd < 3; ++fd)
    if (::fcntl(fd, F_GETFD) < 0) (void)::open("/dev/null", O_RDWR);

  CLI::App app{"cloister: run commands in isolation"};
  app.require_subcommand(1);
  // Before the verbs: a subcommand takes its parent's fallthrough when it
  // is made, so --socket and --json work after every verb.
  Global global;
  app.add_option("--socket", global.socket, "cloisterd's socket ($CLOISTER_SOCKET)")
      ->capture_default_str();
  app.add_flag("--json", global.json, "machine-readable output");
  app.fallthrough();
  // A function: the features are probed only when asked for.
  app.set_version_flag("--version", std::function<std::string()>([] {
                         return std::string("cloister ") + CLOISTER_VERSION + " (commit " +
                                CLOISTER_COMMIT + "; " + features_line() + ")";
                       }));

  ExecOptions exec;
  auto* sub = app.add_subcommand(
      "exec",
      "run a command in a new sandbox in this process: exec [OPTIONS] IMAGE|--host|-x EXECUTOR "
      "[COMMAND [ARG...]]");
  auto* exec_config = sub->add_option("--config,-c", exec.config, "config file");
  exec_config->capture_default_str();
  auto* exec_executor = sub->add_option("--executor,-x", exec.executor, "executor name");
  auto* exec_session = sub->add_option(
      "--session,-s", exec.session,
      "run in this running session's sandbox instead (id or name), through cloisterd; "
      "needs session.exec on others' sessions");
  exec_session->excludes(exec_executor);
  sub->add_flag("-t,--tty", exec.tty, "give the command a terminal (with --session)");
  sub->add_flag("-d,--detach", exec.detach,
                "start in the background, print the new session's id (with --session)");
  sub->add_option("--name", exec.name, "name the new session (with --session)");
  sub->add_option("-e,--env", exec.env, "environment variable KEY=VALUE (repeatable)");
  sub->add_option("-w,--workdir", exec.work_dir, "working directory inside the sandbox");
  sub->add_flag("-i,--interactive", exec.interactive, "forward stdin to the command");
  sub->add_option("--timeout", exec.timeout, "kill the command after SECONDS")
      ->check(CLI::NonNegativeNumber);
  sub->add_option(
      "--command", exec.command,
      "a command string instead of argv: split without a shell, or run by /bin/sh -c in a "
      "shell executor");
  sub->add_option("--state-dir", exec.state_dir, "image store (container executors)");
  // The sandbox, as podman's flags say it (runtime/adhoc.h): new, of an
  // image or of --host, or -x EXECUTOR with its fields overridden.
  AdhocFlags& sb = exec.sandbox;
  sub->add_flag("--host", sb.host, "the host's view (a host executor) instead of an image");
  bool rm = true;
  sub->add_flag("--rm", rm,
                "remove the sandbox at its end (always so; accepted for podman's sake)");
  sub->add_option("--env-file", exec.env_files, "read KEY=VALUE lines from a file (repeatable)");
  sub->add_option("-m,--memory", sb.memory, "memory limit (512m, 2g)");
  sub->add_option("--memory-swap", sb.memory_swap, "as -m: no swap beyond the memory limit");
  sub->add_option("--cpus", sb.cpus, "CPUs (1.5)");
  sub->add_option("--cpu-quota", sb.cpu_quota, "CPU microseconds per 100000");
  sub->add_option("--pids-limit", sb.pids_limit, "processes and threads (-1: none)");
  sub->add_option("--network", sb.network, "none or host");
  sub->add_option("--hostname", sb.hostname, "the sandbox's hostname");
  sub->add_option("-u,--user", sb.user, "uid[:gid] or name[:group] inside");
  sub->add_option("--cap-add", sb.cap_add, "add a capability (repeatable, or A,B)");
  sub->add_option("--cap-drop", sb.cap_drop, "drop a capability, or ALL");
  sub->add_option("-v,--volume", sb.volumes, "bind HOST:SANDBOX[:ro|rw][,idmap] (repeatable)");
  sub->add_option("--tmpfs", sb.tmpfs, "a tmpfs at PATH[:OPTIONS] (repeatable)");
  sub->add_option("--ulimit", sb.ulimits, "NAME=SOFT[:HARD] (repeatable)");
  sub->add_option("--security-opt", sb.security_opts,
                  "no-new-privileges[=BOOL] or seccomp=PROFILE (repeatable)");
  sub->add_flag("--read-only", sb.read_only, "a read-only root");
  sub->add_option("--entrypoint", sb.entrypoint,
                  "run this program in place of the image's entrypoint (and without its Cmd); "
                  "\"\" for none");

  // Image verbs (oci/).
  std::string state_dir, load_path, load_name;
  std::vector<std::string> rmi_refs;
  auto* load = app.add_subcommand(
      "load",
      "import images: an OCI layout directory, an OCI archive or a docker-archive "
      "(docker/podman save; gzip or not), or - for one on stdin");
  auto* load_pos = load->add_option("path", load_path, "layout directory, archive, or -");
  load->add_option("-i,--input", load_path, "the same, as docker load -i")->excludes(load_pos);
  load->add_option("--name,-n", load_name, "reference to store the image under");
  auto* images = app.add_subcommand("images", "list the images in the store and its disk use");
  auto* rmi = app.add_subcommand("rmi", "remove image records (prune frees their layers)");
  rmi->add_option("reference", rmi_refs, "image reference")->required();
  auto* prune = app.add_subcommand("prune", "remove blobs and layers no image uses");
  std::string pull_ref;
  oci::RegistryOptions ropt;
  auto* pull = app.add_subcommand("pull", "pull an image from a registry into the store");
  pull->add_option("reference", pull_ref, "image reference")->required();
  pull->add_option("--insecure", ropt.insecure, "registry host[:port] reachable over plain HTTP");
  pull->add_option("--auth-file", ropt.auth_file, "credentials file (auth.json format)");
  std::string pull_progress;
  bool pull_quiet = false;
  pull->add_option("--progress", pull_progress,
                   "tty (bars; the default on a terminal), json (lines on stderr) or none")
      ->check(CLI::IsMember({"tty", "json", "none"}));
  pull->add_flag("-q,--quiet", pull_quiet, "no progress; print the manifest's digest only");
  std::vector<std::string> mirrors;
  pull->add_option("--mirror", mirrors, "REGISTRY=HOST[:PORT]: try HOST before REGISTRY");
  auto* info = app.add_subcommand("info",
                                  "what this host and build offer: versions, kernel, "
                                  "cgroups, userns, overlay, seccomp, pidfd, the store");
  for (auto* c : {load, images, rmi, prune, pull, info})
    c->add_option("--state-dir", state_dir, "image store")->default_str(oci::kDefaultStateDir);

  // Service verbs.
  RunOptions run;
  auto* run_cmd = app.add_subcommand("run", "run a command through cloisterd");
  run_cmd->add_flag("-d,--detach", run.detach, "start in the background, print the session id");
  run_cmd->add_flag("-i,--interactive", run.interactive, "forward stdin to the command");
  run_cmd->add_flag("-t,--tty", run.tty, "give the command a terminal");
  run_cmd->add_option("-e,--env", run.env, "environment variable KEY=VALUE (repeatable)");
  run_cmd->add_option("-w,--workdir", run.work_dir, "working directory inside the sandbox");
  run_cmd->add_option("--timeout", run.timeout, "kill the command after SECONDS")
      ->check(CLI::NonNegativeNumber);
  run_cmd->add_option("--name", run.name, "name the session; usable wherever a session id is");
  run_cmd->add_option("--log-file", run.log_file,
                      "also write the output to this file (in log_dir)");
  app.add_subcommand("ps", "list sessions");
  app.add_subcommand("executors", "list the service's executors");
  std::string sref;  // a session id or name
  bool follow = false, interactive = false, force = false;
  std::optional<size_t> tail;
  std::string sig = "TERM";
  auto* attach_cmd =
      app.add_subcommand("attach", "show a session's output from the start, then live");
  attach_cmd->add_option("session", sref, "session id or name")->required();
  attach_cmd->add_flag("-i,--interactive", interactive, "forward stdin (closed at our EOF)");
  std::string detach_keys = "ctrl-p,ctrl-q";
  bool sig_proxy = true;
  attach_cmd
      ->add_option("--detach-keys", detach_keys,
                   "keys that detach, leaving the session running (\"\" for none)")
      ->capture_default_str();
  attach_cmd
      ->add_option("--sig-proxy", sig_proxy,
                   "forward INT, TERM, HUP, QUIT, USR1, USR2 to the session; false: "
                   "they end the attach instead")
      ->capture_default_str();
  auto* logs_cmd = app.add_subcommand("logs", "print a session's buffered output");
  logs_cmd->add_option("session", sref, "session id or name")->required();
  logs_cmd->add_flag("-f,--follow", follow, "then follow it live");
  logs_cmd->add_option("--tail", tail, "only the last N lines of each stream");
  auto* kill_cmd = app.add_subcommand("kill", "send a signal to a session (TERM by default)");
  kill_cmd->add_option("session", sref, "session id or name")->required();
  kill_cmd->add_option("-s,--signal", sig, "signal name or number")->capture_default_str();
  auto* wait_cmd = app.add_subcommand("wait", "wait for a session; exit with its code");
  wait_cmd->add_option("session", sref, "session id or name")->required();
  bool no_stream = false;
  auto* stats_cmd =
      app.add_subcommand("stats", "a session's CPU, memory, pids and I/O, every second");
  stats_cmd->add_option("session", sref, "session id or name")->required();
  stats_cmd->add_flag("--no-stream", no_stream, "one sample, then exit");
  auto* top_cmd = app.add_subcommand("top", "list a session's processes");
  top_cmd->add_option("session", sref, "session id or name")->required();
  app.add_subcommand("events",
                     "session events (created, started, oom, exited, removed) and, to root "
                     "and callers granted image.events, image events (pulled, loaded, removed)");
  auto* inspect_cmd =
      app.add_subcommand("inspect", "a session as JSON: spec, state, exit status, usage");
  inspect_cmd->add_option("session", sref, "session id or name")->required();
  std::string cp_src, cp_dst;
  auto* cp_cmd = app.add_subcommand(
      "cp", "copy files into or out of a session's sandbox: SESSION:PATH DEST or SRC SESSION:DIR");
  cp_cmd->add_option("src", cp_src, "SESSION:PATH, a local path, or - (a tar on stdin)")
      ->required();
  cp_cmd->add_option("dest", cp_dst, "SESSION:DIR, a local directory, or - (a tar on stdout)")
      ->required();
  auto* rm_cmd = app.add_subcommand("rm", "remove a finished session");
  rm_cmd->add_option("session", sref, "session id or name")->required();
  rm_cmd->add_flag("-f,--force", force, "kill it first if it still runs");

  // `exec [OPTIONS] [IMAGE] [COMMAND [ARG...]]`: the command needs no `--`
  // (docker's grammar): CLI11 gets the options, the rest is ours.
  std::vector<std::string> args(argv, argv + argc);
  size_t verb = 1;
  while (verb < args.size() && (args[verb] == "--json" || args[verb].starts_with("--socket=") ||
                                (args[verb] == "--socket" && ++verb)))
    ++verb;
  for (size_t i = 1; i < verb; ++i) g_json_errors |= args[i] == "--json";
  if (verb < args.size() && !args[verb].starts_with("-")) {
    std::vector<std::string> names;
    for (const CLI::App* c : app.get_subcommands({})) names.push_back(c->get_name());
    if (std::find(names.begin(), names.end(), args[verb]) == names.end()) {
      const std::vector<std::string_view> known(names.begin(), names.end());
      const std::string near = near_miss(args[verb], known);
      return report(invalid("unknown verb '" + args[verb] + "'" +
                            (near.empty() ? std::string("; cloister --help lists them")
                                          : " (did you mean " + near + "?)")));
    }
  }
  // exec and run: `VERB [OPTIONS] IMAGE|EXECUTOR [COMMAND [ARG...]]`.
  std::vector<std::string> exec_words;
  CLI::App* words_verb = nullptr;
  if (verb < args.size() && (args[verb] == "exec" || args[verb] == "run"))
    words_verb = args[verb] == "exec" ? sub : run_cmd;
  if (words_verb) {
    const std::vector<std::string> rest(args.begin() + static_cast<long>(verb) + 1, args.end());
    auto split = split_command_line(rest, [&](std::string_view name) {
      for (const CLI::Option* o : words_verb->get_options())
        if (o->check_name(std::string(name))) return o->get_expected_min() > 0;
      // --socket and --json fall through to the top.
      return name == "--socket";
    });
    exec_words.assign(rest.begin() + static_cast<long>(split.command_begin), rest.end());
    args.resize(verb + 1 + split.options_end);
  }
  // (exec's and run's commands are cut off by now: a --json of theirs is not ours)
  for (size_t i = 1; i < args.size() && args[i] != "--"; ++i)
    if (args[i] == "--json") g_json_errors = true;
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  try {
    app.parse(static_cast<int>(cargs.size()), cargs.data());
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    return report(invalid(e.what()));
  }
  const protocol::SessionRef sid = session_key(sref);
  exec.config_given = exec_config->count() > 0;
  // With -x, --host or --session every word is the command; else the
  // first is the image.
  // Words that look like options before a later `--` are options given in
  // the wrong place (`run shell -d -- cmd`), not the command's.
  auto misplaced = [](const std::vector<std::string>& w, size_t from) -> std::string {
    if (from >= w.size() || !w[from].starts_with("-") || w[from] == "--") return "";
    return std::find(w.begin() + static_cast<long>(from), w.end(), "--") != w.end() ? w[from] : "";
  };
  if (sub->parsed()) {
    if ((exec_executor->count() && exec.executor.empty()) ||
        (exec_session->count() && exec.session.empty()))
      return report(invalid(exec_executor->count() && exec.executor.empty()
                                ? "-x/--executor needs a name"
                                : "--session needs a session id or name"));
    const bool image_first =
        !exec_executor->count() && !exec_session->count() && !exec.sandbox.host;
    if (image_first && !exec_words.empty() && exec_words.front().empty())
      return report(invalid("the image is an empty word"));
    if (const std::string w = image_first ? misplaced(exec_words, 1) : ""; !w.empty())
      return report(invalid("'" + w +
                            "' comes after the image and before --: options go before the image "
                            "(exec [OPTIONS] IMAGE [COMMAND...])"));
    if (image_first && !exec_words.empty()) {
      exec.sandbox.image = exec_words.front();
      exec_words.erase(exec_words.begin());
      // `IMAGE -- COMMAND`: the `--` as where the command begins.
      if (!exec_words.empty() && exec_words.front() == "--") exec_words.erase(exec_words.begin());
    }
    exec.argv = std::move(exec_words);
    if (!exec.command.empty() && !exec.argv.empty())
      return report(invalid("give the command as words or as --command, not both"));
  }
  if (sub->parsed() && !exec.session.empty()) {
    if (exec.sandbox.any() || !exec.env_files.empty())
      return report(invalid(
          "--session runs in that session's sandbox: the sandbox flags (-m, -v, --host, ...) "
          "are for a new one"));
    if (exec.command.size() || exec.state_dir.size())
      return report(
          invalid("--command and --state-dir are for the in-process exec, not --session"));
    if (exec.argv.empty()) return report(invalid("give the command after --"));
    RunOptions r;
    r.detach = exec.detach;
    r.interactive = exec.interactive;
    r.tty = exec.tty;
    r.env = exec.env;
    r.work_dir = exec.work_dir;
    r.name = exec.name;
    r.timeout = exec.timeout;
    r.argv = exec.argv;
    r.into = session_key(exec.session);
    return run_service(global, r);
  }
  if (sub->parsed()) {
    if (exec.executor.empty() && exec.sandbox.image.empty() && !exec.sandbox.host)
      return report(
          invalid("give an image, --host (the host's view), -x EXECUTOR (of the config) or "
                  "--session (into a running session, through cloisterd)"));
    if (exec.tty || exec.detach || !exec.name.empty())
      return report(
          invalid("-t, -d and --name need --session (the in-process exec runs "
                  "attached, on pipes)"));
    return run_exec(exec);
  }
  if (load->parsed()) {
    if (load_path.empty()) return report(invalid("give the layout or archive to load (or -)"));
    return run_load(state_dir, load_path, load_name, global.json);
  }
  if (images->parsed()) return run_images(state_dir, global.json);
  if (info->parsed()) return run_info(state_dir, global.json);
  if (rmi->parsed()) return run_rmi(state_dir, rmi_refs, global.json);
  if (prune->parsed()) return run_prune(state_dir, global.json);
  if (pull->parsed()) {
    for (const auto& m : mirrors) {
      auto eq = m.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == m.size())
        return report(invalid("--mirror expects REGISTRY=HOST, got '" + m + "'"));
      ropt.mirrors[m.substr(0, eq)].push_back(m.substr(eq + 1));
    }
    return run_pull(state_dir, pull_ref, ropt, pull_progress, pull_quiet, global.json);
  }
  if (run_cmd->parsed()) {
    if (exec_words.empty()) return report(invalid("give the executor, then the command"));
    if (const std::string w = misplaced(exec_words, 1); !w.empty())
      return report(invalid("'" + w +
                            "' comes after the executor and before --: options go "
                            "before the executor (run [OPTIONS] EXECUTOR COMMAND...)"));
    run.executor = exec_words.front();
    auto from = exec_words.begin() + 1;
    if (from != exec_words.end() && *from == "--") ++from;  // EXECUTOR -- COMMAND
    run.argv.assign(from, exec_words.end());
    if (run.argv.empty()) return report(invalid("give the command after the executor"));
    return run_service(global, run);
  }
  if (app.got_subcommand("ps")) return verb_ps(global);
  if (app.got_subcommand("executors")) return verb_executors(global);
  if (attach_cmd->parsed()) return verb_attach(global, sid, interactive, detach_keys, sig_proxy);
  if (logs_cmd->parsed()) return verb_logs(global, sid, follow, tail);
  if (kill_cmd->parsed()) {
    auto n = signals::parse(sig);
    if (!n) return report(n.error());
    return verb_simple(global, protocol::to_json(protocol::Signal{sid, *n}));
  }
  if (wait_cmd->parsed()) return verb_wait(global, sid);
  if (stats_cmd->parsed()) return verb_stats(global, sid, no_stream);
  if (top_cmd->parsed()) return verb_top(global, sid);
  if (inspect_cmd->parsed()) return verb_inspect(global, sid);
  if (app.got_subcommand("events")) return verb_events(global);
  if (cp_cmd->parsed()) return verb_cp(global, cp_src, cp_dst);
  if (rm_cmd->parsed()) return verb_simple(global, protocol::to_json(protocol::Remove{sid, force}));
  return 125;
}

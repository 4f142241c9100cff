// cloister-oci: the runc command line over runtime/oci_runtime.h, for
// containerd's runc shim, podman's conmon and the OCI runtime-tools suite.
// docs/oci-runtime.md is its manual. Errors go to stderr and, with --log,
// to that file (as JSON lines with --log-format json, whose "msg" containerd
// shows); the exit code is 1 on any error, as runc's.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "isolate/signals.h"
#include "oci/bundle.h"
#include "runtime/oci_runtime.h"

using namespace cloister;
using json = nlohmann::json;

namespace {

struct Log {
  std::string file;
  bool json_format = false;
  bool debug = false;

  void write(const char* level, const std::string& msg) const {
    if (file.empty()) return;
    FILE* f = std::fopen(file.c_str(), "ae");
    if (!f) return;
    timespec ts{};
    ::clock_gettime(CLOCK_REALTIME, &ts);
    tm t{};
    ::gmtime_r(&ts.tv_sec, &t);
    char when[40];
    std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &t);
    std::string line = json_format ? json{{"level", level}, {"msg", msg}, {"time", when}}.dump()
                                   : std::string(when) + " " + level + " " + msg;
    std::fprintf(f, "%s\n", line.c_str());
    std::fclose(f);
  }
  void error(const std::string& msg) const {
    write("error", msg);
    std::fprintf(stderr, "cloister-oci: %s\n", msg.c_str());
  }
  void warn(const std::string& msg) const {
    write("warning", msg);
    if (debug || file.empty()) std::fprintf(stderr, "cloister-oci: warning: %s\n", msg.c_str());
  }
};

int report(const Log& log, const Error& e) {
  log.error(e.what());
  return 1;
}

bool systemd_is_pid1() {
  char buf[64] = {};
  ssize_t n = ::readlink("/proc/1/exe", buf, sizeof buf - 1);
  return n > 0 && std::string(buf).ends_with("/systemd");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"cloister-oci: an OCI runtime (the runc command line) on cloister's isolation"};
  app.set_version_flag("-v,--version",
                       std::string("cloister-oci version 0.1.0\nspec: ") + oci::kOciVersion);
  app.require_subcommand(1);
  ociruntime::Globals g;
  Log log;
  std::string log_format = "text";
  bool systemd_cgroup = false;
  app.add_option("--root", g.root, "state directory (default /run/cloister-oci)");
  app.add_option("--log", log.file, "log file (errors and warnings)");
  app.add_option("--log-format", log_format, "text or json")
      ->check(CLI::IsMember({"text", "json"}));
  app.add_flag("--systemd-cgroup", systemd_cgroup, "use systemd's cgroup manager (not supported)");
  app.add_flag("--debug", log.debug, "print warnings on stderr too");
  // Accepted for runc compatibility; they change nothing here.
  std::string criu;
  bool rootless_flag = false;
  app.add_option("--criu", criu, "ignored (checkpoint is not supported)");
  app.add_flag("--rootless", rootless_flag, "ignored");

  ociruntime::CreateOptions co;
  bool ignored = false;
  auto add_create_flags = [&](CLI::App* c) {
    c->add_option("-b,--bundle", co.bundle, "bundle directory (default: the current one)");
    c->add_option("--pid-file", co.pid_file, "write the init's pid here");
    c->add_option("--console-socket", co.console_socket,
                  "unix socket to send the pty master to (process.terminal)");
    c->add_option("--preserve-fds", co.preserve_fds, "extra fds to pass (not supported)");
    c->add_flag("--no-pivot", ignored, "accepted: cloister always pivots into a fresh root");
    c->add_flag("--no-new-keyring", ignored, "accepted: no session keyring is made");
    c->add_option("id", co.id, "container ID")->required();
  };
  auto* create = app.add_subcommand("create", "create a container, its process waiting for start");
  add_create_flags(create);
  bool run_detach = false, run_keep = false;
  auto* run = app.add_subcommand("run", "create and start a container, and wait for its exit");
  add_create_flags(run);
  run->add_flag("-d,--detach", run_detach, "do not wait for the exit");
  run->add_flag("--keep", run_keep, "accepted");

  std::string id;
  auto* start = app.add_subcommand("start", "run the created container's process");
  start->add_option("id", id)->required();
  auto* state = app.add_subcommand("state", "print the container's state as JSON");
  state->add_option("id", id)->required();
  std::string signal = "SIGTERM";
  bool all = false;
  auto* kill =
      app.add_subcommand("kill", "send a signal to the container's init (or all processes)");
  kill->add_flag("-a,--all", all, "signal every process of the container");
  kill->add_option("id", id)->required();
  kill->add_option("signal", signal, "number or name (15, TERM, SIGTERM)");
  bool force = false;
  auto* del = app.add_subcommand("delete", "delete a stopped (or, with --force, any) container");
  del->add_flag("-f,--force", force, "kill it first");
  del->add_option("id", id)->required();
  std::string format = "table";
  auto* ps = app.add_subcommand("ps", "list the container's processes");
  ps->add_option("-f,--format", format)->check(CLI::IsMember({"table", "json"}));
  ps->add_option("id", id)->required();
  auto* pause = app.add_subcommand("pause", "freeze every process of the container");
  pause->add_option("id", id)->required();
  auto* resume = app.add_subcommand("resume", "thaw a paused container");
  resume->add_option("id", id)->required();
  bool quiet = false;
  auto* list = app.add_subcommand("list", "list containers");
  list->alias("ls");
  list->add_option("-f,--format", format)->check(CLI::IsMember({"table", "json"}));
  list->add_flag("-q,--quiet", quiet, "IDs only");
  bool stats = false;
  int interval = 5;
  auto* events = app.add_subcommand("events", "print the container's statistics");
  events->add_flag("--stats", stats, "once, and exit");
  events->add_option("--interval", interval, "seconds between statistics")
      ->check(CLI::PositiveNumber);
  events->add_option("id", id)->required();
  std::string resources_file;
  int64_t memory = -1, cpu_quota = -1, cpu_period = -1, pids_limit = -1, cpu_share = -1;
  std::string cpuset_cpus, cpuset_mems;
  auto* update = app.add_subcommand("update", "change the container's resource limits");
  update->add_option("-r,--resources", resources_file,
                     "a runtime-spec linux.resources JSON (- for stdin)");
  update->add_option("-m,--memory", memory, "memory limit in bytes");
  update->add_option("--cpu-quota", cpu_quota, "CPU quota in microseconds per period");
  update->add_option("--cpu-period", cpu_period, "CPU period in microseconds");
  update->add_option("--pids-limit", pids_limit, "maximum number of processes");
  update->add_option("--cpu-share", cpu_share, "CPU shares (relative weight, v1 units)");
  update->add_option("--cpuset-cpus", cpuset_cpus, "CPUs the container may use (0-3,6)");
  update->add_option("--cpuset-mems", cpuset_mems, "memory nodes the container may use");
  update->add_option("id", id)->required();
  auto* features = app.add_subcommand("features", "print the runtime's features as JSON");
  std::string spec_bundle = ".";
  auto* spec = app.add_subcommand("spec", "write a default config.json");
  spec->add_option("-b,--bundle", spec_bundle);
  spec->add_flag("--rootless", ignored, "accepted");
  ociruntime::ExecOptions eo;
  std::string process_file, exec_cwd, exec_user;
  std::vector<std::string> exec_env;
  bool exec_tty = false;
  auto* exec = app.add_subcommand("exec", "run a further process in a running container");
  exec->add_option("-p,--process", process_file, "a runtime-spec process JSON (- for stdin)");
  exec->add_option("--console-socket", eo.console_socket, "for --tty (or process.terminal)");
  exec->add_flag("-t,--tty", exec_tty, "a pty for the process");
  exec->add_flag("-d,--detach", eo.detach, "do not wait for the process");
  exec->add_option("--pid-file", eo.pid_file, "write the process's pid here");
  exec->add_option("--cwd", exec_cwd, "work dir (argv form)");
  exec->add_option("-e,--env", exec_env, "KEY=VALUE (argv form; repeatable)");
  exec->add_option("-u,--user", exec_user, "UID[:GID] (argv form)");
  // ID, then the command of the argv form: everything after the ID.
  exec->prefix_command();
  auto* checkpoint = app.add_subcommand("checkpoint", "not supported");
  checkpoint->allow_extras();
  auto* restore = app.add_subcommand("restore", "not supported");
  restore->allow_extras();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int rc = app.exit(e);
    return rc == 0 ? 0 : 1;
  }
  log.json_format = log_format == "json";
  g.warn = [&](const std::string& m) { log.warn(m); };
  if (systemd_cgroup)
    return report(log, invalid(systemd_is_pid1()
                                   ? "--systemd-cgroup: cloister-oci manages cgroupfs paths only"
                                   : "--systemd-cgroup: systemd is not PID 1 on this host"));

  auto status = [&](Status s) { return s ? 0 : report(log, s.error()); };
  if (*create) return status(ociruntime::create(g, co));
  if (*run) {
    auto rc = ociruntime::run(g, co, run_detach);
    return rc ? *rc : report(log, rc.error());
  }
  if (*start) return status(ociruntime::start(g, id));
  if (*state) {
    auto s = ociruntime::state(g, id);
    if (!s) return report(log, s.error());
    std::fputs(s->state_json().c_str(), stdout);
    return 0;
  }
  if (*kill) {
    auto sig = signals::parse(signal);
    if (!sig) return report(log, sig.error());
    return status(ociruntime::kill(g, id, *sig, all));
  }
  if (*del) return status(ociruntime::remove(g, id, force));
  if (*ps) {
    auto p = ociruntime::pids(g, id);
    if (!p) return report(log, p.error());
    if (format == "json") {
      std::printf("%s\n", json(*p).dump().c_str());
      return 0;
    }
    std::printf("%-8s %s\n", "PID", "CMD");
    for (pid_t pid : *p) {
      std::ifstream f("/proc/" + std::to_string(pid) + "/cmdline");
      std::string cmd((std::istreambuf_iterator<char>(f)), {});
      for (char& c : cmd)
        if (c == '\0') c = ' ';
      std::printf("%-8d %s\n", pid, cmd.c_str());
    }
    return 0;
  }
  if (*pause) return status(ociruntime::pause(g, id, true));
  if (*resume) return status(ociruntime::pause(g, id, false));
  if (*list) {
    auto l = ociruntime::list(g);
    if (!l) return report(log, l.error());
    if (quiet) {
      for (const auto& s : *l) std::printf("%s\n", s.id.c_str());
    } else if (format == "json") {
      json arr = json::array();
      for (const auto& s : *l) arr.push_back(json::parse(s.state_json()));
      std::printf("%s\n", arr.dump().c_str());
    } else {
      std::printf("%-20s %-8s %-10s %-40s %s\n", "ID", "PID", "STATUS", "BUNDLE", "CREATED");
      for (const auto& s : *l)
        std::printf("%-20s %-8d %-10s %-40s %s\n", s.id.c_str(),
                    s.status == ociruntime::Status::Stopped ? 0 : s.pid,
                    std::string(ociruntime::status_name(s.status)).c_str(), s.bundle.c_str(),
                    s.created.c_str());
    }
    return 0;
  }
  if (*events) {
    for (;;) {
      auto st = ociruntime::stats_json(g, id);
      if (!st) return report(log, st.error());
      std::printf("%s\n", st->c_str());
      std::fflush(stdout);
      if (stats) return 0;
      std::this_thread::sleep_for(std::chrono::seconds(interval));
      auto s = ociruntime::state(g, id);
      if (!s || s->status == ociruntime::Status::Stopped) return 0;
    }
  }
  if (*update) {
    cgroups::Limits l;
    if (!resources_file.empty()) {
      std::string text;
      if (resources_file == "-") {
        text.assign(std::istreambuf_iterator<char>(std::cin), {});
      } else {
        std::ifstream f(resources_file);
        if (!f) return report(log, invalid("--resources: cannot read " + resources_file));
        text.assign(std::istreambuf_iterator<char>(f), {});
      }
      // The same lowering as create's linux.resources.
      auto r = json::parse(text, nullptr, false);
      if (r.is_discarded() || !r.is_object())
        return report(log, invalid("--resources: not a JSON object"));
      auto lowered = oci::lower_resources(r.dump());
      if (!lowered) return report(log, lowered.error());
      l = *lowered;
    }
    if (memory > 0) l.memory_max = static_cast<uint64_t>(memory);
    if (cpu_quota > 0) l.cpu_quota = static_cast<uint64_t>(cpu_quota);
    if (cpu_period > 0) l.cpu_period = static_cast<uint64_t>(cpu_period);
    if (pids_limit > 0) l.pids_max = static_cast<uint64_t>(pids_limit);
    if (cpu_share > 0) l.cpu_shares = static_cast<uint64_t>(cpu_share);
    if (!cpuset_cpus.empty()) l.cpuset_cpus = cpuset_cpus;
    if (!cpuset_mems.empty()) l.cpuset_mems = cpuset_mems;
    if (l.cpu_period != 100000 && !l.cpu_quota)
      return report(log, invalid("--cpu-period needs --cpu-quota"));
    return status(ociruntime::update(g, id, l));
  }
  if (*features) {
    std::fputs(oci::features_json().c_str(), stdout);
    return 0;
  }
  if (*spec) {
    const std::string path = spec_bundle + "/config.json";
    if (::access(path.c_str(), F_OK) == 0)
      return report(log, invalid("File " + path + " exists. Remove it first"));
    std::ofstream f(path);
    f << oci::default_config_json();
    if (!f) return report(log, invalid("cannot write " + path));
    return 0;
  }
  if (*exec) {
    auto rest = exec->remaining();
    if (rest.empty()) return report(log, invalid("exec: a container ID is needed"));
    const std::string eid = rest.front();
    rest.erase(rest.begin());
    if (!rest.empty() && rest.front() == "--") rest.erase(rest.begin());
    if (!process_file.empty()) {
      if (!rest.empty())
        return report(log, invalid("exec: --process and a command exclude each other"));
      std::string text;
      if (process_file == "-") {
        text.assign(std::istreambuf_iterator<char>(std::cin), {});
      } else {
        std::ifstream f(process_file);
        if (!f) return report(log, invalid("exec: cannot read --process " + process_file));
        text.assign(std::istreambuf_iterator<char>(f), {});
      }
      eo.process_json = text;
    } else {
      // The argv form: the container's process, with these changes.
      if (rest.empty()) return report(log, invalid("exec: no command (or --process) given"));
      auto tpl = ociruntime::process_template(g, eid);
      if (!tpl) return report(log, tpl.error());
      json p = json::parse(*tpl);
      p["args"] = rest;
      p["terminal"] = exec_tty;
      if (!exec_cwd.empty()) p["cwd"] = exec_cwd;
      for (const auto& e : exec_env) p["env"].push_back(e);
      if (!exec_user.empty()) {
        auto colon = exec_user.find(':');
        try {
          p["user"]["uid"] = std::stoul(exec_user.substr(0, colon));
          if (colon != std::string::npos)
            p["user"]["gid"] = std::stoul(exec_user.substr(colon + 1));
        } catch (const std::exception&) {
          return report(log, invalid("exec: --user '" + exec_user + "' is not UID[:GID]"));
        }
      }
      eo.process_json = p.dump();
    }
    if (exec_tty && !process_file.empty()) {
      json p = json::parse(eo.process_json, nullptr, false);
      if (p.is_object()) {
        p["terminal"] = true;
        eo.process_json = p.dump();
      }
    }
    auto rc = ociruntime::exec(g, eid, eo);
    return rc ? *rc : report(log, rc.error());
  }
  if (*checkpoint || *restore)
    return report(log, invalid(std::string(*checkpoint ? "checkpoint" : "restore") +
                               ": not supported by cloister-oci (no CRIU integration)"));
  return 1;
}

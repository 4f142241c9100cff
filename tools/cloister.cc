// cloister: the command-line client. Each verb is a thin layer over
// libcloister; `exec` runs a command in-process through the library.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "oci/load.h"
#include "oci/reference.h"
#include "oci/registry.h"
#include "oci/store.h"
#include "runtime/config.h"
#include "runtime/executor.h"
#include "runtime/pump.h"

using namespace cloister;

namespace {

constexpr const char* kDefaultConfig = "/etc/cloister/cloister.yaml";

int report(const Error& e) {
  std::fprintf(stderr, "cloister: %s: %s\n", std::string(kind_name(e.kind)).c_str(),
               e.what().c_str());
  return exit_code_for(e);
}

struct ExecOptions {
  std::string config = kDefaultConfig;
  std::string executor;
  std::vector<std::string> env;
  std::string work_dir;
  std::string state_dir;  // overrides the config's images.state_dir
  bool interactive = false;
  double timeout = 0;
  std::vector<std::string> argv;
  std::string command;  // a command string instead of argv (policy/command.h)
};

int run_exec(const ExecOptions& o) {
  auto config = load_config(o.config);
  if (!config) return report(config.error());
  const ExecutorConfig* ec = config->find(o.executor);
  if (!ec)
    return report(
        make_error(ErrorKind::NotFound, "no executor named '" + o.executor + "' in " + o.config));
  ExecutorConfig chosen = *ec;
  if (!o.state_dir.empty()) chosen.state_dir = o.state_dir;
  auto executor = Executor::create(chosen);
  if (!executor) return report(executor.error());

  ExecRequest req;
  req.argv = o.argv;
  req.command = o.command;
  req.work_dir = o.work_dir;
  req.stdin_open = o.interactive;
  req.timeout = std::chrono::milliseconds(static_cast<int64_t>(o.timeout * 1000));
  for (const auto& kv : o.env) {
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
  return oci::Store::open(state_dir.empty() ? oci::kDefaultStateDir : state_dir);
}

int run_load(const std::string& state_dir, const std::string& path, const std::string& name) {
  auto store = open_store(state_dir);
  if (!store) return report(store.error());
  oci::ImportOptions opt;
  opt.layer_done = [](size_t i, const oci::Descriptor& d, bool cached) {
    std::fprintf(stderr, "layer %zu %s: %s\n", i, d.digest.str().substr(0, 19).c_str(),
                 cached ? "already present" : "applied");
  };
  auto images = oci::load_images(*store, path, name, opt);
  if (!images) return report(images.error());
  for (const auto& r : *images)
    std::printf("loaded %s (%s)\n", r.reference.c_str(), r.manifest.str().c_str());
  return 0;
}

int run_images(const std::string& state_dir) {
  auto store = open_store(state_dir);
  if (!store) return report(store.error());
  auto images = store->list_images();
  if (!images) return report(images.error());
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

int run_rmi(const std::string& state_dir, const std::vector<std::string>& refs) {
  auto store = open_store(state_dir);
  if (!store) return report(store.error());
  auto lock = store->lock(true);
  if (!lock) return report(lock.error());
  for (const auto& r : refs) {
    auto ref = oci::parse_reference(r);
    if (!ref) return report(ref.error());
    if (auto s = store->remove_image(ref->str()); !s) return report(s.error());
    std::printf("removed %s\n", ref->str().c_str());
  }
  return 0;
}

int run_prune(const std::string& state_dir) {
  auto store = open_store(state_dir);
  if (!store) return report(store.error());
  auto lock = store->lock(true);
  if (!lock) return report(lock.error());
  auto r = store->prune();
  if (!r) return report(r.error());
  std::printf("removed %d blobs, %d layers, %d staging entries: %s freed\n", r->blobs, r->layers,
              r->staging, human_bytes(r->bytes).c_str());
  auto used = store->disk_usage();
  if (used)
    std::printf("store %s uses %s on disk\n", store->root().c_str(), human_bytes(*used).c_str());
  return 0;
}
int run_pull(const std::string& state_dir, const std::string& reference,
             const oci::RegistryOptions& ropt) {
  auto store = open_store(state_dir);
  if (!store) return report(store.error());
  // Progress: a status line on a TTY, JSON lines otherwise (stderr).
  const bool tty = ::isatty(STDERR_FILENO);
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
  if (!rec) return report(rec.error());
  std::printf("pulled %s (%s)\n", rec->reference.c_str(), rec->manifest.str().c_str());
  return 0;
}
// --- end image verbs ---

}  // namespace

int main(int argc, char** argv) {
  // Output goes to our own stdout/stderr; a closed reader must give EPIPE
  // (handled), not kill us before the payload's status is known.
  ::signal(SIGPIPE, SIG_IGN);

  CLI::App app{"cloister: run commands in isolation"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "cloister 0.1.0");

  ExecOptions exec;
  auto* sub = app.add_subcommand("exec", "run a command in a sandbox, in-process (no service)");
  sub->add_option("--config,-c", exec.config, "config file")->capture_default_str();
  sub->add_option("--executor,-x", exec.executor, "executor name")->required();
  sub->add_option("-e,--env", exec.env, "environment variable KEY=VALUE (repeatable)");
  sub->add_option("-w,--workdir", exec.work_dir, "working directory inside the sandbox");
  sub->add_flag("-i,--interactive", exec.interactive, "forward stdin to the command");
  sub->add_option("--timeout", exec.timeout, "kill the command after SECONDS")
      ->check(CLI::NonNegativeNumber);
  auto* command = sub->add_option(
      "--command", exec.command,
      "a command string instead of argv: split without a shell, or run by /bin/sh -c in a "
      "shell executor");
  sub->add_option("argv", exec.argv, "the command and its arguments (after --)")->excludes(command);
  sub->callback([&] {
    if (exec.argv.empty() && exec.command.empty())
      throw CLI::ValidationError("argv", "give the command (after --) or --command");
  });
  sub->add_option("--state-dir", exec.state_dir, "image store (container executors)");

  // Image verbs (oci/).
  std::string state_dir, load_path, load_name;
  std::vector<std::string> rmi_refs;
  auto* load = app.add_subcommand("load", "import an OCI image layout directory or OCI archive");
  load->add_option("path", load_path, "layout directory or .tar archive")->required();
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
  std::vector<std::string> mirrors;
  pull->add_option("--mirror", mirrors, "REGISTRY=HOST[:PORT]: try HOST before REGISTRY");
  for (auto* c : {load, images, rmi, prune, pull})
    c->add_option("--state-dir", state_dir, "image store")->default_str(oci::kDefaultStateDir);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "cloister: INVALID: %s\n", e.what());
    return 125;
  }
  if (sub->parsed()) return run_exec(exec);
  if (load->parsed()) return run_load(state_dir, load_path, load_name);
  if (images->parsed()) return run_images(state_dir);
  if (rmi->parsed()) return run_rmi(state_dir, rmi_refs);
  if (prune->parsed()) return run_prune(state_dir);
  if (pull->parsed()) {
    for (const auto& m : mirrors) {
      auto eq = m.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == m.size())
        return report(invalid("--mirror expects REGISTRY=HOST, got '" + m + "'"));
      ropt.mirrors[m.substr(0, eq)].push_back(m.substr(eq + 1));
    }
    return run_pull(state_dir, pull_ref, ropt);
  }
  return 125;
}

// cloister: the command-line client. Each verb is a thin layer over
// libcloister; `exec` runs a command in-process through the library.
#include <signal.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

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
  auto executor = Executor::create(*ec);
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

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "cloister: INVALID: %s\n", e.what());
    return 125;
  }
  if (sub->parsed()) return run_exec(exec);
  return 125;
}

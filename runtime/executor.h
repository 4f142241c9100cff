// Executor: a named, configured way to run commands (an `executors:` entry of
// the config). It validates its configuration once, prepares the sandbox
// (mount plan, seccomp BPF, ...) once, and makes a Process per command.
//
//   auto config = load_config("/etc/cloister/cloister.yaml");
//   auto shell = Executor::create(*config->find("shell"));
//   auto proc = (*shell)->exec({.command = "git status", .work_dir = "/app"});
//
// exec() asks the policy (policy/exec_policy.h) - caller permissions, command
// form, command_whitelist/allowlist, executables_dir, allowed_dirs, limits -
// with the request's caller, or the process's own credentials when none is
// given, and audits the decision. It builds the environment: only the
// executor's default_env plus the call's env, nothing inherited.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "isolate/cgroups.h"
#include "isolate/error.h"
#include "isolate/spawn.h"
#include "runtime/config.h"
#include "runtime/process.h"

namespace cloister {

struct ExecRequest {
  std::vector<std::string> argv;  // preferred
  std::string command;            // or a command string, split without a shell
  std::vector<std::pair<std::string, std::string>> env;  // over default_env
  std::string work_dir;                                  // "" = default_work_dir
  bool stdin_open = false;                               // false: /dev/null
  std::chrono::milliseconds timeout{0};                  // 0 = executor default
  std::shared_ptr<PassedStdio> passed_stdio;             // the caller's fds as 0/1/2 (process.h)
  std::optional<PtyRequest> pty;                         // a terminal instead of pipes
  // Who asks: the service sets the peer's credentials (policy::peer_caller);
  // unset = the calling process's own (policy::Caller::self()).
  std::optional<policy::Caller> caller;
  // `exec` into this running Process of the same executor: the new process
  // joins its sandbox (spawn_joined) instead of getting one. An image's
  // Entrypoint is not put in front, and its Cmd is no default: the command
  // is the request's. Every rule of the policy applies as to a new one.
  // What the join needs is taken by exec() (Process::join_point): the
  // Process may go before the new one's start(), which then fails.
  const Process* join = nullptr;
};

// Container executors: what the image's config gives, used under the
// executor's settings and the call's (docker semantics: argv = Entrypoint +
// (the call's argv, else Cmd)).
struct ImageDefaults {
  std::vector<std::pair<std::string, std::string>> env;
  std::vector<std::string> entrypoint, cmd;
  std::string work_dir;
};

class Executor {
 public:
  // cgroups: the manager to create process cgroups with; null = the shared
  // default one. A host where no cgroup can be created still runs executors
  // without limits (usage then reads 0); one with limits fails here.
  static Result<std::shared_ptr<Executor>> create(
      const ExecutorConfig& config, std::shared_ptr<cgroups::Manager> cgroups = nullptr);

  const ExecutorConfig& config() const { return config_; }
  const SpawnSpec& spec() const { return sandbox_->spec(); }

  // Validates the request and returns a Process, not yet started. INVALID
  // when request.join is another executor's.
  Result<std::unique_ptr<Process>> exec(ExecRequest request) const;

 private:
  ExecutorConfig config_;
  std::shared_ptr<const Sandbox> sandbox_;
  std::shared_ptr<cgroups::Manager> cgroups_;
  std::optional<ImageDefaults> image_;  // container executors
};

// The SpawnSpec an executor config describes. For a container executor the
// image is resolved in the store (config.state_dir) and, when `image` is not
// null, its config's defaults returned there.
Result<SpawnSpec> lower_executor(const ExecutorConfig& config, ImageDefaults* image = nullptr);

}  // namespace cloister

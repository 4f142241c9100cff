// The policy of one executor and the single decision Executor::exec asks
// for: may this caller run this command here, and how exactly is it run.
//
// authorize_exec() applies, in order, each refusal with its own kind:
//   1. caller: exec.get on the executor            PERMISSION_DENIED
//   2. form: argv, or a command string split
//      without a shell (shell operators refused)   INVALID
//      or, with `shell: true`, /bin/sh -c STRING
//   3. caller: exec.run pattern                     PERMISSION_DENIED
//   4. command_whitelist (exact), allowlist         PERMISSION_DENIED
//   5. executables_dir: name rules, openat2         INVALID
//      PATH given by the caller there               INVALID
//   6. allowed_dirs: the work dir                   INVALID
//   7. max_processes of the executor, of the caller LIMIT
// and audits the outcome (policy/audit.h) once, allowed or denied.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "isolate/error.h"
#include "policy/caller.h"
#include "policy/command.h"
#include "policy/limits.h"
#include "policy/paths.h"

namespace cloister::policy {

// The policy fields of an executor config (docs/policy.md).
struct ExecutorPolicy {
  bool shell = false;                     // command strings run as /bin/sh -c STRING
  std::vector<Pattern> allowlist;         // Luminarys patterns; empty = no allowlist
  std::vector<std::string> allowed_dirs;  // sandbox paths bounding the work dir
  std::string executables_dir;            // host dir; "" = argv[0] searched in PATH
  uint64_t max_processes = 0;             // running at once on this executor, 0 = no limit
  uint64_t stdout_limit = 0;              // bytes kept per stream, 0 = no cap
  uint64_t stderr_limit = 0;
  // The config's `callers:` rules (shared by all its executors); null = none
  // configured: only root may run.
  std::shared_ptr<const CallerRules> callers;
  // Running processes per executor name, shared by the copies of a config.
  std::shared_ptr<Counters> executor_counters = Counters::make();
};

struct ExecInput {
  std::string executor;
  Caller caller;
  std::vector<std::string> argv;       // either this
  std::string command;                 // or this
  std::string work_dir;                // normalized absolute sandbox path
  std::vector<std::string> env_names;  // variables the caller sets
  std::vector<HostMount> host_mounts;  // the sandbox view's host-backed mounts
};

struct ExecGrant {
  std::vector<std::string> argv;         // what runs
  std::optional<Executable> executable;  // executables_dir: exec this fd
  std::string work_dir_beneath;          // allowed dir holding the work dir, or ""
  std::vector<Slot> slots;               // held while the process runs
};

// The audit record of a start that failed after an allowed decision (the
// sandbox refused the work dir, the exec failed): action "exec.start".
void audit_start_failure(const ExecInput& input, const std::vector<std::string>& argv,
                         const Error& error);

Result<ExecGrant> authorize_exec(const ExecutorPolicy& policy,
                                 const std::vector<std::string>& command_whitelist,
                                 const ExecInput& input);

}  // namespace cloister::policy

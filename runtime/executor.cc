#include "runtime/executor.h"

#include "isolate/mounts.h"
#include "policy/command.h"

namespace cloister {

Result<SpawnSpec> lower_executor(const ExecutorConfig& c) {
  if (c.kind == ExecutorKind::Container)
    return fail(invalid("executor '" + c.name + "': container executors are not supported yet"));
  SpawnSpec s;
  s.hostname = c.hostname;
  s.network = c.network_mode;
  s.host_paths = c.host_paths;
  s.masked_paths = c.masked_paths;
  s.volumes = c.volumes;
  s.tmpfs = c.tmpfs;
  s.read_only_rootfs = c.read_only_rootfs;
  s.no_new_privileges = c.no_new_privileges;
  s.capabilities = c.capabilities;
  s.rlimits = c.rlimits;
  s.user = c.identity;
  s.seccomp_profile = c.seccomp_profile;
  s.limits.memory_max = c.memory_limit;
  s.limits.cpu_quota = c.cpu_quota;
  s.limits.pids_max = c.pids_limit;
  return s;
}

Result<std::shared_ptr<Executor>> Executor::create(const ExecutorConfig& config,
                                                   std::shared_ptr<cgroups::Manager> cgroups) {
  const std::string ctx = "executor '" + config.name + "'";
  auto spec = lower_executor(config);
  if (!spec) return fail(spec.error());
  auto sandbox = Sandbox::prepare(*spec);
  if (!sandbox) return fail(sandbox.error().wrap(ctx));
  if (!cgroups) {
    auto shared = cgroups::Manager::shared();
    if (shared)
      cgroups = *shared;
    else if (!spec->limits.empty())
      return fail(shared.error().wrap(ctx + ": limits need cgroups"));
  }
  auto e = std::make_shared<Executor>();
  e->config_ = config;
  e->sandbox_ = std::move(*sandbox);
  e->cgroups_ = std::move(cgroups);
  return e;
}

Result<std::unique_ptr<Process>> Executor::exec(ExecRequest req) const {
  ProcessSetup setup;
  setup.sandbox = sandbox_;
  setup.cgroups = cgroups_;
  setup.stdin_open = req.stdin_open;
  if (req.passed_stdio && req.pty) return fail(invalid("give either passed stdio or a pty"));
  setup.passed_stdio = std::move(req.passed_stdio);
  setup.pty = req.pty;
  setup.timeout = req.timeout.count() > 0 ? req.timeout : config_.default_timeout;
  if (req.timeout.count() < 0) return fail(invalid("timeout is negative"));

  if (!req.argv.empty() && !req.command.empty())
    return fail(invalid("give either argv or a command string, not both"));
  if (req.argv.empty()) {
    auto words = policy::split_command(req.command);
    if (!words) return fail(words.error());
    req.argv = std::move(*words);
  }
  if (req.argv.empty() || req.argv[0].empty()) return fail(invalid("empty command"));
  for (const auto& a : req.argv)
    if (a.find('\0') != std::string::npos) return fail(invalid("NUL byte in an argument"));
  if (auto w = policy::check_whitelist(config_.command_whitelist, req.argv); !w)
    return fail(w.error());

  // A clean environment: the executor's defaults, then the call's values.
  std::vector<std::pair<std::string, std::string>> env = config_.default_env;
  for (auto& [k, v] : req.env) {
    if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos ||
        v.find('\0') != std::string::npos)
      return fail(invalid("bad environment variable name '" + k + "'"));
    bool replaced = false;
    for (auto& kv : env)
      if (kv.first == k) kv.second = v, replaced = true;
    if (!replaced) env.emplace_back(k, v);
  }
  for (auto& [k, v] : env) setup.command.env.push_back(k + "=" + v);

  auto wd = mounts::normalize_path(req.work_dir.empty() ? config_.default_work_dir : req.work_dir);
  if (!wd) return fail(wd.error().wrap("work dir"));
  setup.command.work_dir = *wd;
  setup.command.argv = std::move(req.argv);
  return std::make_unique<Process>(std::move(setup));
}

}  // namespace cloister

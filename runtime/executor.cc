#include "runtime/executor.h"

#include "isolate/mounts.h"
#include "policy/exec_policy.h"

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
  setup.timeout = req.timeout.count() > 0 ? req.timeout : config_.default_timeout;
  if (req.timeout.count() < 0) return fail(invalid("timeout is negative"));

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

  // Every policy rule, decided and audited in one place.
  policy::ExecInput in;
  in.executor = config_.name;
  in.caller = req.caller ? std::move(*req.caller) : policy::Caller::self();
  in.argv = std::move(req.argv);
  in.command = std::move(req.command);
  in.work_dir = *wd;
  for (const auto& kv : req.env) in.env_names.push_back(kv.first);
  if (!config_.policy.allowed_dirs.empty()) {
    for (const auto& p : config_.host_paths) in.host_mounts.push_back({p, p});
    for (const auto& v : config_.volumes) in.host_mounts.push_back({v.target, v.source});
  }
  auto grant = policy::authorize_exec(config_.policy, config_.command_whitelist, in);
  if (!grant) return fail(grant.error());
  setup.command.work_dir = *wd;
  setup.command.work_dir_beneath = std::move(grant->work_dir_beneath);
  setup.command.argv = std::move(grant->argv);
  if (grant->executable) {
    setup.command.exec_fd = grant->executable->fd.get();
    setup.command.exec_fd_inherit = grant->executable->script;
    setup.exec_file = std::move(grant->executable->fd);
  }
  setup.slots = std::move(grant->slots);
  in.argv = setup.command.argv;
  setup.on_start_failure = [in = std::move(in)](const Error& e) {
    policy::audit_start_failure(in, in.argv, e);
  };
  setup.stdout_limit = config_.policy.stdout_limit;
  setup.stderr_limit = config_.policy.stderr_limit;
  return std::make_unique<Process>(std::move(setup));
}

}  // namespace cloister

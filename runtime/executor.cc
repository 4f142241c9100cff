#include "runtime/executor.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>

#include "isolate/mounts.h"
#include "oci/container.h"
#include "policy/exec_policy.h"

namespace cloister {

namespace {

constexpr const char* kContainerPath =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// The container part of lowering: the image's layers as the root, its user
// unless the executor names one, its config's defaults.
Status lower_container(const ExecutorConfig& c, SpawnSpec& s, ImageDefaults* out) {
  if (c.image.empty()) return fail(invalid("a container executor needs an image"));
  // Pulled on first use when missing from the store.
  oci::RegistryOptions registry;
  registry.insecure = c.insecure_registries;
  registry.auth_file = c.auth_file;
  for (const auto& [reg, hosts] : c.mirrors) registry.mirrors[reg] = hosts;
  auto img = oci::open_container_image(c.state_dir, c.image, true, registry);
  if (!img) return fail(img.error().wrap("image " + c.image));
  s.image_root = ImageRoot{img->layer_dirs, ""};
  if (!oci::overlay_available()) {
    if (!c.read_only_rootfs)
      return fail(invalid("read_only_rootfs: false needs overlayfs, which this kernel lacks"));
    auto merged = oci::merged_rootfs(c.state_dir, *img);
    if (!merged) return fail(merged.error().wrap("image " + c.image));
    s.image_root->merged = *merged;
  }
  s.host_paths.clear();
  s.masked_paths.clear();
  auto id = oci::image_user(img->layer_dirs, c.user ? *c.user : img->config.user);
  if (!id) return fail(id.error().wrap("image " + c.image));
  s.user = std::move(*id);
  if (out) {
    for (const auto& kv : img->config.env) {
      auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) continue;
      out->env.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
    }
    out->entrypoint = c.entrypoint ? *c.entrypoint : img->config.entrypoint;
    if (!c.entrypoint) out->cmd = img->config.cmd;
    out->work_dir = img->config.working_dir;
  }
  return {};
}

// "memory_limit, pids_limit": the config fields of the limits set.
std::string limit_names(const cgroups::Limits& l) {
  std::string out;
  auto add = [&](bool on, const char* name) {
    if (!on) return;
    if (!out.empty()) out += ", ";
    out += name;
  };
  add(l.memory_max != 0, "memory_limit");
  add(l.cpu_quota != 0, "cpu_quota");
  add(l.pids_max != 0, "pids_limit");
  if (out.empty()) out = "a limit";
  return out;
}

// An ordinary user's executor (docs/security.md, "Unprivileged use"): a user
// namespace of the sandbox's own with the user's ids as 0 inside, and the
// default process bound as RLIMIT_NPROC, which the kernel counts per user
// namespace, where no cgroup can be made.
Status lower_unprivileged(const ExecutorConfig& c, SpawnSpec& s) {
  if (c.userns_host)
    return fail(
        invalid("userns: host needs root (an ordinary user's sandbox always has a user "
                "namespace of its own)"));
  if (c.userns_range)
    return fail(
        invalid("userns_range needs root (an ordinary user's sandbox maps only the "
                "user's own uid and gid)"));
  if (c.userns_sandbox)
    return fail(
        invalid("userns: sandbox needs root (an ordinary user's sandboxes each have a "
                "user namespace of their own already, with the user's ids)"));
  s.unprivileged = true;
  s.userns = userns::own_subids().value_or(userns::own_ids());
  // A bound of the caller's own rlimit, unless the config sets that rlimit:
  // pick(soft, hard) gives it, 0 for none.
  auto bound = [&](int resource, auto pick) {
    for (const auto& l : s.rlimits)
      if (l.resource == resource) return;
    rlimit cur{};
    if (::getrlimit(resource, &cur) != 0) return;
    if (rlim_t n = pick(cur.rlim_cur, cur.rlim_max)) s.rlimits.push_back({resource, n, n});
  };
  // Pending signals are counted per user across all its processes: a
  // sandbox may queue half of what the user may.
  bound(RLIMIT_SIGPENDING,
        [](rlim_t soft, rlim_t) { return soft != RLIM_INFINITY && soft >= 2 ? soft / 2 : 0; });
  if (!c.pids_limit_set && s.limits.pids_max) {
    bound(RLIMIT_NPROC,
          [&](rlim_t, rlim_t hard) { return std::min<rlim_t>(s.limits.pids_max, hard); });
    s.limits.pids_max = 0;
  }
  return {};
}

}  // namespace

Result<SpawnSpec> lower_executor(const ExecutorConfig& c, ImageDefaults* image) {
  SpawnSpec s;
  s.hostname = c.hostname;
  s.network = c.network_mode;
  s.host_paths = c.host_paths;
  s.masked_paths = c.masked_paths;
  s.volumes = c.volumes;
  s.tmpfs = c.tmpfs;
  s.read_only_rootfs = c.read_only_rootfs;
  s.no_new_privileges = c.no_new_privileges;
  if (c.userns_size && !c.userns_sandbox)
    return fail(invalid("executor '" + c.name + "': userns_size needs userns: sandbox"));
  if (c.userns_sandbox) {
    const uint32_t size = c.userns_size ? c.userns_size : userns::kDefaultSize;
    const userns::Pool pool = c.userns_range
                                  ? userns::Pool{c.userns_range->uid_base, c.userns_range->gid_base,
                                                 c.userns_range->size, size}
                                  : userns::default_pool(size);
    if (auto st = userns::check(pool); !st)
      return fail(st.error().wrap("executor '" + c.name + "': userns: sandbox"));
    s.userns_pool = pool;
    s.userns = pool.slot(0);
  } else if (!c.userns_host) {
    if (c.userns_range) {
      s.userns = c.userns_range;
    } else {
      auto m = userns::default_map();
      if (!m) return fail(m.error().wrap("executor '" + c.name + "': user namespace"));
      s.userns = *m;
    }
  }
  s.capabilities = c.capabilities;
  s.rlimits = c.rlimits;
  s.sysctls = c.sysctls;
  s.limits.memory_max = c.memory_limit;
  s.limits.cpu_quota = c.cpu_quota;
  s.limits.pids_max = c.pids_limit;
  if (::geteuid() != 0)
    if (auto st = lower_unprivileged(c, s); !st)
      return fail(st.error().wrap("executor '" + c.name + "'"));
  s.user = c.identity;
  s.seccomp_profile = c.seccomp_profile;
  if (c.kind == ExecutorKind::Container)
    if (auto st = lower_container(c, s, image); !st)
      return fail(st.error().wrap("executor '" + c.name + "'"));
  return s;
}

Result<std::shared_ptr<Executor>> Executor::create(const ExecutorConfig& config,
                                                   std::shared_ptr<cgroups::Manager> cgroups) {
  const std::string ctx = "executor '" + config.name + "'";
  ImageDefaults image;
  auto spec = lower_executor(config, &image);
  if (!spec) return fail(spec.error());
  auto sandbox = Sandbox::prepare(*spec);
  if (!sandbox) return fail(sandbox.error().wrap(ctx));
  // An ordinary user's sandboxes get a cgroup only for limits, and then
  // only where one was delegated: usage comes from the init otherwise.
  if (!cgroups && !(spec->unprivileged && spec->limits.empty())) {
    auto shared = cgroups::Manager::shared();
    // An ordinary user's base must be its own (delegated) to make cgroups in.
    if (shared && spec->unprivileged)
      if (auto w = (*shared)->writable(); !w) shared = fail(w.error());
    if (shared)
      cgroups = *shared;
    else if (!spec->limits.empty() && spec->unprivileged)
      return fail(shared.error().wrap(
          ctx + ": " + limit_names(spec->limits) +
          " needs a delegated cgroup (an ordinary user may make cgroups only below one "
          "delegated to it, such as a systemd user service's with Delegate=yes; "
          "docs/security.md, \"Unprivileged use\")"));
    else if (!spec->limits.empty())
      return fail(shared.error().wrap(ctx + ": limits need cgroups"));
  }
  auto e = std::make_shared<Executor>();
  e->config_ = config;
  e->sandbox_ = std::move(*sandbox);
  e->cgroups_ = std::move(cgroups);
  if (config.kind == ExecutorKind::Container) e->image_ = std::move(image);
  return e;
}

Result<std::unique_ptr<Process>> Executor::exec(ExecRequest req) const {
  if (req.join && !req.join->same_sandbox(*sandbox_))
    return fail(invalid("a process joins a sandbox of its own executor only"));
  ProcessSetup setup;
  if (req.join) {
    auto j = req.join->join_point();
    if (!j) return fail(j.error());
    setup.join.emplace(std::move(*j));
  }
  setup.sandbox = sandbox_;
  setup.cgroups = cgroups_;
  setup.stdin_open = req.stdin_open;
  if (req.passed_stdio && req.pty) return fail(invalid("give either passed stdio or a pty"));
  setup.passed_stdio = std::move(req.passed_stdio);
  setup.pty = req.pty;
  setup.timeout = req.timeout.count() > 0 ? req.timeout : config_.default_timeout;
  if (req.timeout.count() < 0) return fail(invalid("timeout is negative"));

  // A clean environment: the image's (containers), the executor's defaults,
  // then the call's values.
  std::vector<std::pair<std::string, std::string>> env = config_.default_env;
  if (image_) {
    std::vector<std::pair<std::string, std::string>> base = image_->env;
    bool has_path = false;
    for (const auto& kv : base) has_path |= kv.first == "PATH";
    if (!has_path) base.emplace_back("PATH", kContainerPath);
    std::vector<std::pair<std::string, std::string>> merged;
    for (auto& kv : base) {
      bool overridden = false;
      for (const auto& e : env) overridden |= e.first == kv.first;
      if (!overridden) merged.push_back(std::move(kv));
    }
    merged.insert(merged.end(), env.begin(), env.end());
    env = std::move(merged);
  }
  for (auto& [k, v] : req.env) {
    if (k.empty() || k.find('=') != std::string::npos || k.find('\0') != std::string::npos ||
        v.find('\0') != std::string::npos)
      return fail(invalid("bad environment variable name '" + k + "'"));
    bool replaced = false;
    for (auto& kv : env)
      if (kv.first == k) kv.second = v, replaced = true;
    if (!replaced) env.emplace_back(k, v);
  }
  // A terminal says what it is, as docker's and podman's -t do, unless the
  // environment says otherwise.
  if (req.pty &&
      std::none_of(env.begin(), env.end(), [](const auto& kv) { return kv.first == "TERM"; }))
    env.emplace_back("TERM", "xterm");
  for (auto& [k, v] : env) setup.command.env.push_back(k + "=" + v);

  std::string work_dir = req.work_dir.empty() ? config_.default_work_dir : req.work_dir;
  // A container's executor that sets no work dir (the default "/") gets the
  // image's WorkingDir.
  if (image_ && req.work_dir.empty() && config_.default_work_dir == "/" &&
      !image_->work_dir.empty())
    work_dir = image_->work_dir;
  auto wd = mounts::normalize_path(work_dir);
  if (!wd) return fail(wd.error().wrap("work dir"));

  // A container without a command runs its image's Cmd; with no Cmd
  // either, its Entrypoint alone (as docker does), which is then the
  // command the policy checks.
  bool entrypoint_is_command = false;
  if (image_ && !req.join && req.argv.empty() && req.command.empty()) {
    req.argv = image_->cmd;
    if (req.argv.empty() && !image_->entrypoint.empty()) {
      req.argv = image_->entrypoint;
      entrypoint_is_command = true;
    }
  }

  // Every policy rule, decided and audited in one place.
  policy::ExecInput in;
  in.executor = config_.name;
  if (req.caller) {
    in.caller = std::move(*req.caller);
  } else {
    in.caller = policy::Caller::self();
    in.caller.own_process = true;
  }
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
  // The image's Entrypoint runs the (checked) command as its arguments.
  if (image_ && !req.join && !image_->entrypoint.empty() && !entrypoint_is_command)
    setup.command.argv.insert(setup.command.argv.begin(), image_->entrypoint.begin(),
                              image_->entrypoint.end());
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

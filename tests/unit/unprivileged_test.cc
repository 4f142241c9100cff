// An ordinary user's sandboxes (docs/security.md, "Unprivileged use"): how
// an executor lowers, what its mount plan holds, and how the policy decides
// for the library's own caller. Run as root, the checks that need an
// ordinary user run as nobody in a forked child (as_nobody).
#include <gtest/gtest.h>
#include <linux/mount.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>

#include "../as_nobody.h"
#include "isolate/mounts.h"
#include "isolate/spawn.h"
#include "oci/store.h"
#include "policy/audit.h"
#include "policy/caller.h"
#include "runtime/config.h"
#include "runtime/executor.h"

namespace cloister {
namespace {

using testing::as_nobody;
using OpKind = mounts::OpKind;

// fn as an ordinary user: nobody when we are root, else ourselves.
char as_user(const std::function<char()>& fn) {
  return ::geteuid() == 0 ? as_nobody(fn) : fn();
}

ExecutorConfig host_config() {
  ExecutorConfig c;
  c.name = "u";
  c.host_paths = kDefaultHostPaths;
  c.masked_paths = kDefaultMaskedPaths;
  return c;
}

TEST(Unprivileged, ExecutorLowersToItsOwnUserNamespace) {
  EXPECT_EQ(
      as_user([] {
        auto s = lower_executor(host_config());
        if (!s) return 'E';
        if (!s->unprivileged) return 'P';
        if (!s->userns || s->userns->size != 1 || s->userns->uid_base != userns::own_ids().uid_base)
          return 'M';
        // The default process bound as RLIMIT_NPROC, no cgroup limit.
        if (s->limits.pids_max != 0) return 'C';
        auto it = std::find_if(s->rlimits.begin(), s->rlimits.end(),
                               [](const auto& l) { return l.resource == RLIMIT_NPROC; });
        if (it == s->rlimits.end() || it->soft > kDefaultPidsLimit) return 'N';
        return 'A';
      }),
      'A');
  // A pids_limit written in the config stays a cgroup limit.
  EXPECT_EQ(as_user([] {
              auto c = host_config();
              c.pids_limit = 64;
              c.pids_limit_set = true;
              auto s = lower_executor(c);
              return s && s->limits.pids_max == 64 ? 'A' : 'E';
            }),
            'A');
  // What needs root is refused, naming it.
  EXPECT_EQ(as_user([] {
              auto c = host_config();
              c.userns_host = true;
              auto s = lower_executor(c);
              return !s && s.error().what().find("userns: host needs root") != std::string::npos
                         ? 'A'
                         : 'E';
            }),
            'A');
  EXPECT_EQ(as_user([] {
              auto c = host_config();
              c.userns_sandbox = true;
              auto s = lower_executor(c);
              return !s && s.error().what().find("userns: sandbox needs root") != std::string::npos
                         ? 'A'
                         : 'E';
            }),
            'A');
  EXPECT_EQ(as_user([] {
              auto c = host_config();
              c.userns_range = userns::Map{100000, 100000, 65536};
              auto s = lower_executor(c);
              return !s && s.error().what().find("userns_range needs root") != std::string::npos
                         ? 'A'
                         : 'E';
            }),
            'A');
}

TEST(Unprivileged, ConfigTellsAWrittenPidsLimitFromTheDefault) {
  auto c = parse_config("executors:\n  - name: a\n  - name: b\n    pids_limit: 2048\n", "t.yaml");
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_FALSE(c->executors[0].pids_limit_set);
  EXPECT_TRUE(c->executors[1].pids_limit_set);
  EXPECT_EQ(c->executors[0].pids_limit, c->executors[1].pids_limit);
}

SpawnSpec unprivileged_spec() {
  SpawnSpec s;
  s.host_paths = {"/usr", "/etc"};
  s.unprivileged = true;
  s.userns = userns::Map{1000, 1000, 1};
  return s;
}

TEST(Unprivileged, MountPlanClonesItsOwnSourcesAndBindsDevices) {
  SpawnSpec s = unprivileged_spec();
  auto plan = mounts::MountPlan::prepare(s);
  ASSERT_TRUE(plan) << plan.error().what();
  const auto& ops = plan->ops();
  ASSERT_FALSE(ops.empty());
  EXPECT_EQ(ops[0].kind, OpKind::MakePrivate);
  // Every source cloned by the init, before anything covers the stage.
  size_t clones = 0;
  for (size_t i = 1; i < ops.size() && ops[i].kind == OpKind::CloneTree; ++i) {
    EXPECT_EQ(ops[i].source, static_cast<int>(clones));
    EXPECT_EQ(ops[i].path, plan->sources()[clones].path);
    EXPECT_NE(ops[i].flags & MOUNT_ATTR_RDONLY, 0u);
    ++clones;
  }
  EXPECT_EQ(clones, plan->sources().size());
  EXPECT_GE(clones, 2u);
  bool devpts = false, null_bound = false;
  for (const auto& o : ops) {
    EXPECT_NE(o.kind, OpKind::Mknod) << o.path;  // no mknod in a user namespace
    if (o.kind == OpKind::Devpts) {
      devpts = true;
      EXPECT_EQ(o.data.find("gid="), std::string::npos) << o.data;  // gid 5 is not mapped
    }
    if (o.kind == OpKind::BindFile && o.src == "/dev/null" && o.path.ends_with("/dev/null"))
      null_bound = true;
    // tmpfs owners are ids inside (0), not host ids.
    if (o.kind == OpKind::Tmpfs && o.data.find("uid=") != std::string::npos) {
      EXPECT_NE(o.data.find("uid=0"), std::string::npos) << o.data;
    }
  }
  EXPECT_TRUE(devpts);
  EXPECT_TRUE(null_bound);
  // No template: its namespace would not be the sandbox user namespace's.
  EXPECT_FALSE(plan->templatable());
  // A root sandbox of the same view keeps all three.
  SpawnSpec root = s;
  root.unprivileged = false;
  root.userns = userns::Map{100000, 100000, 65536};
  auto rplan = mounts::MountPlan::prepare(root);
  ASSERT_TRUE(rplan);
  EXPECT_TRUE(rplan->templatable());
  EXPECT_TRUE(std::any_of(rplan->ops().begin(), rplan->ops().end(),
                          [](const auto& o) { return o.kind == OpKind::Mknod; }));
}

// The mode follows the caller: root may not ask for it (its map would make
// host root the payload's root), an ordinary user may not go without it.
TEST(Unprivileged, TheModeMustMatchTheCaller) {
  SpawnSpec s = unprivileged_spec();
  s.userns = userns::own_ids();
  if (::geteuid() == 0) {
    auto sb = Sandbox::prepare(s);
    ASSERT_FALSE(sb);
    EXPECT_NE(sb.error().what().find("would map host root"), std::string::npos)
        << sb.error().what();
  }
  EXPECT_EQ(as_user([] {
              SpawnSpec plain;
              plain.host_paths = {"/usr"};
              auto sb = Sandbox::prepare(plain);
              return !sb && sb.error().what().find(
                                "is not root: an ordinary user's sandbox is "
                                "unprivileged") != std::string::npos
                         ? 'A'
                         : 'E';
            }),
            'A');
}

// An ordinary user's image store is its own: XDG_DATA_HOME, else HOME's
// ~/.local/share, else an error saying to set state_dir; root's is the
// system's; a configured one is used as it is.
TEST(Unprivileged, ImageStoreOfTheUsersOwn) {
  if (::geteuid() == 0) {
    EXPECT_EQ(*oci::resolve_state_dir(""), oci::kDefaultStateDir);
    EXPECT_STREQ(oci::opaque_xattr(), "trusted.overlay.opaque");
  }
  EXPECT_EQ(as_user([] {
              if (std::string(oci::opaque_xattr()) != "user.overlay.opaque") return 'X';
              if (*oci::resolve_state_dir("/srv/s") != "/srv/s") return 'C';
              ::setenv("XDG_DATA_HOME", "/tmp", 1);
              if (*oci::resolve_state_dir("") != "/tmp/cloister") return 'D';
              ::unsetenv("XDG_DATA_HOME");
              ::setenv("HOME", "/tmp", 1);
              if (*oci::resolve_state_dir("") != "/tmp/.local/share/cloister") return 'H';
              ::setenv("HOME", "/nonexistent", 1);
              auto none = oci::resolve_state_dir("");
              if (none || none.error().what().find("set images.state_dir") == std::string::npos)
                return 'N';
              return 'A';
            }),
            'A');
}

TEST(Unprivileged, IdmapVolumesAndOtherIdsAreRefused) {
  SpawnSpec s = unprivileged_spec();
  s.volumes.push_back({"/usr", "/u", true, true});
  auto plan = mounts::MountPlan::prepare(s);
  ASSERT_FALSE(plan);
  EXPECT_NE(plan.error().what().find("idmap needs root"), std::string::npos) << plan.error().what();
  s = unprivileged_spec();
  s.tmpfs.push_back({"/scratch", "uid=1000"});
  plan = mounts::MountPlan::prepare(s);
  ASSERT_FALSE(plan);
  EXPECT_NE(plan.error().what().find("uid=1000 is outside the user namespace's 1 ids"),
            std::string::npos)
      << plan.error().what();
}

TEST(Unprivileged, TheLibrarysOwnCallerIsItsOwnPrincipal) {
  using policy::Action;
  policy::set_audit_sink(policy::AuditSink::Off);
  policy::CallerRules none;  // rules that grant nobody anything
  policy::Caller user;
  user.uid = 1000;
  user.gid = 1000;
  policy::Request get{Action::ExecGet, "shell", {}, {}};
  // As a service's peer: decided by the rules (or their absence).
  EXPECT_FALSE(policy::authorize(nullptr, user, get));
  EXPECT_FALSE(policy::authorize(&none, user, get));
  // As the library's own caller: allowed, whatever the rules say.
  user.own_process = true;
  auto d = policy::authorize(&none, user, get);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->reason, "own process");
  EXPECT_TRUE(policy::authorize(nullptr, user, get));
  // Root in-process is decided as before (uid 0 has every caller
  // permission), with its reason.
  policy::Caller root;
  root.own_process = true;
  auto r = policy::authorize(nullptr, root, get);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->reason, "root");
  policy::set_audit_sink(policy::AuditSink::Auto);
}

}  // namespace
}  // namespace cloister

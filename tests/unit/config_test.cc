#include <grp.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <string>

#include "isolate/capabilities.h"
#include "runtime/config.h"
#include "runtime/executor.h"

using namespace cloister;
using namespace std::chrono_literals;

namespace {

const char* const kSource = "test.yaml";

Result<Config> parse(const std::string& yaml) {
  return parse_config(yaml, kSource);
}

// One executor "a" of kind host, with `fields` (already indented by 4) after
// the kind: the first field is on line 4.
std::string one(const std::string& fields) {
  return "executors:\n  - name: a\n    kind: host\n" + fields;
}

rlim_t current_hard(int resource) {
  struct rlimit r {};
  getrlimit(resource, &r);
  return r.rlim_max;
}

const rlimits::Limit* find_limit(const ExecutorConfig& e, int resource) {
  for (const auto& l : e.rlimits)
    if (l.resource == resource) return &l;
  return nullptr;
}

}  // namespace

TEST(Config, ExampleLoads) {
  const std::string path = std::string(CLOISTER_SOURCE_DIR) + "/configs/example.yaml";
  auto c = load_config(path);
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->path, path);
  ASSERT_EQ(c->executors.size(), 3u);

  const ExecutorConfig* shell = c->find("shell");
  ASSERT_NE(shell, nullptr);
  EXPECT_EQ(shell->kind, ExecutorKind::Host);
  EXPECT_EQ(shell->default_work_dir, "/tmp");
  ASSERT_FALSE(shell->default_env.empty());
  EXPECT_EQ(shell->default_env[0].first, "PATH");
  EXPECT_EQ(shell->default_env[0].second, "/usr/local/bin:/usr/bin:/bin");
  EXPECT_TRUE(shell->command_whitelist.empty());
  ASSERT_EQ(shell->tmpfs.size(), 1u);
  EXPECT_EQ(shell->tmpfs[0].target, "/tmp");
  EXPECT_EQ(shell->tmpfs[0].options, "rw,nosuid,nodev,size=256m,mode=1777");
  EXPECT_EQ(shell->network_mode, NetworkMode::None);
  EXPECT_EQ(shell->capabilities, 0u);
  EXPECT_EQ(shell->default_timeout, 5min);

  const ExecutorConfig* restricted = c->find("restricted");
  ASSERT_NE(restricted, nullptr);
  EXPECT_EQ(restricted->memory_limit, 64u << 20);
  EXPECT_EQ(restricted->pids_limit, 32u);
  EXPECT_EQ(restricted->cpu_quota, 50000u);
  EXPECT_EQ(restricted->network_mode, NetworkMode::None);
  EXPECT_EQ(restricted->command_whitelist,
            (std::vector<std::string>{"ls -la", "cat /docs/README", "git status", "git diff"}));
  EXPECT_EQ(restricted->identity.uid, 65534u);
  EXPECT_EQ(restricted->identity.gid, 65534u);
  EXPECT_EQ(restricted->hostname, "restricted");
  ASSERT_EQ(restricted->volumes.size(), 1u);
  EXPECT_EQ(restricted->volumes[0].source, "/usr/share/doc");
  EXPECT_EQ(restricted->volumes[0].target, "/docs");
  EXPECT_TRUE(restricted->volumes[0].read_only);
  EXPECT_EQ(restricted->tmpfs.size(), 2u);
  EXPECT_EQ(restricted->cap_drop, std::vector<std::string>{"ALL"});
  EXPECT_EQ(restricted->capabilities, 0u);
  EXPECT_EQ(restricted->default_timeout, 30s);
  const rlimits::Limit* nproc = find_limit(*restricted, RLIMIT_NPROC);
  ASSERT_NE(nproc, nullptr);
  EXPECT_EQ(nproc->soft, std::min<rlim_t>(32, current_hard(RLIMIT_NPROC)));

  const ExecutorConfig* net = c->find("net");
  ASSERT_NE(net, nullptr);
  EXPECT_EQ(net->network_mode, NetworkMode::Host);
  EXPECT_EQ(net->cap_add, std::vector<std::string>{"CAP_NET_BIND_SERVICE"});
  EXPECT_EQ(net->capabilities, 1ULL << *capabilities::from_name("NET_BIND_SERVICE"));
  EXPECT_EQ(net->user, "65534:65534");
  EXPECT_EQ(net->identity.uid, 65534u);
  EXPECT_EQ(net->identity.gid, 65534u);
  EXPECT_TRUE(net->identity.groups.empty());
  EXPECT_EQ(net->memory_limit, 512u << 20);
  EXPECT_EQ(net->seccomp_profile, "");

  EXPECT_EQ(c->find("nope"), nullptr);
}

TEST(Config, Defaults) {
  auto c = parse("executors:\n  - name: app:shell\n");
  ASSERT_TRUE(c) << c.error().what();
  ASSERT_EQ(c->executors.size(), 1u);
  const ExecutorConfig& e = c->executors[0];
  EXPECT_EQ(e.name, "app:shell");
  EXPECT_EQ(e.kind, ExecutorKind::Host);
  EXPECT_EQ(e.default_work_dir, "/");
  EXPECT_TRUE(e.default_env.empty());
  EXPECT_TRUE(e.command_whitelist.empty());
  EXPECT_EQ(e.network_mode, NetworkMode::None);
  EXPECT_EQ(e.memory_limit, 0u);
  EXPECT_EQ(e.cpu_quota, 0u);
  EXPECT_EQ(e.pids_limit, kDefaultPidsLimit);  // bounded unless lifted
  EXPECT_TRUE(e.read_only_rootfs);
  EXPECT_TRUE(e.no_new_privileges);
  EXPECT_TRUE(e.cap_add.empty());
  EXPECT_TRUE(e.cap_drop.empty());
  EXPECT_EQ(e.capabilities, 0u);
  EXPECT_TRUE(e.tmpfs.empty());
  EXPECT_TRUE(e.volumes.empty());
  EXPECT_FALSE(e.user.has_value());
  EXPECT_EQ(e.identity.uid, 0u);
  EXPECT_EQ(e.identity.gid, 0u);
  EXPECT_EQ(e.hostname, "cloister");
  EXPECT_EQ(e.host_paths, kDefaultHostPaths);
  EXPECT_EQ(e.masked_paths, kDefaultMaskedPaths);
  EXPECT_TRUE(e.rlimits.empty());
  EXPECT_EQ(e.seccomp_profile, "");
  EXPECT_EQ(e.default_timeout, 0ms);
  EXPECT_EQ(c->path, kSource);
  EXPECT_EQ(c->find("app:shell"), &c->executors[0]);
}

TEST(Config, ExplicitListsReplaceDefaults) {
  auto c = parse(one("    host_paths: [/usr]\n    masked_paths: []\n"));
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].host_paths, std::vector<std::string>{"/usr"});
  EXPECT_TRUE(c->executors[0].masked_paths.empty());
}

TEST(Config, KindAliasExecNative) {
  auto c = parse("executors:\n  - name: a\n    kind: exec.native\n  - name: b\n    kind: host\n");
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].kind, ExecutorKind::Host);
  EXPECT_EQ(c->executors[1].kind, ExecutorKind::Host);
}

TEST(Config, ContainerKinds) {
  for (const char* kind : {"container", "exec.docker"}) {
    auto c = parse(std::string("images:\n  state_dir: /srv/images\nexecutors:\n  - name: box\n"
                               "    kind: ") +
                   kind +
                   "\n    image: busybox\n    user: nobody\n    auto_remove: true\n"
                   "    volumes: [\"/tmp:/data:ro\"]\n");
    ASSERT_TRUE(c) << kind << ": " << c.error().what();
    const auto& e = c->executors[0];
    EXPECT_EQ(e.kind, ExecutorKind::Container);
    EXPECT_EQ(e.image, "docker.io/library/busybox:latest");
    EXPECT_EQ(e.state_dir, "/srv/images");
    EXPECT_EQ(e.user, std::optional<std::string>("nobody"));  // resolved in the image
    EXPECT_TRUE(e.host_paths.empty());
  }
  auto c = parse(
      "images:\n  insecure_registries: [reg.local:5000]\n  auth_file: /etc/a.json\n"
      "  mirrors: { docker.io: [m1.lan, m2.lan:5000] }\n"
      "executors:\n  - name: box\n    kind: container\n    image: busybox\n");
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].insecure_registries, std::vector<std::string>{"reg.local:5000"});
  EXPECT_EQ(c->executors[0].auth_file, "/etc/a.json");
  ASSERT_EQ(c->executors[0].mirrors.size(), 1u);
  EXPECT_EQ(c->executors[0].mirrors[0].first, "docker.io");
  EXPECT_EQ(c->executors[0].mirrors[0].second, (std::vector<std::string>{"m1.lan", "m2.lan:5000"}));
  auto bad = parse("images:\n  insecure_registries: [\"http://x/\"]\nexecutors:\n  - name: a\n");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("test.yaml:2: images.insecure_registries[0]"),
            std::string::npos)
      << bad.error().message;
}

TEST(Config, WippyExecutorBlockParses) {
  // The native executor example from Wippy's documentation, verbatim.
  auto c = parse(R"(executors:
- name: shell
  kind: exec.native
  default_work_dir: /app
  default_env:
    PATH: /usr/local/bin:/usr/bin:/bin
    LANG: en_US.UTF-8
  command_whitelist:
    - git status
    - git diff
    - npm run build
)");
  ASSERT_TRUE(c) << c.error().what();
  const auto& e = c->executors[0];
  EXPECT_EQ(e.default_work_dir, "/app");
  ASSERT_EQ(e.default_env.size(), 2u);
  EXPECT_EQ(e.default_env[1], (std::pair<std::string, std::string>{"LANG", "en_US.UTF-8"}));
  EXPECT_EQ(e.command_whitelist.size(), 3u);
}

TEST(Config, ByteSizes) {
  const std::pair<const char*, uint64_t> cases[] = {
      {"0", 0},
      {"536870912", 536870912},
      {"\"512m\"", 512ULL << 20},
      {"512m", 512ULL << 20},
      {"64k", 64ULL << 10},
      {"1g", 1ULL << 30},
      {"1G", 1ULL << 30},
      {"2t", 2ULL << 40},
      {"512MiB", 512ULL << 20},
      {"100mb", 100ULL << 20},
      {"10b", 10},
  };
  for (const auto& [text, want] : cases) {
    auto c = parse(one(std::string("    memory_limit: ") + text + "\n"));
    ASSERT_TRUE(c) << text << ": " << c.error().what();
    EXPECT_EQ(c->executors[0].memory_limit, want) << text;
  }
  for (const char* bad : {"1.5g", "-1", "12x", "g", "18446744073709551615k", "0x10", "010"}) {
    auto c = parse(one(std::string("    memory_limit: ") + bad + "\n"));
    ASSERT_FALSE(c) << bad;
    EXPECT_NE(c.error().message.find("test.yaml:4: executors[0].memory_limit: expected a byte "
                                     "size (integer or 512m/1g), got"),
              std::string::npos)
        << c.error().message;
  }
}

TEST(Config, Durations) {
  const std::pair<const char*, std::chrono::milliseconds> cases[] = {
      {"0", 0ms}, {"30", 30s}, {"500ms", 500ms}, {"30s", 30s}, {"5m", 5min}, {"1h", 1h},
  };
  for (const auto& [text, want] : cases) {
    auto c = parse(one(std::string("    timeout: ") + text + "\n"));
    ASSERT_TRUE(c) << text << ": " << c.error().what();
    EXPECT_EQ(c->executors[0].default_timeout, want) << text;
  }
  auto c = parse(one("    default_timeout: 250ms\n"));
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].default_timeout, 250ms);
}

TEST(Config, IntegersAndBooleans) {
  auto c =
      parse(one("    cpu_quota: 200000\n    pids_limit: 4194304\n    read_only_rootfs: false\n"
                "    no_new_privileges: false\n"));
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].cpu_quota, 200000u);
  EXPECT_EQ(c->executors[0].pids_limit, 4194304u);
  EXPECT_FALSE(c->executors[0].read_only_rootfs);
  EXPECT_FALSE(c->executors[0].no_new_privileges);
}

TEST(Config, Sysctls) {
  auto c =
      parse(one("    sysctl:\n      net.ipv4.ip_unprivileged_port_start: 0\n"
                "      kernel.shmmax: \"68719476736\"\n"));
  ASSERT_TRUE(c) << c.error().what();
  ASSERT_EQ(c->executors[0].sysctls.size(), 2u);
  EXPECT_EQ(c->executors[0].sysctls[0].key, "net.ipv4.ip_unprivileged_port_start");
  EXPECT_EQ(c->executors[0].sysctls[0].value, "0");
  EXPECT_EQ(c->executors[0].sysctls[1].value, "68719476736");
}

TEST(Config, UserNames) {
  auto c = parse(one("    user: root\n"));
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].identity.uid, 0u);
  EXPECT_EQ(c->executors[0].identity.gid, 0u);
  EXPECT_EQ(c->executors[0].user, "root");
  const auto& root_groups = c->executors[0].identity.groups;
  EXPECT_NE(std::find(root_groups.begin(), root_groups.end(), 0u), root_groups.end());

  struct passwd* nobody = getpwnam("nobody");
  ASSERT_NE(nobody, nullptr);
  const uid_t nobody_uid = nobody->pw_uid;
  const gid_t nobody_gid = nobody->pw_gid;
  c = parse(one("    user: nobody\n"));
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].identity.uid, nobody_uid);
  EXPECT_EQ(c->executors[0].identity.gid, nobody_gid);
  const auto& groups = c->executors[0].identity.groups;
  EXPECT_NE(std::find(groups.begin(), groups.end(), nobody_gid), groups.end());

  c = parse(one("    user: nobody:0\n"));
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].identity.uid, nobody_uid);
  EXPECT_EQ(c->executors[0].identity.gid, 0u);

  c = parse(one("    user: 1000\n"));
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].identity.uid, 1000u);
  EXPECT_EQ(c->executors[0].identity.gid, 1000u);
  EXPECT_TRUE(c->executors[0].identity.groups.empty());

  c = parse(one("    user: \"1000:2000\"\n"));
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].identity.uid, 1000u);
  EXPECT_EQ(c->executors[0].identity.gid, 2000u);

  struct group* root_group = getgrgid(0);
  ASSERT_NE(root_group, nullptr);
  c = parse(one(std::string("    user: \"1000:") + root_group->gr_name + "\"\n"));
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].identity.gid, 0u);
}

TEST(Config, CapabilitiesResolved) {
  auto c = parse(one("    cap_drop: [all]\n    cap_add: [net_bind_service, CAP_CHOWN]\n"));
  ASSERT_TRUE(c) << c.error().what();
  const auto& e = c->executors[0];
  EXPECT_EQ(e.cap_drop, std::vector<std::string>{"ALL"});
  EXPECT_EQ(e.cap_add, (std::vector<std::string>{"CAP_NET_BIND_SERVICE", "CAP_CHOWN"}));
  EXPECT_EQ(e.capabilities, (1ULL << 10) | 1ULL);

  c = parse(one("    cap_add: [ALL]\n    cap_drop: [SYS_ADMIN]\n"));
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_TRUE(c->executors[0].capabilities & 1ULL);
  EXPECT_FALSE(c->executors[0].capabilities & (1ULL << 21));
}

TEST(Config, MountsAndLimits) {
  auto c = parse(one(R"(    tmpfs:
      /tmp: "rw,noexec,nosuid,nodev,size=64m,mode=1777,uid=0,gid=0,nr_inodes=10k"
      /run: "size=10%"
      /scratch: ""
    volumes:
      - /usr/share:/share
      - /usr/share/doc:/docs:ro
      - /usr/lib:/lib2:rw
    rlimits:
      nofile: 64
      RLIMIT_CORE: 0
      stack: unlimited
      nproc: { soft: 10, hard: 20 }
    seccomp_profile: unconfined
    hostname: my-box.local
)"));
  ASSERT_TRUE(c) << c.error().what();
  const auto& e = c->executors[0];
  ASSERT_EQ(e.tmpfs.size(), 3u);
  EXPECT_EQ(e.tmpfs[1].target, "/run");
  EXPECT_EQ(e.tmpfs[2].options, "");
  ASSERT_EQ(e.volumes.size(), 3u);
  EXPECT_FALSE(e.volumes[0].read_only);  // Docker/Wippy default: rw
  EXPECT_TRUE(e.volumes[1].read_only);
  EXPECT_FALSE(e.volumes[2].read_only);
  ASSERT_EQ(e.rlimits.size(), 4u);
  const rlimits::Limit* nofile = find_limit(e, RLIMIT_NOFILE);
  ASSERT_NE(nofile, nullptr);
  EXPECT_EQ(nofile->soft, std::min<rlim_t>(64, current_hard(RLIMIT_NOFILE)));
  EXPECT_EQ(nofile->hard, std::min<rlim_t>(64, current_hard(RLIMIT_NOFILE)));
  const rlimits::Limit* stack = find_limit(e, RLIMIT_STACK);
  ASSERT_NE(stack, nullptr);
  EXPECT_EQ(stack->hard, current_hard(RLIMIT_STACK));  // lowered to what we may set
  const rlimits::Limit* nproc = find_limit(e, RLIMIT_NPROC);
  ASSERT_NE(nproc, nullptr);
  EXPECT_EQ(nproc->soft, std::min<rlim_t>(10, current_hard(RLIMIT_NPROC)));
  EXPECT_EQ(nproc->hard, std::min<rlim_t>(20, current_hard(RLIMIT_NPROC)));
  ASSERT_NE(find_limit(e, RLIMIT_CORE), nullptr);
  EXPECT_EQ(e.seccomp_profile, "unconfined");
  EXPECT_EQ(e.hostname, "my-box.local");
}

TEST(Config, SeccompProfilePath) {
  char path[] = "/tmp/cloister-config-test-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  close(fd);
  auto c = parse(one(std::string("    seccomp_profile: ") + path + "\n"));
  unlink(path);
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->executors[0].seccomp_profile, path);
}

TEST(Config, LoadMissingFileIsNotFound) {
  auto c = load_config("/nonexistent/cloister/x.yaml");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().kind, ErrorKind::NotFound);
  EXPECT_NE(c.error().message.find("/nonexistent/cloister/x.yaml"), std::string::npos);
}

TEST(Config, LoadDirectoryIsInvalid) {
  auto c = load_config("/tmp");
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().kind, ErrorKind::Invalid);
  EXPECT_NE(c.error().message.find("/tmp"), std::string::npos);
}

TEST(Config, LoadErrorsNameTheFile) {
  char path[] = "/tmp/cloister-config-test-XXXXXX";
  int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string text = "executors:\n  - name: a\n    memory_limit: lots\n";
  ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  auto c = load_config(path);
  unlink(path);
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().kind, ErrorKind::Invalid);
  EXPECT_EQ(c.error().message, std::string(path) +
                                   ":3: executors[0].memory_limit: expected a byte size (integer "
                                   "or 512m/1g), got \"lots\"");
}

TEST(Config, UnknownKeyAtEachLevel) {
  struct Case {
    std::string yaml;
    std::string prefix;
  };
  const Case cases[] = {
      {"executors:\n  - name: a\ndaemon: {}\n", "test.yaml:3: daemon: unknown field"},
      {"executors:\n  - name: a\n    memroy_limit: 1\n",
       "test.yaml:3: executors[0].memroy_limit: unknown field (did you mean memory_limit?)"},
      {"executors:\n  - name: a\n    cwd: /x\n",
       "test.yaml:3: executors[0].cwd: unknown field (did you mean default_work_dir?)"},
      {"executors:\n  - name: a\n    rlimits:\n      nofile: {soft: 1, hard: 2, max: 3}\n",
       "test.yaml:4: executors[0].rlimits.nofile.max: unknown field"},
  };
  for (const auto& c : cases) {
    auto r = parse(c.yaml);
    ASSERT_FALSE(r) << c.yaml;
    EXPECT_EQ(r.error().kind, ErrorKind::Invalid);
    EXPECT_EQ(r.error().message.rfind(c.prefix, 0), 0u) << r.error().message;
  }
}

// Each bad config must fail with kind Invalid, and a message that starts with
// "test.yaml:<line>: <path>: " and contains `what`.
struct BadCase {
  const char* name;
  std::string yaml;
  int line;
  std::string path;
  std::string what;
};

void PrintTo(const BadCase& c, std::ostream* os) {
  *os << c.name;
}

class ConfigBad : public ::testing::TestWithParam<BadCase> {};

TEST_P(ConfigBad, ErrorNamesLineAndField) {
  const BadCase& c = GetParam();
  auto r = parse(c.yaml);
  ASSERT_FALSE(r) << "accepted:\n" << c.yaml;
  EXPECT_EQ(r.error().kind, ErrorKind::Invalid);
  const std::string prefix =
      std::string(kSource) + ":" + std::to_string(c.line) + ": " + c.path + ": ";
  EXPECT_EQ(r.error().message.rfind(prefix, 0), 0u)
      << "want prefix: " << prefix << "\n got: " << r.error().message;
  EXPECT_NE(r.error().message.find(c.what), std::string::npos)
      << "want: " << c.what << "\n got: " << r.error().message;
}

const BadCase kBadCases[] = {
    // Document and top level.
    {"NoExecutors", "{}\n", 1, "executors", "required"},
    {"EmptyFile", "", 1, "executors", "required"},
    {"ExecutorsEmpty", "executors: []\n", 1, "executors", "at least one executor"},
    {"ExecutorsNotList", "executors:\n  shell: {}\n", 2, "executors", "expected a list"},
    {"TopLevelList", "- a\n- b\n", 1, "(top level)", "expected a mapping"},
    {"UnknownSection", "executors:\n  - name: a\ndaemon:\n  socket: /run/x\n", 3, "daemon",
     "unknown field"},
    {"SyntaxError", "executors:\n  - name: a\n    cap_drop: [ALL\n", 3, "yaml", "column"},
    {"SyntaxErrorMidFile", "executors:\n  - name: a\n    kind: host: x\n  - name: b\n", 3, "yaml",
     "illegal map value"},
    {"SyntaxErrorIndent", "executors:\n  - name: a\n    kind: host\n   pids_limit: 1\n", 4, "yaml",
     "column"},
    {"MergeKey", "executors:\n  - name: a\n    <<: {pids_limit: 1}\n", 3, "executors[0][\"<<\"]",
     "merge keys are not supported"},
    {"TwoDocuments", "executors:\n  - name: a\n---\nexecutors: []\n", 3, "(top level)",
     "only one YAML document"},
    {"StrayComma", "# a comment\n, executors: []\n", 2, "yaml", "unexpected \",\" (column 1)"},
    {"ExecutorNotMapping", "executors:\n  - shell\n", 2, "executors[0]", "expected a mapping"},
    // name and kind.
    {"NameMissing", "executors:\n  - kind: host\n", 2, "executors[0].name", "required"},
    {"NameBadChars", "executors:\n  - name: a b\n", 2, "executors[0].name", "\"a b\""},
    {"NameTooLong", "executors:\n  - name: " + std::string(65, 'x') + "\n", 2, "executors[0].name",
     "expected 1 to 64"},
    {"NameNull", "executors:\n  - name:\n    kind: host\n", 2, "executors[0].name",
     "expected a string, got nothing"},
    {"NameDuplicate", "executors:\n  - name: a\n  - name: b\n  - name: a\n", 4, "executors[2].name",
     "duplicate executor name \"a\" (first at line 2)"},
    {"ContainerBadImage", "executors:\n  - name: a\n    kind: container\n    image: Bad/Name\n", 4,
     "executors[0].image", "bad repository component"},
    {"KindDockerNoImage", "executors:\n  - name: a\n    kind: exec.docker\n", 2,
     "executors[0].image", "required for a container executor"},
    {"ContainerHostPaths",
     "executors:\n  - name: a\n    kind: container\n    image: x\n    host_paths: [/usr]\n", 2,
     "executors[0]", "host_paths and masked_paths are for host executors"},
    {"KindUnknown", "executors:\n  - name: a\n    kind: vm\n", 3, "executors[0].kind",
     "expected host (exec.native) or container (exec.docker), got \"vm\""},
    {"ImageOnHost", one("    image: busybox\n"), 4, "executors[0].image",
     "only valid for container executors"},
    {"DuplicateKey", one("    pids_limit: 1\n    pids_limit: 2\n"), 5, "executors[0].pids_limit",
     "given twice (first at line 4)"},
    {"UnknownExecutorKey", one("    mem_limit: 1\n"), 4, "executors[0].mem_limit",
     "did you mean memory_limit?"},
    {"SecondExecutor", "executors:\n  - name: a\n  - name: b\n    memory_limit: lots\n", 4,
     "executors[1].memory_limit", "got \"lots\""},
    // Numbers.
    {"MemoryWord", one("    memory_limit: lots\n"), 4, "executors[0].memory_limit",
     "expected a byte size (integer or 512m/1g), got \"lots\""},
    {"MemoryNegative", one("    memory_limit: -1\n"), 4, "executors[0].memory_limit", "\"-1\""},
    {"MemoryOverflow", one("    memory_limit: 99999999999999999999\n"), 4,
     "executors[0].memory_limit", "expected a byte size"},
    {"MemoryFloat", one("    memory_limit: 1.5g\n"), 4, "executors[0].memory_limit",
     "expected a byte size"},
    {"CpuQuotaSmall", one("    cpu_quota: 500\n"), 4, "executors[0].cpu_quota", "at least 1000"},
    {"CpuQuotaFloat", one("    cpu_quota: 0.5\n"), 4, "executors[0].cpu_quota",
     "expected a non-negative integer"},
    {"PidsNegative", one("    pids_limit: -1\n"), 4, "executors[0].pids_limit",
     "expected a non-negative integer (0 = unlimited), got \"-1\""},
    {"PidsQuoted", one("    pids_limit: \"64\"\n"), 4, "executors[0].pids_limit",
     "(a quoted string)"},
    {"PidsTooMany", one("    pids_limit: 5000000\n"), 4, "executors[0].pids_limit",
     "at most 4194304"},
    {"PidsOverflow", one("    pids_limit: 184467440737095516160\n"), 4, "executors[0].pids_limit",
     "too large"},
    {"PidsLeadingZero", one("    pids_limit: 010\n"), 4, "executors[0].pids_limit",
     "expected a non-negative integer"},
    {"BoolYes", one("    read_only_rootfs: yes\n"), 4, "executors[0].read_only_rootfs",
     "expected true or false, got \"yes\""},
    {"BoolQuoted", one("    no_new_privileges: \"true\"\n"), 4, "executors[0].no_new_privileges",
     "expected true or false"},
    {"BoolNumber", one("    no_new_privileges: 1\n"), 4, "executors[0].no_new_privileges",
     "expected true or false"},
    {"TimeoutWord", one("    timeout: soon\n"), 4, "executors[0].timeout", "expected a duration"},
    {"TimeoutNegative", one("    timeout: -5s\n"), 4, "executors[0].timeout",
     "expected a duration"},
    {"TimeoutTwice", one("    timeout: 1s\n    default_timeout: 2s\n"), 5,
     "executors[0].default_timeout", "not both"},
    // Sysctls: the facility's rule, by key's value line.
    {"SysctlNotNamespaced", one("    sysctl:\n      kernel.core_pattern: '|/x'\n"), 5,
     "executors[0].sysctl[\"kernel.core_pattern\"]", "not kept per namespace"},
    {"SysctlNetWithHostNetwork",
     one("    network_mode: host\n    sysctl:\n      net.ipv4.ip_forward: 1\n"), 6,
     "executors[0].sysctl[\"net.ipv4.ip_forward\"]", "host's network namespace"},
    {"SysctlNotAMapping", one("    sysctl: [a]\n"), 4, "executors[0].sysctl", "expected a mapping"},
    {"SysctlValueList", one("    sysctl:\n      kernel.sem: [1, 2]\n"), 5,
     "executors[0].sysctl[\"kernel.sem\"]", "expected a value"},
    // Network.
    {"NetworkBridge", one("    network_mode: bridge\n"), 4, "executors[0].network_mode",
     "not supported yet"},
    {"NetworkUnknown", one("    network_mode: wifi\n"), 4, "executors[0].network_mode",
     "expected none or host, got \"wifi\""},
    // Paths.
    {"WorkDirRelative", one("    default_work_dir: app\n"), 4, "executors[0].default_work_dir",
     "must be an absolute path"},
    {"WorkDirDotDot", one("    default_work_dir: /app/../etc\n"), 4,
     "executors[0].default_work_dir", "\"..\" component"},
    {"WorkDirDoubleSlash", one("    default_work_dir: /app//x\n"), 4,
     "executors[0].default_work_dir", "\"//\""},
    {"WorkDirTrailingSlash", one("    default_work_dir: /app/\n"), 4,
     "executors[0].default_work_dir", "ends in \"/\""},
    {"WorkDirNul", one("    default_work_dir: \"/a\\0b\"\n"), 4, "executors[0].default_work_dir",
     "NUL"},
    {"HostPathsTwice", one("    host_paths: [/usr, /usr]\n"), 4, "executors[0].host_paths[1]",
     "listed twice"},
    {"HostPathsRoot", one("    host_paths:\n      - /usr\n      - /\n"), 6,
     "executors[0].host_paths[1]", "\"/\" is not allowed"},
    {"MaskedPathRelative", one("    masked_paths: [etc/shadow]\n"), 4,
     "executors[0].masked_paths[0]", "must be an absolute path"},
    // Environment and whitelist.
    {"EnvKeyEquals", one("    default_env:\n      A=B: x\n"), 5,
     "executors[0].default_env[\"A=B\"]", "must not contain '='"},
    {"EnvKeyEmpty", one("    default_env:\n      \"\": x\n"), 5, "executors[0].default_env",
     "must not be empty"},
    {"EnvValueNull", one("    default_env:\n      PATH:\n      LANG: C\n"), 5,
     "executors[0].default_env.PATH", "expected a string, got nothing"},
    {"EnvValueList", one("    default_env:\n      PATH: [a, b]\n"), 5,
     "executors[0].default_env.PATH", "expected a string, got a list"},
    {"EnvNotMap", one("    default_env: [PATH=/bin]\n"), 4, "executors[0].default_env",
     "expected a mapping"},
    {"EnvDuplicate", one("    default_env:\n      A: 1\n      A: 2\n"), 6,
     "executors[0].default_env.A", "given twice"},
    {"WhitelistEmpty", one("    command_whitelist: []\n"), 4, "executors[0].command_whitelist",
     "empty whitelist"},
    {"WhitelistString", one("    command_whitelist: git status\n"), 4,
     "executors[0].command_whitelist", "expected a list"},
    {"WhitelistEmptyCommand", one("    command_whitelist:\n      - ls\n      - \"\"\n"), 6,
     "executors[0].command_whitelist[1]", "must not be empty"},
    // Capabilities.
    {"CapUnknown", one("    cap_drop: [ALL, FLY]\n"), 4, "executors[0].cap_drop[1]",
     "unknown capability \"FLY\""},
    {"CapBoth", one("    cap_add: [NET_RAW]\n    cap_drop: [CAP_NET_RAW]\n"), 4,
     "executors[0].cap_add", "CAP_NET_RAW is in both"},
    // tmpfs.
    {"TmpfsBadOption", one("    tmpfs:\n      /tmp: \"rw,noexec,sizee=1m\"\n"), 5,
     "executors[0].tmpfs[\"/tmp\"]", "unknown option \"sizee=1m\""},
    {"TmpfsBadSize", one("    tmpfs:\n      /tmp: \"size=12x\"\n"), 5,
     "executors[0].tmpfs[\"/tmp\"]", "bad option \"size=12x\""},
    {"TmpfsBadMode", one("    tmpfs:\n      /tmp: \"mode=999\"\n"), 5,
     "executors[0].tmpfs[\"/tmp\"]", "bad option \"mode=999\""},
    {"TmpfsConflict", one("    tmpfs:\n      /tmp: \"rw,ro\"\n"), 5, "executors[0].tmpfs[\"/tmp\"]",
     "\"ro\" conflicts with \"rw\""},
    {"TmpfsEmptyOption", one("    tmpfs:\n      /tmp: \"rw,,noexec\"\n"), 5,
     "executors[0].tmpfs[\"/tmp\"]", "empty option"},
    {"TmpfsRelative", one("    tmpfs:\n      tmp: \"\"\n"), 5, "executors[0].tmpfs.tmp",
     "must be an absolute path"},
    {"TmpfsRoot", one("    tmpfs:\n      /: \"\"\n"), 5, "executors[0].tmpfs[\"/\"]",
     "cannot replace"},
    {"TmpfsTwice", one("    tmpfs:\n      /tmp: \"\"\n      /tmp: \"rw\"\n"), 6,
     "executors[0].tmpfs[\"/tmp\"]", "given twice (first at line 5)"},
    // Volumes.
    {"VolumeNoTarget", one("    volumes: [/usr/share/doc]\n"), 4, "executors[0].volumes[0]",
     "expected host:container[:ro|rw]"},
    {"VolumeBadMode", one("    volumes:\n      - /usr/share/doc:/docs:rx\n"), 5,
     "executors[0].volumes[0]", "unknown volume option \"rx\""},
    {"VolumeBadOptionInList", one("    volumes:\n      - /usr/share/doc:/docs:ro,idmapp\n"), 5,
     "executors[0].volumes[0]", "unknown volume option \"idmapp\" (expected ro, rw or idmap)"},
    {"UsernsBad", one("    userns: keep-id\n"), 4, "executors[0].userns",
     "expected auto, sandbox or host, got \"keep-id\""},
    {"UsernsSizeZero", one("    userns: sandbox\n    userns_size: 0\n"), 5,
     "executors[0].userns_size", "a range of 0 ids"},
    {"UsernsSizeHuge", one("    userns: sandbox\n    userns_size: 4294967295\n"), 5,
     "executors[0].userns_size", "must be at most 4294967294, got 4294967295"},
    {"UsernsRangeBad", one("    userns_range: \"100000\"\n"), 4, "executors[0].userns_range",
     "expected BASE:SIZE or UIDBASE:GIDBASE:SIZE"},
    {"UsernsRangeRoot", one("    userns_range: \"0:65536\"\n"), 4, "executors[0].userns_range",
     "maps host id 0 (root); use userns: host"},
    {"UsernsRangeOverflow", one("    userns_range: \"4294901760:65536\"\n"), 4,
     "executors[0].userns_range", "ends past the last host id"},
    {"VolumeMissingSource", one("    volumes:\n      - /nonexistent/cloister:/x\n"), 5,
     "executors[0].volumes[0]", "does not exist"},
    {"VolumeRootTarget", one("    volumes: [\"/usr:/\"]\n"), 4, "executors[0].volumes[0]",
     "must not be \"/\""},
    {"VolumeRelativeSource", one("    volumes: [\"usr:/x\"]\n"), 4, "executors[0].volumes[0]",
     "host path \"usr\" must be an absolute path"},
    {"VolumeSameTargetAsTmpfs",
     one("    tmpfs:\n      /data: \"\"\n    volumes:\n      - /usr:/data\n"), 7,
     "executors[0].volumes[0]", "already used (tmpfs at line 5)"},
    // User and host name.
    {"UserUnknown", one("    user: no-such-user-cloister\n"), 4, "executors[0].user",
     "not found on this host"},
    {"UserEmptyGroup", one("    user: \"1000:\"\n"), 4, "executors[0].user", "expected uid[:gid]"},
    {"UserUidRange", one("    user: \"4294967295\"\n"), 4, "executors[0].user",
     "must be a decimal number from 0 to 4294967294"},
    {"UserLeadingZero", one("    user: \"0100:0100\"\n"), 4, "executors[0].user", "gid \"0100\""},
    {"UserGroupUnknown", one("    user: \"1000:no-such-group-cloister\"\n"), 4, "executors[0].user",
     "group \"no-such-group-cloister\" not found"},
    {"HostnameBad", one("    hostname: bad_host\n"), 4, "executors[0].hostname",
     "expected a host name"},
    // rlimits.
    {"RlimitUnknown", one("    rlimits:\n      nofiles: 10\n"), 5, "executors[0].rlimits.nofiles",
     "unknown resource limit"},
    {"RlimitNegative", one("    rlimits:\n      nofile: -1\n"), 5, "executors[0].rlimits.nofile",
     "expected a non-negative integer or \"unlimited\""},
    {"RlimitNoHard", one("    rlimits:\n      nofile: { soft: 10 }\n"), 5,
     "executors[0].rlimits.nofile.hard", "required"},
    {"RlimitSoftAboveHard", one("    rlimits:\n      nofile: { soft: 20, hard: 10 }\n"), 5,
     "executors[0].rlimits.nofile", "soft limit 20 is above hard limit 10"},
    {"RlimitSameResource", one("    rlimits:\n      nofile: 10\n      RLIMIT_NOFILE: 10\n"), 6,
     "executors[0].rlimits.RLIMIT_NOFILE", "given twice"},
    // seccomp.
    {"SeccompRelative", one("    seccomp_profile: profile.json\n"), 4,
     "executors[0].seccomp_profile", "must be an absolute path"},
    {"SeccompMissing", one("    seccomp_profile: /nonexistent/cloister.json\n"), 4,
     "executors[0].seccomp_profile", "No such file or directory"},
    {"SeccompDirectory", one("    seccomp_profile: /tmp\n"), 4, "executors[0].seccomp_profile",
     "not a regular file"},
};

INSTANTIATE_TEST_SUITE_P(Config, ConfigBad, ::testing::ValuesIn(kBadCases),
                         [](const ::testing::TestParamInfo<BadCase>& info) {
                           return std::string(info.param.name);
                         });

// The user namespace: on by default, opted out of, or given a range; the
// idmap volume option.
TEST(Config, UserNamespaceFields) {
  auto c = parse_config(
      "executors:\n"
      "  - name: a\n"
      "  - name: b\n    userns: host\n"
      "  - name: c\n    userns_range: \"200000:300000:1000\"\n"
      "    volumes: [\"/usr:/u:ro,idmap\", \"/usr:/v:idmap\"]\n",
      "t.yaml");
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_FALSE(c->executors[0].userns_host);
  EXPECT_FALSE(c->executors[0].userns_range);
  EXPECT_TRUE(c->executors[1].userns_host);
  ASSERT_TRUE(c->executors[2].userns_range);
  EXPECT_EQ(*c->executors[2].userns_range, (userns::Map{200000, 300000, 1000}));
  ASSERT_EQ(c->executors[2].volumes.size(), 2u);
  EXPECT_TRUE(c->executors[2].volumes[0].idmap);
  EXPECT_TRUE(c->executors[2].volumes[0].read_only);
  EXPECT_TRUE(c->executors[2].volumes[1].idmap);
  EXPECT_FALSE(c->executors[2].volumes[1].read_only);
}

// userns: sandbox: a pool (userns_range, or the default) carved into ranges
// of userns_size, each after an id of its own that owns its namespace.
TEST(Config, UserNamespacePerSandbox) {
  auto c = parse_config(
      "executors:\n"
      "  - name: a\n    userns: sandbox\n"
      "  - name: b\n    userns: sandbox\n    userns_range: \"300000:400000:1000\"\n"
      "    userns_size: 99\n"
      "  - name: c\n    userns_size: 10\n"
      "  - name: d\n    userns: sandbox\n    userns_range: \"300000:10\"\n"
      "    userns_size: 10\n",
      "t.yaml");
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_TRUE(c->executors[0].userns_sandbox);
  EXPECT_FALSE(c->executors[0].userns_host);
  if (::geteuid() != 0) return;  // lowering needs root (the unprivileged test has the rest)
  auto a = lower_executor(c->executors[0]);
  ASSERT_TRUE(a) << a.error().what();
  ASSERT_TRUE(a->userns_pool);
  EXPECT_EQ(*a->userns_pool, userns::default_pool());
  EXPECT_EQ(*a->userns, a->userns_pool->slot(0));
  auto b = lower_executor(c->executors[1]);
  ASSERT_TRUE(b) << b.error().what();
  EXPECT_EQ(b->userns_pool->slots(), 10u);
  EXPECT_EQ(*b->userns, (userns::Map{300001, 400001, 99}));
  auto cc = lower_executor(c->executors[2]);
  ASSERT_FALSE(cc);
  EXPECT_NE(cc.error().what().find("executor 'c': userns_size needs userns: sandbox"),
            std::string::npos)
      << cc.error().what();
  auto d = lower_executor(c->executors[3]);
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().what().find("a pool of 10 ids holds no range of 10"), std::string::npos)
      << d.error().what();
}

TEST(UserNs, PoolSlotsNeverMapAnOwner) {
  const userns::Pool p = userns::default_pool();
  EXPECT_EQ(p.uid_base, userns::kDefaultBase + userns::kDefaultSize);  // after the shared range
  EXPECT_EQ(p.slots(), 4094u);
  ASSERT_TRUE(userns::check(p));
  for (uint32_t k : {0u, 1u, 2u, p.slots() - 1}) {
    const userns::Map m = p.slot(k);
    EXPECT_EQ(m.size, 65536u);
    EXPECT_LT(uint64_t{m.uid_base} + m.size, uint64_t{userns::kDefaultPoolEnd} + 1);
    // The owner of slot k is mapped by no slot: not by k, nor by k - 1.
    EXPECT_EQ(userns::owner_of(m), p.uid_base + k * 65537u);
    if (k > 0)
      EXPECT_LT(uint64_t{p.slot(k - 1).uid_base} + 65536, uint64_t{userns::owner_of(m)} + 1);
  }
  EXPECT_FALSE(userns::check(userns::Pool{0, 0, 1000, 10}));  // maps host root
  EXPECT_FALSE(userns::check(userns::Pool{0xffff0000u, 0xffff0000u, 0x20000, 100}));
}

TEST(UserNs, RangesFromSubidFiles) {
  char d[] = "/tmp/cloister-unit-XXXXXX";
  ASSERT_NE(::mkdtemp(d), nullptr);
  const std::string dir = d, su = dir + "/subuid", sg = dir + "/subgid";
  auto put = [](const std::string& p, const std::string& t) {
    FILE* f = std::fopen(p.c_str(), "w");
    std::fputs(t.c_str(), f);
    std::fclose(f);
  };
  put(su, "# comment\nalice:100000:65536\ncloister:300000:131072\n");
  put(sg, "cloister:400000:65536\n");
  auto m = userns::from_subid(su, sg, "cloister");
  ASSERT_TRUE(m) << m.error().what();
  ASSERT_TRUE(*m);
  EXPECT_EQ(**m, (userns::Map{300000, 400000, 65536}));  // the smaller count
  auto none = userns::from_subid(su, sg, "nobody-here");
  ASSERT_TRUE(none);
  EXPECT_FALSE(*none);
  auto half = userns::from_subid(su, sg, "alice");
  ASSERT_FALSE(half);
  EXPECT_NE(half.error().message.find("has a range in " + su + " but not in " + sg),
            std::string::npos)
      << half.error().what();
  put(sg, "cloister:4x:65536\n");
  auto bad = userns::from_subid(su, sg, "cloister");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find(sg + ":1: bad range for cloister"), std::string::npos)
      << bad.error().what();
  auto missing = userns::from_subid(dir + "/none", dir + "/none2", "cloister");
  ASSERT_TRUE(missing);
  EXPECT_FALSE(*missing);
  std::system(("rm -rf " + dir).c_str());
  EXPECT_EQ(userns::parse("100000:65536").value(), (userns::Map{100000, 100000, 65536}));
  EXPECT_FALSE(userns::check_ids({100000, 100000, 1000}, 1000, 0, nullptr, 0));
  EXPECT_TRUE(userns::check_ids({100000, 100000, 1000}, 999, 999, nullptr, 0));
}

// oci/bundle.h: config.json lowered onto the one spec, every field with a
// good value and bad ones, each error naming its JSON path. No root needed.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <nlohmann/json.hpp>

#include "isolate/capabilities.h"
#include "isolate/devices.h"
#include "isolate/signals.h"
#include "oci/bundle.h"
#include "runtime/oci_runtime.h"

namespace cloister::oci {
namespace {

using json = nlohmann::json;

class Bundle : public ::testing::Test {
 protected:
  void SetUp() override {
    char t[] = "/tmp/cloister-bundle-XXXXXX";
    dir = ::mkdtemp(t);
    ::mkdir((dir + "/rootfs").c_str(), 0755);
    base = json::parse(default_config_json());
  }
  void TearDown() override { std::system(("rm -rf '" + dir + "'").c_str()); }
  Result<cloister::oci::Bundle> lower(const json& c) { return parse_bundle(c.dump(), dir, "c1"); }
  // The error of lowering c, which must fail.
  std::string error(const json& c) {
    auto b = lower(c);
    EXPECT_FALSE(b) << c.dump();
    return b ? "" : b.error().what();
  }
  std::string dir;
  json base;
};

TEST_F(Bundle, TheDefaultSpecLowers) {
  auto b = lower(base);
  ASSERT_TRUE(b) << b.error().what();
  EXPECT_EQ(b->command.argv, std::vector<std::string>{"sh"});
  EXPECT_EQ(b->command.work_dir, "/");
  EXPECT_TRUE(b->terminal);
  EXPECT_EQ(b->spec.hostname, "cloister");
  ASSERT_TRUE(b->spec.image_root);
  EXPECT_EQ(b->spec.image_root->layers, std::vector<std::string>{dir + "/rootfs"});
  EXPECT_TRUE(b->spec.read_only_rootfs);
  EXPECT_TRUE(b->spec.no_new_privileges);
  EXPECT_EQ(b->spec.network, NetworkMode::None);
  // The default range when the config has no user namespace.
  ASSERT_TRUE(b->spec.userns);
  EXPECT_NE(b->spec.userns->uid_base, 0u);
  EXPECT_EQ(b->spec.capabilities & (uint64_t{1} << *capabilities::from_name("CAP_KILL")),
            uint64_t{1} << *capabilities::from_name("CAP_KILL"));
  ASSERT_EQ(b->spec.rlimits.size(), 1u);
  EXPECT_EQ(b->spec.rlimits[0].soft, 1024u);
  EXPECT_EQ(b->spec.limits.pids_max, 2048u) << "bounded by default";
  EXPECT_TRUE(b->warnings.empty()) << b->warnings.front();
}

TEST_F(Bundle, ProcessFields) {
  json c = base;
  c["process"]["args"] = {"/bin/echo", "a b"};
  c["process"]["env"] = {"A=1", "EMPTY="};
  c["process"]["cwd"] = "/work//dir/../x/";
  c["process"]["user"] = {{"uid", 1000}, {"gid", 1001}, {"additionalGids", {5, 6}}, {"umask", 18}};
  c["process"]["consoleSize"] = {{"height", 40}, {"width", 120}};
  c["process"]["noNewPrivileges"] = false;
  c["process"]["capabilities"]["ambient"] = {"CAP_KILL"};
  auto b = lower(c);
  ASSERT_TRUE(b) << b.error().what();
  EXPECT_EQ(b->command.argv[1], "a b");
  EXPECT_EQ(b->command.env, (std::vector<std::string>{"A=1", "EMPTY="}));
  EXPECT_EQ(b->command.work_dir, "/work/x") << "cleaned as runc does";
  EXPECT_EQ(b->spec.user.uid, 1000u);
  EXPECT_EQ(b->spec.user.gid, 1001u);
  EXPECT_EQ(b->spec.user.groups, (std::vector<gid_t>{5, 6}));
  EXPECT_EQ(*b->umask, 022u);
  EXPECT_EQ(b->rows, 40);
  EXPECT_EQ(b->cols, 120);
  EXPECT_FALSE(b->spec.no_new_privileges);
  // A non-root user keeps what survives its exec: the ambient set.
  EXPECT_EQ(b->spec.capabilities, uint64_t{1} << *capabilities::from_name("CAP_KILL"));
}

// In the container's user namespace: CAP_SYS_ADMIN (new namespaces of its
// own) is dropped; capabilities that hold over nothing there (NET_RAW,
// MKNOD, ...) are kept apart as inert, each with a warning.
TEST_F(Bundle, CapabilitiesAUserNamespaceCannotUseAreDroppedWithAWarning) {
  json c = base;
  for (const char* k : {"bounding", "effective", "permitted"})
    for (const char* cap : {"CAP_SYS_ADMIN", "CAP_NET_RAW", "CAP_MKNOD"})
      c["process"]["capabilities"][k].push_back(cap);
  auto b = lower(c);
  ASSERT_TRUE(b) << b.error().what();
  auto bit = [](const char* n) { return uint64_t{1} << *capabilities::from_name(n); };
  EXPECT_EQ(b->spec.capabilities & bit("CAP_SYS_ADMIN"), 0u);
  EXPECT_EQ(b->spec.inert_capabilities & bit("CAP_SYS_ADMIN"), 0u);
  EXPECT_EQ(b->spec.capabilities & (bit("CAP_NET_RAW") | bit("CAP_MKNOD")), 0u);
  EXPECT_EQ(b->spec.inert_capabilities, bit("CAP_NET_RAW") | bit("CAP_MKNOD"));
  EXPECT_NE(b->spec.capabilities & bit("CAP_CHOWN"), 0u);
  std::string all;
  for (const auto& w : b->warnings) all += w + "\n";
  EXPECT_NE(all.find("CAP_SYS_ADMIN would hold over nothing"), std::string::npos) << all;
  EXPECT_NE(all.find("CAP_NET_RAW, CAP_MKNOD hold over nothing"), std::string::npos) << all;
  // With the host's user namespace (userns=host) every capability is real.
  c["annotations"]["run.cloister.userns"] = "host";
  b = lower(c);
  ASSERT_TRUE(b) << b.error().what();
  EXPECT_EQ(b->spec.inert_capabilities, 0u);
  EXPECT_NE(b->spec.capabilities & bit("CAP_SYS_ADMIN"), 0u);
}

TEST_F(Bundle, MountsNamespacesAndResources) {
  json c = base;
  ::mkdir((dir + "/data").c_str(), 0755);
  c["mounts"].push_back({{"destination", "/data"},
                         {"type", "bind"},
                         {"source", "data"},
                         {"options", {"rbind", "ro", "rprivate"}}});
  c["mounts"].push_back({{"destination", "/scratch"},
                         {"type", "tmpfs"},
                         {"source", "tmpfs"},
                         {"options", {"nosuid", "size=1m", "mode=1777"}}});
  c["mounts"].push_back({{"destination", "/sys"}, {"type", "sysfs"}, {"source", "sysfs"}});
  c["mounts"].push_back({{"destination", "/sys/fs/cgroup"}, {"type", "cgroup"}});
  c["mounts"].push_back({{"destination", "/dev/mqueue"}, {"type", "mqueue"}});
  c["linux"]["namespaces"] = {{{"type", "pid"}},
                              {{"type", "ipc"}},
                              {{"type", "uts"}},
                              {{"type", "mount"}},
                              {{"type", "network"}, {"path", "/var/run/netns/x"}},
                              {{"type", "user"}}};
  c["linux"]["uidMappings"] = {{{"containerID", 0}, {"hostID", 200000}, {"size", 65536}}};
  c["linux"]["gidMappings"] = {{{"containerID", 0}, {"hostID", 300000}, {"size", 65536}}};
  c["linux"]["resources"] = {
      {"memory", {{"limit", 64 << 20}}},
      {"cpu",
       {{"quota", 50000}, {"period", 100000}, {"shares", 1024}, {"cpus", "0"}, {"mems", "0"}}},
      {"pids", {{"limit", 32}}},
      {"devices", {{{"allow", false}, {"access", "rwm"}}}}};
  c["linux"]["cgroupsPath"] = "/default/c1";
  c["hostname"] = "box-1";
  c["annotations"] = {{"a", "b"}};
  auto b = lower(c);
  ASSERT_TRUE(b) << b.error().what();
  ASSERT_EQ(b->spec.volumes.size(), 1u);
  EXPECT_EQ(b->spec.volumes[0].source, dir + "/data");
  EXPECT_EQ(b->spec.volumes[0].target, "/data");
  EXPECT_TRUE(b->spec.volumes[0].read_only);
  ASSERT_EQ(b->spec.tmpfs.size(), 1u);
  EXPECT_EQ(b->spec.tmpfs[0].options, "nosuid,size=1m,mode=1777");
  EXPECT_EQ(b->spec.netns_path, "/var/run/netns/x");
  ASSERT_TRUE(b->spec.userns);
  EXPECT_EQ(b->spec.userns->uid_base, 200000u);
  EXPECT_EQ(b->spec.userns->gid_base, 300000u);
  EXPECT_EQ(b->spec.limits.memory_max, uint64_t{64} << 20);
  EXPECT_EQ(b->spec.limits.cpu_quota, 50000u);
  EXPECT_EQ(b->spec.limits.pids_max, 32u);
  EXPECT_EQ(b->spec.limits.cpu_shares, 1024u) << "as given: the cgroup module converts for v2";
  EXPECT_EQ(b->spec.limits.cpu_weight, 0u);
  EXPECT_EQ(b->spec.limits.cpuset_cpus, "0");
  EXPECT_EQ(b->spec.limits.cpuset_mems, "0");
  EXPECT_EQ(b->cgroups_path, "default/c1");
  EXPECT_EQ(b->spec.hostname, "box-1");
  EXPECT_EQ(b->annotations.at("a"), "b");
  EXPECT_TRUE(b->spec.sysfs);
  EXPECT_TRUE(b->spec.mqueue);
  bool cgroup_warned = false;
  for (const auto& w : b->warnings) cgroup_warned |= w.starts_with("mounts[6]: cgroup");
  EXPECT_TRUE(cgroup_warned);
  // Without a network namespace: the host's network.
  c["linux"]["namespaces"].erase(4);
  auto h = lower(c);
  ASSERT_TRUE(h) << h.error().what();
  EXPECT_EQ(h->spec.network, NetworkMode::Host);
}

TEST_F(Bundle, BadValuesNameTheirJsonPath) {
  struct Case {
    std::function<void(json&)> edit;
    std::string want;
  };
  const Case cases[] = {
      {[](json& c) { c.erase("ociVersion"); }, "ociVersion: missing"},
      {[](json& c) { c["ociVersion"] = "0.9"; }, "ociVersion: '0.9'"},
      {[](json& c) { c["root"]["path"] = "nope"; }, "root.path: '"},
      {[](json& c) { c["root"]["readonly"] = "yes"; }, "root.readonly: expected a boolean"},
      {[](json& c) { c["process"]["args"] = json::array(); }, "process.args: must not be empty"},
      {[](json& c) {
         c["process"]["args"] = {"sh", 3};
       },
       "process.args[1]: expected a string"},
      {[](json& c) { c["process"]["env"] = {"NOEQUALS"}; }, "process.env[0]: 'NOEQUALS'"},
      {[](json& c) { c["process"]["cwd"] = "rel"; }, "process.cwd: 'rel' is not an absolute"},
      {[](json& c) { c["process"]["user"]["uid"] = -1; }, "process.user.uid: expected a non-neg"},
      {[](json& c) { c["process"]["user"]["uid"] = 70000; }, "process.user: "},
      {[](json& c) { c["process"]["capabilities"]["bounding"] = {"CAP_NOPE"}; },
       "process.capabilities.bounding[0]: unknown capability 'CAP_NOPE'"},
      {[](json& c) { c["process"]["rlimits"][0]["type"] = "RLIMIT_NOPE"; },
       "process.rlimits[0].type: unknown rlimit"},
      {[](json& c) { c["process"]["rlimits"][0]["soft"] = 4096; }, "process.rlimits[0]: "},
      {[](json& c) {
         c["process"]["consoleSize"] = {{"height", 1}};
       },
       "process.consoleSize.width: missing"},
      {[](json& c) { c["hostname"] = "-bad"; }, "hostname: "},
      {[](json& c) { c["mounts"][0]["destination"] = "proc"; },
       "mounts[0].destination: 'proc' is not an absolute path"},
      {[](json& c) {
         c["mounts"].push_back({{"destination", "/x"}, {"type", "nfs"}});
       },
       "mounts[3].type: 'nfs'"},
      {[](json& c) {
         c["mounts"].push_back(
             {{"destination", "/x"}, {"type", "tmpfs"}, {"options", {"size=lots"}}});
       },
       "mounts[3].options: "},
      {[](json& c) {
         c["mounts"].push_back({{"destination", "/x"}, {"type", "bind"}});
       },
       "mounts[3].source: missing"},
      {[](json& c) {
         c["linux"]["namespaces"].push_back({{"type", "pid"}});
       },
       "namespace 'pid' given twice"},
      {[](json& c) {
         c["linux"]["namespaces"][0] = {{"type", "pid"}, {"path", "/proc/1/ns/pid"}};
       },
       "linux.namespaces[0].path: joining a pid namespace is not supported"},
      {[](json& c) {
         c["linux"]["namespaces"].push_back({{"type", "bogus"}});
       },
       "unknown namespace type 'bogus'"},
      {[](json& c) {
         c["linux"]["namespaces"].push_back({{"type", "user"}});
         c["linux"]["uidMappings"] = {{{"containerID", 1}, {"hostID", 100000}, {"size", 10}}};
         c["linux"]["gidMappings"] = c["linux"]["uidMappings"];
       },
       "linux.uidMappings[0].containerID: must be 0"},
      {[](json& c) {
         c["linux"]["resources"] = {{"memory", {{"limit", -5}}}};
       },
       "linux.resources.memory.limit"},
      {[](json& c) {
         c["linux"]["resources"] = {{"cpu", {{"shares", "x"}}}};
       },
       "linux.resources.cpu.shares"},
      {[](json& c) { c["linux"]["cgroupsPath"] = "system.slice:cri:c1"; },
       "linux.cgroupsPath: 'system.slice:cri:c1' is a systemd"},
      {[](json& c) {
         c["linux"]["seccomp"] = {{"defaultAction", "SCMP_ACT_NOPE"}};
       },
       "linux.seccomp: "},
      {[](json& c) {
         c["linux"]["devices"] = {{{"path", "/dev/sda"}}};
       },
       "linux.devices[0].type: '' is not c, u, b or p"},
      {[](json& c) {
         c["linux"]["devices"] = {{{"path", "/dev/sda"}, {"type", "b"}, {"major", 8}}};
       },
       "linux.devices[0].minor: is required for type b"},
      {[](json& c) {
         c["linux"]["devices"] = {{{"path", "/dev/sda"},
                                   {"type", "b"},
                                   {"major", 8},
                                   {"minor", 0},
                                   {"fileMode", 04666}}};
       },
       "linux.devices[0].fileMode: 2486 is above 511"},
      {[](json& c) {
         c["linux"]["devices"] = {{{"path", "dev/x"}, {"type", "p"}}};
       },
       "linux.devices[0].path: 'dev/x' is not an absolute path"},
      {[](json& c) {
         c["linux"]["resources"] = {{"devices", {{{"access", "rwm"}}}}};
       },
       "linux.resources.devices[0].allow: is required"},
      {[](json& c) {
         c["linux"]["resources"] = {{"devices", {{{"allow", true}, {"type", "x"}}}}};
       },
       "linux.resources.devices[0]: device type 'x' is not a, c or b"},
      {[](json& c) {
         c["linux"]["resources"] = {
             {"devices", {{{"allow", true}, {"type", "c"}, {"major", 1}, {"access", "rwx"}}}}};
       },
       "linux.resources.devices[0]: device access 'rwx' is not a subset of rwm"},
      {[](json& c) {
         c["linux"]["resources"] = {{"devices", {{{"allow", true}, {"major", 1}}}}};
       },
       "linux.resources.devices[0]: a rule of type a (every device) takes no major"},
      {[](json& c) {
         c["linux"]["resources"] = {
             {"devices", {{{"allow", true}, {"type", "c"}, {"major", 5000}}}}};
       },
       "linux.resources.devices[0]: device major 5000 is out of range"},
      {[](json& c) {
         c["linux"]["resources"] = {
             {"devices",
              {{{"allow", false}, {"access", "rwm"}},
               {{"allow", true}, {"type", "c"}, {"major", 1}, {"access", "rw"}},
               {{"allow", false}, {"type", "c"}, {"major", 1}, {"minor", 11}, {"access", "rw"}}}}};
       },
       "linux.resources.devices: device rule 'c 1:11 rw' (deny) takes access from part of the "
       "earlier 'c 1:* rw'"},
      {[](json& c) {
         c["linux"]["personality"] = {{"domain", "LINUX32"}};
       },
       "linux.personality"},
      {[](json& c) {
         c["hooks"] = {{"createContainer", {{{"path", "/bin/true"}}}}};
       },
       "hooks.createContainer"},
      {[](json& c) {
         c["hooks"] = {{"prestart", {{{"path", "true"}}}}};
       },
       "hooks.prestart[0].path: 'true' is not an absolute path"},
      {[](json& c) {
         c["annotations"] = {{"run.cloister.userns", "maybe"}};
       },
       "run.cloister.userns"},
  };
  for (const auto& cs : cases) {
    json c = base;
    cs.edit(c);
    std::string e = error(c);
    EXPECT_NE(e.find(cs.want), std::string::npos) << "want '" << cs.want << "', got: " << e;
    EXPECT_EQ(e.rfind("config.json: ", 0), 0u) << e;
  }
  EXPECT_NE(parse_bundle("{", dir, "c1").error().what().find("not valid JSON"), std::string::npos);
}

// Device nodes with their type, numbers, mode and owner, and the device
// policy: the config's rules, then the defaults every container's /dev
// needs (as runc appends its own).
TEST_F(Bundle, DevicesAndTheirPolicy) {
  json c = base;
  c["linux"]["devices"] = {
      {{"path", "/dev/fuse"}, {"type", "c"}, {"major", 10}, {"minor", 229}, {"uid", 7}},
      {{"path", "/dev/disk/x"}, {"type", "b"}, {"major", 8}, {"minor", 1}, {"fileMode", 0600}},
      {{"path", "/dev/p"}, {"type", "p"}}};
  c["linux"]["resources"] = {
      {"devices",
       {{{"allow", false}, {"access", "rwm"}},
        {{"allow", true}, {"type", "c"}, {"major", 10}, {"minor", 229}, {"access", "rw"}}}}};
  auto b = lower(c);
  ASSERT_TRUE(b) << b.error().what();
  ASSERT_EQ(b->spec.device_nodes.size(), 3u);
  EXPECT_EQ(b->spec.device_nodes[0].path, "/dev/fuse");
  EXPECT_EQ(b->spec.device_nodes[0].mode, S_IFCHR | 0666);
  EXPECT_EQ(b->spec.device_nodes[0].major, 10u);
  EXPECT_EQ(b->spec.device_nodes[0].minor, 229u);
  EXPECT_EQ(b->spec.device_nodes[0].uid, 7u);
  EXPECT_EQ(b->spec.device_nodes[1].mode, S_IFBLK | 0600);
  EXPECT_EQ(b->spec.device_nodes[2].mode, S_IFIFO | 0666);
  ASSERT_TRUE(b->spec.limits.devices);
  const auto& rules = *b->spec.limits.devices;
  const auto defaults = devices::container_defaults(b->spec.device_nodes);
  ASSERT_EQ(rules.size(), 2 + defaults.size());
  EXPECT_EQ(devices::v1_line(rules[0]), "a");
  EXPECT_FALSE(rules[0].allow);
  EXPECT_EQ(devices::v1_line(rules[1]), "c 10:229 rw");
  EXPECT_EQ(devices::v1_line(rules[2]), "c 1:3 rwm");
  EXPECT_EQ(devices::v1_line(rules[rules.size() - 2]), "c 10:229 m");
  EXPECT_EQ(devices::v1_line(rules.back()), "b 8:1 m");
  // No rules given: the defaults alone, over everything denied.
  auto plain = lower(base);
  ASSERT_TRUE(plain);
  ASSERT_TRUE(plain->spec.limits.devices);
  EXPECT_EQ(plain->spec.limits.devices->size(), devices::container_defaults({}).size());
  // A policy that allows every device already gets nothing appended (a
  // default there could only clash with the config's own denies).
  json open = base;
  open["linux"]["resources"] = {
      {"devices",
       {{{"allow", true}, {"access", "rwm"}},
        {{"allow", false}, {"type", "c"}, {"major", -1}, {"access", "w"}}}}};
  auto o = lower(open);
  ASSERT_TRUE(o) << o.error().what();
  ASSERT_TRUE(o->spec.limits.devices);
  EXPECT_EQ(o->spec.limits.devices->size(), 2u);
}

TEST_F(Bundle, FieldsTheHostCannotHonourAreWarnedByPath) {
  json c = base;
  c["process"]["apparmorProfile"] = "docker-default";
  c["linux"]["intelRdt"] = {{"closID", "x"}};
  auto b = lower(c);
  ASSERT_TRUE(b) << b.error().what();
  std::string all;
  for (const auto& w : b->warnings) all += w + "\n";
  for (const char* want : {"process.apparmorProfile", "linux.intelRdt"})
    EXPECT_NE(all.find(want), std::string::npos) << want << "\n" << all;
}

// ipc and uts namespaces may be joined by path (a pod's); with a uts
// namespace joined and no hostname, the namespace keeps its own.
TEST_F(Bundle, IpcAndUtsNamespacesMayBeJoinedByPath) {
  json c = base;
  c.erase("hostname");
  for (auto& n : c["linux"]["namespaces"])
    if (n["type"] == "ipc" || n["type"] == "uts")
      n["path"] = "/proc/42/ns/" + n["type"].get<std::string>();
  auto b = lower(c);
  ASSERT_TRUE(b) << b.error().what();
  EXPECT_EQ(b->spec.ipc_ns_path, "/proc/42/ns/ipc");
  EXPECT_EQ(b->spec.uts_ns_path, "/proc/42/ns/uts");
  EXPECT_EQ(b->spec.hostname, "");
  c["hostname"] = "pod-1";
  b = lower(c);
  ASSERT_TRUE(b) << b.error().what();
  EXPECT_EQ(b->spec.hostname, "pod-1");
  for (auto& n : c["linux"]["namespaces"])
    if (n["type"] == "mount") n["path"] = "/proc/42/ns/mnt";
  EXPECT_NE(error(c).find("joining a mount namespace is not supported"), std::string::npos);
}

// maskedPaths and readonlyPaths: cloister's own /proc list taken as it is,
// any other absolute path kept for the mount plan; a relative one refused.
TEST_F(Bundle, MaskedAndReadOnlyPaths) {
  json c = base;
  c["linux"]["maskedPaths"] = {"/proc/kcore", "/etc/secret", "/sys/firmware"};
  c["linux"]["readonlyPaths"] = {"/proc/sys", "/usr/share"};
  auto b = lower(c);
  ASSERT_TRUE(b) << b.error().what();
  EXPECT_EQ(b->spec.masked_paths, (std::vector<std::string>{"/etc/secret", "/sys/firmware"}));
  EXPECT_EQ(b->spec.read_only_paths, (std::vector<std::string>{"/usr/share"}));
  c["linux"]["maskedPaths"] = {"masked-relpath"};
  EXPECT_NE(error(c).find("linux.maskedPaths[0]: 'masked-relpath' is not an absolute path"),
            std::string::npos);
  c["linux"]["maskedPaths"] = "/x";
  EXPECT_NE(error(c).find("linux.maskedPaths: expected an array"), std::string::npos);
}

// linux.sysctl through the sysctl facility's one rule, by key; oomScoreAdj
// kept for the runtime to set (-1000 to 1000); a hook's timeout positive.
TEST_F(Bundle, SysctlsOomScoreAndHookTimeouts) {
  json c = base;
  c["linux"]["sysctl"] = {{"net.ipv4.ip_default_ttl", "99"}, {"fs.mqueue.msg_max", "20"}};
  c["process"]["oomScoreAdj"] = -500;
  auto b = lower(c);
  ASSERT_TRUE(b) << b.error().what();
  ASSERT_EQ(b->spec.sysctls.size(), 2u);
  EXPECT_EQ(b->spec.sysctls[0].key, "fs.mqueue.msg_max");  // JSON objects are sorted
  EXPECT_EQ(b->spec.sysctls[1].value, "99");
  EXPECT_EQ(b->oom_score_adj, -500);
  auto e = parse_exec_process(*b, R"({"args":["sh"],"cwd":"/"})");
  ASSERT_TRUE(e) << e.error().what();
  EXPECT_TRUE(e->spec.sysctls.empty()) << "exec sets no sysctls: the container has them";
  EXPECT_EQ(e->oom_score_adj, -500) << "exec inherits the container's score";

  struct Case {
    std::function<void(json&)> edit;
    std::string want;
  };
  const Case cases[] = {
      {[](json& c) {
         c["linux"]["sysctl"] = {{"kernel.core_pattern", "|/x"}};
       },
       "linux.sysctl[\"kernel.core_pattern\"]: sysctl kernel.core_pattern: not kept per namespace"},
      {[](json& c) {
         c["linux"]["sysctl"] = {{"kernel.shmmax", 5}};
       },
       "linux.sysctl[\"kernel.shmmax\"]: expected a string"},
      {[](json& c) {
         c["linux"]["sysctl"] = {{"net..ipv4", "1"}};
       },
       "not a sysctl name"},
      {[](json& c) {
         c["linux"]["sysctl"] = {{"net/ipv4/../../vm/x", "1"}};
       },
       "not a sysctl name"},
      {[](json& c) {
         c["linux"]["sysctl"] = {{"kernel.sem", "1\n2"}};
       },
       "a control character"},
      {[](json& c) {
         c["linux"]["sysctl"] = {{"kernel.msgmax", ""}};
       },
       "1 to 4096 bytes"},
      {[](json& c) {
         auto& ns = c["linux"]["namespaces"];
         for (size_t i = 0; i < ns.size(); ++i)
           if (ns[i]["type"] == "network") ns.erase(i);
         c["linux"]["sysctl"] = {{"net.ipv4.ip_forward", "1"}};
       },
       "shares the host's network namespace"},
      {[](json& c) { c["linux"]["sysctl"] = json::array(); }, "linux.sysctl: expected an object"},
      {[](json& c) { c["process"]["oomScoreAdj"] = 1001; },
       "process.oomScoreAdj: 1001 is out of range"},
      {[](json& c) { c["process"]["oomScoreAdj"] = "high"; },
       "process.oomScoreAdj: expected an integer"},
      {[](json& c) {
         c["hooks"]["prestart"] = {{{"path", "/bin/true"}, {"timeout", 0}}};
       },
       "hooks.prestart[0].timeout: must be positive"},
      {[](json& c) {
         c["hooks"]["prestart"] = {{{"path", "/bin/true"}, {"timeout", -3}}};
       },
       "hooks.prestart[0].timeout: must be positive"},
  };
  for (const auto& cs : cases) {
    json x = base;
    cs.edit(x);
    const std::string err = error(x);
    EXPECT_NE(err.find(cs.want), std::string::npos) << "want '" << cs.want << "', got: " << err;
  }
}

// Profiles as podman and containerd write them: other ABIs, a syscall named
// again after an unconditional rule (libseccomp keeps the first), and
// podman's /dev/shm bind.
TEST_F(Bundle, ClientProfilesAndShmBindsLower) {
  json c = base;
  c["linux"]["seccomp"] = {
      {"defaultAction", "SCMP_ACT_ERRNO"},
      {"architectures", {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"}},
      {"syscalls",
       {{{"names", {"setns", "read"}}, {"action", "SCMP_ACT_ALLOW"}},
        {{"names", {"setns"}}, {"action", "SCMP_ACT_ERRNO"}, {"errnoRet", 1}}}}};
  c["mounts"].push_back({{"destination", "/dev/shm"},
                         {"type", "bind"},
                         {"source", dir},
                         {"options", {"bind", "rprivate"}}});
  auto b = lower(c);
  ASSERT_TRUE(b) << b.error().what();
  auto p = json::parse(b->seccomp_json);
  EXPECT_EQ(p["architectures"], json({"SCMP_ARCH_X86_64"}));
  ASSERT_EQ(p["syscalls"].size(), 1u) << p.dump();
  EXPECT_EQ(p["syscalls"][0]["action"], "SCMP_ACT_ALLOW");
  EXPECT_TRUE(b->spec.volumes.empty()) << "/dev/shm is the container's own";
  std::string all;
  for (const auto& w : b->warnings) all += w + "\n";
  for (const char* want : {"linux.seccomp.architectures", "linux.seccomp.syscalls", "/dev/shm"})
    EXPECT_NE(all.find(want), std::string::npos) << want << "\n" << all;
}

TEST(OciRuntime, SignalsAndIds) {
  EXPECT_EQ(*signals::parse("15"), 15);
  EXPECT_EQ(*signals::parse("TERM"), 15);
  EXPECT_EQ(*signals::parse("SIGKILL"), 9);
  EXPECT_EQ(*signals::parse("sigusr1"), 10);
  EXPECT_EQ(*signals::parse("kill"), 9);
  EXPECT_EQ(*signals::parse("RTMIN"), SIGRTMIN);
  EXPECT_EQ(*signals::parse("SIGRTMIN+3"), SIGRTMIN + 3);
  EXPECT_EQ(*signals::parse("rtmax-1"), SIGRTMAX - 1);
  for (const char* bad :
       {"0", "SIGNOPE", "99", "", "RTMINX", "RTMIN-1", "RTMAX+1", "RTMIN+99", "-9", "1e3"})
    EXPECT_FALSE(signals::parse(bad)) << bad;
  EXPECT_NE(signals::parse("SIGNOPE").error().message.find("unknown signal 'SIGNOPE'"),
            std::string::npos);
  EXPECT_TRUE(ociruntime::check_id("abc-1.2_x+y"));
  EXPECT_FALSE(ociruntime::check_id(""));
  EXPECT_FALSE(ociruntime::check_id(".."));
  EXPECT_FALSE(ociruntime::check_id("a/b"));
}

TEST(OciRuntime, FeaturesAndSpecAreJson) {
  auto f = json::parse(features_json(), nullptr, false);
  ASSERT_FALSE(f.is_discarded());
  EXPECT_EQ(f["ociVersionMax"], kOciVersion);
  EXPECT_TRUE(f["linux"]["namespaces"].is_array());
  auto s = json::parse(default_config_json(), nullptr, false);
  ASSERT_FALSE(s.is_discarded());
  EXPECT_EQ(s["root"]["path"], "rootfs");
}

}  // namespace
}  // namespace cloister::oci

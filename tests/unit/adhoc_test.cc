// Flags onto the one spec (runtime/adhoc.h): each flag is the field it
// means, its errors name the flag, and a configured executor has its fields overridden.
#include "runtime/adhoc.h"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <fstream>

#include "temp_dir.h"

namespace cloister {
namespace {

using Words = std::vector<std::string>;

CommandLineSplit split(const Words& w) {
  return split_command_line(w, [](std::string_view n) {
    return n == "-m" || n == "--memory" || n == "-e" || n == "-v" || n == "-x";
  });
}

TEST(Adhoc, CommandLineSplitsAtTheImage) {
  struct Case {
    Words args;
    size_t options_end, command_begin;
  };
  const Case cases[] = {
      {{"-m", "512m", "alpine", "ls", "-la"}, 2, 2},
      {{"--memory=1g", "alpine", "sh", "-c", "x"}, 1, 1},
      {{"-m512m", "alpine"}, 1, 1},
      {{"--host", "-e", "A=B", "--", "-x", "y"}, 3, 4},  // after --, all command
      {{"-it", "alpine", "sh"}, 1, 1},                   // a cluster of flags
      {{"-ie", "A=B", "alpine"}, 2, 2},                  // a cluster ending in a value's option
      {{"-ieA=B", "alpine"}, 1, 1},
      {{"--unknown", "alpine"}, 1, 1},  // taken as a flag: the parser names it
      {{}, 0, 0},
      {{"-m"}, 1, 1},  // the value missing: the parser says so
      {{"-", "x"}, 0, 0},
  };
  for (const auto& c : cases) {
    auto s = split(c.args);
    EXPECT_EQ(s.options_end, c.options_end) << ::testing::PrintToString(c.args);
    EXPECT_EQ(s.command_begin, c.command_begin) << ::testing::PrintToString(c.args);
  }
}

TEST(Adhoc, EachFlagIsItsField) {
  testing::TempDir d;
  AdhocFlags f;
  f.host = true;
  f.memory = "64m";
  f.memory_swap = "64m";
  f.cpus = "1.5";
  f.pids_limit = "-1";
  f.network = "host";
  f.hostname = "box";
  f.user = "1000:1000";
  f.cap_add = {"NET_BIND_SERVICE,CHOWN"};
  f.volumes = {d.path + ":/data:ro", d.path + ":/out"};
  f.tmpfs = {"/scratch:size=8m", "/run"};
  f.ulimits = {"nofile=100:200", "core=0", "nproc=-1"};
  f.security_opts = {"no-new-privileges=false"};
  auto e = lower_adhoc(f);
  ASSERT_TRUE(e) << e.error().what();
  EXPECT_EQ(e->name, "adhoc");
  EXPECT_EQ(e->kind, ExecutorKind::Host);
  EXPECT_EQ(e->memory_limit, 64u << 20);
  EXPECT_EQ(e->cpu_quota, 150000u);
  EXPECT_EQ(e->pids_limit, 0u) << "-1 is none, as podman's";
  EXPECT_EQ(e->network_mode, NetworkMode::Host);
  EXPECT_EQ(e->hostname, "box");
  EXPECT_EQ(e->identity.uid, 1000u);
  EXPECT_EQ(e->cap_add, (std::vector<std::string>{"CAP_NET_BIND_SERVICE", "CAP_CHOWN"}));
  ASSERT_EQ(e->volumes.size(), 2u);
  EXPECT_TRUE(e->volumes[0].read_only);
  EXPECT_FALSE(e->volumes[1].read_only) << "rw by default, as docker's";
  ASSERT_EQ(e->tmpfs.size(), 2u);
  EXPECT_FALSE(e->no_new_privileges);
  EXPECT_FALSE(e->read_only_rootfs) << "a new sandbox's root is writable, as podman's";
  ASSERT_EQ(e->rlimits.size(), 3u);
  rlimit own{};
  ASSERT_EQ(::getrlimit(RLIMIT_NPROC, &own), 0);
  for (const auto& l : e->rlimits) {
    if (l.resource == RLIMIT_NPROC) {
      EXPECT_EQ(l.hard, own.rlim_max) << "-1: as high as allowed";
    }
    if (l.resource == RLIMIT_NOFILE) {
      EXPECT_EQ(l.soft, 100u);
    }
  }

  AdhocFlags ro;
  ro.image = "localhost/x:1";
  ro.read_only = true;
  ro.cpu_quota = "50000";
  ro.entrypoint = "/bin/tool";
  auto c = lower_adhoc(ro);
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->kind, ExecutorKind::Container);
  EXPECT_EQ(c->image, "localhost/x:1");
  EXPECT_TRUE(c->read_only_rootfs);
  EXPECT_EQ(c->cpu_quota, 50000u);
  EXPECT_EQ(c->entrypoint, std::optional<std::vector<std::string>>({"/bin/tool"}));
  ro.entrypoint = "";
  auto none = lower_adhoc(ro);
  ASSERT_TRUE(none) << none.error().what();
  EXPECT_EQ(none->entrypoint, std::optional<std::vector<std::string>>(std::vector<std::string>{}));
  AdhocFlags host_ep;
  host_ep.host = true;
  host_ep.entrypoint = "/bin/x";
  auto refused = lower_adhoc(host_ep);
  ASSERT_FALSE(refused);
  EXPECT_TRUE(
      refused.error().message.starts_with("--entrypoint '/bin/x': only valid for container"))
      << refused.error().message;
  EXPECT_EQ(c->pids_limit, kDefaultPidsLimit) << "bounded unless said otherwise";
}

TEST(Adhoc, ErrorsNameTheFlag) {
  auto err = [](AdhocFlags f) {
    if (f.image.empty() && !f.host) f.host = true;
    auto e = lower_adhoc(f);
    EXPECT_FALSE(e);
    return e ? std::string() : e.error().message;
  };
  AdhocFlags f;
  f.memory = "lots";
  EXPECT_EQ(err(f), "-m/--memory 'lots': expected a byte size (integer or 512m/1g), got \"lots\"");
  f = {};
  f.hostname = "-bad";
  EXPECT_TRUE(err(f).starts_with("--hostname '-bad': ")) << err(f);
  f = {};
  f.volumes = {"/nonexistent-xyz:/x"};
  EXPECT_TRUE(err(f).starts_with("-v/--volume: ")) << err(f);
  f = {};
  f.cap_add = {"SYS_NOPE"};
  EXPECT_TRUE(err(f).starts_with("--cap-add: ")) << err(f);
  f = {};
  f.tmpfs = {"/t:rw,ro"};
  EXPECT_TRUE(err(f).starts_with("--tmpfs: ")) << err(f);
  f = {};
  f.ulimits = {"nofile"};
  EXPECT_TRUE(err(f).starts_with("--ulimit 'nofile': ")) << err(f);
  f = {};
  f.ulimits = {"bogus=1"};
  EXPECT_TRUE(err(f).starts_with("--ulimit: ")) << err(f);
  f = {};
  f.cpus = "0.000004";
  EXPECT_TRUE(err(f).starts_with("--cpus '0.000004': at least 0.01")) << "not rounded to none";
  f = {};
  f.hostname = std::string(300, 'a') + "\n";
  EXPECT_LT(err(f).size(), 250u) << "a long value is cut in the error";
  f = {};
  f.cpus = "0";
  EXPECT_TRUE(err(f).starts_with("--cpus '0'")) << err(f);
  f = {};
  f.cpus = "1";
  f.cpu_quota = "1000";
  EXPECT_EQ(err(f), "give --cpus or --cpu-quota, not both");
  f = {};
  f.memory_swap = "1g";
  EXPECT_TRUE(err(f).starts_with("--memory-swap '1g'")) << err(f);
  f = {};
  f.security_opts = {"apparmor=x"};
  EXPECT_TRUE(err(f).starts_with("--security-opt 'apparmor=x'")) << err(f);
  f = {};
  f.security_opts = {"seccomp=unconfined"};
  EXPECT_TRUE(err(f).find("always has a seccomp filter") != std::string::npos) << err(f);
  f = {};
  f.network = "bridge";
  EXPECT_TRUE(err(f).find("not supported yet") != std::string::npos) << err(f);
  f = {};
  f.image = "Bad Ref";
  EXPECT_TRUE(err(f).find("image") != std::string::npos) << err(f);
  f = {};
  f.image = "alpine";
  f.host = true;
  EXPECT_EQ(err(f), "give an image or --host, not both");
  EXPECT_FALSE(lower_adhoc(AdhocFlags{}));
}

TEST(Adhoc, AConfiguredExecutorsFieldsAreOverridden) {
  testing::TempDir d;
  const std::string cfg = d / "c.yaml";
  std::ofstream(cfg) << "executors:\n"
                        "  - name: box\n"
                        "    kind: host\n"
                        "    memory_limit: 1g\n"
                        "    cap_add: [CHOWN]\n"
                        "    tmpfs: { /tmp: \"size=8m\" }\n"
                        "  - name: other\n"
                        "    kind: host\n";
  AdhocFlags f;
  f.memory = "128m";
  f.cap_add = {"KILL"};
  f.tmpfs = {"/work"};
  auto e = lower_adhoc(f, cfg, "box");
  ASSERT_TRUE(e) << e.error().what();
  EXPECT_EQ(e->name, "box");
  EXPECT_EQ(e->memory_limit, 128u << 20);
  EXPECT_EQ(e->cap_add, (std::vector<std::string>{"CAP_CHOWN", "CAP_KILL"}));
  EXPECT_EQ(e->tmpfs.size(), 2u);
  EXPECT_TRUE(e->read_only_rootfs) << "the configured executor's own";
  f = {};
  f.tmpfs = {"/tmp:size=1m"};
  f.ulimits = {"nofile=64"};
  auto over = lower_adhoc(f, cfg, "box");
  ASSERT_TRUE(over) << over.error().what();
  ASSERT_EQ(over->tmpfs.size(), 1u) << "a flag replaces the executor's own /tmp";
  EXPECT_EQ(over->tmpfs[0].options, "size=1m");
  f.tmpfs = {"/a", "/a:size=1m"};
  auto twice = lower_adhoc(f, cfg, "box");
  ASSERT_FALSE(twice);
  EXPECT_NE(twice.error().message.find("/a is given twice"), std::string::npos);
  f = {};
  f.cap_drop = {"CHOWN"};
  auto clash = lower_adhoc(f, cfg, "box");
  if (!clash) {
    EXPECT_EQ(clash.error().message.find(":2:"), std::string::npos)
        << "no line of the emitted document: " << clash.error().message;
  }
  auto none = lower_adhoc({}, cfg, "nope");
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().kind, ErrorKind::NotFound);
  AdhocFlags img;
  img.image = "alpine";
  EXPECT_FALSE(lower_adhoc(img, cfg, "box")) << "-x is the sandbox; an image is another";
  // A new sandbox in that config, beside its executors.
  AdhocFlags fresh;
  fresh.host = true;
  auto n = lower_adhoc(fresh, cfg);
  ASSERT_TRUE(n) << n.error().what();
  EXPECT_EQ(n->name, "adhoc");
  // The config's own errors, as its loader says them.
  std::ofstream(d / "bad.yaml") << "executors:\n  - name: box\n    memory_limit: lots\n";
  auto bad = lower_adhoc(fresh, d / "bad.yaml");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("bad.yaml:3: executors[0].memory_limit"), std::string::npos)
      << bad.error().message;
}

}  // namespace
}  // namespace cloister

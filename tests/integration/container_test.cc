// Integration tests of the container executor: an image built by the test
// from busybox-static (tools/oci-build.py, three layers, a deletion and an
// opaque directory, gzip and zstd), loaded into a temporary store with
// oci::load_images, run through the library and through `cloister exec`.
// The same isolation checks as for the host executor, seen from inside.
#include <gtest/gtest.h>

#include <sys/stat.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <set>
#include <sstream>
#include <string>

#include "oci/load.h"
#include "runtime/executor.h"
#include "test_support.h"

using namespace cloister;
using namespace cloister::testing;

namespace {

class Container : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir = new TempDir;
    const std::string d = dir->path;
    // Layer 1: busybox, passwd, /opt/{a,b}, /etc/removed. Layer 2 (zstd):
    // /etc/motd. Layer 3: deletes /etc/removed, makes /opt opaque with /opt/c,
    // and a /link -> /etc symlink.
    state = new std::string(load_test_image(
        d,
        "mkdir -p l1/bin l1/etc l1/opt l1/work l1/proc l1/dev l1/tmp l2/etc l3/etc l3/opt;"
        "cp /bin/busybox l1/bin/; for c in sh ls cat echo id pwd touch env sleep ps hostname "
        "grep cut tr wc readlink mount stat; do ln -s busybox l1/bin/$c; done;"
        "printf 'root:x:0:0::/root:/bin/sh\\napp:x:1234:2345::/work:/bin/sh\\n' > l1/etc/passwd;"
        "printf 'root:x:0:\\napp:x:2345:\\n' > l1/etc/group;"
        "echo a > l1/opt/a; echo b > l1/opt/b; echo bye > l1/etc/removed;"
        "echo hello > l2/etc/motd; touch l3/etc/.wh.removed l3/opt/.wh..wh..opq; echo c > l3/opt/c;"
        "ln -s /etc l3/link",
        "--ref localhost/test/bb:1 "
        "--layer l1:gzip --layer l2:zstd --layer l3:none --entrypoint '[\"/bin/sh\",\"-c\"]' "
        "--cmd '[\"echo from-cmd\"]' --env PATH=/bin --env FROM_IMAGE=1 --env OVER=image "
        "--workdir /work --user app"));
    ASSERT_FALSE(state->empty());
  }
  static void TearDownTestSuite() {
    delete dir;
    delete state;
  }
  static ExecutorConfig config() {
    ExecutorConfig c;
    c.name = "box";
    c.kind = ExecutorKind::Container;
    c.image = "localhost/test/bb:1";
    c.state_dir = *state;
    return c;
  }
  static inline TempDir* dir = nullptr;
  static inline std::string* state = nullptr;
};

TEST_F(Container, ImageDefaultsEntrypointCmdEnvUserWorkdir) {
  if (unprivileged()) {
    // The image's USER app (1234) is not mapped without a subordinate
    // range: refused, naming it; the rest as the image's root.
    auto refused = Executor::create(config());
    ASSERT_FALSE(refused);
    EXPECT_NE(refused.error().what().find("user 1234:2345: an ordinary user's sandbox maps one"),
              std::string::npos)
        << refused.error().what();
    auto cfg = config();
    cfg.user = "root";
    EXPECT_EQ(run_ok(cfg, {}).out, "from-cmd\n");
    cfg.default_env = {{"OVER", "executor"}};
    EXPECT_EQ(run_ok(cfg, {"echo $FROM_IMAGE $OVER; id -u; id -g; pwd"}).out,
              "1 executor\n0\n0\n/work\n");
    return;
  }
  auto r = run_ok(config(), {});
  EXPECT_EQ(r.out, "from-cmd\n");
  auto cfg = config();
  cfg.default_env = {{"OVER", "executor"}};
  r = run_ok(cfg, {"echo $FROM_IMAGE $OVER; id -u; id -g; pwd"});
  EXPECT_EQ(r.out, "1 executor\n1234\n2345\n/work\n");
  cfg.user = "root";
  EXPECT_EQ(run_ok(cfg, {"id -u"}).out, "0\n");
}

TEST_F(Container, LayersWhiteoutsAndOpaqueDirectories) {
  auto cfg = config();
  if (unprivileged()) cfg.user = "root";  // (app is not mapped there)
  auto r = run_ok(cfg, {"cat /etc/motd; ls /opt; ls /etc; readlink /link"});
  EXPECT_EQ(r.out, "hello\nc\ngroup\nmotd\npasswd\n/etc\n");
}

TEST_F(Container, IsolatedLikeTheHostExecutor) {
  auto cfg = config();
  cfg.user = "root";
  auto r = run_ok(cfg, {"echo $$; cat /proc/1/comm; hostname; grep : /proc/net/dev | cut -d: -f1 "
                        "| tr -d ' '; grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status "
                        "| tr -d '\\t'; ls /usr 2>&1 | wc -l; ls /dev"});
  EXPECT_EQ(r.out,
            "2\ncloister-init\ncloister\nlo\nCapEff:0000000000000000\nNoNewPrivs:1\nSeccomp:2\n1\n"
            "fd\nfull\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero\n");
  // The root is read-only; /tmp is a tmpfs.
  r = run(cfg, {"touch /x"});
  EXPECT_NE(r.status.exit_code, 0);
  EXPECT_NE(r.err.find("Read-only file system"), std::string::npos) << r.err;
  EXPECT_EQ(run_ok(cfg, {"touch /tmp/x && echo ok"}).out, "ok\n");
}

// From its second sandbox on, a read-only container root comes from the
// executor's mount template: the same mounts, and a /tmp of its own.
TEST_F(Container, MountTemplateGivesTheSameRoot) {
  auto cfg = config();
  cfg.user = "root";
  cfg.tmpfs.push_back({"/scratch", "size=1m"});
  auto exec = Executor::create(cfg);
  ASSERT_TRUE(exec) << exec.error().what();
  auto view = [&](const std::string& cmd) {
    ExecRequest req;
    req.argv = {cmd};
    auto p = (*exec)->exec(std::move(req));
    EXPECT_TRUE(p) << p.error().what();
    if (!p || !(*p)->start()) return std::multiset<std::string>{"start failed"};
    RunResult r = collect(**p);
    EXPECT_EQ((*p)->wait()->exit_code, 0) << r.err;
    std::multiset<std::string> lines;  // mount order differs; the set may not
    std::istringstream in(r.out);
    for (std::string l; std::getline(in, l);) lines.insert(l);
    return lines;
  };
  const std::string cmd =
      "cut -d' ' -f5,6 /proc/self/mountinfo; cut -d- -f2- /proc/self/mountinfo | cut -d' ' -f2,4; "
      "ls / /dev /tmp /opt; cat /etc/motd; touch /x 2>/dev/null || echo root-ro; "
      "echo t > /tmp/t && echo tmp-rw";
  auto first = view(cmd);
  EXPECT_EQ(first.count("root-ro"), 1u);
  EXPECT_EQ(first.count("tmp-rw"), 1u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(view(cmd), first) << "sandbox " << i + 2;
  EXPECT_EQ(view("ls /tmp /scratch | wc -l"), (std::multiset<std::string>{"3"}));
}

TEST_F(Container, WritableRootIsPerProcessAndLeavesTheStoreAlone) {
  auto cfg = config();
  cfg.user = "root";
  cfg.read_only_rootfs = false;
  EXPECT_EQ(
      run_ok(cfg, {"echo new-4f1d > /etc/motd; rm /opt/c; cat /etc/motd; ls /opt | wc -l"}).out,
      "new-4f1d\n0\n");
  EXPECT_EQ(run_ok(cfg, {"cat /etc/motd; ls /opt"}).out, "hello\nc\n");
  EXPECT_EQ(shell("cat " + dir->path + "/l2/etc/motd"), "hello\n");
  EXPECT_EQ(shell("grep -rl new-4f1d " + *state + "/layers | wc -l"), "0\n");
}

TEST_F(Container, VolumesAndTmpfsOnTop) {
  TempDir host;
  write_text(host.path + "/in", "from-host\n");
  give_to_sandbox(host.path);
  auto cfg = config();
  cfg.user = "root";
  cfg.volumes.push_back({host.path, "/data/vol", false});
  cfg.tmpfs.push_back({"/scratch", "size=1m"});
  auto r = run_ok(cfg, {"cat /data/vol/in; echo out > /data/vol/out; touch /scratch/s && echo s"});
  EXPECT_EQ(r.out, "from-host\ns\n");
  EXPECT_EQ(read_text(host.path + "/out"), "out\n");
}

TEST_F(Container, MountPointThroughAnImageSymlinkRefused) {
  // /link is a symlink to /etc in the image: mounting on /link/x would be
  // resolved on the host before pivot_root.
  TempDir host;
  auto cfg = config();
  cfg.volumes.push_back({host.path, "/link/x", true});
  auto e = Executor::create(cfg);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().what().find("/link is a symlink in the image"), std::string::npos)
      << e.error().what();
}

TEST_F(Container, MissingImageFailsNamingIt) {
  // Not in the store, and the pull on first use finds no registry there.
  auto cfg = config();
  cfg.image = "127.0.0.1:1/test/absent:1";
  auto e = Executor::create(cfg);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().what().find("127.0.0.1:1/test/absent:1"), std::string::npos)
      << e.error().what();
}

// A sandbox described by flags alone (runtime/adhoc.h), docker's grammar:
// the image, then its command without `--`.
TEST_F(Container, CliAdhocRunsOfAnImageAndOfTheHost) {
  TempDir host;
  write_text(host.path + "/file", "from-host\n");
  // Readable by the sandbox's root, which is not host root.
  ASSERT_EQ(::chmod(host.path.c_str(), 0755), 0);
  ASSERT_EQ(::chmod((host.path + "/file").c_str(), 0644), 0);
  const std::string cli = std::string(CLOISTER_BIN_DIR) + "/cloister exec --state-dir " + *state +
                          " -c " + host.path + "/none.yaml ";
  // -c names no file: a new sandbox needs none (an -x would).
  const std::string cli_noconf =
      std::string(CLOISTER_BIN_DIR) + "/cloister exec --state-dir " + *state + " ";
  const std::string img = " localhost/test/bb:1 ";
  EXPECT_EQ(shell(cli_noconf + "-u 0 -v " + host.path + ":/mnt:ro" + img +
                  "'cat /mnt/file; touch /mnt/x 2>/dev/null || echo ro' 2>/dev/null"),
            "from-host\nro\n");
  EXPECT_EQ(shell(cli_noconf + "-u 0" + img + "'touch /new && echo wrote' 2>/dev/null"), "wrote\n")
      << "a new sandbox's root is writable, as podman's";
  EXPECT_EQ(shell(cli_noconf + "-u 0 --read-only" + img +
                  "'touch /new 2>/dev/null || echo refused' 2>/dev/null"),
            "refused\n");
  EXPECT_EQ(shell(cli_noconf + "-u 0" + img + "2>/dev/null"), "from-cmd\n") << "the image's Cmd";
  EXPECT_EQ(shell(cli_noconf + "-u 0 --entrypoint /bin/echo" + img + "hi 2>/dev/null"), "hi\n");
  EXPECT_EQ(shell(cli_noconf + "-u 0 --entrypoint /bin/echo" + img + "2>/dev/null"), "\n")
      << "--entrypoint goes without the image's Cmd, as docker's";
  EXPECT_EQ(shell(cli_noconf + "-u 0 --entrypoint ''" + img + "/bin/echo x 2>/dev/null"), "x\n");
  EXPECT_EQ(shell(cli_noconf + "-u 0 --hostname adhoc-box -e X=1 --tmpfs /scratch:size=1m" + img +
                  "'hostname; echo $X; stat -f -c %T /scratch' 2>/dev/null"),
            "adhoc-box\n1\ntmpfs\n");
  if (!unprivileged()) {
    // Limits reach the sandbox: the OOM killer at -m, fork refused at --pids-limit.
    const std::string bin = std::string(CLOISTER_BIN_DIR) + "/cloister exec --host ";
    EXPECT_EQ(::system((bin + "-m 32m tail /dev/zero 2>/dev/null").c_str()) >> 8, 137);
    EXPECT_EQ(shell(bin + "--pids-limit 4 sh -c 'for i in 1 2 3 4 5 6; do sleep 1 & done; wait' "
                          "2>&1 | grep -c 'fork'"),
              "1\n");
  }
  // Errors name the flag; nothing runs.
  std::string out;
  FILE* p = ::popen((cli_noconf + "-m lots" + img + "true 2>&1; echo rc=$?").c_str(), "r");
  char buf[4096];
  while (p && !std::feof(p)) out.append(buf, std::fread(buf, 1, sizeof buf, p));
  if (p) ::pclose(p);
  EXPECT_NE(out.find("-m/--memory 'lots'"), std::string::npos) << out;
  EXPECT_NE(out.find("rc=125"), std::string::npos) << out;
  // An -x narrowed by flags needs its config: a missing one is said.
  out.clear();
  p = ::popen((cli + "-x box -m 1g true 2>&1; echo rc=$?").c_str(), "r");
  while (p && !std::feof(p)) out.append(buf, std::fread(buf, 1, sizeof buf, p));
  if (p) ::pclose(p);
  EXPECT_NE(out.find("none.yaml"), std::string::npos) << out;
  EXPECT_NE(out.find("rc=125"), std::string::npos) << out;
  // The host's view, with the same flags.
  EXPECT_EQ(shell(std::string(CLOISTER_BIN_DIR) + "/cloister exec --host -v " + host.path +
                  ":/mnt:ro --network none cat /mnt/file 2>/dev/null"),
            "from-host\n");
}

// docker save's format and stdin (issue 15): a docker-archive with a layer
// repeated as a symlink, as a file and gzip'd on stdin.
TEST_F(Container, CliLoadsDockerArchivesAndStdin) {
  TempDir t;
  const std::string d = t.path;
  shell("set -e; cd " + d +
        "; mkdir -p a/bin a/etc b/etc; cp /bin/busybox a/bin/; ln -s busybox a/bin/cat; "
        "printf 'root:x:0:0::/:/bin/cat\n' > a/etc/passwd; echo docker > b/etc/motd; "
        "python3 " CLOISTER_SOURCE_DIR
        "/tools/oci-build.py layout --ref localhost/test/docker:1 --layer a:none --layer b:none "
        "--layer b:none --cmd '[\"cat\",\"/etc/motd\"]' --env PATH=/bin --docker-archive d.tar "
        ">/dev/null");
  const std::string cli = std::string(CLOISTER_BIN_DIR) + "/cloister ";
  std::string out = shell(cli + "load --state-dir " + d + "/s1 " + d + "/d.tar");
  EXPECT_NE(out.find("loaded localhost/test/docker:1"), std::string::npos) << out;
  EXPECT_EQ(shell(cli + "exec --state-dir " + d + "/s1 -u 0 localhost/test/docker:1 2>/dev/null"),
            "docker\n");
  out = shell("gzip -c " + d + "/d.tar | " + cli + "load --state-dir " + d +
              "/s2 --name localhost/test/docker:2 -");
  EXPECT_NE(out.find("loaded localhost/test/docker:2"), std::string::npos) << out;
  out = shell(cli + "load --json --state-dir " + d + "/s2 -i " + d + "/d.tar");
  auto loaded = nlohmann::json::parse(out, nullptr, false);
  ASSERT_TRUE(loaded.is_array() && loaded.size() == 1) << out;
  EXPECT_EQ(loaded[0]["reference"], "localhost/test/docker:1");
  out = shell(cli + "rmi --json --state-dir " + d + "/s2 localhost/test/docker:1");
  EXPECT_EQ(nlohmann::json::parse(out, nullptr, false)["removed"], "localhost/test/docker:1")
      << out;
  out = shell(cli + "prune --json --state-dir " + d + "/s2");
  EXPECT_EQ(nlohmann::json::parse(out, nullptr, false)["layers"], 0) << out << ": :2 keeps them";
  // Neither format: said, and nothing is left in the staging area.
  shell("cd " + d + " && mkdir junk && echo x > junk/f && tar -cf junk.tar -C junk f");
  FILE* p = ::popen((cli + "load --state-dir " + d + "/s2 " + d + "/junk.tar 2>&1").c_str(), "r");
  out.clear();
  char buf[4096];
  while (p && !std::feof(p)) out.append(buf, std::fread(buf, 1, sizeof buf, p));
  EXPECT_NE(p ? ::pclose(p) : 0, 0);
  EXPECT_NE(out.find("neither an OCI layout nor a docker-archive"), std::string::npos) << out;
  EXPECT_EQ(shell("ls -A " + d + "/s2/tmp"), "");
}

TEST_F(Container, CliLoadAndExec) {
  const std::string d = dir->path;
  shell("cd " + d + " && tar -cf bb.tar -C layout oci-layout index.json blobs");
  std::string out = shell(std::string(CLOISTER_BIN_DIR) + "/cloister load --state-dir " + d +
                          "/cli-store --name localhost/cli:1 " + d + "/bb.tar");
  EXPECT_NE(out.find("loaded localhost/cli:1"), std::string::npos) << out;
  write_text(d + "/c.yaml", "images:\n  state_dir: " + d +
                                "/cli-store\nexecutors:\n  - name: box\n    kind: exec.docker\n"
                                "    image: localhost/cli:1\n    user: \"0\"\n");
  EXPECT_EQ(shell(std::string(CLOISTER_BIN_DIR) + "/cloister exec -c " + d +
                  "/c.yaml -x box -- 'cat /etc/motd'"),
            "hello\n");
  // No command: the image's Entrypoint and Cmd, through the CLI too.
  EXPECT_EQ(shell(std::string(CLOISTER_BIN_DIR) + "/cloister exec -c " + d + "/c.yaml -x box"),
            "from-cmd\n");
  out = shell(std::string(CLOISTER_BIN_DIR) + "/cloister images --state-dir " + d + "/cli-store");
  EXPECT_NE(out.find("localhost/cli:1"), std::string::npos) << out;
  shell(std::string(CLOISTER_BIN_DIR) + "/cloister rmi --state-dir " + d +
        "/cli-store localhost/cli:1");
  out = shell(std::string(CLOISTER_BIN_DIR) + "/cloister prune --state-dir " + d + "/cli-store");
  EXPECT_NE(out.find("3 layers"), std::string::npos) << out;
}

}  // namespace

namespace {

TEST_F(Container, CopyingFallbackWithoutOverlay) {
  // As on a kernel without overlayfs: the layers are merged once into a
  // snapshot in the store and bound read-only as the root.
  ::setenv("CLOISTER_NO_OVERLAY", "1", 1);
  auto cfg = config();
  cfg.user = "root";
  auto r =
      run(cfg, {"cat /etc/motd; ls /opt; ls /etc; readlink /link; grep -c overlay /proc/mounts"});
  EXPECT_EQ(r.out, "hello\nc\ngroup\nmotd\npasswd\n/etc\n0\n") << r.err;
  cfg.read_only_rootfs = false;
  auto e = Executor::create(cfg);
  ::unsetenv("CLOISTER_NO_OVERLAY");
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().what().find("needs overlayfs"), std::string::npos) << e.error().what();
  EXPECT_EQ(shell("ls " + *state + "/snapshots | wc -l"), "1\n");
}

}  // namespace

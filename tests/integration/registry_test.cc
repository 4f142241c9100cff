// Pulls from a real registry (Debian's docker-registry) on 127.0.0.1, started
// by the tests with temporary configs: anonymous, htpasswd basic auth, and
// bearer tokens from a tiny token service (registry_helper.py). The three
// share one storage directory; images are built from busybox-static and
// pushed by tools/oci-build.py. Offline, loopback only.
#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "oci/registry.h"
#include "runtime/executor.h"
#include "test_support.h"

using namespace cloister;
using namespace cloister::testing;

namespace {

int free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(s);
  return ntohs(a.sin_port);
}

bool wait_port(int port) {
  for (int i = 0; i < 100; ++i) {
    int s = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = ::connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(s);
    if (ok) return true;
    ::usleep(50000);
  }
  return false;
}

pid_t start(std::vector<std::string> argv, const std::string& log) {
  pid_t pid = ::fork();
  if (pid == 0) {
    int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    std::vector<char*> a;
    for (auto& s : argv) a.push_back(s.data());
    a.push_back(nullptr);
    ::execvp(a[0], a.data());
    ::_exit(127);
  }
  return pid;
}

class Registry : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir = new TempDir;
    const std::string d = dir->path;
    shell("set -e; cd " + d +
          "; mkdir -p l1/bin l1/etc l1/tmp l1/proc l1/dev l2/etc l2/gone bad/etc;"
          "cp /bin/busybox l1/bin/; for c in sh cat ls echo; do ln -s busybox l1/bin/$c; done;"
          "echo keep > l1/etc/old; echo hello > l2/etc/motd; touch l2/etc/.wh.old;"
          "echo bad-layer-bytes > bad/etc/bad;"
          "python3 " CLOISTER_SOURCE_DIR "/tests/integration/registry_helper.py keys " +
          d +
          ";printf 'tester:%s\\n' \"$(python3 -c \"import crypt;print(crypt.crypt('secret',"
          "crypt.mksalt(crypt.METHOD_BLOWFISH)))\" 2>/dev/null)\" > htpasswd");
    anon = free_port();
    basic = free_port();
    bearer = free_port();
    token = free_port();
    auto config = [&](int port, const std::string& auth) {
      std::string p = d + "/reg-" + std::to_string(port) + ".yml";
      std::ofstream(p) << "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                          "    rootdirectory: "
                       << d << "/storage\nhttp:\n  addr: 127.0.0.1:" << port << "\n"
                       << auth;
      return p;
    };
    pids->push_back(start({"docker-registry", "serve", config(anon, "")}, d + "/anon.log"));
    pids->push_back(start(
        {"docker-registry", "serve",
         config(basic, "auth:\n  htpasswd:\n    realm: test\n    path: " + d + "/htpasswd\n")},
        d + "/basic.log"));
    pids->push_back(start(
        {"docker-registry", "serve",
         config(bearer, "auth:\n  token:\n    realm: http://127.0.0.1:" + std::to_string(token) +
                            "/token\n    service: cloister-registry\n    issuer: cloister-test\n"
                            "    rootcertbundle: " +
                            d + "/cert.pem\n")},
        d + "/bearer.log"));
    pids->push_back(
        start({"python3", CLOISTER_SOURCE_DIR "/tests/integration/registry_helper.py", "token",
               std::to_string(token), d + "/key.pem", d + "/cert.pem", "cloister-registry"},
              d + "/token.log"));
    for (int p : {anon, basic, bearer, token}) ASSERT_TRUE(wait_port(p)) << "port " << p;
    const std::string build = "python3 " CLOISTER_SOURCE_DIR "/tools/oci-build.py ";
    const std::string push = " --push http://127.0.0.1:" + std::to_string(anon);
    shell("set -e; cd " + d + ";" + build +
          "multi --ref x --layer l1:gzip --layer l2:zstd "
          "--cmd '[\"cat\",\"/etc/motd\"]' --platforms linux/amd64,linux/arm64 --attestation" +
          push + "/test/bb:multi >/dev/null;" + build + "bad --ref x --layer bad:gzip" + push +
          "/test/bad:1 >/dev/null");
    // Corrupt the stored layer of test/bad: same size, one byte changed.
    shell(
        "cd " + d +
        " && f=$(find storage -path '*blobs*' -name data -size -2k | while read f; do "
        "if gzip -t \"$f\" 2>/dev/null && gzip -dc \"$f\" | grep -q bad-layer-bytes; then echo $f; "
        "fi; done) && "
        "test -n \"$f\" && printf 'X' | dd of=\"$f\" bs=1 seek=20 conv=notrunc 2>/dev/null");
  }
  static void TearDownTestSuite() {
    for (pid_t p : *pids) {
      ::kill(p, SIGTERM);
      ::waitpid(p, nullptr, 0);
    }
    pids->clear();
    delete dir;
  }
  static std::string ref(int port, const std::string& name) {
    return "127.0.0.1:" + std::to_string(port) + "/" + name;
  }
  std::string auth_file(int port, const std::string& userpass) {
    std::string p = dir->path + "/auth-" + std::to_string(port) + ".json";
    std::string b64 = shell("printf %s '" + userpass + "' | base64 -w0");
    std::ofstream(p) << "{\"auths\":{\"127.0.0.1:" << port << "\":{\"auth\":\"" << b64 << "\"}}}";
    return p;
  }
  static inline TempDir* dir = nullptr;
  static inline std::vector<pid_t>* pids = new std::vector<pid_t>;
  static inline int anon = 0, basic = 0, bearer = 0, token = 0;
  TempDir store_dir;
};

TEST_F(Registry, AnonymousIndexWithAttestationThenRun) {
  auto store = oci::Store::open(store_dir.path);
  ASSERT_TRUE(store);
  auto r = oci::pull_image(*store, ref(anon, "test/bb:multi"), {}, {});
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ(r->chain_ids.size(), 2u);
  ExecutorConfig c;
  c.name = "box";
  c.kind = ExecutorKind::Container;
  c.image = ref(anon, "test/bb:multi");
  c.state_dir = store_dir.path;
  auto out = run_ok(c, {});
  EXPECT_EQ(out.out, "hello\n");
  EXPECT_EQ(run_ok(c, {"ls", "/etc"}).out, "motd\n");  // /etc/old deleted by a whiteout
  // Pulled again: nothing to download.
  int fresh = 0;
  oci::ImportOptions o;
  o.layer_done = [&](size_t, const oci::Descriptor&, bool cached) { fresh += !cached; };
  ASSERT_TRUE(oci::pull_image(*store, ref(anon, "test/bb:multi"), {}, o));
  EXPECT_EQ(fresh, 0);
}

TEST_F(Registry, ExecutorPullsOnFirstUse) {
  ExecutorConfig c;
  c.name = "box";
  c.kind = ExecutorKind::Container;
  c.image = ref(anon, "test/bb:multi");
  c.state_dir = store_dir.path;
  EXPECT_EQ(run_ok(c, {}).out, "hello\n");
  auto store = oci::Store::open(store_dir.path);
  auto images = store->list_images();
  ASSERT_TRUE(images);
  ASSERT_EQ(images->size(), 1u);
  EXPECT_EQ((*images)[0].reference, ref(anon, "test/bb:multi"));
}

TEST_F(Registry, MirrorTriedFirst) {
  // registry.invalid does not resolve: only the mirror can answer.
  auto store = oci::Store::open(store_dir.path);
  oci::RegistryOptions ro;
  ro.mirrors["registry.invalid:5000"] = {"127.0.0.1:" + std::to_string(anon)};
  auto r = oci::pull_image(*store, "registry.invalid:5000/test/bb:multi", ro, {});
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ(r->reference, "registry.invalid:5000/test/bb:multi");
  ro.mirrors.clear();
  EXPECT_FALSE(oci::pull_image(*store, "registry.invalid:5000/test/bb:other", ro, {}));
}

TEST_F(Registry, BasicAuth) {
  auto store = oci::Store::open(store_dir.path);
  oci::RegistryOptions ro;
  ro.auth_file = dir->path + "/none.json";
  auto r = oci::pull_image(*store, ref(basic, "test/bb:multi"), ro, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ErrorKind::PermissionDenied) << r.error().what();
  ro.auth_file = auth_file(basic, "tester:wrong");
  EXPECT_FALSE(oci::pull_image(*store, ref(basic, "test/bb:multi"), ro, {}));
  ro.auth_file = auth_file(basic, "tester:secret");
  r = oci::pull_image(*store, ref(basic, "test/bb:multi"), ro, {});
  ASSERT_TRUE(r) << r.error().what();
}

TEST_F(Registry, BearerTokens) {
  auto store = oci::Store::open(store_dir.path);
  oci::RegistryOptions ro;
  ro.auth_file = dir->path + "/none.json";
  // Anonymous token: no access granted, so the registry refuses it.
  auto r = oci::pull_image(*store, ref(bearer, "test/bb:multi"), ro, {});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ErrorKind::PermissionDenied) << r.error().what();
  ro.auth_file = auth_file(bearer, "tok:en");
  r = oci::pull_image(*store, ref(bearer, "test/bb:multi"), ro, {});
  ASSERT_TRUE(r) << r.error().what();
}

TEST_F(Registry, CorruptBlobRefusedAndNothingKept) {
  auto store = oci::Store::open(store_dir.path);
  auto r = oci::pull_image(*store, ref(anon, "test/bad:1"), {}, {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().what().find("layer"), std::string::npos) << r.error().what();
  EXPECT_EQ(shell("ls -A " + store_dir.path + "/layers/sha256 " + store_dir.path + "/tmp " +
                  store_dir.path + "/images | grep -v : | grep -c . || true"),
            "0\n");
}

TEST_F(Registry, InterruptedPullResumes) {
  // Each blob's first response is cut after 100 kB; the retry asks for the
  // rest with Range. "pass": the registry answers 206; "drop": the proxy
  // strips Range, the registry answers 200 with the whole blob, and the
  // bytes already consumed are skipped.
  for (const char* ranges : {"pass", "drop"}) {
    const int port = free_port();
    const std::string log = dir->path + "/flaky-" + ranges + ".log";
    pid_t proxy =
        start({"python3", CLOISTER_SOURCE_DIR "/tests/integration/registry_helper.py", "flaky",
               std::to_string(port), "http://127.0.0.1:" + std::to_string(anon), "100000", ranges},
              log);
    ASSERT_TRUE(wait_port(port));
    TempDir fresh;
    auto store = oci::Store::open(fresh.path);
    auto r =
        oci::pull_image(*store, "127.0.0.1:" + std::to_string(port) + "/test/bb:multi", {}, {});
    ::kill(proxy, SIGTERM);
    ::waitpid(proxy, nullptr, 0);
    ASSERT_TRUE(r) << ranges << ": " << r.error().what();
    EXPECT_NE(read_text(log).find(std::string("range ") + ranges + " bytes=100000-"),
              std::string::npos)
        << ranges << ": no resume from byte 100000\n"
        << read_text(log);
  }
}

TEST_F(Registry, ManifestContentTypeMismatchRefused) {
  const int port = free_port();
  pid_t proxy = start({"python3", CLOISTER_SOURCE_DIR "/tests/integration/registry_helper.py",
                       "retype", std::to_string(port), "http://127.0.0.1:" + std::to_string(anon),
                       "application/vnd.docker.distribution.manifest.v2+json"},
                      dir->path + "/retype.log");
  ASSERT_TRUE(wait_port(port));
  auto store = oci::Store::open(store_dir.path);
  auto r = oci::pull_image(*store, "127.0.0.1:" + std::to_string(port) + "/test/bb:multi", {}, {});
  ::kill(proxy, SIGTERM);
  ::waitpid(proxy, nullptr, 0);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().what().find("does not match Content-Type"), std::string::npos)
      << r.error().what();
  EXPECT_EQ(shell("ls -A " + store_dir.path + "/layers/sha256 " + store_dir.path +
                  "/images | grep -v : | grep -c . || true"),
            "0\n");
}

TEST_F(Registry, RedirectDoesNotLeakAuthorization) {
  // Blobs of the basic-auth registry redirect to another host (127.0.0.2):
  // the credentials must not follow.
  const int front = free_port(), sink = free_port();
  const std::string log = dir->path + "/sink.log";
  pid_t helper = start(
      {"python3", CLOISTER_SOURCE_DIR "/tests/integration/registry_helper.py", "redirect",
       std::to_string(front), std::to_string(sink), "http://127.0.0.1:" + std::to_string(basic),
       "http://127.0.0.1:" + std::to_string(anon), log},
      dir->path + "/redirect.log");
  ASSERT_TRUE(wait_port(front));
  auto store = oci::Store::open(store_dir.path);
  oci::RegistryOptions ro;
  ro.auth_file = auth_file(front, "tester:secret");
  auto r = oci::pull_image(*store, ref(front, "test/bb:multi"), ro, {});
  ::kill(helper, SIGTERM);
  ::waitpid(helper, nullptr, 0);
  ASSERT_TRUE(r) << r.error().what();
  std::string seen = read_text(log);
  EXPECT_FALSE(seen.empty()) << "no blob went through the redirect";
  EXPECT_EQ(seen.find("Basic"), std::string::npos) << seen;
}

TEST_F(Registry, ConcurrentPullsShareTheWork) {
  std::atomic<int> fresh{0}, ok{0};
  auto pull = [&] {
    auto store = oci::Store::open(store_dir.path);
    oci::ImportOptions o;
    o.layer_done = [&](size_t, const oci::Descriptor&, bool cached) { fresh += !cached; };
    auto r = oci::pull_image(*store, ref(anon, "test/bb:multi"), {}, o);
    EXPECT_TRUE(r) << r.error().what();
    ok += r.has_value();
  };
  std::thread a(pull), b(pull);
  a.join();
  b.join();
  EXPECT_EQ(ok.load(), 2);
  EXPECT_EQ(fresh.load(), 2);  // two layers, each made once
}

}  // namespace

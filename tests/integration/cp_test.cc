// `cp` into and out of a running session (runtime/copy.h), through the
// CLI and the service: what it copies, as whom, and that no path the
// sandbox's root plants (`..`, symlinks out, a directory swapped for a
// symlink during the copy) and no archive a caller sends reads or writes
// anything outside the sandbox.
#include <sys/socket.h>
#include <sys/stat.h>

#include <string>

#include "gtest/gtest.h"
#include "service_support.h"

using namespace cloister;
using namespace cloister::testing;
using namespace std::chrono_literals;

namespace {

const std::string kCli = CLOISTER_BIN_DIR "/cloister";

// A tar made by Python's tarfile from a list of (name, type, target/data)
// entries: "f" a file holding the text, "l" a symlink to it, "h" a hardlink.
std::string make_tar(const std::string& dir, const std::string& entries) {
  static int made = 0;
  const std::string path = dir + "/in" + std::to_string(++made) + ".tar";
  write_text(
      dir + "/mk.py",
      "import io, sys, tarfile\n"
      "t = tarfile.open(sys.argv[1], 'w', format=tarfile.GNU_FORMAT)\n"
      "for name, kind, arg in " +
          entries +
          ":\n"
          "    i = tarfile.TarInfo(name)\n"
          "    if kind in 'fs':\n"
          "        b = arg.encode(); i.size = len(b); i.mode = 0o4755 if kind == 's' else 0o644\n"
          "        t.addfile(i, io.BytesIO(b))\n"
          "    else:\n"
          "        i.type = tarfile.SYMTYPE if kind == 'l' else tarfile.LNKTYPE\n"
          "        i.linkname = arg; t.addfile(i)\n"
          "t.close()\n");
  EXPECT_EQ(sh("python3 " + dir + "/mk.py " + path), 0);
  return path;
}

class Cp : public ::testing::Test {
 protected:
  void SetUp() override {
    // A host directory the sandbox cannot see (its /tmp is a tmpfs), with
    // a secret in it: what a symlink planted in the sandbox points at.
    ::chmod(host.path.c_str(), 0777);
    write_text(host.path + "/secret", "host-secret\n");
    ASSERT_EQ(sh(cli +
                     "run -d --name box shell -- sh -c 'mkdir -p /tmp/d/sub && echo inside > "
                     "/tmp/d/f && ln /tmp/d/f /tmp/d/hard && ln -s " +
                     host.path + " /tmp/abs && ln -s ../../../../../.." + host.path +
                     " /tmp/rel && ln -s / /tmp/root && mkdir /tmp/in && exec sleep 1000'",
                 &id),
              0);
    while (!id.empty() && id.back() == '\n') id.pop_back();
    for (int i = 0; i < 200 && sh(cli + "exec --session box -- test -d /tmp/in") != 0; ++i)
      std::this_thread::sleep_for(10ms);
  }
  // The host directory holds its secret and nothing the copies put there.
  void expect_host_untouched(const std::string& where) {
    std::string ls;
    sh("ls -A " + host.path, &ls);
    EXPECT_EQ(ls, "secret\n") << where;
  }

  // Nobody may connect (it is in nogroup), and has no permission; uid 4321
  // (in nogroup too) may cp into the shell executor's sessions.
  Daemon d{
      "  socket_group: nogroup\n"
      "callers:\n"
      "  - users: [4321]\n"
      "    exec.get: [shell]\n"
      "    session.cp: true\n",
      "  - name: asuser\n"
      "    kind: host\n"
      "    user: \"1000:1000\"\n"
      "    default_env: { PATH: /usr/bin:/bin }\n"
      "    tmpfs: { /tmp: \"rw,size=16m,mode=1777\" }\n"};
  TempDir host, work;
  std::string id;  // box's
  const std::string cli = kCli + " --socket " + d.socket + " ";
};

TEST_F(Cp, OutIsATarOfTheSandboxsFilesAsItSeesThem) {
  std::string out;
  ASSERT_EQ(sh(cli + "cp box:/tmp/d - | tar -tvf - 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("0/0"), std::string::npos) << "owners as the sandbox sees them: " << out;
  EXPECT_NE(out.find("d/f"), std::string::npos) << out;
  EXPECT_NE(out.find("d/hard link to d/f"), std::string::npos) << out;
  EXPECT_NE(out.find("d/sub/"), std::string::npos) << out;
  // Into a local directory, extracted with the caller's rights.
  ASSERT_EQ(sh(cli + "cp box:/tmp/d " + work.path), 0);
  EXPECT_EQ(read_text(work.path + "/d/f"), "inside\n");
  // A symlink is copied as a link, never followed: the host's directory
  // it names stays out of the archive.
  ASSERT_EQ(sh(cli + "cp box:/tmp/abs - | tar -tvf - 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("abs -> " + host.path), std::string::npos) << out;
  EXPECT_EQ(out.find("secret"), std::string::npos) << out;
  // Through a symlink, absolute or climbing with `..`, or with `..` in the
  // path: resolved beneath the sandbox's root, where the host's directory
  // is not.
  for (const std::string& p :
       std::vector<std::string>{"/tmp/abs/secret", "/tmp/rel/secret", "/tmp/root" + host.path,
                                "/tmp/../../.." + host.path + "/secret"}) {
    EXPECT_NE(sh(cli + "cp box:" + p + " - 2>&1", &out), 0) << p << ": " << out;
    EXPECT_NE(out.find("NOT_FOUND"), std::string::npos) << p << ": " << out;
    EXPECT_EQ(out.find("host-secret"), std::string::npos) << p << ": " << out;
  }
  // What the sandbox's root may not read: its init's memory and
  // environment (non-dumpable), whatever capability the service holds.
  EXPECT_NE(sh(cli + "cp box:/proc/1/environ - 2>&1", &out), 0);
  EXPECT_NE(out.find("PERMISSION_DENIED"), std::string::npos) << out;
}

TEST_F(Cp, InWritesAsTheSessionsUserAndOnlyBeneathIt) {
  std::string out;
  // A local tree, then a tar on stdin.
  shell("mkdir -p " + work.path + "/src/x && echo data > " + work.path + "/src/x/y");
  ASSERT_EQ(sh(cli + "cp " + work.path + "/src box:/tmp/in 2>&1", &out), 0) << out;
  ASSERT_EQ(sh(cli + "exec --session box -- sh -c 'cat /tmp/in/src/x/y; stat -c %u:%g "
                     "/tmp/in/src/x/y'",
               &out),
            0);
  EXPECT_EQ(out, "data\n0:0\n") << "made by the session's user (the shell executor's: root)";
  const std::string tar = make_tar(work.path, "[('plain', 'f', 'ok')]");
  ASSERT_EQ(sh(cli + "cp - box:/tmp/in < " + tar + " 2>&1", &out), 0) << out;
  ASSERT_EQ(sh(cli + "exec --session box -- cat /tmp/in/plain", &out), 0);
  EXPECT_EQ(out, "ok");
  // Archives that try to leave: `..`, an absolute name, through a symlink
  // the archive makes, through the sandbox's own symlink out, a hardlink
  // to a file outside. Each is refused or lands inside.
  const std::vector<std::pair<std::string, std::string>> hostile = {
      {"dotdot", "[('../../../../.." + host.path + "/planted', 'f', 'x')]"},
      {"absolute", "[('" + host.path + "/planted', 'f', 'x')]"},
      {"own symlink", "[('l', 'l', '" + host.path + "'), ('l/planted', 'f', 'x')]"},
      {"hardlink", "[('h', 'h', '../../../../.." + host.path + "/secret')]"},
  };
  for (const auto& [what, entries] : hostile) {
    const std::string t = make_tar(work.path, entries);
    (void)sh(cli + "cp - box:/tmp/in < " + t + " 2>&1", &out);
    expect_host_untouched(what + ": " + out);
  }
  // Into the sandbox's symlink to the host's directory: beneath its root.
  const std::string one = make_tar(work.path, "[('planted', 'f', 'x')]");
  (void)sh(cli + "cp - box:/tmp/abs < " + one + " 2>&1", &out);
  EXPECT_NE(out.find("NOT_FOUND"), std::string::npos) << out;
  expect_host_untouched("into a symlink out");
  // No setuid bit from an archive; no directory with something in it
  // replaced by an entry of another name's type.
  const std::string setid = make_tar(work.path, "[('suid', 's', 'x'), ('src', 'f', 'x')]");
  EXPECT_NE(sh(cli + "cp - box:/tmp/in < " + setid + " 2>&1", &out), 0);
  EXPECT_NE(out.find("not empty"), std::string::npos) << out;
  ASSERT_EQ(
      sh(cli + "exec --session box -- sh -c 'stat -c %a /tmp/in/suid; cat /tmp/in/src/x/y'", &out),
      0);
  EXPECT_EQ(out, "755\ndata\n") << "setuid kept, or the tree replaced";
  // A session of an executor with a user of its own: the copy is that
  // user's, not the sandbox's root's.
  ASSERT_EQ(sh(cli + "run -d --name mine asuser -- sh -c 'mkdir /tmp/in /tmp/locked && chmod 555 "
                     "/tmp/locked && exec sleep 1000'"),
            0);
  for (int i = 0; i < 200 && sh(cli + "exec --session mine -- test -d /tmp/in") != 0; ++i)
    std::this_thread::sleep_for(10ms);
  ASSERT_EQ(sh(cli + "cp - mine:/tmp/in < " + tar + " 2>&1", &out), 0) << out;
  ASSERT_EQ(sh(cli + "exec --session mine -- stat -c %u:%g /tmp/in/plain", &out), 0);
  EXPECT_EQ(out, "1000:1000\n");
  // Its own directory without the write bit: no capability overrides it.
  EXPECT_NE(sh(cli + "cp - mine:/tmp/locked < " + tar + " 2>&1", &out), 0);
  EXPECT_NE(out.find("PERMISSION_DENIED"), std::string::npos) << out;
  // A read-only mount stays read-only.
  EXPECT_NE(sh(cli + "cp - box:/usr < " + one + " 2>&1", &out), 0);
  EXPECT_NE(out.find("Read-only"), std::string::npos) << out;
}

// The sandbox swaps a directory for a symlink to the host's directory, over
// and over, while copies run out of and into it: none reads the host's
// secret or writes beside it.
TEST_F(Cp, ASwapDuringTheCopyStaysInside) {
  ASSERT_EQ(sh(cli +
               "exec -d --session box -- sh -c 'while :; do rm -rf /tmp/s; mkdir /tmp/s; "
               "echo x > /tmp/s/f; rm -rf /tmp/s; ln -s " +
               host.path + " /tmp/s; done'"),
            0);
  const std::string one = make_tar(work.path, "[('s/planted', 'f', 'x')]");
  std::string out;
  for (int i = 0; i < 40; ++i) {
    (void)sh(cli + "cp box:/tmp/s - 2>&1 | tar -xOf - 2>&1", &out);
    EXPECT_EQ(out.find("host-secret"), std::string::npos) << "round " << i << ": " << out;
    (void)sh(cli + "cp - box:/tmp < " + one + " 2>&1", &out);
    (void)sh(cli + "cp box:/tmp/s/f - 2>&1 | tar -xOf - 2>&1", &out);
    EXPECT_EQ(out.find("host-secret"), std::string::npos) << "round " << i << ": " << out;
  }
  expect_host_untouched("after the swaps");
}

TEST_F(Cp, BadRequestsAndOtherCallersAreRefused) {
  std::string out;
  EXPECT_EQ(sh(cli + "cp box:tmp - 2>&1", &out), 125);
  EXPECT_NE(out.find("absolute"), std::string::npos) << out;
  EXPECT_EQ(sh(cli + "cp box:/tmp box:/tmp 2>&1", &out), 125);
  EXPECT_EQ(sh(cli + "cp here there 2>&1", &out), 125);
  EXPECT_NE(sh(cli + "cp box:/tmp " + work.path + "/missing 2>&1", &out), 0);
  EXPECT_NE(out.find("existing directory"), std::string::npos) << out;
  EXPECT_NE(sh(cli + "cp - nosuch:/tmp </dev/null 2>&1", &out), 0);
  EXPECT_NE(out.find("NOT_FOUND"), std::string::npos) << out;
  // Through the protocol: the checks a client gets, each naming its field.
  auto c = Connection::connect(d.socket);
  ASSERT_TRUE(c);
  auto pipe = make_pipe();
  ASSERT_TRUE(pipe);
  const int w = pipe->write.get(), r = pipe->read.get();
  auto expect_invalid = [&](const nlohmann::json& req, std::span<const int> fds,
                            const std::string& says) {
    auto rep = (*c)->call(req, fds);
    ASSERT_FALSE(rep) << req;
    EXPECT_EQ(rep.error().kind, ErrorKind::Invalid) << req;
    EXPECT_NE(rep.error().what().find(says), std::string::npos) << rep.error().what();
  };
  const nlohmann::json base = {{"op", "cp"}, {"session", "box"}, {"path", "/tmp"}};
  auto with = [&](nlohmann::json j, const char* k, nlohmann::json v) {
    j[k] = std::move(v);
    return j;
  };
  expect_invalid(with(base, "direction", "sideways"), std::span<const int>(&w, 1), "direction");
  expect_invalid(with(base, "direction", "out"), {}, "SCM_RIGHTS");
  expect_invalid(with(base, "direction", "out"), std::span<const int>(&r, 1), "writing");
  expect_invalid(with(base, "direction", "in"), std::span<const int>(&w, 1), "reading");
  expect_invalid(with(with(base, "direction", "in"), "path", std::string("/tmp\0x", 6)),
                 std::span<const int>(&r, 1), "NUL");
  // A socket: its peer would take what the copy writes as the service's.
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  Fd s0(sv[0]), s1(sv[1]);
  expect_invalid(with(base, "direction", "out"), std::span<const int>(&sv[0], 1), "pipe");
  // Another caller needs session.cp on root's session.
  ASSERT_EQ(::chmod(d.dir.path.c_str(), 0755), 0);
  auto copy_as = [&](uid_t uid) {
    return as_user(uid,
                   [&] {
                     auto o = Connection::connect(d.socket);
                     if (!o) return 101;
                     auto p = make_pipe();
                     const int fd = p->write.get();
                     auto sent = (*o)->send({{"op", "cp"},
                                             {"session", std::stoull(id)},
                                             {"direction", "out"},
                                             {"path", "/tmp/d"}},
                                            std::span<const int>(&fd, 1));
                     if (!sent) return 102;
                     p->write.reset();
                     char buf[65536];
                     while (::read(p->read.get(), buf, sizeof buf) > 0) {
                     }
                     auto rep = (*o)->reply(*sent);
                     if (rep) return 0;
                     return rep.error().kind == ErrorKind::PermissionDenied ? 13 : 103;
                   },
                   {65534});
  };
  EXPECT_EQ(copy_as(kNobody), 13) << "nobody has no session.cp";
  EXPECT_EQ(copy_as(4321), 0) << "4321's rule grants it";
  // An ended session is no sandbox to copy from.
  ASSERT_EQ(sh(cli + "rm -f box"), 0);
  EXPECT_NE(sh(cli + "cp box:/tmp - 2>&1", &out), 0);
}

}  // namespace

namespace {

// The same in a container: the sandbox's root is the image's (an overlay
// with a fresh upper directory), and a symlink out of it still resolves
// beneath it.
TEST(CpContainer, InAndOutOfAnImagesRoot) {
  TempDir img, host, work;
  const std::string state =
      load_test_image(img.path,
                      "mkdir -p l1/bin l1/etc l1/tmp l1/proc l1/dev; cp /bin/busybox l1/bin/; "
                      "for c in sh ls cat echo ln sleep stat mkdir; do ln -s busybox l1/bin/$c; "
                      "done; printf 'root:x:0:0::/root:/bin/sh\\n' > l1/etc/passwd",
                      "--ref localhost/test/cp:1 --layer l1:gzip --env PATH=/bin");
  ASSERT_FALSE(state.empty());
  write_text(host.path + "/secret", "host-secret\n");
  Daemon d("",
           "  - name: img\n"
           "    kind: container\n"
           "    image: localhost/test/cp:1\n",
           "images:\n  state_dir: " + state + "\n");
  const std::string cli = kCli + " --socket " + d.socket + " ";
  ASSERT_EQ(sh(cli + "run -d --name c img -- sh -c 'ln -s " + host.path +
               " /tmp/abs && mkdir /tmp/in && exec sleep 1000'"),
            0);
  for (int i = 0; i < 200 && sh(cli + "exec --session c -- stat /tmp/in") != 0; ++i)
    std::this_thread::sleep_for(10ms);
  std::string out;
  const std::string tar = make_tar(work.path, "[('f', 'f', 'copied')]");
  ASSERT_EQ(sh(cli + "cp - c:/tmp/in < " + tar + " 2>&1", &out), 0) << out;
  ASSERT_EQ(sh(cli + "exec --session c -- cat /tmp/in/f", &out), 0);
  EXPECT_EQ(out, "copied");
  ASSERT_EQ(sh(cli + "cp c:/etc/passwd - | tar -xOf -", &out), 0);
  EXPECT_EQ(out, "root:x:0:0::/root:/bin/sh\n") << "the image's file";
  EXPECT_NE(sh(cli + "cp c:/tmp/abs/secret - 2>&1", &out), 0);
  EXPECT_NE(out.find("NOT_FOUND"), std::string::npos) << out;
  (void)sh(cli + "cp - c:/tmp/abs < " + tar + " 2>&1", &out);
  EXPECT_NE(out.find("NOT_FOUND"), std::string::npos) << out;
  std::string ls;
  sh("ls -A " + host.path, &ls);
  EXPECT_EQ(ls, "secret\n");
}

}  // namespace

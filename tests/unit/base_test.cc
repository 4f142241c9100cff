#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <sys/mount.h>

#include "isolate/capabilities.h"
#include "isolate/cgroups.h"
#include "isolate/error.h"
#include "isolate/fd.h"
#include "isolate/mounts.h"
#include "isolate/rlimits.h"

using namespace cloister;

TEST(Error, KindFromErrno) {
  EXPECT_EQ(sys_error("x", EPERM).kind, ErrorKind::PermissionDenied);
  EXPECT_EQ(sys_error("x", ENOENT).kind, ErrorKind::NotFound);
  EXPECT_EQ(sys_error("x", EAGAIN).kind, ErrorKind::Limit);
  EXPECT_EQ(sys_error("x", EIO).kind, ErrorKind::Internal);
  EXPECT_EQ(kind_name(ErrorKind::PermissionDenied), "PERMISSION_DENIED");
}

TEST(Error, WrapKeepsKindAndErrno) {
  Error e = sys_error("open /x", ENOENT).wrap("mount plan");
  EXPECT_EQ(e.kind, ErrorKind::NotFound);
  EXPECT_EQ(e.code, ENOENT);
  EXPECT_EQ(e.message, "mount plan: open /x");
  EXPECT_EQ(e.what(), "mount plan: open /x: No such file or directory");
}

TEST(Fd, ClosesOnDestructionAndMoves) {
  int raw;
  {
    auto p = make_pipe();
    ASSERT_TRUE(p);
    raw = p->read.get();
    EXPECT_TRUE(fcntl(raw, F_GETFD) & FD_CLOEXEC);
    Fd moved = std::move(p->read);
    EXPECT_FALSE(p->read);
    EXPECT_EQ(moved.get(), raw);
  }
  EXPECT_EQ(fcntl(raw, F_GETFD), -1);
}

TEST(Fd, ReadFileReportsPath) {
  auto r = read_file("/nonexistent/cloister");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ErrorKind::NotFound);
  EXPECT_NE(r.error().message.find("/nonexistent/cloister"), std::string::npos);
}

TEST(Capabilities, Names) {
  EXPECT_EQ(capabilities::from_name("CAP_NET_RAW"), 13);
  EXPECT_EQ(capabilities::from_name("net_raw"), 13);
  EXPECT_FALSE(capabilities::from_name("CAP_FLY"));
  EXPECT_EQ(capabilities::name(21), "CAP_SYS_ADMIN");
}

TEST(Capabilities, Resolve) {
  auto k = capabilities::resolve({"NET_BIND_SERVICE", "CHOWN"}, {"ALL"});
  ASSERT_TRUE(k);
  EXPECT_EQ(*k, (1ULL << 10) | 1ULL);
  k = capabilities::resolve({"ALL"}, {"SYS_ADMIN"});
  ASSERT_TRUE(k);
  EXPECT_FALSE(*k & (1ULL << 21));
  EXPECT_TRUE(*k & (1ULL << 0));
  auto bad = capabilities::resolve({"CAP_FLY"}, {});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().kind, ErrorKind::Invalid);
}

TEST(Rlimits, NamesAndLowering) {
  EXPECT_EQ(rlimits::from_name("nofile"), RLIMIT_NOFILE);
  EXPECT_EQ(rlimits::from_name("RLIMIT_NPROC"), RLIMIT_NPROC);
  EXPECT_FALSE(rlimits::from_name("bogus"));
  struct rlimit cur;
  getrlimit(RLIMIT_NOFILE, &cur);
  auto l = rlimits::make(RLIMIT_NOFILE, RLIM_INFINITY, RLIM_INFINITY);
  ASSERT_TRUE(l);
  EXPECT_EQ(l->hard, cur.rlim_max);
  EXPECT_FALSE(rlimits::make(RLIMIT_NOFILE, 10, 5));
}

// The favordynmods remount keeps every flag and option of the mount: a
// remount replaces them all (docs/cgroups.md).
TEST(CgroupRemount, FavordynmodsKeepsTheMountsFlagsAndOptions) {
  auto r = cloister::cgroups::favordynmods_remount(
      "rw,nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot");
  EXPECT_EQ(r.flags, MS_REMOUNT | MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME);
  EXPECT_EQ(r.data, "nsdelegate,memory_recursiveprot,favordynmods");
  r = cloister::cgroups::favordynmods_remount("ro,noatime");
  EXPECT_EQ(r.flags, MS_REMOUNT | MS_RDONLY | MS_NOATIME);
  EXPECT_EQ(r.data, "favordynmods");
}

// The mount facility's one rule for tmpfs options and for paths, which the
// YAML config, the OCI bundle and the socket requests all go through.
TEST(Mounts, TmpfsOptionsOneRule) {
  auto ok = mounts::parse_tmpfs_options("rw,noexec,size=64m,mode=1777,nr_inodes=1k,uid=0,gid=5");
  ASSERT_TRUE(ok) << ok.error().what();
  EXPECT_EQ(ok->data, "size=64m,mode=1777,nr_inodes=1k,uid=0,gid=5");
  EXPECT_NE(ok->flags & MS_NOEXEC, 0u);
  EXPECT_NE(ok->flags & MS_NOSUID, 0u) << "nosuid and nodev by default";
  EXPECT_TRUE(mounts::parse_tmpfs_options(""));
  EXPECT_TRUE(mounts::parse_tmpfs_options("size=50%"));
  struct Bad {
    const char* options;
    const char* want;
  };
  for (const Bad& b :
       {Bad{"rw,,noexec", "empty option"}, Bad{"rw,", "empty option"},
        Bad{"sizee=1m", "unknown option \"sizee=1m\""}, Bad{"shared", "unknown option \"shared\""},
        Bad{"size=12x", "bad option \"size=12x\""}, Bad{"size=0%", "bad option"},
        Bad{"size=101%", "bad option"}, Bad{"size=99999999999999999999g", "bad option"},
        Bad{"mode=999", "bad option \"mode=999\""}, Bad{"mode=07777", "bad option"},
        Bad{"uid=-1", "bad option"}, Bad{"uid=4294967295", "bad option"},
        Bad{"rw,ro", "\"ro\" conflicts with \"rw\""},
        Bad{"size=1m,size=2m", "\"size=2m\" conflicts with \"size=1m\""},
        Bad{"noexec,noexec", "given twice"}}) {
    auto r = mounts::parse_tmpfs_options(b.options);
    ASSERT_FALSE(r) << b.options;
    EXPECT_NE(r.error().message.find(b.want), std::string::npos)
        << b.options << ": " << r.error().message;
  }
}

TEST(Mounts, PathRuleAndWithin) {
  EXPECT_EQ(mounts::path_problem("/a/b"), "");
  EXPECT_EQ(mounts::path_problem("/"), "");
  EXPECT_EQ(mounts::path_problem(""), "must not be empty");
  EXPECT_EQ(mounts::path_problem("a"), "must be an absolute path");
  EXPECT_NE(mounts::path_problem("/a//b").find("\"//\""), std::string::npos);
  EXPECT_NE(mounts::path_problem("/a/").find("ends in"), std::string::npos);
  EXPECT_NE(mounts::path_problem("/a/../b").find("\"..\""), std::string::npos);
  EXPECT_NE(mounts::path_problem("/a/./b").find("\".\""), std::string::npos);
  EXPECT_NE(mounts::path_problem(std::string("/a\0b", 4)).find("NUL"), std::string::npos);
  EXPECT_NE(mounts::path_problem("/" + std::string(4095, 'x')).find("longer"), std::string::npos);
  EXPECT_TRUE(mounts::within("/a/b", "/a"));
  EXPECT_TRUE(mounts::within("/a", "/a"));
  EXPECT_TRUE(mounts::within("/a", "/"));
  EXPECT_FALSE(mounts::within("/ab", "/a"));
  EXPECT_FALSE(mounts::within("/a", "/a/b"));
}

// Nothing a test run does may outlive it: after all integration tests, the
// test process has the fds, mounts and children it started with, no sandbox
// init is left on the host, and no cgroup of cloister's remains.
#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <string>
#include <vector>

#include "isolate/cgroups.h"
#include "isolate/init_program.h"
#include "isolate/spawn.h"
#include "runtime/top.h"
#include "test_support.h"

namespace {

using cloister::testing::count_fds;
using cloister::testing::read_text;

std::vector<std::string> cloister_cgroups() {
  std::vector<std::string> left;
  auto m = cloister::cgroups::Manager::shared();
  if (!m) return left;
  for (const auto& base : (*m)->base_paths()) {
    DIR* d = ::opendir(base.c_str());
    while (dirent* e = d ? ::readdir(d) : nullptr) {
      std::string name = e->d_name;
      // Per-process cgroups are "<runtime pid>-<seq>": ours start with our
      // pid (other runtimes on the host may be running their own).
      if (name.starts_with(std::to_string(::getpid()) + "-")) left.push_back(base + "/" + name);
    }
    if (d) ::closedir(d);
  }
  return left;
}

class LeakCheck : public ::testing::Environment {
 public:
  void SetUp() override {
    // The fds the library keeps for good: its sealed programs' memfds.
    (void)cloister::init_program::fd();
    (void)cloister::top::reader_program();
    // The one change to the host's mounts the library makes for good: the
    // first manager remounts cgroup2 with favordynmods (isolate/cgroups.h),
    // once per boot; before the snapshot, so that a fresh machine's first
    // run compares like with like.
    (void)cloister::cgroups::Manager::shared();
    fds_ = count_fds(::getpid());
    mounts_ = read_text("/proc/self/mountinfo");
  }
  void TearDown() override {
    // Sandboxes whose exit was read early finish their teardown there.
    cloister::Spawned::drain_retired();
    int netns = 0;
    EXPECT_EQ(count_fds(::getpid(), &netns), fds_) << "fds leaked by the tests";
    EXPECT_LE(netns, 3) << "more network namespaces held than the pool keeps";
    EXPECT_EQ(read_text("/proc/self/mountinfo"), mounts_) << "mounts changed on the host";
    EXPECT_EQ(cloister::testing::count_own_inits(), 0) << "sandbox inits left running";
    auto left = cloister_cgroups();
    EXPECT_TRUE(left.empty()) << "cgroups left: " << (left.empty() ? "" : left[0]);
  }

 private:
  int fds_ = 0;
  std::string mounts_;
};

[[maybe_unused]] auto* const kLeakCheck = ::testing::AddGlobalTestEnvironment(new LeakCheck);

}  // namespace

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
#include "test_support.h"

namespace {

using cloister::testing::count_host_processes;
using cloister::testing::read_text;

int count_entries(const std::string& dir) {
  int n = 0;
  DIR* d = ::opendir(dir.c_str());
  while (dirent* e = d ? ::readdir(d) : nullptr)
    if (e->d_name[0] != '.') ++n;
  if (d) ::closedir(d);
  return n;
}

std::vector<std::string> cloister_cgroups() {
  std::vector<std::string> left;
  auto m = cloister::cgroups::Manager::shared();
  if (!m) return left;
  for (const auto& base : (*m)->base_paths()) {
    DIR* d = ::opendir(base.c_str());
    while (dirent* e = d ? ::readdir(d) : nullptr) {
      std::string name = e->d_name;
      // Per-process cgroups are "<pid>-<seq>"; anything else is the
      // manager's own (its leaf on a pure v2 host).
      if (!name.empty() && std::isdigit(static_cast<unsigned char>(name[0])) &&
          name.find('-') != std::string::npos)
        left.push_back(base + "/" + name);
    }
    if (d) ::closedir(d);
  }
  return left;
}

class LeakCheck : public ::testing::Environment {
 public:
  void SetUp() override {
    fds_ = count_entries("/proc/self/fd");
    mounts_ = read_text("/proc/self/mountinfo");
  }
  void TearDown() override {
    EXPECT_EQ(count_entries("/proc/self/fd"), fds_) << "fds leaked by the tests";
    EXPECT_EQ(read_text("/proc/self/mountinfo"), mounts_) << "mounts changed on the host";
    EXPECT_EQ(count_host_processes(std::string_view("cloister-init")), 0);
    int inits = 0;
    DIR* d = ::opendir("/proc");
    while (dirent* e = d ? ::readdir(d) : nullptr)
      if (read_text(std::string("/proc/") + e->d_name + "/comm") == "cloister-init\n") ++inits;
    if (d) ::closedir(d);
    EXPECT_EQ(inits, 0) << "sandbox inits left running";
    auto left = cloister_cgroups();
    EXPECT_TRUE(left.empty()) << "cgroups left: " << (left.empty() ? "" : left[0]);
  }

 private:
  int fds_ = 0;
  std::string mounts_;
};

[[maybe_unused]] auto* const kLeakCheck = ::testing::AddGlobalTestEnvironment(new LeakCheck);

}  // namespace

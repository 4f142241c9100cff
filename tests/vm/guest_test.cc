// VmSmoke: what the VM harness (tests/vm/) promises about the cgroup layout.
// Built as cloister_vm_guest, which runs only inside the VM (tests/vm/run.sh
// sets CLOISTER_EXPECT_CGROUP2=1) and is not a host test. It checks the pure
// v2 layout the other integration tests rely on there: memory, pids and cpu enabled at
// the root, a child cgroup with memory.max that is enforced, and the
// no-internal-process rule for a process that starts in a non-root cgroup.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/magic.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace {

constexpr const char* kRoot = "/sys/fs/cgroup";

bool is_cgroup2(const std::string& path) {
  struct statfs st {};
  return statfs(path.c_str(), &st) == 0 && st.f_type == CGROUP2_SUPER_MAGIC;
}

bool in_vm() {
  const char* v = std::getenv("CLOISTER_EXPECT_CGROUP2");
  return v != nullptr && std::string(v) == "1";
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// write(2) the whole string; returns 0 or the errno.
int write_file(const std::string& path, const std::string& data) {
  int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  ssize_t n = write(fd, data.data(), data.size());
  int err = n < 0 ? errno : 0;
  close(fd);
  return err;
}

bool has_word(const std::string& list, const std::string& word) {
  std::istringstream in(list);
  std::string w;
  while (in >> w)
    if (w == word) return true;
  return false;
}

// This process's cgroup-v2 path ("/" for the root), from /proc/self/cgroup.
std::string own_cgroup() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("0::", 0) == 0) return line.substr(3);
  return "";
}

// A cgroup directory removed (after its processes are gone) at scope exit.
struct TempCgroup {
  std::string path;
  explicit TempCgroup(std::string p) : path(std::move(p)) {}
  ~TempCgroup() { rmdir(path.c_str()); }
};

}  // namespace

TEST(VmSmoke, SomeCgroup2HierarchyIsMounted) {
  if (in_vm()) {
    EXPECT_TRUE(is_cgroup2(kRoot)) << kRoot << " is not cgroup2 inside the VM";
    return;
  }
  EXPECT_TRUE(is_cgroup2(kRoot) || is_cgroup2(std::string(kRoot) + "/unified"))
      << "neither /sys/fs/cgroup (pure v2) nor /sys/fs/cgroup/unified (hybrid) is cgroup2";
}

TEST(VmSmoke, RootEnablesMemoryPidsCpu) {
  ASSERT_TRUE(in_vm()) << "cloister_vm_guest runs inside the VM only (tests/vm/run.sh)";
  ASSERT_TRUE(is_cgroup2(kRoot));
  std::string controllers = read_file(std::string(kRoot) + "/cgroup.controllers");
  std::string subtree = read_file(std::string(kRoot) + "/cgroup.subtree_control");
  for (const char* c : {"memory", "pids", "cpu"}) {
    EXPECT_TRUE(has_word(controllers, c))
        << c << " missing from cgroup.controllers: " << controllers;
    EXPECT_TRUE(has_word(subtree, c)) << c << " missing from cgroup.subtree_control: " << subtree;
  }
  EXPECT_EQ(controllers, subtree) << "the harness enables every available controller at the root";
  // No v1 hierarchy anywhere: the VM is pure v2.
  std::string mounts = read_file("/proc/self/mounts");
  EXPECT_EQ(mounts.find(" cgroup "), std::string::npos) << "a cgroup v1 mount exists:\n" << mounts;
}

TEST(VmSmoke, ChildCgroupMemoryMaxIsEnforced) {
  ASSERT_TRUE(in_vm()) << "cloister_vm_guest runs inside the VM only (tests/vm/run.sh)";
  TempCgroup cg(std::string(kRoot) + "/vmsmoke-" + std::to_string(getpid()));
  ASSERT_EQ(mkdir(cg.path.c_str(), 0755), 0) << cg.path << ": " << strerror(errno);
  ASSERT_EQ(write_file(cg.path + "/memory.max", "33554432"), 0);
  EXPECT_EQ(read_file(cg.path + "/memory.max"), "33554432");
  ASSERT_EQ(write_file(cg.path + "/pids.max", "16"), 0);
  EXPECT_EQ(read_file(cg.path + "/pids.max"), "16");
  // Swap (if any) must not absorb the overrun.
  if (access((cg.path + "/memory.swap.max").c_str(), F_OK) == 0) {
    ASSERT_EQ(write_file(cg.path + "/memory.swap.max", "0"), 0);
  }

  // A child that joins the cgroup and touches 128 MiB must be OOM-killed.
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (write_file(cg.path + "/cgroup.procs", "0") != 0) _exit(2);
    const size_t size = 128u << 20;
    char* p = static_cast<char*>(malloc(size));
    if (p == nullptr) _exit(3);
    for (size_t i = 0; i < size; i += 4096) p[i] = 1;
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFSIGNALED(status)) << "child was not killed; status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  std::string events = read_file(cg.path + "/memory.events");
  EXPECT_NE(events.find("oom_kill 1"), std::string::npos) << events;
}

// The harness starts the command in a non-root cgroup (/test by default), as a
// systemd service would be. Such a cgroup cannot both hold processes and give
// controllers to children: the process must first move itself into a leaf.
TEST(VmSmoke, NoInternalProcessRuleInOwnCgroup) {
  ASSERT_TRUE(in_vm()) << "cloister_vm_guest runs inside the VM only (tests/vm/run.sh)";
  std::string own = own_cgroup();
  ASSERT_NE(own, "/")
      << "the harness starts tests in a child cgroup (run.sh without --cgroup root)";
  const std::string dir = std::string(kRoot) + own;
  const std::string leaf = dir + "/vmsmoke-leaf";

  // With this process inside, enabling a controller for children fails.
  EXPECT_EQ(write_file(dir + "/cgroup.subtree_control", "+memory"), EBUSY);

  ASSERT_EQ(mkdir(leaf.c_str(), 0755), 0) << leaf << ": " << strerror(errno);
  ASSERT_EQ(write_file(leaf + "/cgroup.procs", "0"), 0);
  EXPECT_EQ(own_cgroup(), own + "/vmsmoke-leaf");
  // Now it works, and the leaf gets memory.max.
  EXPECT_EQ(write_file(dir + "/cgroup.subtree_control", "+memory +pids"), 0);
  EXPECT_EQ(access((leaf + "/memory.max").c_str(), F_OK), 0);

  // Put everything back: controllers off, back into our cgroup, leaf gone.
  EXPECT_EQ(write_file(dir + "/cgroup.subtree_control", "-memory -pids"), 0);
  ASSERT_EQ(write_file(dir + "/cgroup.procs", "0"), 0);
  EXPECT_EQ(rmdir(leaf.c_str()), 0) << strerror(errno);
  EXPECT_EQ(own_cgroup(), own);
}

// cloister_vm_guest [GTEST ARGS] [--then COMMAND ARGS...]: after its own tests
// pass it execs COMMAND in the same process, so that the command starts in
// the cgroup the harness chose with no shell left behind in it (a shell
// there would break the no-internal-process checks).
int main(int argc, char** argv) {
  int then = argc;
  for (int i = 1; i < argc; ++i)
    if (std::string(argv[i]) == "--then") {
      then = i;
      break;
    }
  int gargc = then;
  ::testing::InitGoogleTest(&gargc, argv);
  int rc = RUN_ALL_TESTS();
  if (rc != 0 || then + 1 >= argc) return rc;
  std::fflush(stdout);
  execv(argv[then + 1], argv + then + 1);
  std::fprintf(stderr, "exec %s: %s\n", argv[then + 1], std::strerror(errno));
  return 127;
}

// runtime/top's command-line reader against a payload that keeps it stuck:
// what the stuck reader holds.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fuse_stall.h"
#include "runtime/top.h"
#include "test_support.h"

namespace cloister::testing {
namespace {

// A field of /proc/PID/status or fdinfo: "Name:\tvalue".
std::string field(const std::string& text, const std::string& name) {
  size_t at = text.find("\n" + name + ":");
  if (at == std::string::npos && text.starts_with(name + ":"))
    at = 0;
  else if (at != std::string::npos)
    ++at;
  if (at == std::string::npos) return "";
  size_t v = text.find_first_not_of(" \t", at + name.size() + 1);
  return text.substr(v, text.find('\n', v) - v);
}

// The reader of a payload that holds its own mmap lock behind a FUSE page
// stays stuck until it is killed. While it is, it must hold nothing of
// cloisterd's: it is cloister-top-reader, exec'd from its sealed memfd,
// with a few pages of its own, only the fds it reads through, and no
// capability.
TEST(Top, AStuckReaderIsASealedProgramHoldingOnlyItsFds) {
  if (std::string why; !FuseStall::available(why)) GTEST_SKIP() << why;
  TempDir mnt;
  FuseStall fuse(mnt.path);
  ASSERT_TRUE(fuse.ok()) << fuse.error();
  const std::string file = mnt.path + "/f";
  pid_t payload = ::fork();
  if (payload == 0) {
    int null = ::open("/dev/null", O_WRONLY);
    ::dup2(null, 1);
    ::execl(CLOISTER_BIN_DIR "/cloister_attack", "cloister_attack", "mmap-lock", file.c_str(),
            nullptr);
    ::_exit(127);
  }
  ASSERT_GT(payload, 0);
  struct stat ns {};
  ASSERT_EQ(::stat("/proc/self/ns/pid", &ns), 0);

  std::optional<top::ArgvReader> stuck;
  std::vector<top::Process> procs;
  // The payload takes its lock 200 ms after it starts: up to 10 s of tries.
  for (int i = 0; i < 500 && !stuck; ++i) {
    procs.clear();
    if (auto p = top::read_process(payload, ns.st_ino)) procs.push_back(std::move(*p));
    ASSERT_EQ(procs.size(), 1u) << "the payload is gone";
    auto r = top::ArgvReader::start(procs);
    ASSERT_TRUE(r) << r.error().what();
    for (auto& p : procs) p.dir.reset();
    pollfd pf{r->fd(), POLLIN, 0};
    if (::poll(&pf, 1, 300) == 0) {
      stuck = std::move(*r);
    } else {
      ASSERT_TRUE(r->reap());
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ASSERT_TRUE(stuck) << "the payload never held its lock";
  const std::string fdinfo = read_text("/proc/self/fdinfo/" + std::to_string(stuck->fd()));
  const std::string pid = field(fdinfo, "Pid");
  ASSERT_FALSE(pid.empty()) << fdinfo;
  const std::string proc = "/proc/" + pid;

  char exe[256] = {};
  ASSERT_GT(::readlink((proc + "/exe").c_str(), exe, sizeof exe - 1), 0);
  EXPECT_TRUE(std::string_view(exe).starts_with("/memfd:cloister-top-reader")) << exe;
  EXPECT_EQ(read_text(proc + "/comm"), "cloister-top\n");
  const std::string status = read_text(proc + "/status");
  EXPECT_EQ(field(status, "PPid"), std::to_string(::getpid()));
  // Root without a capability, and no way to gain one.
  EXPECT_EQ(field(status, "CapEff"), "0000000000000000") << status;
  EXPECT_EQ(field(status, "CapPrm"), "0000000000000000") << status;
  EXPECT_EQ(field(status, "NoNewPrivs"), "1") << status;
  // The slots' memfd, the payload's /proc directory and the cmdline it is
  // stuck reading, nothing else.
  EXPECT_EQ(count_fds(std::stoi(pid)), 3)
      << "the stuck reader's fds: " << shell("ls -l " + proc + "/fd");
  // A static program of a few KiB: its resident pages are its own few, not
  // a copy of this process's (megabytes of it).
  const long rss_kb = std::stol(field(status, "VmRSS"));
  EXPECT_LT(rss_kb, 512) << status;
  const long own_kb = std::stol(field(read_text("/proc/self/status"), "VmRSS"));
  EXPECT_LT(rss_kb * 8, own_kb) << "the reader's RSS against ours";

  bool complete = true;
  auto argvs = stuck->argvs(complete);
  EXPECT_FALSE(complete);
  ASSERT_EQ(argvs.size(), 1u);
  EXPECT_TRUE(argvs[0].empty());
  // Its wait is killable: it dies at once, while the page is still held.
  stuck->kill();
  pollfd pf{stuck->fd(), POLLIN, 0};
  EXPECT_EQ(::poll(&pf, 1, 5000), 1) << "the killed reader did not die";
  EXPECT_TRUE(stuck->reap());
  stuck.reset();

  fuse.stop();
  ::kill(payload, SIGKILL);
  int st = 0;
  EXPECT_EQ(::waitpid(payload, &st, 0), payload);
}

}  // namespace
}  // namespace cloister::testing

// runtime/top: the command-line reader, on processes of the test's own.
#include "runtime/top.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace cloister::top {
namespace {

pid_t spawn_sleeper(const char* marker) {
  pid_t pid = ::fork();
  if (pid == 0) {
    ::execl("/bin/sleep", "sleep", "1000", marker, nullptr);
    ::_exit(127);
  }
  return pid;
}

ino_t own_pidns() {
  struct stat st {};
  EXPECT_EQ(::stat("/proc/self/ns/pid", &st), 0);
  return st.st_ino;
}

// Waits for the reader to exit (it reads two ordinary processes at once).
void finish(ArgvReader& r) {
  pollfd p{r.fd(), POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1) << "the reader did not exit";
  EXPECT_TRUE(r.reap());
}

TEST(Top, ReaderReadsEachProcessThroughItsDirectory) {
  // sleep adds its operands up: the second only makes each command line ours.
  pid_t a = spawn_sleeper("0.001");
  pid_t b = spawn_sleeper("0.002");
  ASSERT_GT(a, 0);
  ASSERT_GT(b, 0);
  // Each has exec'd once its cmdline reads as sleep's.
  std::vector<Process> procs;
  for (int i = 0; i < 500; ++i) {
    procs.clear();
    for (pid_t p : {a, b})
      if (auto pr = read_process(p, own_pidns())) procs.push_back(std::move(*pr));
    if (procs.size() == 2 && procs[0].comm == "sleep" && procs[1].comm == "sleep") break;
    ::usleep(10000);
  }
  ASSERT_EQ(procs.size(), 2u);
  EXPECT_EQ(procs[0].fields["pid"], a);
  EXPECT_EQ(procs[0].fields["ns_pid"], a);
  auto reader = ArgvReader::start(procs);
  ASSERT_TRUE(reader) << reader.error().what();
  // The reader has its own copies: ours may go at once.
  for (auto& p : procs) p.dir.reset();
  finish(*reader);
  bool complete = false;
  auto argvs = reader->argvs(complete);
  EXPECT_TRUE(complete);
  ASSERT_EQ(argvs.size(), 2u);
  EXPECT_EQ(argvs[0], (std::vector<std::string>{"sleep", "1000", "0.001"}));
  EXPECT_EQ(argvs[1], (std::vector<std::string>{"sleep", "1000", "0.002"}));
  auto j = to_json(procs, argvs);
  EXPECT_EQ(j[1]["argv"][2], "0.002");
  for (pid_t p : {a, b}) {
    ::kill(p, SIGKILL);
    ::waitpid(p, nullptr, 0);
  }
}

TEST(Top, AProcessGoneBeforeTheReadIsEmptyNotAnotherOne) {
  pid_t a = spawn_sleeper("0.003");
  ASSERT_GT(a, 0);
  std::optional<Process> p;
  for (int i = 0; i < 500 && !(p && p->comm == "sleep"); ++i) {
    p = read_process(a, own_pidns());
    ::usleep(10000);
  }
  ASSERT_TRUE(p);
  ::kill(a, SIGKILL);
  ::waitpid(a, nullptr, 0);
  std::vector<Process> procs;
  procs.push_back(std::move(*p));
  auto reader = ArgvReader::start(procs);
  ASSERT_TRUE(reader) << reader.error().what();
  finish(*reader);
  bool complete = false;
  auto argvs = reader->argvs(complete);
  EXPECT_TRUE(complete);
  ASSERT_EQ(argvs.size(), 1u);
  EXPECT_TRUE(argvs[0].empty());
  EXPECT_EQ(to_json(procs, argvs)[0]["argv"], nlohmann::json::array({"[sleep]"}));
}

TEST(Top, NoProcessesIsAnEmptyReadNotAFailure) {
  std::vector<Process> none;
  auto reader = ArgvReader::start(none);
  ASSERT_TRUE(reader) << reader.error().what();
  finish(*reader);
  bool complete = false;
  EXPECT_TRUE(reader->argvs(complete).empty());
  EXPECT_TRUE(complete);
}

}  // namespace
}  // namespace cloister::top

// cloisterd benchmarks through the client library (tests/bench/service.sh
// runs them next to the CLI, bwrap and a raw pipe):
//   latency <socket> <runs> [executor] [gap_ms]
//                                 start->exit of /bin/true, RemoteProcess
//                                 (executor "bench" by default; gap_ms of
//                                 idle before each run, 0 by default)
//   throughput <socket> <bytes>   stdout of `head -c BYTES /dev/zero`:
//                                 through the socket (data frames), through
//                                 passed fds (SCM_RIGHTS, a pipe we read), and
//                                 a raw pipe from a plain child, no sandbox
//   stdin <socket> <bytes>        BYTES of zeros into `wc -c`, the same three
//                                 ways (the count it prints is checked)
// Prints "NAME runs=N p50_ms=.. p99_ms=.." or "NAME bytes=N secs=.. mib_s=..".
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "runtime/client.h"

using namespace cloister;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void die(const std::string& what) {
  std::fprintf(stderr, "bench_service: %s\n", what.c_str());
  std::exit(1);
}

void latency(const std::string& socket, int runs, const std::string& executor, int gap_ms) {
  auto ex = RemoteExecutor::connect(socket, executor);
  if (!ex) die(ex.error().what());
  std::vector<double> ms;
  for (int i = 0; i < runs + 20; ++i) {
    if (gap_ms) std::this_thread::sleep_for(std::chrono::milliseconds(gap_ms));
    auto t0 = Clock::now();
    auto p = (*ex)->exec({.argv = {"/bin/true"}});
    if (!p || !(*p)->start()) die("start");
    while (true) {
      auto c = (*p)->read();
      if (!c) die(c.error().what());
      if (!*c) break;
    }
    auto st = (*p)->wait();
    if (!st || st->exit_code != 0) die("wait");
    auto t1 = Clock::now();
    if (i >= 20) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  std::printf("client-library runs=%zu p50_ms=%.3f p99_ms=%.3f\n", ms.size(), ms[ms.size() / 2],
              ms[std::min(ms.size() - 1, ms.size() * 99 / 100)]);
}

void report(const char* name, uint64_t bytes, Clock::time_point t0) {
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("%s bytes=%llu secs=%.3f mib_s=%.0f\n", name, static_cast<unsigned long long>(bytes),
              secs, bytes / secs / (1 << 20));
}

uint64_t drain(int fd) {
  static char buf[1 << 16];
  uint64_t n = 0;
  for (;;) {
    ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return n;
    n += static_cast<uint64_t>(r);
  }
}

void throughput(const std::string& socket, uint64_t bytes) {
  const std::string count = std::to_string(bytes);
  auto ex = RemoteExecutor::connect(socket, "bench");
  if (!ex) die(ex.error().what());
  {  // through the socket
    auto p = (*ex)->exec({.argv = {"head", "-c", count, "/dev/zero"}});
    auto t0 = Clock::now();
    if (!(*p)->start()) die("start");
    uint64_t got = 0;
    for (;;) {
      auto c = (*p)->read();
      if (!c) die(c.error().what());
      if (!*c) break;
      got += (*c)->data.size();
    }
    if (got != bytes || (*p)->evicted() != 0) die("socket: short or evicted output");
    report("socket", got, t0);
  }
  {  // passed fds: the payload writes into our pipe
    auto pipe = make_pipe();
    auto devnull = open_fd("/dev/null", O_RDWR);
    auto stdio = std::make_shared<PassedStdio>();
    stdio->in = Fd(::dup(devnull->get()));
    stdio->out = Fd(::dup(pipe->write.get()));
    stdio->err = Fd(::dup(devnull->get()));
    auto p =
        (*ex)->exec({.argv = {"head", "-c", count, "/dev/zero"}, .passed_stdio = std::move(stdio)});
    auto t0 = Clock::now();
    if (!(*p)->start()) die("start passed");
    pipe->write.reset();
    uint64_t got = drain(pipe->read.get());
    if (got != bytes) die("passed: short output");
    report("passed-fds", got, t0);
    (void)(*p)->wait();
  }
  {  // a raw pipe from a plain child
    auto pipe = make_pipe();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pipe->write.get(), 1);
    const char* argv[] = {"head", "-c", count.c_str(), "/dev/zero", nullptr};
    pid_t pid;
    auto t0 = Clock::now();
    if (::posix_spawnp(&pid, "head", &fa, nullptr, const_cast<char**>(argv), environ) != 0)
      die("spawn head");
    pipe->write.reset();
    uint64_t got = drain(pipe->read.get());
    ::waitpid(pid, nullptr, 0);
    report("raw-pipe", got, t0);
  }
}

// Writes `bytes` zeros to fd in 1 MiB pieces, then closes it.
void feed(Fd fd, uint64_t bytes) {
  static const std::string chunk(1 << 20, '\0');
  while (bytes > 0) {
    const size_t n = std::min<uint64_t>(bytes, chunk.size());
    if (auto s = write_all(fd.get(), std::string_view(chunk).substr(0, n)); !s)
      die(s.error().what());
    bytes -= n;
  }
}

void check_count(const char* name, const std::string& out, uint64_t bytes) {
  if (std::strtoull(out.c_str(), nullptr, 10) != bytes)
    die(std::string(name) + ": wc -c counted " + out);
}

void stdin_throughput(const std::string& socket, uint64_t bytes) {
  auto ex = RemoteExecutor::connect(socket, "bench");
  if (!ex) die(ex.error().what());
  {  // through the socket: data frames, as fast as the service takes them
    auto p = (*ex)->exec({.argv = {"wc", "-c"}, .stdin_open = true});
    if (!p) die(p.error().what());
    auto t0 = Clock::now();
    if (!(*p)->start()) die("start");
    static const std::string chunk(1 << 20, '\0');
    for (uint64_t left = bytes; left > 0;) {
      const size_t n = std::min<uint64_t>(left, chunk.size());
      if (auto s = (*p)->write_stdin(std::string_view(chunk).substr(0, n)); !s)
        die(s.error().what());
      left -= n;
    }
    if (auto s = (*p)->write_stdin(""); !s) die(s.error().what());
    std::string out;
    for (;;) {
      auto c = (*p)->read();
      if (!c) die(c.error().what());
      if (!*c) break;
      out += (*c)->data;
    }
    report("socket", bytes, t0);
    check_count("socket", out, bytes);
  }
  {  // passed fds: the payload reads our pipe
    auto in = make_pipe(), out = make_pipe();
    auto devnull = open_fd("/dev/null", O_RDWR);
    auto stdio = std::make_shared<PassedStdio>();
    stdio->in = Fd(::dup(in->read.get()));
    stdio->out = Fd(::dup(out->write.get()));
    stdio->err = Fd(::dup(devnull->get()));
    auto p = (*ex)->exec({.argv = {"wc", "-c"}, .passed_stdio = std::move(stdio)});
    auto t0 = Clock::now();
    if (!(*p)->start()) die("start passed");
    in->read.reset();
    out->write.reset();
    feed(std::move(in->write), bytes);
    std::string counted(64, '\0');
    ssize_t n = ::read(out->read.get(), counted.data(), counted.size());
    report("passed-fds", bytes, t0);
    check_count("passed", counted.substr(0, n > 0 ? n : 0), bytes);
    (void)(*p)->wait();
  }
  {  // a raw pipe into a plain child
    auto in = make_pipe(), out = make_pipe();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in->read.get(), 0);
    posix_spawn_file_actions_adddup2(&fa, out->write.get(), 1);
    const char* argv[] = {"wc", "-c", nullptr};
    pid_t pid;
    auto t0 = Clock::now();
    if (::posix_spawnp(&pid, "wc", &fa, nullptr, const_cast<char**>(argv), environ) != 0)
      die("spawn wc");
    in->read.reset();
    out->write.reset();
    feed(std::move(in->write), bytes);
    std::string counted(64, '\0');
    ssize_t n = ::read(out->read.get(), counted.data(), counted.size());
    ::waitpid(pid, nullptr, 0);
    report("raw-pipe", bytes, t0);
    check_count("raw pipe", counted.substr(0, n > 0 ? n : 0), bytes);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4 || argc > 6)
    die("usage: bench_service latency SOCKET RUNS [EXECUTOR] [GAP_MS] | throughput SOCKET BYTES "
        "| stdin SOCKET BYTES");
  std::string mode = argv[1];
  if (mode == "latency")
    latency(argv[2], std::atoi(argv[3]), argc > 4 ? argv[4] : "bench",
            argc > 5 ? std::atoi(argv[5]) : 0);
  else if (mode == "throughput")
    throughput(argv[2], std::strtoull(argv[3], nullptr, 10));
  else if (mode == "stdin")
    stdin_throughput(argv[2], std::strtoull(argv[3], nullptr, 10));
  else
    die("unknown mode " + mode);
}

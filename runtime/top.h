// What `top` lists of a session's processes, read from /proc without ever
// letting the payload stall the reader.
//
// /proc/PID/stat, status and ns/pid are answered from kernel state alone.
// /proc/PID/cmdline is not: it reads the process's own memory, under its
// mmap lock, and a payload can map a page of a FUSE file it serves itself
// over its argument area, or keep its mmap lock queued behind a fault that
// FUSE holds open. A reader of that cmdline waits as long as the payload
// likes, which in cloisterd's single event loop would be every tenant's
// wait. So the command lines are read by a child that writes them into
// shared memory, and that child is killed at a deadline (the wait in the
// kernel is killable); the processes whose command line it did not get to
// show their kernel name, as ps shows a process with none. The child is
// cloister-top-reader (runtime/top_reader.cc), exec'd from a sealed memfd
// before it reads anything: a reader stuck for as long as the payload likes
// holds a few pages and the fds it reads through, no copy of cloisterd's
// memory, page tables or fds.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "isolate/error.h"
#include "isolate/fd.h"
#include "runtime/top_reader.h"

namespace cloister::top {

// One process: its fields (pid, ppid, state, cpu_time_us, rss, ns_pid, uid)
// and the /proc/PID directory they came from, which stays that process's
// even if its number is reused: the command line is read through it.
struct Process {
  nlohmann::json fields;
  std::string comm;
  Fd dir;
};

// The process `pid`, if it is still there and in the pid namespace `pidns`
// or one below it (a payload may unshare its own); `ns_pid` is its pid at
// pidns's level.
std::optional<Process> read_process(pid_t pid, ino_t pidns);

// The child reading the command lines of `procs`. Move-only.
//
// A reader stuck on a FUSE page is in an uninterruptible wait (a remote read
// of another process's memory faults without retry), so SIGKILL marks it but
// it dies only when the payload answers or its FUSE device closes, at the
// latest when the session ends. Nothing here waits for that: kill() only
// sends the signal and reap() never blocks. The destructor kills and waits a
// second at most; a child still stuck then is left to exit on its own.
class ArgvReader {
 public:
  // Starts the reader; it reads each process's cmdline through its dir fd.
  // The dir fds may be closed once this returns (the reader has its own).
  [[nodiscard]] static Result<ArgvReader> start(const std::vector<Process>& procs);
  ArgvReader(ArgvReader&&) noexcept;
  ArgvReader& operator=(ArgvReader&&) noexcept;
  ~ArgvReader();

  // Readable (for poll/epoll) once the child has exited.
  int fd() const { return pidfd_.get(); }

  // Reaps the child if it has exited: true once it is gone.
  bool reap();
  void kill();

  // Each process's argv so far, in the order given to start(), read while
  // the child may still run; an empty one where the child has not got to it
  // or the process had none. `complete` is false when any is missing.
  std::vector<std::vector<std::string>> argvs(bool& complete) const;

 private:
  ArgvReader() = default;
  void release();
  Fd pidfd_;
  bool reaped_ = false;
  void* shared_ = nullptr;
  size_t shared_size_ = 0, count_ = 0;
};

// The sealed memfd of cloister-top-reader, made on first use and kept for
// good, as the init's is (isolate/init_program.h).
Result<int> reader_program();

// procs as `top` replies with them: fields plus argv, which is the kernel's
// name in brackets where the command line is empty or was not read.
nlohmann::json to_json(std::vector<Process>& procs,
                       const std::vector<std::vector<std::string>>& argvs);

}  // namespace cloister::top

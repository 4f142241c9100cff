// Process: one command in its own sandbox, with the process model the seed
// exec APIs share (Wippy's exec, OpenComputer's exec.start, ToastStunt's
// exec()). Made by Executor::exec, not started until start().
//
//   auto p = executor->exec({.command = "git status"});
//   p->start();
//   while (auto chunk = p->read(); chunk && *chunk) ...;   // stdout and stderr
//   auto status = p->wait();                               // ExitStatus
//
// Calls out of order fail with INVALID: start twice, wait/signal/read before
// start, write_stdin after the stdin was closed or the process closed.
//
// Output: read() returns the next chunk of either stream (nullopt once both
// are at EOF); read(stream) reads one stream only. Output is not buffered by
// the library: the payload blocks when its pipe (64 KiB) is full, so read
// both streams (read(), or one thread per stream) while it runs. The fds are
// exposed for event loops. Data still in the pipes stays readable after exit.
//
// Output caps (the executor's output_limit): each stream keeps at most its
// cap; at the first byte beyond it the stream ends for the reader (EOF) with
// truncated(stream) set, and what the payload writes afterwards is drained
// and dropped by a thread of the library, so the payload never blocks on a
// full pipe nor dies of SIGPIPE. ExitStatus carries the flags too. As at
// any EOF, the stream's fd (stdout_fd()/stderr_fd()) is then -1: an event
// loop deregisters it when read(stream) returns "".
//
// Timeouts are enforced by a watchdog thread of the library, whether or not
// anyone calls into the Process: at the deadline the whole tree is killed
// and wait() reports timed_out.
//
// Thread safety: one reader per stream, one writer of stdin, and any number
// of wait/signal/close callers may run concurrently.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "isolate/error.h"
#include "isolate/fd.h"
#include "isolate/spawn.h"
#include "policy/limits.h"

namespace cloister {

enum class Stream { Stdout = 1, Stderr = 2 };

struct Chunk {
  Stream stream;
  std::string data;
};

struct ExitStatus {
  int exit_code = -1;  // the payload's exit code, or -1 when a signal ended it
  int signal = 0;      // the signal that ended it, or 0
  bool oom_killed = false;
  bool timed_out = false;
  std::chrono::microseconds cpu_time{0};  // user + system of the whole tree
  uint64_t peak_memory = 0;               // bytes, whole tree (0 if unknown)
  std::chrono::microseconds wall_time{0};
  bool stdout_truncated = false;  // output beyond the stream's cap was dropped
  bool stderr_truncated = false;

  bool exited() const { return exit_code >= 0; }
  // The shell's convention: the exit code, 128 + signal, 124 on timeout.
  int code() const;
};

// Stdio fds the caller owns and hands over (e.g. received from a client with
// SCM_RIGHTS): the payload gets them as 0, 1 and 2 (an empty Fd = /dev/null)
// and the Process has no output of its own to read. Only pipes, sockets,
// terminals and /dev/null are accepted (check_passed_stdio): a root payload
// would reopen anything else through /proc/self/fd/N with its own rights (a
// directory fd is a way into the host's tree, a root-owned file opened for
// reading becomes writable).
struct PassedStdio {
  Fd in, out, err;
};
// OK when fd may be handed to a payload as its stream; INVALID naming the
// stream and what the fd is otherwise.
Status check_passed_stdio(int fd, std::string_view stream);

// A joined process's stream (ExecRequest::join) ends at its exit, whatever
// the sandbox's other processes still hold of it: these say what is left to
// read of it then (Process here, Session in the service). The bytes fd
// holds now, plus for a pty what its buffer has not pushed yet (at most one
// tty buffer, which a read or poll pushes); and whether anything is there
// now (a poll pushes a pty's buffer first).
int64_t output_tail_at_exit(int fd, bool pty);
bool output_readable_now(int fd);

// A terminal for the payload instead of pipes.
struct PtyRequest {
  unsigned short rows = 24, cols = 80;
};

class Process;

// What start() needs; filled in by Executor::exec.
struct ProcessSetup {
  std::shared_ptr<const Sandbox> sandbox;
  std::shared_ptr<cgroups::Manager> cgroups;  // may be null: no cgroup
  Command command;
  bool stdin_open = false;  // false: the payload reads /dev/null
  std::chrono::milliseconds timeout{0};
  // Policy (policy/exec_policy.h): the file command.exec_fd refers to, the
  // limit slots held until the process ends, and the per-stream output caps
  // (0 = none).
  Fd exec_file;
  std::vector<policy::Slot> slots;
  uint64_t stdout_limit = 0;
  uint64_t stderr_limit = 0;
  // Told when start() fails, so that a refusal made inside the sandbox (a
  // work dir leading out of allowed_dirs) is audited like the others.
  std::function<void(const Error&)> on_start_failure;
  // At most one of these two. With a pty the payload's 0/1/2 are the slave
  // (its controlling terminal); stdout_fd() is the master, which carries
  // stdout and stderr merged, and write_stdin writes to it (an empty write
  // sends the terminal's EOF character). stderr_fd() is -1.
  std::shared_ptr<PassedStdio> passed_stdio;
  std::optional<PtyRequest> pty;
  // The running sandbox start() joins (ExecRequest::join).
  std::optional<Join> join;
};

class Process {
 public:
  explicit Process(ProcessSetup setup);
  ~Process();  // kills the whole tree if it still runs and reaps it
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  Status start();

  // Writes to the payload's stdin (blocking). An empty write closes stdin:
  // the payload reads EOF.
  Status write_stdin(std::string_view data);

  Result<std::optional<Chunk>> read();
  // Next chunk of one stream; an empty string at EOF.
  Result<std::string> read(Stream stream);

  // Blocks until the payload has exited (or was killed); repeatable. When it
  // returns, no process of the sandbox is left running: either the init said
  // it was alone at the payload's exit (its own exit, the namespaces'
  // teardown and the cgroup's removal then finish on the library's reaper
  // thread; Spawned::drain_retired() waits for them), or the init is gone.
  Result<ExitStatus> wait();
  // As wait(), but gives up after `timeout` with a TIMEOUT error.
  Result<ExitStatus> wait_for(std::chrono::milliseconds timeout);

  // Sends a signal to the payload. SIGKILL kills the whole tree, and returns
  // once its cgroup is empty (5 s at most).
  Status signal(int sig);
  // SIGKILL to the whole tree without waiting for it to die: for an event
  // loop, which must not wait on a payload that makes its own death slow
  // (a process in an uninterruptible wait), and sees the exit on exit_fd()
  // as usual. Nothing when it has exited already.
  Status kill_nowait();
  // Kills the tree without waiting and leaves its reaping to the library's
  // reaper thread (Spawned::retire_killed): the Process is then closed, with
  // no exit to report and nothing left to ask of it but its destruction.
  // For an event loop dropping a session that may take its time to die.
  void abandon();
  // close(): SIGTERM to the payload, then SIGKILL to the tree after the
  // grace period. close(true): SIGKILL to the tree at once. Reaps it, closes
  // stdin. Idempotent; a Process never started is just marked closed.
  Status close(bool force = false);
  void set_close_grace(std::chrono::milliseconds grace) { grace_ = grace; }

  // Sets the pty's window size (TIOCSWINSZ; the payload gets SIGWINCH).
  // INVALID without a pty.
  Status resize(unsigned short rows, unsigned short cols);
  bool has_pty() const { return setup_.pty.has_value(); }

  bool started() const { return started_; }
  bool running() const;
  pid_t pid() const;  // the sandbox's init, in the caller's pid namespace
  int stdout_fd() const { return out_.get(); }
  int stderr_fd() const { return err_.get(); }
  int stdin_fd() const { return in_.get(); }
  int pidfd() const;
  // The command as it runs: a shell executor's /bin/sh -c, a split command
  // string, an image's entrypoint in front.
  const std::vector<std::string>& argv() const { return setup_.command.argv; }
  // What it runs and in what (`inspect`): the command as lowered, and the
  // sandbox's validated spec (null for a process without one).
  const Command& command() const { return setup_.command; }
  const SpawnSpec* sandbox_spec() const {
    return setup_.sandbox ? &setup_.sandbox->spec() : nullptr;
  }
  std::chrono::milliseconds timeout() const { return setup_.timeout; }
  // Whether sb is the sandbox this Process runs in (Executor::exec's check
  // of a join).
  bool same_sandbox(const Sandbox& sb) const { return setup_.sandbox.get() == &sb; }
  // Whether it was started into another Process's sandbox.
  bool joined() const { return joined_; }
  // What a process needs to join this one's sandbox (Spawned::join_point):
  // INVALID before start(), once the payload has exited, and for a joined
  // Process (its init is outside the sandbox's pid namespace: join the
  // one it joined).
  Result<Join> join_point() const;
  // While it runs (`stats`, `top`): what the sandbox uses now and its
  // processes (host pids). After the exit: the final usage, no processes.
  struct Now {
    cgroups::Usage usage;
    cgroups::Live live;
    std::vector<pid_t> pids;
  };
  Result<Now> now() const;
  // For an event loop: readable when wait_for(0) may have news. The init's
  // status pipe while it is unread (the payload's exit, before the sandbox's
  // teardown), the pidfd after that. Ask again after a wait_for(0) that timed
  // out: the fd may have changed.
  int exit_fd() const;
  bool truncated(Stream stream) const {
    return stream == Stream::Stdout ? out_cap_.truncated : err_cap_.truncated;
  }

  struct Watch;  // shared with the timeout watchdog

 private:
  Result<ExitStatus> finish();  // reap and collect; called once the init exited
  struct Cap {
    uint64_t limit = 0;  // 0 = none
    uint64_t seen = 0;
    std::atomic<bool> truncated{false};
    // A joined process's stream, once its init has exited: the bytes still
    // to read (what the pipe held then), -1 before. What the sandbox's other
    // processes still write there is not waited for.
    int64_t tail = -1;
  };
  Result<std::string> read_fd(Fd& fd, std::mutex& mu, Cap& cap);
  ExitStatus with_flags(ExitStatus st) const;

  ProcessSetup setup_;
  std::optional<Spawned> spawned_;
  std::shared_ptr<Watch> watch_;
  std::shared_ptr<Watch> escalate_;  // kill_nowait's of a joined process
  static void disarm(const std::shared_ptr<Watch>& w);
  Fd in_, out_, err_;
  std::mutex in_mu_, out_mu_, err_mu_;
  mutable std::mutex state_mu_;
  bool started_ = false;
  bool joined_ = false;
  Fd joined_exit_;  // a joined process's pidfd, for the end of its output
  std::atomic<bool> closed_{false};
  bool abandoned_ = false;
  std::optional<ExitStatus> status_;
  std::chrono::steady_clock::time_point started_at_;
  std::chrono::milliseconds grace_{5000};
  Cap out_cap_, err_cap_;
};

}  // namespace cloister

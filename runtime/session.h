// Session: one command run by cloisterd, kept beyond the client that started
// it. It owns the Process and one RingBuffer per output stream (plus an
// optional log file), and counts every byte with absolute offsets, so that
// any number of clients can attach, detach and reattach from an offset and
// be told exactly what was evicted.
//
// The session reads its pipes only when asked (by the server's event loop,
// on readiness) and never blocks: fds are non-blocking. Whether it should
// read at all is the server's call (backpressure: an attached reader that
// lags a whole buffer behind pauses the stream, see server.h).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "isolate/error.h"
#include "isolate/fd.h"
#include "runtime/process.h"
#include "runtime/ring_buffer.h"

namespace cloister {

struct SessionSpec {
  uint64_t id = 0;
  std::string executor;
  std::vector<std::string> argv;  // as it runs (Process::argv)
  std::string command;            // the request's command string, if it gave one
  std::string name;               // "" = none; unique among the service's sessions
  uid_t owner = 0;
  bool detached = false;
  bool pty = false;
  bool passed_stdio = false;
  uint64_t exec_of = 0;  // `exec`: the session whose sandbox it runs in; 0 = its own
  size_t buffer_size = 1 << 20;
  uint64_t max_output = 0;  // per stream; 0 = no cap. Past it output is discarded and counted.
  Fd log;                   // may be empty
};

class Session {
 public:
  Session(SessionSpec spec, std::unique_ptr<Process> process);
  ~Session();  // kills the process tree if it still runs

  uint64_t id() const { return spec_.id; }
  const SessionSpec& spec() const { return spec_; }
  Process& process() { return *process_; }

  // Output streams: 0 = stdout, 1 = stderr.
  int output_fd(int i) const;
  RingBuffer& buffer(int i) { return out_[i]; }
  const RingBuffer& buffer(int i) const { return out_[i]; }
  bool output_eof(int i) const { return eof_[i]; }
  uint64_t discarded(int i) const { return discarded_[i]; }  // past max_output

  // Reads once, at most max bytes, from stream i (non-blocking). Returns the
  // bytes read (0 on EAGAIN); marks EOF on end of stream or error.
  size_t pull(int i, size_t max);
  // An exec's streams end with its command, at its exit: processes of the
  // sandbox that outlive it may hold them open, and are not waited for.
  // What the pipes hold now is still read (by pull), then they are at EOF.
  void end_output_at_exit();

  // Stdin: queued and written as the payload reads.
  int stdin_fd() const { return process_->stdin_fd(); }
  size_t stdin_queued() const { return stdin_.size(); }
  // Bytes of stdin the payload's pipe has taken, from the start (every
  // client's): what the service acknowledges (docs/protocol.md, "Stdin").
  uint64_t stdin_consumed() const { return stdin_consumed_; }
  bool stdin_open() const { return stdin_ok_ && !stdin_close_pending_; }
  Status queue_stdin(std::string_view data);
  void close_stdin();  // after what is queued
  // Writes what is queued; true when the queue is empty afterwards.
  bool flush_stdin();

  // Exit: reap (blocking), or try to once process().exit_fd() is readable;
  // try_reap() is true when the session has exited.
  void reap();
  bool try_reap();
  bool exited() const { return status_.has_value() || reap_error_.has_value(); }
  // Exited and both output streams drained: the exit event may be sent.
  bool finished() const { return exited() && eof_[0] && eof_[1]; }
  const std::optional<ExitStatus>& status() const { return status_; }
  const std::optional<Error>& reap_error() const { return reap_error_; }

  std::chrono::system_clock::time_point started_wall;
  std::chrono::steady_clock::time_point finished_at;
  std::optional<std::chrono::steady_clock::time_point> kill_at;  // max_run_after_disconnect

 private:
  SessionSpec spec_;
  std::unique_ptr<Process> process_;
  RingBuffer out_[2];
  bool eof_[2] = {false, false};
  int64_t tail_[2] = {-1, -1};  // end_output_at_exit: bytes still to read
  uint64_t discarded_[2] = {0, 0};
  std::string stdin_;
  uint64_t stdin_consumed_ = 0;
  bool stdin_ok_ = false;
  bool stdin_close_pending_ = false;
  std::optional<ExitStatus> status_;
  std::optional<Error> reap_error_;
};

}  // namespace cloister

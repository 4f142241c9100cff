// The client side of cloisterd's protocol (docs/protocol.md).
//
// Connection: one socket to the service, blocking, for one thread. call()
// sends a request and returns its reply; events and data frames that arrive
// meanwhile are queued and handed out by next() in arrival order.
//
// RemoteExecutor / RemoteProcess: the same process model as Executor /
// Process (runtime/executor.h, runtime/process.h), method for method, so that
// an embedder switches between in-process and service with one line:
//
//   auto shell = Executor::create(*config.find("shell"));           // in-process
//   auto shell = RemoteExecutor::connect(kSocket, "shell");          // through cloisterd
//   auto p = (*shell)->exec({.argv = {"git", "status"}});
//   (*p)->start(); ... (*p)->read() ... (*p)->wait();
//
// A RemoteProcess is a session started attached on a connection of its own.
// Its output is not lost if the reader is slow: the service holds the
// payload back (backpressure) while this client is attached. Destroying a
// RemoteProcess that still runs kills the session's whole tree and removes
// it, as ~Process does; detach() instead leaves it running in the service.
//
// Memory: output that arrives while the caller is in wait(), signal() or
// another call is kept in this client until read() takes it, as a Process's
// pipes would hold it - except that it is not bounded by 64 KiB. Read while
// the payload runs, or detach and attach later, for unbounded output.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <deque>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "isolate/error.h"
#include "isolate/fd.h"
#include "runtime/executor.h"
#include "runtime/messages.h"
#include "runtime/process.h"
#include "runtime/protocol.h"

namespace cloister {

// The socket path of the service: $CLOISTER_SOCKET, else /run/cloister/cloister.sock.
std::string default_socket_path();

// The Error a protocol error object ({kind, message, errno, at_exec})
// describes, and an exit status object's ExitStatus (runtime/messages.h).
using protocol::error_from_json;
using protocol::status_from_json;

class Connection {
 public:
  // Connects and says hello (protocol version 1).
  static Result<std::unique_ptr<Connection>> connect(const std::string& path);

  struct Message {
    bool data = false;
    nlohmann::json control;  // an event or a reply (when !data)
    uint64_t session = 0;    // data frames
    protocol::StreamId stream = protocol::StreamId::Stdout;
    uint64_t offset = 0;
    std::string bytes;
  };

  // Sends a request (an "id" is added) with fds attached (SCM_RIGHTS) and
  // returns its id, without waiting for the reply.
  Result<uint64_t> send(nlohmann::json request, std::span<const int> fds = {});
  // send() and wait for the reply: its body when ok, its error otherwise.
  Result<nlohmann::json> call(nlohmann::json request, std::span<const int> fds = {});
  // The same with a request of runtime/messages.h.
  template <class M>
  Result<uint64_t> send(const M& request, std::span<const int> fds = {}) {
    return send(protocol::to_json(request), fds);
  }
  template <class M>
  Result<nlohmann::json> call(const M& request, std::span<const int> fds = {}) {
    return call(protocol::to_json(request), fds);
  }
  // The reply to the request send() numbered id (what else arrives
  // meanwhile is kept for next()), as call() waits for it.
  Result<nlohmann::json> reply(uint64_t id);
  // The next event, reply or data frame; TIMEOUT after timeout (-1 = none).
  // An event's message is control; protocol::parse_event makes it a type.
  Result<Message> next(std::chrono::milliseconds timeout = std::chrono::milliseconds(-1));
  Status send_stdin(uint64_t session, std::string_view data);

  int fd() const { return fd_.get(); }
  uint32_t max_frame() const { return max_frame_; }
  const nlohmann::json& hello() const { return hello_; }

 private:
  Result<std::optional<Message>> read_frame(std::chrono::milliseconds timeout);
  Fd fd_;
  protocol::Decoder dec_;
  std::deque<Message> queued_;
  uint64_t next_id_ = 1;
  uint32_t max_frame_ = protocol::kDefaultMaxFrame;
  nlohmann::json hello_;
};

class RemoteProcess;

class RemoteExecutor {
 public:
  // Checks that the service is reachable and has this executor.
  static Result<std::shared_ptr<RemoteExecutor>> connect(const std::string& socket,
                                                         const std::string& executor);
  const std::string& name() const { return executor_; }
  // Validates locally what it can and returns a RemoteProcess, not started.
  Result<std::unique_ptr<RemoteProcess>> exec(ExecRequest request) const;

 private:
  std::string socket_, executor_;
};

// `exec` into a running session (its id, or its name as a string): a
// RemoteProcess whose start() runs the request's command in that session's
// sandbox, on its executor (the `exec` op, docs/protocol.md). request.join
// is for the library's Process and must be null.
Result<std::unique_ptr<RemoteProcess>> exec_in_session(const std::string& socket,
                                                       nlohmann::json session, ExecRequest request);

class RemoteProcess {
 public:
  // With `into` (a session id or name), start() execs into that session.
  RemoteProcess(std::string socket, std::string executor, ExecRequest request,
                nlohmann::json into = nullptr);
  ~RemoteProcess();
  RemoteProcess(const RemoteProcess&) = delete;
  RemoteProcess& operator=(const RemoteProcess&) = delete;

  Status start();
  Status write_stdin(std::string_view data);  // empty = close stdin
  Result<std::optional<Chunk>> read();
  Result<std::string> read(Stream stream);
  Result<ExitStatus> wait();
  Result<ExitStatus> wait_for(std::chrono::milliseconds timeout);
  Status signal(int sig);
  Status close(bool force = false);
  void set_close_grace(std::chrono::milliseconds grace) { grace_ = grace; }
  Status resize(unsigned short rows, unsigned short cols);

  bool started() const { return session_ != 0; }
  bool running() const { return started() && !status_; }
  pid_t pid() const { return pid_; }

  // Service-only: the session id, and leaving the session running.
  uint64_t session() const { return session_; }
  Status detach();
  // Bytes the service reported as evicted before this client read them.
  uint64_t evicted() const { return evicted_; }

 private:
  // Handles one message; data frames are queued in chunks_.
  Status take(Connection::Message m);
  Status call_ok(const nlohmann::json& request);
  Result<bool> pump_one(std::chrono::milliseconds timeout);

  std::string socket_, executor_;
  ExecRequest request_;
  nlohmann::json into_;
  std::unique_ptr<Connection> conn_;
  uint64_t session_ = 0;
  pid_t pid_ = -1;
  std::deque<Chunk> chunks_;
  bool eof_[2] = {false, false};
  std::optional<ExitStatus> status_;
  uint64_t evicted_ = 0;
  bool detached_ = false;
  std::chrono::milliseconds grace_{5000};
};

}  // namespace cloister

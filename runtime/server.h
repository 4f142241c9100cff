// Server: cloisterd's event loop. One thread, epoll, non-blocking fds; it
// owns the listening socket, the client connections and the sessions, and
// speaks the protocol of docs/protocol.md.
//
// Promises:
//  - a malformed or oversize frame ends only that connection (after an error
//    reply when one can be framed); invalid JSON and unknown ops get an error
//    reply and the connection stays usable;
//  - a client that says nothing is dropped after hello_timeout, an idle one
//    (nothing attached, nothing pending) after idle_timeout;
//  - memory per session is bounded by 2 x buffer_size, per connection by a
//    fixed high-water mark of queued output: live output is pulled from the
//    session buffers only while the connection's queue is short. A reader
//    that falls a whole buffer behind pauses the payload's stream
//    (backpressure) while it stays attached; with no reader attached the
//    oldest output is evicted and reported as such on the next attach;
//  - the exit event of a session follows all of its output;
//  - sessions are spawned from the thread that calls run(): their sandboxes
//    die with it (PR_SET_PDEATHSIG), so a service killed with SIGKILL leaves
//    no session process behind.
// run() returns after SIGTERM or SIGINT, once sessions are ended as
// service.shutdown says and their cgroups are removed.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "isolate/error.h"
#include "isolate/fd.h"
#include "runtime/config.h"

namespace cloister {

// A listening Unix socket at path: a stale socket file (nobody accepting) is
// replaced; a live one is an error. Mode and group are applied to the file.
Result<Fd> listen_unix(const std::string& path, uint32_t mode, uint32_t gid);

class Server {
 public:
  // listener: a listening, non-blocking-capable Unix stream socket (from
  // listen_unix or systemd). unlink_path: removed on shutdown ("" = none).
  static Result<std::unique_ptr<Server>> create(Config config, Fd listener,
                                                std::string unlink_path = "");
  ~Server();

  // Logs one line per notable event (start failures, dropped clients).
  void set_logger(std::function<void(const std::string&)> log);
  // Called once, when the loop is about to accept (sd_notify READY=1).
  void set_ready(std::function<void()> ready);

  Status run();

  struct Impl;

 private:
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace cloister

// The messages of cloisterd's protocol (docs/protocol.md) as types, with
// their JSON mapping: the one place a request's, a reply's or an event's
// field is named. The server parses requests and writes replies and events
// through it; the client library and the CLI write requests and read
// replies and events through it, so that the two sides cannot drift apart.
//
// parse<T>() checks what a message says by itself: each field's type and
// range, with an INVALID error naming the field. It never decides what
// needs the service's state (that an executor or a session exists, that a
// name is free, that the caller may do it): that stays with the server, in
// the order the protocol gives. Fields a message does not know are
// ignored, as the protocol lets a newer client send them.
//
// Replies that are documents to show rather than to act on (list, inspect,
// stats, top) stay JSON: the CLI prints them as they come.
#pragma once

#include <sys/types.h>

#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "isolate/error.h"
#include "runtime/process.h"
#include "runtime/protocol.h"

namespace cloister::protocol {

using json = nlohmann::json;

// A session, named by its id or by the name its owner gave it.
using SessionRef = std::variant<uint64_t, std::string>;
json to_json(const SessionRef& s);
std::string describe(const SessionRef& s);  // "session 7", "session 'web'"

// Errors and exit statuses as requests' replies and events carry them.
json to_json(const Error& e);
Error error_from_json(const json& e);
json to_json(const ExitStatus& s);
ExitStatus status_from_json(const json& s);

// ----------------------------------------------------------------- requests

struct Hello {
  static constexpr std::string_view kOp = "hello";
  std::vector<uint64_t> versions{kVersion};
  std::string client;
};
struct Ping {
  static constexpr std::string_view kOp = "ping";
};
struct ListExecutors {
  static constexpr std::string_view kOp = "executors";
};
struct List {
  static constexpr std::string_view kOp = "list";
};
struct Events {
  static constexpr std::string_view kOp = "events";
  bool enabled = true;
};

struct PtySize {
  unsigned short rows = 24, cols = 80;
};

// start, run and exec: a command to launch, on an executor (start, run) or
// in a running session's sandbox (exec).
struct Launch {
  enum class Kind { Start, Run, Exec };
  enum class Stdio { Pipes, Passed };
  Kind kind = Kind::Start;
  std::string executor;               // start, run; exec: empty or the session's own
  std::optional<SessionRef> session;  // exec
  std::vector<std::string> argv;
  std::string command;  // a command string, for the executor's shell
  std::vector<std::pair<std::string, std::string>> env;
  std::string work_dir;
  bool stdin_open = false;
  uint64_t timeout_ms = 0;
  bool detached = false;
  // Bytes of each stream kept; absent: the op's default (start and exec
  // keep all, run 64 KiB).
  std::optional<uint64_t> max_output;
  std::string log_file;
  Stdio stdio = Stdio::Pipes;  // Passed: 3 fds go with the frame
  std::string name;
  std::optional<PtySize> pty;  // start, exec
  // run only: the reply's output is its last `tail` lines (0: all) of the
  // lines matching `grep` (an ECMAScript regular expression; empty: all).
  uint64_t tail = 0;
  std::string grep;

  std::string_view op() const;
};

struct Attach {
  static constexpr std::string_view kOp = "attach";
  SessionRef session;
  std::optional<uint64_t> stdout_offset, stderr_offset;  // absent: the buffer's start
  bool follow = true;  // false: what is buffered, then an `end` event
};
// The ops that name a session and say nothing else: one type each, so that
// the server's table and the client's calls cannot mix them up.
template <size_t N>
struct OpName {
  char s[N];
  constexpr OpName(const char (&v)[N]) { std::copy_n(v, N, s); }
};
template <OpName Op>
struct SessionOnly {
  static constexpr std::string_view kOp{Op.s, sizeof(Op.s) - 1};
  SessionRef session;
};
using Detach = SessionOnly<"detach">;
using CloseStdin = SessionOnly<"close_stdin">;
using Stats = SessionOnly<"stats">;
using Top = SessionOnly<"top">;
using Inspect = SessionOnly<"inspect">;
struct Signal {
  static constexpr std::string_view kOp = "signal";
  SessionRef session;
  int signal = 0;  // sent as a number; a name ("TERM", "SIGTERM") is parsed to one
};
struct Resize {
  static constexpr std::string_view kOp = "resize";
  SessionRef session;
  unsigned short rows = 0, cols = 0;  // 1 to 65535 each
};
struct Wait {
  static constexpr std::string_view kOp = "wait";
  SessionRef session;
  uint64_t timeout_ms = 0;  // 0: until the session ends
};
struct Remove {
  static constexpr std::string_view kOp = "remove";
  SessionRef session;
  bool force = false;
};
struct Cp {
  static constexpr std::string_view kOp = "cp";
  enum class Direction { In, Out };
  SessionRef session;
  Direction direction = Direction::Out;
  std::string path;  // absolute, in the sandbox
};

// A request's JSON, "op" included (the connection adds "id").
json to_json(const Hello& m);
json to_json(const Ping& m);
json to_json(const ListExecutors& m);
json to_json(const List& m);
json to_json(const Events& m);
json to_json(const Launch& m);
json to_json(const Attach& m);
template <OpName Op>
json to_json(const SessionOnly<Op>& m) {
  return {{"op", m.kOp}, {"session", to_json(m.session)}};
}
json to_json(const Signal& m);
json to_json(const Resize& m);
json to_json(const Wait& m);
json to_json(const Remove& m);
json to_json(const Cp& m);

// A request's fields, checked; "op" is the caller's to have dispatched on
// (a Launch's kind is taken from it).
template <class T>
Result<T> parse(const json& j);
// Just the session a request names: what the server looks up before it
// checks the permission and then the op's own fields.
Result<SessionRef> parse_session(const json& j);

// ------------------------------------------------------------------ replies

struct HelloReply {
  uint64_t version = kVersion;
  std::string server;
  uint32_t max_frame = kDefaultMaxFrame;
  int64_t keepalive_ms = 0;
  uid_t uid = 0;
};
struct LaunchReply {  // start, exec
  uint64_t session = 0;
  pid_t pid = -1;
  std::optional<uint64_t> stdin_window;  // with stdin open
};
json to_json(const HelloReply& m);
json to_json(const LaunchReply& m);

// ------------------------------------------------------------------- events

struct EofEvent {
  uint64_t session = 0;
  StreamId stream = StreamId::Stdout;
  uint64_t offset = 0;     // the stream's end: every byte it produced
  uint64_t discarded = 0;  // of which past max_output, read and dropped
};
struct ExitEvent {
  uint64_t session = 0;
  std::optional<ExitStatus> status;
  std::optional<Error> error;  // the payload could not be reaped
};
struct EvictedEvent {
  uint64_t session = 0;
  StreamId stream = StreamId::Stdout;
  uint64_t from = 0, to = 0;
};
struct EndEvent {  // an attach without follow has had all that was buffered
  uint64_t session = 0;
  uint64_t stdout_end = 0, stderr_end = 0;
};
struct StdinEvent {
  uint64_t session = 0;
  uint64_t consumed = 0;  // stdin bytes the payload has read
};
struct RemovedEvent {
  uint64_t session = 0;
};
struct ShutdownEvent {};
struct ErrorEvent {
  std::optional<uint64_t> session;
  Error error;
};
// An `events` subscription's: a session was created, started, exited, ...
struct SessionEvent {
  std::string action;
  uint64_t session = 0;
  std::string executor;
  uid_t owner_uid = 0;
  std::string time;  // ISO 8601, UTC
  std::string name;
  bool run = false;
  std::optional<ExitStatus> status;  // exited
};
// The image store's (oci/events.h), to subscribers granted image.events.
struct ImageEvent {
  std::string action;  // pulled, loaded, removed
  std::string image, digest, time;
};
using Event = std::variant<EofEvent, ExitEvent, EvictedEvent, EndEvent, StdinEvent, RemovedEvent,
                           ShutdownEvent, ErrorEvent, SessionEvent, ImageEvent>;

json to_json(const EofEvent& m);
json to_json(const ExitEvent& m);
json to_json(const EvictedEvent& m);
json to_json(const EndEvent& m);
json to_json(const StdinEvent& m);
json to_json(const RemovedEvent& m);
json to_json(const ShutdownEvent& m);
json to_json(const ErrorEvent& m);
json to_json(const SessionEvent& m);
json to_json(const ImageEvent& m);

// An event frame's message; nullopt for a kind this side does not know (a
// newer service's), INVALID for a known kind with a bad field.
Result<std::optional<Event>> parse_event(const json& j);
// The session an event is about (0: none, as shutdown's).
uint64_t session_of(const Event& e);

}  // namespace cloister::protocol

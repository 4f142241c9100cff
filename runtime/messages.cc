#include "runtime/messages.h"

#include <signal.h>

#include <algorithm>

#include "isolate/signals.h"

namespace cloister::protocol {

namespace {

Error field_error(std::string_view k, std::string_view what) {
  return invalid("field '" + std::string(k) + "' " + std::string(what));
}

// A field's value, or nullptr when it is absent or null (both mean "the
// default" throughout the protocol).
const json* get(const json& j, std::string_view k) {
  auto it = j.find(k);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

Status str(const json& j, std::string_view k, std::string& out, bool required = false) {
  const json* v = get(j, k);
  if (!v) return required ? fail(field_error(k, "is required")) : Status{};
  if (!v->is_string()) return fail(field_error(k, "must be a string"));
  out = v->get<std::string>();
  return {};
}

Status num(const json& j, std::string_view k, uint64_t& out, uint64_t max = UINT64_MAX) {
  const json* v = get(j, k);
  if (!v) return {};
  if (!v->is_number_unsigned() && !(v->is_number_integer() && v->get<int64_t>() >= 0))
    return fail(field_error(k, "must be a non-negative integer"));
  const uint64_t n = v->get<uint64_t>();
  if (n > max) return fail(field_error(k, "must be at most " + std::to_string(max)));
  out = n;
  return {};
}

Status opt_num(const json& j, std::string_view k, std::optional<uint64_t>& out) {
  if (!get(j, k)) return {};
  uint64_t n = 0;
  if (auto s = num(j, k, n); !s) return s;
  out = n;
  return {};
}

Status flag(const json& j, std::string_view k, bool& out) {
  const json* v = get(j, k);
  if (!v) return {};
  if (!v->is_boolean()) return fail(field_error(k, "must be a boolean"));
  out = v->get<bool>();
  return {};
}

template <class T>
json session_op(const T& m) {
  return {{"op", T::kOp}, {"session", to_json(m.session)}};
}

template <class T>
Result<T> parse_session_op(const json& j) {
  auto s = parse_session(j);
  if (!s) return fail(s.error());
  T m;
  m.session = std::move(*s);
  return m;
}

Result<StreamId> stream_of(const json& j) {
  std::string s;
  if (auto st = str(j, "stream", s, true); !st) return fail(st.error());
  if (s == "stdout") return StreamId::Stdout;
  if (s == "stderr") return StreamId::Stderr;
  return fail(field_error("stream", "must be \"stdout\" or \"stderr\""));
}

Result<uint64_t> session_id(const json& j) {
  uint64_t id = 0;
  if (!get(j, "session")) return fail(field_error("session", "is required"));
  if (auto st = num(j, "session", id); !st) return fail(st.error());
  return id;
}

}  // namespace

json to_json(const SessionRef& s) {
  return std::visit([](const auto& v) { return json(v); }, s);
}

std::string describe(const SessionRef& s) {
  if (const auto* id = std::get_if<uint64_t>(&s)) return "session " + std::to_string(*id);
  return "session '" + std::get<std::string>(s) + "'";
}

json to_json(const Error& e) {
  return json{{"kind", std::string(kind_name(e.kind))},
              {"message", e.what()},
              {"errno", e.code},
              {"at_exec", e.at_exec}};
}

Error error_from_json(const json& e) {
  Error err;
  err.kind = ErrorKind::Internal;
  if (!e.is_object()) {
    err.message = "(no error object)";
    return err;
  }
  const std::string kind = e.value("kind", std::string("INTERNAL"));
  for (auto k : {ErrorKind::Invalid, ErrorKind::PermissionDenied, ErrorKind::NotFound,
                 ErrorKind::Limit, ErrorKind::Timeout, ErrorKind::Internal})
    if (kind_name(k) == kind) err.kind = k;
  // The message already carries the strerror text: code 0 keeps what()
  // from repeating it; the errno travels in the message.
  err.message = e.value("message", std::string("(no message)"));
  err.at_exec = e.value("at_exec", false);
  return err;
}

json to_json(const ExitStatus& s) {
  return json{{"exit_code", s.exit_code},
              {"signal", s.signal},
              {"code", s.code()},
              {"oom_killed", s.oom_killed},
              {"timed_out", s.timed_out},
              {"cpu_time_us", s.cpu_time.count()},
              {"peak_memory", s.peak_memory},
              {"wall_time_us", s.wall_time.count()}};
}

ExitStatus status_from_json(const json& s) {
  ExitStatus st;
  if (!s.is_object()) return st;
  st.exit_code = s.value("exit_code", -1);
  st.signal = s.value("signal", 0);
  st.oom_killed = s.value("oom_killed", false);
  st.timed_out = s.value("timed_out", false);
  st.cpu_time = std::chrono::microseconds(s.value("cpu_time_us", int64_t{0}));
  st.peak_memory = s.value("peak_memory", uint64_t{0});
  st.wall_time = std::chrono::microseconds(s.value("wall_time_us", int64_t{0}));
  return st;
}

Result<SessionRef> parse_session(const json& j) {
  const json* v = get(j, "session");
  if (v && v->is_number_unsigned()) return SessionRef(v->get<uint64_t>());
  if (v && v->is_string() && !v->get_ref<const std::string&>().empty())
    return SessionRef(v->get<std::string>());
  return fail(invalid("field 'session' (a session id or name) is required"));
}

// ----------------------------------------------------------------- requests

json to_json(const Hello& m) {
  json j = {{"op", Hello::kOp}, {"versions", m.versions}};
  if (!m.client.empty()) j["client"] = m.client;
  return j;
}
template <>
Result<Hello> parse<Hello>(const json& j) {
  Hello m;
  m.versions.clear();
  const json* v = get(j, "versions");
  if (!v || !v->is_array())
    return fail(invalid("field 'versions' (a list of protocol versions) is required"));
  for (const auto& x : *v)
    if (x.is_number_unsigned()) m.versions.push_back(x.get<uint64_t>());
  if (auto st = str(j, "client", m.client); !st) return fail(st.error());
  return m;
}

json to_json(const Ping&) {
  return {{"op", Ping::kOp}};
}
template <>
Result<Ping> parse<Ping>(const json&) {
  return Ping{};
}
json to_json(const ListExecutors&) {
  return {{"op", ListExecutors::kOp}};
}
template <>
Result<ListExecutors> parse<ListExecutors>(const json&) {
  return ListExecutors{};
}
json to_json(const List&) {
  return {{"op", List::kOp}};
}
template <>
Result<List> parse<List>(const json&) {
  return List{};
}

json to_json(const Events& m) {
  return {{"op", Events::kOp}, {"enabled", m.enabled}};
}
template <>
Result<Events> parse<Events>(const json& j) {
  Events m;
  if (auto st = flag(j, "enabled", m.enabled); !st) return fail(st.error());
  return m;
}

std::string_view Launch::op() const {
  return kind == Kind::Run ? "run" : kind == Kind::Exec ? "exec" : "start";
}

json to_json(const Launch& m) {
  json j = {{"op", m.op()}};
  if (!m.executor.empty()) j["executor"] = m.executor;
  if (m.session) j["session"] = to_json(*m.session);
  if (!m.argv.empty()) j["argv"] = m.argv;
  if (!m.command.empty()) j["command"] = m.command;
  json env = json::object();
  for (const auto& [k, v] : m.env) env[k] = v;
  if (!m.env.empty()) j["env"] = env;
  if (!m.work_dir.empty()) j["work_dir"] = m.work_dir;
  if (m.stdin_open) j["stdin"] = true;
  if (m.timeout_ms) j["timeout_ms"] = m.timeout_ms;
  if (m.detached) j["detached"] = true;
  if (m.max_output) j["max_output"] = *m.max_output;
  if (!m.log_file.empty()) j["log_file"] = m.log_file;
  if (m.stdio == Launch::Stdio::Passed) j["stdio"] = "passed";
  if (!m.name.empty()) j["name"] = m.name;
  if (m.pty) j["pty"] = {{"rows", m.pty->rows}, {"cols", m.pty->cols}};
  if (m.tail) j["tail"] = m.tail;
  if (!m.grep.empty()) j["grep"] = m.grep;
  return j;
}

template <>
Result<Launch> parse<Launch>(const json& j) {
  Launch m;
  std::string op;
  if (auto st = str(j, "op", op, true); !st) return fail(st.error());
  if (op == "run")
    m.kind = Launch::Kind::Run;
  else if (op == "exec")
    m.kind = Launch::Kind::Exec;
  else if (op != "start")
    return fail(field_error("op", "must be \"start\", \"run\" or \"exec\" for a launch"));
  const bool run = m.kind == Launch::Kind::Run;
  if (m.kind == Launch::Kind::Exec) {
    auto s = parse_session(j);
    if (!s) return fail(s.error());
    m.session = std::move(*s);
  }
  if (auto st = str(j, "executor", m.executor, m.kind != Launch::Kind::Exec); !st)
    return fail(st.error());
  if (const json* v = get(j, "argv")) {
    if (!v->is_array()) return fail(field_error("argv", "must be a list of strings"));
    for (const auto& a : *v) {
      if (!a.is_string()) return fail(field_error("argv", "must be a list of strings"));
      m.argv.push_back(a.get<std::string>());
    }
  }
  if (const json* v = get(j, "env")) {
    if (!v->is_object()) return fail(field_error("env", "must be an object of strings"));
    for (const auto& [k, x] : v->items()) {
      if (!x.is_string()) return fail(invalid("env '" + k + "' must be a string"));
      m.env.emplace_back(k, x.get<std::string>());
    }
  }
  std::string stdio;
  for (auto check : {str(j, "command", m.command), str(j, "work_dir", m.work_dir),
                     flag(j, "stdin", m.stdin_open), num(j, "timeout_ms", m.timeout_ms),
                     flag(j, "detached", m.detached), opt_num(j, "max_output", m.max_output),
                     str(j, "log_file", m.log_file), str(j, "stdio", stdio), str(j, "name", m.name),
                     num(j, "tail", m.tail), str(j, "grep", m.grep)})
    if (!check) return fail(check.error());
  if (!stdio.empty() && stdio != "pipes" && stdio != "passed")
    return fail(field_error("stdio", "must be \"pipes\" or \"passed\""));
  if (stdio == "passed") m.stdio = Launch::Stdio::Passed;
  if (const json* v = get(j, "pty")) {
    if (!v->is_object()) return fail(field_error("pty", "must be {rows, cols}"));
    uint64_t rows = 24, cols = 80;
    if (!num(*v, "rows", rows, 65535) || !num(*v, "cols", cols, 65535))
      return fail(invalid("pty rows and cols must be integers up to 65535"));
    m.pty = PtySize{static_cast<unsigned short>(rows), static_cast<unsigned short>(cols)};
  }
  // run answers with the output in its reply: nothing to attach a terminal
  // or fds to, nothing to leave behind.
  if (run && (m.pty || m.stdio == Launch::Stdio::Passed || m.detached))
    return fail(invalid("run takes no 'pty', 'stdio' \"passed\" or 'detached': use start"));
  if (!run && (m.tail || !m.grep.empty()))
    return fail(invalid("'tail' and 'grep' are run's: " + std::string(m.op()) + " streams"));
  return m;
}

json to_json(const Attach& m) {
  json j = session_op(m);
  if (m.stdout_offset) j["stdout_offset"] = *m.stdout_offset;
  if (m.stderr_offset) j["stderr_offset"] = *m.stderr_offset;
  if (!m.follow) j["follow"] = false;
  return j;
}
template <>
Result<Attach> parse<Attach>(const json& j) {
  auto m = parse_session_op<Attach>(j);
  if (!m) return m;
  for (auto check : {opt_num(j, "stdout_offset", m->stdout_offset),
                     opt_num(j, "stderr_offset", m->stderr_offset), flag(j, "follow", m->follow)})
    if (!check) return fail(check.error());
  return m;
}

// The session-only ops' parse: the primary template, instantiated for each.
template <class T>
Result<T> parse(const json& j) {
  return parse_session_op<T>(j);
}
template Result<Detach> parse<Detach>(const json&);
template Result<CloseStdin> parse<CloseStdin>(const json&);
template Result<Stats> parse<Stats>(const json&);
template Result<Top> parse<Top>(const json&);
template Result<Inspect> parse<Inspect>(const json&);

json to_json(const Signal& m) {
  json j = session_op(m);
  j["signal"] = m.signal;
  return j;
}
template <>
Result<Signal> parse<Signal>(const json& j) {
  auto m = parse_session_op<Signal>(j);
  if (!m) return m;
  const json* v = get(j, "signal");
  if (!v) return fail(invalid("field 'signal' (a number or a name) is required"));
  if (v->is_number_integer()) {
    const int64_t n = v->get<int64_t>();
    if (n <= 0 || n >= NSIG)
      return fail(invalid("signal " + std::to_string(n) + " is out of range"));
    m->signal = static_cast<int>(n);
    return m;
  }
  if (!v->is_string()) return fail(field_error("signal", "must be a number or a name"));
  auto n = signals::parse(v->get<std::string>());
  if (!n) return fail(n.error());
  m->signal = *n;
  return m;
}

json to_json(const Resize& m) {
  json j = session_op(m);
  j["rows"] = m.rows;
  j["cols"] = m.cols;
  return j;
}
template <>
Result<Resize> parse<Resize>(const json& j) {
  auto m = parse_session_op<Resize>(j);
  if (!m) return m;
  uint64_t rows = 0, cols = 0;
  if (!num(j, "rows", rows, 65535) || !num(j, "cols", cols, 65535) || rows == 0 || cols == 0)
    return fail(invalid("rows and cols must be integers from 1 to 65535"));
  m->rows = static_cast<unsigned short>(rows);
  m->cols = static_cast<unsigned short>(cols);
  return m;
}

json to_json(const Wait& m) {
  json j = session_op(m);
  if (m.timeout_ms) j["timeout_ms"] = m.timeout_ms;
  return j;
}
template <>
Result<Wait> parse<Wait>(const json& j) {
  auto m = parse_session_op<Wait>(j);
  if (!m) return m;
  if (auto st = num(j, "timeout_ms", m->timeout_ms); !st) return fail(st.error());
  return m;
}

json to_json(const Remove& m) {
  json j = session_op(m);
  if (m.force) j["force"] = true;
  return j;
}
template <>
Result<Remove> parse<Remove>(const json& j) {
  auto m = parse_session_op<Remove>(j);
  if (!m) return m;
  if (auto st = flag(j, "force", m->force); !st) return fail(st.error());
  return m;
}

json to_json(const Cp& m) {
  json j = session_op(m);
  j["direction"] = m.direction == Cp::Direction::In ? "in" : "out";
  j["path"] = m.path;
  return j;
}
// The session is looked up after the fd is checked (the server's), so a
// cp's own fields come first here.
template <>
Result<Cp> parse<Cp>(const json& j) {
  Cp m;
  std::string dir;
  if (auto st = str(j, "direction", dir); !st) return fail(st.error());
  if (auto st = str(j, "path", m.path); !st) return fail(st.error());
  if (dir != "in" && dir != "out")
    return fail(field_error("direction", "must be \"in\" or \"out\""));
  m.direction = dir == "in" ? Cp::Direction::In : Cp::Direction::Out;
  if (m.path.empty() || m.path[0] != '/' || m.path.find('\0') != std::string::npos)
    return fail(field_error("path", "must be an absolute path without NUL bytes"));
  auto s = parse_session(j);
  if (!s) return fail(s.error());
  m.session = std::move(*s);
  return m;
}

// ------------------------------------------------------------------ replies

json to_json(const HelloReply& m) {
  return {{"version", m.version},
          {"server", m.server},
          {"max_frame", m.max_frame},
          {"keepalive_ms", m.keepalive_ms},
          {"uid", m.uid}};
}
json to_json(const LaunchReply& m) {
  json j = {{"session", m.session}, {"pid", m.pid}};
  if (m.stdin_window) j["stdin_window"] = *m.stdin_window;
  return j;
}

// ------------------------------------------------------------------- events

json to_json(const EofEvent& m) {
  json j = {{"event", "eof"},
            {"session", m.session},
            {"stream", std::string(stream_name(m.stream))},
            {"offset", m.offset}};
  if (m.discarded) j["discarded"] = m.discarded;
  return j;
}
json to_json(const ExitEvent& m) {
  json j = {{"event", "exit"}, {"session", m.session}};
  if (m.status) j["status"] = to_json(*m.status);
  if (m.error) j["error"] = to_json(*m.error);
  return j;
}
json to_json(const EvictedEvent& m) {
  return {{"event", "evicted"},
          {"session", m.session},
          {"stream", std::string(stream_name(m.stream))},
          {"from", m.from},
          {"to", m.to}};
}
json to_json(const EndEvent& m) {
  return {
      {"event", "end"}, {"session", m.session}, {"stdout", m.stdout_end}, {"stderr", m.stderr_end}};
}
json to_json(const StdinEvent& m) {
  return {{"event", "stdin"}, {"session", m.session}, {"consumed", m.consumed}};
}
json to_json(const RemovedEvent& m) {
  return {{"event", "removed"}, {"session", m.session}};
}
json to_json(const ShutdownEvent&) {
  return {{"event", "shutdown"}};
}
json to_json(const ErrorEvent& m) {
  json j = {{"event", "error"}, {"error", to_json(m.error)}};
  if (m.session) j["session"] = *m.session;
  return j;
}
json to_json(const SessionEvent& m) {
  json j = {{"event", "session"},     {"action", m.action},       {"session", m.session},
            {"executor", m.executor}, {"owner_uid", m.owner_uid}, {"time", m.time}};
  if (!m.name.empty()) j["name"] = m.name;
  if (m.run) j["run"] = true;
  if (m.status) j["status"] = to_json(*m.status);
  return j;
}

json to_json(const ImageEvent& m) {
  return {{"event", "image"},
          {"action", m.action},
          {"image", m.image},
          {"digest", m.digest},
          {"time", m.time}};
}

Result<std::optional<Event>> parse_event(const json& j) {
  using Out = Result<std::optional<Event>>;
  const json* kind = get(j, "event");
  if (!kind || !kind->is_string()) return fail(field_error("event", "(a string) is required"));
  const std::string ev = kind->get<std::string>();
  if (ev == "shutdown") return Out(Event(ShutdownEvent{}));
  if (ev == "image") {
    ImageEvent m;
    for (auto check : {str(j, "action", m.action, true), str(j, "image", m.image, true),
                       str(j, "digest", m.digest), str(j, "time", m.time)})
      if (!check) return fail(check.error());
    return Out(Event(std::move(m)));
  }
  if (ev == "error") {
    ErrorEvent m;
    m.error = error_from_json(j.value("error", json::object()));
    if (get(j, "session")) {
      auto id = session_id(j);
      if (!id) return fail(id.error());
      m.session = *id;
    }
    return Out(Event(std::move(m)));
  }
  static const char* const kKnown[] = {"eof",   "exit",    "evicted", "end",
                                       "stdin", "removed", "session"};
  if (std::find_if(std::begin(kKnown), std::end(kKnown), [&](const char* k) { return ev == k; }) ==
      std::end(kKnown))
    return Out(std::nullopt);
  auto sid = session_id(j);
  if (!sid) return fail(sid.error());
  if (ev == "eof") {
    EofEvent m{*sid};
    auto s = stream_of(j);
    if (!s) return fail(s.error());
    m.stream = *s;
    for (auto check : {num(j, "offset", m.offset), num(j, "discarded", m.discarded)})
      if (!check) return fail(check.error());
    return Out(Event(m));
  }
  if (ev == "exit") {
    ExitEvent m{*sid};
    if (const json* e = get(j, "error")) m.error = error_from_json(*e);
    if (const json* s = get(j, "status")) m.status = status_from_json(*s);
    if (!m.error && !m.status) return fail(invalid("an exit event needs 'status' or 'error'"));
    return Out(Event(std::move(m)));
  }
  if (ev == "evicted") {
    EvictedEvent m{*sid};
    auto s = stream_of(j);
    if (!s) return fail(s.error());
    m.stream = *s;
    for (auto check : {num(j, "from", m.from), num(j, "to", m.to)})
      if (!check) return fail(check.error());
    if (m.to < m.from) return fail(invalid("an evicted event's 'to' is before its 'from'"));
    return Out(Event(m));
  }
  if (ev == "end") {
    EndEvent m{*sid};
    for (auto check : {num(j, "stdout", m.stdout_end), num(j, "stderr", m.stderr_end)})
      if (!check) return fail(check.error());
    return Out(Event(m));
  }
  if (ev == "stdin") {
    StdinEvent m{*sid};
    if (auto st = num(j, "consumed", m.consumed); !st) return fail(st.error());
    return Out(Event(m));
  }
  if (ev == "removed") return Out(Event(RemovedEvent{*sid}));
  SessionEvent m;
  m.session = *sid;
  uint64_t owner = 0;
  for (auto check : {str(j, "action", m.action, true), str(j, "executor", m.executor),
                     num(j, "owner_uid", owner, UINT32_MAX), str(j, "time", m.time),
                     str(j, "name", m.name), flag(j, "run", m.run)})
    if (!check) return fail(check.error());
  m.owner_uid = static_cast<uid_t>(owner);
  if (const json* s = get(j, "status")) m.status = status_from_json(*s);
  return Out(Event(std::move(m)));
}

uint64_t session_of(const Event& e) {
  return std::visit(
      [](const auto& m) -> uint64_t {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, ShutdownEvent> || std::is_same_v<T, ImageEvent>)
          return 0;
        else if constexpr (std::is_same_v<T, ErrorEvent>)
          return m.session.value_or(0);
        else
          return m.session;
      },
      e);
}

}  // namespace cloister::protocol

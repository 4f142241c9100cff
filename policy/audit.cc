#include "policy/audit.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "isolate/fd.h"

namespace cloister::policy {
namespace {

constexpr size_t kMaxArgvShown = 8192;  // an audit line stays a line

struct State {
  std::mutex mu;
  AuditSink sink = AuditSink::Auto;
  std::string socket = "/run/systemd/journal/socket";
  std::function<void(const AuditRecord&)> hook;
};

State& state() {
  static State* s = new State;  // never destroyed: audit may run during exit
  return *s;
}

// Auto: CLOISTER_AUDIT when it names a sink, else journald under systemd,
// else stderr.
AuditSink resolve_auto(const std::string& socket) {
  if (const char* env = std::getenv("CLOISTER_AUDIT")) {
    std::string_view v(env);
    if (v == "journal") return AuditSink::Journal;
    if (v == "stderr") return AuditSink::Stderr;
    if (v == "off") return AuditSink::Off;
  }
  struct stat sb {};
  bool under_systemd = std::getenv("JOURNAL_STREAM") != nullptr ||
                       (::stat(socket.c_str(), &sb) == 0 && S_ISSOCK(sb.st_mode));
  return under_systemd ? AuditSink::Journal : AuditSink::Stderr;
}

// key=value with the value quoted when it holds blanks, quotes or controls.
void put(std::string& out, std::string_view key, std::string_view value) {
  out += ' ';
  out += key;
  out += '=';
  bool plain = !value.empty();
  for (unsigned char c : value)
    if (c <= ' ' || c == '"' || c == '\\' || c == 0x7f) plain = false;
  if (plain) {
    out += value;
    return;
  }
  out += '"';
  for (unsigned char c : value) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
}

std::string shown_argv(const AuditRecord& r) {
  std::string a = argv_json(r.argv);
  if (a.size() > kMaxArgvShown) a = a.substr(0, kMaxArgvShown) + "...(truncated)";
  return a;
}

std::string groups_text(const Caller& c) {
  std::string s;
  for (size_t i = 0; i < c.groups.size(); ++i) s += (i ? "," : "") + std::to_string(c.groups[i]);
  return s;
}

}  // namespace

std::string format_audit_line(const AuditRecord& r) {
  std::string out = "cloister-audit:";
  out += r.allowed ? " allow" : " deny";
  put(out, "action", r.action);
  put(out, "uid", std::to_string(r.caller.uid));
  put(out, "gid", std::to_string(r.caller.gid));
  if (!r.caller.groups.empty()) put(out, "groups", groups_text(r.caller));
  if (r.caller.pid) put(out, "pid", std::to_string(r.caller.pid));
  if (!r.executor.empty()) put(out, "executor", r.executor);
  if (!r.argv.empty()) put(out, "argv", shown_argv(r));
  if (!r.detail.empty()) put(out, "detail", r.detail);
  if (!r.kind.empty()) put(out, "kind", r.kind);
  put(out, "reason", r.reason);
  return out;
}

std::vector<std::pair<std::string, std::string>> audit_fields(const AuditRecord& r) {
  std::vector<std::pair<std::string, std::string>> f = {
      {"MESSAGE", format_audit_line(r)},
      {"PRIORITY", r.allowed ? "6" : "4"},  // info, warning
      {"SYSLOG_IDENTIFIER", "cloister"},
      {"CLOISTER_DECISION", r.allowed ? "allow" : "deny"},
      {"CLOISTER_ACTION", r.action},
      {"CLOISTER_UID", std::to_string(r.caller.uid)},
      {"CLOISTER_GID", std::to_string(r.caller.gid)},
      {"CLOISTER_GROUPS", groups_text(r.caller)},
      {"CLOISTER_PID", std::to_string(r.caller.pid)},
      {"CLOISTER_EXECUTOR", r.executor},
      {"CLOISTER_ARGV", shown_argv(r)},
      {"CLOISTER_REASON", r.reason},
  };
  if (!r.detail.empty()) f.emplace_back("CLOISTER_DETAIL", r.detail);
  if (!r.kind.empty()) f.emplace_back("CLOISTER_ERROR_KIND", r.kind);
  return f;
}

Status journal_send(const std::string& socket_path,
                    const std::vector<std::pair<std::string, std::string>>& fields) {
  std::string msg;
  for (const auto& [k, v] : fields) {
    msg += k;
    if (v.find('\n') == std::string::npos) {
      msg += '=';
      msg += v;
    } else {  // KEY\n, 64-bit little-endian length, value
      msg += '\n';
      uint64_t n = v.size();
      for (int i = 0; i < 8; ++i) msg += static_cast<char>((n >> (8 * i)) & 0xff);
      msg += v;
    }
    msg += '\n';
  }
  Fd s(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!s) return fail(sys_error("journal socket"));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.size() >= sizeof addr.sun_path)
    return fail(invalid("journal socket path too long"));
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size() + 1);
  ssize_t n = ::sendto(s.get(), msg.data(), msg.size(), MSG_NOSIGNAL,
                       reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
  if (n < 0) return fail(sys_error("send to " + socket_path));
  return {};
}

void set_audit_sink(AuditSink sink) {
  std::lock_guard lk(state().mu);
  state().sink = sink;
}

void set_journal_socket(std::string path) {
  std::lock_guard lk(state().mu);
  state().socket = std::move(path);
}

void set_audit_hook(std::function<void(const AuditRecord&)> hook) {
  std::lock_guard lk(state().mu);
  state().hook = std::move(hook);
}

void audit(const AuditRecord& r) {
  State& st = state();
  AuditSink sink;
  std::string socket;
  std::function<void(const AuditRecord&)> hook;
  {
    std::lock_guard lk(st.mu);
    sink = st.sink;
    socket = st.socket;
    hook = st.hook;
  }
  if (hook) hook(r);
  if (sink == AuditSink::Auto) sink = resolve_auto(socket);
  if (sink == AuditSink::Off) return;
  if (sink == AuditSink::Journal && journal_send(socket, audit_fields(r))) return;
  std::string line = format_audit_line(r) + "\n";
  (void)write_all(STDERR_FILENO, line);
}

}  // namespace cloister::policy

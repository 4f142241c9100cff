#include "policy/caller.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

#include "policy/audit.h"

namespace cloister::policy {

Caller Caller::self() {
  Caller c;
  c.uid = ::geteuid();
  c.gid = ::getegid();
  c.pid = ::getpid();
  int n = ::getgroups(0, nullptr);
  if (n > 0) {
    c.groups.resize(static_cast<size_t>(n));
    n = ::getgroups(n, c.groups.data());
    c.groups.resize(n > 0 ? static_cast<size_t>(n) : 0);
  }
  return c;
}

bool Caller::member_of(gid_t g) const {
  return gid == g || std::find(groups.begin(), groups.end(), g) != groups.end();
}

std::string Caller::describe() const {
  std::string s = "uid=" + std::to_string(uid) + " gid=" + std::to_string(gid);
  if (!groups.empty()) {
    s += " groups=";
    for (size_t i = 0; i < groups.size(); ++i) s += (i ? "," : "") + std::to_string(groups[i]);
  }
  if (pid) s += " pid=" + std::to_string(pid);
  return s;
}

Result<Caller> peer_caller(int fd) {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0)
    return fail(sys_error("SO_PEERCRED"));
  Caller c;
  c.uid = cred.uid;
  c.gid = cred.gid;
  c.pid = cred.pid;
  std::vector<gid_t> groups(64);
  for (;;) {
    socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen) == 0) {
      groups.resize(glen / sizeof(gid_t));
      break;
    }
    if (errno == ERANGE && glen > groups.size() * sizeof(gid_t)) {
      groups.resize(glen / sizeof(gid_t));
      continue;
    }
    return fail(sys_error("SO_PEERGROUPS"));
  }
  c.groups = std::move(groups);
  return c;
}

std::string_view action_name(Action a) {
  switch (a) {
    case Action::ExecGet:
      return "exec.get";
    case Action::ExecRun:
      return "exec.run";
    case Action::SessionAttach:
      return "session.attach";
    case Action::SessionSignal:
      return "session.signal";
    case Action::SessionRemove:
      return "session.remove";
    case Action::SessionExec:
      return "session.exec";
    case Action::SessionCp:
      return "session.cp";
    case Action::ImageEvents:
      return "image.events";
  }
  return "?";
}

bool CallerRules::matches(const Rule& r, const Caller& c) const {
  if (std::find(r.uids.begin(), r.uids.end(), c.uid) != r.uids.end()) return true;
  return std::any_of(r.gids.begin(), r.gids.end(), [&](gid_t g) { return c.member_of(g); });
}

namespace {
bool grants_executor(const CallerRules::Rule& r, const std::string& executor) {
  return std::any_of(r.executors.begin(), r.executors.end(),
                     [&](const std::string& e) { return e == "*" || e == executor; });
}
}  // namespace

Decision CallerRules::decide(const Caller& c, const Request& req) const {
  const bool session = req.action == Action::SessionAttach || req.action == Action::SessionSignal ||
                       req.action == Action::SessionRemove || req.action == Action::SessionExec ||
                       req.action == Action::SessionCp;
  if (c.root()) return {true, "root"};
  if (session && req.session_owner && *req.session_owner == c.uid) return {true, "own session"};
  bool any_rule = false;
  for (const auto& r : rules) {
    if (!matches(r, c)) continue;
    any_rule = true;
    bool ok = false;
    switch (req.action) {
      case Action::ExecGet:
        ok = grants_executor(r, req.executor);
        break;
      case Action::ExecRun:
        ok = grants_executor(r, req.executor) &&
             std::any_of(r.run.begin(), r.run.end(),
                         [&](const Pattern& p) { return p.matches(req.command); });
        break;
      case Action::SessionAttach:
        ok = r.session_attach;
        break;
      case Action::SessionSignal:
        ok = r.session_signal;
        break;
      case Action::SessionRemove:
        ok = r.session_remove;
        break;
      case Action::SessionExec:
        // Into the sessions of the executors the same rule lists: a rule
        // for one executor's users opens no other executor's sessions.
        ok = r.session_exec && grants_executor(r, req.executor);
        break;
      case Action::SessionCp:
        ok = r.session_cp && grants_executor(r, req.executor);
        break;
      case Action::ImageEvents:
        ok = r.image_events;
        break;
    }
    if (ok) return {true, "rule at " + r.origin};
  }
  return {false, any_rule ? "no matching rule grants it" : "no rule for this caller"};
}

uint64_t CallerRules::max_processes(const Caller& c) const {
  uint64_t best = 0;
  for (const auto& r : rules)
    if (r.max_processes > 0 && matches(r, c) && (best == 0 || r.max_processes < best))
      best = r.max_processes;
  return best;
}

Decision decide(const CallerRules* rules, const Caller& caller, const Request& req) {
  Decision d;
  if (caller.own_process && !caller.root()) {
    d = {true, "own process"};
  } else if (rules) {
    d = rules->decide(caller, req);
  } else if (caller.root()) {
    d = {true, "root"};
  } else if (req.session_owner && *req.session_owner == caller.uid &&
             req.action != Action::ExecGet && req.action != Action::ExecRun) {
    d = {true, "own session"};
  } else {
    d = {false, "no callers rules configured (only root may act)"};
  }
  return d;
}

Error denial(const Caller& caller, const Request& req, const Decision& d) {
  return make_error(
      ErrorKind::PermissionDenied,
      std::string(action_name(req.action)) + " denied to uid " + std::to_string(caller.uid) +
          (req.executor.empty() ? "" : " on executor '" + req.executor + "'") + ": " + d.reason);
}

Result<Decision> authorize(const CallerRules* rules, const Caller& caller, const Request& req) {
  Decision d = decide(rules, caller, req);
  AuditRecord rec;
  rec.allowed = d.allowed;
  rec.caller = caller;
  rec.action = std::string(action_name(req.action));
  rec.executor = req.executor;
  if (req.action == Action::ExecRun) {
    rec.argv = req.command.argv;
  }
  if (req.session_owner) rec.detail = "session owner uid=" + std::to_string(*req.session_owner);
  rec.reason = d.reason;
  if (!d.allowed) rec.kind = "PERMISSION_DENIED";
  audit(rec);
  if (!d.allowed) return fail(denial(caller, req, d));
  return d;
}

}  // namespace cloister::policy

// Callers: who may do what. A caller is a local uid with its gids - from
// SO_PEERCRED/SO_PEERGROUPS in the service, from the process's own
// credentials in the library (Caller::self()).
//
// Rules (the config's `callers:` section, docs/policy.md) grant permissions
// to uids and gids, after Wippy's security actions:
//   exec.get        use executor E (see it, run on it);
//   exec.run        run commands matching a pattern (command.h), on an
//                   executor the same rule grants exec.get for;
//   session.attach, session.signal, session.remove, session.exec,
//   session.cp      on sessions started by OTHER callers (one's own are
//                   always allowed); session.exec runs a new process in
//                   the session's sandbox, whose command exec.get and
//                   exec.run must allow as well; session.cp copies files
//                   into and out of it as its root (runtime/copy.h). Both
//                   reach only the sessions of executors the same rule
//                   grants exec.get for.
// Deny by default: a caller no rule matches has no permission. uid 0 has
// every permission (it can rewrite the config anyway); the executor's own
// rules (whitelist, allowlist, paths) still apply to it. Refusals are
// PERMISSION_DENIED, never INVALID.
//
// The service calls, per request:
//   auto caller = policy::peer_caller(client_fd);              // once per connection
//   auto ok = policy::authorize(config.callers.get(), *caller,
//                               {.action = Action::SessionSignal,
//                                .executor = s.executor, .session_owner = s.uid});
//   if (!ok) reply_error(ok.error());                          // kind PERMISSION_DENIED
// and passes the caller on to Executor::exec (ExecRequest::caller), which
// checks exec.get/exec.run and the limits itself. Every call is audited.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isolate/error.h"
#include "policy/command.h"
#include "policy/limits.h"

namespace cloister::policy {

struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary
  pid_t pid = 0;              // 0 = unknown (for audit only)
  // The library's own caller (no socket peer: `cloister exec`, an embedding
  // program). An ordinary user there is its own principal: caller rules
  // guard the service's privilege boundary, not a user's own process
  // (docs/policy.md).
  bool own_process = false;

  // The calling process's effective credentials.
  static Caller self();
  bool root() const { return uid == 0; }
  bool member_of(gid_t g) const;
  std::string describe() const;  // "uid=1000 gid=1000 groups=27,100 pid=42"
};

// The peer of a connected unix socket: SO_PEERCRED (uid, gid, pid) and
// SO_PEERGROUPS (supplementary gids).
Result<Caller> peer_caller(int socket_fd);

enum class Action {
  ExecGet,
  ExecRun,
  SessionAttach,
  SessionSignal,
  SessionRemove,
  SessionExec,
  SessionCp,
  ImageEvents  // the image store's events (pulled, loaded, removed) through `events`
};
std::string_view action_name(Action a);  // "exec.get", ...

struct Request {
  Action action = Action::ExecGet;
  std::string executor;                // exec.*; for sessions, the session's executor
  CommandText command;                 // exec.run
  std::optional<uid_t> session_owner;  // session.*: the uid that started it
};

struct Decision {
  bool allowed = false;
  std::string reason;  // "rule at cloister.yaml:12", "root", "own session", ...
};

class CallerRules {
 public:
  struct Rule {
    std::string origin;  // "file:line", named in decisions
    std::vector<uid_t> uids;
    std::vector<gid_t> gids;
    std::vector<std::string> executors;  // exec.get; "*" = all
    std::vector<Pattern> run;            // exec.run
    bool session_attach = false;
    bool session_signal = false;
    bool session_remove = false;
    bool session_exec = false;
    bool session_cp = false;
    bool image_events = false;
    uint64_t max_processes = 0;  // per caller uid, 0 = no limit
  };
  std::vector<Rule> rules;

  bool matches(const Rule& r, const Caller& c) const;
  Decision decide(const Caller& c, const Request& r) const;
  // The smallest max_processes of the rules that match, 0 = none.
  uint64_t max_processes(const Caller& c) const;
  // Per-uid process counters, shared by every executor of one config.
  std::shared_ptr<Counters> counters = Counters::make();
};

// Decides without auditing (Executor::exec audits its whole decision once).
Decision decide(const CallerRules* rules, const Caller& caller, const Request& request);
// The PERMISSION_DENIED error for a refused request.
Error denial(const Caller& caller, const Request& request, const Decision& d);

// Decides and audits. rules may be null (no `callers:` section): then only
// root is allowed. PERMISSION_DENIED names the action, the caller and the
// executor.
Result<Decision> authorize(const CallerRules* rules, const Caller& caller, const Request& request);

}  // namespace cloister::policy

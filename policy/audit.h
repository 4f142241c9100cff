// Audit: every policy decision - allowed or denied - as one structured
// record: who (uid, gid, groups, pid), the action, the executor, the argv,
// the outcome and why.
//
// Sinks (set_audit_sink; Auto by default, where CLOISTER_AUDIT=journal|stderr|off
// in the environment decides, else journal under systemd, else stderr):
//   journal  journald's native protocol, written here (no libsystemd: the CLI
//            stays static and fast) as one datagram to
//            /run/systemd/journal/socket with MESSAGE= and CLOISTER_* fields;
//   stderr   one line "cloister-audit: allow uid=0 ... argv=[...] reason=..."
//   auto     journal when running under systemd (JOURNAL_STREAM is set, or
//            the journal socket exists), stderr otherwise; if the journal
//            cannot be written the line goes to stderr instead.
// Audit never fails the operation it records.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "isolate/error.h"
#include "policy/caller.h"

namespace cloister::policy {

struct AuditRecord {
  bool allowed = false;
  Caller caller;
  std::string action;    // "exec.run", "session.signal", ...
  std::string executor;  // "" when none
  std::vector<std::string> argv;
  std::string detail;  // extra context: work dir, session owner, ...
  std::string reason;  // why allowed, or the error message
  std::string kind;    // the error kind when denied ("PERMISSION_DENIED", ...)
};

enum class AuditSink { Auto, Journal, Stderr, Off };

void audit(const AuditRecord& record);

// The stderr line (and journald's MESSAGE=), without a trailing newline.
std::string format_audit_line(const AuditRecord& record);
// The journald fields of a record.
std::vector<std::pair<std::string, std::string>> audit_fields(const AuditRecord& record);

// Configuration, for embedders and tests. The hook, when set, sees every
// record (in addition to the sink).
void set_audit_sink(AuditSink sink);
void set_journal_socket(std::string path);  // default /run/systemd/journal/socket
void set_audit_hook(std::function<void(const AuditRecord&)> hook);

// One entry in journald's native protocol over a unix datagram socket.
// Values may hold any bytes (the binary length-prefixed form is used for
// those with a newline).
Status journal_send(const std::string& socket_path,
                    const std::vector<std::pair<std::string, std::string>>& fields);

}  // namespace cloister::policy

#include "policy/exec_policy.h"

#include "policy/audit.h"

namespace cloister::policy {
namespace {

// What the dynamic loader, libc or a shell reads to run other code than the
// command's: glibc's list of variables it ignores for set-id programs, and
// the shells' start-up files.
constexpr std::string_view kLoaderVariables[] = {"GCONV_PATH",  "GETCONF_DIR", "HOSTALIASES",
                                                 "LOCALDOMAIN", "LOCPATH",     "MALLOC_TRACE",
                                                 "NIS_PATH",    "NLSPATH",     "RESOLV_HOST_CONF",
                                                 "RES_OPTIONS", "TMPDIR",      "TZDIR",
                                                 "BASH_ENV",    "ENV",         "PATH"};

bool changes_what_runs(std::string_view name) {
  if (name.starts_with("LD_")) return true;
  for (auto v : kLoaderVariables)
    if (name == v) return true;
  return false;
}

Result<ExecGrant> decide_exec(const ExecutorPolicy& p, const std::vector<std::string>& whitelist,
                              const ExecInput& in, CommandText& text, std::string& reason) {
  // 1. May the caller use this executor at all?
  Request get{Action::ExecGet, in.executor, {}, std::nullopt};
  Decision d = decide(p.callers.get(), in.caller, get);
  if (!d.allowed) return fail(denial(in.caller, get, d));
  reason = "caller: " + d.reason;

  // 2. The command's form.
  if (!in.argv.empty() && !in.command.empty())
    return fail(invalid("give either argv or a command string, not both"));
  if (!in.argv.empty()) {
    text.argv = in.argv;
  } else if (p.shell) {
    if (in.command.find_first_not_of(" \t") == std::string::npos)
      return fail(invalid("empty command"));
    if (in.command.find('\0') != std::string::npos)
      return fail(invalid("NUL byte in command string"));
    text.shell = true;
    text.shell_string = in.command;
    text.argv = {"/bin/sh", "-c", in.command};
  } else {
    auto words = split_command(in.command);
    if (!words) return fail(words.error());
    text.argv = std::move(*words);
  }
  if (text.argv.empty() || text.argv[0].empty()) return fail(invalid("empty command"));
  for (const auto& a : text.argv)
    if (a.find('\0') != std::string::npos) return fail(invalid("NUL byte in an argument"));

  // 3. May the caller run this command?
  Request run{Action::ExecRun, in.executor, text, std::nullopt};
  d = decide(p.callers.get(), in.caller, run);
  if (!d.allowed) return fail(denial(in.caller, run, d));

  // 4. The executor's own command rules, for every caller.
  if (auto s = check_whitelist(whitelist, text); !s) return fail(s.error());
  if (auto s = check_allowlist(p.allowlist, text); !s) return fail(s.error());
  // Where the executor decides what runs, the caller's environment may not
  // make the checked command load or run other code (LD_PRELOAD, PATH, ...).
  if (!whitelist.empty() || !p.allowlist.empty() || !p.executables_dir.empty())
    for (const auto& name : in.env_names)
      if (changes_what_runs(name))
        return fail(invalid(name + " is fixed by the config in an executor that decides what "
                                   "runs (command_whitelist, allowlist, executables_dir)"));

  ExecGrant g;
  g.argv = text.argv;
  // 5. executables_dir: argv[0] is a file in it, executed by fd.
  if (!p.executables_dir.empty()) {
    if (text.shell) return fail(invalid("shell executors cannot have an executables_dir"));
    auto x = open_executable(p.executables_dir, text.argv[0]);
    if (!x) return fail(x.error());
    g.executable = std::move(*x);
  }
  // 6. The work dir.
  auto dir = check_work_dir(p.allowed_dirs, in.work_dir);
  if (!dir) return fail(dir.error());
  g.work_dir_beneath = std::move(*dir);
  if (!g.work_dir_beneath.empty())
    if (auto s = precheck_work_dir(in.host_mounts, g.work_dir_beneath, in.work_dir); !s)
      return fail(s.error());

  // 7. Limits, last: a refused command takes no slot.
  auto slot =
      p.executor_counters->acquire(in.executor, p.max_processes, "executor '" + in.executor + "'");
  if (!slot) return fail(slot.error());
  g.slots.push_back(std::move(*slot));
  if (p.callers) {
    uint64_t max = p.callers->max_processes(in.caller);
    auto cs = p.callers->counters->acquire(std::to_string(in.caller.uid), max,
                                           "caller uid " + std::to_string(in.caller.uid));
    if (!cs) return fail(cs.error());
    g.slots.push_back(std::move(*cs));
  }
  return g;
}

}  // namespace

void audit_start_failure(const ExecInput& in, const std::vector<std::string>& argv,
                         const Error& error) {
  AuditRecord rec;
  rec.allowed = false;
  rec.caller = in.caller;
  rec.action = "exec.start";
  rec.executor = in.executor;
  rec.argv = argv;
  rec.detail = "work_dir=" + in.work_dir;
  rec.kind = std::string(kind_name(error.kind));
  rec.reason = error.what();
  audit(rec);
}

Result<ExecGrant> authorize_exec(const ExecutorPolicy& p, const std::vector<std::string>& whitelist,
                                 const ExecInput& in) {
  CommandText text;
  std::string reason;
  auto g = decide_exec(p, whitelist, in, text, reason);
  AuditRecord rec;
  rec.allowed = g.has_value();
  rec.caller = in.caller;
  rec.action = "exec.run";
  rec.executor = in.executor;
  rec.argv = !text.argv.empty() ? text.argv : in.argv;
  if (rec.argv.empty() && !in.command.empty()) rec.argv = {in.command};  // unsplittable
  rec.detail = "work_dir=" + in.work_dir;
  if (g) {
    rec.reason = reason;
    if (g->executable) rec.detail += " executable=" + g->executable->path;
  } else {
    rec.kind = std::string(kind_name(g.error().kind));
    rec.reason = g.error().what();
  }
  audit(rec);
  return g;
}

}  // namespace cloister::policy

// Integration tests of the policy in real sandboxes: command strings against
// the whitelist, shell executors, executables_dir run by fd (with a symlink
// flipped during the execs), allowed_dirs entered beneath (the same race),
// callers as uid nobody through the library and the CLI, limits reached and
// freed, output caps, and the audit of every decision.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "../as_nobody.h"
#include "policy/audit.h"
#include "runtime/executor.h"
#include "test_support.h"

using namespace cloister;
using namespace cloister::testing;
using namespace std::chrono_literals;

namespace {

constexpr uid_t kNobody = 65534;

struct AuditCapture {
  std::mutex mu;
  std::vector<policy::AuditRecord> records;
  AuditCapture() {
    policy::set_audit_sink(policy::AuditSink::Off);
    policy::set_audit_hook([this](const policy::AuditRecord& r) {
      std::lock_guard lk(mu);
      records.push_back(r);
    });
  }
  ~AuditCapture() {
    policy::set_audit_hook(nullptr);
    policy::set_audit_sink(policy::AuditSink::Auto);
  }
};

std::shared_ptr<Executor> make(const ExecutorConfig& cfg) {
  auto e = Executor::create(cfg);
  EXPECT_TRUE(e) << e.error().what();
  return e ? *e : nullptr;
}

ExecRequest command(std::string c, std::string work_dir = "") {
  ExecRequest r;
  r.command = std::move(c);
  r.work_dir = std::move(work_dir);
  return r;
}

ExecRequest argv(std::vector<std::string> a, std::string work_dir = "") {
  ExecRequest r;
  r.argv = std::move(a);
  r.work_dir = std::move(work_dir);
  return r;
}

// Starts, drains and waits; an error of exec() or start() comes back as is.
Result<RunResult> run_request(const Executor& e, ExecRequest req) {
  auto p = e.exec(std::move(req));
  if (!p) return fail(p.error());
  if (auto s = (*p)->start(); !s) return fail(s.error());
  RunResult r = collect(**p);
  auto st = (*p)->wait();
  if (!st) return fail(st.error());
  r.status = *st;
  return r;
}

void write_exe(const std::string& path, const std::string& text, mode_t mode = 0755) {
  write_text(path, text);
  ::chmod(path.c_str(), mode);
}

TEST(PolicyExec, CommandStringsAgainstTheWhitelist) {
  auto cfg = base_config();
  cfg.command_whitelist = {"/bin/echo hi"};
  auto e = make(cfg);
  ASSERT_TRUE(e);
  struct C {
    const char* command;
    std::optional<ErrorKind> refused;
  };
  const C cases[] = {
      {"/bin/echo hi", std::nullopt},
      {"\"/bin/echo\" hi", std::nullopt},
      {"/bin/echo  hi  ", std::nullopt},
      {"/bin/echo hi;id", ErrorKind::Invalid},
      {"/bin/echo hi\nid", ErrorKind::Invalid},
      {"/bin/echo hi && id", ErrorKind::Invalid},
      {"/bin/echo $'hi'", ErrorKind::Invalid},
      {"/bin/echo hi$(id)", ErrorKind::Invalid},
      {"/bin/echo hi ''", ErrorKind::PermissionDenied},
      {"/bin/echo h\xd1\x96", ErrorKind::PermissionDenied},  // Cyrillic i
      {"/bin/echo\xc2\xa0hi", ErrorKind::PermissionDenied},  // no-break space
      {"echo hi", ErrorKind::PermissionDenied},
  };
  for (const auto& c : cases) {
    auto r = run_request(*e, command(c.command));
    if (!c.refused) {
      ASSERT_TRUE(r) << c.command << ": " << r.error().what();
      EXPECT_EQ(r->out, "hi\n") << c.command;
    } else {
      ASSERT_FALSE(r) << c.command << " ran: " << r->out;
      EXPECT_EQ(r.error().kind, *c.refused) << c.command << ": " << r.error().what();
    }
  }
}

TEST(PolicyShell, OptInRunsShAndMatchesTheWholeString) {
  auto cfg = base_config();
  cfg.policy.shell = true;
  cfg.policy.allowlist = {*policy::Pattern::parse("echo **")};
  auto e = make(cfg);
  ASSERT_TRUE(e);
  auto r = run_request(*e, command("echo a && echo b"));
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ(r->out, "a\nb\n");
  auto denied = run_request(*e, command("id; echo x"));
  ASSERT_FALSE(denied);
  EXPECT_EQ(denied.error().kind, ErrorKind::PermissionDenied);
  // argv requests never go through the shell.
  auto a = run_request(*e, argv({"echo", "$HOME;", "x"}));
  ASSERT_TRUE(a) << a.error().what();
  EXPECT_EQ(a->out, "$HOME; x\n");
  // Without the opt-in, the same string is refused with the operator named.
  auto plain = base_config();
  auto p = make(plain);
  auto refused = run_request(*p, command("echo a && echo b"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind, ErrorKind::Invalid);
  EXPECT_NE(refused.error().message.find("'&&'"), std::string::npos);
}

struct ExecutablesFixture {
  TempDir t;
  std::string dir, outside;
  ExecutablesFixture() {
    ::chmod(t.path.c_str(), 0755);
    dir = t.path + "/executables";
    outside = t.path + "/outside";
    ::mkdir(dir.c_str(), 0755);
    ::mkdir(outside.c_str(), 0755);
    ::mkdir((dir + "/sub").c_str(), 0755);
    write_exe(dir + "/good", "#!/bin/sh\necho good \"$@\"\n");
    write_exe(dir + "/sub/nested", "#!/bin/sh\necho nested\n");
    write_exe(outside + "/evil", "#!/bin/sh\necho evil\n");
    std::system(("cp /bin/echo '" + dir + "/echo_copy'").c_str());
    ::symlink("good", (dir + "/alias").c_str());
    ::symlink("../outside/evil", (dir + "/escape").c_str());
    ::symlink((outside + "/evil").c_str(), (dir + "/absolute").c_str());
  }
  ExecutorConfig config() const {
    auto cfg = base_config();
    cfg.policy.executables_dir = dir;
    return cfg;
  }
};

TEST(PolicyExecutables, OnlyFilesInsideRunAndByFd) {
  ExecutablesFixture f;
  auto e = make(f.config());
  ASSERT_TRUE(e);
  auto ok = [&](std::vector<std::string> a) {
    auto r = run_request(*e, argv(std::move(a)));
    EXPECT_TRUE(r) << r.error().what();
    return r ? r->out : "";
  };
  EXPECT_EQ(ok({"good", "x"}), "good x\n");      // a script: its interpreter reads /dev/fd/N
  EXPECT_EQ(ok({"echo_copy", "elf"}), "elf\n");  // an ELF binary
  EXPECT_EQ(ok({"sub/nested"}), "nested\n");
  EXPECT_EQ(ok({"alias"}), "good\n");  // a symlink that stays inside
  // The name is not looked up in the sandbox's PATH: "echo_copy" exists only here.
  for (const char* bad : {"/bin/echo", "../outside/evil", "./good", "sub/../good", "", "escape",
                          "absolute", "missing", "sub", "sub//nested"}) {
    auto r = run_request(*e, argv({bad}));
    ASSERT_FALSE(r) << bad << " ran: " << r->out;
    EXPECT_EQ(r.error().kind, ErrorKind::Invalid) << bad << ": " << r.error().what();
  }
  // PATH is the config's.
  ExecRequest req = argv({"good"});
  req.env = {{"PATH", "/tmp"}};
  auto r = run_request(*e, std::move(req));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ErrorKind::Invalid);
}

// A thread flips dir/tool between a file inside and one outside while execs
// run: what runs is always the file that was checked, never the outside one.
TEST(PolicyExecutables, SymlinkSwappedAfterTheCheckNeverRuns) {
  ExecutablesFixture f;
  auto e = make(f.config());
  ASSERT_TRUE(e);
  const std::string tool = f.dir + "/tool", tmp = f.dir + "/.tool.tmp";
  ::symlink("good", tool.c_str());
  std::atomic<bool> stop{false};
  std::atomic<int> flips{0};
  std::thread flipper([&] {
    for (int i = 0; !stop; ++i) {
      ::unlink(tmp.c_str());
      ::symlink(i % 2 ? "../outside/evil" : "good", tmp.c_str());
      ::rename(tmp.c_str(), tool.c_str());  // atomic swap of the name
      ++flips;
      std::this_thread::sleep_for(300us);
    }
  });
  int good = 0, refused = 0;
  for (int i = 0; i < 60; ++i) {
    auto p = e->exec(argv({"tool"}));
    if (!p) {
      EXPECT_EQ(p.error().kind, ErrorKind::Invalid) << p.error().what();
      ++refused;
      std::this_thread::sleep_for(1ms);
      continue;
    }
    // The check is behind us; give the flipper time to swap the name before
    // the sandbox execs.
    std::this_thread::sleep_for(1ms);
    ASSERT_TRUE((*p)->start());
    RunResult r = collect(**p);
    ASSERT_TRUE((*p)->wait());
    EXPECT_EQ(r.out, "good\n") << "iteration " << i;
    ++good;
  }
  stop = true;
  flipper.join();
  EXPECT_GT(good, 0);
  EXPECT_GT(flips.load(), 30);
  std::printf("executables race: %d ran the checked file, %d refused, %d flips\n", good, refused,
              flips.load());
}

struct DirsFixture {
  TempDir t;
  ExecutorConfig cfg = base_config();
  DirsFixture() {
    ::chmod(t.path.c_str(), 0755);
    for (const char* d : {"project", "project/sub", "project/sub/deeper", "secret"})
      ::mkdir((t.path + "/" + d).c_str(), 0755);
    ::symlink("sub", (t.path + "/project/inside").c_str());
    ::symlink("../secret", (t.path + "/project/out").c_str());
    ::symlink("/etc", (t.path + "/project/abs").c_str());
    cfg.volumes.push_back({t.path, "/data", false});
    cfg.policy.allowed_dirs = {"/data/project"};
    cfg.default_work_dir = "/data/project";
  }
};

TEST(PolicyDirs, WorkDirIsEnteredBeneathTheAllowedDir) {
  DirsFixture f;
  auto e = make(f.cfg);
  ASSERT_TRUE(e);
  auto pwd = [&](const std::string& wd) { return run_request(*e, argv({"/bin/pwd", "-P"}, wd)); };
  struct C {
    const char* wd;
    const char* expect;  // pwd -P, or nullptr: INVALID
  };
  const C cases[] = {
      {"", "/data/project\n"},
      {"/data/project", "/data/project\n"},
      {"/data/project/sub/deeper", "/data/project/sub/deeper\n"},
      {"/data/project/inside", "/data/project/sub\n"},
      {"/data/project/out", nullptr},        // relative symlink leading out
      {"/data/project/abs", nullptr},        // absolute symlink
      {"/data/secret", nullptr},             // outside, lexically
      {"/data/project/../secret", nullptr},  // ".." is never a work dir
      {"/data", nullptr},
      {"/etc", nullptr},
  };
  for (const auto& c : cases) {
    auto r = pwd(c.wd);
    if (c.expect) {
      ASSERT_TRUE(r) << c.wd << ": " << r.error().what();
      EXPECT_EQ(r->out, c.expect) << c.wd;
    } else {
      ASSERT_FALSE(r) << c.wd << " ran in " << r->out;
      EXPECT_EQ(r.error().kind, ErrorKind::Invalid) << c.wd << ": " << r.error().what();
    }
  }
}

TEST(PolicyDirs, SymlinkSwappedAfterTheCheckNeverLeadsOut) {
  DirsFixture f;
  auto e = make(f.cfg);
  ASSERT_TRUE(e);
  const std::string link = f.t.path + "/project/flip", tmp = f.t.path + "/project/.flip.tmp";
  ::symlink("sub", link.c_str());
  std::atomic<bool> stop{false};
  std::thread flipper([&] {
    for (int i = 0; !stop; ++i) {
      ::unlink(tmp.c_str());
      ::symlink(i % 2 ? "../secret" : "sub", tmp.c_str());
      ::rename(tmp.c_str(), link.c_str());
      std::this_thread::sleep_for(300us);
    }
  });
  int inside = 0, refused = 0;
  for (int i = 0; i < 60; ++i) {
    auto p = e->exec(argv({"/bin/pwd", "-P"}, "/data/project/flip"));
    if (!p) {  // the early check on the host saw the link leading out
      EXPECT_EQ(p.error().kind, ErrorKind::Invalid) << p.error().what();
      ++refused;
      std::this_thread::sleep_for(1ms);
      continue;
    }
    std::this_thread::sleep_for(1ms);  // let the link flip after the check
    auto s = (*p)->start();
    if (!s) {  // the sandbox's own resolution refused it
      EXPECT_EQ(s.error().kind, ErrorKind::Invalid) << s.error().what();
      ++refused;
      continue;
    }
    RunResult r = collect(**p);
    ASSERT_TRUE((*p)->wait());
    EXPECT_EQ(r.out, "/data/project/sub\n");
    ++inside;
  }
  stop = true;
  flipper.join();
  EXPECT_GT(inside + refused, 0);
  std::printf("allowed_dirs race: %d inside, %d refused\n", inside, refused);
}

// Deterministic TOCTOU: the link is swapped between exec() (the check) and
// start(). The sandbox resolves the work dir itself, beneath the allowed dir.
TEST(PolicyDirs, SwapBetweenExecAndStartIsRefused) {
  AuditCapture audit;
  DirsFixture f;
  auto e = make(f.cfg);
  ASSERT_TRUE(e);
  const std::string link = f.t.path + "/project/swap";
  ::symlink("sub", link.c_str());
  auto p = e->exec(argv({"/bin/pwd", "-P"}, "/data/project/swap"));
  ASSERT_TRUE(p) << p.error().what();
  ::unlink(link.c_str());
  ::symlink("../secret", link.c_str());
  auto s = (*p)->start();
  ASSERT_FALSE(s) << "started in " << collect(**p).out;
  EXPECT_EQ(s.error().kind, ErrorKind::Invalid);
  EXPECT_NE(s.error().message.find("leads out of allowed dir /data/project"), std::string::npos)
      << s.error().what();
  // Both decisions are audited: allowed at exec(), refused at start().
  std::lock_guard lk(audit.mu);
  ASSERT_EQ(audit.records.size(), 2u);
  EXPECT_TRUE(audit.records[0].allowed);
  EXPECT_FALSE(audit.records[1].allowed);
  EXPECT_EQ(audit.records[1].action, "exec.start");
  EXPECT_EQ(audit.records[1].kind, "INVALID");
  EXPECT_EQ(audit.records[1].argv, (std::vector<std::string>{"/bin/pwd", "-P"}));
}

// The same for executables_dir: what was checked at exec() runs at start().
TEST(PolicyExecutables, SwapBetweenExecAndStartRunsTheCheckedFile) {
  ExecutablesFixture f;
  auto e = make(f.config());
  ASSERT_TRUE(e);
  const std::string tool = f.dir + "/swap";
  ::symlink("good", tool.c_str());
  auto p = e->exec(argv({"swap"}));
  ASSERT_TRUE(p) << p.error().what();
  ::unlink(tool.c_str());
  ::symlink("../outside/evil", tool.c_str());
  ASSERT_TRUE((*p)->start());
  RunResult r = collect(**p);
  ASSERT_TRUE((*p)->wait());
  EXPECT_EQ(r.out, "good\n");
  // Swapped before the check, it is refused.
  auto q = e->exec(argv({"swap"}));
  ASSERT_FALSE(q);
  EXPECT_EQ(q.error().kind, ErrorKind::Invalid);
}

char kind_letter(const Error& e) {
  switch (e.kind) {
    case ErrorKind::PermissionDenied:
      return 'D';
    case ErrorKind::Invalid:
      return 'I';
    case ErrorKind::Limit:
      return 'L';
    default:
      return 'O';
  }
}

TEST(PolicyCallers, NobodyThroughTheLibrary) {
  // A caller the library is told of (a service's socket peer): with no
  // callers section, nobody is denied.
  auto nobody = [] {
    policy::Caller c;
    c.uid = kNobody;
    c.gid = kNobody;
    return c;
  };
  auto as = [&](const std::shared_ptr<Executor>& e, std::vector<std::string> a) {
    ExecRequest r = argv(std::move(a));
    r.caller = nobody();
    auto p = e->exec(std::move(r));
    return p ? 'A' : kind_letter(p.error());
  };
  auto e = make(base_config());
  ASSERT_TRUE(e);
  policy::set_audit_sink(policy::AuditSink::Off);
  EXPECT_EQ(as(e, {"/bin/true"}), 'D');
  // The library's own caller, an ordinary user, is its own principal: the
  // rules guard a service's privilege boundary, not a user's own process.
  EXPECT_EQ(as_nobody([&] {
              // A forked child: no thread of the library's runs in it.
              Spawned::set_background_teardown(false);
              auto own = Executor::create(base_config());
              if (!own) return 'X';
              auto p = (*own)->exec(argv({"/bin/true"}));
              if (!p) return kind_letter(p.error());
              // After setuid with no exec the process is not dumpable: told so.
              auto st = (*p)->start();
              if (st || st.error().what().find("is not dumpable") == std::string::npos) return 'N';
              ::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0);
              p = (*own)->exec(argv({"/bin/true"}));
              if (!p) return kind_letter(p.error());
              st = (*p)->start();
              if (!st) return 'S';
              auto w = (*p)->wait();
              return w && w->exit_code == 0 ? 'A' : 'W';
            }),
            'A');
  // A rule for nobody: exec.get on this executor, exec.run on "/bin/echo *".
  auto rules = std::make_shared<policy::CallerRules>();
  policy::CallerRules::Rule r;
  r.origin = "test:1";
  r.uids = {kNobody};
  r.executors = {"test"};
  r.run = {*policy::Pattern::parse("/bin/echo *")};
  rules->rules = {r};
  auto cfg = base_config();
  cfg.policy.callers = rules;
  auto ruled = make(cfg);
  ASSERT_TRUE(ruled);
  EXPECT_EQ(as(ruled, {"/bin/echo", "x"}), 'A');
  EXPECT_EQ(as(ruled, {"/bin/cat", "/etc/shadow"}), 'D');
  auto other_cfg = base_config();
  other_cfg.name = "other";
  other_cfg.policy.callers = rules;
  auto other = make(other_cfg);
  EXPECT_EQ(as(other, {"/bin/echo", "x"}), 'D');
  // Sessions of root: every verb denied to nobody, its own allowed.
  for (auto a : {policy::Action::SessionAttach, policy::Action::SessionSignal,
                 policy::Action::SessionRemove}) {
    EXPECT_EQ(as_nobody([&] {
                auto d = policy::authorize(rules.get(), policy::Caller::self(),
                                           {a, "test", {}, uid_t{0}});
                return d ? 'A' : kind_letter(d.error());
              }),
              'D')
        << policy::action_name(a);
    EXPECT_EQ(
        as_nobody([&] {
          auto d = policy::authorize(rules.get(), policy::Caller::self(), {a, "test", {}, kNobody});
          return d ? 'A' : kind_letter(d.error());
        }),
        'A');
  }
  policy::set_audit_sink(policy::AuditSink::Auto);
}

TEST(PolicyCallers, NobodyThroughTheCli) {
  TempDir t;
  ::chmod(t.path.c_str(), 0755);
  const std::string config = t.path + "/cloister.yaml";
  write_text(config, "executors:\n  - name: shell\n    default_env: {PATH: /usr/bin:/bin}\n");
  ::chmod(config.c_str(), 0644);
  const std::string cli = std::string(CLOISTER_BIN_DIR) + "/cloister";
  auto run_cli = [&](const std::string& prefix) {
    std::string cmd = prefix + " env CLOISTER_AUDIT=stderr " + cli + " exec -c " + config +
                      " -x shell -- /bin/echo hi 2>&1; echo \"exit=$?\"";
    FILE* f = ::popen(cmd.c_str(), "r");
    std::string out;
    char buf[512];
    while (size_t n = std::fread(buf, 1, sizeof buf, f)) out.append(buf, n);
    ::pclose(f);
    return out;
  };
  // An ordinary user runs its own sandbox (unprivileged): the callers rules
  // are the service's.
  std::string own = run_cli("setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all");
  EXPECT_NE(own.find("cloister-audit: allow action=exec.run uid=65534"), std::string::npos) << own;
  EXPECT_NE(own.find("reason=\"caller: own process\""), std::string::npos) << own;
  EXPECT_NE(own.find("hi\nexit=0"), std::string::npos) << own;
  std::string ok = run_cli("");
  EXPECT_NE(ok.find("cloister-audit: allow action=exec.run uid=0"), std::string::npos) << ok;
  EXPECT_NE(ok.find("hi\nexit=0"), std::string::npos) << ok;
}

TEST(PolicyLimits, ReachedAndReleased) {
  auto cfg = base_config();
  cfg.policy.max_processes = 2;
  auto e = make(cfg);
  ASSERT_TRUE(e);
  auto sleeper = [&] { return e->exec(argv({"/bin/sleep", "30"})); };
  auto a = sleeper();
  auto b = sleeper();
  ASSERT_TRUE(a && b);
  ASSERT_TRUE((*a)->start());
  ASSERT_TRUE((*b)->start());
  auto c = sleeper();
  ASSERT_FALSE(c);
  EXPECT_EQ(c.error().kind, ErrorKind::Limit) << c.error().what();
  // A copy of the executor (the same config) shares the count.
  auto twin = make(e->config());
  auto t = twin->exec(argv({"/bin/true"}));
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().kind, ErrorKind::Limit);
  // A process that ends gives its place back.
  ASSERT_TRUE((*a)->close(true));
  auto d = sleeper();
  ASSERT_TRUE(d) << d.error().what();
  // So does one never started, once closed or dropped.
  ASSERT_TRUE((*d)->close());
  auto f = sleeper();
  ASSERT_TRUE(f);
  f->reset();
  ASSERT_TRUE(sleeper());

  // Per caller: uid 0 may have one process at a time, on any executor.
  auto rules = std::make_shared<policy::CallerRules>();
  policy::CallerRules::Rule r;
  r.origin = "test:1";
  r.uids = {0};
  r.executors = {"*"};
  r.run = {*policy::Pattern::parse("**")};
  r.max_processes = 1;
  rules->rules = {r};
  auto one = base_config();
  one.name = "one";
  one.policy.callers = rules;
  auto two = one;
  two.name = "two";
  two.policy.executor_counters = policy::Counters::make();
  auto e1 = make(one), e2 = make(two);
  auto p1 = e1->exec(argv({"/bin/true"}));
  ASSERT_TRUE(p1);
  ASSERT_TRUE((*p1)->start());
  auto p2 = e2->exec(argv({"/bin/true"}));
  ASSERT_FALSE(p2);
  EXPECT_EQ(p2.error().kind, ErrorKind::Limit);
  ASSERT_TRUE((*p1)->wait());  // ended: freed
  EXPECT_TRUE(e2->exec(argv({"/bin/true"})));
}

TEST(PolicyOutput, CapsTruncateWithoutHurtingThePayload) {
  auto cfg = base_config();
  cfg.policy.stdout_limit = 1000;
  cfg.policy.stderr_limit = 5;
  auto e = make(cfg);
  ASSERT_TRUE(e);
  // 10 MiB on stdout: far past the cap and the pipe; the payload must finish.
  auto r = run_request(*e, argv({"/bin/sh", "-c", "head -c 10485760 /dev/zero; echo done >&2"}));
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ(r->out.size(), 1000u);
  EXPECT_EQ(r->status.exit_code, 0);
  EXPECT_TRUE(r->status.stdout_truncated);
  EXPECT_EQ(r->err, "done\n");  // exactly the cap: not truncated
  EXPECT_FALSE(r->status.stderr_truncated);
  auto small = run_request(*e, argv({"/bin/echo", "ok"}));
  ASSERT_TRUE(small);
  EXPECT_EQ(small->out, "ok\n");
  EXPECT_FALSE(small->status.stdout_truncated);
  auto over = run_request(*e, argv({"/bin/sh", "-c", "echo 123456 >&2"}));
  ASSERT_TRUE(over);
  EXPECT_EQ(over->err, "12345");
  EXPECT_TRUE(over->status.stderr_truncated);
}

// The CLI pumps capped streams to its own stdout: it must end, exit with the
// payload's status and say the output was truncated.
TEST(PolicyOutput, CliStopsAtTheCapAndSaysSo) {
  TempDir t;
  const std::string config = t.path + "/cloister.yaml";
  write_text(config,
             "executors:\n  - name: capped\n    default_env: {PATH: /usr/bin:/bin}\n"
             "    output_limit: {stdout: 100, stderr: 1k}\n");
  const std::string script = t.path + "/run.sh";
  write_text(script, "timeout 20 env CLOISTER_AUDIT=off " + std::string(CLOISTER_BIN_DIR) +
                         "/cloister exec -c " + config +
                         " -x capped -- /bin/sh -c 'head -c 5000000 /dev/zero; exit 3' 2>" +
                         t.path + "/err | wc -c\necho \"exit=${PIPESTATUS[0]}\"\n");
  FILE* f = ::popen(("bash " + script).c_str(), "r");
  std::string out;
  char buf[256];
  while (size_t n = std::fread(buf, 1, sizeof buf, f)) out.append(buf, n);
  ::pclose(f);
  EXPECT_EQ(out, "100\nexit=3\n");
  EXPECT_NE(read_text(t.path + "/err").find("cloister: LIMIT: output truncated"), std::string::npos)
      << read_text(t.path + "/err");
}

TEST(PolicyAudit, EveryExecDecisionIsRecorded) {
  AuditCapture audit;
  auto cfg = base_config();
  cfg.command_whitelist = {"/bin/true"};
  auto e = make(cfg);
  ASSERT_TRUE(e);
  EXPECT_TRUE(e->exec(command("/bin/true")));
  EXPECT_FALSE(e->exec(command("/bin/false")));
  EXPECT_FALSE(e->exec(command("/bin/true; id")));
  std::lock_guard lk(audit.mu);
  ASSERT_EQ(audit.records.size(), 3u);
  EXPECT_TRUE(audit.records[0].allowed);
  EXPECT_EQ(audit.records[0].executor, "test");
  EXPECT_EQ(audit.records[0].caller.uid, ::geteuid());
  EXPECT_EQ(audit.records[0].argv, std::vector<std::string>{"/bin/true"});
  EXPECT_EQ(audit.records[0].reason, "caller: root");
  EXPECT_FALSE(audit.records[1].allowed);
  EXPECT_EQ(audit.records[1].kind, "PERMISSION_DENIED");
  EXPECT_NE(audit.records[1].reason.find("command_whitelist"), std::string::npos);
  EXPECT_EQ(audit.records[2].kind, "INVALID");
  EXPECT_NE(audit.records[2].reason.find("';'"), std::string::npos);
}

}  // namespace

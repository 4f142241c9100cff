// Unit tests of policy/: the command splitter and its bypass attempts,
// whitelist and allowlist matching, executable names and files (openat2),
// work dir bounds, callers (also as uid nobody), limits, audit records and
// the journald protocol, and the config fields.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "../as_nobody.h"
#include "policy/audit.h"
#include "policy/caller.h"
#include "policy/command.h"
#include "policy/exec_policy.h"
#include "policy/limits.h"
#include "policy/paths.h"
#include "runtime/config.h"
#include "temp_dir.h"

using namespace cloister;
using namespace cloister::policy;
using cloister::testing::as_nobody;

namespace {

constexpr uid_t kNobody = 65534;
using Argv = std::vector<std::string>;

using TempDir = cloister::testing::TempDir;

void write_file(const std::string& path, const std::string& text, mode_t mode = 0755) {
  std::ofstream(path) << text;
  ::chmod(path.c_str(), mode);
}

// Records every audit record while alive; the sink is off meanwhile.
struct AuditCapture {
  std::vector<AuditRecord> records;
  AuditCapture() {
    set_audit_sink(AuditSink::Off);
    set_audit_hook([this](const AuditRecord& r) { records.push_back(r); });
  }
  ~AuditCapture() {
    set_audit_hook(nullptr);
    set_audit_sink(AuditSink::Auto);
  }
};

// ---------------------------------------------------------------------------
// Splitting.

struct SplitCase {
  const char* input;
  std::optional<Argv> argv;  // nullopt: INVALID
  const char* named = "";    // a word the error must contain
};

TEST(PolicySplit, Table) {
  const SplitCase cases[] = {
      {"git status", Argv{"git", "status"}},
      {"git  status", Argv{"git", "status"}},
      {"  git status  ", Argv{"git", "status"}},
      {"\"git\" status", Argv{"git", "status"}},
      {"g'i't st\\atus", Argv{"git", "status"}},
      {"echo 'a b' \"c d\" e\\ f", Argv{"echo", "a b", "c d", "e f"}},
      {"echo '' \"\"", Argv{"echo", "", ""}},
      {"echo \"a\\\"b\\\\c\\$d\\`e\\x\"", Argv{"echo", "a\"b\\c$d`e\\x"}},
      {"echo 'a;b|c&d$(e)`f`'", Argv{"echo", "a;b|c&d$(e)`f`"}},
      {"echo '$HOME' a$ $", Argv{"echo", "$HOME", "a$", "$"}},
      {"ls *.txt ~ [a]", Argv{"ls", "*.txt", "~", "[a]"}},
      {"echo a#b", Argv{"echo", "a#b"}},
      {"env A=b cmd", Argv{"env", "A=b", "cmd"}},
      {"'A=b' cmd", Argv{"A=b", "cmd"}},
      {"A\\=b cmd", Argv{"A=b", "cmd"}},
      {"=x", Argv{"=x"}},
      {"1A=b", Argv{"1A=b"}},
      {"LD_PRELOAD=/tmp/x.so git status", std::nullopt, "assignment 'LD_PRELOAD='"},
      {"git status;id", std::nullopt, "';'"},
      {"git status ; id", std::nullopt, "';'"},
      {"git status\nid", std::nullopt, "newline"},
      {"git status\\\nid", std::nullopt, "newline"},
      {"git status && id", std::nullopt, "'&&'"},
      {"git status || id", std::nullopt, "'||'"},
      {"git status | id", std::nullopt, "'|'"},
      {"git status &", std::nullopt, "'&'"},
      {"cat < /etc/passwd", std::nullopt, "'<'"},
      {"echo x > /tmp/f", std::nullopt, "'>'"},
      {"echo x >> /tmp/f", std::nullopt, "'>>'"},
      {"echo $(id)", std::nullopt, "'$('"},
      {"echo \"$(id)\"", std::nullopt, "'$('"},
      {"echo `id`", std::nullopt, "'`'"},
      {"echo \"`id`\"", std::nullopt, "'`'"},
      {"(id)", std::nullopt, "'('"},
      {"echo $HOME", std::nullopt, "'$HOME'"},
      {"echo \"${HOME}\"", std::nullopt, "'${'"},
      {"echo $1", std::nullopt, "'$1'"},
      {"$'git' status", std::nullopt, "$'...'"},
      {"git $'status\\x3bid'", std::nullopt, "$'...'"},
      {"git $\"status\"", std::nullopt, "$\"...\""},
      {"git status # comment", std::nullopt, "'#'"},
      {"git status\r", std::nullopt, "0x0d"},
      {"git\x0bstatus", std::nullopt, "0x0b"},
      {"git status\x7f", std::nullopt, "0x7f"},
      {std::string_view("git\0status", 10).data(), Argv{"git"}},  // C string stops at NUL
      {"echo 'open", std::nullopt, "unterminated"},
      {"echo \"open", std::nullopt, "unterminated"},
      {"echo \\", std::nullopt, "backslash"},
  };
  for (const auto& c : cases) {
    auto r = split_command(c.input);
    if (c.argv) {
      ASSERT_TRUE(r) << c.input << ": " << r.error().what();
      EXPECT_EQ(*r, *c.argv) << c.input;
    } else {
      ASSERT_FALSE(r) << c.input << " was split into " << join_argv(*r);
      EXPECT_EQ(r.error().kind, ErrorKind::Invalid) << c.input;
      EXPECT_NE(r.error().message.find(c.named), std::string::npos)
          << c.input << ": " << r.error().message;
    }
  }
  // An embedded NUL (not a C string) is refused.
  auto nul = split_command(std::string_view("git\0status", 10));
  ASSERT_FALSE(nul);
  EXPECT_NE(nul.error().message.find("NUL"), std::string::npos);
  EXPECT_EQ(find_shell_syntax("a && b"), "&&");
  EXPECT_EQ(find_shell_syntax("a b"), "");
}

// ---------------------------------------------------------------------------
// Whitelist: the issue's bypass attempts against `git status`.

struct Attempt {
  const char* command;
  std::optional<ErrorKind> refused;  // nullopt: allowed
};

TEST(PolicyWhitelist, BypassAttempts) {
  const std::vector<std::string> wl = {"git status", "git diff"};
  const Attempt cases[] = {
      {"git status", std::nullopt},
      {"\"git\" status", std::nullopt},  // the same argv: the same command
      {"git  status", std::nullopt},
      {"git status   ", std::nullopt},
      {"'git' 'status'", std::nullopt},
      {"git status;id", ErrorKind::Invalid},
      {"git status\nid", ErrorKind::Invalid},
      {"$'git' status", ErrorKind::Invalid},
      {"git status ''", ErrorKind::PermissionDenied},  // an extra empty argument
      {"git 'status '", ErrorKind::PermissionDenied},  // trailing space inside the word
      {"git status --output=/etc/x", ErrorKind::PermissionDenied},
      {"git\xc2\xa0status", ErrorKind::PermissionDenied},         // no-break space
      {"git status\xef\xbc\x9bid", ErrorKind::PermissionDenied},  // fullwidth semicolon
      {"g\xd1\x96t status", ErrorKind::PermissionDenied},         // Cyrillic i
      {"git statu\xd1\x95", ErrorKind::PermissionDenied},         // Cyrillic s
      {"git\tstatus", std::nullopt},
      {"/usr/bin/git status", ErrorKind::PermissionDenied},
      {"GIT status", ErrorKind::PermissionDenied},
      {"git", ErrorKind::PermissionDenied},
  };
  for (const auto& c : cases) {
    auto argv = split_command(c.command);
    std::optional<ErrorKind> got;
    if (!argv)
      got = argv.error().kind;
    else if (auto s = check_whitelist(wl, CommandText{*argv, "", false}); !s)
      got = s.error().kind;
    EXPECT_EQ(got, c.refused) << c.command;
  }
  // An empty whitelist allows all.
  EXPECT_TRUE(check_whitelist({}, Argv{"anything"}));
}

TEST(PolicyWhitelist, ShellFormMatchesTheWholeString) {
  const std::vector<std::string> wl = {"make && make install"};
  auto ok = [&](const char* s) {
    return check_whitelist(wl, CommandText{{}, s, true}).has_value();
  };
  EXPECT_TRUE(ok("make && make install"));
  EXPECT_TRUE(ok("  make && make install "));
  EXPECT_FALSE(ok("make && make install; id"));
  EXPECT_FALSE(ok("make  && make install"));  // the string, not its words
}

// ---------------------------------------------------------------------------
// Allowlist patterns (Luminarys semantics).

struct PatternCase {
  const char* pattern;
  Argv argv;
  bool match;
};

TEST(PolicyPattern, ArgvTable) {
  const PatternCase cases[] = {
      {"go **", {"go"}, true},  // ** matches zero arguments too
      {"go **", {"go", "build", "-o", "x", "."}, true},
      {"go **", {"gofmt", "x"}, false},
      {"go **", {}, false},
      {"go *", {"go"}, false},  // * is exactly one argument
      {"go *", {"go", "build"}, true},
      {"go *", {"go", "build", "x"}, false},
      {"go *", {"go", ""}, true},
      {"go * x", {"go", "a b", "x"}, true},
      {"git status", {"git", "status"}, true},
      {"git status", {"git", "status", ""}, false},
      {"**", {"rm", "-rf", "/"}, true},
      {"**", {}, true},
      {"ls *.txt", {"ls", "a.txt"}, true},
      {"ls *.txt", {"ls", "d/a.txt"}, false},  // in-word * stops at '/'
      {"ls *.txt", {"ls", "a.txt.sh"}, false},
      {"./**", {"./myapp", "serve", "--port", "9090"}, true},
      {"./**", {"./bin/app"}, true},
      {"./**", {"./../../bin/sh"}, false},  // no ".." component
      {"./**", {"./a/.."}, false},
      {"./**", {"/bin/sh"}, false},
      {"./**", {"."}, false},
      {"kill *", {"kill", "1234"}, true},
      {"'*'", {"*"}, true},  // quoted: a literal star
      {"'*'", {"x"}, false},
      {"echo 'a b'", {"echo", "a b"}, true},
      {"echo ''", {"echo", ""}, true},
  };
  for (const auto& c : cases) {
    auto p = Pattern::parse(c.pattern);
    ASSERT_TRUE(p) << c.pattern << ": " << p.error().what();
    EXPECT_EQ(p->matches(c.argv), c.match) << c.pattern << " vs " << argv_json(c.argv);
  }
}

// A hostile argument must not make matching explode (backtracking globs are
// exponential in the number of stars).
TEST(PolicyPattern, LongArgumentsMatchInLinearTime) {
  auto p = Pattern::parse("x *a*a*a*a*a*a*b");
  ASSERT_TRUE(p);
  const std::string arg(128 * 1024, 'a');
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_FALSE(p->matches(Argv{"x", arg}));
  EXPECT_FALSE(p->matches_shell("x " + arg));
  EXPECT_TRUE(p->matches(Argv{"x", arg + "b"}));
  auto prefix = Pattern::parse("*a*a*a*a**");
  ASSERT_TRUE(prefix);
  EXPECT_FALSE(prefix->matches(Argv{std::string(64 * 1024, 'b')}));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(2));
}

TEST(PolicyPattern, BadPatterns) {
  for (const char* bad :
       {"", "   ", "** go", "go ** x", "a**b", "go ***", "go *** x", "go 'x", "go *\x01"}) {
    auto p = Pattern::parse(bad);
    ASSERT_FALSE(p) << bad;
    EXPECT_EQ(p.error().kind, ErrorKind::Invalid);
  }
}

TEST(PolicyPattern, ShellFormTable) {
  struct C {
    const char* pattern;
    const char* command;
    bool match;
  };
  const C cases[] = {
      {"git *", "git status", true},
      {"git *", "git status;id", false},  // * never matches shell syntax
      {"git *", "git $(id)", false},
      {"git *", "git `id`", false},
      {"git *", "git status && id", false},
      {"git *", "git   status  ", true},
      {"git **", "git", true},
      {"git **", "git status && rm -rf /", true},  // ** is the opt-in to anything
      {"git **", "gitx", false},
      {"npm run *", "npm run build", true},
      {"npm run *", "npm run build|sh", false},
      {"ls *.txt", "ls a.txt", true},
      {"ls *.txt", "ls ../a.txt", false},
      {"./**", "./x; id", true},
  };
  for (const auto& c : cases) {
    auto p = Pattern::parse(c.pattern);
    ASSERT_TRUE(p);
    EXPECT_EQ(p->matches_shell(c.command), c.match) << c.pattern << " vs " << c.command;
  }
}

TEST(PolicyPattern, AllowlistDeniesEverythingElse) {
  std::vector<Pattern> list = {*Pattern::parse("go **"), *Pattern::parse("ps *")};
  EXPECT_TRUE(check_allowlist(list, CommandText{{"go", "vet"}, "", false}));
  auto r = check_allowlist(list, CommandText{{"rm", "-rf", "/"}, "", false});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ErrorKind::PermissionDenied);
  EXPECT_TRUE(check_allowlist({}, CommandText{{"rm"}, "", false}));
}

// ---------------------------------------------------------------------------
// Paths.

TEST(PolicyPaths, ExecutableNames) {
  for (const char* ok : {"tool", "sub/tool", "a.b", "..tool", "tool.."})
    EXPECT_TRUE(check_executable_name(ok)) << ok;
  for (const char* bad :
       {"", "/bin/ls", "\\Windows\\cmd.exe", "C:\\x.exe", "c:tool", "..", "../tool",
        "foo/../../bar", "sub/..", "./tool", ".", "sub/./tool", "sub//tool", "sub/", "a\\b"}) {
    auto r = check_executable_name(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().kind, ErrorKind::Invalid) << bad;
  }
}

TEST(PolicyPaths, OpenExecutable) {
  TempDir t;
  const std::string dir = t / "executables";
  ::mkdir(dir.c_str(), 0755);
  ::mkdir((dir + "/sub").c_str(), 0755);
  ::mkdir((t / "outside").c_str(), 0755);
  write_file(dir + "/tool", "#!/bin/sh\necho tool\n");
  write_file(dir + "/sub/deep",
             "\x7f"
             "ELF....",
             0755);
  write_file(dir + "/plain", "data", 0644);
  write_file(dir + "/suid", "#!/bin/sh\n", 04755);
  write_file(t / "outside/evil", "#!/bin/sh\necho evil\n");
  ::symlink("tool", (dir + "/alias").c_str());                      // stays inside
  ::symlink("sub/deep", (dir + "/alias2").c_str());                 // stays inside
  ::symlink("../outside/evil", (dir + "/rel_out").c_str());         // leads out
  ::symlink((t / "outside/evil").c_str(), (dir + "/abs").c_str());  // absolute
  ::symlink("/proc/self/exe", (dir + "/magic").c_str());
  ::symlink("../outside", (dir + "/outdir").c_str());

  auto x = open_executable(dir, "tool");
  ASSERT_TRUE(x) << x.error().what();
  EXPECT_TRUE(x->script);
  EXPECT_TRUE(::fcntl(x->fd.get(), F_GETFD) & FD_CLOEXEC);
  auto y = open_executable(dir, "sub/deep");
  ASSERT_TRUE(y) << y.error().what();
  EXPECT_FALSE(y->script);
  EXPECT_TRUE(open_executable(dir, "alias"));
  EXPECT_TRUE(open_executable(dir, "alias2"));

  struct C {
    const char* name;
    const char* says;
  };
  const C refused[] = {
      {"rel_out", "leads out"},      {"abs", "leads out"},     {"magic", "leads out"},
      {"outdir/evil", "leads out"},  {"missing", "not found"}, {"plain", "not executable"},
      {"sub", "not a regular file"}, {"suid", "set-uid"},      {"../outside/evil", "'..'"},
      {"/bin/sh", "absolute"},
  };
  for (const auto& c : refused) {
    auto r = open_executable(dir, c.name);
    ASSERT_FALSE(r) << c.name;
    EXPECT_EQ(r.error().kind, ErrorKind::Invalid) << c.name << ": " << r.error().what();
    EXPECT_NE(r.error().what().find(c.says), std::string::npos) << r.error().what();
  }
}

TEST(PolicyPaths, WorkDirBounds) {
  const std::vector<std::string> allowed = {"/data/project", "/srv"};
  EXPECT_EQ(check_work_dir(allowed, "/data/project").value(), "/data/project");
  EXPECT_EQ(check_work_dir(allowed, "/data/project/sub").value(), "/data/project");
  EXPECT_EQ(check_work_dir(allowed, "/srv/a/b").value(), "/srv");
  for (const char* bad : {"/data", "/data/project2", "/data/projec", "/", "/srvx", "/etc"}) {
    auto r = check_work_dir(allowed, bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().kind, ErrorKind::Invalid);
  }
  EXPECT_EQ(check_work_dir({}, "/anything").value(), "");
}

// ---------------------------------------------------------------------------
// Limits.

TEST(PolicyLimits, CountersFillAndFree) {
  auto c = Counters::make();
  auto a = c->acquire("x", 2, "executor 'x'");
  auto b = c->acquire("x", 2, "executor 'x'");
  ASSERT_TRUE(a && b);
  auto full = c->acquire("x", 2, "executor 'x'");
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().kind, ErrorKind::Limit);
  EXPECT_NE(full.error().message.find("2 of 2"), std::string::npos);
  EXPECT_TRUE(c->acquire("y", 2, "other key"));  // keys count apart
  a->release();
  EXPECT_EQ(c->in_use("x"), 1u);
  {
    auto again = c->acquire("x", 2, "x");
    ASSERT_TRUE(again);
    EXPECT_FALSE(c->acquire("x", 2, "x"));
  }  // destroyed: freed
  EXPECT_EQ(c->in_use("x"), 1u);
  Slot moved = std::move(*b);
  EXPECT_EQ(c->in_use("x"), 1u);
  moved = Slot();
  EXPECT_EQ(c->in_use("x"), 0u);
  // 0 = unlimited, still counted.
  std::vector<Slot> many;
  for (int i = 0; i < 100; ++i) many.push_back(std::move(*c->acquire("z", 0, "z")));
  EXPECT_EQ(c->in_use("z"), 100u);
}

TEST(PolicyLimits, SlotOutlivesCounters) {
  Slot s;
  {
    auto c = Counters::make();
    s = std::move(*c->acquire("k", 1, "k"));
  }
  s.release();  // must not touch freed memory (ASan/valgrind would tell)
  EXPECT_FALSE(s.held());
}

// ---------------------------------------------------------------------------
// Callers.

CallerRules sample_rules() {
  CallerRules rules;
  CallerRules::Rule devs;
  devs.origin = "test.yaml:10";
  devs.gids = {1500};
  devs.executors = {"shell"};
  devs.run = {*Pattern::parse("git **")};
  devs.session_attach = true;
  CallerRules::Rule alice;
  alice.origin = "test.yaml:20";
  alice.uids = {1001};
  alice.executors = {"*"};
  alice.run = {*Pattern::parse("**")};
  alice.session_signal = true;
  alice.session_exec = true;
  alice.max_processes = 3;
  CallerRules::Rule carol;
  carol.origin = "test.yaml:30";
  carol.uids = {1002};
  carol.executors = {"other"};
  carol.run = {*Pattern::parse("**")};
  carol.session_exec = true;
  carol.session_cp = true;
  carol.image_events = true;
  rules.rules = {devs, alice, carol};
  return rules;
}

Caller who(uid_t uid, gid_t gid, std::vector<gid_t> groups = {}) {
  return Caller{uid, gid, std::move(groups), 0};
}

TEST(PolicyCallers, DecisionTable) {
  CallerRules rules = sample_rules();
  struct C {
    Caller caller;
    Request req;
    bool allowed;
  };
  auto run = [](const char* exe, Argv argv) {
    return Request{Action::ExecRun, exe, CommandText{std::move(argv), "", false}, std::nullopt};
  };
  auto get = [](const char* exe) { return Request{Action::ExecGet, exe, {}, std::nullopt}; };
  auto session = [](Action a, uid_t owner) { return Request{a, "shell", {}, owner}; };
  const C cases[] = {
      {who(0, 0), get("shell"), true},  // root
      {who(0, 0), run("other", {"rm"}), true},
      {who(2000, 1500), get("shell"), true},         // primary group
      {who(2000, 100, {1500}), get("shell"), true},  // supplementary group
      {who(2000, 1500), get("other"), false},
      {who(2000, 1500), run("shell", {"git", "log"}), true},
      {who(2000, 1500), run("shell", {"id"}), false},
      {who(2000, 1500), run("other", {"git", "log"}), false},  // exec.run needs exec.get
      {who(1001, 1001), run("other", {"id"}), true},
      {who(kNobody, 65534), get("shell"), false},  // deny by default
      {who(kNobody, 65534), run("shell", {"git"}), false},
      {who(kNobody, 65534), session(Action::SessionAttach, 0), false},
      {who(kNobody, 65534), session(Action::SessionSignal, 0), false},
      {who(kNobody, 65534), session(Action::SessionRemove, 0), false},
      {who(kNobody, 65534), session(Action::SessionRemove, kNobody), true},  // own session
      {who(2000, 1500), session(Action::SessionAttach, 0), true},
      {who(2000, 1500), session(Action::SessionSignal, 0), false},
      {who(1001, 1001), session(Action::SessionSignal, 0), true},
      {who(1001, 1001), session(Action::SessionRemove, 0), false},
      {who(0, 0), session(Action::SessionRemove, 1001), true},
      // exec into another's session: its own permission, granted by no other
      {who(2000, 1500), session(Action::SessionExec, 0), false},
      {who(1001, 1001), session(Action::SessionExec, 0), true},
      {who(kNobody, 65534), session(Action::SessionExec, kNobody), true},
      // ... and only into the sessions of the executors its rule lists
      {who(1002, 1002), session(Action::SessionExec, 0), false},
      {who(1002, 1002), Request{Action::SessionExec, "other", {}, uid_t{0}}, true},
      // cp likewise: a permission of its own (alice's session.exec is not it),
      // into the sessions of the executors its rule lists only
      {who(1001, 1001), session(Action::SessionCp, 0), false},
      {who(kNobody, 65534), session(Action::SessionCp, kNobody), true},
      {who(1002, 1002), session(Action::SessionCp, 0), false},
      {who(1002, 1002), Request{Action::SessionCp, "other", {}, uid_t{0}}, true},
      // the store's events: root and the rules that grant them
      {who(0, 0), Request{Action::ImageEvents}, true},
      {who(1002, 1002), Request{Action::ImageEvents}, true},
      {who(1001, 1001), Request{Action::ImageEvents}, false},
      {who(kNobody, 65534), Request{Action::ImageEvents}, false},
  };
  AuditCapture audit;
  for (const auto& c : cases) {
    auto r = authorize(&rules, c.caller, c.req);
    EXPECT_EQ(r.has_value(), c.allowed)
        << c.caller.describe() << " " << action_name(c.req.action) << " " << c.req.executor;
    if (!r) {
      EXPECT_EQ(r.error().kind, ErrorKind::PermissionDenied) << r.error().what();
    }
  }
  ASSERT_EQ(audit.records.size(), std::size(cases));  // every decision, both ways
  EXPECT_TRUE(audit.records[0].allowed);
  EXPECT_EQ(audit.records[0].reason, "root");
  EXPECT_FALSE(audit.records[9].allowed);
  EXPECT_EQ(audit.records[9].kind, "PERMISSION_DENIED");
  EXPECT_EQ(audit.records[5].reason, "rule at test.yaml:10");
  // Without rules only root acts (and anyone on their own sessions).
  EXPECT_TRUE(authorize(nullptr, who(0, 0), get("x")));
  EXPECT_FALSE(authorize(nullptr, who(1, 1), get("x")));
  EXPECT_TRUE(authorize(nullptr, who(1, 1), session(Action::SessionSignal, 1)));
  EXPECT_EQ(rules.max_processes(who(1001, 1001)), 3u);
  EXPECT_EQ(rules.max_processes(who(2000, 1500)), 0u);
}

TEST(PolicyCallers, SelfAndPeer) {
  Caller me = Caller::self();
  EXPECT_EQ(me.uid, ::geteuid());
  EXPECT_EQ(me.gid, ::getegid());
  int sv[2];
  ASSERT_EQ(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  auto peer = peer_caller(sv[0]);
  ASSERT_TRUE(peer) << peer.error().what();
  EXPECT_EQ(peer->uid, me.uid);
  EXPECT_EQ(peer->pid, ::getpid());
  ::close(sv[0]);
  ::close(sv[1]);
  EXPECT_FALSE(peer_caller(-1));
}

TEST(PolicyCallers, EveryVerbDeniedToNobody) {
  CallerRules rules = sample_rules();
  for (Action a : {Action::ExecGet, Action::ExecRun, Action::SessionAttach, Action::SessionSignal,
                   Action::SessionRemove, Action::SessionExec}) {
    int r = as_nobody([&]() -> int {
      Caller self = Caller::self();
      if (self.uid != kNobody) return 'U';
      Request req{a, "shell", CommandText{{"git", "status"}, "", false}, uid_t{0}};
      set_audit_sink(AuditSink::Off);
      auto d = authorize(&rules, self, req);
      if (d) return 'A';
      return d.error().kind == ErrorKind::PermissionDenied ? 'D' : 'K';
    });
    EXPECT_EQ(r, 'D') << action_name(a);
  }
}

// ---------------------------------------------------------------------------
// Audit.

TEST(PolicyAudit, LineAndFields) {
  AuditRecord r;
  r.allowed = false;
  r.caller = who(1000, 100, {27});
  r.caller.pid = 42;
  r.action = "exec.run";
  r.executor = "shell";
  r.argv = {"git", "status;id\n", "a\"b"};
  r.reason = "shell operator ';'";
  r.kind = "INVALID";
  std::string line = format_audit_line(r);
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(line,
            "cloister-audit: deny action=exec.run uid=1000 gid=100 groups=27 pid=42 "
            "executor=shell argv=\"[\\\"git\\\",\\\"status;id\\\\u000a\\\",\\\"a\\\\\\\"b\\\"]\" "
            "kind=INVALID reason=\"shell operator ';'\"");
  auto fields = audit_fields(r);
  auto value = [&](const std::string& k) {
    for (auto& [key, v] : fields)
      if (key == k) return v;
    return std::string("<missing>");
  };
  EXPECT_EQ(value("CLOISTER_DECISION"), "deny");
  EXPECT_EQ(value("CLOISTER_ARGV"), "[\"git\",\"status;id\\u000a\",\"a\\\"b\"]");
  EXPECT_EQ(value("PRIORITY"), "4");
  EXPECT_EQ(value("CLOISTER_ERROR_KIND"), "INVALID");
}

TEST(PolicyAudit, JournalNativeProtocol) {
  TempDir t;
  const std::string path = t / "journal.sock";
  int s = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strcpy(addr.sun_path, path.c_str());
  ASSERT_EQ(::bind(s, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_TRUE(journal_send(path, {{"MESSAGE", "hello"}, {"MULTI", "a\nb"}}));
  char buf[4096];
  ssize_t n = ::recv(s, buf, sizeof buf, 0);
  ASSERT_GT(n, 0);
  std::string got(buf, static_cast<size_t>(n));
  EXPECT_EQ(got, std::string("MESSAGE=hello\nMULTI\n\x03\0\0\0\0\0\0\0a\nb\n", 32));

  // The sink: records go to the journal socket when told so.
  set_journal_socket(path);
  set_audit_sink(AuditSink::Journal);
  AuditRecord r;
  r.allowed = true;
  r.action = "session.attach";
  r.reason = "root";
  audit(r);
  n = ::recv(s, buf, sizeof buf, MSG_DONTWAIT);
  ASSERT_GT(n, 0);
  got.assign(buf, static_cast<size_t>(n));
  EXPECT_NE(got.find("CLOISTER_ACTION=session.attach\n"), std::string::npos) << got;
  EXPECT_NE(got.find("SYSLOG_IDENTIFIER=cloister\n"), std::string::npos);
  set_audit_sink(AuditSink::Auto);
  set_journal_socket("/run/systemd/journal/socket");
  ::close(s);
}

// ---------------------------------------------------------------------------
// The exec decision as a whole.

TEST(PolicyExecDecision, OrderAndKinds) {
  ExecutorPolicy p;
  p.allowlist = {*Pattern::parse("echo *")};
  p.allowed_dirs = {"/work"};
  p.max_processes = 1;
  ExecInput in;
  in.executor = "e";
  in.caller = who(0, 0);
  in.work_dir = "/work";
  AuditCapture audit;

  in.command = "echo hi";
  auto g = authorize_exec(p, {}, in);
  ASSERT_TRUE(g) << g.error().what();
  EXPECT_EQ(g->argv, (Argv{"echo", "hi"}));
  EXPECT_EQ(g->work_dir_beneath, "/work");
  // The executor is full while g holds its slot.
  auto full = authorize_exec(p, {}, in);
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().kind, ErrorKind::Limit);
  g->slots.clear();
  EXPECT_TRUE(authorize_exec(p, {}, in));

  in.command = "echo hi; id";
  EXPECT_EQ(authorize_exec(p, {}, in).error().kind, ErrorKind::Invalid);
  in.command = "cat /etc/passwd";
  EXPECT_EQ(authorize_exec(p, {}, in).error().kind, ErrorKind::PermissionDenied);
  in.command = "echo hi";
  in.work_dir = "/etc";
  EXPECT_EQ(authorize_exec(p, {}, in).error().kind, ErrorKind::Invalid);
  in.work_dir = "/work";
  in.caller = who(kNobody, 65534);  // no callers rules: only root
  EXPECT_EQ(authorize_exec(p, {}, in).error().kind, ErrorKind::PermissionDenied);
  in.caller = who(0, 0);
  in.argv = {"echo", "x"};
  EXPECT_EQ(authorize_exec(p, {}, in).error().kind, ErrorKind::Invalid);  // both forms

  ASSERT_EQ(audit.records.size(), 8u);
  EXPECT_TRUE(audit.records[0].allowed);
  EXPECT_EQ(audit.records[1].kind, "LIMIT");
  EXPECT_EQ(audit.records[3].kind, "INVALID");
  EXPECT_EQ(audit.records[3].argv, (Argv{"echo hi; id"}));  // unsplittable: as given
  EXPECT_EQ(audit.records[4].kind, "PERMISSION_DENIED");
  EXPECT_EQ(audit.records[4].argv, (Argv{"cat", "/etc/passwd"}));

  // Shell form.
  ExecutorPolicy sh;
  sh.shell = true;
  sh.allowlist = {*Pattern::parse("make *")};
  ExecInput si;
  si.executor = "sh";
  si.caller = who(0, 0);
  si.work_dir = "/";
  si.command = "make all";
  auto sg = authorize_exec(sh, {}, si);
  ASSERT_TRUE(sg);
  EXPECT_EQ(sg->argv, (Argv{"/bin/sh", "-c", "make all"}));
  si.command = "make all && id";
  EXPECT_EQ(authorize_exec(sh, {}, si).error().kind, ErrorKind::PermissionDenied);

  // Per-caller limits.
  auto rules = std::make_shared<CallerRules>();
  CallerRules::Rule r;
  r.origin = "t:1";
  r.uids = {0};
  r.executors = {"*"};
  r.run = {*Pattern::parse("**")};
  r.max_processes = 1;
  rules->rules = {r};
  ExecutorPolicy pc;
  pc.callers = rules;
  ExecInput ci;
  ci.executor = "c";
  ci.caller = who(0, 0);
  ci.work_dir = "/";
  ci.argv = {"true"};
  auto first = authorize_exec(pc, {}, ci);
  ASSERT_TRUE(first);
  ExecutorPolicy other = pc;  // another executor, same callers rules
  other.executor_counters = Counters::make();
  ci.executor = "d";
  auto second = authorize_exec(other, {}, ci);
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().kind, ErrorKind::Limit);
  EXPECT_NE(second.error().message.find("caller uid 0"), std::string::npos);
  first->slots.clear();
  EXPECT_TRUE(authorize_exec(other, {}, ci));
}

// ---------------------------------------------------------------------------
// Config.

// Where the executor decides what runs, the caller's environment may not
// make the checked command load or run other code; where it does not, the
// caller may set anything (it may run anything anyway).
TEST(PolicyExecDecision, LoaderVariablesAreFixedWhereTheExecutorDecidesWhatRuns) {
  ExecutorPolicy p;
  p.allowlist = {*Pattern::parse("id")};
  ExecInput in;
  in.executor = "e";
  in.caller = who(0, 0);
  in.work_dir = "/";
  in.command = "id";
  AuditCapture audit;
  EXPECT_TRUE(authorize_exec(p, {}, in));
  for (const char* name : {"LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "GCONV_PATH", "BASH_ENV",
                           "ENV", "PATH", "LOCPATH"}) {
    in.env_names = {"HOME", name};
    auto g = authorize_exec(p, {}, in);
    ASSERT_FALSE(g) << name;
    EXPECT_EQ(g.error().kind, ErrorKind::Invalid) << name;
    EXPECT_NE(g.error().message.find(name), std::string::npos) << g.error().message;
  }
  // A whitelist decides too.
  ExecutorPolicy open;
  in.env_names = {"LD_PRELOAD"};
  auto g = authorize_exec(open, {"id"}, in);
  EXPECT_FALSE(g);
  // No rule of what runs: the caller's environment is its own business.
  auto free = authorize_exec(open, {}, in);
  EXPECT_TRUE(free) << free.error().what();
  in.env_names = {"HOME", "LANG"};
  EXPECT_TRUE(authorize_exec(p, {}, in));
}

TEST(PolicyConfig, FieldsAndCallers) {
  TempDir t;
  const std::string yaml =
      "executors:\n"
      "  - name: luminarys\n"
      "    kind: host\n"
      "    default_work_dir: /data/project\n"
      "    allowlist: [\"go **\", \"ps *\"]\n"
      "    allowed_dirs: [/data/project]\n"
      "    max_processes: 4\n"
      "    output_limit: {stdout: 1m, stderr: 64k}\n"
      "  - name: toast\n"
      "    executables_dir: " +
      t.path +
      "\n"
      "    output_limit: 2k\n"
      "  - name: oc\n"
      "    shell: true\n"
      "callers:\n"
      "  - users: [nobody, 1234]\n"
      "    groups: [root]\n"
      "    exec.get: [luminarys]\n"
      "    exec.run: [\"go **\"]\n"
      "    session.attach: true\n"
      "    max_processes: 2\n";
  auto c = parse_config(yaml, "p.yaml");
  ASSERT_TRUE(c) << c.error().what();
  const auto& l = c->find("luminarys")->policy;
  ASSERT_EQ(l.allowlist.size(), 2u);
  EXPECT_EQ(l.allowlist[0].text(), "go **");
  EXPECT_EQ(l.allowed_dirs, (std::vector<std::string>{"/data/project"}));
  EXPECT_EQ(l.max_processes, 4u);
  EXPECT_EQ(l.stdout_limit, 1u << 20);
  EXPECT_EQ(l.stderr_limit, 64u << 10);
  const auto& toast = c->find("toast")->policy;
  EXPECT_EQ(toast.executables_dir, t.path);
  EXPECT_EQ(toast.stdout_limit, 2048u);
  EXPECT_EQ(toast.stderr_limit, 2048u);
  EXPECT_TRUE(c->find("oc")->policy.shell);
  ASSERT_TRUE(c->callers);
  EXPECT_EQ(c->find("oc")->policy.callers, c->callers);
  const auto& rule = c->callers->rules.at(0);
  EXPECT_EQ(rule.origin, "p.yaml:15");
  EXPECT_EQ(rule.uids, (std::vector<uid_t>{kNobody, 1234}));
  EXPECT_EQ(rule.gids, (std::vector<gid_t>{0}));
  EXPECT_TRUE(rule.session_attach);
  EXPECT_FALSE(rule.session_signal);
  EXPECT_EQ(rule.max_processes, 2u);
  // No callers section: null rules (root only).
  auto bare = parse_config("executors:\n  - name: a\n", "b.yaml");
  ASSERT_TRUE(bare);
  EXPECT_EQ(bare->callers, nullptr);
}

TEST(PolicyConfig, Errors) {
  struct C {
    std::string yaml;
    const char* where;  // "<line>: <path>"
    const char* what;
  };
  auto one = [](const std::string& fields) {
    return "executors:\n  - name: a\n    kind: host\n" + fields;
  };
  const C cases[] = {
      {one("    allowlist: []\n"), "4: executors[0].allowlist", "empty allowlist"},
      {one("    allowlist: [\"** go\"]\n"), "4: executors[0].allowlist[0]", "must end"},
      {one("    allowed_dirs: [data]\n"), "4: executors[0].allowed_dirs[0]", "absolute"},
      {one("    allowed_dirs: [/data]\n"), "4: executors[0].allowed_dirs",
       "default_work_dir \"/\" is outside"},
      {one("    default_work_dir: /etc\n    allowed_dirs: [/data]\n"),
       "4: executors[0].default_work_dir", "outside allowed_dirs"},
      {one("    executables_dir: /nonexistent-x\n"), "4: executors[0].executables_dir",
       "No such file"},
      {one("    executables_dir: /etc/passwd\n"), "4: executors[0].executables_dir",
       "not a directory"},
      {one("    executables_dir: /tmp\n    shell: true\n"), "4: executors[0].executables_dir",
       "shell"},
      {one("    shell: yes\n"), "4: executors[0].shell", "true or false"},
      {one("    max_processes: -1\n"), "4: executors[0].max_processes", "non-negative"},
      {one("    output_limit: {stdin: 1k}\n"), "4: executors[0].output_limit.stdin",
       "unknown field"},
      {one("    command_whitelist: [\"git status; id\"]\n"), "4: executors[0].command_whitelist[0]",
       "never match"},
      {one("callers:\n  - exec.get: [a]\n"), "5: callers[0]", "needs users or groups"},
      {one("callers:\n  - users: [no-such-user-x]\n"), "5: callers[0].users[0]", "not found"},
      {one("callers:\n  - users: [0]\n    exec.get: [b]\n"), "6: callers[0][\"exec.get\"]",
       "no executor named"},
      {one("callers:\n  - users: [0]\n    exec.run: [\"a ** b\"]\n"),
       "6: callers[0][\"exec.run\"][0]", "must end"},
      {one("callers:\n  - users: [0]\n    exec.exec: [x]\n"), "6: callers[0][\"exec.exec\"]",
       "unknown field"},
      {one("callers:\n  - users: [0]\n    session.attach: 1\n"),
       "6: callers[0][\"session.attach\"]", "true or false"},
  };
  for (const auto& c : cases) {
    auto r = parse_config(c.yaml, "t.yaml");
    ASSERT_FALSE(r) << c.yaml;
    EXPECT_EQ(r.error().kind, ErrorKind::Invalid);
    const std::string& m = r.error().message;
    EXPECT_NE(m.find(std::string("t.yaml:") + c.where + ": "), std::string::npos) << m;
    EXPECT_NE(m.find(c.what), std::string::npos) << m;
  }
}

}  // namespace

// The example configs of docs/policy.md load as written (with a real
// directory for the ToastStunt executables).
TEST(PolicyDocs, ExamplesLoad) {
  std::ifstream in(std::string(CLOISTER_SOURCE_DIR) + "/docs/policy.md");
  std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TempDir t;
  int loaded = 0;
  size_t pos = 0;
  while ((pos = doc.find("```yaml\n", pos)) != std::string::npos) {
    size_t start = pos + 8;
    size_t end = doc.find("```", start);
    ASSERT_NE(end, std::string::npos);
    std::string yaml = doc.substr(start, end - start);
    pos = end + 3;
    if (yaml.find("executors:") == std::string::npos) continue;
    for (size_t at; (at = yaml.find("/srv/moo/executables")) != std::string::npos;)
      yaml.replace(at, 20, t.path);
    auto c = parse_config(yaml, "policy.md");
    EXPECT_TRUE(c) << c.error().what() << "\n" << yaml;
    ++loaded;
  }
  EXPECT_EQ(loaded, 4);
}

// Integration tests of cloisterd: the real binary on a temporary socket,
// driven through the client library, the CLI and raw frames.
#include <grp.h>
#include <gtest/gtest.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>

#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>

#include "fuse_stall.h"
#include "isolate/cgroups.h"
#include "runtime/client.h"
#include "service_support.h"

using namespace cloister;
using namespace cloister::testing;
using namespace std::chrono_literals;
using json = nlohmann::json;

namespace {

const std::string kCli = CLOISTER_BIN_DIR "/cloister";

// A reply within `limit`, or an error: what a stalled service looks like
// from a client, instead of a test that hangs.
Result<json> call_within(Connection& c, json request, std::chrono::milliseconds limit) {
  auto id = c.send(std::move(request));
  if (!id) return fail(id.error());
  const auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return fail(make_error(ErrorKind::Timeout, "no reply"));
    auto m = c.next(left);
    if (!m) return fail(m.error());
    if (!m->data && m->control.contains("ok") && m->control["id"] == *id) {
      if (m->control.value("ok", false)) return m->control;
      return fail(make_error(ErrorKind::Internal, m->control.dump()));
    }
  }
}

// --- the CLI: attached `run` exits exactly as `cloister exec` ---------------

TEST(Service, RunExitCodesMatchExec) {
  Daemon d;
  const std::string run = kCli + " --socket " + d.socket + " run shell -- ";
  const std::string exec = kCli + " exec -c " + d.config + " -x shell -- ";
  const std::vector<std::pair<std::string, int>> cases = {
      {"true", 0},
      {"sh -c 'exit 3'", 3},
      {"sh -c 'kill -9 $$'", 137},
      {"no-such-command", 127},
      {"/etc/hostname", 126},
  };
  for (auto& [cmd, want] : cases) {
    EXPECT_EQ(sh(run + cmd), want) << cmd;
    EXPECT_EQ(sh(exec + cmd), want) << cmd;
  }
  std::string out;
  EXPECT_EQ(sh(kCli + " --socket " + d.socket + " run --timeout 0.3 shell -- sleep 5 2>&1", &out),
            124);
  EXPECT_NE(out.find("TIMEOUT"), std::string::npos) << out;
  EXPECT_EQ(sh(kCli + " --socket " + d.socket + " run nope -- true 2>&1", &out), 125);
  EXPECT_NE(out.find("NOT_FOUND"), std::string::npos) << out;
  EXPECT_EQ(out.find('\n'), out.size() - 1) << "one error line: " << out;
  // Output goes straight to our stdio (passed fds), stdin with -i.
  EXPECT_EQ(
      sh("echo abc | " + kCli + " --socket " + d.socket + " run -i shell -- tr a-z A-Z", &out), 0);
  EXPECT_EQ(out, "ABC\n");
  // No service: 125 and the cause.
  EXPECT_EQ(sh(kCli + " --socket " + d.dir.path + "/none.sock run shell -- true 2>&1", &out), 125);
  EXPECT_NE(out.find("connect"), std::string::npos) << out;
}

TEST(Service, DetachPsLogsAttachKillWaitRm) {
  Daemon d;
  const std::string cli = kCli + " --socket " + d.socket + " ";
  std::string id;
  ASSERT_EQ(
      sh(cli + "run -d -i shell -- sh -c 'echo one; echo two >&2; read x; echo got $x; exit 4'",
         &id),
      0);
  id.pop_back();
  std::string out;
  ASSERT_EQ(sh(cli + "--json ps", &out), 0);
  auto list = json::parse(out);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0]["session"].get<uint64_t>(), std::stoull(id));
  EXPECT_EQ(list[0]["state"], "running");
  std::this_thread::sleep_for(200ms);
  EXPECT_EQ(sh(cli + "logs " + id + " 2>/dev/null", &out), 0);
  EXPECT_EQ(out, "one\n");
  EXPECT_EQ(sh(cli + "logs " + id + " 2>&1 >/dev/null", &out), 0);
  EXPECT_EQ(out, "two\n");
  // attach -i: our stdin reaches the session, the exit code is the session's.
  EXPECT_EQ(sh("echo hello | " + cli + "attach -i " + id + " 2>/dev/null", &out), 4);
  EXPECT_EQ(out, "one\ngot hello\n");
  EXPECT_EQ(sh(cli + "wait " + id), 4);
  EXPECT_EQ(sh(cli + "logs --tail 1 " + id + " 2>/dev/null", &out), 0);
  EXPECT_EQ(out, "got hello\n");
  EXPECT_EQ(sh(cli + "logs --tail 0 " + id + " 2>&1", &out), 0);
  EXPECT_EQ(out, "") << "--tail 0 prints nothing";
  EXPECT_EQ(sh(cli + "rm " + id), 0);
  EXPECT_EQ(sh(cli + "wait " + id), 125);

  ASSERT_EQ(sh(cli + "run -d shell -- sleep 100", &id), 0);
  id.pop_back();
  EXPECT_EQ(sh(cli + "rm " + id), 125) << "removing a running session needs -f";
  EXPECT_EQ(sh(cli + "kill -s KILL " + id), 0);
  EXPECT_EQ(sh(cli + "wait " + id), 137);
  EXPECT_EQ(sh(cli + "rm " + id), 0);
}

// The grammar a docker user types (issue 15): the command after the
// executor without `--`, --json after the verb, a typo'd verb named.
TEST(Service, CliGrammarAsDockersAndVerbsNamed) {
  Daemon d;
  const std::string cli = kCli + " --socket " + d.socket + " ";
  std::string out;
  EXPECT_EQ(sh(cli + "run shell ls -d / 2>/dev/null", &out), 0);
  EXPECT_EQ(out, "/\n");
  EXPECT_EQ(sh(cli + "run shell -- ls -d / 2>/dev/null", &out), 0);
  EXPECT_EQ(out, "/\n");
  EXPECT_EQ(sh(kCli + " run --socket " + d.socket + " shell echo after 2>/dev/null", &out), 0)
      << "--socket after the verb";
  EXPECT_EQ(out, "after\n");
  std::string id;
  ASSERT_EQ(sh(cli + "run -d shell sleep 100", &id), 0);
  id.pop_back();
  EXPECT_EQ(sh(cli + "kill -s kill " + id), 0) << "signal names in any case";
  EXPECT_EQ(sh(cli + "wait " + id), 137);
  EXPECT_EQ(sh(cli + "run shell 2>&1", &out), 125);
  EXPECT_NE(out.find("give the command after the executor"), std::string::npos) << out;
  EXPECT_EQ(sh(kCli + " exce 2>&1", &out), 125);
  EXPECT_EQ(out, "cloister: INVALID: unknown verb 'exce' (did you mean exec?)\n");
  EXPECT_EQ(sh(kCli + " --enve A=B exec --host true 2>&1", &out), 125);
  EXPECT_NE(out.find("--enve"), std::string::npos) << out;
  EXPECT_EQ(sh(kCli + " images --json --state-dir " + d.dir.path + "/store 2>&1", &out), 0);
  EXPECT_EQ(json::parse(out), json::array()) << out;
  // --json: errors as JSON too; hints for the common failures.
  EXPECT_EQ(sh(kCli + " --json exce 2>&1", &out), 125);
  auto e = json::parse(out, nullptr, false);
  EXPECT_EQ(e["error"]["kind"], "INVALID") << out;
  EXPECT_EQ(sh(kCli + " ps --socket " + d.dir.path + "/none.sock 2>&1", &out), 125);
  EXPECT_NE(out.find("is cloisterd running?"), std::string::npos) << out;
  EXPECT_EQ(sh(kCli + " pull --state-dir " + d.dir.path + "/store localhost:1/none:1 2>&1", &out),
            125);
  EXPECT_NE(out.find("is the registry up and reachable"), std::string::npos) << out;
  EXPECT_EQ(sh(kCli + " --version", &out), 0);
  EXPECT_NE(out.find("(commit "), std::string::npos) << out;
  EXPECT_NE(out.find("kernel "), std::string::npos) << out;
  EXPECT_EQ(sh(kCli + " info --json --state-dir " + d.dir.path + "/nostore", &out), 0);
  auto info = json::parse(out, nullptr, false);
  EXPECT_EQ(info["userns"], true) << out;
  EXPECT_TRUE(info["cgroups"].is_string()) << out;
  EXPECT_EQ(info["store"]["exists"], false) << out;
  EXPECT_NE(::access((d.dir.path + "/nostore").c_str(), F_OK), 0) << "info made no store";
  EXPECT_EQ(sh(cli + "executors --json 2>&1", &out), 0);
  EXPECT_TRUE(json::parse(out, nullptr, false).is_array() ||
              json::parse(out, nullptr, false).is_object())
      << out;
}

// exec into a running session (issue 14): a process of its own in the
// session's sandbox - its pid namespace, its mounts, its cgroup (counted
// against its pids_limit) - with its own streams and exit status, through
// the CLI and the client library; another caller's session needs
// session.exec; an ended session has no sandbox to join.
TEST(Service, ExecRunsInASessionsSandbox) {
  Daemon d(
      "  socket_group: nogroup\n"
      "callers:\n"
      "  - users: [nobody]\n"
      "    exec.get: [\"*\"]\n"
      "    exec.run: [\"**\"]\n",
      "  - name: small\n"
      "    kind: host\n"
      "    pids_limit: 6\n"
      "    default_env: { PATH: /usr/bin:/bin }\n"
      "    tmpfs: { /tmp: \"rw,size=16m\" }\n");
  ASSERT_EQ(::chmod(d.dir.path.c_str(), 0755), 0);
  const std::string cli = kCli + " --socket " + d.socket + " ";
  std::string id, out;
  ASSERT_EQ(sh(cli + "run -d --name box small -- sh -c 'echo inside > /tmp/m; "
                     "ls -l /proc/self/ns/pid; exec sleep 1000'",
               &id),
            0);
  id.pop_back();
  std::string logs;
  for (int i = 0; i < 200 && logs.find("pid:[") == std::string::npos; ++i) {
    std::this_thread::sleep_for(10ms);
    sh(cli + "logs box 2>/dev/null", &logs);
  }
  const size_t at = logs.find("pid:[");
  ASSERT_NE(at, std::string::npos) << logs;
  const std::string pidns = logs.substr(at, logs.find(']', at) - at + 1);

  // The CLI: its own exit status, the session's files and pid namespace.
  EXPECT_EQ(
      sh(cli + "exec --session box -- sh -c 'cat /tmp/m; ls -l /proc/self/ns/pid; exit 3'", &out),
      3);
  EXPECT_NE(out.find("inside\n"), std::string::npos) << out;
  EXPECT_NE(out.find(pidns), std::string::npos)
      << "not the session's pid namespace " << pidns << ": " << out;
  EXPECT_EQ(sh(cli + "exec -x small -- true 2>/dev/null --session box"), 125)
      << "--executor and --session exclude each other";
  // -t through a real terminal (script(1)): a pty of the sandbox's devpts,
  // with the caller's TERM.
  if (sh("command -v script") == 0) {
    std::string tty;
    EXPECT_EQ(sh("TERM=vt220 script -qec \"" + cli +
                     "exec --session box -t -- sh -c 'tty; echo T=\\$TERM'\" /dev/null",
                 &tty),
              0)
        << tty;
    EXPECT_NE(tty.find("/dev/pts/"), std::string::npos) << tty;
    EXPECT_NE(tty.find("T=vt220"), std::string::npos) << tty;
  }

  // The client library, with stdin.
  auto p =
      exec_in_session(d.socket, "box", {.argv = {"sh", "-c", "cat; exit 4"}, .stdin_open = true});
  ASSERT_TRUE(p) << p.error().what();
  ASSERT_TRUE((*p)->start());
  ASSERT_TRUE((*p)->write_stdin("ping\n"));
  ASSERT_TRUE((*p)->write_stdin(""));
  auto echoed = (*p)->read(Stream::Stdout);
  ASSERT_TRUE(echoed);
  EXPECT_EQ(*echoed, "ping\n");
  auto st = (*p)->wait();
  ASSERT_TRUE(st) << st.error().what();
  EXPECT_EQ(st->exit_code, 4);

  // The session's cgroup counts an exec's processes: box holds its init and
  // sleep, a detached exec its sleep (its init, once the sleep is forked,
  // lives beside the session's cgroup2 directory; a hybrid host's v1 pids
  // controller still counts it), and at pids_limit 6 a third exec forks two
  // of its four sleeps at most.
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  auto stats_pids = [&](uint64_t want) {
    // The execs before may still be on their way out.
    uint64_t n = 0;
    for (int i = 0; i < 200; ++i) {
      auto r = c->call({{"op", "stats"}, {"session", "box"}});
      n = r ? (*r)["stats"]["pids"].get<uint64_t>() : 0;
      if (n == want) break;
      std::this_thread::sleep_for(10ms);
    }
    return n;
  };
  // (A finished exec's init is reaped at once: not even its zombie counts.)
  EXPECT_EQ(stats_pids(2), 2u);
  auto bg = c->call(
      {{"op", "exec"}, {"session", "box"}, {"argv", {"sleep", "1000"}}, {"detached", true}});
  ASSERT_TRUE(bg) << bg.error().what();
  const uint64_t bg_id = (*bg)["session"];
  auto manager = cgroups::Manager::shared();
  ASSERT_TRUE(manager);
  const uint64_t with_bg = (*manager)->layout() == cgroups::Layout::Hybrid ? 4 : 3;
  EXPECT_EQ(stats_pids(with_bg), with_bg);
  // Its top shows its command in the session's pid namespace, not its init.
  auto t = c->call({{"op", "top"}, {"session", bg_id}});
  ASSERT_TRUE(t) << t.error().what();
  ASSERT_EQ((*t)["processes"].size(), 1u) << *t;
  EXPECT_EQ((*t)["processes"][0]["argv"], json({"sleep", "1000"})) << *t;
  EXPECT_LT((*t)["processes"][0]["ns_pid"].get<int>(), 100) << *t;
  auto l = c->call({{"op", "list"}});
  ASSERT_TRUE(l);
  bool listed = false;
  for (auto& e : (*l)["sessions"])
    if (e["session"] == bg_id) listed = e["exec_of"] == std::stoull(id) && e["executor"] == "small";
  EXPECT_TRUE(listed) << *l;
  EXPECT_NE(sh(cli + "exec --session box -- sh -c 'for i in 1 2 3 4; do sleep 30 & done; wait' "
                     "2>&1",
               &out),
            0);
  EXPECT_NE(out.find("fork"), std::string::npos) << "the fifth to eighth process fit: " << out;

  // Other callers: nobody's own session is its own; root's needs session.exec.
  const uint64_t box = std::stoull(id);
  EXPECT_EQ(as_user(kNobody,
                    [&] {
                      auto o = Connection::connect(d.socket);
                      if (!o) return 101;
                      auto r = (*o)->call({{"op", "exec"}, {"session", box}, {"argv", {"true"}}});
                      if (r || r.error().kind != ErrorKind::PermissionDenied) return 102;
                      auto own = (*o)->call({{"op", "start"},
                                             {"executor", "shell"},
                                             {"argv", {"sleep", "100"}},
                                             {"detached", true}});
                      if (!own) return 103;
                      auto in = (*o)->call({{"op", "exec"},
                                            {"session", (*own)["session"]},
                                            {"argv", {"true"}},
                                            {"detached", true}});
                      return in ? 0 : 104;
                    }),
            0);
  // The executor is the session's; an ended session has no sandbox.
  auto other =
      c->call({{"op", "exec"}, {"session", "box"}, {"executor", "shell"}, {"argv", {"true"}}});
  ASSERT_FALSE(other);
  EXPECT_EQ(other.error().kind, ErrorKind::Invalid) << other.error().what();
  ASSERT_EQ(sh(cli + "kill -s KILL box"), 0);
  EXPECT_EQ(sh(cli + "wait box"), 137);
  auto late = c->call({{"op", "exec"}, {"session", "box"}, {"argv", {"true"}}});
  ASSERT_FALSE(late);
  EXPECT_EQ(late.error().kind, ErrorKind::Invalid) << late.error().what();
  // The exec that ran in it ended with it.
  auto w = call_within(*c, {{"op", "wait"}, {"session", bg_id}}, 5s);
  ASSERT_TRUE(w) << w.error().what();
  EXPECT_EQ((*w)["status"]["signal"], SIGKILL) << *w;
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// The review's attack on exec: the sandbox holds the new process up before
// its exec, here with a command on a FUSE file whose first page never
// comes (a SIGSTOP from the session's payload does the same). The service
// goes on serving everyone meanwhile (the start runs on a thread of its
// own), and the exec fails with TIMEOUT at the deadline, its init killed.
// Two places: the command, whose first page never comes (the wait is
// killable), and the work dir, whose lookup the server read and never
// answers (it is not: the killed init stays until the server goes).
// An executor "fuse" that sees dir (a FuseStall's) at /fuse.
std::string fuse_executor(const std::string& dir) {
  return "  - name: fuse\n    kind: host\n    volumes: [\"" + dir +
         ":/fuse:ro\"]\n    default_env: { PATH: /usr/bin:/bin }\n";
}

// cloisterd is left with no child (5 s at most).
void expect_no_children(const Daemon& d, const std::string& after) {
  const std::string children =
      "/proc/" + std::to_string(d.pid) + "/task/" + std::to_string(d.pid) + "/children";
  std::string left;
  for (int i = 0; i < 500; ++i) {
    left = read_text(children);
    if (left.empty()) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(left, "") << "cloisterd's children after " << after;
}

class ExecHeldUp : public ::testing::TestWithParam<bool> {};

TEST_P(ExecHeldUp, StallsNoOne) {
  const bool by_work_dir = GetParam();
  if (std::string why; !FuseStall::available(why)) GTEST_SKIP() << why;
  TempDir mnt;
  Daemon d("", fuse_executor(mnt.path));
  FuseStall fuse(mnt.path, true);
  ASSERT_TRUE(fuse.ok()) << fuse.error();
  auto a = connect_ok(d.socket);
  auto b = connect_ok(d.socket);
  ASSERT_TRUE(a && b);
  auto box = a->call(
      {{"op", "start"}, {"executor", "fuse"}, {"argv", {"sleep", "1000"}}, {"detached", true}});
  ASSERT_TRUE(box) << box.error().what();
  const uint64_t sid = (*box)["session"];
  const auto t0 = std::chrono::steady_clock::now();
  json exec = {{"op", "exec"}, {"session", sid}, {"argv", {"/fuse/f"}}};
  if (by_work_dir)
    exec = {{"op", "exec"}, {"session", sid}, {"argv", {"true"}}, {"work_dir", "/fuse/stall"}};
  auto xid = a->send(exec);
  ASSERT_TRUE(xid) << xid.error().what();
  auto waited = [&] { return by_work_dir ? fuse.stalled_lookups() : fuse.reads(); };
  for (int i = 0; i < 500 && waited() == 0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_GE(waited(), 1) << "the exec never waited for the FUSE server";
  auto l = call_within(*b, {{"op", "list"}}, 2s);
  ASSERT_TRUE(l) << "the service stalled behind the exec: " << l.error().what();
  auto r =
      call_within(*b, {{"op", "run"}, {"executor", "shell"}, {"argv", {"echo", "served"}}}, 5s);
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ((*r)["stdout"], "served\n");
  json reply;
  while (reply.is_null()) {
    auto m = a->next(20s);
    ASSERT_TRUE(m) << m.error().what();
    if (!m->data && m->control.value("id", json()) == *xid) reply = m->control;
  }
  EXPECT_EQ(reply["ok"], false) << reply;
  EXPECT_EQ(reply["error"]["kind"], "TIMEOUT") << reply;
  EXPECT_GE(std::chrono::steady_clock::now() - t0, kJoinStartDeadline - 1s);
  // The session is as it was; once the FUSE server goes, nothing is left.
  auto t = a->call({{"op", "top"}, {"session", sid}});
  ASSERT_TRUE(t) << t.error().what();
  fuse.stop();
  ASSERT_TRUE(a->call({{"op", "remove"}, {"session", sid}, {"force", true}}));
  expect_no_children(d, "the held-up exec");
  EXPECT_EQ(d.stop(), 0) << d.log();
}

INSTANTIATE_TEST_SUITE_P(Service, ExecHeldUp, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "WorkDir" : "Command"; });

// An exec whose command is stuck in the kernel after its exec (a lookup the
// FUSE server read and never answers, which SIGKILL does not end) still
// ends at its timeout: its cgroup is killed, and its init, which would wait
// for the stuck command, 5 s later.
TEST(Service, AStuckExecStillTimesOut) {
  if (std::string why; !FuseStall::available(why)) GTEST_SKIP() << why;
  TempDir mnt;
  Daemon d("", fuse_executor(mnt.path));
  FuseStall fuse(mnt.path, true);
  ASSERT_TRUE(fuse.ok()) << fuse.error();
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  auto box = c->call(
      {{"op", "start"}, {"executor", "fuse"}, {"argv", {"sleep", "1000"}}, {"detached", true}});
  ASSERT_TRUE(box) << box.error().what();
  const uint64_t sid = (*box)["session"];
  const auto t0 = std::chrono::steady_clock::now();
  auto x = c->call({{"op", "exec"},
                    {"session", sid},
                    {"argv", {"ls", "/fuse/stall"}},
                    {"timeout_ms", 300},
                    {"detached", true}});
  ASSERT_TRUE(x) << x.error().what();
  const uint64_t xid = (*x)["session"];
  auto w = call_within(*c, {{"op", "wait"}, {"session", xid}}, 20s);
  ASSERT_TRUE(w) << w.error().what();
  EXPECT_EQ((*w)["status"]["timed_out"], true) << *w;
  EXPECT_GE(fuse.stalled_lookups(), 1) << "the command never waited for the FUSE server";
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 15s);
  // The session runs on; once the FUSE server goes, nothing is left.
  auto st = c->call({{"op", "stats"}, {"session", sid}});
  ASSERT_TRUE(st) << st.error().what();
  EXPECT_EQ((*st)["state"], "running") << *st;
  fuse.stop();
  ASSERT_TRUE(c->call({{"op", "remove"}, {"session", sid}, {"force", true}}));
  expect_no_children(d, "the stuck exec");
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// --- the client library: the Process model over the socket ------------------

TEST(Service, RemoteProcessMirrorsProcess) {
  Daemon d;
  auto ex = RemoteExecutor::connect(d.socket, "shell");
  ASSERT_TRUE(ex) << ex.error().what();
  auto p = (*ex)->exec({.argv = {"sh", "-c", "cat; echo bye >&2; exit 5"}, .stdin_open = true});
  ASSERT_TRUE(p);
  ASSERT_TRUE((*p)->start());
  EXPECT_GT((*p)->pid(), 0);
  ASSERT_TRUE((*p)->write_stdin("ping\n"));
  ASSERT_TRUE((*p)->write_stdin(""));
  std::string out, err;
  for (;;) {
    auto c = (*p)->read();
    ASSERT_TRUE(c) << c.error().what();
    if (!*c) break;
    ((*c)->stream == Stream::Stdout ? out : err) += (*c)->data;
  }
  EXPECT_EQ(out, "ping\n");
  EXPECT_EQ(err, "bye\n");
  auto st = (*p)->wait();
  ASSERT_TRUE(st);
  EXPECT_EQ(st->exit_code, 5);
  EXPECT_EQ((*p)->evicted(), 0u);

  // Errors keep their kind and at_exec, as in-process.
  auto q = (*ex)->exec({.argv = {"no-such-command"}});
  auto s = (*q)->start();
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().kind, ErrorKind::NotFound);
  EXPECT_TRUE(s.error().at_exec);

  // Timeouts and signals.
  auto t = (*ex)->exec({.argv = {"sleep", "10"}, .timeout = 200ms});
  ASSERT_TRUE((*t)->start());
  auto ts = (*t)->wait();
  ASSERT_TRUE(ts);
  EXPECT_TRUE(ts->timed_out);
  EXPECT_EQ(ts->code(), 124);
  auto k = (*ex)->exec({.argv = {"sleep", "10"}});
  ASSERT_TRUE((*k)->start());
  ASSERT_TRUE((*k)->signal(SIGTERM));
  EXPECT_EQ((*k)->wait()->signal, SIGTERM);
}

TEST(Service, PtyWithResize) {
  Daemon d;
  auto ex = RemoteExecutor::connect(d.socket, "shell");
  ASSERT_TRUE(ex);
  auto p = (*ex)->exec(
      {.argv = {"sh", "-c",
                "test -t 0 && echo tty; tty; echo TERM=$TERM; stty size; read x; stty size"},
       .pty = PtyRequest{30, 100}});
  ASSERT_TRUE((*p)->start());
  std::string out;
  while (out.find("30 100") == std::string::npos) {
    auto c = (*p)->read();
    ASSERT_TRUE(c && *c) << out;
    out += (*c)->data;
  }
  ASSERT_TRUE((*p)->resize(40, 120));
  ASSERT_TRUE((*p)->write_stdin("go\n"));
  for (;;) {
    auto c = (*p)->read();
    ASSERT_TRUE(c);
    if (!*c) break;
    out += (*c)->data;
  }
  EXPECT_NE(out.find("tty"), std::string::npos) << out;
  // The sandbox's own devpts, named inside as a terminal is.
  EXPECT_NE(out.find("/dev/pts/0"), std::string::npos) << out;
  EXPECT_NE(out.find("TERM=xterm"), std::string::npos) << out;
  EXPECT_NE(out.find("40 120"), std::string::npos) << out;
  EXPECT_EQ((*p)->wait()->exit_code, 0);
}

TEST(Service, CliRunWithTerminal) {
  if (sh("command -v script") != 0)
    GTEST_SKIP() << "script(1) is needed to give the CLI a terminal";
  Daemon d;
  std::string out;
  // script(1) gives the CLI a terminal; -t gives the command one of its own.
  // The caller's TERM goes with it.
  int rc = sh("printf 'echo typed\\nexit 6\\n' | TERM=vt220 script -qec \"" + kCli + " --socket " +
                  d.socket +
                  " run -t shell -- sh -c 'test -t 0 && echo tty; echo T=\\$TERM; stty size; exec "
                  "sh'\" /dev/null",
              &out);
  EXPECT_EQ(rc, 6) << out;
  EXPECT_NE(out.find("T=vt220"), std::string::npos) << out;
  EXPECT_NE(out.find("tty"), std::string::npos) << out;
  EXPECT_NE(out.find("typed"), std::string::npos) << out;
}

TEST(Service, RunOpWithTailAndGrep) {
  Daemon d;
  auto c = connect_ok(d.socket);
  auto r = c->call({{"op", "run"},
                    {"executor", "shell"},
                    {"argv", {"seq", "1", "100"}},
                    {"grep", "^[0-9]*7$"},
                    {"tail", 3}});
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ((*r)["stdout"], "77\n87\n97\n");
  EXPECT_EQ((*r)["status"]["exit_code"], 0);
  EXPECT_EQ((*r)["stdout_bytes"], 292);
  auto bad = c->call({{"op", "run"}, {"executor", "shell"}, {"argv", {"true"}}, {"grep", "("}});
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().kind, ErrorKind::Invalid);
  // max_output keeps the end of the output (issue 14, finding 2: it kept
  // the start); *_bytes still counts all of it.
  auto capped = c->call(
      {{"op", "run"}, {"executor", "shell"}, {"argv", {"seq", "1", "10000"}}, {"max_output", 10}});
  ASSERT_TRUE(capped) << capped.error().what();
  EXPECT_EQ((*capped)["stdout"], "999\n10000\n");
  EXPECT_EQ((*capped)["stdout_truncated"], true);
  EXPECT_EQ((*capped)["stdout_bytes"], 48894);
  // A run session is gone once answered.
  EXPECT_EQ((*c->call({{"op", "list"}}))["sessions"].size(), 0u);
}

// --- hostile and broken clients ----------------------------------------------

TEST(Service, BadClientsAreAnsweredOrDroppedWhileOthersAreServed) {
  Daemon d("  hello_timeout: 1s\n");
  auto good = connect_ok(d.socket);
  auto flood = good->send({{"op", "start"},
                           {"executor", "shell"},
                           {"argv", {"sh", "-c", "while :; do echo flood; done"}}});
  ASSERT_TRUE(flood);

  auto served = [&] {
    auto r = good->call({{"op", "run"}, {"executor", "shell"}, {"argv", {"echo", "ok"}}});
    return r && (*r)["stdout"] == "ok\n";
  };
  const std::string hello = control_frame(R"({"id":1,"op":"hello","versions":[1]})");

  {  // invalid JSON: an error reply, and the connection stays usable
    Fd fd = raw_connect(d.socket);
    raw_send(fd.get(), hello);
    EXPECT_NE(raw_reply(fd.get()).find("\"ok\":true"), std::string::npos);
    raw_send(fd.get(), control_frame("{not json"));
    auto r = json::parse(raw_reply(fd.get()));
    EXPECT_EQ(r["error"]["kind"], "INVALID");
    raw_send(fd.get(), control_frame(R"({"id":2,"op":"no_such_op"})"));
    r = json::parse(raw_reply(fd.get()));
    EXPECT_EQ(r["id"], 2);
    EXPECT_EQ(r["error"]["kind"], "INVALID");
    EXPECT_NE(r["error"]["message"].get<std::string>().find("unknown op"), std::string::npos);
    raw_send(fd.get(), control_frame(R"([1,2,3])"));
    EXPECT_EQ(json::parse(raw_reply(fd.get()))["error"]["kind"], "INVALID");
    raw_send(fd.get(), control_frame(R"({"id":3,"op":"ping"})"));
    EXPECT_EQ(json::parse(raw_reply(fd.get()))["ok"], true);
  }
  EXPECT_TRUE(served());
  {  // ops before hello are refused; the connection stays
    Fd fd = raw_connect(d.socket);
    raw_send(fd.get(), control_frame(R"({"id":1,"op":"list"})"));
    EXPECT_NE(raw_reply(fd.get()).find("send hello first"), std::string::npos);
    raw_send(fd.get(), control_frame(R"({"id":2,"op":"hello","versions":[99]})"));
    EXPECT_NE(raw_reply(fd.get()).find("no common protocol version"), std::string::npos);
    EXPECT_TRUE(closed_by_peer(fd.get(), 2000));
  }
  {  // an oversize frame: one error, then the connection ends
    Fd fd = raw_connect(d.socket);
    raw_send(fd.get(), hello);
    raw_reply(fd.get());
    raw_send(fd.get(), std::string("\x7f\xff\xff\xff\x01", 5) + std::string(1000, 'x'));
    auto r = json::parse(raw_reply(fd.get()));
    EXPECT_NE(r["error"]["message"].get<std::string>().find("exceeds the maximum"),
              std::string::npos);
    EXPECT_TRUE(closed_by_peer(fd.get(), 2000));
  }
  {  // an unknown frame type: the same
    Fd fd = raw_connect(d.socket);
    raw_send(fd.get(), std::string("\0\0\0\2\x09{}", 7));
    EXPECT_NE(raw_reply(fd.get()).find("unknown frame type"), std::string::npos);
    EXPECT_TRUE(closed_by_peer(fd.get(), 2000));
  }
  {  // a short data frame and data for a session that does not exist
    Fd fd = raw_connect(d.socket);
    raw_send(fd.get(), hello);
    raw_reply(fd.get());
    std::string bad;
    ASSERT_TRUE(protocol::encode(protocol::FrameType::Data, "abc", bad));
    raw_send(fd.get(), bad);
    EXPECT_NE(raw_reply(fd.get()).find("shorter than its 17-byte header"), std::string::npos);
    std::string stray;
    ASSERT_TRUE(protocol::encode_data(999, protocol::StreamId::Stdin, 0, "x", stray));
    raw_send(fd.get(), stray);
    EXPECT_NE(raw_reply(fd.get()).find("NOT_FOUND"), std::string::npos);
  }
  EXPECT_TRUE(served());
  {  // a half-sent frame, then silence; and a client that never says hello
    Fd half = raw_connect(d.socket);
    raw_send(half.get(), std::string("\0\0\1\0\x01{\"op\"", 11));
    Fd silent = raw_connect(d.socket);
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_TRUE(served());
    EXPECT_TRUE(closed_by_peer(silent.get(), 5000)) << "silent client not dropped";
    EXPECT_TRUE(closed_by_peer(half.get(), 5000)) << "half-frame client not dropped";
    EXPECT_GE(std::chrono::steady_clock::now() - t0, 900ms);
  }
  {  // a client that vanishes mid-stream of a flood
    auto c = connect_ok(d.socket);
    auto r = c->call({{"op", "attach"}, {"session", 1}});
    ASSERT_TRUE(r) << r.error().what();
    for (int i = 0; i < 10; ++i) {
      auto m = c->next(5000ms);
      ASSERT_TRUE(m) << m.error().what();
    }
  }  // closed here, with megabytes in flight
  EXPECT_TRUE(served());
  auto list = good->call({{"op", "list"}});
  ASSERT_TRUE(list);
  bool flood_runs = false;
  for (auto& s : (*list)["sessions"]) flood_runs |= s["session"] == 1 && s["state"] == "running";
  EXPECT_TRUE(flood_runs) << "the session survives its clients";
  ASSERT_TRUE(good->call({{"op", "remove"}, {"session", 1}, {"force", true}}));
  EXPECT_EQ(d.stop(), 0) << d.log();
}

TEST(Service, CallersOutsideTheGroupAreRefused) {
  // A world-writable socket, so that the check left is SO_PEERCRED's.
  Daemon d("  socket_mode: \"0666\"\n");
  ASSERT_EQ(::chmod(d.dir.path.c_str(), 0755), 0);
  EXPECT_EQ(as_user(kNobody,
                    [&] {
                      auto c = Connection::connect(d.socket);
                      if (c) return 11;
                      return c.error().kind == ErrorKind::PermissionDenied &&
                                     c.error().message.find("nor in the socket's group") !=
                                         std::string::npos
                                 ? 0
                                 : 12;
                    }),
            0);
  EXPECT_TRUE(Connection::connect(d.socket)) << "root is always allowed";
}

TEST(Service, RandomBytesNeverTakeTheServiceDown) {
  Daemon d;
  {
    // What the executor keeps once it has run (its user namespace; from
    // its second run, its warm inits): before the count.
    auto c = connect_ok(d.socket);
    ASSERT_TRUE(c);
    for (int i = 0; i < 2; ++i)
      ASSERT_TRUE(c->call({{"op", "run"}, {"executor", "shell"}, {"argv", {"true"}}}));
  }
  // The connection Daemon made to see the service up is closed by the
  // service on its own time: count once the count has settled.
  int fds0 = count_fds(d.pid);
  for (int i = 0; i < 40; ++i) {
    std::this_thread::sleep_for(25ms);
    int now = count_fds(d.pid);
    if (now == fds0) break;
    fds0 = now;
  }
  std::mt19937 rng(1234);
  for (int i = 0; i < 300; ++i) {
    Fd fd = raw_connect(d.socket);
    std::string junk;
    // Half start with a valid hello, so that the junk reaches the ops.
    if (i % 2) junk = control_frame(R"({"id":1,"op":"hello","versions":[1]})");
    size_t n = rng() % 200;
    for (size_t k = 0; k < n; ++k) junk += static_cast<char>(rng() % 256);
    if (i % 3 == 0)  // a plausible header with a random type and JSON-ish body
      junk += std::string("\0\0\0\x05", 4) + static_cast<char>(rng() % 4) + "{\"op\"";
    (void)write_nosigpipe(fd.get(), junk.data(), junk.size());
  }  // each closed at once, in whatever state
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  auto r = c->call({{"op", "run"}, {"executor", "shell"}, {"argv", {"echo", "alive"}}});
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ((*r)["stdout"], "alive\n");
  c.reset();
  // Every junk connection is closed by the service: its fds are back where they were.
  for (int i = 0; i < 200 && count_fds(d.pid) != fds0; ++i) std::this_thread::sleep_for(10ms);
  EXPECT_EQ(count_fds(d.pid), fds0);
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// --- buffers, eviction, reattach ---------------------------------------------

// `seq 1 N` as the service should have buffered it.
std::string seq_text(int n) {
  std::string s;
  for (int i = 1; i <= n; ++i) s += std::to_string(i) + "\n";
  return s;
}

TEST(Service, FloodWithoutReaderStaysBoundedAndReattachSaysWhatWasEvicted) {
  Daemon d("  buffer_size: 256k\n");
  auto c = connect_ok(d.socket);
  const uint64_t rss0 = rss_kib(d.pid);
  const int n = 3'000'000;  // about 21 MiB of output, 80 times the buffer
  auto r = c->call({{"op", "start"},
                    {"executor", "shell"},
                    {"detached", true},
                    {"argv", {"seq", "1", std::to_string(n)}}});
  ASSERT_TRUE(r) << r.error().what();
  uint64_t sid = (*r)["session"];
  auto w = c->call({{"op", "wait"}, {"session", sid}});
  ASSERT_TRUE(w) << w.error().what();
  const std::string want = seq_text(n);
  const uint64_t rss1 = rss_kib(d.pid);
  EXPECT_LT(rss1, rss0 + 8 * 1024) << "service RSS grew from " << rss0 << " to " << rss1 << " KiB";

  auto a = connect_ok(d.socket);
  auto at =
      a->call({{"op", "attach"}, {"session", sid}, {"stdout_offset", 0}, {"stderr_offset", 0}});
  ASSERT_TRUE(at);
  EXPECT_EQ((*at)["stdout"]["end"], want.size());
  const uint64_t start = (*at)["stdout"]["start"];
  EXPECT_EQ(start, want.size() - 256 * 1024);
  bool evicted_seen = false, exit_seen = false;
  uint64_t next = 0;
  while (!exit_seen) {
    auto m = a->next(5000ms);
    ASSERT_TRUE(m) << m.error().what();
    if (m->data) {
      ASSERT_TRUE(evicted_seen) << "data before the eviction notice";
      ASSERT_EQ(m->offset, next) << "out of order or duplicated";
      ASSERT_EQ(m->bytes, want.substr(m->offset, m->bytes.size()));
      next += m->bytes.size();
      continue;
    }
    auto ev = m->control.value("event", "");
    if (ev == "evicted" && m->control["stream"] == "stdout") {
      EXPECT_EQ(m->control["from"], 0);
      EXPECT_EQ(m->control["to"], start);
      evicted_seen = true;
      next = start;
    }
    if (ev == "exit") {
      exit_seen = true;
      EXPECT_EQ(m->control["status"]["exit_code"], 0);
    }
  }
  EXPECT_EQ(next, want.size());
}

TEST(Service, AttachedReaderGetsBackpressureNotLoss) {
  Daemon d("  buffer_size: 64k\n");
  auto ex = RemoteExecutor::connect(d.socket, "shell");
  auto p = (*ex)->exec({.argv = {"seq", "1", "500000"}});
  ASSERT_TRUE((*p)->start());
  std::this_thread::sleep_for(500ms);  // a slow reader: the payload must wait for it
  std::string out;
  for (;;) {
    auto c = (*p)->read();
    ASSERT_TRUE(c) << c.error().what();
    if (!*c) break;
    out += (*c)->data;
  }
  EXPECT_EQ((*p)->evicted(), 0u);
  EXPECT_EQ(out, seq_text(500000));
}

TEST(Service, ReattachResumesAtTheOffset) {
  Daemon d;
  auto c = connect_ok(d.socket);
  auto r = c->call({{"op", "start"},
                    {"executor", "shell"},
                    {"detached", true},
                    {"argv", {"sh", "-c", "seq 1 1000; sleep 0.5; seq 1001 2000"}}});
  ASSERT_TRUE(r);
  uint64_t sid = (*r)["session"];
  std::string got;
  {
    auto a = connect_ok(d.socket);
    ASSERT_TRUE(a->call({{"op", "attach"}, {"session", sid}}));
    while (got.size() < 1000) {
      auto m = a->next(5000ms);
      ASSERT_TRUE(m);
      if (m->data) {
        ASSERT_EQ(m->offset, got.size());
        got += m->bytes;
      }
    }
  }  // gone mid-stream
  auto b = connect_ok(d.socket);
  ASSERT_TRUE(b->call({{"op", "attach"}, {"session", sid}, {"stdout_offset", got.size()}}));
  for (;;) {
    auto m = b->next(5000ms);
    ASSERT_TRUE(m);
    if (m->data) {
      ASSERT_EQ(m->offset, got.size());
      got += m->bytes;
    } else if (m->control.value("event", "") == "exit") {
      break;
    } else {
      EXPECT_NE(m->control.value("event", ""), "evicted");
    }
  }
  EXPECT_EQ(got, seq_text(2000));
}

// --- limits, disconnects, shutdown, kill -9 ----------------------------------

TEST(Service, ConcurrencyLimitsAnswerLimit) {
  Daemon d("  max_sessions: 3\n  max_sessions_per_caller: 2\n");
  auto c = connect_ok(d.socket);
  auto start = [&] {
    return c->call(
        {{"op", "start"}, {"executor", "shell"}, {"detached", true}, {"argv", {"sleep", "30"}}});
  };
  auto a = start(), b = start(), x = start();
  ASSERT_TRUE(a && b);
  ASSERT_FALSE(x);
  EXPECT_EQ(x.error().kind, ErrorKind::Limit);
  EXPECT_NE(x.error().message.find("max_sessions_per_caller"), std::string::npos);
  ASSERT_TRUE(c->call({{"op", "remove"}, {"session", (*a)["session"]}, {"force", true}}));
  EXPECT_TRUE(start());
}

// The limits count sessions whose payload runs, execs among them, and an
// exited session gives its place back before it is removed.
TEST(Service, LimitsCountExecsAndFreeAtExit) {
  Daemon d("  max_sessions: 2\n  max_sessions_per_executor: 2\n");
  auto c = connect_ok(d.socket);
  auto a = c->call(
      {{"op", "start"}, {"executor", "shell"}, {"detached", true}, {"argv", {"sleep", "30"}}});
  ASSERT_TRUE(a) << a.error().what();
  auto x = c->call({{"op", "exec"},
                    {"session", (*a)["session"]},
                    {"detached", true},
                    {"argv", {"sleep", "30"}}});
  ASSERT_TRUE(x) << x.error().what();
  auto full =
      c->call({{"op", "start"}, {"executor", "shell"}, {"detached", true}, {"argv", {"true"}}});
  ASSERT_FALSE(full);
  EXPECT_EQ(full.error().kind, ErrorKind::Limit);
  EXPECT_NE(full.error().message.find("(max_sessions): 2 of 2 sessions"), std::string::npos)
      << full.error().what();
  auto more = c->call({{"op", "exec"}, {"session", (*a)["session"]}, {"argv", {"true"}}});
  ASSERT_FALSE(more);
  EXPECT_EQ(more.error().kind, ErrorKind::Limit);
  ASSERT_TRUE(c->call({{"op", "signal"}, {"session", (*x)["session"]}, {"signal", "KILL"}}));
  auto w = call_within(*c, {{"op", "wait"}, {"session", (*x)["session"]}}, 5s);
  ASSERT_TRUE(w) << w.error().what();
  auto again =
      c->call({{"op", "start"}, {"executor", "shell"}, {"detached", true}, {"argv", {"true"}}});
  EXPECT_TRUE(again) << again.error().what();
}

TEST(Service, MaxRunAfterDisconnect) {
  Daemon d("  max_run_after_disconnect: 300ms\n");
  uint64_t sid = 0;
  {
    auto c = connect_ok(d.socket);
    auto r = c->call({{"op", "start"}, {"executor", "shell"}, {"argv", {"sleep", "30"}}});
    ASSERT_TRUE(r);
    sid = (*r)["session"];
  }
  auto c = connect_ok(d.socket);
  auto w = c->call({{"op", "wait"}, {"session", sid}, {"timeout_ms", 5000}});
  ASSERT_TRUE(w) << w.error().what();
  EXPECT_EQ((*w)["status"]["signal"], SIGKILL);
  // Detached sessions are not limited by it.
  auto r = c->call(
      {{"op", "start"}, {"executor", "shell"}, {"detached", true}, {"argv", {"sleep", "30"}}});
  std::this_thread::sleep_for(600ms);
  auto l = c->call({{"op", "list"}});
  bool running = false;
  for (auto& s : (*l)["sessions"])
    running |= s["session"] == (*r)["session"] && s["state"] == "running";
  EXPECT_TRUE(running);
}

TEST(Service, SigtermEndsSessionsRemovesCgroupsAndSocket) {
  Daemon d;
  auto c = connect_ok(d.socket);
  std::vector<pid_t> pids;
  for (int i = 0; i < 3; ++i) {
    auto r = c->call(
        {{"op", "start"}, {"executor", "shell"}, {"detached", true}, {"argv", {"sleep", "100"}}});
    ASSERT_TRUE(r);
    pids.push_back((*r)["pid"]);
  }
  int st = d.stop(SIGTERM);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  for (pid_t p : pids)
    EXPECT_NE(read_text("/proc/" + std::to_string(p) + "/comm"), "cloister-init\n")
        << "session init " << p << " survived";
  EXPECT_NE(::access(d.socket.c_str(), F_OK), 0) << "socket left behind";
}

// Issue 14, finding 4: within shutdown_grace no session gets a signal, an
// attached one (its client still reading) no more than a detached one; each
// payload would say if TERM reached it.
TEST(Service, SigtermWithShutdownWaitLetsSessionsFinish) {
  Daemon d("  shutdown: wait\n  shutdown_grace: 10s\n");
  auto c = connect_ok(d.socket);
  const std::string payload = "trap 'echo got TERM; exit 3' TERM; sleep 0.5 & wait; echo finished";
  auto r = c->call({{"op", "start"},
                    {"executor", "shell"},
                    {"detached", true},
                    {"log_file", "finish.log"},
                    {"argv", {"sh", "-c", payload}}});
  ASSERT_TRUE(r) << r.error().what();
  auto att = connect_ok(d.socket);
  auto ar = att->call({{"op", "start"}, {"executor", "shell"}, {"argv", {"sh", "-c", payload}}});
  ASSERT_TRUE(ar) << ar.error().what();
  auto t0 = std::chrono::steady_clock::now();
  ::kill(d.pid, SIGTERM);
  // Still serving the connections it has, but starting nothing new.
  std::this_thread::sleep_for(100ms);
  auto refused = c->call({{"op", "start"}, {"executor", "shell"}, {"argv", {"true"}}});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().kind, ErrorKind::Limit);
  std::string out;
  std::optional<json> exit;
  while (!exit) {
    auto m = att->next(5s);
    ASSERT_TRUE(m) << m.error().what() << "\n" << d.log();
    if (m->data)
      out += m->bytes;
    else if (m->control.value("event", "") == "exit")
      exit = m->control["status"];
  }
  EXPECT_EQ(out, "finished\n");
  EXPECT_EQ((*exit)["exit_code"], 0) << *exit;
  int st = d.stop(0);  // reap only
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  EXPECT_GE(took, 400ms);
  EXPECT_LT(took, 5s) << "it should not wait for the whole grace period";
  EXPECT_EQ(read_text(d.dir.path + "/logs/0/finish.log"), "finished\n");
}

// Log files are each caller's own (log_dir/UID/NAME): the same name from
// another caller is another file, so none can append lines that read as
// someone else's session, take a name from them, or learn it exists; a
// symlink or a FIFO where the file would be is refused and left untouched.
TEST(Service, LogFilesAreEachCallersOwn) {
  Daemon d(nobody_may_run("echo **"));
  ASSERT_EQ(::chmod(d.dir.path.c_str(), 0755), 0);
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  auto run_logged = [](Connection& conn, const std::string& file, const std::string& word) {
    return conn.call(
        {{"op", "run"}, {"executor", "shell"}, {"argv", {"echo", word}}, {"log_file", file}});
  };
  ASSERT_TRUE(run_logged(*c, "mine.log", "first"));
  ASSERT_TRUE(run_logged(*c, "mine.log", "second"));  // appended
  const std::string logs = d.dir.path + "/logs/";
  EXPECT_EQ(read_text(logs + "0/mine.log"), "first\nsecond\n");
  EXPECT_EQ(as_user(kNobody,
                    [&] {
                      auto o = Connection::connect(d.socket);
                      if (!o) return 101;
                      return run_logged(**o, "mine.log", "other") ? 0 : 102;
                    }),
            0);
  EXPECT_EQ(read_text(logs + "0/mine.log"), "first\nsecond\n");
  EXPECT_EQ(read_text(logs + std::to_string(kNobody) + "/mine.log"), "other\n");
  // Planted by someone with root on the host, or a bug: never followed.
  const std::string target = d.dir.path + "/target";
  write_text(target, "untouched\n");
  ASSERT_EQ(::symlink(target.c_str(), (logs + "0/link.log").c_str()), 0);
  ASSERT_EQ(::mkfifo((logs + "0/fifo.log").c_str(), 0600), 0);
  for (const char* bad : {"link.log", "fifo.log"}) {
    auto x = run_logged(*c, bad, "forged");
    EXPECT_FALSE(x) << bad;
  }
  EXPECT_EQ(read_text(target), "untouched\n");
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// Names stand wherever an id does (protocol and CLI) until the session is
// removed; inspect shows the sandbox as it was lowered, and only to those
// who may attach.
TEST(Service, SessionNamesAndInspect) {
  Daemon d(nobody_may_run("true"));
  ASSERT_EQ(::chmod(d.dir.path.c_str(), 0755), 0);
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  auto start = [&](const json& name) {
    return c->call({{"op", "start"},
                    {"executor", "shell"},
                    {"detached", true},
                    {"name", name},
                    {"argv", {"sleep", "100.5"}}});
  };
  auto r = start("web-1");
  ASSERT_TRUE(r) << r.error().what();
  const uint64_t sid = (*r)["session"];
  auto dup = start("web-1");
  ASSERT_FALSE(dup);
  EXPECT_EQ(dup.error().kind, ErrorKind::Invalid);
  EXPECT_NE(dup.error().message.find("taken by your session " + std::to_string(sid)),
            std::string::npos)
      << dup.error().what();
  for (const char* bad : {"-x", "123", "a/b", "", "x y"}) {
    if (!*bad) continue;  // "" means no name
    auto b = start(bad);
    ASSERT_FALSE(b) << bad;
    EXPECT_EQ(b.error().kind, ErrorKind::Invalid) << bad;
    EXPECT_NE(b.error().message.find("name"), std::string::npos) << b.error().what();
  }
  auto bad_type = start(5);
  ASSERT_FALSE(bad_type);
  EXPECT_EQ(bad_type.error().kind, ErrorKind::Invalid);

  auto l = c->call({{"op", "list"}});
  ASSERT_TRUE(l);
  ASSERT_EQ((*l)["sessions"].size(), 1u) << *l << " (refused starts leave nothing)";
  EXPECT_EQ((*l)["sessions"][0]["name"], "web-1");

  auto in = c->call({{"op", "inspect"}, {"session", "web-1"}});
  ASSERT_TRUE(in) << in.error().what();
  EXPECT_EQ((*in)["session"], sid);
  EXPECT_EQ((*in)["name"], "web-1");
  EXPECT_EQ((*in)["state"], "running");
  EXPECT_EQ((*in)["executor"], "shell");
  EXPECT_EQ((*in)["owner_uid"], 0);
  EXPECT_TRUE((*in)["exit"].is_null());
  EXPECT_EQ((*in)["process"]["argv"], json({"sleep", "100.5"}));
  bool path = false;
  for (auto& e : (*in)["process"]["env"]) {  // names only: values may be secrets
    path |= e == "PATH";
    EXPECT_EQ(e.get<std::string>().find('='), std::string::npos) << e;
  }
  EXPECT_TRUE(path) << (*in)["process"];
  const json& sb = (*in)["sandbox"];
  EXPECT_EQ(sb["network"], "none") << sb;
  EXPECT_EQ(sb["root"], "host") << sb;
  EXPECT_EQ(sb["capabilities"], json::array()) << sb;
  EXPECT_EQ(sb["seccomp"], "default") << sb;
  EXPECT_EQ(sb["no_new_privileges"], true) << sb;
  ASSERT_EQ(sb["tmpfs"].size(), 1u) << sb;
  EXPECT_EQ(sb["tmpfs"][0]["target"], "/tmp");
  ASSERT_EQ(sb["volumes"].size(), 1u) << sb;
  EXPECT_EQ(sb["volumes"][0]["target"], "/probe");
  EXPECT_EQ(sb["volumes"][0]["read_only"], true);
  EXPECT_EQ(sb["volumes"][0]["source"], CLOISTER_BIN_DIR) << "root sees host paths";
  EXPECT_TRUE((*in)["stats"].contains("memory")) << *in;

  // Names are each caller's own: nobody's "web-1" is not root's, and
  // nobody's own session of that name is what the name means to nobody.
  EXPECT_EQ(
      as_user(kNobody,
              [&] {
                auto o = Connection::connect(d.socket);
                if (!o) return 101;
                auto x = (*o)->call({{"op", "inspect"}, {"session", "web-1"}});
                if (x || x.error().kind != ErrorKind::NotFound) return 102;
                auto k = (*o)->call({{"op", "signal"}, {"session", "web-1"}, {"signal", "KILL"}});
                if (k || k.error().kind != ErrorKind::NotFound) return 103;
                auto y = (*o)->call({{"op", "inspect"}, {"session", sid}});
                if (y || y.error().kind != ErrorKind::PermissionDenied) return 104;
                auto mine = (*o)->call({{"op", "start"},
                                        {"executor", "shell"},
                                        {"detached", true},
                                        {"name", "web-1"},
                                        {"argv", {"true"}}});
                if (!mine) return 105;
                auto w = (*o)->call({{"op", "wait"}, {"session", "web-1"}});
                if (!w || (*w)["session"] != (*mine)["session"]) return 106;
                return (*o)->call({{"op", "remove"}, {"session", "web-1"}}) ? 0 : 107;
              }),
      0);
  auto still = c->call({{"op", "inspect"}, {"session", "web-1"}});
  ASSERT_TRUE(still);
  EXPECT_EQ((*still)["state"], "running");
  auto unknown = c->call({{"op", "signal"}, {"session", "nope"}, {"signal", "TERM"}});
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.error().kind, ErrorKind::NotFound);

  // The CLI: inspect, kill, wait and rm by name; the name is free after rm.
  const std::string cli = kCli + " --socket " + d.socket + " ";
  std::string out;
  ASSERT_EQ(sh(cli + "inspect web-1", &out), 0) << out;
  EXPECT_EQ(json::parse(out)["session"], sid) << out;
  ASSERT_EQ(sh(cli + "ps", &out), 0);
  EXPECT_NE(out.find("web-1"), std::string::npos) << out;
  ASSERT_EQ(sh(cli + "kill -s KILL web-1"), 0);
  EXPECT_EQ(sh(cli + "wait web-1"), 137);
  ASSERT_EQ(sh(cli + "inspect web-1", &out), 0) << out;
  json after = json::parse(out);
  EXPECT_EQ(after["state"], "exited");
  EXPECT_EQ(after["exit"]["signal"], SIGKILL) << after;
  EXPECT_EQ(after["exit"]["timed_out"], false) << after;
  ASSERT_EQ(sh(cli + "rm web-1"), 0);
  EXPECT_NE(sh(cli + "inspect web-1"), 0);
  auto again = start("web-1");
  ASSERT_TRUE(again) << again.error().what();
  EXPECT_NE((*again)["session"], sid);
  ASSERT_TRUE(c->call({{"op", "remove"}, {"session", "web-1"}, {"force", true}}));
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// events: every subscriber gets the events of the sessions it may see, in
// the order they happen, and nothing of others' sessions.
// The image store's events reach the service's subscribers from another
// process's load and rmi (the CLI's), in order, to root; a caller without
// image.events gets none of them.
TEST(Service, ImageEventsFromTheStoreToThoseGrantedThem) {
  TempDir img;
  const std::string state = load_test_image(img.path, "mkdir -p l1/bin && cp /bin/busybox l1/bin/",
                                            "--ref localhost/test/ev:1 --layer l1:gzip");
  ASSERT_FALSE(state.empty());
  Daemon d(nobody_may_run("true"), "", "images:\n  state_dir: " + state + "\n");
  ASSERT_EQ(::chmod(d.dir.path.c_str(), 0755), 0);
  auto sub = connect_ok(d.socket);
  auto on = sub->call({{"op", "events"}});
  ASSERT_TRUE(on) << on.error().what();
  EXPECT_EQ((*on)["images"], true);

  int ready[2], go[2];
  ASSERT_EQ(::pipe2(ready, O_CLOEXEC), 0);
  ASSERT_EQ(::pipe2(go, O_CLOEXEC), 0);
  int nobody_rc = -1;
  std::thread nobody([&] {
    nobody_rc = as_user(kNobody, [&] {
      auto o = Connection::connect(d.socket);
      if (!o) return 101;
      auto r = (*o)->call({{"op", "events"}});
      if (!r || (*r)["images"] != false) return 102;
      char b = 'r';
      if (::write(ready[1], &b, 1) != 1 || ::read(go[0], &b, 1) != 1) return 103;
      // Its own session's events come after every image event the
      // service has sent by now (root has seen them all).
      auto run = (*o)->call({{"op", "run"}, {"executor", "shell"}, {"argv", {"true"}}});
      if (!run) return 104;
      for (int seen = 0; seen < 4;) {
        auto m = (*o)->next(5s);
        if (!m) return 105;
        if (m->data) continue;
        if (m->control.value("event", "") == "image") return 106;
        seen += m->control.value("event", "") == "session";
      }
      return 0;
    });
  });
  char b = 0;
  ASSERT_EQ(::read(ready[0], &b, 1), 1);
  std::string out;
  EXPECT_EQ(sh(kCli + " load --state-dir " + state + " --name localhost/test/ev:2 " + img.path +
                   "/layout 2>&1",
               &out),
            0)
      << out;
  EXPECT_EQ(sh(kCli + " rmi --state-dir " + state + " localhost/test/ev:1 2>&1", &out), 0) << out;
  std::vector<std::pair<std::string, std::string>> got;
  while (got.size() < 2) {
    auto m = sub->next(5s);
    ASSERT_TRUE(m) << m.error().what() << " after " << got.size() << " image events";
    if (m->data || m->control.value("event", "") != "image") continue;
    EXPECT_TRUE(m->control["digest"].get<std::string>().starts_with("sha256:")) << m->control;
    EXPECT_TRUE(m->control.contains("time")) << m->control;
    got.emplace_back(m->control["action"], m->control["image"]);
  }
  EXPECT_EQ(got, (std::vector<std::pair<std::string, std::string>>{
                     {"loaded", "localhost/test/ev:2"}, {"removed", "localhost/test/ev:1"}}));
  b = 'g';
  ASSERT_EQ(::write(go[1], &b, 1), 1);
  nobody.join();
  EXPECT_EQ(nobody_rc, 0);
  for (int fd : {ready[0], ready[1], go[0], go[1]}) ::close(fd);
}

TEST(Service, EventsInOrderForTheSessionsACallerMaySee) {
  Daemon d(nobody_may_run("true"),
           "  - name: small\n"
           "    kind: host\n"
           "    memory_limit: 32m\n"
           "    default_env: { PATH: /usr/bin:/bin }\n");
  ASSERT_EQ(::chmod(d.dir.path.c_str(), 0755), 0);
  auto sub = connect_ok(d.socket);
  ASSERT_TRUE(sub);
  auto on = sub->call({{"op", "events"}});
  ASSERT_TRUE(on) << on.error().what();
  EXPECT_EQ((*on)["events"], true);
  // The CLI's subscriber, for as long as the timeout lets it run.
  const std::string cli = kCli + " --socket " + d.socket + " ";
  const std::string cli_out = d.dir.path + "/events.jsonl";
  ASSERT_EQ(sh("(timeout 4 " + cli + "events > " + cli_out + " 2>&1 &)"), 0);
  std::this_thread::sleep_for(300ms);

  auto c = connect_ok(d.socket);
  auto a = c->call({{"op", "start"},
                    {"executor", "shell"},
                    {"name", "ev1"},
                    {"detached", true},
                    {"argv", {"sh", "-c", "exit 3"}}});
  ASSERT_TRUE(a) << a.error().what();
  const uint64_t sa = (*a)["session"];
  ASSERT_TRUE(c->call({{"op", "wait"}, {"session", sa}}));
  ASSERT_TRUE(c->call({{"op", "remove"}, {"session", sa}}));
  // tail of a stream without a newline holds all of it: the OOM killer's.
  auto b = c->call({{"op", "start"},
                    {"executor", "small"},
                    {"detached", true},
                    {"argv", {"tail", "/dev/zero"}}});
  ASSERT_TRUE(b) << b.error().what();
  const uint64_t sb = (*b)["session"];
  auto wb = c->call({{"op", "wait"}, {"session", sb}});
  ASSERT_TRUE(wb);
  EXPECT_EQ((*wb)["status"]["oom_killed"], true) << *wb;
  ASSERT_TRUE(c->call({{"op", "remove"}, {"session", sb}}));

  // nobody subscribes too, and runs something of its own.
  EXPECT_EQ(
      as_user(kNobody,
              [&] {
                auto o = Connection::connect(d.socket);
                if (!o || !(*o)->call({{"op", "events"}})) return 101;
                auto r = (*o)->call({{"op", "run"}, {"executor", "shell"}, {"argv", {"true"}}});
                if (!r) return 102;
                std::vector<std::string> seen;
                while (seen.size() < 4) {
                  auto m = (*o)->next(5s);
                  if (!m) return 103;
                  if (m->data || m->control.value("event", "") != "session") continue;
                  if (m->control["session"] != (*r)["session"]) return 104;  // root's
                  if (m->control.value("run", false) != true) return 105;
                  seen.push_back(m->control["action"]);
                }
                return seen == std::vector<std::string>{"created", "started", "exited", "removed"}
                           ? 0
                           : 106;
              }),
      0);

  std::vector<std::pair<uint64_t, std::string>> got;
  json exited_a;
  while (got.size() < 9) {
    auto m = sub->next(5s);
    ASSERT_TRUE(m) << m.error().what() << " after " << got.size() << " events";
    if (m->data || m->control.value("event", "") != "session") continue;
    const json& ev = m->control;
    EXPECT_TRUE(ev.contains("time") && ev.contains("executor")) << ev;
    got.emplace_back(ev["session"], ev["action"]);
    if (ev["session"] == sa && ev["action"] == "exited") exited_a = ev;
    if (ev["session"] == sa) {
      EXPECT_EQ(ev["name"], "ev1") << ev;
    }
  }
  using E = std::vector<std::pair<uint64_t, std::string>>;
  EXPECT_EQ(std::vector(got.begin(), got.begin() + 4),
            (E{{sa, "created"}, {sa, "started"}, {sa, "exited"}, {sa, "removed"}}));
  EXPECT_EQ(std::vector(got.begin() + 4, got.end()),
            (E{{sb, "created"}, {sb, "started"}, {sb, "oom"}, {sb, "exited"}, {sb, "removed"}}));
  EXPECT_EQ(exited_a["status"]["exit_code"], 3) << exited_a;
  // root may see nobody's session: its four events follow.
  for (int i = 0; i < 4; ++i) {
    auto m = sub->next(5s);
    ASSERT_TRUE(m);
    EXPECT_EQ(m->control.value("run", false), true) << m->control;
  }
  // Unsubscribed: nothing more.
  ASSERT_TRUE(sub->call({{"op", "events"}, {"enabled", false}}));
  ASSERT_TRUE(c->call({{"op", "run"}, {"executor", "shell"}, {"argv", {"true"}}}));
  auto none = sub->next(300ms);
  EXPECT_FALSE(none && !none->data) << (none ? none->control.dump() : "");

  std::this_thread::sleep_for(4s);  // the CLI's timeout
  std::string lines = read_text(cli_out);
  size_t n = 0;
  for (size_t pos = 0; (pos = lines.find('\n', pos)) != std::string::npos; ++pos, ++n) {
  }
  EXPECT_GE(n, 13u) << lines;
  EXPECT_EQ(json::parse(lines.substr(0, lines.find('\n')))["action"], "created") << lines;
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// attach's detach keys, typed into a real terminal (script(1)): the attach
// ends, the keys never reach the session, and it runs on; --sig-proxy=false
// makes a signal to the CLI end the attach instead of reaching the session.
TEST(Service, AttachDetachKeysAndSigProxy) {
  Daemon d;
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  auto r = c->call({{"op", "start"},
                    {"executor", "shell"},
                    {"detached", true},
                    {"pty", {{"rows", 24}, {"cols", 80}}},
                    {"argv", {"cat"}}});
  ASSERT_TRUE(r) << r.error().what();
  const std::string sid = std::to_string((*r)["session"].get<uint64_t>());
  const std::string cli = kCli + " --socket " + d.socket + " ";
  auto state = [&] {
    auto l = c->call({{"op", "list"}});
    return l && !(*l)["sessions"].empty() ? (*l)["sessions"][0].value("state", "") : "";
  };
  // The input comes after the CLI has made the terminal raw (a cooked
  // terminal would take ^Q as XON).
  auto typed = [&](const std::string& keys, const std::string& args, std::string* out) {
    return sh("(sleep 1; printf 'ab'; sleep 0.3; printf '" + keys +
                  "'; sleep 2) | timeout 10 script -qfec '" + cli + "attach " + args + sid +
                  "' /dev/null 2>&1",
              out);
  };
  std::string out;
  EXPECT_EQ(typed("\\020\\021", "", &out), 0) << out;
  EXPECT_NE(out.find("detached from session " + sid), std::string::npos) << out;
  EXPECT_EQ(state(), "running");
  EXPECT_EQ(typed("\\030q", "--detach-keys ctrl-x,q ", &out), 0) << out;
  EXPECT_NE(out.find("detached from session " + sid), std::string::npos) << out;
  EXPECT_EQ(state(), "running");
  ASSERT_TRUE(c->call({{"op", "signal"}, {"session", std::stoull(sid)}, {"signal", "HUP"}}));
  for (int i = 0; i < 300 && state() != "exited"; ++i) std::this_thread::sleep_for(10ms);
  auto logs = c->call(
      {{"op", "attach"}, {"session", std::stoull(sid)}, {"stdout_offset", 0}, {"follow", false}});
  ASSERT_TRUE(logs);
  std::string shown;
  for (;;) {
    auto m = c->next(5s);
    ASSERT_TRUE(m);
    if (m->data) shown += m->bytes;
    const std::string ev = m->data ? "" : m->control.value("event", "");
    if (ev == "end" || ev == "exit") break;
  }
  // The terminal's echo of what reached the session: the typed bytes twice,
  // and no key of either detach sequence (echoctl would show ^P, ^X).
  EXPECT_EQ(shown, "abab") << shown;
  EXPECT_EQ(sh(cli + "attach --detach-keys ctrl-1 " + sid + " 2>&1", &out), 125);
  EXPECT_NE(out.find("--detach-keys: 'ctrl-1'"), std::string::npos) << out;

  auto sl = c->call(
      {{"op", "start"}, {"executor", "shell"}, {"detached", true}, {"argv", {"sleep", "100"}}});
  ASSERT_TRUE(sl);
  const std::string s2 = std::to_string((*sl)["session"].get<uint64_t>());
  EXPECT_EQ(sh("sh -c '" + cli + "attach --sig-proxy=false " + s2 +
               " & p=$!; sleep 0.5; kill -TERM $p; wait $p'"),
            0);
  auto in = c->call({{"op", "inspect"}, {"session", std::stoull(s2)}});
  ASSERT_TRUE(in);
  EXPECT_EQ((*in)["state"], "running") << "the TERM ended the attach, not the session";
  EXPECT_NE(sh("sh -c '" + cli + "attach " + s2 + " & p=$!; sleep 0.5; kill -TERM $p; wait $p'"),
            -1);
  auto w = c->call({{"op", "wait"}, {"session", std::stoull(s2)}, {"timeout_ms", 5000}});
  ASSERT_TRUE(w) << w.error().what();
  EXPECT_EQ((*w)["status"]["signal"], SIGTERM) << "proxied by default";
  EXPECT_EQ(d.stop(), 0) << d.log();
}

TEST(Service, Kill9LeavesNoSessionProcess) {
  Daemon d;
  auto c = connect_ok(d.socket);
  std::vector<pid_t> pids;
  for (int i = 0; i < 4; ++i) {
    auto r = c->call({{"op", "start"},
                      {"executor", "shell"},
                      {"detached", i % 2 == 0},
                      {"argv", {"sh", "-c", "sleep 999.25 & sleep 999.25 & yes > /dev/null"}}});
    ASSERT_TRUE(r);
    pids.push_back((*r)["pid"]);
  }
  const std::string_view payload(
      "sleep\0"
      "999.25",
      13);
  for (int i = 0; i < 200 && count_host_processes(payload) < 8; ++i)
    std::this_thread::sleep_for(10ms);
  ASSERT_EQ(count_host_processes(payload), 8);
  d.stop(SIGKILL);
  // The inits die with the service (PR_SET_PDEATHSIG), their namespaces with
  // them. Dead inits are reaped by the host's init: allow it a moment.
  auto alive = [&] {
    int n = 0;
    for (pid_t p : pids)
      n += read_text("/proc/" + std::to_string(p) + "/comm") == "cloister-init\n";
    return n;
  };
  for (int i = 0; i < 300 && (alive() > 0 || count_host_processes(payload) > 0); ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(alive(), 0);
  EXPECT_EQ(count_host_processes(payload), 0);
  // Its cgroups are stale now; the next runtime removes them.
  auto m = cgroups::Manager::shared();
  ASSERT_TRUE(m);
  EXPECT_TRUE((*m)->cleanup_stale());
}

// A client on a non-blocking socket that writes stdin and reads output at
// the same time, as a careful client does (poll on both directions), and
// either paces its stdin by the service's acknowledgements (never more than
// stdin_window ahead of "consumed") or sends as fast as the socket takes it.
// Returns "" or what went wrong.
std::string stdin_flood(const std::string& socket, size_t total, bool paced) {
  namespace proto = cloister::protocol;
  Fd fd = raw_connect(socket);
  if (!fd) return "connect";
  std::string out;
  auto control = [&](const nlohmann::json& j) {
    (void)proto::encode(proto::FrameType::Control, j.dump(), out);
  };
  control({{"id", 1}, {"op", "hello"}, {"versions", {1}}});
  control({{"id", 2},
           {"op", "start"},
           {"executor", "shell"},
           {"stdin", true},
           {"argv", {"tee", "/dev/fd/2"}}});
  ::fcntl(fd.get(), F_SETFL, O_NONBLOCK);
  proto::Decoder dec(64u << 20);
  uint64_t session = 0, window = 0, consumed = 0, sent = 0, got[3] = {0, 0, 0};
  bool closed = false, exited = false;
  int exit_code = -1;
  const std::string chunk(64 * 1024, 'x');
  const auto deadline = std::chrono::steady_clock::now() + 60s;
  while (!exited) {
    if (std::chrono::steady_clock::now() > deadline)
      return "stalled: sent " + std::to_string(sent) + ", consumed " + std::to_string(consumed) +
             ", stdout " + std::to_string(got[1]) + ", stderr " + std::to_string(got[2]) +
             (closed ? ", close_stdin sent" : "");
    // More stdin when the session is known (and, paced, the window allows).
    while (session && !closed && out.size() < (1 << 20)) {
      if (sent == total) {
        control({{"id", 3}, {"op", "close_stdin"}, {"session", session}});
        closed = true;
        break;
      }
      const size_t n = std::min(chunk.size(), total - sent);
      if (paced && sent + n - consumed > window) break;
      (void)proto::encode_data(session, proto::StreamId::Stdin, sent, chunk.substr(0, n), out);
      sent += n;
    }
    pollfd p{fd.get(), static_cast<short>(POLLIN | (out.empty() ? 0 : POLLOUT)), 0};
    if (::poll(&p, 1, 1000) < 0) return "poll";
    if (p.revents & POLLOUT) {
      ssize_t w = ::send(fd.get(), out.data(), out.size(), MSG_NOSIGNAL);
      if (w > 0) out.erase(0, static_cast<size_t>(w));
    }
    if (p.revents & (POLLIN | POLLHUP)) {
      char buf[1 << 16];
      ssize_t r = ::recv(fd.get(), buf, sizeof buf, 0);
      if (r == 0) return "the service closed the connection";
      if (r > 0) dec.feed(std::string_view(buf, static_cast<size_t>(r)));
    }
    for (;;) {
      auto f = dec.next();
      if (!f) return "framing: " + f.error().what();
      if (!*f) break;
      if ((*f)->type == proto::FrameType::Data) {
        auto d = proto::decode_data((*f)->body);
        if (!d) return "data frame: " + d.error().what();
        const int i = static_cast<int>(d->stream);
        if (d->offset != got[i]) return "out of order on stream " + std::to_string(i);
        got[i] += d->bytes.size();
        continue;
      }
      auto j = nlohmann::json::parse((*f)->body);
      if (j.value("id", 0) == 2) {
        if (!j.value("ok", false)) return "start: " + j.dump();
        session = j["session"];
        window = j.value("stdin_window", 0);
        if (window == 0) return "no stdin_window in " + j.dump();
      } else if (j.value("id", 0) == 3 && !j.value("ok", false)) {
        return "close_stdin: " + j.dump();
      } else if (j.value("event", "") == "stdin") {
        const uint64_t c = j["consumed"];
        if (c < consumed || c > sent)
          return "consumed went from " + std::to_string(consumed) + " to " + std::to_string(c);
        consumed = c;
      } else if (j.value("event", "") == "exit") {
        exited = true;
        exit_code = j["status"].value("exit_code", -1);
      } else if (j.value("event", "") == "error") {
        return "error event: " + j.dump();
      }
    }
  }
  if (exit_code != 0) return "exit code " + std::to_string(exit_code);
  if (got[1] != total || got[2] != total)
    return "stdout " + std::to_string(got[1]) + ", stderr " + std::to_string(got[2]);
  if (consumed != total) return "consumed " + std::to_string(consumed) + " at the end";
  return "";
}

}  // namespace

// The service decides with the policy (docs/policy.md) for the peer's
// credentials: exec.get/exec.run for starts, session.* for others' sessions.
TEST(Service, CallerRulesApplyToPeers) {
  Daemon d(nobody_may_run("echo **"));
  ASSERT_EQ(::chmod(d.dir.path.c_str(), 0755), 0);
  auto root = connect_ok(d.socket);
  ASSERT_TRUE(root);
  auto started = root->call(
      {{"op", "start"}, {"executor", "shell"}, {"argv", {"sleep", "100"}}, {"detached", true}});
  ASSERT_TRUE(started) << started.error().what();
  const uint64_t root_session = (*started)["session"];

  // As nobody: each check is one bit of the exit code, so a failure says which.
  const int bad = as_user(kNobody, [&] {
    auto c = Connection::connect(d.socket);
    if (!c) return 101;
    int bad = 0;
    auto ok = (*c)->call({{"op", "run"}, {"executor", "shell"}, {"argv", {"echo", "hi"}}});
    if (!ok || (*ok)["stdout"] != "hi\n") bad |= 1;
    auto denied = (*c)->call({{"op", "run"}, {"executor", "shell"}, {"argv", {"id"}}});
    if (denied || denied.error().kind != ErrorKind::PermissionDenied) bad |= 2;
    auto sig = (*c)->call({{"op", "signal"}, {"session", root_session}, {"signal", 9}});
    if (sig || sig.error().kind != ErrorKind::PermissionDenied) bad |= 4;
    auto list = (*c)->call({{"op", "list"}});
    if (!list || !(*list)["sessions"].empty()) bad |= 8;
    auto rm = (*c)->call({{"op", "remove"}, {"session", root_session}, {"force", true}});
    if (rm || rm.error().kind != ErrorKind::PermissionDenied) bad |= 16;
    return bad;
  });
  EXPECT_EQ(bad, 0) << "failed checks (bits): " << bad << "\n" << d.log();
  // Root's session is untouched, and root sees it.
  auto list = root->call({{"op", "list"}});
  ASSERT_TRUE(list);
  ASSERT_EQ((*list)["sessions"].size(), 1u);
  EXPECT_EQ((*list)["sessions"][0]["state"], "running");
  // `signal` needs its field (issue 14: it used to send TERM), and names
  // follow the one signal rule (any case, with or without SIG).
  auto nosig = root->call({{"op", "signal"}, {"session", root_session}});
  ASSERT_FALSE(nosig);
  EXPECT_EQ(nosig.error().kind, ErrorKind::Invalid);
  EXPECT_NE(nosig.error().message.find("'signal'"), std::string::npos) << nosig.error().what();
  for (json bad : {json("SIGNOPE"), json(0), json(65), json(true)}) {
    auto r = root->call({{"op", "signal"}, {"session", root_session}, {"signal", bad}});
    ASSERT_FALSE(r) << bad;
    EXPECT_EQ(r.error().kind, ErrorKind::Invalid) << bad;
  }
  list = root->call({{"op", "list"}});
  ASSERT_TRUE(list);
  EXPECT_EQ((*list)["sessions"][0]["state"], "running") << "no signal was sent";
  ASSERT_TRUE(root->call({{"op", "signal"}, {"session", root_session}, {"signal", "cont"}}));
  ASSERT_TRUE(root->call({{"op", "remove"}, {"session", root_session}, {"force", true}}));
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// `stats` and `top` (issue 14): the session's own processes, from its
// cgroup, as they are inside (pid, uid, command) and on the host; usage that
// counts them; a command line the payload made invalid UTF-8 is sent
// replaced; others' sessions need session.attach; the CLI shows both.
// A payload that unshares a pid namespace of its own cannot hide what runs
// there from `top`: those processes are the session's, and their pid inside
// is the one in the session's namespace, not in the nested one.
TEST(Service, TopShowsProcessesInNestedPidNamespaces) {
  // The default sandbox may not make namespaces at all (the default seccomp
  // profile and no capability: unshare gets EPERM); an executor that grants
  // CAP_SYS_ADMIN without the filter can.
  Daemon d("",
           "  - name: nester\n"
           "    kind: host\n"
           "    userns: host\n"
           "    cap_add: [SYS_ADMIN]\n"
           "    seccomp_profile: unconfined\n"
           "    default_env: { PATH: /usr/bin:/bin }\n");
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  auto r = c->call({{"op", "start"},
                    {"executor", "nester"},
                    {"detached", true},
                    {"argv", {"unshare", "--pid", "--fork", "sleep", "100.75"}}});
  ASSERT_TRUE(r) << r.error().what();
  const uint64_t sid = (*r)["session"];
  json top, sleeper;
  for (int i = 0; i < 300 && sleeper.is_null(); ++i) {
    auto t = c->call({{"op", "top"}, {"session", sid}});
    ASSERT_TRUE(t) << t.error().what();
    top = (*t)["processes"];
    for (auto& p : top)
      if (p["argv"] == json({"sleep", "100.75"})) sleeper = p;
    if (sleeper.is_null()) std::this_thread::sleep_for(10ms);
  }
  ASSERT_FALSE(sleeper.is_null()) << top;
  const pid_t host_pid = sleeper["pid"];
  // Its NSpid line: host, the session's namespace, the nested one (pid 1).
  const std::string status = read_text("/proc/" + std::to_string(host_pid) + "/status");
  const size_t at = status.find("NSpid:");
  ASSERT_NE(at, std::string::npos);
  const std::string line = status.substr(at, status.find('\n', at) - at);
  std::vector<std::string> f;
  for (size_t pos = line.find_first_not_of(" \t", 6); pos != std::string::npos;) {
    size_t end = line.find_first_of(" \t", pos);
    f.push_back(line.substr(pos, end - pos));
    pos = end == std::string::npos ? end : line.find_first_not_of(" \t", end);
  }
  ASSERT_EQ(f.size(), 3u) << line;
  EXPECT_EQ(f[2], "1") << line;
  EXPECT_EQ(sleeper["ns_pid"], std::stoi(f[1])) << sleeper << " " << line;
  EXPECT_GT(sleeper["ns_pid"].get<int>(), 1) << sleeper;
  ASSERT_TRUE(c->call({{"op", "remove"}, {"session", sid}, {"force", true}}));
  EXPECT_EQ(d.stop(), 0) << d.log();
}

TEST(Service, StatsAndTopShowTheSessionsOwnProcesses) {
  Daemon d(nobody_may_run("true"));
  ASSERT_EQ(::chmod(d.dir.path.c_str(), 0755), 0);
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  auto r = c->call({{"op", "start"},
                    {"executor", "shell"},
                    {"detached", true},
                    {"argv",
                     {"sh", "-c",
                      "sleep 100.5 & perl -e '$0 = \"\\xff\\xfe odd\"; sleep 100' & "
                      "head -c 30000000 /dev/zero > /tmp/fill; sleep 100.25; wait"}}});
  ASSERT_TRUE(r) << r.error().what();
  const uint64_t sid = (*r)["session"];
  const pid_t init = (*r)["pid"];
  json top;
  std::map<std::string, json> by_cmd;
  for (int i = 0; i < 300; ++i) {  // until the three children are there
    auto t = c->call({{"op", "top"}, {"session", sid}});
    ASSERT_TRUE(t) << t.error().what();
    top = (*t)["processes"];
    by_cmd.clear();
    for (auto& p : top) {
      std::string cmd;
      for (auto& a : p["argv"]) cmd += (cmd.empty() ? "" : " ") + a.get<std::string>();
      by_cmd[cmd] = p;
    }
    bool perl = false;
    for (auto& [cmd, p] : by_cmd) perl |= cmd.ends_with(" odd");
    if (by_cmd.count("sleep 100.5") && by_cmd.count("sleep 100.25") && perl) break;
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_TRUE(by_cmd.count("sleep 100.5")) << top;
  ASSERT_TRUE(by_cmd.count("sleep 100.25")) << top;
  // The init is pid 1 inside and the session's pid on the host.
  bool saw_init = false;
  for (auto& p : top)
    if (p["pid"] == init) {
      saw_init = true;
      EXPECT_EQ(p["ns_pid"], 1) << p;
    }
  EXPECT_TRUE(saw_init) << top;
  const json& sleeper = by_cmd["sleep 100.5"];
  EXPECT_GT(sleeper["ns_pid"].get<uint64_t>(), 1u);
  EXPECT_NE(sleeper["ns_pid"], sleeper["pid"]) << "pid inside differs from the host's";
  EXPECT_EQ(sleeper["state"], "S");
  // The uid is the host's view (the first of the Uid: line).
  EXPECT_NE(read_text("/proc/" + std::to_string(sleeper["pid"].get<int>()) + "/status")
                .find("Uid:\t" + std::to_string(sleeper["uid"].get<uint64_t>()) + "\t"),
            std::string::npos)
      << sleeper;
  bool odd = false;
  for (auto& [cmd, p] : by_cmd)
    odd |= cmd.find("\xEF\xBF\xBD\xEF\xBF\xBD odd") != std::string::npos;
  EXPECT_TRUE(odd) << "the invalid bytes come as U+FFFD";

  auto st = c->call({{"op", "stats"}, {"session", sid}});
  ASSERT_TRUE(st) << st.error().what();
  EXPECT_EQ((*st)["state"], "running");
  const json& s = (*st)["stats"];
  EXPECT_GE(s["pids"].get<uint64_t>(), 4u) << s;
  EXPECT_GT(s["memory"].get<uint64_t>(), 0u) << s << " (the 30 MB file in /tmp counts)";
  EXPECT_GE(s["memory_peak"].get<uint64_t>(), s["memory"].get<uint64_t>()) << s;

  // Someone else's session: refused, and not a crash of the service.
  EXPECT_EQ(as_user(kNobody,
                    [&] {
                      auto o = Connection::connect(d.socket);
                      if (!o) return 101;
                      int bad = 0;
                      for (const char* op : {"stats", "top"}) {
                        auto x = (*o)->call({{"op", op}, {"session", sid}});
                        if (x || x.error().kind != ErrorKind::PermissionDenied) bad |= 1;
                      }
                      return bad;
                    }),
            0);

  // The CLI: a table of the processes, and one sample of the stats.
  std::string out;
  const std::string cli = kCli + " --socket " + d.socket;
  EXPECT_EQ(sh(cli + " top " + std::to_string(sid), &out), 0) << out;
  EXPECT_NE(out.find("sleep 100.5"), std::string::npos) << out;
  EXPECT_NE(out.find("PID"), std::string::npos) << out;
  EXPECT_EQ(sh(cli + " stats --no-stream " + std::to_string(sid), &out), 0) << out;
  EXPECT_NE(out.find("running"), std::string::npos) << out;
  EXPECT_EQ(sh(cli + " --json stats --no-stream " + std::to_string(sid), &out), 0) << out;
  EXPECT_EQ(json::parse(out)["stats"]["pids"].get<uint64_t>() >= 4, true) << out;

  // Once it has exited: the final usage, no processes.
  ASSERT_TRUE(c->call({{"op", "signal"}, {"session", sid}, {"signal", "KILL"}}));
  ASSERT_TRUE(c->call({{"op", "wait"}, {"session", sid}}));
  st = c->call({{"op", "stats"}, {"session", sid}});
  ASSERT_TRUE(st) << st.error().what();
  EXPECT_EQ((*st)["state"], "exited");
  auto t = c->call({{"op", "top"}, {"session", sid}});
  ASSERT_TRUE(t) << t.error().what();
  EXPECT_TRUE((*t)["processes"].empty()) << *t;
  ASSERT_TRUE(c->call({{"op", "remove"}, {"session", sid}}));
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// The attack: a payload holds its own mmap lock while it waits for a FUSE
// server that never answers (attack.cc, mmap-lock). Reading its
// /proc/PID/cmdline then waits for that lock; in cloisterd's event loop
// that would be a wait for every tenant. `top` answers anyway, without that
// command line; the service goes on serving; the session is killed and
// removed without waiting for it to die; and the reader and the sandbox are
// reaped once they are gone, leaving no child behind.
TEST(Service, TopIsNotStalledByAPayloadsCommandLine) {
  if (std::string why; !FuseStall::available(why)) GTEST_SKIP() << why;
  TempDir mnt;
  Daemon d("", "  - name: fuse\n    kind: host\n    volumes: [\"" + mnt.path +
                   ":/fuse:ro\", \"" CLOISTER_BIN_DIR ":/probe:ro\"]\n");
  // Gone before the service is stopped: the payload cannot die while the
  // server holds its page.
  FuseStall fuse(mnt.path);
  ASSERT_TRUE(fuse.ok()) << fuse.error();
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  auto r = c->call({{"op", "start"},
                    {"executor", "fuse"},
                    {"detached", true},
                    {"argv", {"/probe/cloister_attack", "mmap-lock", "/fuse/f"}}});
  ASSERT_TRUE(r) << r.error().what();
  const uint64_t sid = (*r)["session"];
  json stalled, last;
  for (int i = 0; i < 300 && stalled.is_null(); ++i) {
    auto t = call_within(*c, {{"op", "top"}, {"session", sid}}, 5s);
    ASSERT_TRUE(t) << "top: " << t.error().what();
    last = *t;
    if (t->value("argv_incomplete", false))
      stalled = *t;
    else
      std::this_thread::sleep_for(10ms);
  }
  ASSERT_FALSE(stalled.is_null()) << "the payload never held its lock: " << last;
  EXPECT_GE(fuse.reads(), 1) << "the payload waits for a READ its FUSE server never answers";
  bool listed = false;
  for (auto& p : stalled["processes"]) listed |= p["argv"] == json::array({"[cloister_attack]"});
  EXPECT_TRUE(listed) << "the payload is listed by its kernel name: " << stalled;
  // The lock is still held: the service answers, and so does another top.
  auto l = call_within(*c, {{"op", "list"}}, 5s);
  ASSERT_TRUE(l) << l.error().what();
  auto again = call_within(*c, {{"op", "top"}, {"session", sid}}, 5s);
  ASSERT_TRUE(again) << again.error().what();
  EXPECT_EQ((*again)["argv_incomplete"], true) << *again;
  auto other =
      call_within(*c, {{"op", "run"}, {"executor", "shell"}, {"argv", {"echo", "served"}}}, 10s);
  ASSERT_TRUE(other) << other.error().what();
  EXPECT_EQ((*other)["stdout"], "served\n");

  // Its processes die only once the FUSE server lets go of the page they
  // wait for. Neither the kill nor the removal waits for that.
  auto k = call_within(*c, {{"op", "signal"}, {"session", sid}, {"signal", "KILL"}}, 5s);
  auto rm = call_within(*c, {{"op", "remove"}, {"session", sid}, {"force", true}}, 5s);
  auto after = call_within(*c, {{"op", "list"}}, 5s);
  // The stuck sandbox holds up no other's teardown: a session run now is
  // reaped while the stuck init is still a child of cloisterd.
  auto later = call_within(*c, {{"op", "run"}, {"executor", "shell"}, {"argv", {"true"}}}, 10s);
  const std::string children =
      "/proc/" + std::to_string(d.pid) + "/task/" + std::to_string(d.pid) + "/children";
  const std::string stuck_only = std::to_string((*r)["pid"].get<pid_t>()) + " ";
  std::string left;
  for (int i = 0; i < 500; ++i) {
    left = read_text(children);
    if (left == stuck_only) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(left, stuck_only) << "cloisterd's children while one sandbox is stuck";
  fuse.stop();
  ASSERT_TRUE(later) << later.error().what();
  ASSERT_TRUE(k) << k.error().what();
  ASSERT_TRUE(rm) << rm.error().what();
  ASSERT_TRUE(after) << after.error().what();
  EXPECT_EQ((*after)["sessions"].size(), 0u);
  for (int i = 0; i < 500; ++i) {
    left = read_text(children);
    if (left.empty()) break;
    std::this_thread::sleep_for(10ms);
  }
  EXPECT_EQ(left, "") << "cloisterd's children once the FUSE server is gone";
}

// Issue 14, finding 7: what docs/protocol.md says of the corners a client
// writer asked about, checked one by one.
TEST(Service, ProtocolCornersAsDocumented) {
  Daemon d("",
           "  - name: sh\n"
           "    kind: host\n"
           "    shell: true\n"
           "    default_env: { PATH: /usr/bin:/bin }\n"
           "  - name: echo_only\n"
           "    kind: host\n"
           "    command_whitelist: [\"echo **\"]\n"
           "    default_env: { PATH: /usr/bin:/bin }\n");
  const std::string hello = control_frame(R"({"id":1,"op":"hello","versions":[1]})");
  {  // a second hello is refused; the connection stays usable
    Fd fd = raw_connect(d.socket);
    raw_send(fd.get(), hello);
    EXPECT_NE(raw_reply(fd.get()).find("\"ok\":true"), std::string::npos);
    raw_send(fd.get(), control_frame(R"({"id":2,"op":"hello","versions":[1]})"));
    auto r = json::parse(raw_reply(fd.get()));
    EXPECT_EQ(r["id"], 2);
    EXPECT_EQ(r["error"]["kind"], "INVALID");
    EXPECT_NE(r.dump().find("hello was sent already"), std::string::npos) << r;
    // A request without id is answered with "id": null.
    raw_send(fd.get(), control_frame(R"({"op":"ping"})"));
    r = json::parse(raw_reply(fd.get()));
    EXPECT_TRUE(r.contains("id") && r["id"].is_null()) << r;
    EXPECT_EQ(r["ok"], true);
  }
  {  // hello without versions: INVALID naming the field, then closed
    Fd fd = raw_connect(d.socket);
    raw_send(fd.get(), control_frame(R"({"id":1,"op":"hello"})"));
    auto r = json::parse(raw_reply(fd.get()));
    EXPECT_EQ(r["error"]["kind"], "INVALID");
    EXPECT_NE(r.dump().find("'versions'"), std::string::npos) << r;
    EXPECT_TRUE(closed_by_peer(fd.get(), 2000));
  }
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  {  // list shows the argv that runs, and the command string as given
    auto a = c->call(
        {{"op", "start"}, {"executor", "shell"}, {"command", "sleep '100'"}, {"detached", true}});
    ASSERT_TRUE(a) << a.error().what();
    auto b = c->call({{"op", "start"},
                      {"executor", "sh"},
                      {"command", "sleep 100 || true"},
                      {"detached", true}});
    ASSERT_TRUE(b) << b.error().what();
    auto l = c->call({{"op", "list"}});
    ASSERT_TRUE(l);
    std::map<uint64_t, json> by_id;
    for (auto& e : (*l)["sessions"]) by_id[e["session"]] = e;
    json sa = by_id[(*a)["session"].get<uint64_t>()], sb = by_id[(*b)["session"].get<uint64_t>()];
    EXPECT_EQ(sa["argv"], json({"sleep", "100"})) << sa;
    EXPECT_EQ(sa["command"], "sleep '100'");
    EXPECT_EQ(sb["argv"], json({"/bin/sh", "-c", "sleep 100 || true"})) << sb;
    EXPECT_EQ(sb["command"], "sleep 100 || true");
    for (auto* s : {&*a, &*b}) {
      ASSERT_TRUE(c->call({{"op", "remove"}, {"session", (*s)["session"]}, {"force", true}}));
    }
  }
  {  // a refused request leaves no log file behind
    auto r = c->call({{"op", "start"},
                      {"executor", "echo_only"},
                      {"argv", {"id"}},
                      {"log_file", "refused.log"}});
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, ErrorKind::PermissionDenied) << r.error().what();
    EXPECT_NE(::access((d.dir.path + "/logs/0/refused.log").c_str(), F_OK), 0);
  }
  {  // resize of an exited pty session: ok, nothing done
    auto r = c->call({{"op", "start"},
                      {"executor", "shell"},
                      {"argv", {"true"}},
                      {"pty", {{"rows", 24}, {"cols", 80}}},
                      {"detached", true}});
    ASSERT_TRUE(r) << r.error().what();
    auto w = c->call({{"op", "wait"}, {"session", (*r)["session"]}});
    ASSERT_TRUE(w) << w.error().what();
    EXPECT_TRUE(
        c->call({{"op", "resize"}, {"session", (*r)["session"]}, {"rows", 30}, {"cols", 100}}));
  }
  EXPECT_EQ(d.stop(), 0) << d.log();

  // max_clients: one error frame (id null, LIMIT) before any hello, then closed.
  Daemon one("  max_clients: 1\n");
  auto first = connect_ok(one.socket);
  ASSERT_TRUE(first);
  Fd fd = raw_connect(one.socket);
  auto r = json::parse(raw_reply(fd.get()));
  EXPECT_TRUE(r["id"].is_null()) << r;
  EXPECT_EQ(r["error"]["kind"], "LIMIT") << r;
  EXPECT_NE(r.dump().find("too many clients"), std::string::npos) << r;
  EXPECT_TRUE(closed_by_peer(fd.get(), 2000));
  EXPECT_EQ(one.stop(), 0) << one.log();
}

// Who may use the socket is decided from the peer's groups as the kernel
// reports them (SO_PEERGROUPS, issue 14), not from a passwd/group lookup:
// a uid with no passwd entry but the socket's group among its groups gets
// in, and one without it is refused at hello even where the socket file
// lets it connect.
TEST(Service, SocketGroupIsTheGroupsThePeerHas) {
  Daemon d(
      "  socket_group: nogroup\n"
      "  socket_mode: \"0666\"\n");
  ASSERT_EQ(::chmod(d.dir.path.c_str(), 0755), 0);
  auto as = [&](uid_t uid, std::vector<gid_t> groups) {
    return as_user(
        uid,
        [&] {
          auto c = Connection::connect(d.socket);
          if (c) return 0;
          return c.error().kind == ErrorKind::PermissionDenied ? 1 : 2;
        },
        groups);
  };
  ASSERT_EQ(::getpwuid(54321), nullptr) << "uid 54321 has a passwd entry here";
  EXPECT_EQ(as(54321, {65534}), 0) << "a member through its groups\n" << d.log();
  EXPECT_EQ(as(54322, {}), 1) << "not a member\n" << d.log();
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// Issue 14, finding 1: 10 MiB of stdin into tee, 10 MiB back on each stream,
// with close_stdin right behind the last stdin frame (read by the service
// with it, before the queue drained): 20 times in a row, paced by the
// acknowledgements and not, never a stall.
TEST(Service, StdinFloodBothWaysNeverStalls) {
  Daemon d;
  for (int round = 0; round < 20; ++round) {
    const bool paced = round % 2 == 1;
    EXPECT_EQ(stdin_flood(d.socket, 10u << 20, paced), "")
        << "round " << round << (paced ? " (paced)" : " (unpaced)") << "\n"
        << d.log();
  }
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// Issue 14, finding 5: with max_output on start, the stream's offsets still
// count every byte it produced: the eof of 5000 bytes with 1000 kept is at
// 5000, with 4000 discarded; the data frames hold the first 1000.
TEST(Service, EofOffsetCountsWhatMaxOutputDropped) {
  Daemon d;
  auto c = connect_ok(d.socket);
  auto r = c->call({{"op", "start"},
                    {"executor", "shell"},
                    {"max_output", 1000},
                    {"argv", {"sh", "-c", "head -c 5000 /dev/zero"}}});
  ASSERT_TRUE(r) << r.error().what();
  uint64_t data = 0;
  std::optional<nlohmann::json> eof;
  for (bool exited = false; !exited;) {
    auto m = c->next(10s);
    ASSERT_TRUE(m) << m.error().what();
    if (m->data) {
      if (m->stream == cloister::protocol::StreamId::Stdout) {
        EXPECT_EQ(m->offset, data);
        data += m->bytes.size();
      }
      continue;
    }
    const std::string ev = m->control.value("event", "");
    if (ev == "eof" && m->control["stream"] == "stdout") eof = m->control;
    exited = ev == "exit";
  }
  EXPECT_EQ(data, 1000u);
  ASSERT_TRUE(eof);
  EXPECT_EQ((*eof)["offset"], 5000) << eof->dump();
  EXPECT_EQ((*eof)["discarded"], 4000) << eof->dump();
}

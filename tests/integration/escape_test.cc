// The escape suite: every attack of the review that got out of the sandbox
// (issue "No way out"), and its variants, made by a root payload
// (cloister_attack, attack.cc) and asserted to fail with the exact errno or
// observable. As bubblewrap's tests/test-run.sh loops its checks over modes,
// each attack runs in every start mode:
//   library - cold (an executor's first sandbox: the full mount plan), the
//             mount template (its second), a warm init (its third, from the
//             pool the prestart thread filled); host and container executors;
//   cloister exec - the CLI, in-process, cold; host and container;
//   cloisterd - sessions through the service: first, second and third.
// The suite shares the integration tests' leak check: no process, mount or
// cgroup of it is left behind.
#include <gtest/gtest.h>
#include <linux/capability.h>
#include <linux/fs.h>
#include <linux/nsfs.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <future>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "isolate/cgroups.h"
#include "isolate/init_program.h"
#include "isolate/spawn.h"
#include "oci/container.h"
#include "oci/load.h"
#include "runtime/executor.h"
#include "service_support.h"
#include "test_support.h"

using namespace cloister;
using namespace cloister::testing;
using namespace std::chrono_literals;

namespace {

constexpr const char* kAttack = "/probe/cloister_attack";
constexpr const char* kLeftover = "cloister-attack-leftover";

// "name result" lines -> map.
std::map<std::string, std::string> results(const std::string& out) {
  std::map<std::string, std::string> m;
  std::istringstream in(out);
  std::string line;
  while (std::getline(in, line)) {
    auto sp = line.rfind(' ');
    if (sp != std::string::npos) m[line.substr(0, sp)] = line.substr(sp + 1);
  }
  return m;
}

// What the attacks on the init must meet (proc1 in attack.cc).
const std::map<std::string, std::string>& init_refusals() {
  static const std::map<std::string, std::string> m = {
      // Non-dumpable: /proc/1 answers to CAP_SYS_PTRACE only.
      {"mem_rw", "EACCES"},
      {"mem_ro", "EACCES"},
      {"environ", "EACCES"},
      // EACCES: the payload is not the init's uid either (user namespace).
      {"syscall", "EPERM|EACCES"},
      {"stack", "EACCES"},
      {"exe_path", "EACCES"},
      {"exe_link", "EACCES"},
      {"cwd_link", "EACCES"},
      {"root_link", "EACCES"},
      {"ns_mnt", "EACCES"},
      {"fd_write", "EACCES"},
      // The seccomp profile, and no CAP_SYS_PTRACE.
      {"ptrace_attach", "EPERM"},
      {"ptrace_seize", "EPERM"},
      {"vm_readv", "EPERM"},
      {"vm_writev", "EPERM"},
      {"pidfd_getfd", "EPERM"},
  };
  return m;
}

void expect_init_unreachable(const std::string& out, const std::string& where) {
  auto got = results(out);
  for (const auto& [name, want] : init_refusals())
    EXPECT_NE(("|" + want + "|").find("|" + got[name] + "|"), std::string::npos)
        << where << ": " << name << " gave " << got[name] << ", want " << want << "\n"
        << out;
}

// A write to a host file refused: by the read-only view (EROFS) or, first,
// by its owner's permissions, since the payload's root is not host root in
// its user namespace (EACCES); never "ok".
bool write_refused(const std::string& out, const std::string& name) {
  return (out.find(name + " EROFS") != std::string::npos ||
          out.find(name + " EACCES") != std::string::npos) &&
         out.find(name + " ok") == std::string::npos;
}

void expect_no_leftover(const std::string& where) {
  EXPECT_EQ(count_host_processes(kLeftover), 0) << where << ": a process outlived its sandbox";
}

// The names the payload sees of the host (names in attack.cc).
void expect_nothing_by_name(const std::string& out, const std::string& where) {
  std::istringstream in(out);
  std::string line;
  int cgroup_lines = 0;
  while (std::getline(in, line)) {
    if (line.starts_with("cgroup ")) {
      ++cgroup_lines;
      EXPECT_TRUE(line.ends_with(":/")) << where << ": host cgroup path shown: " << line;
    }
    if (line.starts_with("read ")) {
      // Masked (empty) or absent on this kernel: never the kernel's data.
      EXPECT_TRUE(line.ends_with(" 0") || line.ends_with(" ENOENT")) << where << ": " << line;
    }
  }
  EXPECT_GT(cgroup_lines, 0) << where << "\n" << out;
  auto got = results(out);
  EXPECT_EQ(got["uevent_raw"], "EPERM") << where;
  EXPECT_EQ(got["uevent_dgram"], "EPERM") << where;
}

enum class Start { Cold, Template, Warm };
enum class Kind { Host, Container };
struct Mode {
  Start start;
  Kind kind;
  bool per_sandbox = false;  // userns: sandbox (a range per sandbox)
};

// For gtest's messages (its default prints the struct's padding too).
void PrintTo(const Mode& m, std::ostream* os) {
  *os << "start " << static_cast<int>(m.start) << ", kind " << static_cast<int>(m.kind)
      << (m.per_sandbox ? ", userns: sandbox" : "");
}

std::string mode_name(const ::testing::TestParamInfo<Mode>& info) {
  std::string s = info.param.kind == Kind::Host ? "Host" : "Container";
  switch (info.param.start) {
    case Start::Cold:
      s += "Cold";
      break;
    case Start::Template:
      s += "Template";
      break;
    case Start::Warm:
      s += "Warm";
  }
  return info.param.per_sandbox ? s + "PerSandbox" : s;
}

class Escape : public ::testing::TestWithParam<Mode> {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    if (info->value_param() && GetParam().per_sandbox && unprivileged())
      GTEST_SKIP() << "unprivileged run: userns: sandbox needs root";
  }
  static void SetUpTestSuite() {
    dir = new TempDir;
    const std::string d = dir->path;
    // (An ordinary user cannot give a file away: its store holds its own.)
    const std::string give_away = unprivileged() ? "" : "; chown 1000:1000 l1/owned1000";
    // A busybox image whose user is root (the payload of the review was root).
    state = new std::string(load_test_image(
        d,
        "mkdir -p l1/bin l1/etc l1/proc l1/dev l1/tmp l1/probe l1/shared l1/secret;"
        "cp /bin/busybox l1/bin/; for c in sh ls cat echo id true sleep; do ln -s busybox "
        "l1/bin/$c; done;"
        "printf 'root:x:0:0::/root:/bin/sh\\n' > l1/etc/passwd;"
        "printf 'root:x:0:\\n' > l1/etc/group;"
        "echo theirs > l1/owned1000" +
            give_away,
        "--ref localhost/test/escape:1 --layer l1:gzip --env PATH=/bin --keep-owners"));
    ASSERT_FALSE(state->empty());
  }
  static void TearDownTestSuite() {
    delete dir;
    delete state;
  }
  // The executors of the CLI tests an unprivileged run has: those of uid 0.
  static std::vector<const char*> cli_executors(std::vector<const char*> all) {
    if (!unprivileged()) return all;
    std::vector<const char*> out;
    for (const char* x : all)
      if (std::string_view(x) != "nobody") out.push_back(x);
    return out;
  }

  static ExecutorConfig config(Kind kind) {
    if (kind == Kind::Host) return base_config();
    ExecutorConfig c;
    c.name = "box";
    c.kind = ExecutorKind::Container;
    c.image = "localhost/test/escape:1";
    c.state_dir = *state;
    c.volumes.push_back({CLOISTER_BIN_DIR, "/probe", true});
    return c;
  }

  // The mode's executor config (a range per sandbox or not).
  ExecutorConfig param_config() const {
    ExecutorConfig c = config(GetParam().kind);
    c.userns_sandbox = GetParam().per_sandbox;
    return c;
  }

  // An executor in the mode's state: its next sandbox starts as the mode says.
  static std::shared_ptr<Executor> executor_in(const Mode& m, const ExecutorConfig& cfg) {
    auto exec = Executor::create(cfg);
    EXPECT_TRUE(exec) << exec.error().what();
    if (!exec) return nullptr;
    const int before = m.start == Start::Cold ? 0 : m.start == Start::Template ? 1 : 2;
    for (int i = 0; i < before; ++i) {
      auto r = run_on(**exec, {kAttack, "forge", "0"});
      EXPECT_EQ(r.status.exit_code, 0) << r.err;
    }
    if (m.start == Start::Warm) {
      Spawned::drain_retired();
      EXPECT_GE(count_own_inits(), 1) << "no warm init to take";
    }
    return *exec;
  }

  RunResult run_attack(std::vector<std::string> argv, std::chrono::milliseconds timeout = {}) {
    auto exec = executor_in(GetParam(), param_config());
    if (!exec) return {};
    return run_on(*exec, std::move(argv), timeout);
  }

  static inline TempDir* dir = nullptr;
  static inline std::string* state = nullptr;
};

// /proc/1/{mem,environ,syscall,stack,exe,cwd,root,ns,fd}, ptrace, process_vm_*,
// pidfd_getfd: the init's memory, environment and fds are out of reach.
TEST_P(Escape, InitIsOutOfReach) {
  auto r = run_attack({kAttack, "proc1"});
  EXPECT_EQ(r.status.exit_code, 0) << r.err;
  expect_init_unreachable(r.out, "library");
}

// A terminal is a pty of the sandbox's own devpts (the host's ptys are not
// there to see), named as one inside, with TERM set; the pty's size is the
// one asked for.
TEST_P(Escape, TerminalIsTheSandboxsOwn) {
  auto exec = executor_in(GetParam(), param_config());
  ASSERT_TRUE(exec);
  for (int i = 0; i < 2; ++i) {
    ExecRequest req;
    req.argv = {"/bin/sh", "-c", "tty; echo TERM=$TERM; stty size; ls -1 /dev/pts"};
    req.pty = PtyRequest{30, 100};
    auto p = exec->exec(std::move(req));
    ASSERT_TRUE(p) << p.error().what();
    ASSERT_TRUE((*p)->start());
    RunResult r = collect(**p);
    auto st = (*p)->wait();
    ASSERT_TRUE(st);
    EXPECT_EQ(st->exit_code, 0) << r.out;
    EXPECT_NE(r.out.find("/dev/pts/0\r\nTERM=xterm\r\n30 100\r\n0\r\nptmx\r\n"), std::string::npos)
        << r.out;
  }
}

// The payload tries to write an exit record into every fd the init holds,
// then exits 7: the caller reports 7.
TEST_P(Escape, ExitStatusCannotBeForged) {
  auto r = run_attack({kAttack, "forge", "7"});
  EXPECT_EQ(r.out.find("forged"), std::string::npos) << r.out;
  EXPECT_EQ(r.status.exit_code, 7) << r.out << r.err;
  EXPECT_FALSE(r.status.timed_out);
}

// A payload that tries to forge its exit, leaves a child that ignores
// SIGTERM in a session of its own and never exits: the caller's timeout
// holds, and nothing of the sandbox is left when it is reported.
TEST_P(Escape, TimeoutHoldsAgainstALyingPayload) {
  auto t0 = std::chrono::steady_clock::now();
  auto r = run_attack({kAttack, "forge-and-hang"}, 1000ms);
  auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_TRUE(r.status.timed_out) << r.out;
  EXPECT_EQ(r.status.code(), 124);
  EXPECT_LT(took, 8s);
  expect_no_leftover("after the timeout");
}

// The payload exits 0 at once and leaves a child behind: the exit is
// reported, and by then the child is gone.
TEST_P(Escape, NothingOutlivesAReportedExit) {
  auto r = run_attack({kAttack, "exit-leaving-child"});
  EXPECT_EQ(r.status.exit_code, 0) << r.err;
  expect_no_leftover("after the exit");
}

// The payload's own executable is a host file (through the sandbox's view):
// reopening it for writing fails while it runs (ETXTBSY) and, through a
// handle kept across an exec of another program, after it stopped running
// (EROFS: the view is read-only, so the host's file cannot change). Without
// overlayfs (the VM) a container's mount points must exist in its image:
// hence /probe and /shared in it.
TEST_P(Escape, OwnExecutableCannotBeRewritten) {
  auto r = run_attack({kAttack, "exe"});
  auto got = results(r.out);
  EXPECT_EQ(got["self_exe_path"], "ok") << r.out;
  // Which check comes first while it runs depends on the kernel.
  EXPECT_TRUE(got["self_exe_write"] == "ETXTBSY" || write_refused(r.out, "self_exe_write"))
      << r.out;
  EXPECT_TRUE(write_refused(r.out, "reopened_exe_write")) << r.out;
  EXPECT_EQ(r.out.find("reopened_exe_write ok"), std::string::npos) << r.out;
}

// Two sandboxes share a writable volume; one passes its executable's handle
// (and tries its init's) over a unix socket there to the other, which
// reopens it for writing at once and after the sender's sandbox has gone.
TEST_P(Escape, HandlesPassedBetweenSandboxesStayReadOnly) {
  TempDir shared;
  ::chmod(shared.path.c_str(), 0777);
  auto cfg = param_config();
  cfg.volumes.push_back({shared.path, "/shared", false});
  auto receiver_exec = executor_in(GetParam(), cfg);
  auto sender_exec = executor_in(GetParam(), cfg);
  ASSERT_TRUE(receiver_exec && sender_exec);
  std::string out;
  auto recv = start_until(*receiver_exec, {kAttack, "recv-exe", "/shared/s"}, "listen", &out);
  ASSERT_TRUE(recv);
  ASSERT_NE(out.find("listen ok"), std::string::npos) << out;
  auto sent = run_on(*sender_exec, {"/probe/cloister_probe", "send-exe", "/shared/s"});
  EXPECT_NE(sent.out.find("init_exe_path EACCES"), std::string::npos) << sent.out;
  EXPECT_NE(sent.out.find("sent ok"), std::string::npos) << sent.out << sent.err;
  for (;;) {
    auto c = recv->read(Stream::Stdout);
    ASSERT_TRUE(c) << c.error().what();
    if (c->empty()) break;
    out += *c;
  }
  auto st = recv->wait();
  ASSERT_TRUE(st);
  EXPECT_NE(out.find("received 1"), std::string::npos) << out;
  // While the sender may still run: busy or read-only; afterwards read-only.
  EXPECT_EQ(out.find("passed_write ok"), std::string::npos) << out;
  EXPECT_TRUE(write_refused(out, "passed_write_later")) << out;
  EXPECT_EQ(out.find("passed_write_later ok"), std::string::npos) << out;
}

// No limits in the config: the sandbox still has a pids bound, bounded
// /tmp and /dev/shm (size and inodes), and memory and pids accounting of its
// own.
TEST_P(Escape, BoundedByDefault) {
  auto exec = executor_in(GetParam(), param_config());
  ASSERT_TRUE(exec);
  auto bomb = run_on(*exec, {kAttack, "forkbomb"});
  long forked = -1;
  char err[32] = {};
  ASSERT_EQ(std::sscanf(bomb.out.c_str(), "forked %ld %31s", &forked, err), 2) << bomb.out;
  EXPECT_LT(forked, static_cast<long>(kDefaultPidsLimit)) << bomb.out;
  EXPECT_GT(forked, 1000) << bomb.out;
  EXPECT_STREQ(err, "EAGAIN");

  for (auto [where, mib] : {std::pair{"/tmp", 256L}, std::pair{"/dev/shm", 64L}}) {
    auto r = run_on(*exec, {kAttack, "fill", where});
    long got = -1;
    ASSERT_EQ(std::sscanf(r.out.c_str(), "filled %ld %31s", &got, err), 2) << r.out << r.err;
    EXPECT_LE(got, mib) << where;
    EXPECT_GE(got, mib - 2) << where;
    EXPECT_STREQ(err, "ENOSPC") << where;
  }
  auto r = run_on(*exec, {kAttack, "inodes", "/dev/shm"});
  long inodes = -1;
  ASSERT_EQ(std::sscanf(r.out.c_str(), "inodes %ld %31s", &inodes, err), 2) << r.out;
  EXPECT_LE(inodes, 16384);
  EXPECT_STREQ(err, "ENOSPC");

  // Accounting: the init is in cgroups of its own in every hierarchy with
  // memory or pids, not in ours. (An ordinary user's sandbox has none
  // without a delegated cgroup: its bound above is RLIMIT_NPROC, counted in
  // its own user namespace.)
  if (unprivileged()) {
    std::printf("note: unprivileged run: no cgroup of the sandbox's own to check\n");
    return;
  }
  std::string out;
  auto p = start_until(*exec, {kAttack, "hold"}, "holding", &out);
  ASSERT_TRUE(p);
  const std::string theirs = read_text("/proc/" + std::to_string(p->pid()) + "/cgroup");
  const std::string ours = read_text("/proc/self/cgroup");
  std::istringstream in(theirs);
  std::string line;
  int own = 0;
  while (std::getline(in, line)) {
    bool counted = line.find(":memory:") != std::string::npos ||
                   line.find(":pids:") != std::string::npos || line.starts_with("0::");
    if (!counted) continue;
    EXPECT_EQ(ours.find(line + "\n"), std::string::npos) << "shares our cgroup: " << line;
    EXPECT_NE(line.find("/cloister/"), std::string::npos) << line;
    ++own;
  }
  EXPECT_GE(own, 1) << theirs;
  EXPECT_TRUE(p->close(true));
  expect_no_leftover("after close");
}

// Host cgroup paths, the kernel's memory maps, host uevents.
TEST_P(Escape, NothingOfTheHostByName) {
  auto r = run_attack({kAttack, "names"});
  EXPECT_EQ(r.status.exit_code, 0) << r.err;
  expect_nothing_by_name(r.out, "library");
}

// Namespaced sysctls land in the sandbox's own network and ipc namespaces,
// never in the host's, whichever way it starts: the init writes them before
// its mounts, so it must be in a network namespace of its own by then (one
// made while it sets up, joined only at its go, would come too late).
// The payload's stdio pipes are its user's: /dev/stdout, /dev/stderr and
// /proc/self/fd/N reopen them (a shell's `echo x > /dev/stderr`), and what
// they reopen is the pipe and nothing else.
TEST_P(Escape, StdioReopensThroughDevFd) {
  auto exec = executor_in(GetParam(), param_config());
  ASSERT_TRUE(exec);
  auto r = run_on(*exec, {"/bin/sh", "-c",
                          "echo out > /dev/stdout && echo err > /dev/stderr && "
                          "echo fd > /proc/self/fd/1"});
  EXPECT_EQ(r.status.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, "out\nfd\n") << r.err;
  EXPECT_EQ(r.err, "err\n");
}

TEST_P(Escape, SysctlsStayInTheSandbox) {
  const std::string ttl = read_text("/proc/sys/net/ipv4/ip_default_ttl");
  const std::string shmmni = read_text("/proc/sys/kernel/shmmni");
  ASSERT_NE(ttl, "99\n");
  ASSERT_NE(shmmni, "1234\n");
  auto cfg = param_config();
  cfg.sysctls = {{"net.ipv4.ip_default_ttl", "99"}, {"kernel.shmmni", "1234"}};
  auto exec = executor_in(GetParam(), cfg);
  ASSERT_TRUE(exec);
  for (int i = 0; i < 2; ++i) {
    auto r =
        run_on(*exec, {"/bin/cat", "/proc/sys/net/ipv4/ip_default_ttl", "/proc/sys/kernel/shmmni"});
    EXPECT_EQ(r.status.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, "99\n1234\n") << r.err;
    EXPECT_EQ(read_text("/proc/sys/net/ipv4/ip_default_ttl"), ttl) << "the host's, run " << i;
    EXPECT_EQ(read_text("/proc/sys/kernel/shmmni"), shmmni) << "the host's, run " << i;
  }
  // One that is not kept per namespace, or net.* beside the host's network,
  // never reaches a start.
  for (auto [key, network] : {std::pair{"kernel.core_pattern", NetworkMode::None},
                              std::pair{"vm.overcommit_memory", NetworkMode::None},
                              std::pair{"net.ipv4.ip_default_ttl", NetworkMode::Host},
                              std::pair{"net/../kernel/core_pattern", NetworkMode::None}}) {
    auto bad = param_config();
    bad.network_mode = network;
    bad.sysctls = {{key, "1"}};
    auto e = Executor::create(bad);
    std::string err = e ? "" : e.error().what();
    if (e) {
      auto r = run_on(**e, {"/bin/true"});
      EXPECT_NE(r.status.exit_code, 0) << key;
      err = r.err;
    }
    EXPECT_NE(err.find(std::string("sysctl ") + key), std::string::npos) << key << ": " << err;
  }
  EXPECT_EQ(read_text("/proc/sys/net/ipv4/ip_default_ttl"), ttl);
}

// The payload's root is not host root (issue 12): it is mapped to an
// unprivileged host uid; a root-only host file is out of its reach, even
// with CAP_DAC_OVERRIDE kept (the capability holds in its own user
// namespace, where the file's owner is not mapped); what it writes in a
// volume, setuid bit and all, is owned on the host by the mapped uid. The
// host's view shows host root's files as nobody's (not idmapped, see
// docs/security.md); an image's files show their own owners.
TEST_P(Escape, PayloadRootIsNotHostRoot) {
  TempDir shared, secret;
  const bool per = GetParam().per_sandbox;
  // A range per sandbox: whichever slot the start leases.
  if (per)
    ::chmod(shared.path.c_str(), 0777);
  else
    give_to_sandbox(shared.path);
  ::chmod(secret.path.c_str(), 0755);
  write_text(secret.path + "/key", "root only\n");
  ::chmod((secret.path + "/key").c_str(), 0600);
  // An ordinary user's root-only file is one of the host's.
  const std::string secret_dir = unprivileged() ? "/etc" : secret.path;
  const std::string secret_file = unprivileged() ? "/secret/shadow" : "/secret/key";
  std::string base = std::to_string(sandbox_root_uid());
  const std::string size = unprivileged() ? "1" : "65536";
  const userns::Pool pool = userns::default_pool();
  for (bool dac_override : {false, true}) {
    auto cfg = param_config();
    cfg.volumes.push_back({shared.path, "/shared", false});
    cfg.volumes.push_back({secret_dir, "/secret", true});
    if (dac_override) cfg.capabilities |= uint64_t{1} << CAP_DAC_OVERRIDE;
    auto exec = executor_in(GetParam(), cfg);
    ASSERT_TRUE(exec);
    ::unlink((shared.path + "/mine").c_str());
    auto r =
        run_on(*exec, {kAttack, "userns", secret_file, "/shared", "/usr", "/bin/sh", "/owned1000"});
    const std::string where = dac_override ? "with CAP_DAC_OVERRIDE" : "default";
    EXPECT_EQ(r.status.exit_code, 0) << where << r.err;
    auto got = results(r.out);
    if (per) {
      // A slot of the default pool: its first id owns it, the range follows.
      const std::string m = got["uid_map"];
      base = m.substr(2, m.rfind(':') - 2);
      const uint64_t b = std::strtoull(base.c_str(), nullptr, 10);
      EXPECT_TRUE(b > pool.uid_base && (b - pool.uid_base) % (pool.size + 1) == 1)
          << where << ": " << m;
    }
    EXPECT_EQ(got["uid_map"], "0:" + base + ":" + size) << where << r.out;
    EXPECT_NE(base, "0");
    EXPECT_EQ(got["secret_read"], "EACCES") << where << r.out;
    EXPECT_EQ(got["create"], "ok") << where << r.out;
    EXPECT_EQ(got["setuid_chmod"], "ok") << where << r.out;
    struct stat st {};
    ASSERT_EQ(::stat((shared.path + "/mine").c_str(), &st), 0) << where;
    EXPECT_EQ(std::to_string(st.st_uid), base) << where << ": the payload's file on the host";
    EXPECT_EQ(std::to_string(st.st_gid), per ? base : std::to_string(sandbox_root_gid())) << where;
    EXPECT_NE(st.st_uid, 0u) << where << ": a setuid-root file on the host";
    if (GetParam().kind == Kind::Host) {
      EXPECT_EQ(got["owner /usr"], "65534:65534") << where << r.out;
    } else if (unprivileged()) {
      // The user's store holds the user's files: its sandboxes' root's.
      EXPECT_EQ(got["owner /bin/sh"], "0:0") << where << r.out;
      EXPECT_EQ(got["owner /owned1000"], "0:0") << where << r.out;
    } else if (!idmap_supported(*state)) {
      // The layers are mounted as they are: root's files show as nobody's.
      std::printf("note: the image store's filesystem cannot be idmapped here; layers unmapped\n");
      EXPECT_EQ(got["owner /bin/sh"], "65534:65534") << where << r.out;
    } else {
      EXPECT_EQ(got["owner /bin/sh"], "0:0") << where << r.out;
      EXPECT_EQ(got["owner /owned1000"], "1000:1000") << where << r.out;
    }
  }
}

// `exec` into a running sandbox (ExecRequest::join): the new process is in
// the session's sandbox (its pid namespace, its mounts: the file the
// session wrote) and nothing more. As root there it reaches neither the
// sandbox's init nor its own (which is outside the pid namespace), cannot
// forge its exit status, and what it leaves behind dies with the session.
TEST_P(Escape, ExecJoinsTheSandboxAndNothingMore) {
  auto exec = executor_in(GetParam(), param_config());
  ASSERT_TRUE(exec);
  std::string seen;
  auto session =
      start_until(*exec,
                  {"/bin/sh", "-c",
                   "echo joined > /tmp/exec-mark && ls -l /proc/self/ns/pid && echo ready && "
                   "exec sleep 1000"},
                  "ready", &seen);
  ASSERT_TRUE(session);
  const size_t at = seen.find("pid:[");
  ASSERT_NE(at, std::string::npos) << seen;
  const std::string pidns = seen.substr(at, seen.find(']', at) - at + 1);
  auto in_session = [&](std::vector<std::string> argv,
                        std::chrono::milliseconds timeout = std::chrono::milliseconds(0)) {
    ExecRequest req;
    req.argv = std::move(argv);
    req.join = session.get();
    req.timeout = timeout;
    RunResult r;
    auto p = exec->exec(std::move(req));
    EXPECT_TRUE(p) << p.error().what();
    if (!p) return r;
    auto s = (*p)->start();
    EXPECT_TRUE(s) << s.error().what();
    if (!s) return r;
    EXPECT_TRUE((*p)->joined());
    r = collect(**p);
    auto st = (*p)->wait();
    EXPECT_TRUE(st) << st.error().what();
    if (st) r.status = *st;
    return r;
  };
  // A join the library refuses: the error exec() or start() gives.
  auto refused = [&]() -> Error {
    ExecRequest req;
    req.argv = {"/bin/true"};
    req.join = session.get();
    auto p = exec->exec(std::move(req));
    if (!p) return p.error();
    auto st = (*p)->start();
    EXPECT_FALSE(st) << "an exec started";
    return st ? internal("started") : st.error();
  };
  if (unprivileged()) {
    // An ordinary user's sandbox is entered only through its own user
    // namespace, which the join does not do: refused, saying so.
    const Error e = refused();
    EXPECT_NE(e.what().find("unprivileged"), std::string::npos) << e.what();
    return;
  }
  auto same = in_session({"/bin/sh", "-c", "cat /tmp/exec-mark && ls -l /proc/self/ns/pid"});
  EXPECT_EQ(same.status.exit_code, 0) << same.err;
  EXPECT_NE(same.out.find("joined\n"), std::string::npos) << same.out;
  EXPECT_NE(same.out.find(pidns), std::string::npos)
      << "not the session's pid namespace (" << pidns << "): " << same.out;
  auto reach = in_session({kAttack, "proc1"});
  EXPECT_EQ(reach.status.exit_code, 0) << reach.err;
  expect_init_unreachable(reach.out, "exec");
  auto forged = in_session({kAttack, "forge", "7"});
  EXPECT_EQ(forged.out.find("forged"), std::string::npos) << forged.out;
  EXPECT_EQ(forged.status.exit_code, 7) << forged.out << forged.err;
  // An exec's terminal is a pty of the sandbox's devpts, opened by its init
  // in the sandbox; where the sandbox has put something else at /dev/ptmx,
  // that is refused, not handed to the caller as the exec's terminal.
  {
    ExecRequest req;
    req.argv = {"/bin/sh", "-c", "tty"};
    req.join = session.get();
    req.pty = PtyRequest{};
    auto p = exec->exec(std::move(req));
    ASSERT_TRUE(p) << p.error().what();
    ASSERT_TRUE((*p)->start());
    RunResult r = collect(**p);
    EXPECT_TRUE(r.out.starts_with("/dev/pts/")) << r.out;
    EXPECT_EQ((*p)->wait()->exit_code, 0);
  }
  auto swapped = in_session({"/bin/sh", "-c",
                             "rm -f /dev/ptmx && mkfifo /dev/ptmx 2>/dev/null || touch /dev/ptmx; "
                             "ls -l /dev/ptmx"});
  if (swapped.out.starts_with("c")) {
    ADD_FAILURE() << "/dev/ptmx was not replaced: " << swapped.out << swapped.err;
  } else {
    ExecRequest req;
    req.argv = {"/bin/true"};
    req.join = session.get();
    req.pty = PtyRequest{};
    auto p = exec->exec(std::move(req));
    ASSERT_TRUE(p) << p.error().what();
    auto s = (*p)->start();
    ASSERT_FALSE(s) << "a terminal from " << swapped.out;
    EXPECT_NE(s.error().what().find("console"), std::string::npos) << s.error().what();
  }
  // An exec that hangs, with a child in a session of its own that ignores
  // SIGTERM: its timeout ends its whole tree, and nothing of the session's.
  auto hung = in_session({kAttack, "forge-and-hang"}, 500ms);
  EXPECT_TRUE(hung.status.timed_out) << hung.out << hung.err;
  // The exec's teardown (its cgroup killed, emptied, removed) runs on the
  // library's reaper once the Process is dropped: wait for it, then look.
  EXPECT_TRUE(Spawned::drain_retired_for(std::chrono::seconds(10)));
  expect_no_leftover("after an exec's timeout");
  // Its init reaped its payload: no zombie of the sandbox went to the host's
  // init (whose reaping the sandbox's teardown would have to wait for).
  EXPECT_EQ(shell("for p in /proc/[0-9]*; do grep -qx 'cloister_attack' $p/comm 2>/dev/null && "
                  "grep -q '^PPid:.1$' $p/status 2>/dev/null && echo $p; done; true"),
            "")
      << "a payload's zombie handed to the host's init";
  EXPECT_TRUE(session->running()) << "an exec's timeout ended the session";
  // A running exec's processes are its payload's tree only.
  {
    ExecRequest req;
    req.argv = {"/bin/sh", "-c", "sleep 1000 & echo up; wait"};
    req.join = session.get();
    std::string up;
    auto p = start_until(*exec, std::move(req), "up", &up);
    ASSERT_TRUE(p);
    auto now = p->now();
    ASSERT_TRUE(now) << now.error().what();
    EXPECT_EQ(now->pids.size(), 2u) << "sh and sleep";
    for (pid_t pid : now->pids) {
      EXPECT_NE(pid, session->pid()) << "the session's init listed";
      EXPECT_NE(pid, p->pid()) << "the exec's init listed";
    }
    ASSERT_TRUE(p->close(true));
    EXPECT_TRUE(session->running()) << "an exec's kill ended the session";
  }
  // An exec that leaves a child: the child stays in the sandbox (as podman
  // exec leaves it), and goes with the session.
  auto left = in_session({kAttack, "exit-leaving-child"});
  EXPECT_EQ(left.status.exit_code, 0) << left.err;
  EXPECT_TRUE(session->running()) << "an exec's end ended the session";
  for (int i = 0; i < 500 && count_host_processes(kLeftover) == 0; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(count_host_processes(kLeftover), 1) << "what an exec left did not stay";
  // The session ends with an exec running: the exec's init, outside the
  // session's cgroup, lives on to reap its payload, which the end killed.
  // Killed with the session, it would hand its payload's zombie to the
  // nearest subreaper (this test, for now; else the host's init), and the
  // session's pid namespace could not end until that reaped it.
  {
    ExecRequest req;
    req.argv = {"/bin/sh", "-c", "echo up; exec sleep 1000"};
    req.join = session.get();
    std::string up;
    auto p = start_until(*exec, std::move(req), "up", &up);
    ASSERT_TRUE(p);
    ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
    ASSERT_TRUE(session->kill_nowait());
    auto end = session->wait_for(5s);
    EXPECT_TRUE(end) << "the session's end waits for a zombie handed to its subreaper";
    for (pid_t z : zombies_of(::getpid(), "sleep")) {
      ADD_FAILURE() << "a zombie handed to the subreaper: " << z;
      ::waitpid(z, nullptr, 0);
    }
    ::prctl(PR_SET_CHILD_SUBREAPER, 0);
    auto st = p->wait_for(5s);
    ASSERT_TRUE(st) << st.error().what();
    EXPECT_EQ(st->signal, SIGKILL) << "the exec outlived its session";
  }
  ASSERT_TRUE(session->close(true));
  Spawned::drain_retired();
  expect_no_leftover("after the session the exec ran in");
  // An ended session is no sandbox to join.
  const Error late = refused();
  EXPECT_EQ(late.kind, ErrorKind::Invalid) << late.what();
}

INSTANTIATE_TEST_SUITE_P(
    Modes, Escape,
    ::testing::Values(Mode{Start::Cold, Kind::Host}, Mode{Start::Template, Kind::Host},
                      Mode{Start::Warm, Kind::Host}, Mode{Start::Cold, Kind::Container},
                      Mode{Start::Template, Kind::Container}, Mode{Start::Warm, Kind::Container},
                      // A range per sandbox has no mount template.
                      Mode{Start::Cold, Kind::Host, true}, Mode{Start::Warm, Kind::Host, true},
                      Mode{Start::Cold, Kind::Container, true},
                      Mode{Start::Warm, Kind::Container, true}),
    mode_name);

// One executor sees a shared volume whole; another mounts a tmpfs and a
// nested volume on directories inside it. The first replaces those mount
// points with symlinks to where the second's /usr and /etc are staged: the
// second's sandboxes then fail to start, naming the mount, instead of
// covering their own /usr with a tmpfs or /etc with the nested volume's
// tree (its second start builds the template, its third runs the full plan
// again); a fresh executor is refused at once.
TEST(EscapeSwap, MountPointsInsideVolumesAreNotRedirected) {
  TempDir d;
  const std::string w = d.path + "/w", c = d.path + "/c";
  shell("mkdir -p " + w + "/scratch " + w + "/cache " + c + " && echo nested > " + c + "/which");
  give_to_sandbox(d.path);
  auto planter_cfg = base_config();
  planter_cfg.volumes.push_back({w, "/ws", false});
  auto victim_cfg = base_config();
  victim_cfg.volumes.push_back({w, "/ws", false});
  victim_cfg.volumes.push_back({c, "/ws/cache", false});
  victim_cfg.tmpfs.push_back({"/ws/scratch", "size=1m"});
  auto planter = Executor::create(planter_cfg);
  auto victim = Executor::create(victim_cfg);
  ASSERT_TRUE(planter && victim);
  auto ok = run_on(**victim, {"/bin/sh", "-c", "cat /ws/cache/which; ls /usr/bin/env"});
  EXPECT_EQ(ok.out, "nested\n/usr/bin/env\n") << ok.err;
  auto planted = run_on(**planter, {"/bin/sh", "-c",
                                    "rmdir /ws/scratch /ws/cache && ln -s /tmp/usr /ws/scratch && "
                                    "ln -s /tmp/etc /ws/cache && echo planted"});
  ASSERT_EQ(planted.out, "planted\n") << planted.err;
  // A fresh executor refuses them at once.
  auto refused = Executor::create(victim_cfg);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().what().find("is a symlink or lies below one"), std::string::npos)
      << refused.error().what();
  for (Executor* e : {victim->get(), victim->get()}) {
    ExecRequest req;
    req.argv = {"/bin/sh", "-c", "ls /usr/bin/env; cat /etc/hostname"};
    auto p = e->exec(std::move(req));
    ASSERT_TRUE(p);
    auto s = (*p)->start();
    ASSERT_FALSE(s) << "started with its mount points redirected";
    EXPECT_NE(s.error().what().find("Too many levels of symbolic links"), std::string::npos)
        << s.error().what();
  }
  // Put back, the executors work again.
  shell("rm " + w + "/scratch " + w + "/cache && mkdir " + w + "/scratch " + w + "/cache");
  auto fresh = Executor::create(victim_cfg);
  ASSERT_TRUE(fresh) << fresh.error().what();
  auto again = run_on(**fresh, {"/bin/cat", "/ws/cache/which"});
  EXPECT_EQ(again.out, "nested\n") << again.err;
}

// A mask, or a read-only volume, below a writable volume: a payload renames
// a directory above it (the mount, or what the mask hides, moves along) and
// puts its own files where the next sandbox looks. A mask there is refused;
// mounts there are made afresh at every start, never kept in a template.
TEST(EscapeSwap, RenamesInsideAWritableVolumeMoveNothingForTheNextSandbox) {
  TempDir d;
  const std::string w = d.path + "/w", tools = d.path + "/tools";
  shell("mkdir -p " + w + "/a/tools " + w + "/config " + tools + " && echo real > " + tools +
        "/x && echo SECRET > " + w + "/config/.env");
  give_to_sandbox(d.path);
  auto masked = base_config();
  masked.volumes.push_back({w, "/w", false});
  masked.masked_paths.push_back("/w/config/.env");
  auto refused = Executor::create(masked);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().what().find("lies inside the writable volume"), std::string::npos)
      << refused.error().what();

  auto cfg = base_config();
  cfg.volumes.push_back({w, "/w", false});
  cfg.volumes.push_back({tools, "/w/a/tools", true});
  auto exec = Executor::create(cfg);
  ASSERT_TRUE(exec) << exec.error().what();
  auto moved = run_on(**exec, {"/bin/sh", "-c",
                               "mv /w/a /w/a2 && mkdir -p /w/a/tools && echo EVIL > /w/a/tools/x "
                               "&& echo moved"});
  ASSERT_EQ(moved.out, "moved\n") << moved.err;
  // Its second sandbox (where a template would be made), its third (warm).
  for (int i = 0; i < 3; ++i) {
    if (i == 2) Spawned::drain_retired();
    auto r = run_on(**exec, {"/bin/cat", "/w/a/tools/x"});
    EXPECT_EQ(r.out, "real\n") << "sandbox " << i + 2 << ": " << r.err;
  }
}

// A tmpfs inside a writable volume, with a mount point below it: while
// sandboxes start, another swaps the tmpfs's mount point in the volume's
// host directory with a symlink to a directory outside (RENAME_EXCHANGE in a
// loop). What the init creates below the tmpfs must never land outside.
TEST(EscapeSwap, DirectoriesMadeBelowAVolumeStayInside) {
  TempDir d;
  // Outside /tmp, which the init's own tmpfs covers before pivot_root.
  char tmpl[] = "/var/tmp/cloister-test-outside-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string outside = tmpl;
  struct Remove {
    std::string path;
    ~Remove() { std::system(("rm -rf '" + path + "'").c_str()); }
  } remove_outside{outside};
  const std::string w = d.path + "/w", inner = d.path + "/inner";
  shell("mkdir -p " + w + "/t " + inner + " && ln -s " + outside + " " + w + "/swap");
  auto cfg = base_config();
  cfg.volumes.push_back({w, "/w", false});
  cfg.tmpfs.push_back({"/w/t", "size=1m"});
  // Many mount points below the tmpfs: each is a directory the init makes
  // there, and the swap may come between any two.
  for (int k = 0; k < 32; ++k) cfg.volumes.push_back({inner, "/w/t/x" + std::to_string(k), true});
  std::vector<std::shared_ptr<Executor>> fresh;
  for (int i = 0; i < 30; ++i) {
    auto e = Executor::create(cfg);
    ASSERT_TRUE(e) << e.error().what();
    fresh.push_back(*e);
  }
  std::atomic<bool> stop{false};
  std::thread swapper([&] {
    const std::string a = w + "/t", b = w + "/swap";
    while (!stop)
      ::syscall(SYS_renameat2, AT_FDCWD, a.c_str(), AT_FDCWD, b.c_str(), RENAME_EXCHANGE);
  });
  auto start = [](Executor& e) -> Status {
    ExecRequest req;
    req.argv = {"/bin/true"};
    auto p = e.exec(std::move(req));
    if (!p) return std::unexpected(p.error());
    if (auto s = (*p)->start(); !s) return s;
    (void)(*p)->wait();
    return {};
  };
  for (size_t i = 0; i + 1 < fresh.size(); ++i) (void)start(*fresh[i]);
  stop = true;
  swapper.join();
  EXPECT_EQ(shell("ls -A " + outside), "") << "the init made entries outside the volume";
  // With 2 cores the swapper may turn every start above into a refusal
  // (ELOOP); once it stops, with the directory back in place, the same
  // config must start, or the refusals above prove nothing.
  struct stat st {};
  ASSERT_EQ(::lstat((w + "/t").c_str(), &st), 0);
  if (S_ISLNK(st.st_mode)) {
    ASSERT_EQ(::syscall(SYS_renameat2, AT_FDCWD, (w + "/t").c_str(), AT_FDCWD,
                        (w + "/swap").c_str(), RENAME_EXCHANGE),
              0);
  }
  auto last = start(*fresh.back());
  EXPECT_TRUE(last) << last.error().what();
  EXPECT_EQ(shell("ls -A " + outside), "");
}

// --- the user namespace's opt-outs -----------------------------------------------

// userns: host gives the payload host root again (for what needs it): the
// read-only view is then what keeps the host's files (EROFS). A volume with
// the idmap option shows the host's owners and writes with the payload's
// ids inside: its root's file lands as host root's, as documented.
TEST(EscapeUserNs, OptOutAndIdmappedVolumes) {
  auto host_cfg = base_config();
  host_cfg.userns_host = true;
  auto host = Executor::create(host_cfg);
  ASSERT_TRUE(host) << host.error().what();
  auto r = run_on(**host, {"/bin/cat", "/proc/self/uid_map"});
  EXPECT_NE(r.out.find("0          0 4294967295"), std::string::npos) << r.out;
  r = run_on(**host, {kAttack, "exe"});
  EXPECT_NE(r.out.find("reopened_exe_write EROFS"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find("reopened_exe_write ok"), std::string::npos) << r.out;

  TempDir vol;  // root's, 0700: out of reach without idmap
  auto plain = base_config();
  plain.volumes.push_back({vol.path, "/v", false});
  auto refused = Executor::create(plain);
  ASSERT_TRUE(refused);
  r = run_on(**refused, {"/bin/sh", "-c", "echo x > /v/f"});
  EXPECT_NE(r.status.exit_code, 0);
  EXPECT_NE(::access((vol.path + "/f").c_str(), F_OK), 0);
  auto mapped = base_config();
  mapped.volumes.push_back({vol.path, "/v", false});
  mapped.volumes.back().idmap = true;
  if (!idmap_supported(vol.path)) {
    // Asked for and impossible here (tmpfs before 6.3): a clear refusal.
    auto e = Executor::create(mapped);
    ASSERT_TRUE(e);
    ExecRequest req;
    req.argv = {"/bin/true"};
    auto p = (*e)->exec(std::move(req));
    ASSERT_TRUE(p);
    auto s = (*p)->start();
    ASSERT_FALSE(s);
    EXPECT_NE(s.error().what().find("cannot be idmapped on this kernel"), std::string::npos)
        << s.error().what();
    return;
  }
  auto opted = Executor::create(mapped);
  ASSERT_TRUE(opted) << opted.error().what();
  r = run_on(**opted, {"/bin/sh", "-c", "stat -c %u:%g /v; echo x > /v/f && echo wrote"});
  EXPECT_EQ(r.out, "0:0\nwrote\n") << r.err;
  struct stat st {};
  ASSERT_EQ(::stat((vol.path + "/f").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u);
}

// Executors making their user namespaces at once, from several threads:
// each namespace's maker is a child that must hold no copy of another
// thread's pipe (it would keep that pipe open, and both makers would wait
// for ever).
TEST(EscapeUserNs, ConcurrentFirstStartsDoNotHang) {
  std::vector<std::shared_ptr<Executor>> execs;
  for (int i = 0; i < 8; ++i) {
    auto e = Executor::create(base_config());
    ASSERT_TRUE(e) << e.error().what();
    execs.push_back(*e);
  }
  std::vector<std::future<int>> runs;
  for (auto& e : execs)
    runs.push_back(std::async(std::launch::async, [e] {
      return run_on(*e, {"/bin/sh", "-c", "exit 3"}).status.exit_code;
    }));
  for (auto& r : runs) {
    ASSERT_EQ(r.wait_for(30s), std::future_status::ready) << "a first start hangs";
    EXPECT_EQ(r.get(), 3);
  }
}

// The maker of a user namespace shares the caller's memory and changes its
// ids, which marks that memory not dumpable: the caller must get its flag
// back, and no maker may be left.
TEST(EscapeUserNs, MakingANamespaceLeavesTheCallerAsItWas) {
  SKIP_IF_UNPRIVILEGED("an ordinary user's namespaces come with the clone");
  auto m = userns::default_map();
  ASSERT_TRUE(m) << m.error().what();
  ASSERT_EQ(::prctl(PR_SET_DUMPABLE, 1, 0, 0, 0), 0);
  const std::string pid = std::to_string(::getpid());
  const std::string count = "ls /proc/" + pid + "/task | wc -l; pgrep -P " + pid + " | wc -l";
  const std::string before = shell(count);
  for (int i = 0; i < 3; ++i) {
    auto ns = userns::make(*m);
    ASSERT_TRUE(ns) << ns.error().what();
    EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1);
    struct stat st {};
    ASSERT_EQ(::fstat(ns->get(), &st), 0);
  }
  EXPECT_EQ(shell(count), before);

  // Makers at once from two threads: the flag ends as it began.
  std::vector<std::thread> makers;
  for (int t = 0; t < 2; ++t)
    makers.emplace_back([&] {
      for (int i = 0; i < 25; ++i) EXPECT_TRUE(userns::make(*m));
    });
  for (auto& t : makers) t.join();
  EXPECT_EQ(::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0), 1) << "makers at once left us not dumpable";

  // A host process of the owner uid stops whatever it may signal, all the
  // while (the maker, whose namespace it owns, among it): each namespace is
  // still made, and no maker is left.
  const uid_t owner = userns::owner_of(*m);
  pid_t stopper = ::fork();
  if (stopper == 0) {
    if (::setresgid(owner, owner, owner) != 0 || ::setresuid(owner, owner, owner) != 0) _exit(1);
    for (;;) ::kill(-1, SIGSTOP);
  }
  ASSERT_GT(stopper, 0);
  for (int i = 0; i < 20; ++i) {
    auto ns = userns::make(*m);
    EXPECT_TRUE(ns) << ns.error().what();
  }
  ::kill(stopper, SIGKILL);
  ::waitpid(stopper, nullptr, 0);
  EXPECT_EQ(shell(count), before);
}

// An executor config with a pool of span ids, ranges of size.
ExecutorConfig pool_config(uint32_t base, uint32_t span, uint32_t size) {
  auto c = base_config();
  c.userns_sandbox = true;
  c.userns_range = userns::Map{base, base, span};
  c.userns_size = size;
  return c;
}

// Why a start of /bin/true through exec is refused (a test failure if it
// is not).
std::string start_refusal(const Executor& exec) {
  ExecRequest q;
  q.argv = {"/bin/true"};
  auto p = exec.exec(std::move(q));
  EXPECT_TRUE(p) << p.error().what();
  if (!p) return "";
  auto st = (*p)->start();
  EXPECT_FALSE(st) << "started";
  return st ? "" : st.error().what();
}

// userns: sandbox. Two sandboxes of one executor, each root inside, at once:
// each has a range of its own, so a root-only file one leaves in a shared
// volume is another uid's to the other, which can neither read it nor
// change its mode, with the library, warm inits and the CLI alike. The
// ranges go back when the sandboxes end; a pool with no free range refuses
// a start, naming it, and leaves nothing behind.
TEST(EscapeUserNs, ARangePerSandboxKeepsSandboxesApart) {
  SKIP_IF_UNPRIVILEGED("userns: sandbox needs root");
  TempDir shared;
  ::chmod(shared.path.c_str(), 0777);
  auto cfg = base_config();
  cfg.userns_sandbox = true;
  cfg.volumes.push_back({shared.path, "/shared", false});
  auto exec = Executor::create(cfg);
  ASSERT_TRUE(exec) << exec.error().what();
  const std::string try_it =
      "cat /proc/self/uid_map; cat /shared/secret || echo read-refused; "
      "chmod 0644 /shared/secret || echo chmod-refused";
  for (int round = 0; round < 3; ++round) {  // cold, then warm inits
    ::unlink((shared.path + "/secret").c_str());
    std::string out;
    auto holder = start_until(
        **exec,
        {"/bin/sh", "-c",
         "umask 077; echo root-only > /shared/secret; cat /proc/self/uid_map; echo ready; "
         "sleep 30"},
        "ready", &out);
    ASSERT_TRUE(holder);
    auto other = run_on(**exec, {"/bin/sh", "-c", try_it});
    const std::string where = "round " + std::to_string(round);
    EXPECT_NE(other.out.find("read-refused"), std::string::npos) << where << other.out;
    EXPECT_NE(other.out.find("chmod-refused"), std::string::npos) << where << other.out;
    EXPECT_EQ(other.out.find("root-only"), std::string::npos) << where << other.out;
    const std::string mine = out.substr(0, out.find('\n'));
    EXPECT_NE(other.out.substr(0, other.out.find('\n')), mine) << where;
    // The CLI, with the same executor, is kept out as well.
    const std::string conf = shared.path + "/../per-" + std::to_string(::getpid()) + ".yaml";
    write_text(conf,
               "executors:\n  - name: per\n    kind: host\n    userns: sandbox\n"
               "    default_env: { PATH: /usr/bin:/bin }\n    volumes: [\"" +
                   shared.path + ":/shared\"]\n");
    EXPECT_NE(shell(CLOISTER_BIN_DIR "/cloister exec -c " + conf + " -x per -- /bin/sh -c '" +
                    try_it + "' 2>/dev/null")
                  .find("read-refused"),
              std::string::npos)
        << where;
    ::unlink(conf.c_str());
    struct stat st {};
    ASSERT_EQ(::stat((shared.path + "/secret").c_str(), &st), 0);
    EXPECT_NE(st.st_uid, 0u);
    EXPECT_NE(mine.find(" " + std::to_string(st.st_uid) + " "), std::string::npos)
        << where << ": the holder's file is its own root's: " << mine << " " << st.st_uid;
    ASSERT_TRUE(holder->signal(SIGKILL));
    (void)holder->wait();
    if (round == 0) Spawned::drain_retired();
  }

  // Two ranges only (9 ids each, and an owner id each): a third sandbox at
  // once is refused, with nothing left behind; once one ends, it starts.
  auto small = Executor::create(pool_config(300000, 20, 9));
  ASSERT_TRUE(small) << small.error().what();
  std::string o1, o2;
  auto a = start_until(**small, {"/bin/sh", "-c", "echo up; sleep 30"}, "up", &o1);
  auto b = start_until(**small, {"/bin/sh", "-c", "echo up; sleep 30"}, "up", &o2);
  ASSERT_TRUE(a && b);
  Spawned::drain_retired();
  const int inits = count_own_inits();
  const std::string full = start_refusal(**small);
  EXPECT_NE(full.find("all 2 ranges of 9 ids from host id 300000 are in use"), std::string::npos)
      << full;
  Spawned::drain_retired();
  EXPECT_EQ(count_own_inits(), inits) << "a refused start left an init";
  ASSERT_TRUE(a->signal(SIGKILL));
  (void)a->wait();
  a.reset();
  auto r = run_on(**small, {"/bin/cat", "/proc/self/uid_map"});
  EXPECT_EQ(r.status.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("300001"), std::string::npos) << r.out;
  ASSERT_TRUE(b->signal(SIGKILL));
  (void)b->wait();
  b.reset();

  // An executor with a range of its own (userns: auto) over a range leased
  // now is refused; the refusal is not kept once the lease is gone.
  auto holder_exec = Executor::create(pool_config(400000, 10, 9));
  ASSERT_TRUE(holder_exec) << holder_exec.error().what();
  std::string o3;
  auto holder = start_until(**holder_exec, {"/bin/sh", "-c", "echo up; sleep 30"}, "up", &o3);
  ASSERT_TRUE(holder);
  auto overlapping = base_config();
  overlapping.userns_range = userns::Map{400000, 400000, 10};
  auto over = Executor::create(overlapping);
  ASSERT_TRUE(over) << over.error().what();
  const std::string overlap = start_refusal(**over);
  EXPECT_NE(overlap.find("overlap a range leased to a sandbox of a pool"), std::string::npos)
      << overlap;
  ASSERT_TRUE(holder->signal(SIGKILL));
  (void)holder->wait();
  holder.reset();
  holder_exec->reset();
  Spawned::drain_retired();  // a lease goes once its init is reaped
  auto later = run_on(**over, {"/bin/true"});
  EXPECT_EQ(later.status.exit_code, 0) << later.err;
  over->reset();
  Spawned::drain_retired();
}

// --- executables_dir -------------------------------------------------------------

// A program run from executables_dir is exec'd by the fd the policy checked,
// which comes from the host's side: reopening it for writing once it stops
// running must fail (EROFS: it is opened beneath a read-only view of the
// directory), or a root payload rewrites the host's file. Cold, template and
// warm starts.
TEST(EscapePolicy, ExecutablesDirFilesCannotBeRewritten) {
  TempDir bin;
  shell("cp " CLOISTER_BIN_DIR "/cloister_attack " + bin.path + "/attack");
  const std::string before = shell("sha256sum " + bin.path + "/attack");
  auto cfg = base_config();
  cfg.policy.executables_dir = bin.path;
  auto exec = Executor::create(cfg);
  ASSERT_TRUE(exec) << exec.error().what();
  for (int start = 0; start < 3; ++start) {
    if (start == 2) Spawned::drain_retired();
    auto r = run_on(**exec, {"attack", "exe"});
    EXPECT_TRUE(write_refused(r.out, "reopened_exe_write"))
        << "start " << start << ": " << r.out << r.err;
    EXPECT_EQ(r.out.find("reopened_exe_write ok"), std::string::npos) << r.out;
  }
  EXPECT_EQ(shell("sha256sum " + bin.path + "/attack"), before);
}

// --- the init program ---------------------------------------------------------

// Whatever reaches the init program's memfd cannot change it: writes,
// truncation, growth and new seals are all refused.
TEST(EscapeInitProgram, TheSealedMemfdCannotBeChanged) {
  auto fd = init_program::fd();
  ASSERT_TRUE(fd) << fd.error().what();
  const int seals = ::fcntl(*fd, F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
            F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  const std::string path = "/proc/self/fd/" + std::to_string(*fd);
  Fd w(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (w) {
    EXPECT_EQ(::write(w.get(), "x", 1), -1);
    EXPECT_EQ(errno, EPERM);
    EXPECT_EQ(::ftruncate(w.get(), 0), -1);
    EXPECT_EQ(errno, EPERM);
  } else {
    // Refused: sealed, or being run by an init (ETXTBSY).
    EXPECT_TRUE(errno == EPERM || errno == ETXTBSY) << std::strerror(errno);
  }
  EXPECT_EQ(::fcntl(*fd, F_ADD_SEALS, 0), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::ftruncate(*fd, 1), -1);
  // Its bytes are the program compiled into the library.
  struct stat st {};
  ASSERT_EQ(::fstat(*fd, &st), 0);
  EXPECT_EQ(static_cast<size_t>(st.st_size), init_program::image().size());
}

// The init a sandbox runs is the sealed memfd, with no environment: no
// caller's variable (here, a secret of ours) and no host file behind it.
TEST(EscapeInitProgram, TheInitIsNoCopyOfItsCaller) {
  ::setenv("CLOISTER_TEST_SECRET", "hunter2", 1);
  auto exec = Executor::create(base_config());
  ASSERT_TRUE(exec);
  std::string out;
  auto p = start_until(**exec, {kAttack, "hold"}, "holding", &out);
  ASSERT_TRUE(p);
  const std::string proc = "/proc/" + std::to_string(p->pid());
  char exe[256] = {};
  ASSERT_GT(::readlink((proc + "/exe").c_str(), exe, sizeof exe - 1), 0);
  EXPECT_TRUE(std::string_view(exe).starts_with("/memfd:cloister-init")) << exe;
  EXPECT_EQ(read_text(proc + "/environ"), "");
  EXPECT_EQ(read_text(proc + "/comm"), "cloister-init\n");
  // Not dumpable: even its own uid (its user namespace's root, mapped to
  // an unprivileged host uid) needs CAP_SYS_PTRACE.
  const std::string u = std::to_string(sandbox_root_uid());
  EXPECT_NE(
      read_text(proc + "/status").find("\nUid:\t" + u + "\t" + u + "\t" + u + "\t" + u + "\n"),
      std::string::npos);
  // Its user namespace is owned by the id below the range: not host root
  // (whose per-user counters every payload would be charged to), nor an
  // id a payload can become.
  Fd ns(::open((proc + "/ns/user").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(ns);
  uid_t owner = 0;
  ASSERT_EQ(::ioctl(ns.get(), NS_GET_OWNER_UID, &owner), 0);
  // (An ordinary user's sandbox: its own namespace, the user's.)
  EXPECT_EQ(owner, unprivileged() ? ::geteuid() : sandbox_root_uid() - 1);
  // Its memory holds nothing of ours: no mapping of our binary, and our
  // secret is nowhere in its memory (a fork of us would hold our whole
  // environment and heap).
  std::string maps = read_text(proc + "/maps");
  EXPECT_EQ(maps.find("cloister_integration"), std::string::npos) << maps;
  Fd mem(::open((proc + "/mem").c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(mem);
  std::istringstream lines(maps);
  std::string line;
  size_t scanned = 0;
  while (std::getline(lines, line)) {
    unsigned long lo = 0, hi = 0;
    char perms[8] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %7s", &lo, &hi, perms) != 3 || perms[0] != 'r') continue;
    if (line.find("[vvar]") != std::string::npos) continue;
    std::string buf(hi - lo, '\0');
    ssize_t n = ::pread(mem.get(), buf.data(), buf.size(), static_cast<off_t>(lo));
    if (n <= 0) continue;
    buf.resize(static_cast<size_t>(n));
    scanned += buf.size();
    EXPECT_EQ(buf.find("hunter2"), std::string::npos) << "the caller's secret is in " << line;
  }
  EXPECT_GT(scanned, 0u);
  EXPECT_TRUE(p->close(true));
  ::unsetenv("CLOISTER_TEST_SECRET");
}

// --- the volume source swap race -----------------------------------------------

// A volume source that is a symlink, or lies below one, is refused when the
// executor is made: a payload (root, writing into a rw volume) or a host
// user may have planted it to choose what the next executor mounts. Then
// the checked directory is swapped, in a loop, for a symlink to another one
// while sandboxes start: through fresh executors (each sandbox a cold start,
// mounting from the full plan) and through one (the template, warm inits).
// Every sandbox either gets the directory that was checked or fails with an
// error naming the source; none gets the swapped-in tree, which stays as it
// was.
TEST(EscapeSwap, VolumeSourceSwapsNeverMountTheSwappedInTree) {
  TempDir d;
  const std::string vol = d.path + "/vol", other = d.path + "/other", named = d.path + "/named",
                    planted = d.path + "/planted";
  shell("mkdir -p " + vol + " " + other + " " + planted + " && echo checked > " + vol +
        "/which && echo swapped > " + other + "/which && ln -s " + vol + " " + named);
  auto with_volume = [](const std::string& src) {
    auto c = base_config();
    c.volumes.push_back({src, "/data", false});
    return c;
  };
  // The config names a symlink, or a directory below one; a directory
  // replaced by a symlink before the executor is made.
  shell("rmdir " + planted + " && ln -s " + other + " " + planted);
  for (const std::string& src : {named, named + "/sub", planted}) {
    if (src == named + "/sub") shell("mkdir -p " + vol + "/sub");
    auto e = Executor::create(with_volume(src));
    ASSERT_FALSE(e) << src;
    EXPECT_EQ(e.error().kind, ErrorKind::Invalid);
    EXPECT_NE(e.error().what().find("is a symlink or lies below one"), std::string::npos)
        << e.error().what();
  }
  auto cfg = with_volume(vol);
  std::vector<std::shared_ptr<Executor>> fresh;
  for (int i = 0; i < 30; ++i) {
    auto e = Executor::create(cfg);
    ASSERT_TRUE(e) << e.error().what();
    fresh.push_back(*e);
  }
  auto kept = Executor::create(cfg);
  ASSERT_TRUE(kept) << kept.error().what();
  std::atomic<bool> stop{false};
  std::thread swapper([&] {
    const std::string spare = d.path + "/spare";
    while (!stop) {
      // The checked directory becomes a symlink to the other one, and back.
      ::rename(vol.c_str(), spare.c_str());
      ::symlink(other.c_str(), vol.c_str());
      std::this_thread::sleep_for(50us);
      ::unlink(vol.c_str());
      ::rename(spare.c_str(), vol.c_str());
      std::this_thread::sleep_for(50us);
    }
  });
  int ok = 0, refused = 0;
  for (int i = 0; i < 60; ++i) {
    Executor& exec = i < 30 ? *fresh[i] : **kept;
    ExecRequest req;
    req.argv = {"/bin/cat", "/data/which"};
    auto p = exec.exec(std::move(req));
    ASSERT_TRUE(p) << p.error().what();
    auto s = (*p)->start();
    if (!s) {
      ++refused;
      EXPECT_NE(s.error().what().find(vol), std::string::npos) << s.error().what();
      continue;
    }
    RunResult r = collect(**p);
    (void)(*p)->wait();
    ++ok;
    EXPECT_EQ(r.out, "checked\n") << "sandbox " << i << ": " << r.err;
  }
  stop = true;
  swapper.join();
  EXPECT_GT(ok, 0);
  EXPECT_EQ(read_text(other + "/which"), "swapped\n");
}

// --- cloister exec ------------------------------------------------------------

std::string cli_config(const TempDir& d, const std::string& state) {
  const std::string path = d.path + "/cli.yaml";
  write_text(path,
             "executors:\n"
             "  - name: shell\n"
             "    kind: host\n"
             "    default_env: { PATH: /usr/bin:/bin }\n"
             "    volumes: [\"" CLOISTER_BIN_DIR
             ":/probe:ro\"]\n"
             "    sysctl: { net.ipv4.ip_default_ttl: \"99\" }\n"
             "  - name: box\n"
             "    kind: container\n"
             "    image: localhost/test/escape:1\n"
             "    sysctl: { net.ipv4.ip_default_ttl: \"99\" }\n"
             "    volumes: [\"" CLOISTER_BIN_DIR
             ":/probe:ro\"]\n"
             "  - name: nobody\n"
             "    kind: host\n"
             "    user: \"65534:65534\"\n"
             "    default_env: { PATH: /usr/bin:/bin }\n"
             "    volumes: [\"" CLOISTER_BIN_DIR
             ":/probe:ro\"]\n"
             "images:\n"
             "  state_dir: " +
                 state + "\n");
  return path;
}

class EscapeCli : public Escape {};

TEST_F(EscapeCli, EveryAttackFailsThroughCloisterExec) {
  TempDir d;
  const std::string cfg = cli_config(d, *state);
  for (const char* x : cli_executors({"shell", "box"})) {
    const std::string run =
        std::string("CLOISTER_AUDIT=off " CLOISTER_BIN_DIR "/cloister exec -c ") + cfg + " -x " +
        x + " -- " + kAttack + " ";
    std::string out;
    EXPECT_EQ(sh(run + "proc1", &out), 0) << out;
    expect_init_unreachable(out, std::string("cloister exec -x ") + x);
    EXPECT_EQ(sh(run + "forge 7", &out), 7) << out;
    EXPECT_EQ(out.find("forged"), std::string::npos) << out;
    auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(
        sh(std::string("CLOISTER_AUDIT=off " CLOISTER_BIN_DIR "/cloister exec --timeout 1 -c ") +
               cfg + " -x " + x + " -- " + kAttack + " forge-and-hang",
           &out),
        124)
        << out;
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 8s);
    expect_no_leftover("cloister exec --timeout");
    EXPECT_EQ(sh(run + "exit-leaving-child", &out), 0) << out;
    expect_no_leftover("cloister exec exit");
    EXPECT_EQ(sh(run + "exe", &out), 0) << out;
    EXPECT_TRUE(write_refused(out, "reopened_exe_write")) << out;
    EXPECT_EQ(out.find("reopened_exe_write ok"), std::string::npos) << out;
    EXPECT_EQ(sh(run + "names", &out), 0) << out;
    expect_nothing_by_name(out, std::string("cloister exec -x ") + x);
    // The executor's sysctl lands in the sandbox's network namespace only.
    const std::string ttl = read_text("/proc/sys/net/ipv4/ip_default_ttl");
    EXPECT_EQ(sh(std::string("CLOISTER_AUDIT=off " CLOISTER_BIN_DIR "/cloister exec -c ") + cfg +
                     " -x " + x + " -- /bin/cat /proc/sys/net/ipv4/ip_default_ttl",
                 &out),
              0)
        << out;
    EXPECT_EQ(out, "99\n") << x;
    EXPECT_EQ(read_text("/proc/sys/net/ipv4/ip_default_ttl"), ttl) << x << ": the host's";
  }
}

// The caller is SIGKILLed (an OOM kill, a cancelled job) while its payload
// holds a handle of its own executable and has a child in a session of its
// own: the sandbox dies with its caller, and the next runtime removes the
// cgroup the dead one left. A non-root executor too: the init's uid change
// clears its death signal, which it must set again.
TEST_F(EscapeCli, TheSandboxDiesWithItsCaller) {
  TempDir d;
  const std::string cfg = cli_config(d, *state);
  for (const char* x : cli_executors({"shell", "box", "nobody"})) {
    int out_pipe[2];
    ASSERT_EQ(::pipe2(out_pipe, O_CLOEXEC), 0);
    pid_t cli = ::fork();
    if (cli == 0) {
      ::dup2(out_pipe[1], 1);
      ::dup2(out_pipe[1], 2);
      ::setenv("CLOISTER_AUDIT", "off", 1);
      ::execl(CLOISTER_BIN_DIR "/cloister", "cloister", "exec", "-c", cfg.c_str(), "-x", x, "--",
              kAttack, "hold", nullptr);
      ::_exit(127);
    }
    ::close(out_pipe[1]);
    // Whatever fails below, the caller is killed (and so, the test checks,
    // its sandbox).
    struct KillCli {
      pid_t pid;
      ~KillCli() {
        if (pid > 0) {
          ::kill(pid, SIGKILL);
          ::waitpid(pid, nullptr, 0);
        }
      }
    } killer{cli};
    Fd out(out_pipe[0]);
    std::string text;
    char buf[256];
    while (text.find("holding") == std::string::npos) {
      ssize_t n = ::read(out.get(), buf, sizeof buf);
      ASSERT_GT(n, 0) << "-x " << x << ": " << text;
      text.append(buf, static_cast<size_t>(n));
    }
    // The child execs itself under its marker name: wait until it has.
    for (int i = 0; i < 500 && count_host_processes(kLeftover) == 0; ++i)
      std::this_thread::sleep_for(10ms);
    ASSERT_EQ(count_host_processes(kLeftover), 1);
    ::kill(cli, SIGKILL);
    ::waitpid(cli, nullptr, 0);
    killer.pid = -1;
    for (int i = 0; i < 300 && count_host_processes(kLeftover) > 0; ++i)
      std::this_thread::sleep_for(10ms);
    expect_no_leftover(std::string("caller SIGKILLed, -x ") + x);
    // What the dead caller left: its empty cgroups, removed by the next
    // runtime's cleanup (cloisterd runs it at start).
    auto m = cgroups::Manager::shared();
    ASSERT_TRUE(m);
    EXPECT_TRUE((*m)->cleanup_stale());
    for (const auto& base : (*m)->base_paths())
      for (const auto& e : std::filesystem::directory_iterator(base))
        EXPECT_FALSE(e.path().filename().string().starts_with(std::to_string(cli) + "-"))
            << e.path();
  }
}

// --- cloisterd ------------------------------------------------------------------

class EscapeService : public Escape {};

// The same attacks through cloisterd, in the first (cold), second
// (template) and third (warm) sessions of a host and a container executor.
TEST_F(EscapeService, EveryAttackFailsThroughTheService) {
  Daemon d("",
           "  - name: box\n"
           "    kind: container\n"
           "    image: localhost/test/escape:1\n"
           "    sysctl: { net.ipv4.ip_default_ttl: \"99\" }\n"
           "    volumes: [\"" CLOISTER_BIN_DIR ":/probe:ro\"]\n" +
               std::string(unprivileged() ? ""
                                          : "  - name: per\n"
                                            "    kind: host\n"
                                            "    userns: sandbox\n"
                                            "    sysctl: { net.ipv4.ip_default_ttl: \"99\" }\n"
                                            "    volumes: [\"" CLOISTER_BIN_DIR ":/probe:ro\"]\n"),
           "images:\n  state_dir: " + *state + "\n");
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  std::string executor;
  auto run = [&](std::vector<std::string> argv, int timeout_ms = 0) {
    nlohmann::json req = {{"op", "run"}, {"executor", executor}, {"argv", argv}};
    if (timeout_ms) req["timeout_ms"] = timeout_ms;
    auto r = c->call(req);
    EXPECT_TRUE(r) << r.error().what();
    return r ? *r : nlohmann::json{};
  };
  // A range per sandbox too (root's service only).
  const int sessions = unprivileged() ? 6 : 9;
  for (int session = 0; session < sessions; ++session) {
    executor = session < 3 ? "shell" : session < 6 ? "box" : "per";
    const std::string where = executor + " session " + std::to_string(session % 3 + 1);
    auto r = run({kAttack, "proc1"});
    expect_init_unreachable(r.value("stdout", ""), where);
    r = run({kAttack, "forge", "7"});
    EXPECT_EQ(r["status"]["exit_code"], 7) << where << r.dump();
    auto t0 = std::chrono::steady_clock::now();
    r = run({kAttack, "forge-and-hang"}, 1000);
    EXPECT_EQ(r["status"]["timed_out"], true) << where << r.dump();
    EXPECT_EQ(r["status"]["code"], 124) << where;
    EXPECT_LT(std::chrono::steady_clock::now() - t0, 8s);
    expect_no_leftover(where + " after the timeout");
    r = run({kAttack, "exit-leaving-child"});
    EXPECT_EQ(r["status"]["exit_code"], 0) << where;
    expect_no_leftover(where + " after the exit");
    r = run({kAttack, "exe"});
    EXPECT_TRUE(write_refused(r.value("stdout", ""), "reopened_exe_write")) << where << r.dump();
    r = run({kAttack, "names"});
    expect_nothing_by_name(r.value("stdout", ""), where);
    if (executor != "shell") {
      // The executor's sysctl lands in the session's network namespace only.
      const std::string ttl = read_text("/proc/sys/net/ipv4/ip_default_ttl");
      r = run({"/bin/cat", "/proc/sys/net/ipv4/ip_default_ttl"});
      EXPECT_EQ(r.value("stdout", ""), "99\n") << where << r.dump();
      EXPECT_EQ(read_text("/proc/sys/net/ipv4/ip_default_ttl"), ttl) << where << ": the host's";
    }
  }
  c.reset();
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// A client hands its own fds to a session as stdio ("stdio": "passed"): a
// directory (a way into the host's tree through /proc/self/fd/0/...) or a
// root-owned file opened for reading (reopened for writing by a root
// payload) is refused; pipes are taken. The CLI relays what it may not pass.
TEST_F(EscapeService, OnlyPipesSocketsAndTerminalsArePassedAsStdio) {
  Daemon d;
  auto c = connect_ok(d.socket);
  ASSERT_TRUE(c);
  Fd root(::open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  TempDir t;
  write_text(t.path + "/rootfile", "root's\n");
  Fd file(::open((t.path + "/rootfile").c_str(), O_RDONLY | O_CLOEXEC));
  Fd devnull(::open("/dev/null", O_RDWR | O_CLOEXEC));
  auto p = make_pipe();
  ASSERT_TRUE(p);
  nlohmann::json req = {{"op", "start"},
                        {"executor", "shell"},
                        {"argv", {"/bin/true"}},
                        {"stdio", "passed"},
                        {"stdin", false}};
  {
    int fds[3] = {root.get(), p->write.get(), p->write.get()};
    auto r = c->call(req, fds);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().kind, ErrorKind::Invalid);
    EXPECT_NE(r.error().message.find("stdin is a directory"), std::string::npos)
        << r.error().what();
  }
  {
    int fds[3] = {devnull.get(), file.get(), p->write.get()};
    auto r = c->call(req, fds);
    ASSERT_FALSE(r);
    EXPECT_NE(r.error().message.find("stdout is a regular file"), std::string::npos)
        << r.error().what();
  }
  // A socket file or a named FIFO, by an O_PATH fd (which needs no right on
  // the file) or opened: the payload would connect to it or open it with
  // its own rights (a root-only socket of the host's, cloisterd's own).
  const std::string sock_path = t.path + "/root.sock", fifo_path = t.path + "/root.fifo";
  Fd listener(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, sock_path.c_str(), sizeof addr.sun_path - 1);
  ASSERT_EQ(::bind(listener.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  ASSERT_EQ(::mkfifo(fifo_path.c_str(), 0600), 0);
  Fd sock_opath(::open(sock_path.c_str(), O_PATH | O_CLOEXEC));
  Fd fifo_opath(::open(fifo_path.c_str(), O_PATH | O_CLOEXEC));
  Fd fifo(::open(fifo_path.c_str(), O_RDWR | O_CLOEXEC));
  ASSERT_TRUE(sock_opath && fifo_opath && fifo);
  for (auto [fd, says] : {std::pair{sock_opath.get(), "stdin is an O_PATH fd"},
                          std::pair{fifo_opath.get(), "stdin is an O_PATH fd"},
                          std::pair{fifo.get(), "stdin is a named FIFO"}}) {
    int fds[3] = {fd, p->write.get(), p->write.get()};
    auto r = c->call(req, fds);
    ASSERT_FALSE(r) << says;
    EXPECT_NE(r.error().message.find(says), std::string::npos) << r.error().what();
  }
  {
    int fds[3] = {devnull.get(), p->write.get(), p->write.get()};
    auto r = c->call(req, fds);
    ASSERT_TRUE(r) << r.error().what();
    // Its output is the client's own fds: no attach (issue 14, finding 6:
    // it used to succeed with empty ranges).
    auto a = c->call({{"op", "attach"}, {"session", (*r)["session"]}});
    ASSERT_FALSE(a);
    EXPECT_EQ(a.error().kind, ErrorKind::Invalid);
    EXPECT_NE(a.error().message.find("has passed stdio"), std::string::npos) << a.error().what();
  }
  EXPECT_EQ(read_text(t.path + "/rootfile"), "root's\n");
  // The CLI relays a directory or a file: the payload gets a pipe.
  std::string out;
  const std::string cli = std::string(CLOISTER_BIN_DIR "/cloister --socket ") + d.socket;
  EXPECT_EQ(sh(cli + " run -i shell -- /bin/sh -c 'cat /proc/self/fd/0/etc/hostname; "
                     "readlink /proc/self/fd/0' < / 2>&1",
               &out),
            0)
      << out;
  EXPECT_NE(out.find("pipe:"), std::string::npos) << out;
  EXPECT_EQ(sh(cli + " run shell -- echo relayed > " + t.path + "/out", &out), 0) << out;
  EXPECT_EQ(read_text(t.path + "/out"), "relayed\n");
  // With its stdout closed, the CLI's connection to the service must not
  // take fd 1 and be handed to the payload (which would drive the service
  // as the CLI's caller).
  EXPECT_EQ(
      sh(cli + " run shell -- /bin/sh -c 'x=$(readlink /proc/$$/fd/1); echo $x >&2' 2>&1 >&- | cat",
         &out),
      0)
      << out;
  // The host's /dev/null (the path it has from inside depends on where the
  // host's root is: /host/dev/null in the test VM), never a socket.
  EXPECT_EQ(out.find("socket:"), std::string::npos) << out;
  EXPECT_TRUE(out.ends_with("/dev/null\n")) << out;
  c.reset();
  EXPECT_EQ(d.stop(), 0) << d.log();
}

// cloisterd SIGKILLed with a session running: the session's sandbox dies
// with it, and the next cloisterd removes what the dead one left.
TEST_F(EscapeService, SessionsDieWithTheService) {
  auto d = std::make_unique<Daemon>();
  {
    auto c = connect_ok(d->socket);
    ASSERT_TRUE(c);
    auto r = c->call({{"op", "start"}, {"executor", "shell"}, {"argv", {kAttack, "hold"}}});
    ASSERT_TRUE(r) << r.error().what();
    for (int i = 0; i < 300 && count_host_processes(kLeftover) == 0; ++i)
      std::this_thread::sleep_for(10ms);
    ASSERT_EQ(count_host_processes(kLeftover), 1);
  }
  const pid_t dead = d->pid;
  d->stop(SIGKILL);
  for (int i = 0; i < 300 && count_host_processes(kLeftover) > 0; ++i)
    std::this_thread::sleep_for(10ms);
  expect_no_leftover("cloisterd SIGKILLed");
  auto m = cgroups::Manager::shared();
  ASSERT_TRUE(m);
  // The next cloisterd's start-up removes the dead one's cgroups.
  Daemon next;
  auto c = connect_ok(next.socket);
  ASSERT_TRUE(c);
  for (const auto& base : (*m)->base_paths())
    for (const auto& e : std::filesystem::directory_iterator(base))
      EXPECT_FALSE(e.path().filename().string().starts_with(std::to_string(dead) + "-"))
          << e.path();
  c.reset();
  EXPECT_EQ(next.stop(), 0) << next.log();
}

}  // namespace

// --- cloister-oci ---------------------------------------------------------------
// The OCI runtime's containers (runtime/oci_runtime.h): every start is cold
// (a runtime process makes one container), and `run` goes through the same
// create and start that containerd and conmon call one by one. The bundle
// is busybox with the attack binary bound at /probe, root as in the review.

class EscapeOci : public ::testing::Test {
 protected:
  void SetUp() override {
    if (unprivileged()) GTEST_SKIP() << "cloister-oci needs root (as runc does)";
    const std::string r = dir.path + "/rootfs";
    ASSERT_EQ(
        sh("mkdir -p " + r + "/bin " + r + "/proc " + r + "/dev " + r + "/tmp " + r + "/probe " +
           r + "/shared " + r + "/secret && cp /bin/busybox " + r +
           "/bin/ && for c in sh cat echo id sleep grep; do ln -s busybox " + r + "/bin/$c; done"),
        0);
    write_text(secret.path + "/key", "root only\n");
    ::chmod((secret.path + "/key").c_str(), 0600);
    ::chmod(shared.path.c_str(), 0777);
  }
  // config.json for args, as `cloister-oci spec` writes it, with /probe, a
  // writable /shared and a read-only /secret bound.
  void bundle(const std::vector<std::string>& args, const std::string& extra = "") {
    ASSERT_EQ(
        sh("cd " + dir.path + " && rm -f config.json && " CLOISTER_BIN_DIR "/cloister-oci spec"),
        0);
    std::string a = "[";
    for (const auto& x : args) a += (a.size() > 1 ? ",\"" : "\"") + x + "\"";
    a += "]";
    const std::string py =
        "import json,sys; p='" + dir.path +
        "/config.json'; c=json.load(open(p)); c['process']['terminal']=False; "
        "c['process']['args']=" +
        a +
        "; c['mounts'] += [{'destination':'/probe','type':'bind','source':'" CLOISTER_BIN_DIR
        "','options':['rbind','ro']},{'destination':'/shared','type':'bind','source':'" +
        shared.path +
        "','options':['rbind','rw']},{'destination':'/secret','type':'bind',"
        "'source':'" +
        secret.path + "','options':['rbind','ro']}]; " + (extra.empty() ? "" : extra + "; ") +
        "json.dump(c,open(p,'w'))";
    write_text(dir.path + "/edit.py", py + "\n");
    ASSERT_EQ(sh("python3 " + dir.path + "/edit.py"), 0) << py;
  }
  std::string oci(const std::string& verb) {
    return CLOISTER_BIN_DIR "/cloister-oci --root " + root.path + " " + verb;
  }
  void expect_nothing_left(const std::string& where) {
    std::string out;
    EXPECT_EQ(sh("ls -A " + root.path, &out), 0);
    EXPECT_EQ(out, "") << where << ": state left in --root";
    (void)sh("ls -d /sys/fs/cgroup/*/cloister-oci/*/ 2>/dev/null", &out);
    EXPECT_EQ(out, "") << where << ": cgroups left";
    expect_no_leftover(where);
  }
  TempDir dir, root, shared, secret;
};

TEST_F(EscapeOci, EveryAttackFailsInAnOciContainer) {
  std::string out;
  bundle({kAttack, "proc1"});
  EXPECT_EQ(sh(oci("run a1 --bundle " + dir.path), &out), 0) << out;
  expect_init_unreachable(out, "cloister-oci run");
  bundle({kAttack, "forge", "7"});
  EXPECT_EQ(sh(oci("run a2 --bundle " + dir.path), &out), 7) << out;
  EXPECT_EQ(out.find("forged"), std::string::npos) << out;
  bundle({kAttack, "exit-leaving-child"});
  EXPECT_EQ(sh(oci("run a3 --bundle " + dir.path), &out), 0) << out;
  expect_no_leftover("cloister-oci run, exit leaving a child");
  bundle({kAttack, "exe"});
  EXPECT_EQ(sh(oci("run a4 --bundle " + dir.path), &out), 0) << out;
  EXPECT_TRUE(write_refused(out, "reopened_exe_write")) << out;
  bundle({kAttack, "names"});
  EXPECT_EQ(sh(oci("run a5 --bundle " + dir.path), &out), 0) << out;
  expect_nothing_by_name(out, "cloister-oci run");
  // Root inside is the default range's, not host root, whatever the
  // config's capabilities: the host's root-only file stays closed, and
  // what it makes lands as a mapped id.
  bundle({kAttack, "userns", "/secret/key", "/shared", "/bin/sh"},
         "[c['process']['capabilities'][k].append('CAP_SYS_ADMIN') for k in "
         "('bounding','effective','permitted')]");
  EXPECT_EQ(sh(oci("run a6 --bundle " + dir.path) + " 2>&1", &out), 0) << out;
  auto got = results(out);
  auto m = userns::default_map();
  ASSERT_TRUE(m);
  EXPECT_EQ(got["uid_map"], "0:" + std::to_string(m->uid_base) + ":" + std::to_string(m->size))
      << out;
  EXPECT_EQ(got["secret_read"], "EACCES") << out;
  EXPECT_NE(out.find("CAP_SYS_ADMIN would hold over nothing"), std::string::npos) << out;
  struct stat st {};
  ASSERT_EQ(::stat((shared.path + "/mine").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, m->uid_base);
  expect_nothing_left("after the runs");
}

// create and start as containerd calls them: the init waits in its
// namespaces for start, is no child of any runtime process, and delete
// --force leaves nothing of it (a child in a session of its own included).
TEST_F(EscapeOci, CreatedAndRunningContainersLeaveNothingBehind) {
  std::string out;
  bundle({kAttack, "hold"});
  // The container's stdio is create's: a file here, or the output would
  // never end for the test.
  ASSERT_EQ(sh(oci("create --bundle " + dir.path + " --pid-file " + dir.path + "/pid h1") +
               " </dev/null >" + dir.path + "/out 2>&1"),
            0)
      << read_text(dir.path + "/out");
  const pid_t pid = std::atoi(read_text(dir.path + "/pid").c_str());
  ASSERT_GT(pid, 0);
  EXPECT_NE(read_text("/proc/" + std::to_string(pid) + "/stat").find("cloister-init"),
            std::string::npos);
  EXPECT_EQ(sh(oci("state h1"), &out), 0);
  EXPECT_NE(out.find("\"status\": \"created\""), std::string::npos) << out;
  EXPECT_EQ(count_host_processes(kLeftover), 0) << "the payload ran before start";
  ASSERT_EQ(sh(oci("start h1"), &out), 0) << out;
  for (int i = 0; i < 200 && count_host_processes(kLeftover) == 0; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(count_host_processes(kLeftover), 1);
  EXPECT_NE(sh(oci("delete h1"), &out), 0) << "a running container deleted without --force";
  EXPECT_EQ(sh(oci("delete --force h1"), &out), 0) << out;
  expect_nothing_left("delete --force");
  // A created container that is deleted never runs its process.
  ASSERT_EQ(sh(oci("create --bundle " + dir.path + " h2") + " </dev/null >/dev/null 2>&1"), 0);
  EXPECT_EQ(sh(oci("delete h2"), &out), 0) << out;
  EXPECT_EQ(count_host_processes(kLeftover), 0);
  expect_nothing_left("delete of a created container");
}

// Configs that would share a host namespace or propagate mounts are
// refused by JSON path, and a refused create leaves nothing.
TEST_F(EscapeOci, WeakerConfigsAreRefusedNotIgnored) {
  struct Case {
    std::string edit, want;
  };
  const Case cases[] = {
      {"c['linux']['namespaces']=[n for n in c['linux']['namespaces'] if n['type']!='pid']",
       "linux.namespaces: no 'pid' namespace"},
      {"c['linux']['namespaces']=[n for n in c['linux']['namespaces'] if n['type']!='mount']",
       "linux.namespaces: no 'mount' namespace"},
      {"c['linux']['namespaces'].append({'type':'user'}); "
       "c['linux']['uidMappings']=[{'containerID':0,'hostID':0,'size':65536}]; "
       "c['linux']['gidMappings']=[{'containerID':0,'hostID':0,'size':65536}]",
       "linux.uidMappings"},
      {"c['linux']['rootfsPropagation']='shared'", "linux.rootfsPropagation"},
      {"c['mounts'][3]['options']=['rbind','rshared']", "mounts[3].options"},
      {"c['linux']['sysctl']={'kernel.domainname':'x'}", "linux.sysctl"},
      {"c['linux']['sysctl']={'kernel.core_pattern':'|/tmp/x'}",
       "linux.sysctl[\"kernel.core_pattern\"]: sysctl kernel.core_pattern: not kept per "
       "namespace"},
      {"c['linux']['sysctl']={'net/../kernel/core_pattern':'x'}", "not a sysctl name"},
      {"c['linux']['namespaces']=[n for n in c['linux']['namespaces'] if n['type']!='network'];"
       " c['linux']['sysctl']={'net.ipv4.ip_forward':'1'}",
       "shares the host's network namespace"},
      {"c['linux']['seccomp']={'defaultAction':'SCMP_ACT_ALLOW','listenerPath':'/x'}",
       "linux.seccomp.listenerPath"},
      {"c['linux']['cgroupsPath']='/'", "linux.cgroupsPath"},
      {"c['linux']['cgroupsPath']='/a/../../b'", "linux.cgroupsPath"},
  };
  for (const auto& c : cases) {
    bundle({"/bin/true"}, c.edit);
    std::string out;
    EXPECT_EQ(sh(oci("create --bundle " + dir.path + " w1") + " 2>&1", &out), 1) << c.edit;
    EXPECT_NE(out.find(c.want), std::string::npos) << c.edit << ": " << out;
    expect_nothing_left(c.edit);
  }
}

// A pod as containerd's CRI makes one: a second container joins the first's
// ipc and uts namespaces by path (and keeps the pod's hostname), never the
// host's; a pid or mount namespace path is still refused.
TEST_F(EscapeOci, PodContainersJoinIpcAndUtsButNeverTheHosts) {
  std::string out;
  // The pod lives until the test deletes it (the test VM takes minutes).
  bundle({"/bin/sleep", "100000"}, "c['hostname']='pod-1'");
  ASSERT_EQ(sh(oci("create --bundle " + dir.path + " --pid-file " + dir.path + "/pid p1") +
               " </dev/null >/dev/null 2>&1"),
            0);
  ASSERT_EQ(sh(oci("start p1")), 0);
  const std::string pid = read_text(dir.path + "/pid");
  auto ns_of = [&](const std::string& p, const char* t) {
    char buf[64] = {};
    ssize_t n = ::readlink(("/proc/" + p + "/ns/" + t).c_str(), buf, sizeof buf - 1);
    return std::string(buf, n > 0 ? static_cast<size_t>(n) : 0);
  };
  auto join = [&](const std::string& ipc, const std::string& uts) {
    return "c['linux']['namespaces']=[n for n in c['linux']['namespaces'] if n['type'] not in "
           "('ipc','uts')] + [{'type':'ipc','path':'" +
           ipc + "'},{'type':'uts','path':'" + uts + "'}]; c.pop('hostname', None)";
  };
  bundle({"/bin/sh", "-c",
          "readlink /proc/self/ns/ipc; readlink /proc/self/ns/uts; cat /proc/sys/kernel/hostname"},
         join("/proc/" + pid + "/ns/ipc", "/proc/" + pid + "/ns/uts"));
  EXPECT_EQ(sh(oci("run p2 --bundle " + dir.path), &out), 0) << out;
  EXPECT_EQ(out, ns_of(pid, "ipc") + "\n" + ns_of(pid, "uts") + "\npod-1\n");
  EXPECT_NE(ns_of(pid, "ipc"), ns_of("self", "ipc"));
  for (const auto& [ipc, uts] :
       {std::pair{std::string("/proc/self/ns/ipc"), "/proc/" + pid + "/ns/uts"},
        std::pair{"/proc/" + pid + "/ns/ipc", std::string("/proc/self/ns/uts")}}) {
    bundle({"/bin/true"}, join(ipc, uts));
    EXPECT_EQ(sh(oci("run p3 --bundle " + dir.path) + " 2>&1", &out), 1) << ipc << " " << uts;
    EXPECT_NE(out.find("namespace: a sandbox never shares the host's"), std::string::npos) << out;
  }
  // A runtime in uts and ipc namespaces of its own still knows the host's:
  // they are kthreadd's, whether or not PID 1's can be read.
  bundle({"/bin/true"}, join("/proc/2/ns/ipc", "/proc/2/ns/uts"));
  EXPECT_EQ(sh("unshare --uts --ipc " + oci("run p5 --bundle " + dir.path) + " 2>&1", &out), 1)
      << out;
  EXPECT_NE(out.find("namespace: a sandbox never shares the host's"), std::string::npos) << out;
  bundle({"/bin/true"},
         "c['linux']['namespaces']=[n if n['type']!='pid' else {'type':'pid',"
         "'path':'/proc/" +
             pid + "/ns/pid'} for n in c['linux']['namespaces']]");
  EXPECT_EQ(sh(oci("run p4 --bundle " + dir.path) + " 2>&1", &out), 1) << out;
  EXPECT_NE(out.find("joining a pid namespace is not supported"), std::string::npos) << out;
  EXPECT_EQ(sh(oci("delete --force p1")), 0);
  expect_nothing_left("pod containers");
}

// maskedPaths and readonlyPaths hold in the rootfs and in binds: each is
// resolved in the container's root as the payload sees it (a symlink's
// target covered, ".." never above the root), then once more by fd with no
// symlink followed; nothing of the host's behind a symlink is touched.
TEST_F(EscapeOci, MaskedAndReadOnlyPathsHold) {
  std::string out;
  ASSERT_EQ(::symlink("/etc", (dir.path + "/rootfs/hostetc").c_str()), 0);
  ASSERT_EQ(::symlink("../../../../../../var", (dir.path + "/rootfs/up").c_str()), 0);
  ASSERT_EQ(sh("mkdir " + dir.path + "/rootfs/etc " + dir.path + "/rootfs/var"), 0);
  // Mount points the rootfs lacks are made in its overlay; without one (the
  // VM's), in the rootfs itself they cannot be (it is read-only).
  if (!oci::overlay_available())
    ASSERT_EQ(sh("cd " + dir.path + "/rootfs && mkdir nodir nd rw"), 0);
  write_text(shared.path + "/note", "shared\n");
  bundle({"/bin/sh", "-c",
          "touch /bin/x 2>/dev/null; echo bin=$?; touch /shared/y 2>/dev/null; echo shared=$?; "
          "cat /secret/key 2>/dev/null; echo secret=$?; touch /tmp/z; echo tmp=$?; "
          "touch /etc/x 2>/dev/null; echo etc=$?; touch /var/x 2>/dev/null; echo var=$?; "
          "cat /nodir/key 2>/dev/null; echo nodir=$?"},
         "c['root']['readonly']=False; "
         "c['linux']['readonlyPaths']=['/bin','/shared','/hostetc','/up'];"
         "c['linux']['maskedPaths']=['/secret','/nodir/key']; "
         "c['mounts'].append({'destination':'/nodir','type':'bind','source':'" +
             secret.path + "','options':['rbind','ro']})");
  EXPECT_EQ(sh(oci("run m1 --bundle " + dir.path) + " 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("bin=1"), std::string::npos) << out;
  EXPECT_NE(out.find("shared=1"), std::string::npos) << out;
  EXPECT_NE(out.find("secret=1"), std::string::npos) << out;
  EXPECT_NE(out.find("tmp=0"), std::string::npos) << out;
  EXPECT_NE(out.find("etc=1"), std::string::npos) << out;
  EXPECT_NE(out.find("var=1"), std::string::npos) << out;
  // Below a bind whose mount point the rootfs lacks: masked all the same.
  EXPECT_NE(out.find("nodir=1"), std::string::npos) << out;

  // At such a mount point: the bind itself masked, or made read-only.
  bundle({"/bin/sh", "-c",
          "cat /nd/key 2>/dev/null; echo nd=$?; touch /rw/new 2>/dev/null; echo rw=$?"},
         "c['linux']['maskedPaths']=['/nd']; c['linux']['readonlyPaths']=['/rw']; "
         "c['mounts'] += [{'destination':'/nd','type':'bind','source':'" +
             secret.path +
             "','options':['rbind','ro']},{'destination':'/rw','type':'bind','source':'" +
             shared.path + "','options':['rbind','rw']}]");
  EXPECT_EQ(sh(oci("run m3 --bundle " + dir.path) + " 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("nd=1"), std::string::npos) << out;
  EXPECT_NE(out.find("rw=1"), std::string::npos) << out;
  EXPECT_EQ(out.find("root only"), std::string::npos) << out;
  EXPECT_NE(::access((shared.path + "/new").c_str(), F_OK), 0);
  EXPECT_EQ(out.find("root only"), std::string::npos) << out;
  // The host's /etc and /var got no mount of their own here (any mount of
  // the init's would be in the container's namespace, gone with it). Not
  // access(W_OK): the VM's root is read-only.
  std::istringstream mounts(read_text("/proc/self/mountinfo"));
  for (std::string line; std::getline(mounts, line);) {
    std::istringstream f(line);
    std::string id, parent, dev, root, point;
    f >> id >> parent >> dev >> root >> point;
    EXPECT_NE(point, "/etc") << line;
    EXPECT_NE(point, "/var") << line;
  }
  // A symlink the payload may repoint before the next start, or one in the
  // container's own /proc: refused, by name.
  ASSERT_EQ(::symlink("/etc", (shared.path + "/link").c_str()), 0);
  for (const auto& [path, why] :
       {std::pair<std::string, std::string>{"/shared/link/passwd",
                                            "is a symlink inside the writable"},
        {"/proc/self/environ", "is a symlink in the sandbox's own /proc or /sys"}}) {
    bundle({"/bin/true"}, "c['linux']['readonlyPaths']=['" + path + "']");
    EXPECT_EQ(sh(oci("run m2 --bundle " + dir.path) + " 2>&1", &out), 1) << path;
    EXPECT_NE(out.find(path + ": "), std::string::npos) << out;
    EXPECT_NE(out.find(why), std::string::npos) << out;
  }
  expect_nothing_left("masked and read-only paths");
}

// A config's capabilities that hold over nothing in the container's user
// namespace are in its sets, as runc shows them, and every use of them is
// refused; CAP_SYS_ADMIN, which would open namespaces of its own, is not.
TEST_F(EscapeOci, InertCapabilitiesAreHeldInNameOnly) {
  std::string out;
  bundle({kAttack, "inert", "/shared"},
         "[c['process']['capabilities'][k].extend(['CAP_NET_RAW','CAP_MKNOD',"
         "'CAP_NET_BIND_SERVICE','CAP_SYS_TIME','CAP_SYS_ADMIN','CAP_CHECKPOINT_RESTORE',"
         "'CAP_SYS_NICE','CAP_SYS_RESOURCE']) for k in ('bounding','effective','permitted')]");
  EXPECT_EQ(sh(oci("run i1 --bundle " + dir.path) + " 2>&1", &out), 0) << out;
  auto got = results(out);
  const uint64_t eff = std::strtoull(got["cap_eff"].c_str(), nullptr, 16);
  for (int cap : {CAP_NET_RAW, CAP_MKNOD, CAP_NET_BIND_SERVICE, CAP_SYS_TIME})
    EXPECT_NE(eff & (uint64_t{1} << cap), 0u) << "held: " << cap << "\n" << out;
  // These act in the container's own user namespace, or on its processes.
  for (int cap : {CAP_SYS_ADMIN, CAP_CHECKPOINT_RESTORE, CAP_SYS_NICE, CAP_SYS_RESOURCE})
    EXPECT_EQ(eff & (uint64_t{1} << cap), 0u) << "dropped: " << cap << "\n" << out;
  for (const char* use : {"raw_socket", "mknod", "settime", "sethostname", "mount", "unshare_mnt"})
    EXPECT_EQ(got[use], "EPERM") << use << "\n" << out;
  EXPECT_EQ(got["bind_80"], "EACCES") << out;
  EXPECT_NE(out.find("CAP_NET_BIND_SERVICE, CAP_NET_RAW"), std::string::npos) << out;
  expect_nothing_left("inert capabilities");
}

// linux.devices are made with their type, numbers, mode and owner, and the
// device policy (v1's devices controller here, a cgroup2 device program in
// the VM) lets the payload open what linux.resources.devices and the
// defaults allow, and nothing else: not a node the config made but did not
// allow, not a block device, whatever its root does.
TEST_F(EscapeOci, DevicesAreMadeAndOnlyTheAllowedOpen) {
  std::string out;
  bundle({"/bin/sh", "-c",
          "busybox stat -c '%n %a %u %g %t:%T %F' /dev/xnull /dev/sub/fuse /dev/loopx /dev/fifo; "
          "echo hi > /dev/xnull && echo xnull=ok; echo hi > /dev/null && echo null=ok; "
          "(exec 3<>/dev/sub/fuse) 2>&1; (exec 3</dev/loopx) 2>&1; (exec 3</dev/fifo3) 2>&1; "
          "busybox mknod /dev/made c 1 3 2>&1; echo mknod=$?"},
         "c['linux']['devices']=["
         "{'path':'/dev/xnull','type':'c','major':1,'minor':3,'fileMode':0o640,'uid':7,'gid':8},"
         "{'path':'/dev/sub/fuse','type':'c','major':10,'minor':229,'fileMode':0o666},"
         "{'path':'/dev/loopx','type':'b','major':7,'minor':0,'fileMode':0o666},"
         "{'path':'/dev/fifo','type':'p','fileMode':0o600},"
         "{'path':'/dev/fifo3','type':'c','major':10,'minor':229,'fileMode':0o666}]; "
         "c['linux']['resources']=dict(devices=[{'allow':False,'access':'rwm'},"
         "{'allow':True,'type':'c','major':1,'minor':3,'access':'rw'},"
         "{'allow':True,'type':'c','major':10,'minor':229,'access':'rwm'},"
         "{'allow':False,'type':'c','major':10,'minor':229,'access':'rwm'}]); "
         "c['process']['capabilities']['bounding'].append('CAP_MKNOD'); "
         "c['process']['capabilities']['effective'].append('CAP_MKNOD'); "
         "c['process']['capabilities']['permitted'].append('CAP_MKNOD')");
  EXPECT_EQ(sh(oci("run d1 --bundle " + dir.path) + " 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("/dev/xnull 640 7 8 1:3 character special file"), std::string::npos) << out;
  EXPECT_NE(out.find("/dev/sub/fuse 666 0 0 a:e5 character special file"), std::string::npos)
      << out;
  EXPECT_NE(out.find("/dev/loopx 666 0 0 7:0 block special file"), std::string::npos) << out;
  EXPECT_NE(out.find("/dev/fifo 600 0 0 0:0 fifo"), std::string::npos) << out;
  EXPECT_NE(out.find("xnull=ok"), std::string::npos) << out;
  EXPECT_NE(out.find("null=ok"), std::string::npos) << out;
  // Allowed, then denied again by the later rule; no rule for the block
  // device; no mknod (no CAP_MKNOD over the host, and the policy).
  EXPECT_NE(out.find("/dev/sub/fuse: Operation not permitted"), std::string::npos) << out;
  EXPECT_NE(out.find("/dev/loopx: Operation not permitted"), std::string::npos) << out;
  EXPECT_NE(out.find("/dev/fifo3: Operation not permitted"), std::string::npos) << out;
  EXPECT_NE(out.find("mknod=1"), std::string::npos) << out;

  // A payload that is host root (userns: host) with CAP_MKNOD still makes
  // no node, not even in a volume a host user could open it from, even
  // under containerd's default rules (mknod of every node): mknod is
  // allowed only while the init makes the config's own nodes.
  bundle({"/bin/sh", "-c",
          "busybox stat -c '%F %t:%T' /dev/made; "
          "busybox mknod /shared/loopx b 7 0 2>&1; busybox mknod /shared/mem c 1 1 2>&1; "
          "busybox mknod /shared/fifo p && echo fifo=ok"},
         "c['annotations']={'run.cloister.userns':'host'}; "
         "c['linux']['resources']={'devices':[{'allow':False,'access':'rwm'},"
         "{'allow':True,'type':'c','access':'m'},{'allow':True,'type':'b','access':'m'},"
         "{'allow':True,'type':'c','major':1,'minor':3,'access':'rwm'}]}; "
         "c['linux']['devices']=[{'path':'/dev/made','type':'b','major':7,'minor':0}]; "
         "c['linux']['namespaces']=[n for n in c['linux']['namespaces'] if n['type']!='user']; "
         "c['linux'].pop('uidMappings',None); c['linux'].pop('gidMappings',None); "
         "[c['process']['capabilities'][k].append('CAP_MKNOD') for k in "
         "('bounding','effective','permitted')]");
  EXPECT_EQ(sh(oci("run d4 --bundle " + dir.path) + " 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("/shared/loopx: Operation not permitted"), std::string::npos) << out;
  EXPECT_NE(out.find("/shared/mem: Operation not permitted"), std::string::npos) << out;
  EXPECT_NE(out.find("fifo=ok"), std::string::npos) << out;
  EXPECT_NE(out.find("block special file 7:0"), std::string::npos) << out;
  struct stat st;
  EXPECT_NE(::lstat((shared.path + "/loopx").c_str(), &st), 0);
  EXPECT_NE(::lstat((shared.path + "/mem").c_str(), &st), 0);

  // Allowed by a rule: opened (the driver may still say no device).
  bundle({"/bin/sh", "-c", "(exec 3<>/dev/fuse) 2>&1; echo open=$?"},
         "c['linux']['devices']=[{'path':'/dev/fuse','type':'c','major':10,'minor':229}]; "
         "c['linux']['resources']=dict(devices=[{'allow':False,'access':'rwm'},"
         "{'allow':True,'type':'c','major':10,'minor':229,'access':'rw'}])");
  EXPECT_EQ(sh(oci("run d2 --bundle " + dir.path) + " 2>&1", &out), 0) << out;
  EXPECT_EQ(out.find("Operation not permitted"), std::string::npos) << out;

  // Nodes where cloister's own are, or outside /dev: refused by path.
  for (const auto& [node, why] :
       {std::pair<std::string, std::string>{"{'path':'/dev/null','type':'c','major':1,'minor':5}",
                                            "another device than the null"},
        {"{'path':'/dev/pts/9','type':'c','major':136,'minor':9}", "/dev/pts is cloister's own"},
        {"{'path':'/etc/x','type':'c','major':1,'minor':3}", "is not below /dev"},
        {"{'path':'/dev/x','type':'q','major':1,'minor':3}", "linux.devices[0].type"},
        {"{'path':'/dev/x','type':'c','major':1,'minor':3}]; "
         "c['linux']['resources']={'devices':[{'allow':False,'access':'rwm'},"
         "{'allow':True,'type':'c','major':1,'access':'rw'},"
         "{'allow':False,'type':'c','major':1,'minor':11,'access':'w'}]}; "
         "c['linux']['devices']=[{'path':'/dev/x','type':'c','major':1,'minor':3}",
         "takes access from part of the earlier 'c 1:* rw'"}}) {
    bundle({"/bin/true"}, "c['linux']['devices']=[" + node + "]");
    EXPECT_EQ(sh(oci("run d3 --bundle " + dir.path) + " 2>&1", &out), 1) << node;
    EXPECT_NE(out.find(why), std::string::npos) << out;
  }
  expect_nothing_left("devices");
}

// linux.sysctl and process.oomScoreAdj as runc applies them: the sysctls in
// the container's own network and ipc namespaces (the host's unchanged),
// the score on the container's processes, exec's included.
TEST_F(EscapeOci, SysctlsAndOomScoreStayInTheContainer) {
  const std::string ttl = read_text("/proc/sys/net/ipv4/ip_default_ttl");
  const std::string sem = read_text("/proc/sys/kernel/sem");
  const std::string own_score = read_text("/proc/self/oom_score_adj");
  std::string out;
  bundle({"/bin/sh", "-c",
          "cat /proc/sys/net/ipv4/ip_default_ttl /proc/sys/kernel/sem /proc/self/oom_score_adj"},
         "c['linux']['sysctl']={'net.ipv4.ip_default_ttl':'77','kernel.sem':'100\\t200\\t30\\t40'};"
         " c['process']['oomScoreAdj']=321");
  EXPECT_EQ(sh(oci("run s1 --bundle " + dir.path), &out), 0) << out;
  EXPECT_EQ(out, "77\n100\t200\t30\t40\n321\n");
  EXPECT_EQ(read_text("/proc/sys/net/ipv4/ip_default_ttl"), ttl);
  EXPECT_EQ(read_text("/proc/sys/kernel/sem"), sem);
  EXPECT_EQ(read_text("/proc/self/oom_score_adj"), own_score) << "the runtime's caller's";
  // A network namespace joined by path may be the host's own: its net.*
  // sysctls are refused (the attack review's finding), before anything runs.
  for (const std::string host_ns :
       {std::string("/proc/self/ns/net"), "/proc/" + std::to_string(::getpid()) + "/ns/net"}) {
    bundle({"/bin/true"}, std::string("c['linux']['namespaces']=[n if n['type']!='network' else "
                                      "{'type':'network','path':'") +
                              host_ns +
                              "'} for n in c['linux']['namespaces']]; "
                              "c['linux']['sysctl']={'net.ipv4.ip_default_ttl':'99'}");
    EXPECT_EQ(sh(oci("run s3 --bundle " + dir.path) + " 2>&1", &out), 1) << host_ns << out;
    EXPECT_NE(out.find("is the host's"), std::string::npos) << host_ns << ": " << out;
    EXPECT_EQ(read_text("/proc/sys/net/ipv4/ip_default_ttl"), ttl) << host_ns;
  }
  // A congestion control that is not loaded would load its module.
  bundle({"/bin/true"}, "c['linux']['sysctl']={'net.ipv4.tcp_congestion_control':'nosuchcc'}");
  EXPECT_EQ(sh(oci("run s4 --bundle " + dir.path) + " 2>&1", &out), 1) << out;
  EXPECT_NE(out.find("not one of the congestion controls loaded"), std::string::npos) << out;
  bundle({"/bin/sh", "-c", "cat /proc/self/oom_score_adj"}, "c['process']['oomScoreAdj']=-2000");
  EXPECT_EQ(sh(oci("run s2 --bundle " + dir.path) + " 2>&1", &out), 1) << out;
  EXPECT_NE(out.find("process.oomScoreAdj: -2000 is out of range"), std::string::npos) << out;
  expect_nothing_left("sysctl and oomScoreAdj");
}

// exec into a running container: the process joins the container's
// namespaces, cgroup and user namespace, meets the same refusals as the
// container's own, cannot reach the process that joined it (outside its pid
// namespace), and delete --force ends it with the container.
TEST_F(EscapeOci, ExecJoinsTheContainerAndMeetsTheSameWalls) {
  std::string out;
  bundle({"/bin/sleep", "60"});
  ASSERT_EQ(sh(oci("run -d --bundle " + dir.path + " x1") + " </dev/null >/dev/null 2>&1"), 0);
  EXPECT_EQ(sh(oci("exec x1 " + std::string(kAttack) + " proc1"), &out), 0) << out;
  expect_init_unreachable(out, "cloister-oci exec");
  EXPECT_EQ(sh(oci("exec x1 " + std::string(kAttack) + " forge 9"), &out), 9) << out;
  EXPECT_EQ(out.find("forged"), std::string::npos) << out;
  EXPECT_EQ(sh(oci("exec x1 " + std::string(kAttack) + " names"), &out), 0) << out;
  expect_nothing_by_name(out, "cloister-oci exec");
  EXPECT_EQ(
      sh(oci("exec x1 " + std::string(kAttack) + " userns /secret/key /shared /bin/sh"), &out), 0)
      << out;
  auto got = results(out);
  auto m = userns::default_map();
  ASSERT_TRUE(m);
  EXPECT_EQ(got["uid_map"], "0:" + std::to_string(m->uid_base) + ":" + std::to_string(m->size))
      << "the container's user namespace: " << out;
  EXPECT_EQ(got["secret_read"], "EACCES") << out;
  // The container's pid namespace: its init is PID 1, the joining process
  // is not in it.
  EXPECT_EQ(sh(oci("exec x1 /bin/sh -c 'cat /proc/1/cmdline; echo; ls /proc'"), &out), 0);
  EXPECT_EQ(out.rfind("/bin/sleep", 0), std::string::npos) << out;
  EXPECT_NE(out.find("cloister-init"), std::string::npos) << out;
  // A non-root exec keeps no capability without an ambient one.
  EXPECT_EQ(sh(oci("exec --user 1000:1000 x1 /bin/grep CapEff /proc/self/status"), &out), 0);
  EXPECT_NE(out.find("0000000000000000"), std::string::npos) << out;
  // Detached, as the shim runs it, then the container goes with its exec.
  ASSERT_EQ(sh(oci("exec -d --pid-file " + dir.path + "/epid x1 " + kAttack + " hold") +
               " </dev/null >/dev/null 2>&1"),
            0);
  for (int i = 0; i < 200 && count_host_processes(kLeftover) == 0; ++i)
    std::this_thread::sleep_for(10ms);
  EXPECT_EQ(count_host_processes(kLeftover), 1);
  EXPECT_EQ(sh(oci("delete --force x1"), &out), 0) << out;
  expect_nothing_left("exec, then delete --force");
  EXPECT_NE(sh(oci("exec x1 /bin/true")), 0) << "exec into a deleted container";
}

// What the config asks of a bind is what the container gets: noexec holds
// (nothing in it runs), and a writable root takes the payload's writes
// without passing them to the bundle's rootfs.
TEST_F(EscapeOci, BindOptionsHoldAndTheRootfsStaysAsItWas) {
  std::string out;
  bundle({"/bin/sh", "-c",
          "/probe/cloister_attack names >/dev/null; echo exec=$?; "
          "echo x > /written && echo root-write ok; exit 0"},
         std::string("c['mounts'][3]['options']=['rbind','ro','noexec']") +
             (oci::overlay_available() ? "; c['root']['readonly']=False" : ""));
  EXPECT_EQ(sh(oci("run n1 --bundle " + dir.path) + " 2>&1", &out), 0) << out;
  EXPECT_NE(out.find("exec=126"), std::string::npos) << "ran from a noexec bind: " << out;
  // (Without overlayfs the bundle's rootfs is the root, read-only.)
  if (oci::overlay_available()) EXPECT_NE(out.find("root-write ok"), std::string::npos) << out;
  struct stat st {};
  EXPECT_NE(::stat((dir.path + "/rootfs/written").c_str(), &st), 0) << "reached the bundle";
  expect_nothing_left("noexec and writable root");
}

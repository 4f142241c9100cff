// seccomp: profile parsing and compilation, and real enforcement in forked
// children (each child sets no_new_privs, installs a filter, runs one probe
// and reports the result through a pipe).
#include "isolate/seccomp.h"

#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <linux/netlink.h>
#include <linux/sched.h>
#include <sched.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "isolate/error.h"
#include "isolate/fd.h"

#ifndef __X32_SYSCALL_BIT
#define __X32_SYSCALL_BIT 0x40000000
#endif

using namespace cloister;
namespace sc = cloister::seccomp;
using json = nlohmann::json;

namespace {

std::string default_profile_text() {
  auto text = read_file(std::string(CLOISTER_SOURCE_DIR) + "/configs/seccomp-default.json");
  EXPECT_TRUE(text) << (text ? "" : text.error().what());
  return text ? *text : std::string();
}

bool same_program(const sc::Filter& a, const sc::Filter& b) {
  return a.insns().size() == b.insns().size() &&
         std::memcmp(a.insns().data(), b.insns().data(), a.insns().size() * sizeof(sock_filter)) ==
             0;
}

// Expects compile() to fail with an Invalid error whose message names `field`.
void expect_rejected(const std::string& profile, const std::string& field) {
  auto f = sc::compile(profile);
  ASSERT_FALSE(f) << "profile unexpectedly compiled: " << profile;
  EXPECT_EQ(f.error().kind, ErrorKind::Invalid) << f.error().what();
  EXPECT_NE(f.error().message.find(field), std::string::npos)
      << "error '" << f.error().what() << "' does not name '" << field << "'";
}

// What a confined child did.
struct Outcome {
  bool reported = false;  // the probe returned and wrote its result
  long ret = 0;           // the probe's return value
  int err = 0;            // errno after the probe
  bool exited = false;
  int exit_code = -1;
  int signal = 0;  // terminating signal, or 0
};

std::ostream& operator<<(std::ostream& os, const Outcome& o) {
  os << "{reported=" << o.reported << " ret=" << o.ret << " errno=" << o.err << " ("
     << std::strerror(o.err) << ") exit=" << o.exit_code << " signal=" << o.signal << "}";
  return os;
}

// Forks; the child sets PR_SET_NO_NEW_PRIVS, applies `filter`, runs `probe`
// and reports {return value, errno}. Exit codes 90/91 mean setup failed.
Outcome run_confined(const sc::Filter& filter, const std::function<long()>& probe) {
  Outcome out;
  auto p = make_pipe();
  if (!p) {
    ADD_FAILURE() << p.error().what();
    return out;
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    ADD_FAILURE() << "fork: " << std::strerror(errno);
    return out;
  }
  if (pid == 0) {
    p->read.reset();
    struct rlimit no_core {
      0, 0
    };
    ::setrlimit(RLIMIT_CORE, &no_core);  // SIGSYS would dump core
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) ::_exit(90);
    if (sc::apply(filter) != 0) ::_exit(91);
    errno = 0;
    long ret = probe();
    long msg[2] = {ret, errno};
    if (::write(p->write.get(), msg, sizeof msg) != sizeof msg) ::_exit(92);
    ::_exit(0);
  }
  p->write.reset();
  long msg[2];
  ssize_t n;
  do n = ::read(p->read.get(), msg, sizeof msg);
  while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof msg)) {
    out.reported = true;
    out.ret = msg[0];
    out.err = static_cast<int>(msg[1]);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) {
    out.exited = true;
    out.exit_code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    out.signal = WTERMSIG(status);
  }
  return out;
}

// Waits for a child of the probe and returns its exit code (or 128+signal).
long wait_child(pid_t c) {
  int status = 0;
  if (::waitpid(c, &status, 0) != c) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + WTERMSIG(status);
}

const sc::Filter& default_filter() {
  static const sc::Filter f = [] {
    auto r = sc::load("default");
    EXPECT_TRUE(r) << (r ? "" : r.error().what());
    return r ? *r : sc::Filter{};
  }();
  return f;
}

constexpr const char* kMissing = "/nonexistent-cloister-seccomp-test";

struct Probe {
  const char* name;
  std::function<long()> call;
};

// Every probe uses arguments that make the call fail harmlessly (ENOENT,
// EBADF, EINVAL, EFAULT...) or that only affect the short-lived child, so
// that an unfiltered run would be safe and would not return EPERM for the
// reason the filter does.
std::vector<Probe> denied_probes() {
  return {
      {"mount", [] { return ::syscall(SYS_mount, "none", kMissing, "tmpfs", 0L, nullptr); }},
      {"umount2", [] { return ::syscall(SYS_umount2, kMissing, 0L); }},
      {"pivot_root", [] { return ::syscall(SYS_pivot_root, kMissing, kMissing); }},
      {"chroot", [] { return ::syscall(SYS_chroot, kMissing); }},
      {"setns", [] { return ::syscall(SYS_setns, -1L, 0L); }},
      {"unshare(CLONE_NEWNS)", [] { return ::syscall(SYS_unshare, long{CLONE_NEWNS}); }},
      {"unshare(CLONE_NEWUSER)", [] { return ::syscall(SYS_unshare, long{CLONE_NEWUSER}); }},
      {"clone(CLONE_NEWUSER|SIGCHLD)",
       [] {
         long r = ::syscall(SYS_clone, long{CLONE_NEWUSER | SIGCHLD}, 0L, 0L, 0L, 0L);
         if (r == 0) ::_exit(0);
         if (r > 0) wait_child(static_cast<pid_t>(r));
         return r;
       }},
      {"clone(CLONE_NEWNET|SIGCHLD)",
       [] {
         long r = ::syscall(SYS_clone, long{CLONE_NEWNET | SIGCHLD}, 0L, 0L, 0L, 0L);
         if (r == 0) ::_exit(0);
         if (r > 0) wait_child(static_cast<pid_t>(r));
         return r;
       }},
      {"bpf", [] { return ::syscall(SYS_bpf, 0xffffL, nullptr, 0L); }},
      {"keyctl", [] { return ::syscall(SYS_keyctl, -1L, 0L, 0L, 0L, 0L); }},
      {"add_key", [] { return ::syscall(SYS_add_key, nullptr, nullptr, nullptr, 0L, 0L); }},
      {"request_key", [] { return ::syscall(SYS_request_key, nullptr, nullptr, nullptr, 0L); }},
      {"ptrace", [] { return ::syscall(SYS_ptrace, long{PTRACE_CONT}, 0L, 0L, 0L); }},
      {"perf_event_open", [] { return ::syscall(SYS_perf_event_open, nullptr, 0L, -1L, -1L, 0L); }},
      {"userfaultfd", [] { return ::syscall(SYS_userfaultfd, ~0L); }},
      {"kexec_load", [] { return ::syscall(SYS_kexec_load, 0L, 0L, nullptr, 0xdead0000L); }},
      {"kexec_file_load",
       [] { return ::syscall(SYS_kexec_file_load, -1L, -1L, 0L, nullptr, 0xdead0000L); }},
      {"init_module", [] { return ::syscall(SYS_init_module, nullptr, 0L, ""); }},
      {"finit_module", [] { return ::syscall(SYS_finit_module, -1L, "", 0L); }},
      {"delete_module", [] { return ::syscall(SYS_delete_module, nullptr, 0L); }},
      // Bad magic: EINVAL before anything happens.
      {"reboot", [] { return ::syscall(SYS_reboot, 0L, 0L, 0L, nullptr); }},
      {"swapon", [] { return ::syscall(SYS_swapon, kMissing, 0L); }},
      {"swapoff", [] { return ::syscall(SYS_swapoff, kMissing); }},
      // Both pointers NULL: a no-op even when permitted.
      {"settimeofday", [] { return ::syscall(SYS_settimeofday, nullptr, nullptr); }},
      {"clock_settime",
       [] {
         struct timespec ts {};
         return ::syscall(SYS_clock_settime, long{CLOCK_MONOTONIC}, &ts);
       }},
      {"clock_adjtime", [] { return ::syscall(SYS_clock_adjtime, long{CLOCK_REALTIME}, nullptr); }},
      {"adjtimex", [] { return ::syscall(SYS_adjtimex, nullptr); }},
      {"process_vm_readv",
       [] {
         return ::syscall(SYS_process_vm_readv, long{::getpid()}, nullptr, 0L, nullptr, 0L, 0L);
       }},
      {"process_vm_writev",
       [] {
         return ::syscall(SYS_process_vm_writev, long{::getpid()}, nullptr, 0L, nullptr, 0L, 0L);
       }},
      {"acct", [] { return ::syscall(SYS_acct, kMissing); }},
      {"quotactl", [] { return ::syscall(SYS_quotactl, 0L, nullptr, 0L, nullptr); }},
      {"open_by_handle_at", [] { return ::syscall(SYS_open_by_handle_at, -1L, nullptr, 0L); }},
      {"name_to_handle_at",
       [] { return ::syscall(SYS_name_to_handle_at, -1L, kMissing, nullptr, nullptr, 0L); }},
      {"iopl", [] { return ::syscall(SYS_iopl, 99L); }},
      {"ioperm", [] { return ::syscall(SYS_ioperm, 0x10000L, 1L, 0L); }},
      {"fanotify_init", [] { return ::syscall(SYS_fanotify_init, ~0L, 0L); }},
      {"fsopen", [] { return ::syscall(SYS_fsopen, nullptr, 0L); }},
      {"fsmount", [] { return ::syscall(SYS_fsmount, -1L, 0L, 0L); }},
      {"fspick", [] { return ::syscall(SYS_fspick, -1L, kMissing, 0L); }},
      {"open_tree", [] { return ::syscall(SYS_open_tree, -1L, kMissing, 0L); }},
      {"move_mount", [] { return ::syscall(SYS_move_mount, -1L, kMissing, -1L, kMissing, 0L); }},
      {"mount_setattr",
       [] { return ::syscall(SYS_mount_setattr, -1L, kMissing, 0L, nullptr, 0L); }},
      {"lookup_dcookie", [] { return ::syscall(SYS_lookup_dcookie, 0L, nullptr, 0L); }},
      {"nfsservctl", [] { return ::syscall(SYS_nfsservctl, 0L, nullptr, nullptr); }},
      // SYSLOG_ACTION_SIZE_BUFFER: read-only.
      {"syslog", [] { return ::syscall(SYS_syslog, 10L, nullptr, 0L); }},
      {"io_uring_setup", [] { return ::syscall(SYS_io_uring_setup, 0L, nullptr); }},
      {"kcmp", [] { return ::syscall(SYS_kcmp, -1L, -1L, 0L, 0L, 0L); }},
      {"pidfd_getfd", [] { return ::syscall(SYS_pidfd_getfd, -1L, -1L, 0L); }},
      {"sethostname", [] { return ::syscall(SYS_sethostname, nullptr, 0L); }},
      {"personality(ADDR_NO_RANDOMIZE)", [] { return ::syscall(SYS_personality, 0x0040000L); }},
      {"personality(READ_IMPLIES_EXEC)", [] { return ::syscall(SYS_personality, 0x0400000L); }},
      {"socket(AF_VSOCK)",
       [] { return ::syscall(SYS_socket, long{AF_VSOCK}, long{SOCK_STREAM}, 0L); }},
  };
}

long int80_getpid() {
  long ret;
  // i386 getpid is 20. int $0x80 clobbers r8-r11 on some kernels.
  __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "r8", "r9", "r10", "r11", "memory");
  return ret;
}

}  // namespace

// --- compilation --------------------------------------------------------------

TEST(SeccompCompile, DefaultProfileCompiles) {
  auto f = sc::compile(default_profile_text());
  ASSERT_TRUE(f) << f.error().what();
  EXPECT_FALSE(f->empty());
  EXPECT_LE(f->insns().size(), static_cast<size_t>(BPF_MAXINSNS));
}

TEST(SeccompCompile, EmbeddedDefaultIsTheConfigFile) {
  auto file = sc::compile(default_profile_text());
  ASSERT_TRUE(file) << file.error().what();
  auto embedded = sc::load("default");
  ASSERT_TRUE(embedded) << embedded.error().what();
  EXPECT_TRUE(same_program(*file, *embedded));
  auto empty_name = sc::load("");
  ASSERT_TRUE(empty_name) << empty_name.error().what();
  EXPECT_TRUE(same_program(*file, *empty_name));
}

TEST(SeccompCompile, UnconfinedIsEmpty) {
  auto f = sc::load("unconfined");
  ASSERT_TRUE(f) << f.error().what();
  EXPECT_TRUE(f->empty());
  EXPECT_EQ(sc::apply(*f), 0);  // a no-op: this process stays unconfined
  EXPECT_EQ(::prctl(PR_GET_SECCOMP, 0, 0, 0, 0), 0);
}

// The default profile's allow rules never mention what it must deny.
TEST(SeccompCompile, DefaultProfileAllowsNoDeniedSyscall) {
  json doc = json::parse(default_profile_text());
  EXPECT_EQ(doc["defaultAction"], "SCMP_ACT_ERRNO");
  EXPECT_EQ(doc["defaultErrnoRet"], EPERM);
  const std::vector<std::string> denied = {"mount",
                                           "umount",
                                           "umount2",
                                           "pivot_root",
                                           "chroot",
                                           "setns",
                                           "unshare",
                                           "clone3",
                                           "kexec_load",
                                           "kexec_file_load",
                                           "bpf",
                                           "keyctl",
                                           "add_key",
                                           "request_key",
                                           "ptrace",
                                           "perf_event_open",
                                           "userfaultfd",
                                           "open_by_handle_at",
                                           "init_module",
                                           "finit_module",
                                           "delete_module",
                                           "reboot",
                                           "swapon",
                                           "swapoff",
                                           "clock_settime",
                                           "clock_adjtime",
                                           "adjtimex",
                                           "settimeofday",
                                           "process_vm_readv",
                                           "process_vm_writev",
                                           "acct",
                                           "quotactl",
                                           "quotactl_fd",
                                           "lookup_dcookie",
                                           "fanotify_init",
                                           "iopl",
                                           "ioperm",
                                           "mount_setattr",
                                           "open_tree",
                                           "move_mount",
                                           "fsopen",
                                           "fsmount",
                                           "fspick",
                                           "fsconfig",
                                           "name_to_handle_at",
                                           "vhangup",
                                           "nfsservctl",
                                           "syslog",
                                           "io_uring_setup",
                                           "io_uring_enter",
                                           "io_uring_register",
                                           "kcmp",
                                           "pidfd_getfd",
                                           "process_madvise",
                                           "sethostname",
                                           "setdomainname",
                                           "mbind",
                                           "set_mempolicy",
                                           "get_mempolicy",
                                           "migrate_pages",
                                           "move_pages",
                                           "uselib",
                                           "ustat",
                                           "sysfs",
                                           "_sysctl"};
  for (const auto& rule : doc["syscalls"]) {
    for (const auto& name : rule["names"]) {
      if (rule["action"] != "SCMP_ACT_ALLOW") continue;
      for (const auto& d : denied) EXPECT_NE(name.get<std::string>(), d) << "allowed: " << d;
      // clone and personality are only allowed with argument conditions.
      if (name == "clone" || name == "personality" || name == "socket") {
        EXPECT_TRUE(rule.contains("args") && !rule["args"].empty()) << name;
      }
    }
  }
}

TEST(SeccompCompile, UnknownSyscallNamesAreSkipped) {
  auto f = sc::compile(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["getpid", "no_such_syscall_in_any_kernel", "chown32", "socketcall"],
       "action": "SCMP_ACT_ALLOW"}]})");
  ASSERT_TRUE(f) << f.error().what();
  EXPECT_FALSE(f->empty());
}

TEST(SeccompCompile, MinimalProfiles) {
  auto allow_all = sc::compile(R"({"defaultAction": "SCMP_ACT_ALLOW"})");
  ASSERT_TRUE(allow_all) << allow_all.error().what();
  EXPECT_FALSE(allow_all->empty());  // still a program: it enforces the ABI rule
  auto native = sc::compile(
      R"({"defaultAction": "SCMP_ACT_LOG", "architectures": ["SCMP_ARCH_NATIVE"], "syscalls": [],
          "comment": "x"})");
  EXPECT_TRUE(native) << native.error().what();
  auto x86_64 = sc::compile(R"({"defaultAction": "SCMP_ACT_KILL_PROCESS",
      "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [{"names": ["read"],
      "action": "SCMP_ACT_ALLOW", "args": null, "comment": "c"}]})");
  EXPECT_TRUE(x86_64) << x86_64.error().what();
}

TEST(SeccompCompile, BadProfilesNameTheField) {
  expect_rejected("{", "parse JSON");
  expect_rejected("[]", "expected a JSON object");
  expect_rejected(R"({"syscalls": []})", "defaultAction");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_NOPE"})", "defaultAction");
  expect_rejected(R"({"defaultAction": 1})", "defaultAction");
  // Unknown action.
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
      {"names": ["getppid"], "action": "SCMP_ACT_BOGUS"}]})",
                  "syscalls[1].action: unknown action 'SCMP_ACT_BOGUS'");
  // Bad comparison operator.
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
       "args": [{"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 0, "op": "SCMP_CMP_ALMOST"}]}]})",
                  "syscalls[0].args[1].op: unknown comparison 'SCMP_CMP_ALMOST'");
  // Wrong types.
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": "getpid", "action": "SCMP_ACT_ALLOW"}]})",
                  "syscalls[0].names");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["getpid", 7], "action": "SCMP_ACT_ALLOW"}]})",
                  "syscalls[0].names[1]");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": "EPERM"})",
                  "defaultErrnoRet");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": -1}]})",
                  "syscalls[0].errnoRet");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["getpid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 5000}]})",
                  "syscalls[0].errnoRet");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["getpid"], "action": "SCMP_ACT_ALLOW", "errnoRet": 1}]})",
                  "syscalls[0].errnoRet: only valid with SCMP_ACT_ERRNO");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["dup"], "action": "SCMP_ACT_ALLOW",
       "args": [{"index": 0, "value": 1.5, "op": "SCMP_CMP_EQ"}]}]})",
                  "syscalls[0].args[0].value");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["dup"], "action": "SCMP_ACT_ALLOW",
       "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]})",
                  "syscalls[0].args[0].index");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["dup"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 1}]}]})",
                  "syscalls[0].args[0].op: missing");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": {}})", "syscalls");
  // Unknown keys, at every level. Docker's conditional keys are refused rather
  // than ignored: ignoring "includes" would widen the profile.
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "archMap": []})", "archMap: unknown key");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["mount"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}}]})",
                  "syscalls[0].includes: unknown key");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["dup"], "action": "SCMP_ACT_ALLOW",
       "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_EQ", "valueThree": 2}]}]})",
                  "syscalls[0].args[0].valueThree: unknown key");
  // One syscall, two different unconditional actions (also when one of them
  // is the default action).
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["getpid", "dup"], "action": "SCMP_ACT_ALLOW"},
      {"names": ["dup"], "action": "SCMP_ACT_KILL"}]})",
                  "syscalls[1].names: 'dup' already has a different action in syscalls[0]");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["dup"], "action": "SCMP_ACT_ALLOW"},
      {"names": ["dup"], "action": "SCMP_ACT_ERRNO"}]})",
                  "syscalls[1].names: 'dup'");
  EXPECT_TRUE(sc::compile(R"({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
      {"names": ["dup"], "action": "SCMP_ACT_ALLOW"},
      {"names": ["dup", "dup2"], "action": "SCMP_ACT_ALLOW"}]})"));
  // Foreign and unknown architectures.
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO",
      "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]})",
                  "architectures[1]: architecture 'SCMP_ARCH_X86' is not the native");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_X32"]})",
                  "architectures[0]");
  expect_rejected(R"({"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["SCMP_ARCH_PDP11"]})",
                  "architectures[0]: unknown architecture");
}

// Compiling needs no privilege and does not set no_new_privs in the caller;
// an unprivileged process can then install the filter once it sets NNP.
TEST(SeccompCompile, CompileNeedsNoPrivilege) {
  const std::string text = default_profile_text();
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (::geteuid() == 0) {
      // Drop to nobody: no capabilities at all.
      if (::setgroups(0, nullptr) != 0 || ::setresgid(65534, 65534, 65534) != 0 ||
          ::setresuid(65534, 65534, 65534) != 0)
        ::_exit(10);
    }
    auto f = sc::compile(text);
    if (!f || f->empty()) ::_exit(12);
    if (::prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 0) ::_exit(13);
    if (sc::apply(*f) != EACCES) ::_exit(14);  // without NNP and CAP_SYS_ADMIN
    if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) ::_exit(15);
    if (sc::apply(*f) != 0) ::_exit(16);
    if (::prctl(PR_GET_SECCOMP, 0, 0, 0, 0) != 2) ::_exit(17);
    ::_exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << status;
  EXPECT_EQ(WEXITSTATUS(status), 0) << "failed step (see exit codes in the test)";
}

// --- load and cache ----------------------------------------------------------

TEST(SeccompLoad, PathProfilesAreCompiledAndCached) {
  char dir[] = "/tmp/cloister-seccomp-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string path = std::string(dir) + "/profile.json";
  const std::string text =
      R"({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
          {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42}]})";
  {
    auto fd = open_fd(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    ASSERT_TRUE(fd) << fd.error().what();
    ASSERT_TRUE(write_all(fd->get(), text));
  }
  auto loaded = sc::load(path);
  ASSERT_TRUE(loaded) << loaded.error().what();
  auto compiled = sc::compile(text);
  ASSERT_TRUE(compiled);
  EXPECT_TRUE(same_program(*loaded, *compiled));

  // Cached by name: replacing the file does not change what load() returns.
  {
    auto fd = open_fd(path, O_WRONLY | O_TRUNC);
    ASSERT_TRUE(fd);
    ASSERT_TRUE(write_all(fd->get(), "not json"));
  }
  auto again = sc::load(path);
  ASSERT_TRUE(again) << again.error().what();
  EXPECT_TRUE(same_program(*loaded, *again));
  // An uncached name for the same broken file reports the parse error.
  auto broken = sc::load(std::string(dir) + "/./profile.json");
  ASSERT_FALSE(broken);
  EXPECT_EQ(broken.error().kind, ErrorKind::Invalid);
  EXPECT_NE(broken.error().message.find("profile.json"), std::string::npos);

  ::unlink(path.c_str());
  ::rmdir(dir);
}

TEST(SeccompLoad, MissingAndIrregularFilesAreErrors) {
  auto missing = sc::load(kMissing);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().kind, ErrorKind::NotFound);
  EXPECT_NE(missing.error().message.find(kMissing), std::string::npos) << missing.error().what();

  auto dir = sc::load("/tmp");
  ASSERT_FALSE(dir);
  EXPECT_NE(dir.error().message.find("not a regular file"), std::string::npos)
      << dir.error().what();
}

TEST(SeccompLoad, ConcurrentLoadsAgree) {
  std::vector<sc::Filter> results(8);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < results.size(); ++i)
    threads.emplace_back([&results, i] {
      auto f = sc::load(i % 2 ? "default" : "");
      if (f) results[i] = std::move(*f);
    });
  for (auto& t : threads) t.join();
  for (const auto& r : results) {
    EXPECT_FALSE(r.empty());
    EXPECT_TRUE(same_program(r, results[0]));
  }
}

// --- enforcement: the default profile ----------------------------------------

TEST(SeccompEnforce, DefaultDeniesDangerousSyscallsWithEperm) {
  for (const auto& probe : denied_probes()) {
    Outcome o = run_confined(default_filter(), probe.call);
    EXPECT_TRUE(o.reported && o.ret == -1 && o.err == EPERM) << probe.name << ": " << o;
  }
}

// The same probes under the default profile with a distinctive errno: every
// denial must come from the filter's default action, not from the kernel
// refusing the (harmless) arguments or from missing capabilities.
TEST(SeccompEnforce, DefaultDenialsComeFromTheFilter) {
  json doc = json::parse(default_profile_text());
  doc["defaultErrnoRet"] = EHWPOISON;
  auto marked = sc::compile(doc.dump());
  ASSERT_TRUE(marked) << marked.error().what();
  for (const auto& probe : denied_probes()) {
    Outcome o = run_confined(*marked, probe.call);
    EXPECT_TRUE(o.reported && o.ret == -1 && o.err == EHWPOISON) << probe.name << ": " << o;
  }
}

TEST(SeccompEnforce, Clone3FailsWithEnosysSoLibcFallsBack) {
  auto clone3 = [] { return ::syscall(SYS_clone3, nullptr, 0L); };
  Outcome o = run_confined(default_filter(), clone3);
  EXPECT_TRUE(o.reported && o.ret == -1 && o.err == ENOSYS) << o;
  // Unconfined, this kernel implements clone3 and rejects the NULL argument.
  Outcome u = run_confined(sc::Filter{}, clone3);
  EXPECT_TRUE(u.reported && u.ret == -1 && u.err != ENOSYS) << u;
}

TEST(SeccompEnforce, SeccompIsActiveInTheChild) {
  Outcome o =
      run_confined(default_filter(), [] { return long{::prctl(PR_GET_SECCOMP, 0, 0, 0, 0)}; });
  EXPECT_TRUE(o.reported && o.ret == 2) << o;  // SECCOMP_MODE_FILTER
  Outcome u = run_confined(sc::Filter{}, [] { return long{::prctl(PR_GET_SECCOMP, 0, 0, 0, 0)}; });
  EXPECT_TRUE(u.reported && u.ret == 0) << u;
}

TEST(SeccompEnforce, OrdinaryProgramsStillWork) {
  const sc::Filter& f = default_filter();

  Outcome pid = run_confined(f, [] { return ::syscall(SYS_getpid); });
  EXPECT_TRUE(pid.reported && pid.ret > 0) << "getpid: " << pid;

  Outcome exec = run_confined(f, [] {
    pid_t c = ::fork();
    if (c == 0) {
      ::execl("/bin/true", "true", nullptr);
      ::_exit(127);
    }
    return c < 0 ? -1L : wait_child(c);
  });
  EXPECT_TRUE(exec.reported && exec.ret == 0) << "fork/exec /bin/true: " << exec;

  Outcome shell = run_confined(f, [] {
    pid_t c = ::fork();
    if (c == 0) {
      ::execl("/bin/sh", "sh", "-c",
              "ls / >/dev/null && cat /proc/self/status >/dev/null && "
              "x=$(echo hi) && test \"$x\" = hi",
              nullptr);
      ::_exit(127);
    }
    return c < 0 ? -1L : wait_child(c);
  });
  EXPECT_TRUE(shell.reported && shell.ret == 0) << "/bin/sh pipeline: " << shell;

  Outcome plain_clone = run_confined(f, [] {
    long r = ::syscall(SYS_clone, long{SIGCHLD}, 0L, 0L, 0L, 0L);
    if (r == 0) ::_exit(7);
    return r < 0 ? r : wait_child(static_cast<pid_t>(r));
  });
  EXPECT_TRUE(plain_clone.reported && plain_clone.ret == 7) << "clone(SIGCHLD): " << plain_clone;

  // pthread_create tries clone3 first and falls back to clone on ENOSYS.
  Outcome thread = run_confined(f, [] {
    try {
      int x = 0;
      std::thread t([&x] { x = 5; });
      t.join();
      return long{x};
    } catch (...) {
      return -1L;
    }
  });
  EXPECT_TRUE(thread.reported && thread.ret == 5) << "std::thread: " << thread;

  char dir[] = "/tmp/cloister-seccomp-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  std::string file = std::string(dir) + "/f";
  Outcome io = run_confined(f, [&file] {
    int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return -1L;
    if (::write(fd, "hello", 5) != 5) return -2L;
    char buf[8] = {};
    if (::pread(fd, buf, sizeof buf, 0) != 5 || std::memcmp(buf, "hello", 5) != 0) return -3L;
    struct stat st {};
    if (::fstat(fd, &st) != 0 || st.st_size != 5) return -4L;
    ::close(fd);
    if (::unlink(file.c_str()) != 0) return -5L;
    return 0L;
  });
  EXPECT_TRUE(io.reported && io.ret == 0) << "file I/O: " << io;
  ::unlink(file.c_str());
  ::rmdir(dir);

  Outcome mem = run_confined(f, [] {
    void* p = ::mmap(nullptr, 1 << 16, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -1L;
    static_cast<char*>(p)[100] = 1;
    if (::mprotect(p, 1 << 16, PROT_READ) != 0) return -2L;
    if (::munmap(p, 1 << 16) != 0) return -3L;
    return 0L;
  });
  EXPECT_TRUE(mem.reported && mem.ret == 0) << "mmap: " << mem;

  Outcome sock = run_confined(f, [] {
    int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0) return -1L;
    ::close(s);
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) return -2L;
    char c = 0;
    if (::write(sv[0], "x", 1) != 1 || ::read(sv[1], &c, 1) != 1 || c != 'x') return -3L;
    return 0L;
  });
  EXPECT_TRUE(sock.reported && sock.ret == 0) << "AF_UNIX sockets: " << sock;

  Outcome query = run_confined(f, [] { return ::syscall(SYS_personality, 0xffffffffL); });
  EXPECT_TRUE(query.reported && query.ret >= 0) << "personality(0xffffffff): " << query;
  for (long persona : {0x0L, 0x8L, 0x20000L, 0x20008L}) {
    Outcome set = run_confined(f, [persona] { return ::syscall(SYS_personality, persona); });
    EXPECT_TRUE(set.reported && set.ret >= 0) << "personality(" << persona << "): " << set;
  }
}

// --- enforcement: the ABI rule -----------------------------------------------

// x32 syscall numbers carry __X32_SYSCALL_BIT with AUDIT_ARCH_X86_64; the
// filter treats them as a foreign ABI: the process is killed with SIGSYS.
TEST(SeccompEnforce, X32AbiKillsTheProcess) {
  auto x32_getpid = [] { return ::syscall(__X32_SYSCALL_BIT | __NR_getpid); };
  Outcome o = run_confined(default_filter(), x32_getpid);
  EXPECT_FALSE(o.reported) << o;
  EXPECT_EQ(o.signal, SIGSYS) << o;
  // Even a profile that allows everything keeps the ABI rule.
  auto allow_all = sc::compile(R"({"defaultAction": "SCMP_ACT_ALLOW"})");
  ASSERT_TRUE(allow_all);
  Outcome a = run_confined(*allow_all, x32_getpid);
  EXPECT_EQ(a.signal, SIGSYS) << a;
}

// i386 syscalls (int $0x80, AUDIT_ARCH_I386) are a foreign architecture for
// the filter: the bad-arch action kills the process with SIGSYS.
TEST(SeccompEnforce, I386AbiKillsTheProcess) {
  Outcome o = run_confined(default_filter(), int80_getpid);
  EXPECT_FALSE(o.reported) << o;
  EXPECT_EQ(o.signal, SIGSYS) << o;
  auto allow_all = sc::compile(R"({"defaultAction": "SCMP_ACT_ALLOW"})");
  ASSERT_TRUE(allow_all);
  Outcome a = run_confined(*allow_all, int80_getpid);
  EXPECT_EQ(a.signal, SIGSYS) << a;
}

// Control for the test above: without a filter the same int $0x80 works
// (where the kernel has IA-32 emulation), so the kill is the filter's doing.
TEST(SeccompEnforce, I386AbiWorksUnconfined) {
  Outcome u = run_confined(sc::Filter{}, [] { return int80_getpid() == ::getpid() ? 0L : -1L; });
  if (u.signal == SIGSEGV || (u.reported && u.ret != 0))
    GTEST_SKIP() << "kernel without IA-32 emulation: " << u;
  EXPECT_TRUE(u.reported && u.ret == 0) << u;
}

// --- enforcement: custom profiles ---------------------------------------------

TEST(SeccompEnforce, CustomProfileActionsAndArguments) {
  auto f = sc::compile(R"({
    "defaultAction": "SCMP_ACT_ALLOW",
    "defaultErrnoRet": 13,
    "syscalls": [
      {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42},
      {"names": ["getpgid"], "action": "SCMP_ACT_KILL_PROCESS"},
      {"names": ["dup"], "action": "SCMP_ACT_ERRNO",
       "args": [{"index": 0, "value": 100, "op": "SCMP_CMP_GE"}]},
      {"names": ["umask"], "action": "SCMP_ACT_ERRNO", "errnoRet": 7,
       "args": [{"index": 0, "value": 7, "valueTwo": 2, "op": "SCMP_CMP_MASKED_EQ"}]}
    ]})");
  ASSERT_TRUE(f) << f.error().what();

  Outcome errno_ret = run_confined(*f, [] { return ::syscall(SYS_getppid); });
  EXPECT_TRUE(errno_ret.reported && errno_ret.ret == -1 && errno_ret.err == 42) << errno_ret;

  Outcome killed = run_confined(*f, [] { return ::syscall(SYS_getpgid, 0L); });
  EXPECT_FALSE(killed.reported);
  EXPECT_EQ(killed.signal, SIGSYS) << killed;

  // Without errnoRet, SCMP_ACT_ERRNO uses defaultErrnoRet.
  Outcome dup_high = run_confined(*f, [] { return ::syscall(SYS_dup, 100L); });
  EXPECT_TRUE(dup_high.reported && dup_high.ret == -1 && dup_high.err == 13) << dup_high;
  Outcome dup_low = run_confined(*f, [] { return ::syscall(SYS_dup, 1L); });
  EXPECT_TRUE(dup_low.reported && dup_low.ret >= 0) << dup_low;

  // (mode & 7) == 2 is refused; (mode & 7) == 0 is not.
  Outcome masked = run_confined(*f, [] { return ::syscall(SYS_umask, 022L); });
  EXPECT_TRUE(masked.reported && masked.ret == -1 && masked.err == 7) << masked;
  Outcome unmasked = run_confined(*f, [] { return ::syscall(SYS_umask, 020L); });
  EXPECT_TRUE(unmasked.reported && unmasked.ret >= 0) << unmasked;
}

// Comparisons on distinct arguments are ANDed; a repeated argument index
// turns each comparison into a rule of its own (ORed), as in Docker/runc.
TEST(SeccompEnforce, ArgumentComparisonsCombineLikeDocker) {
  auto f = sc::compile(R"({
    "defaultAction": "SCMP_ACT_ALLOW",
    "syscalls": [
      {"names": ["dup"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42,
       "args": [{"index": 0, "value": 500, "op": "SCMP_CMP_EQ"},
                {"index": 0, "value": 501, "op": "SCMP_CMP_EQ"}]},
      {"names": ["dup3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 43,
       "args": [{"index": 0, "value": 500, "op": "SCMP_CMP_EQ"},
                {"index": 1, "value": 600, "op": "SCMP_CMP_EQ"}]}
    ]})");
  ASSERT_TRUE(f) << f.error().what();
  for (long fd : {500L, 501L}) {
    Outcome o = run_confined(*f, [fd] { return ::syscall(SYS_dup, fd); });
    EXPECT_TRUE(o.reported && o.ret == -1 && o.err == 42) << "dup(" << fd << "): " << o;
  }
  Outcome other = run_confined(*f, [] { return ::syscall(SYS_dup, 502L); });
  EXPECT_TRUE(other.reported && other.ret == -1 && other.err == EBADF) << other;

  Outcome both = run_confined(*f, [] { return ::syscall(SYS_dup3, 500L, 600L, 0L); });
  EXPECT_TRUE(both.reported && both.ret == -1 && both.err == 43) << both;
  Outcome one = run_confined(*f, [] { return ::syscall(SYS_dup3, 500L, 601L, 0L); });
  EXPECT_TRUE(one.reported && one.ret == -1 && one.err == EBADF) << one;
}

// A NETLINK_KOBJECT_UEVENT socket would receive the host's device events:
// refused, while other netlink sockets and ordinary families still work.
TEST(SeccompEnforce, UeventSocketsAreRefused) {
  const sc::Filter& f = default_filter();
  auto open_socket = [](int family, int type, int proto) {
    return [=] {
      long fd = ::socket(family, type | SOCK_CLOEXEC, proto);
      if (fd >= 0) ::close(static_cast<int>(fd));
      return fd >= 0 ? 0L : fd;
    };
  };
  Outcome uevent = run_confined(f, open_socket(AF_NETLINK, SOCK_RAW, NETLINK_KOBJECT_UEVENT));
  EXPECT_TRUE(uevent.reported && uevent.ret == -1 && uevent.err == EPERM) << uevent;
  Outcome dgram = run_confined(f, open_socket(AF_NETLINK, SOCK_DGRAM, NETLINK_KOBJECT_UEVENT));
  EXPECT_TRUE(dgram.reported && dgram.ret == -1 && dgram.err == EPERM) << dgram;
  Outcome route = run_confined(f, open_socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE));
  EXPECT_TRUE(route.reported && route.ret == 0) << route;
  Outcome inet = run_confined(f, open_socket(AF_INET, SOCK_STREAM, 0));
  EXPECT_TRUE(inet.reported && inet.ret == 0) << inet;
  Outcome unix_socket = run_confined(f, open_socket(AF_UNIX, SOCK_STREAM, 0));
  EXPECT_TRUE(unix_socket.reported && unix_socket.ret == 0) << unix_socket;
}

// The kernel reads only the low 32 bits of socket()'s int arguments: a
// family or protocol with high bits set must not slip past the rules.
TEST(SeccompEnforce, SocketArgumentsWithHighBitsAreRefused) {
  const sc::Filter& f = default_filter();
  auto raw = [](long family, long type, long proto) {
    return [=] {
      long fd = ::syscall(SYS_socket, family, type, proto);
      if (fd >= 0) ::close(static_cast<int>(fd));
      return fd >= 0 ? 0L : fd;
    };
  };
  const long high = 1L << 32;
  Outcome vsock = run_confined(f, raw(high | AF_VSOCK, SOCK_STREAM, 0));
  EXPECT_TRUE(vsock.reported && vsock.ret == -1 && vsock.err == EPERM) << vsock;
  Outcome uevent = run_confined(f, raw(high | AF_NETLINK, SOCK_RAW, NETLINK_KOBJECT_UEVENT));
  EXPECT_TRUE(uevent.reported && uevent.ret == -1 && uevent.err == EPERM) << uevent;
  Outcome proto = run_confined(f, raw(AF_NETLINK, SOCK_RAW, high | NETLINK_KOBJECT_UEVENT));
  EXPECT_TRUE(proto.reported && proto.ret == -1 && proto.err == EPERM) << proto;
  Outcome plain_vsock = run_confined(f, raw(AF_VSOCK, SOCK_STREAM, 0));
  EXPECT_TRUE(plain_vsock.reported && plain_vsock.ret == -1 && plain_vsock.err == EPERM)
      << plain_vsock;
}

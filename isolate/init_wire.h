// The wire between the library and a sandbox's init (cloister-init), internal
// to isolate/. Both ends are built from this one header, into the same
// build, so there is no compatibility to keep: a version word only catches
// an init from another build.
//
// The init starts with two fds: its end of a unix stream socket (argv[1]
// names the number) and the write end of the report pipe (argv[2]). It reads:
//   1. SetupHeader, then body_len bytes of setup (SetupFixed, then the
//      arrays it counts, then the string table), then nfds fds in messages of
//      one byte each carrying up to kMaxPassFds fds (SCM_RIGHTS);
//   2. when the setup says kSetupWaitGo: one byte with zero or one fd (the
//      network namespace the library made meanwhile), once the library has
//      put the init into its v1 cgroups;
//   3. CallHeader with the command's fds, then its strings (argv, envp, exec
//      candidates, work dir, beneath dir, rest below it).
// It answers on two pipes:
//   report - a Report when a step fails; EOF (every write end closed) when
//            the payload has exec'd;
//   status - (its write end comes with the setup) an InitStatus when the
//            payload has exited.
// Nothing else reaches the init, and the payload holds neither pipe.
#pragma once

#include <linux/filter.h>

#include <cstdint>

namespace cloister {

// The steps of the init, in order; reported with errno when one fails.
enum class SpawnStep : int32_t {
  None = 0,
  ExecInit,  // the clone child's execveat of the init program
  Setup,     // receiving and checking the setup
  Command,
  Loopback,  // joining the network namespace
  Mounts,
  Hostname,
  Rlimits,
  Sysctl,        // detail: the index of the setting
  Go,            // waiting for the library's go (cgroup attach, network)
  CgroupNs,      // a cgroup namespace rooted at the sandbox's own cgroup
  UserNs,        // joining the payload's user namespace
  UserNsLimits,  // an unprivileged sandbox's own bounds on its user's counters
  BoundingSet,
  NoNewPrivs,
  Seccomp,
  Groups,
  Gid,
  Uid,
  Capabilities,
  WorkDir,
  ForkPayload,
  Stdio,
  Exec,
  Console,  // the pty of an OCI container's terminal (kCallConsole)
  Start,    // an OCI container waiting for `start` (kCallGate)
};

namespace wire {

constexpr uint32_t kSetupMagic = 0x636c7369;  // "clsi"
constexpr uint32_t kCallMagic = 0x636c7331;   // "cls1"
// Bumped with every change of a struct below.
constexpr uint32_t kVersion = 9;
constexpr uint32_t kMaxBody = 64u << 20;
constexpr uint32_t kNoString = 0xffffffffu;
// Exit code of an init that failed before its payload ran; the reason
// travels on the report pipe, so this only has to be recognisable in ps.
constexpr int kSetupFailedExit = 125;

struct Report {
  int32_t step;  // SpawnStep
  int32_t err;
  int32_t detail;  // a step's own detail: the failing mount op, rlimit, fd
};

struct InitStatus {
  int32_t wait_status;
  int32_t alone;        // no other process is left in the sandbox
  int64_t max_rss_kib;  // the largest resident set among the reaped processes
  int64_t cpu_usec;     // their user and system time, for sandboxes without a cgroup
};

struct SetupHeader {
  uint32_t magic;
  uint32_t version;
  uint32_t body_len;
  uint32_t nfds;
};

// SetupFixed::flags
constexpr uint32_t kSetupNoNewPrivs = 1;
constexpr uint32_t kSetupWaitGo = 2;          // a go message comes after the setup
constexpr uint32_t kSetupBackgroundExit = 4;  // the library reaps us on its reaper thread
// An unprivileged sandbox (SpawnSpec::unprivileged): the clone made our user
// namespace (setgroups is denied in it), and our network namespace, whose lo
// we bring up ourselves where kSetupLoopbackUp says so; CloneTree ops make
// the mount sources' trees (none are passed).
constexpr uint32_t kSetupOwnUserns = 8;
constexpr uint32_t kSetupLoopbackUp = 16;
// An unprivileged sandbox: setgroups is denied to us (the clone child or
// the library wrote "deny" before the gid map), the user's groups stay.
constexpr uint32_t kSetupDenySetgroups = 32;
// A container of the OCI runtime (tools/cloister-oci.cc): the init outlives
// the process that made it, so it has no parent-death signal; its command
// brings a start gate (kCallGate), and at the payload's exit it exits with
// the payload's status (its code, or 128 + the signal that killed it) for
// whoever reaps it (containerd's shim, conmon), instead of a status pipe.
constexpr uint32_t kSetupDetached = 64;
// An `exec` into a running OCI container: instead of making namespaces,
// mounts and a hostname, the init joins the container's (setns through the
// pidfd at fd_join: mount, ipc, uts, net, pid and cgroup; its user
// namespace through fd_userns as always), keeps the rest of its steps
// (rlimits, bounding set, no_new_privs, seccomp, ids, capabilities), and
// forks the process into the container's pid namespace. Always detached.
constexpr uint32_t kSetupJoin = 128;
// The init is in its own network namespace before its Sysctl step (cloned
// into it, or joining fd_netns at Loopback), not given one only at Go: net.*
// sysctls are refused without it, so that none can reach the host's.
constexpr uint32_t kSetupOwnNetnsFirst = 256;

struct SetupFixed {
  uint64_t capabilities;  // the set the payload keeps
  uint32_t flags;
  int32_t last_cap;  // /proc/sys/kernel/cap_last_cap, read by the library
  uint32_t uid, gid;
  uint32_t ngroups, nrlimits, nops, nfilter;
  uint32_t strings_len;
  uint32_t hostname;  // offset in the string table
  // Sysctls: nsysctls pairs of strings (a /proc/sys path, its value), one
  // after the other in the string table from offset sysctls.
  uint32_t sysctls, nsysctls;
  // Indices into the fds received, -1 when absent.
  int32_t fd_status, fd_netns, fd_tpl_ns, fd_tpl_root, fd_userns, fd_join;
  // An ipc and a uts namespace to join (SpawnSpec::ipc_ns_path, uts_ns_path)
  // at the Loopback step instead of the clone's new ones, or -1.
  int32_t fd_ipcns, fd_utsns;
  int32_t fd_trees;  // the mount sources' trees (WireOp::tree counts from here)
  uint32_t ntrees;
  // Unprivileged: the bounds of our own user namespace's inotify counters
  // (/proc/sys/user/max_inotify_*), 0 = as inherited.
  uint32_t max_inotify_instances, max_inotify_watches;
};

struct WireRlimit {
  int32_t resource;
  uint32_t pad;
  uint64_t soft, hard;
};

struct WireOp {
  uint8_t kind;  // mounts::OpKind
  uint8_t optional;
  uint8_t in_volume;
  uint8_t pad;
  int32_t tree;  // MoveTree: index among the trees, or -1
  uint32_t mode;
  uint64_t flags, dev;
  uint32_t src, path, data;  // string offsets or kNoString
  uint32_t pad2;
};

// The body, in order: SetupFixed, uint32_t groups[ngroups], WireRlimit
// [nrlimits], WireOp[nops], sock_filter[nfilter], char strings[strings_len]
// (NUL-terminated strings; the last byte is NUL).

// CallHeader::flags: which fds came with it (in this order), and more.
// kCallGate (detached inits): once set up the init writes a Report with
// step None on the report pipe ("created") and waits for one byte on this
// fd (a FIFO of the runtime's state dir, opened read-write) before it runs
// the payload. kCallConsole: a unix socket over which the init sends the
// master of a pty it opens in the sandbox's own devpts; the slave becomes
// the payload's stdio and controlling terminal, of rows x cols.
constexpr uint32_t kCallStdin = 1, kCallStdout = 2, kCallStderr = 4, kCallExecFd = 8,
                   kCallExecFdInherit = 16, kCallTty = 32, kCallBeneath = 64, kCallGate = 128,
                   kCallConsole = 256;
constexpr uint32_t kCallFdFlags =
    kCallStdin | kCallStdout | kCallStderr | kCallExecFd | kCallGate | kCallConsole;
constexpr size_t kCallMaxFds = 6;

struct CallHeader {
  uint32_t magic;
  uint32_t body_len;
  uint32_t argc, envc, ncand;
  uint32_t flags;
  uint16_t rows, cols;  // kCallConsole: the terminal's size (0: the kernel's default)
  uint32_t umask;       // applied before the payload runs; kNoUmask leaves the init's
};
constexpr uint32_t kNoUmask = 0xffffffffu;

}  // namespace wire
}  // namespace cloister

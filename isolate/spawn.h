// The spawn pipeline: one function that applies every isolation module in a
// fixed order.
//
// Parent, before the clone (Sandbox::prepare, once per executor): validate
// the spec, compile seccomp to BPF, build the mount plan and the netlink
// request for lo. Per spawn: create the process's cgroup, build argv/envp and
// the exec candidates, then clone3(CLONE_PIDFD | CLONE_INTO_CGROUP |
// CLONE_NEW{PID,NS,IPC,UTS,CGROUP[,NET]}).
//
// Child (PID 1 of its pid namespace), async-signal-safe steps only, each
// failure reported to the parent as {step, errno, detail} over a close-on-exec
// pipe: death signal, wait for the parent (cgroup attach), lo up, mounts and
// pivot_root, hostname, rlimits, bounding set, no_new_privs, seccomp, groups,
// gid, uid, capabilities, work dir. Then it forks the payload (which takes its
// stdio, closes every other fd and execs) and stays behind as init: it reaps
// zombies, forwards signals to the payload and, when the payload exits, hands
// its wait status to the parent and exits, which takes down everything else
// in the namespace.
//
// Successful exec is seen by the parent as EOF on the report pipe, so spawn()
// returns only once the command runs (or has failed to start).
#pragma once

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isolate/cgroups.h"
#include "isolate/error.h"
#include "isolate/fd.h"
#include "isolate/mounts.h"
#include "isolate/network.h"
#include "isolate/seccomp.h"
#include "isolate/spec.h"

namespace cloister {

// The steps of the child, in order; reported with errno when one fails.
enum class SpawnStep : int32_t {
  None = 0,
  WaitParent,
  Signals,
  Loopback,
  Mounts,
  Hostname,
  Rlimits,
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
};
std::string_view step_name(SpawnStep step);

// The fds the payload gets as 0, 1 and 2; -1 means /dev/null.
struct Stdio {
  int in = -1;
  int out = -1;
  int err = -1;
  // in is a pty slave: the payload makes it its controlling terminal
  // (TIOCSCTTY after setsid).
  bool controlling_tty = false;
};

// A sandbox description compiled for spawning: immutable, shareable between
// threads, reused for every command of an executor.
class Sandbox {
 public:
  static Result<std::shared_ptr<const Sandbox>> prepare(const SpawnSpec& spec);
  const SpawnSpec& spec() const { return spec_; }

 private:
  friend class Spawned;
  friend Result<class Spawned> spawn(const Sandbox&, const Command&, const Stdio&,
                                     cgroups::Manager*);
  SpawnSpec spec_;
  mounts::MountPlan mounts_;
  seccomp::Filter filter_;
  std::optional<network::LoopbackUp> loopback_;
  uint64_t clone_flags_ = 0;
};

// A running sandbox: its init process and its cgroup.
class Spawned {
 public:
  Spawned(Spawned&& o) noexcept { *this = std::move(o); }
  Spawned& operator=(Spawned&& o) noexcept;
  ~Spawned();  // kills and reaps if still running, removes the cgroup

  pid_t pid() const { return pid_; }  // the init, in the caller's pid namespace
  int pidfd() const { return pidfd_.get(); }

  // Sends sig to the payload (through init). SIGKILL kills the whole tree.
  Status signal(int sig);
  // SIGKILL to every process of the sandbox (init, then its cgroup).
  Status kill();
  // Non-blocking when the init has exited (pidfd readable), blocking otherwise.
  // Returns the payload's raw wait status; an init killed before its payload
  // exited counts as the payload killed by that signal.
  Result<int> reap();
  bool reaped() const { return reaped_; }
  // Usage of the whole tree (from its cgroup; peak memory from the largest
  // process when no memory cgroup counts it); call after reap().
  Result<cgroups::Usage> usage() const;
  // Removes the cgroup (after reap). Idempotent.
  Status release();

 private:
  friend Result<Spawned> spawn(const Sandbox&, const Command&, const Stdio&, cgroups::Manager*);
  Spawned() = default;
  pid_t pid_ = -1;
  Fd pidfd_;
  Fd status_;  // the init writes the payload's wait status here
  std::optional<cgroups::Cgroup> cgroup_;
  bool reaped_ = false;
  int wait_status_ = 0;
  uint64_t max_rss_ = 0;
};

// Runs command in a new instance of sandbox. With a null manager the process
// gets no cgroup (no limits, no usage) - for callers that cannot create one.
// The clone happens on a long-lived thread of the library when called from
// any thread but the main one, because the death signal follows the thread
// that cloned.
Result<Spawned> spawn(const Sandbox& sandbox, const Command& command, const Stdio& stdio,
                      cgroups::Manager* cgroups);

}  // namespace cloister

// The spawn pipeline: one function that applies every isolation module in a
// fixed order.
//
// Parent, before the clone (Sandbox::prepare, once per executor): validate
// the spec, compile seccomp to BPF, build the mount plan and the netlink
// request for lo. Per spawn: take the executor's warm init, or create the
// process's cgroup and clone3(CLONE_PIDFD | CLONE_INTO_CGROUP |
// CLONE_NEW{PID,IPC,UTS,CGROUP}, and CLONE_NEWNS without a mount template),
// making its network namespace meanwhile unless the pool had one. Then send
// it the command (argv, envp, exec candidates, work dir, stdio fds) over its
// control socket.
//
// Child (PID 1 of its pid namespace), async-signal-safe steps only, each
// failure reported to the parent as {step, errno, detail} over a close-on-exec
// pipe: death signal, the pool's network namespace, mounts and pivot_root (or
// the template), hostname, rlimits, the parent's go (cgroup attach, its
// network namespace), bounding set, no_new_privs, seccomp, groups, gid, uid,
// capabilities, the command, work dir. Then it forks the payload (which takes
// its stdio, closes every other fd and execs) and stays behind as init: it
// reaps zombies, forwards signals to the payload and, when the payload exits,
// hands its wait status to the parent and exits, which takes down everything
// else in the namespace.
//
// Successful exec is seen by the parent as EOF on the report pipe, so spawn()
// returns only once the command runs (or has failed to start). The init
// tells whether it is alone when the payload exits; the caller can then take
// the exit status at once and leave the init's exit (the teardown of the
// namespaces, half a millisecond or more) to a reaper thread (retire()).
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
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
  Command,
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

struct PendingInit;

// A sandbox description compiled for spawning: immutable, shareable between
// threads, reused for every command of an executor.
//
// From its second spawn on, a sandbox keeps one init ready ("warm"): cloned
// and set up (namespaces, mounts, cgroup, credentials, seccomp) by a thread
// of the library while the previous command runs, waiting only for its
// command. A spawn then sends the command and the stdio fds over the init's
// control socket and is done once the payload execs. The warm init is
// killed when the sandbox goes (its last Executor and Process).
class Sandbox : public std::enable_shared_from_this<Sandbox> {
 public:
  static Result<std::shared_ptr<const Sandbox>> prepare(const SpawnSpec& spec);
  const SpawnSpec& spec() const { return spec_; }
  const mounts::MountPlan& mounts() const { return mounts_; }
  Sandbox();
  ~Sandbox();

 private:
  friend class Spawned;
  friend Result<class Spawned> spawn(const Sandbox&, const Command&, const Stdio&,
                                     const std::shared_ptr<cgroups::Manager>&);
  // The mount template (MountPlan::build_template), from the second spawn on
  // (a one-shot caller never pays for building it) and rebuilt when the
  // host's mount table changes; null when the plan has none.
  std::shared_ptr<const mounts::MountTemplate> mount_template(uint64_t* gen) const;
  // Counts the changes of the host's mount table seen so far.
  uint64_t mount_generation() const;
  uint64_t mount_generation_locked() const;
  // Clones an init and lets it set itself up; its command comes later.
  Result<std::unique_ptr<PendingInit>> start_init(cgroups::Manager* cgroups) const;
  // A warm init for this cgroup manager, if there is one.
  std::unique_ptr<PendingInit> take_warm(const cgroups::Manager* cgroups) const;
  friend class Prestarter;

 public:
  // Warm inits an executor keeps once it has started two sandboxes. Two, so
  // that a caller starting sandboxes back to back finds one ready while
  // the one it just took is replaced: with one, every such start waited for
  // the whole set-up of the next init (0.8 ms at the median here).
  static constexpr size_t kWarmInits = 2;
  // Asks the library's prestart thread to fill the executor's warm inits,
  // from the second spawn on. Called when a payload has exited: the inits
  // then set themselves up while nothing of ours runs, rather than slowing
  // the payload down.
  void refill(const std::shared_ptr<cgroups::Manager>& cgroups) const;

 private:
  SpawnSpec spec_;
  mounts::MountPlan mounts_;
  mutable std::mutex template_mu_;
  mutable std::shared_ptr<const mounts::MountTemplate> template_;
  mutable Fd mountinfo_;  // polled for changes of the host's mount table
  mutable int template_uses_ = 0;
  mutable uint64_t mount_gen_ = 0;
  mutable uint64_t template_gen_ = 0;
  mutable bool template_broken_ = false;
  mutable std::mutex warm_mu_;
  mutable std::deque<std::unique_ptr<PendingInit>> warm_;
  mutable bool warming_ = false;  // the prestart thread is cloning one
  mutable std::condition_variable warm_cv_;
  mutable int spawns_ = 0;
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
  // Readable when the init has news: the payload's exit, or EOF when the
  // init died first. -1 once read.
  int status_fd() const { return status_.get(); }
  // Call when status_fd() is readable. True when the payload has exited and
  // nothing else is left in the sandbox: its status is final (exit_status())
  // and only the init's own exit, which tears the namespaces down, remains;
  // retire() leaves that to the reaper thread. False: wait for the pidfd.
  bool read_exit();
  // The payload's exit status is known: reaped, or a true read_exit().
  bool exited() const { return reaped_ || alone_; }
  // The payload's raw wait status, after reap() or a true read_exit().
  int exit_status() const { return wait_status_; }
  // Usage of the whole tree (from its cgroup; peak memory from the largest
  // process when no memory cgroup counts it); call after reap() or a true
  // read_exit().
  Result<cgroups::Usage> usage() const;
  // Removes the cgroup (after reap). Idempotent.
  Status release();
  // Hands a sandbox whose exit was read (read_exit()) to the library's reaper
  // thread, which reaps the init and removes the cgroup once the init is
  // gone: the teardown of its namespaces then costs the caller nothing.
  // Anything else is killed and reaped here, as by the destructor.
  static void retire(Spawned&& s);
  // Blocks until the reaper has finished every sandbox retired so far, and
  // the prestart thread and the network namespace pool are idle: after it no
  // init and no cgroup of theirs is left, nor of sandboxes (Executors)
  // already dropped, and no fd of the library's is in flight (tests, and
  // programs about to exit).
  static void drain_retired();
  // Off: retire() finishes the teardown itself, on the caller's thread. For
  // a program that starts one sandbox and exits (`cloister exec`): it has to
  // wait for the teardown anyway, and its first thread would cost more than
  // the wait (its page faults and exit then involve the other CPUs).
  static void set_background_teardown(bool on);

 private:
  friend Result<Spawned> spawn(const Sandbox&, const Command&, const Stdio&,
                               const std::shared_ptr<cgroups::Manager>&);
  friend struct PendingInit;
  friend Result<std::unique_ptr<PendingInit>> clone_init(
      const SpawnSpec&, const mounts::MountPlan&, const seccomp::Filter&,
      const network::LoopbackUp*, uint64_t, std::shared_ptr<const mounts::MountTemplate>,
      cgroups::Manager*);
  friend Result<Spawned> give_command(PendingInit&, const Sandbox&, const Command&, const Stdio&);
  Spawned() = default;
  pid_t pid_ = -1;
  Fd pidfd_;
  Fd status_;  // the init writes the payload's wait status here
  std::optional<cgroups::Cgroup> cgroup_;
  bool reaped_ = false;
  bool exit_read_ = false;    // the status pipe was read
  bool got_message_ = false;  // and held the init's message
  bool alone_ = false;
  int wait_status_ = 0;
  uint64_t max_rss_ = 0;
};

// Runs command in a new instance of sandbox. With a null manager the process
// gets no cgroup (no limits, no usage) - for callers that cannot create one.
// The clone happens on a long-lived thread of the library when called from
// any thread but the main one, because the death signal follows the thread
// that cloned.
Result<Spawned> spawn(const Sandbox& sandbox, const Command& command, const Stdio& stdio,
                      const std::shared_ptr<cgroups::Manager>& cgroups);

// The library's internals behind spawn(), declared for friendship.
Result<std::unique_ptr<PendingInit>> clone_init(const SpawnSpec&, const mounts::MountPlan&,
                                                const seccomp::Filter&, const network::LoopbackUp*,
                                                uint64_t,
                                                std::shared_ptr<const mounts::MountTemplate>,
                                                cgroups::Manager*);
Result<Spawned> give_command(PendingInit&, const Sandbox&, const Command&, const Stdio&);

}  // namespace cloister

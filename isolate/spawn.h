// The spawn pipeline: one function that applies every isolation module in a
// fixed order.
//
// Parent, before the clone (Sandbox::prepare, once per executor): validate
// the spec, compile seccomp to BPF, build the mount plan and the netlink
// request for lo, and encode all of it as the init's setup message
// (isolate/init_wire.h). Per spawn: take the executor's warm init
// (isolate/warm_pool.h), or create the process's cgroup, pin the mount
// sources by fd (unless the mount template, isolate/mount_template.h, serves)
// and clone3(CLONE_PIDFD | CLONE_INTO_CGROUP | CLONE_VM | CLONE_VFORK |
// CLONE_NEW{PID,IPC,UTS}, and CLONE_NEWNS without a template). The child of
// the clone does nothing but exec the init program from its sealed memfd
// (isolate/init_program.h), with an empty environment and only its two fds:
// the sandbox's PID 1 is cloister-init (isolate/init.cc), never a copy of the
// caller. The library sends it its setup, makes its network namespace
// meanwhile unless the pool had one, attaches it to its v1 cgroups and lets
// it go; then sends the command (argv, envp, exec candidates, work dir,
// stdio fds) over its control socket.
//
// The init's steps, failures reported as {step, errno, detail}, are listed in
// isolate/init.cc. Successful exec is seen by the parent as EOF on the report
// pipe, so spawn() returns only once the command runs (or has failed to
// start).
//
// Exits: the init tells the payload's wait status, and whether it is alone,
// on a pipe only it holds; it is non-dumpable, so the payload can reach
// neither its memory nor that pipe. The caller may then take the exit
// status at once, after ending the sandbox (Spawned::end(): SIGKILL to the
// init, which ends its pid namespace, and cgroup.kill), and leave the
// init's exit (the teardown of the namespaces, half a millisecond or more)
// to a reaper thread (retire()).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "isolate/cgroups.h"
#include "isolate/error.h"
#include "isolate/fd.h"
#include "isolate/init_wire.h"
#include "isolate/mount_template.h"
#include "isolate/mounts.h"
#include "isolate/network.h"
#include "isolate/spec.h"
#include "isolate/warm_pool.h"

namespace cloister {

std::string_view step_name(SpawnStep step);

// The fds the payload gets as 0, 1 and 2; -1 means /dev/null.
struct Stdio {
  int in = -1;
  int out = -1;
  int err = -1;
  // in is a pty slave: the payload makes it its controlling terminal
  // (TIOCSCTTY after setsid).
  bool controlling_tty = false;
  // A connected unix socket, or -1: the init opens a pty in the sandbox's
  // own devpts (so that the payload's tty(1), ttyname and /dev/pts name it),
  // sends its master here before the payload's exec, checked to be a pty
  // multiplexer, and gives the payload its slave as stdio and controlling
  // terminal, of rows x cols (0: the kernel's default). Replaces in, out
  // and err.
  int console = -1;
  uint16_t rows = 0, cols = 0;
};

struct PendingInit;
// The library's internals behind spawn() and create_detached() (spawn.cc).
struct SpawnInternals;

// A running sandbox for a new process to join (`exec` into it), from
// Spawned::join_point or an OCI container's state: its init's pidfd, the
// user namespace its payload runs in (empty: none of its own), the cgroup
// the joined process is cloned into and counted against, and the ids of
// that user namespace where they are not the spec's (a pool's slot).
struct Join {
  Fd pidfd;
  Fd userns;
  std::optional<cgroups::Cgroup> cgroup;  // borrowed: dropping it leaves the cgroup
  std::optional<userns::Map> ids;
};

// How long spawn_joined waits for the joined payload's exec. The sandbox's
// own processes can hold it up (a SIGSTOP to the new process before its
// exec, a FUSE mount over its work dir or command that never answers), so
// the wait is bounded; at the deadline the joined init is killed and the
// spawn fails with TIMEOUT.
constexpr std::chrono::milliseconds kJoinStartDeadline{10000};

// An OCI container (tools/cloister-oci.cc): its init outlives the caller
// (no parent-death signal, so that whoever reaps orphans - containerd's
// shim, conmon - gets it), and waits after its setup until one byte
// arrives on gate before it runs the command; its exit status is the
// payload's (code, or 128 + signal).
struct Detach {
  int gate = -1;     // the read end the init waits on (a FIFO opened O_RDWR)
  int console = -1;  // a connected unix socket for the pty master, or -1
  uint16_t rows = 0, cols = 0;
  std::optional<mode_t> umask;
  // The cgroup, relative to the manager's base, made for the container
  // and left in place (cgroups::Manager::create's name).
  std::string cgroup;
  // `exec`: join this running container instead of making one
  // (wire::kSetupJoin); no gate, and the call returns once the process
  // runs.
  Join* join = nullptr;
};
// A created container: its init, set up and waiting for its gate.
struct Created {
  pid_t pid = -1;
  std::vector<std::string> cgroup_paths;  // absolute directories, one per hierarchy
};

// A sandbox description compiled for spawning: immutable, shareable between
// threads, reused for every command of an executor.
//
// From its second spawn on, a sandbox keeps warm inits (isolate/warm_pool.h):
// exec'd and set up (namespaces, mounts, cgroup, credentials, seccomp) by a
// thread of the library while the previous command runs, waiting only for
// their command. A spawn then sends the command and the stdio fds over the
// init's control socket and is done once the payload execs. Warm inits are
// killed when the sandbox goes (its last Executor and Process).
class Sandbox : public std::enable_shared_from_this<Sandbox> {
 public:
  static Result<std::shared_ptr<const Sandbox>> prepare(const SpawnSpec& spec);
  const SpawnSpec& spec() const { return spec_; }
  const mounts::MountPlan& mounts() const { return mounts_; }
  Sandbox();
  ~Sandbox();

  // Warm inits an executor keeps once it has started two sandboxes
  // (WarmPool::kInits).
  static constexpr size_t kWarmInits = WarmPool::kInits;
  // Asks the library's prestart thread to fill the executor's warm inits,
  // from the second spawn on. Called when a payload has exited: the inits
  // then set themselves up while nothing of ours runs, rather than slowing
  // the payload down.
  void refill(const std::shared_ptr<cgroups::Manager>& cgroups) const;

 private:
  friend class Prestarter;
  friend struct SpawnInternals;
  // Clones an init and lets it set itself up; its command comes later.
  Result<std::unique_ptr<PendingInit>> start_init(cgroups::Manager* cgroups) const;

  SpawnSpec spec_;
  mounts::MountPlan mounts_;
  // The payload's user namespace (spec_.userns), or -1 for none.
  Result<int> userns_fd() const;
  mutable std::mutex userns_mu_;
  mutable Fd userns_;
  mutable Fd userns_hold_;  // userns::hold_shared over userns_'s range
  mutable Status userns_error_;
  TemplateCache templates_{&mounts_, &userns_};
  mutable WarmPool warm_;
  std::optional<network::LoopbackUp> loopback_;
  uint64_t clone_flags_ = 0;
  // The init's setup body (init_wire.h), encoded once: for the full mount
  // plan, and for the template's per-sandbox part (empty without one).
  std::string setup_full_, setup_templated_;
  // With a range per sandbox (SpawnSpec::userns_pool): the plan and setup
  // of each slot other than the pool's first (only the owners of the
  // tmpfs mounts differ), made at the slot's first use.
  struct SlotSetup {
    mounts::MountPlan mounts;
    std::string setup;
  };
  Result<std::shared_ptr<const SlotSetup>> slot_setup(const userns::Map& m) const;
  mutable std::mutex slots_mu_;
  mutable std::map<uint32_t, std::shared_ptr<const SlotSetup>> slots_;
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
  // SIGKILL to every process of the sandbox (init, then its cgroup); returns
  // once the cgroup is empty.
  Status kill();
  // Ends the sandbox without waiting: SIGKILL to the init (the kernel then
  // kills every process of its pid namespace, which no payload can leave)
  // and to the cgroup (cgroup.kill, where there is one). Called before an
  // exit is reported, so that nothing of the sandbox outlives the report,
  // whatever the init said.
  void end();
  // What end() writes to the cgroup, for a thread that ends the sandbox at a
  // deadline while its owner may be tearing it down (Process's watchdog).
  cgroups::Cgroup::Killer killer() const {
    return cgroup_ ? cgroup_->killer() : cgroups::Cgroup::Killer{};
  }
  // A joined process whose cgroup (its own, below the sandbox's) holds its
  // payload's tree and not its init: kill(), end() and killer() end that
  // tree and leave the init, which reaps it and exits. (Killed first, the
  // init, outside the sandbox's pid namespace, would hand its payload's
  // zombie to the host's init, and the sandbox's teardown would wait until
  // that reaps it.) Its init must then not be sent SIGKILL.
  bool ends_by_cgroup() const { return payload_cgroup_; }
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
  // process when no memory cgroup counts it, cpu time from the processes the
  // init reaped when there is no cgroup); call after reap() or a true
  // read_exit().
  Result<cgroups::Usage> usage() const;
  // While it runs: what the tree uses now (zeros without a cgroup), and its
  // processes as host pids (the cgroup's, else the init and its descendants
  // by /proc/PID/task/TID/children). Empty once reaped.
  Result<cgroups::Live> live() const;
  Result<std::vector<pid_t>> pids() const;
  // Removes the cgroup (after reap). Idempotent.
  Status release();
  // What a process needs to join this sandbox while it runs (spawn_joined),
  // owned: it may be used after this Spawned went (the join then fails).
  // INVALID once the payload has exited.
  Result<Join> join_point() const;
  // Hands a sandbox whose exit was read (read_exit()) to the library's reaper
  // thread, which reaps the init and removes the cgroup once the init is
  // gone: the teardown of its namespaces then costs the caller nothing.
  // Anything else is killed and reaped here, as by the destructor.
  static void retire(Spawned&& s);
  // SIGKILL to the sandbox (end()) and, without waiting for it to die, to
  // the reaper, which reaps it whenever it is gone: for a caller that must
  // not wait on a tree that makes its own death slow (a process in an
  // uninterruptible wait). With background teardown off, as the destructor.
  static void retire_killed(Spawned&& s);
  // Blocks until the reaper has finished every sandbox retired so far, and
  // the prestart thread and the network namespace pool are idle: after it no
  // init and no cgroup of theirs is left, nor of sandboxes (Executors)
  // already dropped, and no fd of the library's is in flight (tests, and
  // programs about to exit).
  static void drain_retired();
  // As drain_retired(), giving up on the reaper after `limit`: false then
  // (a sandbox still on its way out).
  static bool drain_retired_for(std::chrono::milliseconds limit);
  // Off: retire() finishes the teardown itself, on the caller's thread. For
  // a program that starts one sandbox and exits (`cloister exec`): it has to
  // wait for the teardown anyway, and its first thread would cost more than
  // the wait (its page faults and exit then involve the other CPUs).
  static void set_background_teardown(bool on);

 private:
  friend struct PendingInit;
  friend struct SpawnInternals;
  Spawned() = default;
  void kill_and_reap() noexcept;
  pid_t pid_ = -1;
  Fd pidfd_;
  Fd status_;  // the init writes the payload's wait status here
  std::optional<cgroups::Cgroup> cgroup_;
  // Holds the sandbox's uid range (userns::lease) until the init is reaped
  // (the destructor's body): closed with the members, after it.
  Fd userns_lease_;
  std::optional<userns::Map> ids_;  // its user namespace's, where not the spec's
  bool reaped_ = false;
  bool payload_cgroup_ = false;  // ends_by_cgroup()
  bool exit_read_ = false;       // the status pipe was read
  bool got_message_ = false;     // and held the init's message
  bool alone_ = false;
  int wait_status_ = 0;
  uint64_t max_rss_ = 0;
  uint64_t cpu_usec_ = 0;
};

// Runs command in a new instance of sandbox. With a null manager the process
// gets no cgroup (no limits, no usage) - for callers that cannot create one.
// The clone happens on a long-lived thread of the library when called from
// any thread but the main one, because the death signal follows the thread
// that cloned.
Result<Spawned> spawn(const Sandbox& sandbox, const Command& command, const Stdio& stdio,
                      const std::shared_ptr<cgroups::Manager>& cgroups);

// Runs command in the running sandbox `join` names (`exec` into it), set up
// as `sandbox` describes (the running one's: its user, capabilities,
// seccomp, rlimits, environment), in the running sandbox's namespaces,
// mounts and cgroup, which it does not make. The Spawned is the joined
// process's own init, in the caller's pid namespace, which forks the
// payload into the sandbox's: it has no cgroup of its own (the sandbox's
// is not removed with it, and counts its processes), its kill() ends the
// init and the payload (which dies with its init: a parent-death SIGKILL),
// and what the payload leaves behind stays in the sandbox, as `podman exec`
// leaves it, until the sandbox ends. Not for an unprivileged caller's
// sandbox, whose namespaces it could not enter.
Result<Spawned> spawn_joined(const Sandbox& sandbox, const Command& command, const Stdio& stdio,
                             Join join);

// Creates an OCI container: an init set up with the command and waiting
// for d.gate (see Detach). Returns once it waits, or with the error of the
// step that failed (nothing is then left: init killed, cgroup removed).
// A range per sandbox (userns_pool) is refused: its lease could not outlive
// this process.
Result<Created> create_detached(const Sandbox& sandbox, const Command& command, const Stdio& stdio,
                                cgroups::Manager* cgroups, const Detach& d);

}  // namespace cloister

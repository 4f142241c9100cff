// cgroups: one manager, two backends (v2 unified, v1 controllers), chosen by
// the layout found at startup from /proc/self/mounts (mounts under
// Options.mount_root) and /proc/self/cgroup:
//   Unified - cgroup2 at mount_root (or cgroup2 alone below it); limits, kill,
//             events there.
//   Hybrid  - v1 controllers at mount_root/<controller> plus a cgroup2 tree
//             (usually mount_root/unified) with few or no controllers; the
//             v2 tree tracks membership and kills (cgroup.kill), v1 enforces
//             limits and counts usage (memory, cpuacct).
//   Legacy  - v1 only; kill is freezer FROZEN + SIGKILL + THAWED.
// A controller mounted as v1 is used through v1; cgroup2 serves the others.
// Every process gets its own cgroup, created before the clone. On v2 the child
// enters it atomically (clone3 CLONE_INTO_CGROUP with clone_fd()); v1
// controllers need attach(pid) before the child is released. destroy() kills
// what is left, removes every directory and is idempotent.
//
// Limits: a limit whose controller is missing fails create() with an error
// naming the limit (kind INVALID). Two exceptions, by design: memory_high is
// ignored on v1 (no equivalent), io_weight is skipped where no weight file
// exists (it depends on the block I/O scheduler). docs/cgroups.md has the
// file each limit is written to.
//
// Delegation: cloister works below a base cgroup it owns: by default a
// "cloister" child of its own cgroup in each hierarchy (Options.base, relative
// to each hierarchy root, overrides). On cgroup2, controllers are enabled in
// cgroup.subtree_control from the root down to the base; when the runtime's
// own (non-root) cgroup must get controllers for its children, the runtime
// first moves itself into the leaf "<own>/cloister.runtime" (no-internal-
// process rule). Per process cgroups are named "<runtime pid>-<seq>" so that
// a later run can tell leftovers of a dead runtime from the live ones of
// another, and remove them (cleanup_stale; spawn() runs it once per manager, while its first child
// sets itself up).
//
// Threads: Manager is safe to share; create() may run concurrently. A Cgroup
// is used by one thread at a time. Blocking: kill()/destroy() wait up to 5 s
// for the cgroup to empty (ErrorKind::Timeout after that).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "isolate/devices.h"
#include "isolate/error.h"
#include "isolate/fd.h"

namespace cloister::cgroups {

enum class Layout { Unified, Hybrid, Legacy };
std::string_view layout_name(Layout);

struct Limits {
  uint64_t memory_max = 0;   // bytes; 0 = unlimited. Swap is limited to 0 alongside.
  uint64_t memory_high = 0;  // bytes; 0 = unset (v2 only; ignored on v1)
  uint64_t cpu_quota = 0;    // microseconds per cpu_period; 0 = unlimited
  uint64_t cpu_period = 100000;
  uint64_t pids_max = 0;    // 0 = unlimited
  uint32_t cpu_weight = 0;  // 1..10000, 0 = unset
  uint32_t io_weight = 0;   // 1..10000, 0 = unset; skipped without a weight file
  // cgroup v1 cpu.shares as given (2..262144, 0 = unset): the OCI runtime's
  // linux.resources.cpu.shares, written as is on v1 (runc reads it back),
  // converted to cpu.weight on v2 as runc converts it. Not with cpu_weight.
  uint64_t cpu_shares = 0;
  // cpuset.cpus and cpuset.mems ("0-3,6"; "" = as the parent): v1's cpuset
  // hierarchy (each new directory gets its parent's first) or v2's.
  std::string cpuset_cpus, cpuset_mems;
  // A device policy (isolate/devices.h: every device denied, then these
  // rules), through v1's devices controller or a cgroup2 device program.
  // None: the policy of the cgroup's parent. Set at create() only.
  std::optional<std::vector<devices::Rule>> devices;
  bool empty() const {
    return !memory_max && !memory_high && !cpu_quota && !pids_max && !cpu_weight && !io_weight &&
           !cpu_shares && cpuset_cpus.empty() && cpuset_mems.empty() && !devices;
  }
};

struct Usage {
  uint64_t cpu_usec = 0;     // user + system, whole tree
  uint64_t memory_peak = 0;  // bytes, 0 when the kernel does not say
  uint64_t oom_kills = 0;    // OOM kills inside this cgroup
};

// What a running tree uses now (`stats`); each read costs a file, so exits
// read only Usage. A figure the kernel lacks is 0.
struct Live {
  uint64_t memory_current = 0;  // bytes: memory.usage_in_bytes (v1) or memory.current
  uint64_t pids_current = 0;    // tasks: pids.current
  uint64_t io_read_bytes = 0;   // io.stat rbytes / blkio.throttle.io_service_bytes Read
  uint64_t io_write_bytes = 0;  // wbytes / Write
};

struct Options {
  // Base cgroup path relative to each hierarchy's root, e.g. "/cloister".
  // Empty: "<own cgroup>/cloister" per hierarchy.
  std::string base;
  // Root of the cgroup mounts; tests and the VM point this elsewhere.
  std::string mount_root = "/sys/fs/cgroup";
  // Hosts with v1 controllers: as root, mount a hierarchy with favordynmods
  // (see Manager::open in cgroups.cc and docs/cgroups.md) unless one has it.
  bool favor_dynmods = true;
  // Bound the base cgroup, where it has no limit of its own: all sandboxes
  // of this manager together get half of kernel.pid_max or threads-max (the
  // smaller) and MemTotal less a
  // tenth (at least 512 MiB) (docs/cgroups.md, "Base directories").
  bool bound_base = true;
  // Remove "<pid>-<seq>" leftovers of dead runtimes under the base
  // (cleanup_stale_once); off where the base is shared with others (the
  // OCI runtime's is the hierarchy's root).
  bool sweep_stale = true;
};

// What Manager::open passes to mount(2) to add favordynmods to a cgroup2
// mount whose /proc/self/mounts options are `options`, keeping all of them
// (a remount replaces the mount's flags and the hierarchy's options).
struct RemountArgs {
  unsigned long flags;  // MS_REMOUNT and the mount's flags
  std::string data;     // its other options, then favordynmods
};
RemountArgs favordynmods_remount(std::string_view options);

// The cgroup beside a sandbox's where the inits of execs into it live once
// their payloads are forked (Cgroup::move_to_exec_inits).
inline constexpr const char* kExecInits = "exec-inits";

class Cgroup {
 public:
  Cgroup(Cgroup&&) noexcept;
  Cgroup& operator=(Cgroup&&) noexcept;
  ~Cgroup();  // best-effort destroy()

  const std::string& name() const;
  // O_PATH|O_DIRECTORY fd of the v2 directory for CLONE_INTO_CGROUP, or -1.
  int clone_fd() const;
  // True when attach() must run before the child is let go (v1 controllers).
  bool needs_attach() const;
  // Writes pid into the v1 directories; into the v2 one too unless
  // entered_v2 says the process was cloned into it (CLONE_INTO_CGROUP).
  Status attach(pid_t pid, bool entered_v2 = true);
  // Moves pid, the init of an exec into this cgroup's sandbox whose payload
  // is forked (in a make_child of this one), into kExecInits, a cgroup2
  // directory beside this one made when missing and kept for good: out of
  // reach of this cgroup's kill, so that the sandbox's end leaves the inits
  // of its execs to reap their payloads (killed with the sandbox) and exit.
  // Killed with them, an init outside the sandbox's pid namespace would
  // hand its payload's zombie to the host's init, and the end of the
  // namespace would wait until that reaps it. (podman's conmon, an exec's
  // monitor, lives outside the container's cgroup too.)
  Status move_to_exec_inits(pid_t pid) const;
  // SIGKILL every process in the cgroup tree; returns once none is left.
  Status kill();
  // cgroup.kill where there is one, without waiting for the cgroup to empty.
  void kill_async();
  // kill_async() for a thread that must not touch the Cgroup (a deadline's
  // watchdog, while the owner may be destroying it): the files it writes,
  // opened now. fire() does nothing where there is no cgroup.kill, or once
  // the directory is gone.
  class Killer {
   public:
    void fire() const noexcept;
    explicit operator bool() const { return static_cast<bool>(kill_); }

   private:
    friend class Cgroup;
    Fd kill_, cpu_;
    const char* uncapped_ = "";
  };
  Killer killer() const;
  // Stats gathered so far; valid after the processes exit and before destroy().
  // cpu from cpuacct.usage (v1) or cpu.stat usage_usec; memory_peak from
  // memory.max_usage_in_bytes (v1) or memory.peak; oom_kills from
  // memory.oom_control (v1) or memory.events. A figure the kernel lacks is 0.
  Result<Usage> usage() const;
  Result<Live> live() const;
  // Kill, wait for empty, rmdir in every hierarchy. Safe to call twice.
  Status destroy();
  // Directories (absolute paths) this cgroup occupies, for tests and logs.
  std::vector<std::string> paths() const;
  // A borrowed handle to the same directories (as Manager::open_named
  // gives): dropping it leaves the cgroup. For a process joining it while
  // this owner may go (`exec`).
  Result<Cgroup> borrow() const;
  // A cgroup of its own below this one's cgroup2 directory, for a process
  // that joins this cgroup's sandbox (`exec`): no controllers of its own, so
  // that what runs in it is counted and limited here, but kill() and
  // freeze() reach its tree only, and pids() lists its tree only. Its
  // destroy() removes it once it is empty and never kills: what an exec
  // leaves behind stays in the sandbox (as podman exec leaves it), and goes
  // with this cgroup's own removal. NOT_FOUND where this cgroup has no
  // cgroup2 directory (a v1-only host).
  Result<Cgroup> make_child() const;
  // Whether the cgroup2 directory has cgroup.kill (Linux 5.14), which ends
  // a tree without its owner's help: a make_child is worth having only then.
  bool kills_atomically() const;
  // Gives the directories up without removing them: an OCI container's
  // cgroup outlives the runtime's process (Manager::open_named finds it
  // again, as a borrowed handle).
  void forget();
  // Freezes (cgroup2's cgroup.freeze, or the v1 freezer) or thaws the whole
  // tree; freezing returns once the kernel says it is frozen (or after 1 s).
  Status freeze(bool on);
  bool frozen() const;
  // Every process of the tree (the v2 directory's, else the first v1 one's).
  Result<std::vector<pid_t>> pids() const;
  // A device policy no wider than the one it was made with takes its place
  // (v1: rewritten; cgroup2: a program more, which every access must pass
  // as well): what the OCI runtime's init needed only while it made the
  // container's nodes goes.
  Status narrow_devices(const std::vector<devices::Rule>& rules);

  struct Impl;
  explicit Cgroup(std::unique_ptr<Impl>);

 private:
  friend class Manager;
  std::unique_ptr<Impl> impl_;
};

class Manager {
 public:
  // Detects the layout and prepares the base directories. Thread-safe after.
  static Result<std::shared_ptr<Manager>> open(const Options& = {});
  // A process-wide manager with default options, opened on first use.
  static Result<std::shared_ptr<Manager>> shared();

  Layout layout() const;
  // Creates a fresh per-process cgroup with these limits applied. With a
  // name (a relative path below the base, such as an OCI cgroupsPath;
  // parents are made as needed), that one: EEXIST if it exists. Named
  // cgroups are in the freezer too where only v1 has one (pause).
  Result<Cgroup> create(const Limits& limits, const std::string& name = {});
  // A named cgroup made earlier, by this process or another: the
  // directories of it that exist (NOT_FOUND when none does). The handle is
  // borrowed: dropping it leaves the cgroup, only destroy() removes it.
  Result<Cgroup> open_named(const std::string& name);
  // Writes new limits to an existing cgroup (`update`); a limit whose
  // controller the cgroup has no directory for is an error naming it.
  Status update(Cgroup& cgroup, const Limits& limits);
  // Removes cgroups left under the base by runtimes that are no longer running
  // ("<pid>-<seq>" whose pid does not exist), killing what is inside. Other
  // names and live runtimes' cgroups are never touched.
  Status cleanup_stale();
  // cleanup_stale() the first time only, best effort: spawn() calls it while
  // its child sets itself up, where it costs the caller no time.
  void cleanup_stale_once();
  // Absolute base directories, one per hierarchy in use.
  std::vector<std::string> base_paths() const;
  // Whether this process may make cgroups in every base (for an ordinary
  // user: whether they were delegated to it); the error names the first it
  // may not.
  Status writable() const;

  struct Impl;
  explicit Manager(std::unique_ptr<Impl>);
  ~Manager();

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace cloister::cgroups

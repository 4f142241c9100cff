// cgroups: one manager, two backends (v2 unified, v1 controllers), chosen by
// the layout found at startup:
//   Unified - cgroup2 at /sys/fs/cgroup with controllers; limits, kill, events there.
//   Hybrid  - v1 controllers at /sys/fs/cgroup/<controller> plus a cgroup2 tree
//             (usually /sys/fs/cgroup/unified) with few or no controllers; the
//             v2 tree tracks membership and kills (cgroup.kill), v1 enforces limits.
//   Legacy  - v1 only; kill is freeze + SIGKILL + thaw.
// Every process gets its own cgroup, created before the clone. On v2 the child
// enters it atomically (clone3 CLONE_INTO_CGROUP with clone_fd()); v1
// controllers need attach(pid) before the child is released. destroy() kills
// what is left, removes every directory and is idempotent.
//
// Delegation: cloister works below a base cgroup it owns: by default a
// "cloister" child of its own cgroup in each hierarchy (configurable). Per
// process cgroups are named "<runtime pid>-<seq>" so that a later run can
// tell leftovers of a dead runtime from the live ones of another, and remove
// them (cleanup_stale).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "isolate/error.h"
#include "isolate/fd.h"

namespace cloister::cgroups {

enum class Layout { Unified, Hybrid, Legacy };
std::string_view layout_name(Layout);

struct Limits {
  uint64_t memory_max = 0;   // bytes; 0 = unlimited. Swap is limited to 0 alongside.
  uint64_t memory_high = 0;  // bytes; 0 = unset (v2 only)
  uint64_t cpu_quota = 0;    // microseconds per cpu_period; 0 = unlimited
  uint64_t cpu_period = 100000;
  uint64_t pids_max = 0;    // 0 = unlimited
  uint32_t cpu_weight = 0;  // 1..10000, 0 = unset
  uint32_t io_weight = 0;   // 1..10000, 0 = unset
  bool empty() const {
    return !memory_max && !memory_high && !cpu_quota && !pids_max && !cpu_weight && !io_weight;
  }
};

struct Usage {
  uint64_t cpu_usec = 0;     // user + system, whole tree
  uint64_t memory_peak = 0;  // bytes, 0 when the kernel does not say
  uint64_t oom_kills = 0;    // OOM kills inside this cgroup
};

struct Options {
  // Base cgroup path relative to each hierarchy's root, e.g. "/cloister".
  // Empty: "<own cgroup>/cloister" per hierarchy.
  std::string base;
  // Root of the cgroup mounts; tests and the VM point this elsewhere.
  std::string mount_root = "/sys/fs/cgroup";
};

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
  Status attach(pid_t pid);
  // SIGKILL every process in the cgroup tree; returns once none is left.
  Status kill();
  // Stats gathered so far; valid after the processes exit and before destroy().
  Result<Usage> usage() const;
  // Kill, wait for empty, rmdir in every hierarchy. Safe to call twice.
  Status destroy();
  // Directories (absolute paths) this cgroup occupies, for tests and logs.
  std::vector<std::string> paths() const;

  struct Impl;
  explicit Cgroup(std::unique_ptr<Impl>);

 private:
  std::unique_ptr<Impl> impl_;
};

class Manager {
 public:
  // Detects the layout and prepares the base directories. Thread-safe after.
  static Result<std::shared_ptr<Manager>> open(const Options& = {});
  // A process-wide manager with default options, opened on first use.
  static Result<std::shared_ptr<Manager>> shared();

  Layout layout() const;
  // Creates a fresh per-process cgroup with these limits applied.
  Result<Cgroup> create(const Limits& limits);
  // Removes cgroups left under the base by runtimes that are no longer running.
  Status cleanup_stale();
  // Absolute base directories, one per hierarchy in use.
  std::vector<std::string> base_paths() const;

  struct Impl;
  explicit Manager(std::unique_ptr<Impl>);
  ~Manager();

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace cloister::cgroups

// The validated description of one sandboxed process. Every way in (YAML
// executor config, per-call options, CLI flags, socket requests) lowers into a
// SpawnSpec before anything forks; the spawn pipeline trusts it.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "isolate/cgroups.h"
#include "isolate/rlimits.h"
#include "isolate/sysctl.h"
#include "isolate/userns.h"

namespace cloister {

enum class NetworkMode { None, Host };

// A host path made visible inside the sandbox.
struct BindMount {
  std::string source;  // absolute host path
  std::string target;  // absolute path inside the sandbox
  bool read_only = true;
  // With a user namespace: an idmapped mount through it, so the host's ids
  // show as the same ids inside (host root's files as root's) and the
  // payload's writes land with the ids it has inside (root's as host root).
  // Off, the payload's writes land as mapped host ids and host files whose
  // owner is not mapped show as nobody.
  bool idmap = false;
  // noexec, recursively (MOUNT_ATTR_NOEXEC): nothing in it can be executed.
  bool no_exec = false;
};

struct TmpfsMount {
  std::string target;   // absolute path inside the sandbox
  std::string options;  // fstab style: "rw,noexec,nosuid,size=64m,mode=1777"
};

struct Identity {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> groups;  // supplementary groups; empty = none
};

// Container executor view (oci/): the new root is an overlay of an image's
// unpacked layers with a fresh upper directory on a per-process tmpfs, so
// preparing it costs the same for any image size. When read_only_rootfs the
// upper only receives the mount points, then the overlay is made read-only.
struct ImageRoot {
  std::vector<std::string> layers;  // absolute host directories, bottom to top
  // Set where overlayfs is unavailable: the image merged into one directory
  // (oci/container.h), bound read-only as the root instead of the overlay.
  std::string merged;
};

// The sandbox: everything but the command. Executors build one per executor
// and reuse it (prepared once) for every command they run.
struct SpawnSpec {
  std::string hostname = "cloister";
  NetworkMode network = NetworkMode::None;
  // With NetworkMode::None: join this network namespace (a path such as
  // /var/run/netns/NAME, or a /proc/PID/ns/net) instead of a new one, as
  // containerd's CRI hands one to its runtime. Opened at each start and
  // checked to be a network namespace.
  std::string netns_path;
  // Join these ipc and uts namespaces (paths, as containerd's CRI gives a
  // pod's containers their sandbox's) instead of new ones; never the host's.
  // With a uts namespace joined, an empty hostname keeps its hostname.
  std::string ipc_ns_path, uts_ns_path;
  // Namespaced kernel parameters (isolate/sysctl.h has the rule), written
  // by the init into the sandbox's own ipc and network namespaces.
  std::vector<sysctl::Setting> sysctls;

  // Host executor view: these host paths appear read-only at the same place
  // (missing ones are skipped, symlinks such as /bin -> usr/bin are kept as
  // symlinks); masked paths are hidden (empty file or empty read-only dir).
  std::vector<std::string> host_paths;
  std::vector<std::string> masked_paths;
  // Made read-only (recursively) where they exist: the OCI runtime's
  // linux.readonlyPaths. Like masked_paths, these apply in an image root
  // (where its layers have them as plain paths, no symlink on the way) and
  // in /proc and /sys too.
  std::vector<std::string> read_only_paths;
  std::vector<BindMount> volumes;
  std::vector<TmpfsMount> tmpfs;
  bool read_only_rootfs = true;  // the new root itself (not /tmp, volumes, tmpfs)
  // Set for containers: the root is the image (host_paths are then
  // ignored; volumes, tmpfs, /proc, /dev and /tmp apply on top).
  std::optional<ImageRoot> image_root;

  // The payload's user namespace (userns.h); none = the host's (the
  // payload's uid 0 is then host root).
  std::optional<userns::Map> userns;
  // A range per sandbox (userns: sandbox): each sandbox leases a slot of
  // this pool (userns::lease) for its life and gets a user namespace of
  // its own with that slot's map; userns is then the pool's first slot,
  // against which the spec is checked. No mount template.
  std::optional<userns::Pool> userns_pool;
  // The caller is an ordinary user (docs/security.md, "Unprivileged use"),
  // as with bwrap --unshare-user: the user namespace is the sandbox's own,
  // made by its clone (CLONE_NEWUSER), and owns its other namespaces; userns
  // is then userns::own_ids() (the caller's uid and gid as 0 inside, nothing
  // else mapped). No mount template, no pool namespace, no idmapped mount,
  // no cgroup unless the caller passes a manager (a delegated cgroup).
  bool unprivileged = false;
  bool no_new_privileges = true;
  uint64_t capabilities = 0;  // bit set of capabilities kept
  // With a user namespace (not unprivileged): capabilities held as well,
  // although the kernel checks each of them in a namespace of the host's
  // user namespace or in the host's, so they hold over nothing
  // (userns::kInertCapabilities). The OCI runtime keeps a config's sets
  // as written, as runc shows them; cloister's own front ends refuse them.
  uint64_t inert_capabilities = 0;
  // The OCI runtime's optional system mounts (a config that lists them): the
  // sandbox's own ipc namespace's mqueue at /dev/mqueue, and a read-only
  // sysfs at /sys (the network namespace's view, with the firmware and
  // power meters masked), as runc mounts them.
  bool mqueue = false;
  bool sysfs = false;
  // Device nodes of its /dev beyond the standard ones (isolate/devices.h),
  // each below /dev; not for an unprivileged sandbox (no mknod). What it may
  // open is limits.devices's.
  std::vector<devices::ExtraNode> device_nodes;
  std::vector<rlimits::Limit> rlimits;
  Identity user;
  std::string seccomp_profile;  // "" = built-in default, "unconfined", or a path
  cgroups::Limits limits;
};

// What runs in a sandbox.
struct Command {
  std::vector<std::string> argv;  // argv[0] is looked up in the sandbox's PATH
  std::vector<std::string> env;   // "KEY=VALUE", exactly what the payload sees
  std::string work_dir = "/";

  // Policy hooks (policy/paths.h), both optional:
  // exec_fd >= 0: the payload execs this file (execveat(fd, "",
  // AT_EMPTY_PATH)) instead of looking argv[0] up; the caller owns the fd.
  // exec_fd_inherit keeps it open across the exec (a script's interpreter
  // reads /dev/fd/N).
  int exec_fd = -1;
  bool exec_fd_inherit = false;
  // Non-empty: work_dir is entered by openat2(work_dir_beneath, rest,
  // RESOLVE_BENEATH) inside the sandbox, so no symlink leads out of it.
  std::string work_dir_beneath;
};

}  // namespace cloister

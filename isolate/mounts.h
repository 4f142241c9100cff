// Mounts: the new root of a sandbox.
//
// The parent turns a SpawnSpec into a MountPlan: a flat list of operations
// with every path already joined, checked and stored, so that the child only
// walks the list issuing raw syscalls (async-signal-safe, no allocation).
//
// The root the child ends up with:
//   /                 tmpfs, read-only when read_only_rootfs (the default)
//   host_paths        the host's trees, bound recursively read-only, nosuid,
//                     nodev (open_tree + mount_setattr(AT_RECURSIVE)), so no
//                     submount stays writable; symlinks such as /bin -> usr/bin
//                     are recreated as symlinks
//   masked_paths      hidden: /dev/null over files, an empty read-only tmpfs
//                     over directories
//   volumes           host:target, read-only unless marked rw, nosuid, nodev
//   tmpfs             as configured; /tmp is always a fresh tmpfs
//   /proc             a new procfs of the sandbox's pid namespace, with the
//                     paths runc masks hidden and those it protects read-only
//   /dev              a small tmpfs: null zero full random urandom tty, a
//                     private devpts (ptmx), shm, fd/std* links; no host device
// then pivot_root, the old root detached, and the work dir entered.
//
// With spec.image_root (containers) the root is instead an overlayfs of the
// image's layers over an upper dir on a fresh tmpfs, host_paths and
// masked_paths are ignored, and every mount point created in it is checked in
// the parent not to cross a symlink of the image (which, before pivot_root,
// would resolve on the host).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "isolate/error.h"
#include "isolate/fd.h"
#include "isolate/spec.h"

namespace cloister::mounts {

// fstab-style options ("rw,noexec,nosuid,size=64m,mode=1777") split into
// mount(2) flags and the data string passed to tmpfs.
struct ParsedOptions {
  unsigned long flags = 0;
  std::string data;
};
Result<ParsedOptions> parse_tmpfs_options(const std::string& options);

// Normalizes an absolute path: collapses "//", rejects "..", "." components,
// NUL bytes and relative paths. "/a/b/" -> "/a/b".
Result<std::string> normalize_path(const std::string& path);

// A built template: its mount namespace and its root directory. The root is
// not the namespace's own root (a namespace's root mount is the one under
// every pivot_root, often the initramfs), so a sandbox chroots to it.
struct MountTemplate {
  Fd ns;    // /proc/thread-self/ns/mnt of the builder
  Fd root;  // O_PATH of its root after pivot_root
};

class MountPlan {
 public:
  enum class OpKind : uint8_t {
    MakePrivate,    // mount --make-rprivate /
    CloneTree,      // open_tree(src, CLONE|RECURSIVE) + mount_setattr -> slot
    Tmpfs,          // mount tmpfs at path
    Mkdir,          // mkdir path (EEXIST is fine)
    Touch,          // create an empty file at path (a mount point for a file)
    Symlink,        // symlink(src, path)
    MoveTree,       // move_mount(slot, path)
    BindFile,       // mount --bind src path (masking with /dev/null)
    Proc,           // mount proc at path
    ReadOnlyBind,   // bind path onto itself, recursively read-only
    Mknod,          // mknod path mode dev
    Devpts,         // mount a new devpts instance at path
    SetReadOnly,    // mount_setattr(path, RDONLY), not recursive
    PivotRoot,      // chdir path, pivot_root(".", "."), detach the old root
    Overlay,        // mount overlay at path with data (lowerdir, upperdir, workdir)
    EnterTemplate,  // setns into the template, chroot to its root, unshare a copy
  };

  struct Op {
    OpKind kind;
    bool optional = false;  // skip when the path (or source) does not exist
    int slot = -1;          // CloneTree/MoveTree: index into the fd slots
    unsigned long flags = 0;
    uint64_t attr = 0;  // MOUNT_ATTR_* for CloneTree
    mode_t mode = 0;
    dev_t dev = 0;
    std::string src;
    std::string path;
    std::string data;
  };

  static Result<MountPlan> prepare(const SpawnSpec& spec);

  // Child side: runs every op. On failure returns errno and sets *failed_op.
  // With a template (build_template()), runs only the per-sandbox ops on a
  // clone of it.
  int execute(int* failed_op, const struct MountTemplate* tpl = nullptr) const noexcept;

  // For error messages in the parent: "bind /usr -> /usr".
  std::string describe(int op, bool templated = false) const;
  const std::vector<Op>& ops() const { return ops_; }

  // The template: the part of the root that is the same for every sandbox
  // of the plan (the read-only root tmpfs with its directories and links,
  // the host trees and volumes, the masks), built once in a mount namespace
  // of its own whose root it is. A sandbox then enters it (setns), unshares
  // a copy and mounts only what must be its own: /proc, /dev, the tmpfs
  // mounts. No pivot_root and no detach of the host's tree per sandbox: that
  // detach waits for an RCU grace period (a quarter of a millisecond here).
  // Possible for roots that are read-only (the root tmpfs, or an image's
  // overlay, is shared) with no bind below a per-sandbox tmpfs. Spawn
  // without CLONE_NEWNS then.
  bool templatable() const { return !spawn_ops_.empty(); }
  // Builds it on a short-lived thread (the host's mount table never sees it).
  Result<MountTemplate> build_template() const;

 private:
  int run(const std::vector<Op>& ops, int* slots, int* failed_op,
          const MountTemplate* tpl) const noexcept;
  void split_for_template(const std::vector<std::string>& own);

  std::vector<Op> ops_;
  std::vector<Op> template_ops_;  // run once, by build_template()
  std::vector<Op> spawn_ops_;     // run per sandbox on the template's clone
  // Child-side fds of cloned trees. Only the child's copy of the plan is ever
  // written (after the clone), so the parent's plan stays shareable.
  mutable std::vector<int> slots_;
};

// "mask /etc/shadow": op index of ops, for error messages.
std::string describe_op(const std::vector<MountPlan::Op>& ops, int index);

}  // namespace cloister::mounts

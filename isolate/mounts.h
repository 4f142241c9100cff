// Mounts: the new root of a sandbox.
//
// The parent turns a SpawnSpec into a MountPlan: a flat list of operations
// with every path already joined, checked and stored, so that the child only
// walks the list issuing raw syscalls (async-signal-safe, no allocation).
//
// The root the child ends up with:
//   /                 tmpfs, read-only when read_only_rootfs (the default)
//   host_paths        the host's trees, bound recursively read-only, nosuid,
//                     nodev (open_tree of the pinned source fd +
//                     mount_setattr(AT_RECURSIVE)), so no
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

// The bounds of the tmpfs mounts every sandbox has, unless a tmpfs entry for
// the same path says otherwise (docs/security.md). Left alone, a tmpfs may
// take half the host's RAM, and a sandbox has three. nr_inodes bounds what
// files cost the kernel besides their data (one inode per 4 KiB of size).
// Every tmpfs the config names gets kDefaultTmpfsBounds for what it leaves out.
inline constexpr const char* kDefaultTmpfsBounds = "size=256m,nr_inodes=65536";
inline constexpr const char* kDefaultRootTmpfs = "mode=0755,size=256m,nr_inodes=65536";
inline constexpr const char* kDefaultTmpTmpfs = "mode=1777";
inline constexpr const char* kDefaultShmTmpfs = "mode=1777,size=64m,nr_inodes=16384";

// fstab-style options ("rw,noexec,nosuid,size=64m,mode=1777") split into
// mount(2) flags and the data string passed to tmpfs. The one tmpfs option
// rule, for every front end: rw/ro, exec/noexec, suid/nosuid, dev/nodev;
// size=N[k|m|g] or N% (1-100), nr_inodes=N[k|m|g], nr_blocks=N[k|m|g],
// mode= an octal of up to 4 digits, uid=/gid= numeric ids; no empty, repeated
// or conflicting option (the error says which).
struct ParsedOptions {
  unsigned long flags = 0;
  std::string data;
};
Result<ParsedOptions> parse_tmpfs_options(const std::string& options);

// The one rule of a path that every front end requires normalized: why `p`
// is not an absolute, normalized path no longer than PATH_MAX - 1 ("must be
// an absolute path", "must be normalized (contains \"//\")", ...), or ""
// when it is one.
std::string path_problem(std::string_view p);

// The one "path is under a directory" rule, for normalized absolute paths:
// path is dir or lies below it ("/" holds every path; "/a" does not hold
// "/ab").
bool within(std::string_view path, std::string_view dir);

// Whether path is one /proc path the sandbox's own procfs hides or makes
// read-only (runc's list and more, mounts.cc), or lies below one.
bool proc_protects(std::string_view path);

// Normalizes an absolute path: collapses "//", rejects "..", "." components,
// NUL bytes and relative paths. "/a/b/" -> "/a/b".
Result<std::string> normalize_path(const std::string& path);

// A host path a sandbox gets (a host path, a volume source, an
// executables_dir), opened O_PATH only when no component is a symlink: one
// there may have been planted (a payload writes into a rw volume as its uid;
// a host user into a directory they own) to decide what the next sandbox
// mounts or runs, rw perhaps. INVALID naming `what` and where the symlink
// leads ("name the directory itself"); with `again` (the path was checked
// before, this pins it at a start) "... now ...: not mounted".
Result<Fd> open_no_symlink(const std::string& path, const std::string& what, bool again);

// A built template: its mount namespace and its root directory. The root is
// not the namespace's own root (a namespace's root mount is the one under
// every pivot_root, often the initramfs), so a sandbox chroots to it.
struct MountTemplate {
  Fd ns;    // /proc/thread-self/ns/mnt of the builder
  Fd root;  // O_PATH of its root after pivot_root
};

enum class OpKind : uint8_t {
  MakePrivate,    // mount --make-rprivate /
  Tmpfs,          // mount tmpfs at path
  Mkdir,          // mkdir path (EEXIST is fine); dev != 0: then chown to (dev >> 32, dev & ~0u)
  Touch,          // create an empty file at path (a mount point for a file)
  Symlink,        // symlink(src, path)
  MoveTree,       // move_mount(the detached tree of a source, path)
  BindFile,       // mount --bind src path (masking with /dev/null)
  Proc,           // mount proc at path
  ReadOnlyBind,   // bind path onto itself, recursively read-only (flags: MOUNT_ATTR_*, 0 = +noexec)
  Mknod,          // mknod path mode dev, chmod mode, owner flags (uid << 32 | gid) if not 0
  Devpts,         // mount a new devpts instance at path
  SetReadOnly,    // mount_setattr(path, RDONLY), not recursive
  PivotRoot,      // chdir path, pivot_root(".", "."), detach the old root
  Overlay,        // mount overlay at path with data (lowerdir, upperdir, workdir)
  EnterTemplate,  // setns into the template, chroot to its root, unshare a copy
  // An unprivileged sandbox's init pins and clones a source itself (the
  // library may not clone trees, and a tree of the host's namespace cannot
  // be moved into one a user namespace owns): path opened with no symlink
  // followed, of the type in mode, cloned recursively into trees[source]
  // and given the attributes in flags (MOUNT_ATTR_*), recursively.
  CloneTree,
  // mount a kernel filesystem of type src (mqueue, sysfs) at path, with
  // flags: the OCI runtime's /dev/mqueue and read-only /sys.
  PseudoFs,
  kLast = PseudoFs,
};

// One op as the child side runs it: plain values and C strings (pointing
// into the plan, or into the init's copy of it).
struct OpView {
  OpKind kind;
  bool optional;
  // The target lies inside a volume, whose host directory a payload may
  // have changed since the plan was made: resolved with no symlink
  // followed, and mounted on or made by fd (MoveTree, Tmpfs, BindFile,
  // ReadOnlyBind, Mkdir, Touch).
  bool in_volume;
  int source;  // MoveTree: index into the trees (MountPlan::make_trees)
  unsigned long flags;
  mode_t mode;
  dev_t dev;
  const char* src;  // or null
  const char* path;
  const char* data;  // or null
};

// Child side: runs ops in order (raw syscalls only: async-signal-safe, no
// allocation). trees are the detached trees of the sources
// (MountPlan::make_trees, or CloneTree ops, which fill them in; each is
// moved once and left open), tpl_ns and
// tpl_root the template's fds for EnterTemplate (else -1). Returns 0, or
// errno with *failed_op set to the index of the op that failed.
int run_ops(const OpView* ops, size_t n, int* trees, size_t ntrees, int tpl_ns, int tpl_root,
            int* failed_op) noexcept;

class MountPlan {
 public:
  using OpKind = mounts::OpKind;

  struct Op {
    OpKind kind;
    bool optional = false;   // skip when the path (or source) does not exist
    bool in_volume = false;  // OpView::in_volume
    int source = -1;         // MoveTree: index into sources()
    unsigned long flags = 0;
    mode_t mode = 0;
    dev_t dev = 0;
    std::string src;
    std::string path;
    std::string data;
  };

  // A host path the plan mounts: checked here to hold no symlink (a host
  // path or volume; the store's own paths are resolved instead), then
  // pinned per sandbox by make_trees() with no symlink followed, so that no
  // swap between the check and the mount changes what is mounted.
  struct Source {
    std::string path;  // absolute, with no symlink in it when prepared
    bool is_dir = true;
    uint64_t attr = 0;  // MOUNT_ATTR_* of its tree
    std::string what;   // "volume /a:/b", for errors
    // An idmapped tree (MOUNT_ATTR_IDMAP) through the sandbox's user
    // namespace: image layers, and volumes that ask for it. Optional for
    // layers: where their filesystem cannot be idmapped on this kernel
    // (tmpfs before 6.3), they are mounted as they are and an image's
    // root-owned files show as nobody's (docs/security.md).
    bool idmap = false;
    bool idmap_optional = false;
  };

  static Result<MountPlan> prepare(const SpawnSpec& spec);

  // Every source as a detached mount tree, in the caller's mount namespace:
  // the source pinned with openat2(O_PATH, RESOLVE_NO_SYMLINKS |
  // RESOLVE_NO_MAGICLINKS), cloned from that fd (open_tree(OPEN_TREE_CLONE |
  // AT_RECURSIVE)) and given its attributes, recursively (mount_setattr),
  // so no submount stays writable. The sandbox's init (or the template's
  // builder) only moves them into place (move_mount). A component swapped
  // for a symlink since prepare() fails (ELOOP, INVALID) naming the source,
  // as does a directory replaced by a file or the reverse.
  // userns_fd: the user namespace of idmapped sources (or -1 when none is).
  Result<std::vector<Fd>> make_trees(int userns_fd = -1) const;
  const std::vector<Source>& sources() const { return sources_; }

  // The ops a sandbox runs: the full plan, or with a template only the
  // per-sandbox part (starting with EnterTemplate). The views point into
  // this plan.
  std::vector<OpView> views(bool templated) const;

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
  Result<MountTemplate> build_template(int userns_fd = -1) const;

 private:
  void split_for_template(const std::vector<std::string>& own);
  static std::vector<OpView> views_of(const std::vector<Op>& ops);

  std::vector<Op> ops_;
  std::vector<Op> template_ops_;  // run once, by build_template()
  std::vector<Op> spawn_ops_;     // run per sandbox on the template's clone
  std::vector<Source> sources_;
};

// "mask /etc/shadow": op index of ops, for error messages.
std::string describe_op(const std::vector<MountPlan::Op>& ops, int index);

}  // namespace cloister::mounts

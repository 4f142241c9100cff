// The child side of the mounts module: the op runner. Linked into the
// library (which builds mount templates with it) and into cloister-init
// (which builds each sandbox's root with it); raw syscalls only.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cstring>

#include <linux/openat2.h>

#include "isolate/fd.h"
#include "isolate/mounts.h"

namespace cloister::mounts {
namespace {

// The target of an op inside a volume: the path resolved with no symlink
// followed (a payload may have put one there, in the volume's host
// directory, to redirect a later sandbox's mount), as an O_PATH fd.
// ReadOnlyBind's attributes: its flags (MOUNT_ATTR_*), or by default
// read-only, nosuid, nodev and noexec (/proc's read-only parts).
uint64_t read_only_attrs(const OpView& o) noexcept {
  return o.flags ? o.flags
                 : MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
}

int volume_target(const char* path) noexcept {
  return openat2_raw(AT_FDCWD, path, O_PATH, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
}

// Moves a detached tree onto the target fd (and closes neither).
int move_onto(int tree, int target) noexcept {
  return ::move_mount(tree, "", target, "", MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH);
}

// A new tmpfs with mount(2)'s flags and data ("a=1,b=2"), mounted onto the
// target fd with the new mount API, which takes the target by fd.
int tmpfs_onto(int target, unsigned long flags, const char* data) noexcept {
  int fs = ::fsopen("tmpfs", FSOPEN_CLOEXEC);
  if (fs < 0) return -1;
  char buf[512];
  size_t n = data ? ::strlen(data) : 0;
  if (n >= sizeof buf) {
    ::close(fs);
    errno = E2BIG;
    return -1;
  }
  for (size_t i = 0; i < n; ++i) buf[i] = data[i];
  buf[n] = '\0';
  int rc = 0;
  for (char* p = buf; rc == 0 && *p;) {
    char* end = p;
    while (*end && *end != ',') ++end;
    const bool last = *end == '\0';
    *end = '\0';
    char* eq = p;
    while (*eq && *eq != '=') ++eq;
    if (*eq == '=') {
      *eq = '\0';
      rc = ::fsconfig(fs, FSCONFIG_SET_STRING, p, eq + 1, 0);
    } else if (*p) {
      rc = ::fsconfig(fs, FSCONFIG_SET_FLAG, p, nullptr, 0);
    }
    p = last ? end : end + 1;
  }
  if (rc == 0) rc = ::fsconfig(fs, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0);
  unsigned int attr = 0;
  if (flags & MS_RDONLY) attr |= MOUNT_ATTR_RDONLY;
  if (flags & MS_NOSUID) attr |= MOUNT_ATTR_NOSUID;
  if (flags & MS_NODEV) attr |= MOUNT_ATTR_NODEV;
  if (flags & MS_NOEXEC) attr |= MOUNT_ATTR_NOEXEC;
  if (flags & MS_NOATIME) attr |= MOUNT_ATTR_NOATIME;
  int m = rc == 0 ? ::fsmount(fs, FSMOUNT_CLOEXEC, attr) : -1;
  int e = errno;
  ::close(fs);
  if (m < 0) {
    errno = e;
    return -1;
  }
  rc = move_onto(m, target);
  e = errno;
  ::close(m);
  errno = e;
  return rc;
}

// Mkdir and Touch below a volume: the parent resolved with no symlink
// followed, the entry made at that fd.
int make_in_volume(const OpView& o) noexcept {
  char parent[4096];
  const size_t n = ::strlen(o.path);
  size_t slash = n;
  while (slash > 0 && o.path[slash - 1] != '/') --slash;
  if (slash == 0 || slash >= sizeof parent || slash == n) {
    errno = EINVAL;
    return -1;
  }
  for (size_t i = 0; i < slash; ++i) parent[i] = o.path[i];
  parent[slash] = '\0';
  const char* name = o.path + slash;
  int dir = openat2_raw(AT_FDCWD, parent, O_PATH | O_DIRECTORY,
                        RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
  if (dir < 0) return -1;
  int rc;
  if (o.kind == OpKind::Mkdir) {
    rc = ::mkdirat(dir, name, o.mode);
    if (rc != 0 && errno == EEXIST) {
      // There already: a directory, not a symlink to one.
      struct stat st;
      rc = ::fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW);
      if (rc == 0 && !S_ISDIR(st.st_mode)) {
        errno = S_ISLNK(st.st_mode) ? ELOOP : ENOTDIR;
        rc = -1;
      }
    }
  } else {
    int fd = ::openat(dir, name, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, o.mode);
    rc = fd < 0 ? -1 : ::close(fd);
  }
  int e = errno;
  ::close(dir);
  errno = e;
  return rc;
}

// The in_volume forms of MoveTree, Tmpfs, BindFile, ReadOnlyBind, Mkdir and Touch.
int run_in_volume(const OpView& o, int tree) noexcept {
  if (o.kind == OpKind::Mkdir || o.kind == OpKind::Touch) return make_in_volume(o);
  int t = volume_target(o.path);
  if (t < 0) return -1;
  int rc = -1;
  switch (o.kind) {
    case OpKind::MoveTree:
      rc = move_onto(tree, t);
      break;
    case OpKind::Tmpfs:
      rc = tmpfs_onto(t, o.flags, o.data);
      break;
    case OpKind::BindFile: {
      int bind = ::open_tree(AT_FDCWD, o.src ? o.src : "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
      if (bind < 0) break;
      rc = move_onto(bind, t);
      int e = errno;
      ::close(bind);
      errno = e;
      break;
    }
    case OpKind::ReadOnlyBind: {
      // The path's own tree, resolved once (no symlink followed), made
      // read-only and put back over itself: one walk, as for the masks.
      int tree =
          ::open_tree(t, "", AT_EMPTY_PATH | AT_RECURSIVE | OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC);
      if (tree < 0) break;
      struct mount_attr attr {};
      attr.attr_set = read_only_attrs(o);
      rc = ::mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr);
      if (rc == 0) rc = move_onto(tree, t);
      int e = errno;
      ::close(tree);
      errno = e;
      break;
    }
    default:
      errno = EINVAL;
      break;
  }
  int e = errno;
  ::close(t);
  errno = e;
  return rc;
}

// CloneTree: the source pinned with no symlink followed, checked to be of
// the planned type, cloned with its submounts and given its attributes.
int clone_tree(const OpView& o) noexcept {
  int pinned = openat2_raw(AT_FDCWD, o.path, O_PATH | O_NOFOLLOW,
                           RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
  if (pinned < 0) return -1;
  struct stat st;
  int tree = -1;
  if (::fstatat(pinned, "", &st, AT_EMPTY_PATH) != 0) {
    // errno set
  } else if ((st.st_mode & S_IFMT) != (o.mode & S_IFMT)) {
    errno = S_ISDIR(o.mode) ? ENOTDIR : EISDIR;
  } else {
    tree =
        ::open_tree(pinned, "", AT_EMPTY_PATH | OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
    if (tree >= 0) {
      struct mount_attr attr {};
      attr.attr_set = o.flags;
      if (::mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) != 0) {
        int e = errno;
        ::close(tree);
        tree = -1;
        errno = e;
      }
    }
  }
  int e = errno;
  ::close(pinned);
  errno = e;
  return tree;
}

}  // namespace

int run_ops(const OpView* ops, size_t n, int* trees, size_t ntrees, int tpl_ns, int tpl_root,
            int* failed_op) noexcept {
  const mode_t old_umask = ::umask(0);
  int err = 0;
  for (size_t i = 0; i < n && err == 0; ++i) {
    const OpView& o = ops[i];
    const char* path = o.path;
    int rc = 0;
    // MoveTree: the detached tree the library cloned from the pinned source
    // (and gave its attributes): what was checked is what is mounted.
    int tree = -1;
    if (o.kind == OpKind::MoveTree || o.kind == OpKind::CloneTree) {
      if (o.source < 0 || static_cast<size_t>(o.source) >= ntrees) {
        err = EINVAL;
        if (failed_op) *failed_op = static_cast<int>(i);
        break;
      }
      tree = trees[o.source];
    }
    if (o.in_volume &&
        (o.kind == OpKind::MoveTree || o.kind == OpKind::Tmpfs || o.kind == OpKind::BindFile ||
         o.kind == OpKind::ReadOnlyBind || o.kind == OpKind::Mkdir || o.kind == OpKind::Touch)) {
      if (run_in_volume(o, tree) != 0 && !(o.optional && errno == ENOENT)) {
        err = errno;
        if (failed_op) *failed_op = static_cast<int>(i);
      }
      continue;
    }
    switch (o.kind) {
      case OpKind::MakePrivate:
        rc = ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr);
        break;
      case OpKind::MoveTree:
        rc = ::move_mount(tree, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH);
        break;
      case OpKind::Tmpfs:
        // src: the source name mountinfo shows ("shm" for /dev/shm).
        rc = ::mount(o.src ? o.src : "tmpfs", path, "tmpfs", o.flags, o.data);
        break;
      case OpKind::PseudoFs:
        rc = ::mount(o.src, path, o.src, o.flags, nullptr);
        break;
      case OpKind::Mkdir:
        rc = ::mkdir(path, o.mode);
        if (rc != 0 && errno == EEXIST) rc = 0;
        if (rc == 0 && (o.mode & 07000)) rc = ::chmod(path, o.mode);
        if (rc == 0 && o.dev != 0)
          rc = ::chown(path, static_cast<uid_t>(o.dev >> 32),
                       static_cast<gid_t>(o.dev & 0xffffffffu));
        break;
      case OpKind::Touch: {
        int fd = ::open(path, O_CREAT | O_WRONLY | O_CLOEXEC | O_NOFOLLOW, o.mode);
        rc = fd < 0 ? -1 : ::close(fd);
        break;
      }
      case OpKind::Symlink:
        rc = ::symlink(o.src ? o.src : "", path);
        break;
      case OpKind::BindFile:
        rc = ::mount(o.src ? o.src : "", path, nullptr, MS_BIND, nullptr);
        break;
      case OpKind::Proc:
        rc = ::mount("proc", path, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
        break;
      case OpKind::ReadOnlyBind: {
        rc = ::mount(path, path, nullptr, MS_BIND | MS_REC, nullptr);
        if (rc != 0) break;
        struct mount_attr attr {};
        attr.attr_set = read_only_attrs(o);
        rc = ::mount_setattr(AT_FDCWD, path, AT_RECURSIVE, &attr, sizeof attr);
        break;
      }
      case OpKind::Mknod:
        // The mode as given, whatever the umask; the owner when one is set.
        rc = ::mknod(path, o.mode, o.dev);
        if (rc == 0) rc = ::chmod(path, o.mode & 07777);
        if (rc == 0 && o.flags != 0)
          rc = ::chown(path, static_cast<uid_t>(o.flags >> 32),
                       static_cast<gid_t>(o.flags & 0xffffffffu));
        break;
      case OpKind::Devpts:
        rc = ::mount("devpts", path, "devpts", MS_NOSUID | MS_NOEXEC, o.data);
        break;
      case OpKind::SetReadOnly: {
        struct mount_attr attr {};
        attr.attr_set = MOUNT_ATTR_RDONLY;
        rc = ::mount_setattr(AT_FDCWD, path, 0, &attr, sizeof attr);
        break;
      }
      case OpKind::Overlay:
        rc = ::mount("overlay", path, "overlay", o.flags, o.data);
        break;
      case OpKind::EnterTemplate:
        // Into the template's namespace, onto its root (chroot: setns lands
        // on the namespace's root mount, which is not it), then a copy of it
        // of our own, which takes our root and cwd along: the per-sandbox
        // mounts stay ours.
        rc = ::setns(tpl_ns, CLONE_NEWNS);
        if (rc == 0) rc = ::fchdir(tpl_root);
        if (rc == 0) rc = ::chroot(".");
        if (rc == 0) rc = ::unshare(CLONE_NEWNS);
        if (rc == 0) rc = ::chdir("/");
        break;
      case OpKind::CloneTree:
        trees[o.source] = clone_tree(o);
        rc = trees[o.source] < 0 ? -1 : 0;
        break;
      case OpKind::PivotRoot:
        // pivot_root(".", ".") stacks the old root on the new one; detaching
        // it leaves the new root alone, with no directory to hold the old.
        rc = ::chdir(path);
        if (rc == 0) rc = static_cast<int>(::syscall(SYS_pivot_root, ".", "."));
        if (rc == 0) rc = ::umount2(".", MNT_DETACH);
        if (rc == 0) rc = ::chdir("/");
        break;
    }
    // An optional op whose path is missing is skipped: the failure tells,
    // with no lookup of its own beforehand.
    if (rc != 0 && !(o.optional && errno == ENOENT)) {
      err = errno;
      if (failed_op) *failed_op = static_cast<int>(i);
    }
  }
  ::umask(old_umask);
  return err;
}

}  // namespace cloister::mounts

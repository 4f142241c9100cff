// The child side of the mounts module: the op runner. Linked into the
// library (which builds mount templates with it) and into cloister-init
// (which builds each sandbox's root with it); raw syscalls only.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "isolate/mounts.h"

namespace cloister::mounts {

int run_ops(const OpView* ops, size_t n, const int* sources, size_t nsources, int* slots,
            size_t nslots, int tpl_ns, int tpl_root, int* failed_op) noexcept {
  const mode_t old_umask = ::umask(0);
  int err = 0;
  for (size_t i = 0; i < n && err == 0; ++i) {
    const OpView& o = ops[i];
    const char* path = o.path;
    int rc = 0;
    const bool slot_ok = o.slot >= 0 && static_cast<size_t>(o.slot) < nslots;
    switch (o.kind) {
      case OpKind::MakePrivate:
        rc = ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr);
        break;
      case OpKind::CloneTree: {
        // A detached tree the library cloned from the pinned source (it
        // set its attributes too): what was checked is what is mounted.
        if (!slot_ok || o.source < 0 || static_cast<size_t>(o.source) >= nsources) {
          errno = EINVAL;
          rc = -1;
          break;
        }
        int fd = ::fcntl(sources[o.source], F_DUPFD_CLOEXEC, 3);
        if (fd < 0) {
          rc = -1;
          break;
        }
        slots[o.slot] = fd;
        break;
      }
      case OpKind::MoveTree: {
        if (!slot_ok || slots[o.slot] < 0) {
          errno = EINVAL;
          rc = -1;
          break;
        }
        int& fd = slots[o.slot];
        rc = ::move_mount(fd, "", AT_FDCWD, path, MOVE_MOUNT_F_EMPTY_PATH);
        ::close(fd);
        fd = -1;
        break;
      }
      case OpKind::Tmpfs:
        rc = ::mount("tmpfs", path, "tmpfs", o.flags, o.data);
        break;
      case OpKind::Mkdir:
        rc = ::mkdir(path, o.mode);
        if (rc != 0 && errno == EEXIST) rc = 0;
        if (rc == 0 && (o.mode & 07000)) rc = ::chmod(path, o.mode);
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
        attr.attr_set =
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC;
        rc = ::mount_setattr(AT_FDCWD, path, AT_RECURSIVE, &attr, sizeof attr);
        break;
      }
      case OpKind::Mknod:
        rc = ::mknod(path, o.mode, o.dev);
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
  for (size_t k = 0; k < nslots; ++k)
    if (slots[k] >= 0) {
      ::close(slots[k]);
      slots[k] = -1;
    }
  return err;
}

}  // namespace cloister::mounts

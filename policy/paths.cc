#include "policy/paths.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cctype>

#include "isolate/mounts.h"
#include "isolate/userns.h"

namespace cloister::policy {

Result<std::string> check_work_dir(const std::vector<std::string>& allowed,
                                   const std::string& work_dir) {
  if (allowed.empty()) return std::string();
  for (const auto& dir : allowed)
    if (mounts::within(work_dir, dir)) return dir;
  return fail(invalid("work dir " + work_dir + " is outside the executor's allowed_dirs"));
}

namespace {

const HostMount* covering(const std::vector<HostMount>& mounts, const std::string& path) {
  const HostMount* best = nullptr;
  for (const auto& m : mounts)
    if (mounts::within(path, m.target) && (!best || m.target.size() > best->target.size()))
      best = &m;
  return best;
}

std::string relative(const std::string& path, const std::string& dir) {
  if (path == dir) return ".";
  return path.substr(dir == "/" ? 1 : dir.size() + 1);
}

int openat2_dir(int dirfd, const std::string& path, uint64_t resolve) {
  return openat2_raw(dirfd, path.c_str(), O_PATH | O_DIRECTORY, resolve);
}

}  // namespace

Status precheck_work_dir(const std::vector<HostMount>& mounts, const std::string& allowed,
                         const std::string& wd) {
  const HostMount* m = covering(mounts, allowed);
  if (!m || covering(mounts, wd) != m) return {};
  Fd root(openat2_dir(AT_FDCWD, m->source, 0));
  if (!root) return {};
  Fd dir(openat2_dir(root.get(), relative(allowed, m->target),
                     RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS));
  if (!dir) {
    if (errno == ELOOP || errno == EXDEV)
      return fail(
          make_error(ErrorKind::Invalid, "allowed dir " + allowed + " is a symlink", errno));
    return {};
  }
  Fd w(openat2_dir(dir.get(), relative(wd, allowed), RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS));
  if (!w && (errno == ELOOP || errno == EXDEV))
    return fail(make_error(ErrorKind::Invalid,
                           "work dir " + wd + " leads out of allowed dir " + allowed, errno));
  return {};
}

Status check_executable_name(std::string_view name) {
  auto bad = [&](std::string_view why) {
    return fail(invalid("executable '" + std::string(name) + "': " + std::string(why)));
  };
  if (name.empty()) return fail(invalid("executable name is empty"));
  if (name.find('\0') != std::string_view::npos) return bad("contains a NUL byte");
  if (name[0] == '/') return bad("absolute paths are not allowed (executables_dir)");
  if (name.find('\\') != std::string_view::npos) return bad("backslashes are not allowed");
  if (name.size() >= 2 && std::isalpha(static_cast<unsigned char>(name[0])) && name[1] == ':')
    return bad("drive letters are not allowed");
  size_t start = 0;
  while (start <= name.size()) {
    size_t end = name.find('/', start);
    if (end == std::string_view::npos) end = name.size();
    auto part = name.substr(start, end - start);
    if (part.empty()) return bad("empty path component");
    if (part == "..") return bad("'..' is not allowed");
    if (part == ".") return bad("'./' and '.' components are not allowed");
    start = end + 1;
  }
  return {};
}

namespace {

// executables_dir as a private read-only view: a detached clone of its tree
// (open_tree(OPEN_TREE_CLONE)), recursively read-only, nosuid and nodev. The
// sandbox execs a file through it, so its /proc/self/exe (and the fd a
// script keeps) lead to a read-only mount: the payload cannot reopen its own
// executable for writing and change the host's file (the CVE-2019-5736
// shape). Without CAP_SYS_ADMIN (an ordinary user, whose payload could
// otherwise rewrite the user's own file) the clone is made in a user
// namespace of its own (userns::read_only_tree).
Result<Fd> open_executables_dir(const std::string& dir) {
  // Pinned with no symlink followed, as mount sources are: one planted in a
  // writable parent must not choose what runs.
  auto p = mounts::open_no_symlink(dir, "executables_dir", false);
  if (!p) return fail(p.error());
  const int pinned = p->get();
  struct stat st {};
  if (::fstat(pinned, &st) != 0) return fail(sys_error("stat " + dir));
  if (!S_ISDIR(st.st_mode))
    return fail(make_error(ErrorKind::Invalid, dir + " is not a directory", ENOTDIR));
  int tree =
      ::open_tree(pinned, "", AT_EMPTY_PATH | OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
  if (tree < 0) {
    if (errno == EPERM) return userns::read_only_tree(dir, pinned);
    return fail(sys_error("clone " + dir));
  }
  Fd t(tree);
  struct mount_attr attr {};
  attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
  if (::mount_setattr(tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) != 0)
    return fail(sys_error("make a read-only view of " + dir));
  return t;
}

}  // namespace

Result<Executable> open_executable(const std::string& dir, std::string_view name) {
  if (auto s = check_executable_name(name); !s) return fail(s.error());
  auto dfd = open_executables_dir(dir);
  if (!dfd) return fail(dfd.error().wrap("executables_dir"));
  const std::string n(name);
  int fd = openat2_raw(dfd->get(), n.c_str(), O_PATH, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS);
  const std::string shown = "executable '" + n + "'";
  if (fd < 0) {
    int e = errno;
    if (e == EXDEV || e == ELOOP)
      return fail(
          make_error(ErrorKind::Invalid, shown + " leads out of executables_dir " + dir, e));
    if (e == ENOENT || e == ENOTDIR)
      return fail(
          make_error(ErrorKind::Invalid, shown + " not found in executables_dir " + dir, e));
    return fail(sys_error("open " + shown + " in " + dir, e));
  }
  Executable x;
  x.fd = Fd(fd);
  x.path = dir + "/" + n;
  struct stat st {};
  if (::fstat(x.fd.get(), &st) != 0) return fail(sys_error("stat " + x.path));
  if (!S_ISREG(st.st_mode)) return fail(invalid(shown + " is not a regular file"));
  if ((st.st_mode & 0111) == 0) return fail(invalid(shown + " is not executable"));
  // Exec by fd goes through the host's mount of the file, not the sandbox's
  // nosuid view of it: set-id files are refused here instead.
  if (st.st_mode & (S_ISUID | S_ISGID)) return fail(invalid(shown + " is set-uid or set-gid"));
  // A script's interpreter opens /dev/fd/N: the sandbox must keep N open.
  const std::string proc = "/proc/self/fd/" + std::to_string(x.fd.get());
  if (auto r = open_fd(proc, O_RDONLY)) {
    char head[2] = {};
    if (::read(r->get(), head, 2) == 2 && head[0] == '#' && head[1] == '!') x.script = true;
  }
  return x;
}

}  // namespace cloister::policy

#include "policy/paths.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cctype>

namespace cloister::policy {

Result<std::string> check_work_dir(const std::vector<std::string>& allowed,
                                   const std::string& work_dir) {
  if (allowed.empty()) return std::string();
  for (const auto& dir : allowed) {
    if (work_dir == dir || dir == "/" ||
        (work_dir.size() > dir.size() && work_dir.starts_with(dir) && work_dir[dir.size()] == '/'))
      return dir;
  }
  return fail(invalid("work dir " + work_dir + " is outside the executor's allowed_dirs"));
}

namespace {

bool below(const std::string& path, const std::string& dir) {
  return path == dir || dir == "/" ||
         (path.size() > dir.size() && path.starts_with(dir) && path[dir.size()] == '/');
}

const HostMount* covering(const std::vector<HostMount>& mounts, const std::string& path) {
  const HostMount* best = nullptr;
  for (const auto& m : mounts)
    if (below(path, m.target) && (!best || m.target.size() > best->target.size())) best = &m;
  return best;
}

std::string relative(const std::string& path, const std::string& dir) {
  if (path == dir) return ".";
  return path.substr(dir == "/" ? 1 : dir.size() + 1);
}

int openat2_dir(int dirfd, const std::string& path, uint64_t resolve) {
  open_how how{};
  how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
  how.resolve = resolve;
  int fd;
  do fd = static_cast<int>(::syscall(SYS_openat2, dirfd, path.c_str(), &how, sizeof how));
  while (fd < 0 && errno == EAGAIN);
  return fd;
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

Result<Executable> open_executable(const std::string& dir, std::string_view name) {
  if (auto s = check_executable_name(name); !s) return fail(s.error());
  auto dfd = open_fd(dir, O_PATH | O_DIRECTORY);
  if (!dfd) return fail(dfd.error().wrap("executables_dir"));
  open_how how{};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  const std::string n(name);
  int fd;
  do fd = static_cast<int>(::syscall(SYS_openat2, dfd->get(), n.c_str(), &how, sizeof how));
  while (fd < 0 && errno == EAGAIN);  // RESOLVE_BENEATH retries on a concurrent rename
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

#include "runtime/copy.h"

#include <fcntl.h>
#include <linux/capability.h>
#include <linux/openat2.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <map>
#include <optional>
#include <sstream>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "oci/layer.h"
#include "oci/stream.h"
#include "oci/tar.h"

namespace cloister::copy {
namespace {

constexpr uint64_t kResolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
// A tree planted deeper than this ends the copy (the walk recurses).
constexpr int kMaxDepth = 256;
constexpr size_t kMaxPath = 4095;
// Hardlinked files remembered (their paths, up to kMaxPath each).
constexpr size_t kMaxLinks = 16384;

// /proc/PID/{uid,gid}_map, and the host id of `id` inside.
Result<std::pair<IdMap, uint32_t>> read_map(pid_t pid, const char* map, uint32_t id) {
  auto text = read_file("/proc/" + std::to_string(pid) + "/" + map);
  if (!text) return fail(text.error());
  std::istringstream in(*text);
  IdMap m;
  uint64_t inside = 0, outside = 0, count = 0;
  std::optional<uint32_t> host;
  while (in >> inside >> outside >> count) {
    m.ranges.push_back({static_cast<uint32_t>(inside), static_cast<uint32_t>(outside),
                        static_cast<uint32_t>(count)});
    if (id >= inside && id - inside < count) host = static_cast<uint32_t>(outside + (id - inside));
  }
  if (!host)
    return fail(invalid("the sandbox's " + std::string(map) + " maps no " + std::to_string(id)));
  return std::make_pair(std::move(m), *host);
}

// The calling thread becomes the sandbox's user, with no supplementary
// group and no capability. Its effective ids only (the file system's follow
// them): its real and saved ids stay the service's, so that no process of
// that user can signal it (the whole service) and what it writes to a
// socket carries them, not the sandbox's. Raw system calls: glibc's would
// change every thread of ours.
Status become(const Target& t) {
  // A reader that went away is an error of the copy's (EPIPE), not the
  // death of the process it runs in; a SIGPIPE left pending goes with the
  // thread.
  sigset_t pipe;
  sigemptyset(&pipe);
  sigaddset(&pipe, SIGPIPE);
  ::pthread_sigmask(SIG_BLOCK, &pipe, nullptr);
  if (::syscall(SYS_setgroups, 0, nullptr) != 0) return fail(sys_error("setgroups"));
  if (::syscall(SYS_setresgid, -1, t.gid, -1) != 0) return fail(sys_error("setresgid"));
  if (::syscall(SYS_setresuid, -1, t.uid, -1) != 0) return fail(sys_error("setresuid"));
  if (::geteuid() != t.uid || static_cast<uid_t>(::syscall(SYS_setfsuid, -1)) != t.uid)
    return fail(internal("the copy's ids were not taken"));
  // No capability at all, for good: not only those over files (which an
  // effective uid other than 0 clears by itself) but also those that would
  // open what the sandbox's own users cannot (CAP_SYS_RAWIO for
  // /proc/kcore, CAP_SYS_PTRACE for its init's memory), whatever its mounts
  // hide, and for a sandbox whose user is host root.
  __user_cap_header_struct h{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct none[2]{};
  if (::syscall(SYS_capset, &h, none) != 0) return fail(sys_error("capset"));
  return {};
}

// fn's result, from a thread of its own that became t's root first: the
// thread ends with the copy, and its credentials with it.
template <class T, class F>
Result<T> as_root_of(const Target& t, F fn) {
  std::optional<Result<T>> out;
  try {
    std::thread th([&] {
      if (auto s = become(t); !s) {
        out.emplace(fail(s.error()));
        return;
      }
      try {
        out.emplace(fn());
      } catch (const std::bad_alloc&) {
        out.emplace(fail(make_error(ErrorKind::Limit, "out of memory")));
      }
    });
    th.join();
  } catch (const std::system_error& e) {
    return fail(make_error(ErrorKind::Limit, std::string("no thread for the copy: ") + e.what()));
  }
  return std::move(*out);
}

// The walk of copy_out: each entry opened from its parent's fd by a name of
// one component, never following a symlink.
class Walker {
 public:
  Walker(int fd, const IdMap* uids, const IdMap* gids) : tar_(fd), uids_(uids), gids_(gids) {}

  Status entry(int parent, const std::string& name, const std::string& as, int depth) {
    if (depth > kMaxDepth)
      return fail(make_error(ErrorKind::Limit, as.substr(0, 256) + "...: deeper than " +
                                                   std::to_string(kMaxDepth) + " directories"));
    // What the applier takes (oci/layer.h), and a bound on what is held.
    if (as.size() > kMaxPath)
      return fail(make_error(ErrorKind::Limit, as.substr(0, 256) + "...: a path longer than " +
                                                   std::to_string(kMaxPath)));
    struct stat st {};
    if (::fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      if (errno == ENOENT && depth > 0) return {};  // gone meanwhile
      return fail(sys_error(as));
    }
    oci::TarEntry e;
    e.path = as;
    e.mode = st.st_mode & 07777;
    e.uid = uids_ ? uids_->inside(st.st_uid) : st.st_uid;
    e.gid = gids_ ? gids_->inside(st.st_gid) : st.st_gid;
    e.mtime = st.st_mtim.tv_sec;
    if (S_ISDIR(st.st_mode)) {
      Fd dir(::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!dir) return fail(sys_error(as));
      e.type = '5';
      e.path = as == "." ? "./" : as + "/";
      if (auto s = tar_.header(e); !s) return s;
      auto names = read_dir(dir.get());
      if (!names) return fail(names.error().wrap(as));
      std::vector<std::string> sorted;
      for (auto& n : *names) sorted.push_back(std::move(n.name));
      std::sort(sorted.begin(), sorted.end());
      for (const auto& n : sorted)
        if (auto s = entry(dir.get(), n, as == "." ? n : as + "/" + n, depth + 1); !s) return s;
      return {};
    }
    if (S_ISLNK(st.st_mode)) {
      std::string target(PATH_MAX, '\0');
      ssize_t n = ::readlinkat(parent, name.c_str(), target.data(), target.size());
      if (n < 0) return fail(sys_error(as));
      target.resize(static_cast<size_t>(n));
      e.type = '2';
      e.linkname = std::move(target);
      return tar_.header(e);
    }
    if (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
      e.type = S_ISFIFO(st.st_mode) ? '6' : S_ISCHR(st.st_mode) ? '3' : '4';
      e.devmajor = major(st.st_rdev);
      e.devminor = minor(st.st_rdev);
      return tar_.header(e);
    }
    if (!S_ISREG(st.st_mode)) return {};  // a socket
    // O_NONBLOCK: a fifo swapped in after the stat does not hold the open.
    Fd f(::openat(parent, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
    if (!f) return fail(sys_error(as));
    if (::fstat(f.get(), &st) != 0) return fail(sys_error(as));
    if (!S_ISREG(st.st_mode)) return fail(invalid(as + ": replaced during the copy"));
    if (st.st_nlink > 1 && links_.size() < kMaxLinks) {
      // Past kMaxLinks, files with other links are copied whole.
      auto [it, fresh] = links_.emplace(std::make_pair(st.st_dev, st.st_ino), as);
      if (!fresh) {
        e.type = '1';
        e.linkname = it->second;
        return tar_.header(e);
      }
    }
    e.type = '0';
    e.size = static_cast<uint64_t>(st.st_size);
    if (auto s = tar_.header(e); !s) return s;
    // Exactly the size the header says: a file that grows is cut there, one
    // that shrinks is padded with zeros.
    uint64_t left = e.size;
    while (left > 0) {
      ssize_t n = ::read(f.get(), buf_, std::min<uint64_t>(left, sizeof buf_));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return fail(sys_error(as));
      if (n == 0) {
        std::fill(buf_, buf_ + std::min<uint64_t>(left, sizeof buf_), '\0');
        n = static_cast<ssize_t>(std::min<uint64_t>(left, sizeof buf_));
      }
      if (auto s = tar_.data(std::string_view(buf_, static_cast<size_t>(n))); !s) return s;
      left -= static_cast<uint64_t>(n);
    }
    return {};
  }
  Result<uint64_t> finish() {
    if (auto s = tar_.finish(); !s) return fail(s.error());
    return tar_.written();
  }

 private:
  oci::TarWriter tar_;
  const IdMap *uids_, *gids_;  // host ids to the sandbox's; none: as they are
  std::map<std::pair<dev_t, ino_t>, std::string> links_;
  char buf_[128 * 1024];
};

// The parent directory of path and its last component ("" for the root),
// the parent opened with `resolve` from base.
Result<std::pair<Fd, std::string>> split(int base, const std::string& path, uint64_t resolve) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  std::string parent = slash == std::string::npos ? "." : slash == 0 ? "/" : p.substr(0, slash);
  std::string name = slash == std::string::npos ? p : p.substr(slash + 1);
  if (name == "." || name == "..") {
    // The directory itself: its own parent is walked from.
    parent = p;
    name.clear();
  }
  auto fd = openat2_fd(base, parent, O_RDONLY | O_DIRECTORY, resolve);
  if (!fd) return fail(fd.error().wrap(path));
  return std::make_pair(std::move(*fd), std::move(name));
}

Result<uint64_t> walk(int base, const std::string& path, uint64_t resolve, int fd,
                      const Target* t) {
  if (path.empty()) return fail(invalid("cp: an empty path"));
  auto at = split(base, path, resolve);
  if (!at) return fail(at.error());
  auto w = std::make_unique<Walker>(fd, t ? &t->uids : nullptr, t ? &t->gids : nullptr);
  const bool whole = at->second.empty();
  if (auto s = w->entry(at->first.get(), whole ? "." : at->second, whole ? "." : at->second, 0); !s)
    return fail(s.error());
  return w->finish();
}

}  // namespace

Result<Target> target_of(pid_t pid, int pidfd, uid_t uid_inside, gid_t gid_inside) {
  Target t;
  const std::string proc = "/proc/" + std::to_string(pid);
  t.root = Fd(::open((proc + "/root").c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!t.root) return fail(sys_error("the sandbox's root (" + proc + "/root)"));
  auto uid = read_map(pid, "uid_map", uid_inside);
  auto gid = read_map(pid, "gid_map", gid_inside);
  // Still the sandbox's init (a zombie's root is gone, and a pid is reused
  // only once its process was reaped, which this pidfd's owner does).
  pollfd alive{pidfd, POLLIN, 0};
  if (::poll(&alive, 1, 0) != 0) return fail(invalid("the sandbox has exited"));
  if (!uid) return fail(uid.error());
  if (!gid) return fail(gid.error());
  std::tie(t.uids, t.uid) = std::move(*uid);
  std::tie(t.gids, t.gid) = std::move(*gid);
  return t;
}

uint32_t IdMap::inside(uint32_t host) const {
  for (const auto& r : ranges)
    if (host >= r.outside && host - r.outside < r.count) return r.inside + (host - r.outside);
  return 65534;
}

Result<uint64_t> copy_out(const Target& t, const std::string& path, int fd) {
  const int root = t.root.get();
  return as_root_of<uint64_t>(t, [&]() -> Result<uint64_t> {
    auto n = walk(root, path, kResolve, fd, &t);
    if (!n) return fail(n.error().wrap("cp out of " + path));
    return n;
  });
}

Result<uint64_t> copy_in(const Target& t, const std::string& dir, int fd) {
  const int root = t.root.get();
  return as_root_of<uint64_t>(t, [&]() -> Result<uint64_t> {
    auto into = openat2_fd(root, dir, O_RDONLY | O_DIRECTORY, kResolve);
    if (!into) return fail(into.error().wrap("cp into " + dir));
    auto n = extract(fd, into->get());
    if (!n) return fail(n.error().wrap("cp into " + dir));
    return n;
  });
}

Result<uint64_t> extract(int fd, int dir_fd) {
  oci::FdStream in(fd);
  oci::ApplyOptions opt;
  opt.compression = oci::Compression::None;
  opt.whiteouts = false;
  opt.keep_owners = false;
  opt.xattrs = false;
  opt.setid = false;
  opt.replace_dirs = false;
  opt.what = "archive";
  auto r = oci::apply_layer(in, dir_fd, opt);
  if (!r) return fail(r.error());
  return r->entries;
}

Result<uint64_t> write_local(const std::string& path, int fd) {
  auto n = walk(AT_FDCWD, path, 0, fd, nullptr);
  if (!n) return fail(n.error().wrap("cp " + path));
  return n;
}

}  // namespace cloister::copy

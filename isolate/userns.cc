// User namespaces: ranges, their sources, and making one (see userns.h).
#include "isolate/userns.h"

#include "isolate/capabilities.h"
#include "isolate/clone_vm.h"

#include <fcntl.h>
#include <linux/mount.h>
#include <linux/openat2.h>
#include <linux/sched.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <charconv>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>

namespace cloister::userns {

namespace {

std::optional<uint32_t> number(std::string_view s) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t i = 0;
  for (;;) {
    size_t j = s.find(sep, i);
    out.push_back(s.substr(i, j == std::string_view::npos ? std::string_view::npos : j - i));
    if (j == std::string_view::npos) return out;
    i = j + 1;
  }
}

// The first "name:start:count" line of text for owner (by name or uid).
Result<std::optional<std::pair<uint32_t, uint32_t>>> find_range(const std::string& path,
                                                                const std::string& owner) {
  std::optional<uid_t> owner_uid;
  auto text = read_file(path);
  if (!text) {
    if (text.error().code == ENOENT) return std::optional<std::pair<uint32_t, uint32_t>>{};
    return fail(text.error());
  }
  int lineno = 0;
  for (auto line : split(*text, '\n')) {
    ++lineno;
    if (line.empty() || line[0] == '#') continue;
    auto f = split(line, ':');
    if (f.size() != 3) continue;
    bool ours = f[0] == owner;
    // By uid only where a line names one: the user database is looked up
    // then alone (NSS costs a cold start 40 opens).
    if (!ours && number(f[0])) {
      if (!owner_uid) {
        if (const passwd* pw = ::getpwnam(owner.c_str())) owner_uid = pw->pw_uid;
      }
      ours = owner_uid && number(f[0]) == *owner_uid;
    }
    if (!ours) continue;
    auto start = number(f[1]), count = number(f[2]);
    if (!start || !count)
      return fail(invalid(path + ":" + std::to_string(lineno) + ": bad range for " + owner));
    return std::optional(std::pair{*start, *count});
  }
  return std::optional<std::pair<uint32_t, uint32_t>>{};
}

}  // namespace

Status check(const Map& m) {
  if (m.size == 0) return fail(invalid("user namespace: a range of 0 ids"));
  if (m.sub_size != 0) return fail(invalid("user namespace: root's range is one extent"));
  if (m.uid_base == 0 || m.gid_base == 0)
    return fail(invalid("user namespace: the range maps host id 0 (root); use userns: host"));
  if (m.uid_base == 1 || m.gid_base == 1)
    return fail(
        invalid("user namespace: the range must start above host id 1 (the id below "
                "it owns the namespace)"));
  const uint64_t top = uint64_t{0xffffffffu};  // (uid_t)-1 is no id
  if (uint64_t{m.uid_base} + m.size > top || uint64_t{m.gid_base} + m.size > top)
    return fail(invalid("user namespace: the range ends past the last host id"));
  return {};
}

Status check_ids(const Map& m, uid_t uid, gid_t gid, const uid_t* groups, size_t ngroups) {
  const std::string n = std::to_string(m.ids());
  if (uid >= m.ids())
    return fail(
        invalid("user " + std::to_string(uid) + " is outside the user namespace's " + n + " ids"));
  if (gid >= m.ids())
    return fail(
        invalid("group " + std::to_string(gid) + " is outside the user namespace's " + n + " ids"));
  for (size_t i = 0; i < ngroups; ++i)
    if (groups[i] >= m.ids())
      return fail(invalid("group " + std::to_string(groups[i]) +
                          " is outside the user namespace's " + n + " ids"));
  return {};
}

Status check_capabilities(uint64_t caps, bool unprivileged) {
  const uint64_t useless = caps & ~kUsableCapabilities;
  if (!useless) return {};
  int bit = __builtin_ctzll(useless);
  if (unprivileged)
    return fail(invalid("cap_add: " + capabilities::name(bit) +
                        " is not offered in an ordinary user's sandbox, whose namespaces its "
                        "user namespace owns (it could undo the sandbox's own mounts)"));
  return fail(invalid("cap_add: " + capabilities::name(bit) +
                      " would have no effect in the sandbox's user namespace (the kernel checks "
                      "it in a namespace of the host's); use userns: host to grant it"));
}

Result<Map> parse(std::string_view text) {
  auto f = split(text, ':');
  Map m;
  std::optional<uint32_t> a, b, c;
  if (f.size() == 2) {
    a = number(f[0]);
    b = a;
    c = number(f[1]);
  } else if (f.size() == 3) {
    a = number(f[0]);
    b = number(f[1]);
    c = number(f[2]);
  }
  if (!a || !b || !c)
    return fail(invalid("userns_range '" + std::string(text) +
                        "': expected BASE:SIZE or UIDBASE:GIDBASE:SIZE"));
  m = {*a, *b, *c};
  if (auto s = check(m); !s)
    return fail(s.error().wrap("userns_range '" + std::string(text) + "'"));
  return m;
}

Result<std::optional<Map>> from_subid(const std::string& subuid, const std::string& subgid,
                                      const std::string& owner) {
  auto u = find_range(subuid, owner);
  if (!u) return fail(u.error());
  auto g = find_range(subgid, owner);
  if (!g) return fail(g.error());
  if (!*u && !*g) return std::optional<Map>{};
  if (!*u || !*g)
    return fail(
        invalid("user namespace: " + owner + " has a range in " +
                (*u ? subuid + " but not in " + subgid : subgid + " but not in " + subuid)));
  Map m{(*u)->first, (*g)->first, std::min((*u)->second, (*g)->second)};
  if (auto s = check(m); !s)
    return fail(s.error().wrap("the range of " + owner + " in " + subuid + "/" + subgid));
  return std::optional(m);
}

Result<Map> default_map() {
  auto m = from_subid("/etc/subuid", "/etc/subgid", "cloister");
  if (!m) return fail(m.error());
  if (*m) return **m;
  return Map{kDefaultBase, kDefaultBase, kDefaultSize};
}

Pool default_pool(uint32_t size) {
  const uint32_t start = kDefaultBase + kDefaultSize;
  return Pool{start, start, kDefaultPoolEnd - start, size};
}

Status check(const Pool& p) {
  if (p.size == 0) return fail(invalid("user namespace: ranges of 0 ids"));
  if (p.slots() == 0)
    return fail(invalid("user namespace: a pool of " + std::to_string(p.span) +
                        " ids holds no range of " + std::to_string(p.size) +
                        " (each takes size + 1 ids: one owns its namespace)"));
  const uint64_t top = uint64_t{0xffffffffu};
  if (uint64_t{p.uid_base} + p.span > top || uint64_t{p.gid_base} + p.span > top)
    return fail(invalid("user namespace: the pool ends past the last host id"));
  // The first and the last slot bound every other one.
  if (auto s = check(p.slot(0)); !s) return s;
  return check(p.slot(p.slots() - 1));
}

namespace {

constexpr uint64_t kGidLocks = uint64_t{1} << 32;  // gid ids are locked 2^32 further

// kLeaseFile, opened for locking: a regular file of root's, 0600, in a
// directory of root's that nobody else may write (a file someone else can
// replace or write is no lock).
Result<Fd> open_lease_file() {
  const std::string file = kLeaseFile;
  const std::string dir = file.substr(0, file.rfind('/'));
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return fail(sys_error("user namespace ranges: mkdir " + dir));
  struct stat d {};
  if (::lstat(dir.c_str(), &d) != 0) return fail(sys_error("user namespace ranges: " + dir));
  if (!S_ISDIR(d.st_mode) || d.st_uid != 0 || (d.st_mode & 022))
    return fail(make_error(ErrorKind::PermissionDenied,
                           "user namespace ranges: " + dir +
                               " must be a directory of root's that only root may write"));
  Fd fd(::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) return fail(sys_error("user namespace ranges: open " + file));
  struct stat f {};
  if (::fstat(fd.get(), &f) != 0 || !S_ISREG(f.st_mode) || f.st_uid != 0 || (f.st_mode & 077))
    return fail(make_error(ErrorKind::PermissionDenied,
                           "user namespace ranges: " + file + " must be root's, mode 0600"));
  return fd;
}

int lock_ids(int fd, uint64_t start, uint64_t len, short type) {
  struct flock l {};
  l.l_type = type;
  l.l_whence = SEEK_SET;
  l.l_start = static_cast<off_t>(start);
  l.l_len = static_cast<off_t>(len);
  return ::fcntl(fd, F_OFD_SETLK, &l) == 0 ? 0 : errno;
}

// Locks m's uid and gid ids with its owner (type F_WRLCK or F_RDLCK): 0,
// or errno (EAGAIN: another process's lock is in the way).
int lock_map(int fd, const Map& m, short type) {
  const uint64_t len = uint64_t{m.size} + 1;
  int e = lock_ids(fd, m.uid_base - 1, len, type);
  if (e == 0) {
    e = lock_ids(fd, kGidLocks + m.gid_base - 1, len, type);
    if (e != 0) (void)lock_ids(fd, m.uid_base - 1, len, F_UNLCK);
  }
  return e == EACCES ? EAGAIN : e;
}

// Whether fd is still the file at kLeaseFile (it may have been replaced
// between our open and our lock, and a lock on a file that is gone holds
// nothing).
bool still_the_lease_file(int fd) {
  struct stat a {
  }, b{};
  return ::fstat(fd, &a) == 0 && ::lstat(kLeaseFile, &b) == 0 && a.st_dev == b.st_dev &&
         a.st_ino == b.st_ino;
}

Error lock_error(int e) {
  return sys_error(std::string("user namespace ranges: lock ") + kLeaseFile, e);
}

Error replaced_error() {
  return make_error(ErrorKind::Limit,
                    std::string("user namespace ranges: ") + kLeaseFile + " keeps being replaced");
}

}  // namespace

Result<Lease> lease(const Pool& p) {
  if (auto s = check(p); !s) return fail(s.error());
  for (int attempt = 0; attempt < 3; ++attempt) {
    auto fd = open_lease_file();
    if (!fd) return fail(fd.error());
    for (uint32_t k = 0; k < p.slots(); ++k) {
      const Map m = p.slot(k);
      const int e = lock_map(fd->get(), m, F_WRLCK);
      if (e == EAGAIN) continue;
      if (e != 0) return fail(lock_error(e));
      if (!still_the_lease_file(fd->get())) break;  // replaced: open it again
      return Lease{m, std::move(*fd)};
    }
    if (still_the_lease_file(fd->get()))
      return fail(make_error(ErrorKind::Limit,
                             "user namespace: all " + std::to_string(p.slots()) + " ranges of " +
                                 std::to_string(p.size) + " ids from host id " +
                                 std::to_string(p.uid_base) + " are in use by other sandboxes"));
  }
  return fail(replaced_error());
}

Result<Fd> hold_shared(const Map& m) {
  for (int attempt = 0; attempt < 3; ++attempt) {
    // No lock file here (no /run, or one that is not root's alone): no pool
    // can lease a range either (lease() refuses), so nothing to hold.
    auto fd = open_lease_file();
    if (!fd) return Fd();
    const int e = lock_map(fd->get(), m, F_RDLCK);
    if (e == EAGAIN)
      return fail(
          make_error(ErrorKind::Limit,
                     "user namespace: host ids " + std::to_string(m.uid_base - 1) + ".." +
                         std::to_string(uint64_t{m.uid_base} + m.size - 1) +
                         " overlap a range leased to a sandbox of a pool (userns: sandbox) now: an "
                         "executor's range must lie outside every pool"));
    if (e != 0) return fail(lock_error(e));
    if (still_the_lease_file(fd->get())) return std::move(*fd);
  }
  return fail(replaced_error());
}

Map own_ids() {
  return Map{static_cast<uint32_t>(::geteuid()), static_cast<uint32_t>(::getegid()), 1};
}

std::optional<Map> own_subids() {
  if (::access(kNewUidmap, X_OK) != 0 || ::access(kNewGidmap, X_OK) != 0) return std::nullopt;
  std::string name = std::to_string(::geteuid());
  long len = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(len > 0 ? static_cast<size_t>(len) : 16384);
  passwd pw{}, *found = nullptr;
  if (::getpwuid_r(::geteuid(), &pw, buf.data(), buf.size(), &found) == 0 && found)
    name = found->pw_name;
  auto sub = from_subid("/etc/subuid", "/etc/subgid", name);
  if (!sub || !*sub) return std::nullopt;
  Map m = own_ids();
  // Ids 1.. inside; the kernel takes at most 340 extents, we write two.
  const uint64_t top = uint64_t{0xffffffffu} - 1;
  uint32_t count = (*sub)->size;
  if (uint64_t{count} + 1 > top) count = static_cast<uint32_t>(top - 1);
  m.sub_uid_base = (*sub)->uid_base;
  m.sub_gid_base = (*sub)->gid_base;
  m.sub_size = count;
  return m;
}

namespace {

// The maker only waits to be killed (every signal blocked), sharing the
// caller's memory (isolate/clone_vm.h): system calls only.
void maker(void* p) {
  const pid_t parent = *static_cast<const pid_t*>(p);
  child_syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL);
  if (child_syscall(SYS_getppid) != parent)
    for (;;) child_syscall(SYS_exit_group, 1);
  for (;;) child_syscall(SYS_pause);
}

// One namespace made at a time in a process: the change of ids below marks
// our memory not dumpable, and the flag is set back only once the maker is
// gone, so no maker may be alive when another call sets it back.
std::mutex g_make_mu;

}  // namespace

Result<Fd> make(const Map& m) {
  if (auto s = check(m); !s) return fail(s.error());
  // The namespace comes with the clone of a child (CLONE_NEWUSER; unshare
  // is refused to a process with threads), which only lives while we write
  // its maps. The kernel takes the namespace's owner from the effective ids
  // of the cloning thread, so this thread alone (raw system calls, not
  // glibc's for every thread) takes the owner's effective ids for the
  // clone (userns.h: owner_of): every payload's per-user counters are
  // charged to that uid, not host root's. Its real and saved uid stay 0,
  // so no process of the owner uid may signal or ptrace it meanwhile.
  //
  // The owner has every capability in the namespace, and may stop or kill
  // the maker there: nothing is asked of the maker, whose maps are written
  // from here. It shares our memory (a copy of this process's page tables
  // cost a cold start more than the rest of this function), which is kept
  // not dumpable (only that keeps the owner's ptrace off it) until the
  // maker is gone. No
  // exit signal: the caller's SIGCHLD handling never sees it; it is reaped
  // through its pidfd.
  std::lock_guard one_at_a_time(g_make_mu);
  const uid_t owner = owner_of(m);
  const gid_t owner_gid = m.gid_base - 1;
  const bool become = ::geteuid() == 0;
  const gid_t egid = ::getegid();
  // Not dumpable from before the change of ids, whatever fs.suid_dumpable
  // would make of it (1 leaves the memory the owner's to ptrace through
  // the maker, over which it has every capability).
  const int dumpable = ::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
  if (::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
    return fail(sys_error("user namespace: prctl(PR_SET_DUMPABLE, 0)"));
  auto restore_dumpable = [&] {
    if (dumpable >= 0 && ::prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) != dumpable)
      (void)::prctl(PR_SET_DUMPABLE, dumpable, 0, 0, 0);
  };
  pid_t parent = ::getpid();
  int pidfd = -1;
  clone_args args{};
  args.flags = CLONE_NEWUSER | CLONE_PIDFD;
  args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  args.exit_signal = 0;
  long pid = -1;
  int clone_errno = 0;
  // No handler of ours runs as the owner here, nor in the maker, which
  // starts with every signal blocked. (A thread calling glibc's setuid and
  // the like meanwhile would change this one's ids too: an embedding
  // program must not change ids while it starts sandboxes.)
  sigset_t all, old;
  sigfillset(&all);
  ::pthread_sigmask(SIG_SETMASK, &all, &old);
  // The group first, while this thread may still change it.
  if (become && (::syscall(SYS_setresgid, -1, owner_gid, -1) != 0 ||
                 ::syscall(SYS_setresuid, -1, owner, -1) != 0)) {
    clone_errno = errno;
  } else {
#ifdef CLOISTER_CLONE3_VM
    constexpr size_t kStack = 16 * 1024;
    std::unique_ptr<char[]> stack(new char[kStack]);  // malloc's: 16-byte aligned
    // Our memory and fd table, shared: nothing copied.
    args.flags |= CLONE_VM | CLONE_FILES;
    args.stack = reinterpret_cast<uint64_t>(stack.get());
    args.stack_size = kStack;
    pid = cloister_clone3_vm(&args, sizeof args, maker, &parent);
    if (pid < 0) clone_errno = static_cast<int>(-pid);
#else
    pid = ::syscall(SYS_clone3, &args, sizeof args);
    if (pid == 0) maker(&parent);
    if (pid < 0) clone_errno = errno;
#endif
  }
  // Back to root's ids (allowed: the real and saved uid are 0), the
  // effective uid first, which brings the capabilities back.
  if (become &&
      (::syscall(SYS_setresuid, -1, 0, -1) != 0 || ::syscall(SYS_setresgid, -1, egid, -1) != 0))
    ::abort();  // this thread cannot be root again: unsafe to go on
  ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  if (pid < 0) {
    restore_dumpable();
    // The kernel refuses a new user namespace to a chrooted process
    // (root's too): say so, as nothing else would.
    struct stat here {
    }, ns_root{};
    const bool chrooted = ::stat("/", &here) == 0 && ::stat("/proc/1/root/.", &ns_root) == 0 &&
                          (here.st_dev != ns_root.st_dev || here.st_ino != ns_root.st_ino);
    return fail(sys_error("user namespace: make it as uid " + std::to_string(owner) +
                              (chrooted ? " (this process is chrooted, where the kernel makes "
                                          "none: run outside the chroot, or userns: host)"
                                        : ""),
                          clone_errno));
  }
  Fd child(pidfd);
  auto finish = [&] {
    (void)::syscall(SYS_pidfd_send_signal, child.get(), SIGKILL, nullptr, 0);
    siginfo_t info;
    while (::waitid(static_cast<idtype_t>(P_PIDFD), child.get(), &info, WEXITED | __WALL) != 0 &&
           errno == EINTR) {
    }
    restore_dumpable();
  };
  const std::string proc = "/proc/" + std::to_string(pid);
  auto write_map = [&](const char* file, uint32_t base) -> Status {
    std::string line = "0 " + std::to_string(base) + " " + std::to_string(m.size) + "\n";
    if (auto s = write_file(proc + "/" + file, line); !s)
      return fail(s.error().wrap("user namespace: write " + std::string(file) + " '0 " +
                                 std::to_string(base) + " " + std::to_string(m.size) +
                                 "' (needs root, or userns: host)"));
    return {};
  };
  Status s = write_map("uid_map", m.uid_base);
  if (s) s = write_map("gid_map", m.gid_base);
  if (!s) {
    finish();
    return fail(s.error());
  }
  auto ns = open_fd(proc + "/ns/user", O_RDONLY);
  finish();
  if (!ns) return fail(ns.error().wrap("user namespace: open"));
  return ns;
}

Result<Fd> read_only_tree(const std::string& path, int pinned) {
  struct stat want {};
  if (::fstat(pinned, &want) != 0) return fail(sys_error("stat " + path));
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0)
    return fail(sys_error("socketpair"));
  Fd ours(sv[0]), theirs(sv[1]);
  // As make(): no exit signal, every other fd closed, raw calls only.
  int pidfd = -1;
  clone_args args{};
  args.flags = CLONE_PIDFD | CLONE_NEWUSER | CLONE_NEWNS;
  args.pidfd = reinterpret_cast<uint64_t>(&pidfd);
  args.exit_signal = 0;
  const int sock = theirs.get();
  const char* where = path.c_str();
  long pid = ::syscall(SYS_clone3, &args, sizeof args);
  if (pid == 0) {
    if (sock > 0) ::syscall(SYS_close_range, 0, sock - 1, 0);
    ::syscall(SYS_close_range, sock + 1, ~0U, 0);
    int e = 0, tree = -1;
    open_how how{};
    how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
    how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
    int dir = static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, where, &how, sizeof how));
    struct stat st {};
    if (dir < 0 || ::fstat(dir, &st) != 0) {
      e = errno;
    } else if (st.st_dev != want.st_dev || st.st_ino != want.st_ino) {
      e = ESTALE;
    } else {
      tree = static_cast<int>(
          ::syscall(SYS_open_tree, dir, "",
                    AT_EMPTY_PATH | OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE));
      mount_attr attr{};
      attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
      if (tree < 0 || ::syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr,
                                sizeof attr) != 0)
        e = errno;
    }
    (void)send_fds(sock, &e, sizeof e, &tree, e == 0 ? 1 : 0);
    ::syscall(SYS_exit_group, 0);
  }
  if (pid < 0) return fail(sys_error("read-only view of " + path + ": clone"));
  Fd child(pidfd);
  theirs.reset();
  int e = EPIPE, tree = -1;
  size_t nfds = 0;
  ssize_t n;
  while ((n = recv_fds(ours.get(), &e, sizeof e, &tree, 1, &nfds)) < 0 && errno == EINTR) {
  }
  Fd got(nfds == 1 ? tree : -1);
  siginfo_t info;
  while (::waitid(static_cast<idtype_t>(P_PIDFD), child.get(), &info, WEXITED | __WALL) != 0 &&
         errno == EINTR) {
  }
  if (n != static_cast<ssize_t>(sizeof e)) e = EPIPE;
  if (e == ESTALE)
    return fail(invalid(path + " changed while it was opened (no longer the directory checked)"));
  if (e != 0 || !got) return fail(sys_error("read-only view of " + path, e ? e : EPROTO));
  return got;
}

}  // namespace cloister::userns

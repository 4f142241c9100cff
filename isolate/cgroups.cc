// cgroups: layout detection, base preparation, per-process cgroups, limits,
// kill, stats and stale cleanup. See cgroups.h for what is promised and
// docs/cgroups.md for the mapping of every limit to the kernel files.
#include "isolate/cgroups.h"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

namespace cloister::cgroups {

namespace {

using Clock = std::chrono::steady_clock;

// Sequence of per-process cgroup names, process-wide: several Managers in one
// process (shared() and open()) work below the same bases.
std::atomic<uint64_t> g_seq{0};

// How long kill() waits for a cgroup to become empty. SIGKILL is not
// blockable, so only a process stuck in the kernel (D state) can hold us up.
constexpr auto kEmptyTimeout = std::chrono::seconds(5);
// How long a freezer may take to reach FROZEN before we kill anyway.
constexpr auto kFreezeTimeout = std::chrono::seconds(1);
// On cgroup2, the leaf the runtime moves itself into when its own cgroup must
// become an inner node (no-internal-process rule), next to "<own>/cloister".
constexpr std::string_view kRuntimeLeaf = "cloister.runtime";

// v1 controllers cloister uses. Others (named hierarchies) are left alone.
// cpuset only for a cpuset limit: a new cpuset directory needs its parent's
// cpus and mems copied in before anything can join it; devices only for a
// device policy.
constexpr std::string_view kV1Controllers[] = {"memory",  "cpuacct", "cpu",    "pids",
                                               "freezer", "blkio",   "cpuset", "devices"};
// cgroup2 controllers cloister enables below its base when they are not
// already owned by a v1 hierarchy ("io" is the v2 name of "blkio").
constexpr std::string_view kV2Controllers[] = {"memory", "pids", "cpu", "io", "cpuset"};

std::string join(std::string_view a, std::string_view b) {
  std::string out(a);
  while (!out.empty() && out.back() == '/') out.pop_back();
  while (!b.empty() && b.front() == '/') b.remove_prefix(1);
  if (b.empty()) return out.empty() ? "/" : out;
  out += '/';
  out += b;
  return out;
}

std::vector<std::string> split(std::string_view s, std::string_view seps) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find_first_of(seps, i);
    if (j == std::string_view::npos) j = s.size();
    if (j > i) out.emplace_back(s.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

// /proc/self/mounts escapes space, tab, newline and backslash as \ooo.
std::string unescape_mount_field(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '7') {
      out += static_cast<char>((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::optional<uint64_t> parse_u64(std::string_view s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.remove_suffix(1);
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// Value of "key N" in a flat-keyed file (cpu.stat, memory.events, ...).
std::optional<uint64_t> keyed_value(std::string_view text, std::string_view key) {
  for (const auto& line : split(text, "\n")) {
    auto fields = split(line, " ");
    if (fields.size() == 2 && fields[0] == key) return parse_u64(fields[1]);
  }
  return std::nullopt;
}

bool exists(const std::string& path) {
  return ::access(path.c_str(), F_OK) == 0;
}

bool has(const std::vector<std::string>& v, std::string_view s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

Status mkdir_one(const std::string& path) {
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) return fail(sys_error("mkdir " + path));
  return {};
}

// mkdir -p for the part of rel below mount (the mount itself exists).
Status mkdir_below(const std::string& mount, const std::string& rel) {
  // Usually all there: one call for that case, one per part otherwise.
  const std::string full = join(mount, rel);
  if (::mkdir(full.c_str(), 0755) == 0 || errno == EEXIST) return {};
  if (errno != ENOENT) return fail(sys_error("mkdir " + full));
  std::string cur = mount;
  for (const auto& part : split(rel, "/")) {
    cur = join(cur, part);
    if (auto s = mkdir_one(cur); !s) return s;
  }
  return {};
}

Status write_at(const std::string& dir, std::string_view file, std::string_view value) {
  return write_file(join(dir, file), value);
}

Result<std::string> read_at(const std::string& dir, std::string_view file) {
  return read_file(join(dir, file));
}

// Subdirectory names of dir (cgroup children). A missing dir has none.
Result<std::vector<std::string>> subdirs(const std::string& dir) {
  auto entries = read_dir(dir);
  if (!entries) {
    if (entries.error().code == ENOENT) return std::vector<std::string>{};
    return fail(entries.error());
  }
  std::vector<std::string> out;
  for (auto& e : *entries)
    if (e.type == DT_DIR) out.push_back(std::move(e.name));
  return out;
}

// Pids in dir/cgroup.procs and in every descendant's. A threaded cgroup
// (one a payload made with cgroup.type) refuses to list processes
// (EOPNOTSUPP): every process with a thread in it is in the cgroup.procs of
// its threaded domain, an ancestor already read.
Status collect_pids(const std::string& dir, std::vector<pid_t>& out) {
  auto text = read_at(dir, "cgroup.procs");
  if (!text) {
    if (text.error().code == ENOENT) return {};
    if (text.error().code != EOPNOTSUPP) return fail(text.error());
  } else {
    for (const auto& line : split(*text, "\n"))
      if (auto v = parse_u64(line)) out.push_back(static_cast<pid_t>(*v));
  }
  auto subs = subdirs(dir);
  if (!subs) return fail(subs.error());
  // A sub-cgroup removed between the list and its read is just empty
  // (read_at's ENOENT above); one removed while its procs are read is too.
  for (const auto& s : *subs)
    if (auto st = collect_pids(join(dir, s), out); !st && st.error().code != ENODEV) return st;
  return {};
}

// rmdir dir after its descendants (the sandbox may have nested cgroups).
// rmdir can fail with EBUSY for a moment after the last task exited, while
// the kernel finishes uncharging it: retry briefly.
Status rmdir_tree(const std::string& dir) {
  auto subs = subdirs(dir);
  if (!subs) return fail(subs.error());
  for (const auto& s : *subs)
    if (auto st = rmdir_tree(join(dir, s)); !st) return st;
  auto deadline = Clock::now() + std::chrono::seconds(2);
  for (;;) {
    if (::rmdir(dir.c_str()) == 0 || errno == ENOENT) return {};
    if (errno != EBUSY || Clock::now() > deadline) return fail(sys_error("rmdir " + dir));
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Reads the "populated" key of a cgroup2 cgroup.events until it is 0. The
// kernel signals changes of that file as POLLPRI (kernfs_notify).
Status wait_v2_empty(const std::string& dir, Clock::time_point deadline) {
  std::string path = join(dir, "cgroup.events");
  auto fd = open_fd(path, O_RDONLY);
  if (!fd) {
    if (fd.error().code == ENOENT) return {};  // the cgroup is gone
    return fail(fd.error());
  }
  for (;;) {
    char buf[512];
    ssize_t n = ::pread(fd->get(), buf, sizeof buf - 1, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == ENODEV || errno == ENOENT) return {};  // removed under us
      return fail(sys_error("read " + path));
    }
    auto populated = keyed_value(std::string_view(buf, static_cast<size_t>(n)), "populated");
    if (!populated) return fail(internal("no 'populated' key in " + path));
    if (*populated == 0) return {};
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0)
      return fail(make_error(ErrorKind::Timeout, "processes still in " + dir + " after kill"));
    pollfd p{fd->get(), POLLPRI, 0};
    if (::poll(&p, 1, static_cast<int>(std::min<long long>(left, 100))) < 0 && errno != EINTR)
      return fail(sys_error("poll " + path));
  }
}

// Waits until a cgroup2 cgroup.events says "frozen 1" (best effort: a task
// in an uninterruptible sleep may delay it; killing proceeds anyway).
void wait_v2_frozen(const std::string& dir, Clock::time_point deadline) {
  auto fd = open_fd(join(dir, "cgroup.events"), O_RDONLY);
  if (!fd) return;
  while (Clock::now() < deadline) {
    char buf[512];
    ssize_t n = ::pread(fd->get(), buf, sizeof buf - 1, 0);
    if (n < 0) return;
    if (keyed_value(std::string_view(buf, static_cast<size_t>(n)), "frozen") == 1u) return;
    pollfd p{fd->get(), POLLPRI, 0};
    ::poll(&p, 1, 10);
  }
}

// SIGKILLs every pid found under dirs until none is left (or the deadline).
// Used where cgroup.kill does not exist: v1, and cgroup2 before Linux 5.14.
Status kill_loop(const std::vector<std::string>& dirs, Clock::time_point deadline) {
  auto sleep = std::chrono::milliseconds(1);
  for (;;) {
    std::vector<pid_t> pids;
    for (const auto& d : dirs)
      if (auto s = collect_pids(d, pids); !s) return s;
    if (pids.empty()) return {};
    for (pid_t p : pids) {
      // Never signal ourselves or init, whatever a broken hierarchy says.
      if (p <= 1 || p == ::getpid()) {
        return fail(
            internal("refusing to kill pid " + std::to_string(p) + " found in " + dirs.front()));
      }
      ::kill(p, SIGKILL);
    }
    if (Clock::now() > deadline)
      return fail(make_error(ErrorKind::Timeout, "processes still in " + dirs.front()));
    std::this_thread::sleep_for(sleep);
    sleep = std::min(sleep * 2, std::chrono::milliseconds(20));
  }
}

// One mounted hierarchy.
struct Hierarchy {
  bool v2 = false;
  std::string mount;                     // absolute mount point
  std::string options;                   // its mount options, as /proc/self/mounts has them
  std::vector<std::string> controllers;  // v1: the controllers of this mount
  std::string own;                       // our cgroup in it, from /proc/self/cgroup
  std::string base_rel;                  // base, relative to the mount
  std::string base;                      // absolute base directory
};

struct ProcCgroupLine {
  std::string id;
  std::vector<std::string> controllers;
  std::string path;
};

Result<std::vector<ProcCgroupLine>> read_proc_cgroup() {
  auto text = read_file("/proc/self/cgroup");
  if (!text) return fail(text.error());
  std::vector<ProcCgroupLine> out;
  for (const auto& line : split(*text, "\n")) {
    size_t a = line.find(':');
    size_t b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    ProcCgroupLine l;
    l.id = line.substr(0, a);
    l.controllers = split(std::string_view(line).substr(a + 1, b - a - 1), ",");
    l.path = line.substr(b + 1);
    if (l.path.empty()) l.path = "/";
    out.push_back(std::move(l));
  }
  return out;
}

// Our cgroup2 cgroup. A runtime found in "<own>/cloister.runtime" was put
// there by an earlier open() (ours or a parent runtime's) to free <own> for
// controllers: <own> is still the cgroup to work below, otherwise every
// open() would nest one level deeper.
std::string own_v2(const std::vector<ProcCgroupLine>& lines) {
  for (const auto& l : lines) {
    if (l.id != "0" || !l.controllers.empty()) continue;
    std::string leaf = "/" + std::string(kRuntimeLeaf);
    if (l.path.ends_with(leaf)) {
      std::string parent = l.path.substr(0, l.path.size() - leaf.size());
      return parent.empty() ? "/" : parent;
    }
    return l.path;
  }
  return "/";
}

// Shares of v1 cpu from a v2-style weight, the mapping crun and runc use
// (inverse of weight = 1 + ((shares - 2) * 9999) / 262142).
uint64_t weight_to_shares(uint64_t w) {
  return 2 + ((w - 1) * 262142) / 9999;
}
// blkio weight (10..1000) from a v2 io weight (1..10000), inverse of crun's
// 1 + (blkio - 10) * 9999 / 990.
uint64_t weight_to_blkio(uint64_t w) {
  return 10 + ((w - 1) * 990) / 9999;
}

// A new v1 cpuset directory, and each above it up to the hierarchy's mount,
// gets its parent's cpus and mems where it has none: nothing can join an
// empty cpuset (ENOSPC).
Status init_cpuset(const std::string& mount, const std::string& dir) {
  std::vector<std::string> chain;
  for (std::string d = dir; d.size() > mount.size(); d = d.substr(0, d.rfind('/')))
    chain.push_back(d);
  for (auto it = chain.rbegin(); it != chain.rend(); ++it) {
    const std::string parent = it->substr(0, it->rfind('/'));
    for (const char* f : {"cpuset.cpus", "cpuset.mems"}) {
      auto cur = read_at(*it, f);
      if (!cur) return fail(cur.error());
      if (cur->find_first_not_of(" \n") != std::string::npos) continue;
      auto from = read_at(parent, f);
      if (!from) return fail(from.error());
      if (auto s = write_at(*it, f, *from); !s) return s;
    }
  }
  return {};
}

}  // namespace

std::string_view layout_name(Layout l) {
  switch (l) {
    case Layout::Unified:
      return "unified";
    case Layout::Hybrid:
      return "hybrid";
    case Layout::Legacy:
      return "legacy";
  }
  return "unknown";
}

// ---------------------------------------------------------------------------
// Cgroup

struct Cgroup::Impl {
  struct Dir {
    std::string path;
    bool v2 = false;
    std::vector<std::string> controllers;  // v1 only
  };
  std::string name;
  std::vector<Dir> dirs;
  Fd v2fd;
  bool destroyed = false;
  // open_named's handles: only an explicit destroy() removes the cgroup.
  bool borrowed = false;
  // A CPU quota was written (or may have been, for a borrowed handle).
  bool cpu_capped = false;
  // make_child's: destroy() only removes it, and leaves it while populated.
  bool child = false;

  const Dir* v2dir() const {
    for (const auto& d : dirs)
      if (d.v2) return &d;
    return nullptr;
  }
  const Dir* v1dir(std::string_view ctl) const {
    for (const auto& d : dirs)
      if (!d.v2 && has(d.controllers, ctl)) return &d;
    return nullptr;
  }

  // sweep_v1: also kill what is in the v1 directories only (see kill()).
  Status kill(bool sweep_v1 = true);
  Status destroy();
  // Call only once every task of the tree has SIGKILL pending (cgroup.kill
  // written, or the tree killed while frozen): the CPU quota goes, so that
  // the dying tasks are not left throttled (a process under a small quota
  // can take seconds to die, moby#37326), and none of them can run user
  // code again to use the CPU it gives.
  // A borrowed cgroup (an OCI container's, between verbs) outlives the
  // kill: the quota its owner set is put back once the kill is over.
  void lift_cpu_cap();
  void restore_cpu_cap();
  Status kill_tree(bool sweep_v1);
  std::optional<std::string> saved_cpu_max, saved_cfs_quota;
};

Status Cgroup::Impl::kill(bool sweep_v1) {
  Status s = kill_tree(sweep_v1);
  restore_cpu_cap();
  return s;
}

// Only over what lift_cpu_cap wrote: an `update` of the quota that landed
// during the kill is the owner's newer word and stays.
void Cgroup::Impl::restore_cpu_cap() {
  auto still = [](const std::string& dir, const char* file, std::string_view lifted) {
    auto v = read_at(dir, file);
    return v && v->starts_with(lifted) &&
           (v->size() == lifted.size() || (*v)[lifted.size()] == ' ' ||
            (*v)[lifted.size()] == '\n');
  };
  if (const Dir* v2 = v2dir(); v2 && saved_cpu_max && still(v2->path, "cpu.max", "max"))
    (void)write_at(v2->path, "cpu.max", *saved_cpu_max);
  if (const Dir* d = v1dir("cpu"); d && saved_cfs_quota && still(d->path, "cpu.cfs_quota_us", "-1"))
    (void)write_at(d->path, "cpu.cfs_quota_us", *saved_cfs_quota);
  saved_cpu_max.reset();
  saved_cfs_quota.reset();
}

void Cgroup::Impl::lift_cpu_cap() {
  if (!cpu_capped) return;
  auto trim = [](std::string v) {
    while (!v.empty() && (v.back() == '\n' || v.back() == ' ')) v.pop_back();
    return v;
  };
  if (const Dir* v2 = v2dir()) {
    if (borrowed && !saved_cpu_max)
      if (auto v = read_at(v2->path, "cpu.max")) saved_cpu_max = trim(*v);
    (void)write_at(v2->path, "cpu.max", "max");
  }
  if (const Dir* d = v1dir("cpu")) {
    if (borrowed && !saved_cfs_quota)
      if (auto v = read_at(d->path, "cpu.cfs_quota_us")) saved_cfs_quota = trim(*v);
    (void)write_at(d->path, "cpu.cfs_quota_us", "-1");
  }
}

Status Cgroup::Impl::kill_tree(bool sweep_v1) {
  if (destroyed) return {};
  auto deadline = Clock::now() + kEmptyTimeout;
  std::vector<std::string> v1dirs;
  for (const auto& d : dirs)
    if (!d.v2) v1dirs.push_back(d.path);

  if (const Dir* v2 = v2dir(); v2 && exists(v2->path)) {
    // cgroup.kill (Linux 5.14) kills the whole subtree atomically, including
    // processes forked while it runs.
    if (exists(join(v2->path, "cgroup.kill"))) {
      if (auto s = write_at(v2->path, "cgroup.kill", "1"); !s) return s;
      lift_cpu_cap();
      // Again: kernels before the fork/cgroup.kill race fix can let a child
      // forked during the first write through.
      (void)write_at(v2->path, "cgroup.kill", "1");
    } else if (exists(join(v2->path, "cgroup.freeze"))) {
      // Freeze first so that nothing forks between listing and killing.
      if (auto s = write_at(v2->path, "cgroup.freeze", "1"); !s) return s;
      wait_v2_frozen(v2->path, Clock::now() + kFreezeTimeout);
      Status k = kill_loop({v2->path}, deadline);
      if (k) lift_cpu_cap();
      auto t = write_at(v2->path, "cgroup.freeze", "0");
      if (!k) return k;
      if (!t) return t;
    } else {
      if (auto s = kill_loop({v2->path}, deadline); !s) return s;
    }
    if (auto s = wait_v2_empty(v2->path, deadline); !s) return s;
    // A process attached to v1 only (not through attach()) would survive
    // cgroup.kill: sweep the v1 directories too (normally already empty).
    if (sweep_v1 && !v1dirs.empty()) return kill_loop(v1dirs, deadline);
    return {};
  }

  // Legacy: freeze (so the tree cannot fork while we list it), kill, thaw.
  // v1 frozen tasks only die once thawed.
  if (const Dir* fz = v1dir("freezer"); fz && exists(fz->path)) {
    if (auto s = write_at(fz->path, "freezer.state", "FROZEN"); !s) return s;
    auto fdeadline = Clock::now() + kFreezeTimeout;
    bool frozen = false;
    while (Clock::now() < fdeadline) {
      auto st = read_at(fz->path, "freezer.state");
      if (!st) break;
      if (st->starts_with("FROZEN")) {
        frozen = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    std::vector<pid_t> pids;
    Status c = collect_pids(fz->path, pids);
    for (pid_t p : pids)
      if (p > 1 && p != ::getpid()) ::kill(p, SIGKILL);
    // Only a tree that froze has no fork between the list and the kill.
    if (c && frozen) lift_cpu_cap();
    auto t = write_at(fz->path, "freezer.state", "THAWED");
    if (!c) return c;
    if (!t) return t;
  }
  return kill_loop(v1dirs, deadline);
}

Status Cgroup::Impl::destroy() {
  if (destroyed) return {};
  if (child) {
    v2fd.reset();
    for (const auto& d : dirs) {
      if (::rmdir(d.path.c_str()) == 0 || errno == ENOENT) continue;
      if (errno != EBUSY) return fail(sys_error("rmdir " + d.path));
      // Still populated: left to the parent's removal. (Emptied just now:
      // the kernel is finishing its uncharge, which rmdir_tree waits out.)
      auto ev = read_at(d.path, "cgroup.events");
      if (ev && keyed_value(*ev, "populated").value_or(1) != 0) continue;
      if (Status s = rmdir_tree(d.path); !s) return s;
    }
    destroyed = true;
    return {};
  }
  // With cgroup2 the v1 directories are swept one by one below, and only
  // where the kernel says something is left: rmdir of a cgroup fails
  // (EBUSY) while it has a task or a child cgroup, so one that goes was
  // empty. One system call a directory instead of about a dozen.
  const bool by_rmdir = v2dir() != nullptr;
  Status first = kill(!by_rmdir);
  if (!first) first = fail(first.error().wrap("kill " + name));
  v2fd.reset();
  for (const auto& d : dirs) {
    if (by_rmdir && (::rmdir(d.path.c_str()) == 0 || errno == ENOENT)) continue;
    if (by_rmdir && !d.v2 && errno == EBUSY)
      if (Status k = kill_loop({d.path}, Clock::now() + kEmptyTimeout); !k && first)
        first = fail(k.error().wrap("kill " + name));
    Status s = rmdir_tree(d.path);
    if (!s && first) first = s;
  }
  if (first) destroyed = true;
  return first;
}

Cgroup::Cgroup(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Cgroup::Cgroup(Cgroup&&) noexcept = default;
Cgroup& Cgroup::operator=(Cgroup&& o) noexcept {
  if (this != &o) {
    if (impl_ && !impl_->borrowed) (void)impl_->destroy();
    impl_ = std::move(o.impl_);
  }
  return *this;
}
Cgroup::~Cgroup() {
  if (impl_ && !impl_->borrowed) (void)impl_->destroy();
}

const std::string& Cgroup::name() const {
  static const std::string empty;
  return impl_ ? impl_->name : empty;
}

int Cgroup::clone_fd() const {
  return impl_ ? impl_->v2fd.get() : -1;
}

bool Cgroup::needs_attach() const {
  if (!impl_) return false;
  return std::any_of(impl_->dirs.begin(), impl_->dirs.end(), [](const auto& d) { return !d.v2; });
}

Status Cgroup::attach(pid_t pid, bool entered_v2) {
  if (!impl_) return fail(invalid("attach: moved-from cgroup"));
  std::string p = std::to_string(pid);
  // Every write to cgroup.procs migrates the process, which takes the
  // global threadgroup rwsem for writing and can wait a whole RCU grace
  // period: the v2 directory is skipped when clone3 already placed it there.
  for (const auto& d : impl_->dirs) {
    if (d.v2 && entered_v2) continue;
    if (auto s = write_at(d.path, "cgroup.procs", p); !s)
      return fail(s.error().wrap("attach " + p + " to " + impl_->name));
  }
  return {};
}

bool Cgroup::kills_atomically() const {
  const Impl::Dir* v2 = impl_ && !impl_->destroyed ? impl_->v2dir() : nullptr;
  return v2 && exists(join(v2->path, "cgroup.kill"));
}

Status Cgroup::move_to_exec_inits(pid_t pid) const {
  const Impl::Dir* v2 = impl_ ? impl_->v2dir() : nullptr;
  if (!v2) return fail(invalid("move: no cgroup2 directory"));
  // A leaf beside the sandbox's: where the sandbox's parent enables
  // controllers for it, only a leaf may hold processes.
  const std::string dir = v2->path.substr(0, v2->path.rfind('/')) + "/" + kExecInits;
  if (auto s = mkdir_one(dir); !s) return s;
  return write_at(dir, "cgroup.procs", std::to_string(pid));
}

void Cgroup::kill_async() {
  if (!impl_ || impl_->destroyed) return;
  // cgroup.kill signals every process of the subtree and returns; where it
  // is missing, the caller's SIGKILL to the pid namespace's init does the
  // same for everything a sandbox can hold.
  if (const Impl::Dir* v2 = impl_->v2dir(); v2 && write_at(v2->path, "cgroup.kill", "1")) {
    if (!impl_->borrowed) impl_->lift_cpu_cap();   // only kill() restores a borrowed one
    (void)write_at(v2->path, "cgroup.kill", "1");  // as in Impl::kill
  }
}

Cgroup::Killer Cgroup::killer() const {
  Killer k;
  const Impl::Dir* v2 = impl_ && !impl_->destroyed ? impl_->v2dir() : nullptr;
  if (!v2) return k;
  k.kill_ = Fd(::open(join(v2->path, "cgroup.kill").c_str(), O_WRONLY | O_CLOEXEC));
  if (!k.kill_ || !impl_->cpu_capped || impl_->borrowed) return k;  // as kill_async
  // The quota is cgroup2's cpu.max, or v1's beside a hybrid layout's
  // controller-less v2 directory.
  if (const Impl::Dir* v1 = impl_->v1dir("cpu")) {
    k.cpu_ = Fd(::open(join(v1->path, "cpu.cfs_quota_us").c_str(), O_WRONLY | O_CLOEXEC));
    k.uncapped_ = "-1";
  } else {
    k.cpu_ = Fd(::open(join(v2->path, "cpu.max").c_str(), O_WRONLY | O_CLOEXEC));
    k.uncapped_ = "max";
  }
  return k;
}

void Cgroup::Killer::fire() const noexcept {
  if (!kill_ || ::write(kill_.get(), "1", 1) != 1) return;
  if (!cpu_) return;
  (void)!::write(cpu_.get(), uncapped_, std::strlen(uncapped_));
  (void)!::write(kill_.get(), "1", 1);  // as in Impl::kill
}

Status Cgroup::kill() {
  if (!impl_) return fail(invalid("kill: moved-from cgroup"));
  return with_context(impl_->kill(), "kill cgroup " + impl_->name);
}

Result<Usage> Cgroup::usage() const {
  if (!impl_) return fail(invalid("usage: moved-from cgroup"));
  const Impl& im = *impl_;
  Usage u;
  // A missing file means the kernel does not keep that figure: report 0.
  auto read_opt = [](const std::string& dir,
                     std::string_view file) -> Result<std::optional<std::string>> {
    auto r = read_at(dir, file);
    if (!r) {
      if (r.error().code == ENOENT) return std::optional<std::string>{};
      return fail(r.error());
    }
    return std::optional<std::string>(std::move(*r));
  };
  auto bad = [](const std::string& dir, std::string_view file) {
    return fail(internal("cannot parse " + join(dir, file)));
  };
  const Impl::Dir* v2 = im.v2dir();
  if (const auto* d = im.v1dir("cpuacct")) {
    auto t = read_opt(d->path, "cpuacct.usage");
    if (!t) return fail(t.error());
    if (*t) {
      auto v = parse_u64(**t);
      if (!v) return bad(d->path, "cpuacct.usage");
      u.cpu_usec = *v / 1000;
    }
  } else if (v2) {
    auto t = read_opt(v2->path, "cpu.stat");
    if (!t) return fail(t.error());
    if (*t) u.cpu_usec = keyed_value(**t, "usage_usec").value_or(0);
  }
  if (const auto* d = im.v1dir("memory")) {
    auto t = read_opt(d->path, "memory.max_usage_in_bytes");
    if (!t) return fail(t.error());
    if (*t) {
      auto v = parse_u64(**t);
      if (!v) return bad(d->path, "memory.max_usage_in_bytes");
      u.memory_peak = *v;
    }
    t = read_opt(d->path, "memory.oom_control");
    if (!t) return fail(t.error());
    if (*t) u.oom_kills = keyed_value(**t, "oom_kill").value_or(0);
  } else if (v2) {
    auto t = read_opt(v2->path, "memory.peak");
    if (!t) return fail(t.error());
    if (*t) u.memory_peak = parse_u64(**t).value_or(0);
    t = read_opt(v2->path, "memory.events");
    if (!t) return fail(t.error());
    if (*t) u.oom_kills = keyed_value(**t, "oom_kill").value_or(0);
  }
  return u;
}

Status Cgroup::destroy() {
  if (!impl_) return {};
  return with_context(impl_->destroy(), "destroy cgroup " + impl_->name);
}

std::vector<std::string> Cgroup::paths() const {
  std::vector<std::string> out;
  if (impl_)
    for (const auto& d : impl_->dirs) out.push_back(d.path);
  return out;
}

Result<Cgroup> Cgroup::borrow() const {
  if (!impl_ || impl_->destroyed) return fail(invalid("borrow: the cgroup is gone"));
  auto im = std::make_unique<Impl>();
  im->name = impl_->name;
  im->dirs = impl_->dirs;
  im->borrowed = true;
  im->cpu_capped = impl_->cpu_capped;
  if (impl_->v2fd) {
    im->v2fd = Fd(::fcntl(impl_->v2fd.get(), F_DUPFD_CLOEXEC, 3));
    if (!im->v2fd) return fail(sys_error("borrow: dup the cgroup's directory"));
  }
  return Cgroup(std::move(im));
}

Result<Cgroup> Cgroup::make_child() const {
  if (!impl_ || impl_->destroyed) return fail(invalid("make_child: the cgroup is gone"));
  const Impl::Dir* v2 = impl_->v2dir();
  if (!v2)
    return fail(
        make_error(ErrorKind::NotFound, "cgroup " + impl_->name + " has no cgroup2 directory"));
  // Random: the sandbox sees the name (its /proc/self/cgroup), which must
  // say nothing of the host or of other sandboxes (a counter would count
  // every exec of the process).
  for (int tries = 0;; ++tries) {
    uint64_t r = 0;
    if (::getrandom(&r, sizeof r, 0) != static_cast<ssize_t>(sizeof r))
      return fail(sys_error("getrandom"));
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(r));
    const std::string name = std::string("exec-") + hex;
    const std::string path = join(v2->path, name);
    if (::mkdir(path.c_str(), 0755) != 0) {
      if (errno == EEXIST && tries < 16) continue;
      if (errno == ENOENT)
        return fail(make_error(ErrorKind::Invalid, "cgroup " + impl_->name + " is gone"));
      return fail(sys_error("mkdir " + path));
    }
    auto im = std::make_unique<Impl>();
    im->name = impl_->name + "/" + name;
    im->dirs.push_back({path, true, {}});
    im->child = true;
    auto fd = open_fd(path, O_PATH | O_DIRECTORY);
    if (!fd) {
      (void)::rmdir(path.c_str());
      return fail(fd.error());
    }
    im->v2fd = std::move(*fd);
    return Cgroup(std::move(im));
  }
}

void Cgroup::forget() {
  if (impl_) impl_->destroyed = true;
  impl_.reset();
}

Status Cgroup::freeze(bool on) {
  if (!impl_) return fail(invalid("freeze: moved-from cgroup"));
  if (const auto* v2 = impl_->v2dir(); v2 && exists(join(v2->path, "cgroup.freeze"))) {
    if (auto s = write_at(v2->path, "cgroup.freeze", on ? "1" : "0"); !s) return s;
    if (on) wait_v2_frozen(v2->path, Clock::now() + kFreezeTimeout);
    return {};
  }
  if (const auto* fz = impl_->v1dir("freezer")) {
    if (auto s = write_at(fz->path, "freezer.state", on ? "FROZEN" : "THAWED"); !s) return s;
    auto deadline = Clock::now() + kFreezeTimeout;
    while (on && Clock::now() < deadline) {
      auto st = read_at(fz->path, "freezer.state");
      if (!st || st->starts_with("FROZEN")) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return {};
  }
  return fail(make_error(ErrorKind::Invalid, "cgroup " + impl_->name + " has no freezer"));
}

bool Cgroup::frozen() const {
  if (!impl_) return false;
  if (const auto* v2 = impl_->v2dir(); v2 && exists(join(v2->path, "cgroup.freeze"))) {
    auto t = read_at(v2->path, "cgroup.freeze");
    return t && t->starts_with("1");
  }
  if (const auto* fz = impl_->v1dir("freezer")) {
    auto t = read_at(fz->path, "freezer.state");
    return t && !t->starts_with("THAWED");
  }
  return false;
}

Status Cgroup::narrow_devices(const std::vector<devices::Rule>& rules) {
  if (!impl_) return fail(invalid("narrow_devices: moved-from cgroup"));
  if (auto s = devices::check(rules); !s) return s;
  if (const auto* d = impl_->v1dir("devices")) return devices::apply_v1(d->path, rules);
  const auto* v2 = impl_->v2dir();
  if (!v2) return fail(invalid("cgroup " + impl_->name + " has no device policy to narrow"));
  auto dir = open_fd(v2->path, O_RDONLY | O_DIRECTORY);
  if (!dir) return fail(dir.error());
  return devices::attach_v2(dir->get(), rules);
}

Result<Live> Cgroup::live() const {
  if (!impl_) return fail(invalid("live: moved-from cgroup"));
  const Impl& im = *impl_;
  const Impl::Dir* v2 = im.v2dir();
  Live l;
  // Gone or unreadable files count as 0: a tree that just exited is still
  // asked about by stats.
  auto value = [](const Impl::Dir* d, std::string_view file) -> uint64_t {
    if (!d) return 0;
    auto t = read_at(d->path, file);
    return t ? parse_u64(*t).value_or(0) : 0;
  };
  auto in = [&](std::string_view ctl) -> const Impl::Dir* {
    if (const auto* d = im.v1dir(ctl)) return d;
    return v2 && exists(join(v2->path, std::string(ctl) == "blkio" ? "io.stat"
                                                                   : std::string(ctl) + ".current"))
               ? v2
               : nullptr;
  };
  if (const auto* d = in("memory"))
    l.memory_current = value(d, d->v2 ? "memory.current" : "memory.usage_in_bytes");
  l.pids_current = value(in("pids"), "pids.current");
  if (const auto* d = in("blkio")) {
    if (d->v2) {
      // "MAJ:MIN rbytes=N wbytes=N rios=N ...", one line per device.
      if (auto t = read_at(d->path, "io.stat"))
        for (const auto& line : split(*t, "\n"))
          for (const auto& f : split(line, " ")) {
            if (f.starts_with("rbytes=")) l.io_read_bytes += parse_u64(f.substr(7)).value_or(0);
            if (f.starts_with("wbytes=")) l.io_write_bytes += parse_u64(f.substr(7)).value_or(0);
          }
    } else if (auto t = read_at(d->path, "blkio.throttle.io_service_bytes")) {
      // "MAJ:MIN Read N", "MAJ:MIN Write N", ..., "Total N".
      for (const auto& line : split(*t, "\n")) {
        auto f = split(line, " ");
        if (f.size() != 3) continue;
        if (f[1] == "Read") l.io_read_bytes += parse_u64(f[2]).value_or(0);
        if (f[1] == "Write") l.io_write_bytes += parse_u64(f[2]).value_or(0);
      }
    }
  }
  return l;
}

Result<std::vector<pid_t>> Cgroup::pids() const {
  std::vector<pid_t> out;
  if (!impl_ || impl_->dirs.empty()) return out;
  const auto* d = impl_->v2dir();
  if (auto s = collect_pids(d ? d->path : impl_->dirs.front().path, out); !s)
    return fail(s.error());
  return out;
}

// ---------------------------------------------------------------------------
// Manager

struct Manager::Impl {
  Options opts;
  Layout layout = Layout::Unified;
  std::optional<Hierarchy> v2;
  std::vector<Hierarchy> v1;
  // Controllers enabled in the v2 base's cgroup.subtree_control, i.e. usable
  // by the per-process cgroups, and why others are not.
  std::vector<std::string> v2_enabled;
  std::string v2_note;
  std::once_flag stale_once;

  const Hierarchy* v1_for(std::string_view ctl) const {
    for (const auto& h : v1)
      if (has(h.controllers, ctl)) return &h;
    return nullptr;
  }
  bool v2_has(std::string_view ctl) const { return v2 && has(v2_enabled, ctl); }

  Status detect();
  void favor_dynmods() const;
  Status prepare_v2();
  Status prepare_bases();
  void bound_bases() const;
  Status remake_bases() const;
  Result<Cgroup> create_once(const Limits& limits, const std::string& name);
  Status apply_limits(Cgroup::Impl& c, const Limits& l);
  Status cleanup_stale();
};

Status Manager::Impl::detect() {
  auto mounts = read_file("/proc/self/mounts");
  if (!mounts) return fail(mounts.error());
  auto self = read_proc_cgroup();
  if (!self) return fail(self.error());

  std::string root = opts.mount_root;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  auto under_root = [&](const std::string& m) { return m == root || m.starts_with(root + "/"); };

  std::optional<Hierarchy> v2_at_root, v2_below;
  for (const auto& line : split(*mounts, "\n")) {
    auto f = split(line, " ");
    if (f.size() < 4) continue;
    std::string mnt = unescape_mount_field(f[1]);
    if (!under_root(mnt)) continue;
    if (f[2] == "cgroup2") {
      Hierarchy h;
      h.v2 = true;
      h.mount = mnt;
      h.options = f[3];
      h.own = own_v2(*self);
      if (mnt == root && !v2_at_root) v2_at_root = h;
      if (mnt != root && !v2_below) v2_below = h;
    } else if (f[2] == "cgroup") {
      Hierarchy h;
      h.mount = mnt;
      h.options = f[3];
      for (const auto& o : split(f[3], ","))
        for (auto c : kV1Controllers)
          if (o == c) h.controllers.emplace_back(c);
      if (h.controllers.empty()) continue;
      // The same hierarchy may be mounted twice (bind mounts): keep one.
      if (std::any_of(v1.begin(), v1.end(),
                      [&](const auto& x) { return x.controllers == h.controllers; }))
        continue;
      h.own = "/";
      for (const auto& l : *self)
        if (std::any_of(l.controllers.begin(), l.controllers.end(),
                        [&](const auto& c) { return has(h.controllers, c); }))
          h.own = l.path;
      v1.push_back(std::move(h));
    }
  }
  if (v2_at_root) {
    layout = Layout::Unified;
    v2 = std::move(v2_at_root);
    v1.clear();  // cannot coexist under a cgroup2 root; ignore stray mounts
  } else if (v1.empty() && v2_below) {
    // cgroup2 alone, mounted below the root (e.g. only /sys/fs/cgroup/unified).
    layout = Layout::Unified;
    v2 = std::move(v2_below);
  } else if (!v1.empty()) {
    layout = v2_below ? Layout::Hybrid : Layout::Legacy;
    v2 = std::move(v2_below);
    // freezer serves kill() on Legacy only; Hybrid kills through cgroup2.
    if (layout == Layout::Hybrid)
      std::erase_if(
          v1, [](const auto& h) { return h.controllers == std::vector<std::string>{"freezer"}; });
  } else {
    return fail(make_error(ErrorKind::NotFound, "no cgroup hierarchy mounted under " + root));
  }

  auto base_for = [&](const std::string& own) {
    return opts.base.empty() ? join(own, "cloister") : join("/", opts.base);
  };
  if (v2) {
    v2->base_rel = base_for(v2->own);
    v2->base = join(v2->mount, v2->base_rel);
  }
  for (auto& h : v1) {
    h.base_rel = base_for(h.own);
    h.base = join(h.mount, h.base_rel);
  }
  return {};
}

// Makes the v2 base and enables, on the way from the root down to it, the
// controllers cloister needs (those not held by v1). cgroup2 allows enabling
// controllers for the children only of a cgroup without processes of its own
// (except the root): if that bites at the runtime's own cgroup, the runtime
// moves itself into "<own>/cloister.runtime" and retries. Controllers that
// cannot be enabled are left out; a limit needing one fails at create().
Status Manager::Impl::prepare_v2() {
  std::vector<std::string> wanted;
  for (auto c : kV2Controllers) {
    std::string_view v1name = c == "io" ? "blkio" : c;
    if (!v1_for(v1name)) wanted.emplace_back(c);
  }
  std::vector<std::string> chain{"/"};
  for (const auto& part : split(v2->base_rel, "/")) chain.push_back(join(chain.back(), part));
  for (const auto& rel : chain) {
    std::string dir = join(v2->mount, rel);
    if (rel != "/")
      if (auto s = mkdir_one(dir); !s) return s;
    if (wanted.empty()) continue;
    auto avail_text = read_at(dir, "cgroup.controllers");
    if (!avail_text) return fail(avail_text.error());
    auto avail = split(*avail_text, " \n");
    auto enabled_text = read_at(dir, "cgroup.subtree_control");
    if (!enabled_text) return fail(enabled_text.error());
    auto enabled = split(*enabled_text, " \n");
    std::vector<std::string> next;
    for (const auto& c : wanted) {
      if (!has(avail, c)) {
        v2_note += " " + c + " not available in " + dir + ";";
        continue;
      }
      if (has(enabled, c)) {
        next.push_back(c);
        continue;
      }
      const bool at_own = rel != "/" && (rel == v2->own || join(rel, kRuntimeLeaf) == v2->own);
      Status s = write_at(dir, "cgroup.subtree_control", "+" + c);
      if (!s && s.error().code == EBUSY && rel != "/" && rel == v2->own) {
        // We are an internal process of the cgroup we must open up.
        std::string leaf = join(dir, kRuntimeLeaf);
        if (auto m = mkdir_one(leaf); !m) return m;
        if (auto m = write_at(leaf, "cgroup.procs", std::to_string(::getpid())); !m)
          return fail(m.error().wrap("move runtime into " + leaf));
        v2->own = join(rel, kRuntimeLeaf);
        s = write_at(dir, "cgroup.subtree_control", "+" + c);
      }
      if (s) {
        next.push_back(c);
      } else {
        v2_note += " cannot enable " + c + " in " + dir + ": " + s.error().what() +
                   (s.error().code == EBUSY && at_own
                        ? " (other processes are in this cgroup: move them to a leaf below it, "
                          "as systemd's Delegate= expects)"
                        : "") +
                   ";";
      }
    }
    wanted = std::move(next);
  }
  v2_enabled = std::move(wanted);
  return {};
}

// Recreates removed base directories with the controllers found at open().
// Touches no state, so concurrent create() calls may run it together.
Status Manager::Impl::remake_bases() const {
  for (const auto& h : v1) {
    if (auto s = mkdir_below(h.mount, h.base_rel); !s) return s;
    if (has(h.controllers, "cpuset"))
      if (auto s = init_cpuset(h.mount, h.base); !s) return s;
  }
  if (v2) {
    if (auto s = mkdir_below(v2->mount, v2->base_rel); !s) return s;
    for (const auto& c : v2_enabled)
      if (auto s = write_at(v2->base, "cgroup.subtree_control", "+" + c); !s) return s;
  }
  return {};
}

Status Manager::Impl::prepare_bases() {
  for (const auto& h : v1) {
    if (auto s = mkdir_below(h.mount, h.base_rel); !s) return s;
    if (has(h.controllers, "cpuset"))
      if (auto s = init_cpuset(h.mount, h.base); !s) return s;
  }
  if (v2)
    if (auto s = prepare_v2(); !s) return s;
  bound_bases();
  return {};
}

// The sandboxes of one runtime together, not only each: a pids and a memory
// limit on the base, where it has none, so that many sandboxes (a client
// starting hundreds, each within its own bounds) leave the host's processes
// and memory a share: half of kernel.pid_max or threads-max, whichever is
// smaller; MemTotal less a tenth of it
// (at least 512 MiB). An OOM there kills inside the sandboxes, not on the
// host. A value already there (the administrator's, or an earlier run's) is
// kept. Best effort, like the rest of the base's set-up for limits.
void Manager::Impl::bound_bases() const {
  if (!opts.bound_base) return;
  // Processes and threads both take a pid: whichever of pid_max and
  // threads-max (systemd raises pid_max to 4194304) binds first.
  uint64_t pids = 0;
  for (const char* f : {"/proc/sys/kernel/pid_max", "/proc/sys/kernel/threads-max"})
    if (auto v = read_file(f)) {
      uint64_t n = std::strtoull(v->c_str(), nullptr, 10);
      if (n && (pids == 0 || n < pids)) pids = n;
    }
  pids /= 2;
  uint64_t mem = 0;
  if (auto meminfo = read_file("/proc/meminfo")) {
    uint64_t total_kib = 0;
    if (std::sscanf(meminfo->c_str(), "MemTotal: %" SCNu64 " kB", &total_kib) == 1) {
      uint64_t total = total_kib * 1024, reserve = std::max<uint64_t>(total / 10, 512ull << 20);
      if (total > reserve) mem = total - reserve;
    }
  }
  auto set_if_unlimited = [](const std::string& dir, std::string_view file, uint64_t value) {
    if (value == 0) return;
    auto cur = read_at(dir, file);
    if (!cur) return;
    // "max" (v2), or v1's "unlimited": a page-rounded LONG_MAX.
    const bool unlimited =
        cur->starts_with("max") || std::strtoull(cur->c_str(), nullptr, 10) >= (uint64_t{1} << 62);
    if (unlimited) (void)write_at(dir, file, std::to_string(value));
  };
  if (const Hierarchy* h = v1_for("pids"))
    set_if_unlimited(h->base, "pids.max", pids);
  else if (v2_has("pids"))
    set_if_unlimited(v2->base, "pids.max", pids);
  if (const Hierarchy* h = v1_for("memory"))
    set_if_unlimited(h->base, "memory.limit_in_bytes", mem);
  else if (v2_has("memory"))
    set_if_unlimited(v2->base, "memory.max", mem);
}

namespace {

Status check_limits(const Limits& l) {
  if (l.devices)
    if (auto s = devices::check(*l.devices); !s) return fail(s.error().wrap("devices"));
  if (l.cpu_weight && (l.cpu_weight < 1 || l.cpu_weight > 10000))
    return fail(invalid("cpu_weight " + std::to_string(l.cpu_weight) + " not in 1..10000"));
  if (l.io_weight && (l.io_weight < 1 || l.io_weight > 10000))
    return fail(invalid("io_weight " + std::to_string(l.io_weight) + " not in 1..10000"));
  if (l.cpu_quota && (l.cpu_period < 1000 || l.cpu_period > 1000000))
    return fail(invalid("cpu_period " + std::to_string(l.cpu_period) + " not in 1000..1000000"));
  if (l.cpu_quota && l.cpu_quota < 1000)
    return fail(invalid("cpu_quota " + std::to_string(l.cpu_quota) + " below 1000 us"));
  if (l.cpu_shares && (l.cpu_shares < 2 || l.cpu_shares > 262144))
    return fail(invalid("cpu_shares " + std::to_string(l.cpu_shares) + " not in 2..262144"));
  if (l.cpu_shares && l.cpu_weight) return fail(invalid("cpu_shares and cpu_weight: not both"));
  for (const auto& [name, list] :
       {std::pair{"cpuset_cpus", &l.cpuset_cpus}, std::pair{"cpuset_mems", &l.cpuset_mems}}) {
    // The kernel's list format: "N" or "N-M", comma-separated.
    bool ok = list->size() <= 4096;
    for (const auto& item : split(*list, ",")) {
      auto range = split(item, "-");
      ok = ok && !item.empty() && std::count(item.begin(), item.end(), '-') <= 1 &&
           item.front() != '-' && item.back() != '-';
      for (const auto& n : range)
        ok = ok && !n.empty() && n.size() <= 6 &&
             std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; });
    }
    if (!ok)
      return fail(invalid(std::string(name) + " '" + *list + "' is not a list such as 0-3,6"));
  }
  return {};
}

Error unenforceable(std::string_view limit, std::string_view ctl, Layout layout,
                    const std::string& note) {
  std::string m = std::string(limit) + ": no " + std::string(ctl) + " controller available (" +
                  std::string(layout_name(layout)) + " layout)";
  if (!note.empty()) m += ":" + note;
  return make_error(ErrorKind::Invalid, std::move(m));
}

}  // namespace

Result<Cgroup> Manager::Impl::create_once(const Limits& l, const std::string& named) {
  auto im = std::make_unique<Cgroup::Impl>();
  im->name = named.empty() ? std::to_string(::getpid()) + "-" + std::to_string(++g_seq) : named;

  // Decide where each limit goes before touching the filesystem, so that an
  // unenforceable limit fails without leaving anything behind. v1 wins when a
  // controller is mounted there (it then cannot be enabled in cgroup2).
  // With a cgroup2 tree (Hybrid), CPU time comes from its cpu.stat and a v1
  // directory is made only for a limit: attaching to one costs a migration.
  // Legacy has nothing else to count CPU and memory with.
  std::vector<std::string> v1_needed;
  if (!v2) v1_needed = {"memory", "cpuacct"};
  // Every sandbox has memory and pids accounting of its own, limited or not
  // (peak memory, OOM kills and process counts of its own tree only).
  if (v1_for("memory")) v1_needed.push_back("memory");
  if (v1_for("pids")) v1_needed.push_back("pids");
  if (l.memory_max && !v1_for("memory") && !v2_has("memory"))
    return fail(unenforceable("memory_max", "memory", layout, v2_note));
  if (l.memory_high && !v1_for("memory") && !v2_has("memory"))
    return fail(unenforceable("memory_high", "memory", layout, v2_note));
  if (l.pids_max && !v1_for("pids") && !v2_has("pids"))
    return fail(unenforceable("pids_max", "pids", layout, v2_note));
  if (l.cpu_quota || l.cpu_weight || l.cpu_shares) {
    if (v1_for("cpu"))
      v1_needed.push_back("cpu");
    else if (!v2_has("cpu"))
      return fail(unenforceable(l.cpu_quota ? "cpu_quota" : "cpu_weight", "cpu", layout, v2_note));
  }
  if (!l.cpuset_cpus.empty() || !l.cpuset_mems.empty()) {
    if (v1_for("cpuset"))
      v1_needed.push_back("cpuset");
    else if (!v2_has("cpuset"))
      return fail(unenforceable("cpuset", "cpuset", layout, v2_note));
  }
  if (l.devices) {
    // cgroup2 has no controller for it: a program on the directory.
    if (v1_for("devices"))
      v1_needed.push_back("devices");
    else if (!v2)
      return fail(unenforceable("devices", "devices", layout, v2_note));
  }
  if (l.io_weight) {
    // io weights depend on the block scheduler (CFQ is gone, BFQ optional):
    // applied where a weight file exists, skipped otherwise (documented).
    if (const auto* h = v1_for("blkio");
        h && (exists(join(h->base, "blkio.weight")) || exists(join(h->base, "blkio.bfq.weight"))))
      v1_needed.push_back("blkio");
  }
  if (layout == Layout::Legacy) v1_needed.push_back("freezer");  // kill() needs it
  if (!named.empty() && !v2) v1_needed.push_back("freezer");     // and pause
  // And a cpuset of their own, as runc gives them: `update --cpuset-cpus`
  // (Kubernetes' static CPU manager) needs one to write to.
  if (!named.empty() && v1_for("cpuset")) v1_needed.push_back("cpuset");

  // Directories: cgroup2 first (the clone target), then each v1 hierarchy once.
  Cgroup::Impl& c = *im;
  if (v2) c.dirs.push_back({join(v2->base, c.name), true, {}});
  for (const auto& h : v1) {
    bool need = std::any_of(h.controllers.begin(), h.controllers.end(),
                            [&](const auto& x) { return has(v1_needed, x); });
    if (need) c.dirs.push_back({join(h.base, c.name), false, h.controllers});
  }
  if (!named.empty()) {
    // The parents of a named cgroup, and on cgroup2 the controllers for
    // their children (from the base down), as the base has them.
    auto parts = split(named, "/");
    parts.pop_back();
    auto make_parents = [&](const std::string& base, bool is_v2) -> Status {
      std::string cur = base;
      for (const auto& part : parts) {
        if (is_v2)
          for (const auto& ctl : v2_enabled)
            (void)write_at(cur, "cgroup.subtree_control", "+" + ctl);
        cur = join(cur, part);
        if (auto st = mkdir_one(cur); !st) return st;
      }
      if (is_v2)
        for (const auto& ctl : v2_enabled) (void)write_at(cur, "cgroup.subtree_control", "+" + ctl);
      return {};
    };
    if (v2)
      if (auto st = make_parents(v2->base, true); !st) return fail(st.error());
    for (const auto& d : c.dirs)
      if (!d.v2)
        if (auto st = make_parents(d.path.substr(0, d.path.size() - named.size() - 1), false); !st)
          return fail(st.error());
  }
  for (size_t i = 0; i < c.dirs.size(); ++i) {
    if (::mkdir(c.dirs[i].path.c_str(), 0755) != 0) {
      // EEXIST: a dead runtime that had our pid left "<pid>-<seq>" behind
      // (cleanup_stale cannot tell it from ours); create() takes the next seq.
      Error e = sys_error("mkdir " + c.dirs[i].path);
      c.dirs.resize(i);  // not ours to remove if it already existed
      (void)c.destroy();
      return fail(e);
    }
  }
  // From here on a failure removes every directory made above.
  if (const auto* h = v1_for("cpuset"))
    if (const auto* d = c.v1dir("cpuset"))
      if (Status s = init_cpuset(h->mount, d->path); !s) {
        (void)c.destroy();
        return fail(s.error().wrap("cpuset"));
      }
  if (Status s = apply_limits(c, l); !s) {
    (void)c.destroy();
    return fail(s.error());
  }
  return Cgroup(std::move(im));
}

Status Manager::Impl::apply_limits(Cgroup::Impl& c, const Limits& l) {
  if (v2) {
    auto fd = open_fd(c.dirs.front().path, O_PATH | O_DIRECTORY);
    if (!fd) return fail(fd.error());
    c.v2fd = std::move(*fd);
  }

  auto wrap = [](Status s, std::string_view limit) -> Status {
    if (!s) return fail(s.error().wrap(std::string(limit)));
    return {};
  };
  const auto* v2d = c.v2dir();
  if (l.memory_max) {
    std::string v = std::to_string(l.memory_max);
    if (const auto* d = c.v1dir("memory")) {
      // memsw (memory+swap) must stay >= limit_in_bytes: limit first.
      if (auto s = wrap(write_at(d->path, "memory.limit_in_bytes", v), "memory_max"); !s)
        return fail(s.error());
      if (exists(join(d->path, "memory.memsw.limit_in_bytes")))
        if (auto s = wrap(write_at(d->path, "memory.memsw.limit_in_bytes", v), "memory_max"); !s)
          return fail(s.error());
    } else {
      if (auto s = wrap(write_at(v2d->path, "memory.max", v), "memory_max"); !s)
        return fail(s.error());
      if (exists(join(v2d->path, "memory.swap.max")))
        if (auto s = wrap(write_at(v2d->path, "memory.swap.max", "0"), "memory_max"); !s)
          return fail(s.error());
    }
  }
  // memory_high has no v1 counterpart (soft_limit_in_bytes only acts under
  // global pressure): ignored on v1, documented.
  if (l.memory_high && !c.v1dir("memory"))
    if (auto s =
            wrap(write_at(v2d->path, "memory.high", std::to_string(l.memory_high)), "memory_high");
        !s)
      return fail(s.error());
  if (l.pids_max) {
    const auto* d = c.v1dir("pids");
    if (auto s = wrap(write_at(d ? d->path : v2d->path, "pids.max", std::to_string(l.pids_max)),
                      "pids_max");
        !s)
      return fail(s.error());
  }
  if (const auto* d = c.v1dir("cpu")) {
    if (l.cpu_quota) {
      c.cpu_capped = true;
      // The period first: the kernel checks quota against the current period.
      if (auto s = wrap(write_at(d->path, "cpu.cfs_period_us", std::to_string(l.cpu_period)),
                        "cpu_quota");
          !s)
        return fail(s.error());
      if (auto s =
              wrap(write_at(d->path, "cpu.cfs_quota_us", std::to_string(l.cpu_quota)), "cpu_quota");
          !s)
        return fail(s.error());
    }
    if (l.cpu_weight)
      if (auto s =
              wrap(write_at(d->path, "cpu.shares", std::to_string(weight_to_shares(l.cpu_weight))),
                   "cpu_weight");
          !s)
        return fail(s.error());
    if (l.cpu_shares)
      if (auto s =
              wrap(write_at(d->path, "cpu.shares", std::to_string(l.cpu_shares)), "cpu_shares");
          !s)
        return fail(s.error());
  } else if (l.cpu_quota || l.cpu_weight || l.cpu_shares) {
    if (l.cpu_quota) c.cpu_capped = true;
    if (l.cpu_quota)
      if (auto s = wrap(write_at(v2d->path, "cpu.max",
                                 std::to_string(l.cpu_quota) + " " + std::to_string(l.cpu_period)),
                        "cpu_quota");
          !s)
        return fail(s.error());
    // runc's conversion of v1 shares to a v2 weight.
    const uint64_t weight = l.cpu_weight ? l.cpu_weight : 1 + ((l.cpu_shares - 2) * 9999) / 262142;
    if (l.cpu_weight || l.cpu_shares)
      if (auto s = wrap(write_at(v2d->path, "cpu.weight", std::to_string(weight)), "cpu_weight");
          !s)
        return fail(s.error());
  }
  for (const auto& [file, list] :
       {std::pair{"cpuset.cpus", &l.cpuset_cpus}, std::pair{"cpuset.mems", &l.cpuset_mems}}) {
    if (list->empty()) continue;
    const auto* d = c.v1dir("cpuset");
    if (auto s = wrap(write_at(d ? d->path : v2d->path, file, *list), file); !s)
      return fail(s.error());
  }
  if (l.devices) {
    if (const auto* d = c.v1dir("devices")) {
      if (auto s = wrap(devices::apply_v1(d->path, *l.devices), "devices"); !s)
        return fail(s.error());
    } else {
      // BPF_PROG_ATTACH takes no O_PATH fd.
      auto dir = open_fd(v2d->path, O_RDONLY | O_DIRECTORY);
      if (!dir) return fail(dir.error().wrap("devices"));
      if (auto s = wrap(devices::attach_v2(dir->get(), *l.devices), "devices"); !s)
        return fail(s.error());
    }
  }
  if (l.io_weight) {
    if (const auto* d = c.v1dir("blkio")) {
      std::string v = std::to_string(weight_to_blkio(l.io_weight));
      std::string file =
          exists(join(d->path, "blkio.weight")) ? "blkio.weight" : "blkio.bfq.weight";
      if (auto s = wrap(write_at(d->path, file, v), "io_weight"); !s) return fail(s.error());
    } else if (v2d && v2_has("io")) {
      if (exists(join(v2d->path, "io.weight"))) {
        if (auto s =
                wrap(write_at(v2d->path, "io.weight", "default " + std::to_string(l.io_weight)),
                     "io_weight");
            !s)
          return fail(s.error());
      } else if (exists(join(v2d->path, "io.bfq.weight"))) {
        // io.bfq.weight takes the blkio scale (1..1000 on older kernels).
        if (auto s = wrap(
                write_at(v2d->path, "io.bfq.weight", std::to_string(weight_to_blkio(l.io_weight))),
                "io_weight");
            !s)
          return fail(s.error());
      }
    }
  }
  return {};
}

Status Manager::Impl::cleanup_stale() {
  std::vector<const Hierarchy*> hs;
  if (v2) hs.push_back(&*v2);
  for (const auto& h : v1) hs.push_back(&h);

  std::set<std::string> stale;
  for (const auto* h : hs) {
    auto subs = subdirs(h->base);
    if (!subs) return fail(subs.error().wrap("list " + h->base));
    for (const auto& n : *subs) {
      // Only "<pid>-<seq>" is ours; anything else (cloister.runtime, other
      // tools' dirs) is left alone.
      size_t dash = n.find('-');
      if (dash == std::string::npos) continue;
      auto pid = parse_u64(std::string_view(n).substr(0, dash));
      auto sq = parse_u64(std::string_view(n).substr(dash + 1));
      if (!pid || !sq || *pid == 0 || *pid > 0x7fffffff) continue;
      if (static_cast<pid_t>(*pid) == ::getpid()) continue;
      if (::kill(static_cast<pid_t>(*pid), 0) == 0 || errno != ESRCH) continue;
      stale.insert(n);
    }
  }
  Status first;
  for (const auto& n : stale) {
    auto im = std::make_unique<Cgroup::Impl>();
    im->name = n;
    for (const auto* h : hs) {
      std::string p = join(h->base, n);
      if (exists(p)) im->dirs.push_back({p, h->v2, h->controllers});
    }
    Status s = with_context(im->destroy(), "remove stale cgroup " + n);
    if (!s && first) first = s;
  }
  return first;
}

Manager::Manager(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Manager::~Manager() = default;

RemountArgs favordynmods_remount(std::string_view options) {
  // A remount replaces the mount's flags and the hierarchy's options with
  // those it is given: give back every one it has (nosuid, nodev, noexec;
  // nsdelegate, memory_recursiveprot), plus favordynmods.
  struct Word {
    std::string_view word;
    unsigned long flag;
  };
  static constexpr Word kFlags[] = {
      {"rw", 0},
      {"ro", MS_RDONLY},
      {"nosuid", MS_NOSUID},
      {"nodev", MS_NODEV},
      {"noexec", MS_NOEXEC},
      {"sync", MS_SYNCHRONOUS},
      {"dirsync", MS_DIRSYNC},
      {"noatime", MS_NOATIME},
      {"nodiratime", MS_NODIRATIME},
      {"relatime", MS_RELATIME},
      {"strictatime", MS_STRICTATIME},
      {"lazytime", MS_LAZYTIME},
  };
  RemountArgs r{MS_REMOUNT, ""};
  for (const auto& o : split(options, ",")) {
    auto f = std::find_if(std::begin(kFlags), std::end(kFlags),
                          [&](const Word& w) { return w.word == o; });
    if (f != std::end(kFlags)) {
      r.flags |= f->flag;
    } else if (!o.empty() && o != "favordynmods") {
      r.data += o + ",";
    }
  }
  r.data += "favordynmods";
  return r;
}

// Every sandbox on a host with v1 controllers is attached to its v1 cgroups
// (pids and memory at least) by a write to cgroup.procs: a migration, which
// takes the kernel's global threadgroup rwsem for writing and waits for an
// RCU grace period unless some hierarchy is mounted with favordynmods (11
// to 15 ms a migration here without, 50 us with). The kernel offers the
// option for workloads like ours; its cost is a slightly slower fork and
// exit for every process of the host. As root we set it on the cgroup2
// mount of a hybrid host (any hierarchy will do: the rwsem is global)
// unless Options::favor_dynmods is off or some hierarchy has it already,
// keeping every other flag and option of the mount. Legacy hosts (v1 only)
// cannot change it on a remount: mount a hierarchy with it, or boot with
// cgroup_favordynmods=true. Best effort: a failure only costs time.
void Manager::Impl::favor_dynmods() const {
  // Hybrid only: Unified hosts migrate nothing (CLONE_INTO_CGROUP), and a v1
  // hierarchy refuses to change its root's flags on a remount ("option or
  // name mismatch"), so Legacy hosts set it at mount time.
  if (!opts.favor_dynmods || layout != Layout::Hybrid || ::geteuid() != 0) return;
  auto has_it = [](const Hierarchy& h) {
    for (const auto& o : split(h.options, ","))
      if (o == "favordynmods") return true;
    return false;
  };
  if (has_it(*v2) || std::any_of(v1.begin(), v1.end(), has_it)) return;
  const RemountArgs r = favordynmods_remount(v2->options);
  (void)::mount(nullptr, v2->mount.c_str(), nullptr, r.flags, r.data.c_str());
}

Result<std::shared_ptr<Manager>> Manager::open(const Options& opts) {
  auto im = std::make_unique<Impl>();
  im->opts = opts;
  if (auto s = im->detect(); !s) return fail(s.error().wrap("cgroups"));
  im->favor_dynmods();
  if (auto s = im->prepare_bases(); !s) return fail(s.error().wrap("cgroups: prepare base"));
  return std::make_shared<Manager>(std::move(im));
}

Status Manager::writable() const {
  for (const auto& base : base_paths())
    if (::access(base.c_str(), W_OK) != 0) return fail(sys_error("cgroup base " + base));
  return {};
}

Result<std::shared_ptr<Manager>> Manager::shared() {
  static std::mutex mu;
  static std::shared_ptr<Manager> instance;
  std::lock_guard lock(mu);
  if (!instance) {
    auto m = open();
    if (!m) return fail(m.error());
    instance = std::move(*m);
  }
  return instance;
}

Layout Manager::layout() const {
  return impl_->layout;
}

Result<Cgroup> Manager::create(const Limits& limits, const std::string& name) {
  if (auto s = check_limits(limits); !s) return fail(s.error());
  std::string named = name;
  while (!named.empty() && named.front() == '/') named.erase(0, 1);
  while (!named.empty() && named.back() == '/') named.pop_back();
  if (!name.empty()) {
    if (named.empty() || named.find("//") != std::string::npos ||
        ("/" + named + "/").find("/../") != std::string::npos ||
        ("/" + named + "/").find("/./") != std::string::npos)
      return fail(invalid("cgroup path '" + name + "' is not a normalized path"));
  }
  auto cg = impl_->create_once(limits, named);
  for (int i = 0; i < 16 && named.empty() && !cg && cg.error().code == EEXIST; ++i)
    cg = impl_->create_once(limits, named);
  if (!cg && cg.error().code == ENOENT && cg.error().message.starts_with("mkdir")) {
    // Someone removed an (empty) base since open(): make it again, once.
    if (auto s = impl_->remake_bases(); !s) return fail(s.error().wrap("cgroups: remake base"));
    cg = impl_->create_once(limits, named);
  }
  if (!cg) return fail(cg.error().wrap("create cgroup"));
  return cg;
}

Result<Cgroup> Manager::open_named(const std::string& name) {
  std::string named = name;
  while (!named.empty() && named.front() == '/') named.erase(0, 1);
  if (named.empty() || ("/" + named + "/").find("/../") != std::string::npos)
    return fail(invalid("cgroup path '" + name + "' is not a normalized path"));
  auto im = std::make_unique<Cgroup::Impl>();
  im->name = named;
  im->borrowed = true;
  im->cpu_capped = true;  // what `update` wrote is not known here
  if (impl_->v2 && exists(join(impl_->v2->base, named)))
    im->dirs.push_back({join(impl_->v2->base, named), true, {}});
  for (const auto& h : impl_->v1)
    if (exists(join(h.base, named)))
      im->dirs.push_back({join(h.base, named), false, h.controllers});
  if (im->dirs.empty())
    return fail(make_error(ErrorKind::NotFound, "no cgroup " + named + " under the base"));
  // For clone3(CLONE_INTO_CGROUP) of a process joining it (`exec`).
  if (const auto* v2 = im->v2dir())
    if (auto fd = open_fd(v2->path, O_PATH | O_DIRECTORY)) im->v2fd = std::move(*fd);
  return Cgroup(std::move(im));
}

Status Manager::cleanup_stale() {
  return with_context(impl_->cleanup_stale(), "cgroups");
}

Status Manager::update(Cgroup& cg, const Limits& limits) {
  if (!cg.impl_) return fail(invalid("update: moved-from cgroup"));
  if (auto s = check_limits(limits); !s) return s;
  if (limits.devices)
    return fail(
        invalid("update cgroup " + cg.impl_->name + ": a device policy is set at create only"));
  return with_context(impl_->apply_limits(*cg.impl_, limits), "update cgroup " + cg.impl_->name);
}

void Manager::cleanup_stale_once() {
  if (!impl_->opts.sweep_stale) return;
  // Best effort: a leftover we cannot remove must not stop new sandboxes.
  std::call_once(impl_->stale_once, [this] { (void)impl_->cleanup_stale(); });
}

std::vector<std::string> Manager::base_paths() const {
  std::vector<std::string> out;
  if (impl_->v2) out.push_back(impl_->v2->base);
  for (const auto& h : impl_->v1) out.push_back(h.base);
  return out;
}

}  // namespace cloister::cgroups

#include "isolate/mounts.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <set>
#include <span>
#include <thread>

#include "isolate/devices.h"
#include "isolate/fd.h"

namespace cloister::mounts {

bool within(std::string_view path, std::string_view dir) {
  if (dir == "/") return true;
  return path.starts_with(dir) && (path.size() == dir.size() || path[dir.size()] == '/');
}
namespace {

// Where the new root is assembled before pivot_root. Every host tree and
// volume is cloned (open_tree) before this is covered, so a source below it
// is still reachable.
constexpr const char* kStage = "/tmp";

struct FlagWord {
  std::string_view word;
  unsigned long set;
  unsigned long clear;
};
constexpr FlagWord kFlagWords[] = {
    {"ro", MS_RDONLY, 0},
    {"rw", 0, MS_RDONLY},
    {"noexec", MS_NOEXEC, 0},
    {"exec", 0, MS_NOEXEC},
    {"nosuid", MS_NOSUID, 0},
    {"suid", 0, MS_NOSUID},
    {"nodev", MS_NODEV, 0},
    {"dev", 0, MS_NODEV},
    {"noatime", MS_NOATIME, 0},
    {"relatime", MS_RELATIME, 0},
    {"nodiratime", MS_NODIRATIME, 0},
};
constexpr std::string_view kDataKeys[] = {"size", "mode", "uid", "gid", "nr_inodes", "nr_blocks"};

// Paths runc hides in /proc (files get /dev/null, directories an empty
// read-only tmpfs), then the kernel's page, slab and vmalloc maps, which tell
// a root payload about the host's memory (the physical layout, other
// workloads' allocations, kernel addresses), and those it leaves visible but
// read-only.
constexpr std::string_view kProcMasked[] = {
    "/proc/kcore",       "/proc/keys",          "/proc/timer_list",  "/proc/timer_stats",
    "/proc/sched_debug", "/proc/latency_stats", "/proc/acpi",        "/proc/asound",
    "/proc/scsi",        "/proc/interrupts",    "/proc/kpageflags",  "/proc/kpagecount",
    "/proc/kpagecgroup", "/proc/slabinfo",      "/proc/vmallocinfo", "/proc/pagetypeinfo",
    "/proc/key-users"};
constexpr std::string_view kProcReadOnly[] = {"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys",
                                              "/proc/sysrq-trigger"};

constexpr std::pair<std::string_view, std::string_view> kDevLinks[] = {
    {"/proc/self/fd", "fd"},
    {"/proc/self/fd/0", "stdin"},
    {"/proc/self/fd/1", "stdout"},
    {"/proc/self/fd/2", "stderr"},
    {"pts/ptmx", "ptmx"}};

// Strictly below dir (anything, "/" included, is below "/").
bool is_under(const std::string& path, const std::string& dir) {
  return dir == "/" || (path != dir && within(path, dir));
}

}  // namespace

bool proc_protects(std::string_view path) {
  const std::string p(path);
  for (auto list : {std::span<const std::string_view>(kProcMasked),
                    std::span<const std::string_view>(kProcReadOnly)})
    for (auto m : list)
      if (p == m || is_under(p, std::string(m))) return true;
  return false;
}

namespace {

// The store's own paths (image layers, merged roots): every symlink
// resolved, once (the state dir may sit below one on purpose).
Result<std::string> resolve_source(const std::string& path, const std::string& what) {
  char* r = ::realpath(path.c_str(), nullptr);
  if (!r) return fail(sys_error(what + ": resolve " + path));
  std::string out(r);
  ::free(r);
  return out;
}

Status check_no_symlink(const std::string& path, const std::string& what) {
  auto fd = open_no_symlink(path, what, false);
  if (!fd) return fail(fd.error());
  return {};
}

// "a=1,b=2" as key/value pairs, and back.
using DataPairs = std::vector<std::pair<std::string, std::string>>;
DataPairs data_pairs(const std::string& s) {
  DataPairs kv;
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    std::string w = s.substr(i, j - i);
    auto eq = w.find('=');
    if (!w.empty())
      kv.emplace_back(w.substr(0, eq), eq == std::string::npos ? "" : w.substr(eq + 1));
    i = j + 1;
  }
  return kv;
}

std::string join_pairs(const DataPairs& kv) {
  std::string r;
  for (const auto& [k, v] : kv) {
    if (!r.empty()) r += ',';
    r += k + "=" + v;
  }
  return r;
}

// With a user namespace, a tmpfs the init makes (as host root) belongs to
// the payload's root, as in a container runtime: uid= and gid= name ids
// inside, and are given as the host ids they map to (0 inside when unset).
Result<std::string> owned_by_payload(const std::string& data, const SpawnSpec& spec) {
  if (!spec.userns) return data;
  DataPairs kv = data_pairs(data);
  for (auto [key, base] :
       {std::pair{"uid", spec.userns->uid_base}, std::pair{"gid", spec.userns->gid_base}}) {
    auto it = std::find_if(kv.begin(), kv.end(), [&](const auto& p) { return p.first == key; });
    if (it == kv.end()) it = kv.insert(kv.end(), {key, "0"});
    uint64_t inside = 0;
    const std::string& v = it->second;
    auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), inside);
    if (ec != std::errc() || end != v.data() + v.size())
      return fail(invalid(std::string(key) + "=" + v + ": not a number"));
    if (inside >= spec.userns->ids())
      return fail(invalid(std::string(key) + "=" + v + " is outside the user namespace's " +
                          std::to_string(spec.userns->ids()) + " ids"));
    // An unprivileged sandbox's init mounts inside its user namespace, where
    // the kernel reads the ids as ids inside.
    it->second = std::to_string(spec.unprivileged ? inside : base + inside);
  }
  return join_pairs(kv);
}

// "a=1,b=2" with the keys of over replacing those of base, in base's order.
std::string merge_tmpfs_data(const std::string& base, const std::string& over) {
  DataPairs out = data_pairs(base);
  for (auto& [k, v] : data_pairs(over)) {
    bool found = false;
    for (auto& [bk, bv] : out)
      if (bk == k) bv = v, found = true;
    if (!found) out.emplace_back(k, v);
  }
  return join_pairs(out);
}

std::string staged(const std::string& target) {
  return target == "/" ? std::string(kStage) : std::string(kStage) + target;
}

// One thing mounted at a target in the new root.
struct Entry {
  enum Kind { HostTree, HostSymlink, Volume, Tmpfs, Proc, Dev, Sysfs } kind;
  std::string target;
  std::string source;  // host path (HostTree, Volume) or link text (HostSymlink)
  bool read_only = true;
  bool is_dir = true;
  std::string options;   // Tmpfs
  std::string what;      // for errors: "volume /a:/b"
  bool idmap = false;    // Volume: BindMount::idmap
  bool no_exec = false;  // Volume: BindMount::no_exec
};

// Container roots: the type of `path` in the merged image (the top-most layer
// that has it; an overlay whiteout means absent), or 0 when absent. Lookups
// never follow a symlink (RESOLVE_NO_SYMLINKS): a layer whose parent
// components are not plain directories simply does not count.
mode_t image_lookup(const std::vector<std::string>& layers, const std::string& path) {
  const std::string rel = path == "/" ? std::string(".") : path.substr(1);
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    Fd dir(::open(it->c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dir) continue;
    Fd fd(openat2_raw(dir.get(), rel.c_str(), O_PATH | O_NOFOLLOW,
                      RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS));
    struct stat st;
    if (!fd || ::fstat(fd.get(), &st) != 0) continue;
    if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0)) return 0;
    return st.st_mode;
  }
  return 0;
}

// The target of the symlink at path in the topmost layer that has it.
std::string image_readlink(const std::vector<std::string>& layers, const std::string& path) {
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    Fd dir(::open(it->c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!dir) continue;
    Fd fd(openat2_raw(dir.get(), path.substr(1).c_str(), O_PATH | O_NOFOLLOW,
                      RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS));
    if (!fd) continue;
    char buf[PATH_MAX];
    ssize_t n = ::readlinkat(fd.get(), "", buf, sizeof buf);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }
  return {};
}

}  // namespace

Result<Fd> open_no_symlink(const std::string& path, const std::string& what, bool again) {
  // No O_NOFOLLOW: with it, openat2 hands out a trailing symlink itself.
  int fd = openat2_raw(AT_FDCWD, path.c_str(), O_PATH, RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS);
  if (fd >= 0) return Fd(fd);
  int e = errno;
  if (e != ELOOP) return fail(sys_error(what + " " + path, e));
  std::string m = what + " " + path + " is a symlink or lies below one";
  if (again) {
    m += " now (it was not when the executor was made): not mounted";
  } else if (char* r = ::realpath(path.c_str(), nullptr)) {
    m += std::string(" (it leads to ") + r + "): name the directory itself";
    ::free(r);
  }
  return fail(make_error(ErrorKind::Invalid, std::move(m), e));
}

Result<std::string> normalize_path(const std::string& path) {
  if (path.empty() || path[0] != '/')
    return fail(invalid("'" + path + "' is not an absolute path"));
  if (path.find('\0') != std::string::npos) return fail(invalid("path contains a NUL byte"));
  std::string out;
  size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    std::string_view comp(path.data() + i, j - i);
    if (comp == "." || comp == "..")
      return fail(invalid("'" + path + "' contains a '" + std::string(comp) + "' component"));
    if (!comp.empty()) {
      out += '/';
      out += comp;
    }
    i = j;
  }
  return out.empty() ? std::string("/") : out;
}

namespace {

// N with no leading zero, at most max.
bool decimal(std::string_view v, uint64_t max) {
  if (v.empty() || v.size() > 20 || (v.size() > 1 && v[0] == '0')) return false;
  uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return false;
    if (n > (UINT64_MAX - 9) / 10) return false;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  return n <= max;
}
// N[k|m|g], as tmpfs takes sizes and counts (memparse), without overflow.
bool count(std::string_view v) {
  uint64_t scale = 1;
  if (!v.empty() && (v.back() == 'k' || v.back() == 'm' || v.back() == 'g')) {
    scale = v.back() == 'k' ? 1ull << 10 : v.back() == 'm' ? 1ull << 20 : 1ull << 30;
    v.remove_suffix(1);
  }
  return decimal(v, UINT64_MAX / scale);
}
std::string quoted(std::string_view s) {
  return "\"" + std::string(s) + "\"";
}

}  // namespace

Result<ParsedOptions> parse_tmpfs_options(const std::string& options) {
  ParsedOptions p;
  p.flags = MS_NOSUID | MS_NODEV;
  if (options.empty()) return p;
  std::vector<std::pair<std::string, std::string>> seen;  // slot, option as written
  size_t i = 0;
  while (i <= options.size()) {
    size_t j = options.find(',', i);
    if (j == std::string::npos) j = options.size();
    const std::string word = options.substr(i, j - i);
    i = j + 1;
    if (word.empty()) return fail(invalid("empty option in " + quoted(options)));
    std::string slot;
    const FlagWord* fw = nullptr;
    for (const auto& f : kFlagWords)
      if (f.word == word) fw = &f;
    if (fw) {
      p.flags = (p.flags | fw->set) & ~fw->clear;
      // The first four pairs (ro/rw, ...) fill one slot each.
      const size_t k = static_cast<size_t>(fw - kFlagWords);
      slot = std::string(kFlagWords[k < 8 ? k & ~size_t{1} : k].word);
    } else {
      const size_t eq = word.find('=');
      const std::string key = word.substr(0, eq);
      const std::string_view value =
          eq == std::string::npos ? std::string_view{} : std::string_view(word).substr(eq + 1);
      if (eq == std::string::npos ||
          std::find(std::begin(kDataKeys), std::end(kDataKeys), key) == std::end(kDataKeys))
        return fail(invalid("unknown option " + quoted(word) +
                            " (known: rw, ro, exec, noexec, suid, nosuid, dev, nodev, noatime, "
                            "relatime, nodiratime, size=, mode=, uid=, gid=, nr_inodes=, "
                            "nr_blocks=)"));
      bool ok = false;
      std::string expected;
      if (key == "size") {
        ok = !value.empty() && value.back() == '%'
                 ? decimal(value.substr(0, value.size() - 1), 100) && value != "0%"
                 : count(value);
        expected = "size=N[k|m|g] or size=N%";
      } else if (key == "nr_inodes" || key == "nr_blocks") {
        ok = count(value);
        expected = key + "=N[k|m|g]";
      } else if (key == "mode") {
        ok = !value.empty() && value.size() <= 4 &&
             value.find_first_not_of("01234567") == std::string_view::npos;
        expected = "an octal mode such as mode=1777";
      } else {  // uid, gid
        ok = decimal(value, 4294967294u);
        expected = key + "=N (a numeric id)";
      }
      if (!ok) return fail(invalid("bad option " + quoted(word) + ": expected " + expected));
      if (!p.data.empty()) p.data += ',';
      p.data += word;
      slot = key;
    }
    for (const auto& [s, opt] : seen)
      if (s == slot)
        return fail(invalid(opt == word
                                ? "option " + quoted(word) + " given twice"
                                : "option " + quoted(word) + " conflicts with " + quoted(opt)));
    seen.emplace_back(slot, word);
  }
  return p;
}

std::string path_problem(std::string_view p) {
  constexpr size_t kMaxPath = 4095;  // PATH_MAX without the NUL
  if (p.empty()) return "must not be empty";
  if (p[0] != '/') return "must be an absolute path";
  if (p.size() > kMaxPath) return "is longer than " + std::to_string(kMaxPath) + " bytes";
  if (p.find('\0') != std::string_view::npos) return "contains a NUL byte";
  if (p.find("//") != std::string_view::npos) return "must be normalized (contains \"//\")";
  if (p.size() > 1 && p.back() == '/') return "must be normalized (ends in \"/\")";
  size_t start = 1;
  while (start <= p.size()) {
    size_t end = p.find('/', start);
    if (end == std::string_view::npos) end = p.size();
    auto part = p.substr(start, end - start);
    if (part == "." || part == "..")
      return "must be normalized (contains a \"" + std::string(part) + "\" component)";
    start = end + 1;
  }
  return "";
}

Result<MountPlan> MountPlan::prepare(const SpawnSpec& spec) {
  std::vector<Entry> entries;
  auto add = [&](Entry e) -> Status {
    auto n = normalize_path(e.target);
    if (!n) return fail(n.error().wrap(e.what));
    e.target = *n;
    if (e.kind != Entry::Proc && e.kind != Entry::Dev && e.kind != Entry::Sysfs &&
        (e.target == "/" || e.target == "/proc" || e.target == "/dev" ||
         is_under(e.target, "/proc") || is_under(e.target, "/dev") ||
         (spec.sysfs && (e.target == "/sys" || is_under(e.target, "/sys")))))
      return fail(invalid(e.what + ": cannot mount over " + e.target));
    for (const auto& o : entries)
      if (o.target == e.target)
        return fail(invalid(e.what + ": " + e.target + " is already used by " + o.what));
    entries.push_back(std::move(e));
    return {};
  };

  const bool image = spec.image_root.has_value();
  for (const auto& p : image ? std::vector<std::string>{} : spec.host_paths) {
    auto n = normalize_path(p);
    if (!n) return fail(n.error().wrap("host path"));
    struct stat st;
    if (::lstat(n->c_str(), &st) != 0) continue;  // absent on this host: nothing to show
    Entry e{Entry::HostTree, *n, *n};
    e.what = "host path " + *n;
    if (!S_ISLNK(st.st_mode))
      if (auto c = check_no_symlink(*n, e.what + ": source"); !c) return fail(c.error());
    if (S_ISLNK(st.st_mode)) {
      char buf[4096];
      ssize_t len = ::readlink(n->c_str(), buf, sizeof buf - 1);
      if (len < 0) return fail(sys_error("readlink " + *n));
      e.kind = Entry::HostSymlink;
      e.source.assign(buf, static_cast<size_t>(len));
    } else {
      e.is_dir = S_ISDIR(st.st_mode);
    }
    if (auto s = add(std::move(e)); !s) return fail(s.error());
  }
  for (const auto& v : spec.volumes) {
    std::string what = "volume " + v.source + ":" + v.target;
    auto src = normalize_path(v.source);
    if (!src) return fail(src.error().wrap(what));
    struct stat st;
    if (::stat(src->c_str(), &st) != 0) return fail(sys_error(what + ": source " + *src));
    if (auto c = check_no_symlink(*src, what + ": source"); !c) return fail(c.error());
    Entry e{Entry::Volume, v.target, *src, v.read_only, S_ISDIR(st.st_mode)};
    if (v.idmap && spec.unprivileged)
      return fail(invalid(what + ": idmap needs root (an ordinary user may not idmap a host "
                                 "filesystem)"));
    e.idmap = v.idmap && spec.userns.has_value();
    e.no_exec = v.no_exec;
    e.what = what;
    if (auto s = add(std::move(e)); !s) return fail(s.error());
  }
  // Bounded by default (docs/security.md): the root tmpfs (the writable
  // root, or a container's upper dir), /tmp and /dev/shm have sizes unless a
  // tmpfs entry for that very path says otherwise ("size=0" lifts a bound).
  std::string root_data = kDefaultRootTmpfs;
  std::string shm_data = kDefaultShmTmpfs;
  bool have_tmp = false;
  for (const auto& t : spec.tmpfs) {
    std::string what = "tmpfs " + t.target;
    auto o = parse_tmpfs_options(t.options);
    if (!o) return fail(o.error().wrap(what));
    auto target = normalize_path(t.target);
    if (!target) return fail(target.error().wrap(what));
    if (*target == "/" || *target == "/dev/shm") {
      if (*target == "/" && o->flags != (MS_NOSUID | MS_NODEV))
        return fail(invalid(what + ": only size, nr_inodes and mode can be set for the root "
                                   "(read_only_rootfs decides whether it is writable)"));
      std::string& data = *target == "/" ? root_data : shm_data;
      // The defaults, overridden key by key.
      data = merge_tmpfs_data(data, o->data);
      continue;
    }
    Entry e{Entry::Tmpfs, t.target};
    e.options = t.options;
    e.what = what;
    if (auto s = add(std::move(e)); !s) return fail(s.error());
    if (entries.back().target == "/tmp") have_tmp = true;
  }
  if (!have_tmp) {
    Entry e{Entry::Tmpfs, "/tmp"};
    e.options = kDefaultTmpTmpfs;
    e.what = "tmpfs /tmp";
    if (auto s = add(std::move(e)); !s) return fail(s.error());
  }
  entries.push_back(Entry{Entry::Proc, "/proc", "", false, true, "", "/proc"});
  entries.push_back(Entry{Entry::Dev, "/dev", "", false, true, "", "/dev"});
  if (spec.sysfs) entries.push_back(Entry{Entry::Sysfs, "/sys", "", true, true, "", "/sys"});
  // Parents before children; /proc, /dev and /sys first, in the order an
  // OCI config and runc have them (the runtime-spec orders mounts as
  // listed): /proc's masks, which bind the sandbox's own /dev/null, come
  // after the entries.
  auto rank = [](const Entry& e) {
    return e.kind == Entry::Proc ? 0 : e.kind == Entry::Dev ? 1 : e.kind == Entry::Sysfs ? 2 : 3;
  };
  std::sort(entries.begin(), entries.end(), [&](const Entry& a, const Entry& b) {
    return rank(a) != rank(b) ? rank(a) < rank(b) : a.target < b.target;
  });

  MountPlan plan;
  auto op = [&](OpKind k, std::string path = {}) -> Op& {
    plan.ops_.push_back(Op{k});
    plan.ops_.back().path = std::move(path);
    return plan.ops_.back();
  };
  // A pinned source (make_trees clones it): its index, for a MoveTree.
  auto add_source = [&](const std::string& path, bool is_dir, uint64_t attr,
                        const std::string& what, bool idmap = false, bool optional = false) {
    plan.sources_.push_back({path, is_dir, attr, what, idmap, optional});
    return static_cast<int>(plan.sources_.size() - 1);
  };

  op(OpKind::MakePrivate, "/");
  std::vector<int> source_of(entries.size(), -1);
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    if (e.kind != Entry::HostTree && e.kind != Entry::Volume) continue;
    source_of[i] =
        add_source(e.source, e.is_dir,
                   MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | (e.read_only ? MOUNT_ATTR_RDONLY : 0) |
                       (e.no_exec ? MOUNT_ATTR_NOEXEC : 0),
                   e.what, e.idmap);
  }
  // Container roots: each layer is moved to a short path on the stage
  // tmpfs (its tree was cloned by the library, so a layer below the stage,
  // /tmp, is no matter), and the overlay
  // is mounted over that same tmpfs. The kernel resolves the overlay's
  // option paths at mount time, so the tmpfs (upper dir, layer mounts) stays
  // reachable through the overlay only, and goes with the sandbox's mount
  // namespace. The short paths also keep the option string small.
  std::vector<int> layer_sources;
  int merged_source = -1;
  if (image && !spec.image_root->merged.empty()) {
    // Without overlayfs: the merged copy, read-only (mount points must exist in it).
    auto n = normalize_path(spec.image_root->merged);
    if (!n) return fail(n.error().wrap("merged image root"));
    auto real = resolve_source(*n, "merged image root");
    if (!real) return fail(real.error());
    merged_source =
        add_source(*real, true, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                   "merged image root " + *n, spec.userns && !spec.unprivileged, true);
  } else if (image) {
    const auto& layers = spec.image_root->layers;
    if (layers.empty()) return fail(invalid("image root: no layers"));
    if (layers.size() > 256)
      return fail(make_error(ErrorKind::Limit, "image root: over 256 layers"));
    for (const auto& l : layers) {
      auto n = normalize_path(l);
      if (!n) return fail(n.error().wrap("image layer"));
      struct stat st;
      if (::stat(n->c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
        return fail(sys_error("image layer " + *n));
      auto real = resolve_source(*n, "image layer");
      if (!real) return fail(real.error());
      // With a user namespace, idmapped: the image's own ids inside.
      layer_sources.push_back(
          add_source(*real, true, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
                     "image layer " + *n, spec.userns && !spec.unprivileged, true));
    }
  }
  // Unprivileged: the init clones the sources, before the stage covers /tmp.
  if (spec.unprivileged)
    for (size_t i = 0; i < plan.sources_.size(); ++i) {
      const Source& src = plan.sources_[i];
      Op& o = op(OpKind::CloneTree, src.path);
      o.source = static_cast<int>(i);
      o.flags = src.attr;
      o.mode = src.is_dir ? S_IFDIR : S_IFREG;
    }
  {
    Op& o = op(OpKind::Tmpfs, kStage);
    o.flags = MS_NOSUID | MS_NODEV;
    auto owned = owned_by_payload(root_data, spec);
    if (!owned) return fail(owned.error().wrap("tmpfs /"));
    o.data = std::move(*owned);
  }
  if (merged_source >= 0) {
    op(OpKind::MoveTree, kStage).source = merged_source;
  } else if (image) {
    const std::string base = std::string(kStage) + "/.l";
    op(OpKind::Mkdir, base).mode = 0700;
    std::string lower;
    for (size_t i = layer_sources.size(); i-- > 0;) {
      const std::string at = base + "/" + std::to_string(i);
      op(OpKind::Mkdir, at).mode = 0755;
      op(OpKind::MoveTree, at).source = layer_sources[i];
      if (!lower.empty()) lower += ':';
      lower += at;
    }
    Op& upper = op(OpKind::Mkdir, std::string(kStage) + "/.upper");
    upper.mode = 0755;
    // A writable root's own directory is the upper's: the payload's root
    // owns it, as it owns the image's root-owned files (idmapped layers).
    // (An unprivileged init makes it as that root already.)
    if (!spec.read_only_rootfs && spec.userns && !spec.unprivileged)
      upper.dev = (uint64_t{spec.userns->uid_base} << 32) | spec.userns->gid_base;
    op(OpKind::Mkdir, std::string(kStage) + "/.work").mode = 0700;
    Op& o = op(OpKind::Overlay, kStage);
    o.flags = MS_NOSUID | MS_NODEV;
    o.data = "lowerdir=" + lower + ",upperdir=" + kStage + "/.upper,workdir=" + kStage + "/.work";
    // An ordinary user's store marks opaque directories with user.* xattrs
    // (oci/store.h), which an overlay mounted in a user namespace reads.
    if (spec.unprivileged) o.data += ",userxattr";
  }
  // The nearest volume at or above `target` (strictly above), if any.
  auto volume_above = [&](size_t upto, const std::string& target) -> const Entry* {
    const Entry* best = nullptr;
    for (size_t j = 0; j < upto; ++j)
      if (entries[j].kind == Entry::Volume && is_under(target, entries[j].target) &&
          (!best || entries[j].target.size() > best->target.size()))
        best = &entries[j];
    return best;
  };
  // A mount below a writable volume: the mount follows its mount point's
  // directory when a payload renames a directory above it, so a template
  // made once would keep it where the payload moved it. Such plans mount
  // everything afresh, by fd, at every start: no template.
  bool mount_below_rw_volume = false;
  std::set<std::string> dirs{"/"};  // directories known to exist in the new root
  // The nearest entry strictly above `target`, if any.
  auto parent_entry = [&](size_t upto, const std::string& target) -> const Entry* {
    const Entry* best = nullptr;
    for (size_t j = 0; j < upto; ++j)
      if (is_under(target, entries[j].target) &&
          (!best || entries[j].target.size() > best->target.size()))
        best = &entries[j];
    return best;
  };
  for (size_t i = 0; i < entries.size(); ++i) {
    const Entry& e = entries[i];
    const Entry* above = parent_entry(i, e.target);
    // Below a volume, at any depth, a path crosses a host directory that a
    // payload may change: every op of this entry resolves it by fd.
    const size_t entry_first_op = plan.ops_.size();
    const Entry* volume = volume_above(i, e.target);
    if (volume && !volume->read_only) mount_below_rw_volume = true;
    if (above && (above->kind == Entry::HostTree || above->kind == Entry::Volume)) {
      // The mount point lies in a read-only host tree: it must exist there,
      // and, as the init mounts on it, must not be a symlink nor lie below
      // one (in a volume, a payload may have put one there).
      std::string host = above->source + e.target.substr(above->target.size());
      struct stat st;
      if (::lstat(host.c_str(), &st) != 0)
        return fail(invalid(e.what + ": mount point " + e.target + " does not exist in " +
                            above->what + " and cannot be created there"));
      if (e.kind != Entry::HostSymlink)
        if (auto c = check_no_symlink(host, e.what + ": mount point " + e.target + ", on the host");
            !c)
          return fail(c.error());
      if (e.kind != Entry::HostSymlink && S_ISDIR(st.st_mode) != e.is_dir)
        return fail(invalid(e.what + ": mount point " + e.target + " is not a " +
                            (e.is_dir ? "directory" : "file")));
      if (e.kind == Entry::HostSymlink)
        return fail(invalid(e.what + ": a symlink cannot be placed inside " + above->what));
    } else if (above && above->kind == Entry::HostSymlink) {
      return fail(invalid(e.what + ": " + e.target + " lies below the symlink " + above->target));
    } else {
      // On the root tmpfs or a configured tmpfs: create the path.
      std::string dir;
      size_t pos = 1;
      if (image && !above) {
        // In the image: no component may be a symlink of the image, since
        // the child creates and mounts on these paths before pivot_root.
        for (size_t k = 1; k <= e.target.size(); ++k) {
          if (k != e.target.size() && e.target[k] != '/') continue;
          mode_t m = image_lookup(spec.image_root->layers, e.target.substr(0, k));
          if (m != 0 && !S_ISDIR(m) && (k != e.target.size() || e.is_dir || S_ISLNK(m)))
            return fail(invalid(e.what + ": " + e.target.substr(0, k) + " is " +
                                (S_ISLNK(m) ? "a symlink" : "not a directory") + " in the image"));
        }
      }
      for (;;) {
        size_t slash = e.target.find('/', pos);
        if (slash == std::string::npos) break;
        dir = e.target.substr(0, slash);
        if (dirs.insert(dir).second) op(OpKind::Mkdir, staged(dir)).mode = 0755;
        pos = slash + 1;
      }
      if (e.kind == Entry::HostSymlink) {
        Op& o = op(OpKind::Symlink, staged(e.target));
        o.src = e.source;
        continue;  // (host paths are never below a volume)
      }
      if (e.is_dir) {
        if (dirs.insert(e.target).second) op(OpKind::Mkdir, staged(e.target)).mode = 0755;
      } else {
        op(OpKind::Touch, staged(e.target)).mode = 0644;
      }
    }
    switch (e.kind) {
      case Entry::HostTree:
      case Entry::Volume:
        op(OpKind::MoveTree, staged(e.target)).source = source_of[i];
        break;
      case Entry::Tmpfs: {
        auto parsed = parse_tmpfs_options(e.options);
        Op& o = op(OpKind::Tmpfs, staged(e.target));
        o.flags = parsed->flags;
        auto data = owned_by_payload(merge_tmpfs_data(kDefaultTmpfsBounds, parsed->data), spec);
        if (!data) return fail(data.error().wrap(e.what));
        o.data = std::move(*data);
        break;
      }
      case Entry::Proc:
        op(OpKind::Proc, staged("/proc"));
        break;
      case Entry::Dev: {
        Op& t = op(OpKind::Tmpfs, staged("/dev"));
        t.flags = MS_NOSUID | MS_NOEXEC;
        t.data =
            "mode=0755,size=64k,nr_inodes=" + std::to_string(128 + 2 * spec.device_nodes.size());
        auto dev_owned = owned_by_payload(t.data, spec);
        if (!dev_owned) return fail(dev_owned.error().wrap("tmpfs /dev"));
        t.data = std::move(*dev_owned);
        for (const auto& d : devices::kStandardNodes) {
          const std::string node = "/dev/" + std::string(d.name);
          if (spec.unprivileged) {
            // No mknod in a user namespace: the host's node, bound (as
            // bwrap does), with the host's owner and mode.
            op(OpKind::Touch, staged(node)).mode = 0644;
            op(OpKind::BindFile, staged(node)).src = node;
            continue;
          }
          Op& o = op(OpKind::Mknod, staged(node));
          o.mode = S_IFCHR | 0666;
          o.dev = makedev(d.major, d.minor);
        }
        // The config's own nodes: anywhere below /dev but where cloister's
        // nodes, links and mounts are (one that is a standard node as it is
        // already there is taken as it is).
        std::set<std::string> dev_dirs;
        for (const auto& n : spec.device_nodes) {
          if (auto s = devices::check(n); !s) return fail(s.error());
          auto p = normalize_path(n.path);
          if (!p) return fail(p.error().wrap("device node"));
          if (!p->starts_with("/dev/"))
            return fail(invalid("device node " + n.path + " is not below /dev"));
          const std::string top = p->substr(5, p->find('/', 5) - 5);
          bool standard = false;
          for (const auto& d : devices::kStandardNodes)
            if (top == d.name && *p == "/dev/" + top) {
              if ((n.mode & S_IFMT) != S_IFCHR || n.major != d.major || n.minor != d.minor)
                return fail(invalid("device node " + *p + " is another device than the " + top +
                                    " every sandbox has"));
              standard = true;
            }
          if (standard) continue;
          for (const char* own :
               {"pts", "shm", "mqueue", "fd", "stdin", "stdout", "stderr", "ptmx"})
            if (top == own)
              return fail(invalid("device node " + *p + ": /dev/" + top + " is cloister's own"));
          if (spec.unprivileged)
            return fail(invalid("device node " + *p +
                                ": an unprivileged sandbox cannot make device nodes"));
          for (size_t k = p->find('/', 5); k != std::string::npos; k = p->find('/', k + 1))
            if (dev_dirs.insert(p->substr(0, k)).second)
              op(OpKind::Mkdir, staged(p->substr(0, k))).mode = 0755;
          Op& o = op(OpKind::Mknod, staged(*p));
          o.mode = n.mode;
          o.dev = (n.mode & S_IFMT) == S_IFIFO ? 0 : makedev(n.major, n.minor);
          auto inside = owned_by_payload(
              "uid=" + std::to_string(n.uid) + ",gid=" + std::to_string(n.gid), spec);
          if (!inside) return fail(inside.error().wrap("device node " + *p));
          uint64_t uid = n.uid, gid = n.gid;
          for (const auto& [k, v] : data_pairs(*inside)) (k == "uid" ? uid : gid) = std::stoull(v);
          o.flags = uid << 32 | gid;
        }
        op(OpKind::Mkdir, staged("/dev/pts")).mode = 0755;
        // max: a sandbox's ptys come out of the host's kernel.pty.max (less its
        // reserve for the host's own instance); one sandbox may not take them all.
        // gid 5 (tty) is not mapped in an unprivileged sandbox.
        op(OpKind::Devpts, staged("/dev/pts")).data =
            spec.unprivileged ? "newinstance,ptmxmode=0666,mode=0620,max=256"
                              : "newinstance,ptmxmode=0666,mode=0620,gid=5,max=256";
        // Only a mount point: the tmpfs on it brings its own mode.
        op(OpKind::Mkdir, staged("/dev/shm")).mode = 0755;
        Op& shm = op(OpKind::Tmpfs, staged("/dev/shm"));
        shm.flags = MS_NOSUID | MS_NODEV | MS_NOEXEC;
        auto shm_owned = owned_by_payload(shm_data, spec);
        if (!shm_owned) return fail(shm_owned.error().wrap("tmpfs /dev/shm"));
        shm.data = std::move(*shm_owned);
        shm.src = "shm";
        if (spec.mqueue) {
          // The sandbox's own ipc namespace's message queues.
          op(OpKind::Mkdir, staged("/dev/mqueue")).mode = 0755;
          Op& mq = op(OpKind::PseudoFs, staged("/dev/mqueue"));
          mq.src = "mqueue";
          mq.flags = MS_NOSUID | MS_NODEV | MS_NOEXEC;
        }
        for (const auto& [to, name] : kDevLinks)
          op(OpKind::Symlink, staged("/dev/" + std::string(name))).src = std::string(to);
        break;
      }
      case Entry::HostSymlink:
        break;
      case Entry::Sysfs: {
        Op& o = op(OpKind::PseudoFs, staged("/sys"));
        o.src = "sysfs";
        o.flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
        // Docker's and podman's masks: the firmware's tables and the power
        // meters (a side channel on the host's activity).
        for (const char* m : {"/sys/firmware", "/sys/devices/virtual/powercap"}) {
          Op& t = op(OpKind::Tmpfs, staged(m));
          t.flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
          t.data = "mode=0555";
          t.optional = true;
        }
        break;
      }
    }
    if (volume)
      for (size_t k = entry_first_op; k < plan.ops_.size(); ++k) plan.ops_[k].in_volume = true;
  }

  // /proc's masks and read-only parts, over the sandbox's own /dev/null
  // (mounted by now: the same source whether or not the root is built from
  // a template).
  for (auto p : kProcMasked) {
    // Whether a masked entry is a file or a directory is the same on every
    // kernel: read it off the host's /proc.
    struct stat st;
    if (::stat(std::string(p).c_str(), &st) != 0) continue;
    if (S_ISDIR(st.st_mode)) {
      Op& o = op(OpKind::Tmpfs, staged(std::string(p)));
      o.flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
      o.data = "mode=0555";  // read-only: nothing is ever written
      o.optional = true;
    } else {
      Op& o = op(OpKind::BindFile, staged(std::string(p)));
      o.src = staged("/dev/null");
      o.optional = true;
    }
  }
  for (auto p : kProcReadOnly) op(OpKind::ReadOnlyBind, staged(std::string(p))).optional = true;

  // Masked and read-only paths, where they exist in the new root: in a host
  // tree or volume, in the image, or in /proc and /sys (whose layout is the
  // host's). Absent paths are skipped.
  auto type_in_root = [&](const std::string& path, const Entry* above) -> mode_t {
    struct stat st;
    if (!above) {
      if (!image) return 0;
      return spec.image_root->merged.empty() ? image_lookup(spec.image_root->layers, path)
                                             : image_lookup({spec.image_root->merged}, path);
    }
    std::string host;
    if (above->kind == Entry::HostTree || above->kind == Entry::Volume)
      host = above->source + path.substr(above->target.size());
    else if (above->kind == Entry::Proc || above->kind == Entry::Sysfs)
      host = path;
    else
      return 0;  // a tmpfs of the sandbox's own: nothing to hide
    if (::lstat(host.c_str(), &st) != 0) return 0;
    return st.st_mode;
  };
  // A path of the new root with its symlinks resolved in that root, as the
  // payload will see it (absolute targets from its root, ".." never above
  // it), as runc resolves these paths: a read-only /bin that is a symlink
  // to usr/bin makes /usr/bin read-only. "" when it is absent. The ops
  // resolve the result again with no symlink followed (one changed
  // meanwhile fails the start). In /proc and /sys a symlink leads to
  // another process or namespace's view than the payload's: an error.
  auto link_in_root = [&](const std::string& path, const Entry* above) -> std::string {
    if (!above)
      return image_readlink(spec.image_root->merged.empty()
                                ? spec.image_root->layers
                                : std::vector<std::string>{spec.image_root->merged},
                            path);
    if (above->kind == Entry::HostSymlink) return above->source;
    char buf[PATH_MAX];
    const std::string host = above->source + path.substr(above->target.size());
    ssize_t n = ::readlink(host.c_str(), buf, sizeof buf);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  };
  // What a path of the new root is, and the entry that says so: at a mount
  // point, what is mounted there (the last entry placed there), not what
  // lies below it; anywhere else, what the entry above it has.
  auto type_at = [&](const std::string& path) -> std::pair<mode_t, const Entry*> {
    const Entry* at = nullptr;
    for (const auto& e : entries)
      if (e.target == path) at = &e;
    if (!at) {
      const Entry* above = parent_entry(entries.size(), path);
      return {type_in_root(path, above), above};
    }
    if (at->kind == Entry::HostTree || at->kind == Entry::Volume) {
      struct stat st;
      return {::lstat(at->source.c_str(), &st) == 0 ? st.st_mode : 0, at};
    }
    return {at->kind == Entry::HostSymlink ? S_IFLNK | 0777 : S_IFDIR | 0755, at};
  };
  auto resolve_in_root = [&](const std::string& path,
                             const std::string& what) -> Result<std::string> {
    std::vector<std::string> rest;  // components still to walk, last first
    auto push = [&](const std::string& p) {
      std::vector<std::string> comps;
      for (size_t i = 0; i < p.size();) {
        size_t j = p.find('/', i);
        if (j == std::string::npos) j = p.size();
        if (j > i) comps.push_back(p.substr(i, j - i));
        i = j + 1;
      }
      rest.insert(rest.end(), comps.rbegin(), comps.rend());
    };
    push(path);
    std::string cur = "/";
    int links = 0;
    while (!rest.empty()) {
      const std::string c = std::move(rest.back());
      rest.pop_back();
      if (c == ".") continue;
      if (c == "..") {
        cur = cur == "/" ? cur : cur.substr(0, std::max<size_t>(cur.rfind('/'), 1));
        continue;
      }
      const std::string next = cur == "/" ? "/" + c : cur + "/" + c;
      const auto [type, above] = type_at(next);
      if (type == 0) return std::string();
      if (S_ISLNK(type)) {
        if (above && (above->kind == Entry::Proc || above->kind == Entry::Sysfs))
          return fail(invalid(what + " " + path + ": " + next +
                              " is a symlink in the sandbox's own /proc or /sys"));
        // One in a writable tree the payload (or another sandbox) may point
        // elsewhere before the next start: what it covers would move.
        if (above && !above->read_only)
          return fail(invalid(what + " " + path + ": " + next +
                              " is a symlink inside the writable " + above->what +
                              "; name the path it points to"));
        if (++links > 40) return fail(invalid(what + " " + path + ": too many symlinks"));
        const std::string target = link_in_root(next, above);
        if (target.empty()) return std::string();
        push(target);
        if (target[0] == '/') cur = "/";
        continue;
      }
      if (!rest.empty() && !S_ISDIR(type)) return std::string();
      cur = next;
    }
    return cur;
  };
  for (bool mask : {true, false}) {
    for (const auto& m : mask ? spec.masked_paths : spec.read_only_paths) {
      const std::string what = mask ? "masked path" : "read-only path";
      auto given = normalize_path(m);
      if (!given) return fail(given.error().wrap(what));
      auto n = resolve_in_root(*given, what);
      if (!n) return fail(n.error());
      if (n->empty()) continue;
      const Entry* above = parent_entry(entries.size(), *n);
      // What a mask hides inside a writable volume, a payload can move (rename
      // a directory above it), and the next sandbox sees it unmasked.
      if (const Entry* v = volume_above(entries.size(), *n); v && !v->read_only)
        return fail(invalid(what + " " + *n + " lies inside the writable " + v->what +
                            ": a payload can move what it covers; do it on the host, "
                            "or make the volume read-only"));
      const mode_t type = type_at(*n).first;
      if (type == 0) continue;
      const bool pseudo = above && (above->kind == Entry::Proc || above->kind == Entry::Sysfs);
      // Optional (ENOENT only: there is then nothing to cover): this kernel's
      // /proc and /sys may lack an entry the host's has, and a path below
      // one masked before it is gone.
      if (!mask) {
        // As runc makes them: read-only, executables still run.
        Op& o = op(OpKind::ReadOnlyBind, staged(*n));
        o.optional = true;
        o.flags = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
      } else if (S_ISDIR(type)) {
        Op& o = op(OpKind::Tmpfs, staged(*n));
        o.flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC;
        o.data = "mode=0555";  // read-only: nothing is ever written
        o.optional = true;
      } else {
        // The host's null device: a template (built without the per-sandbox
        // /dev) binds it as well; in /proc and /sys, the sandbox's own.
        Op& o = op(OpKind::BindFile, staged(*n));
        o.src = pseudo ? staged("/dev/null") : "/dev/null";
        o.optional = true;
      }
      // Resolved once, by fd, with no symlink followed (the attack review's
      // F4), wherever it is: a volume's host directory may be another
      // sandbox's to write, and a host user who may write in a host tree
      // must not redirect a mask there with a symlink before the start.
      plan.ops_.back().in_volume = true;
    }
  }

  if (spec.read_only_rootfs) op(OpKind::SetReadOnly, kStage);
  op(OpKind::PivotRoot, kStage);
  // No template for an unprivileged sandbox: its mount namespace is owned by
  // its own user namespace, and one it did not make it may not enter. None
  // with a range per sandbox either: a template's trees are idmapped for
  // one range.
  if (spec.read_only_rootfs && !mount_below_rw_volume && !spec.unprivileged && !spec.userns_pool) {
    std::vector<std::string> own;  // staged targets each sandbox mounts afresh
    for (const auto& e : entries)
      if (e.kind == Entry::Tmpfs || e.kind == Entry::Proc || e.kind == Entry::Dev ||
          e.kind == Entry::Sysfs)
        own.push_back(staged(e.target));
    plan.split_for_template(own);
  }
  return plan;
}

void MountPlan::split_for_template(const std::vector<std::string>& own) {
  std::vector<Op> fixed, per;
  per.push_back(Op{OpKind::EnterTemplate});
  const size_t stage_len = std::strlen(kStage);
  for (const auto& o : ops_) {
    bool mine = false;
    for (const auto& t : own) {
      if (o.path == t && (o.kind == OpKind::Mkdir || o.kind == OpKind::Touch)) break;
      if (o.path == t || o.path.starts_with(t + "/")) {
        mine = true;
        break;
      }
    }
    if (!mine) {
      fixed.push_back(o);  // PivotRoot last: the template's root is the sandbox's
    } else if (o.kind == OpKind::MoveTree) {
      return;  // a bind inside a per-sandbox tmpfs: no template
    } else {
      // Run in the template's namespace, whose root is the stage.
      per.push_back(o);
      per.back().path = o.path.substr(stage_len);
      if (o.kind == OpKind::BindFile && o.src.starts_with(std::string(kStage) + "/"))
        per.back().src = o.src.substr(stage_len);
    }
  }
  template_ops_ = std::move(fixed);
  spawn_ops_ = std::move(per);
}

Result<std::vector<Fd>> MountPlan::make_trees(int userns_fd) const {
  std::vector<Fd> out;
  out.reserve(sources_.size());
  for (const auto& src : sources_) {
    auto pinned = open_no_symlink(src.path, src.what + ": source", true);
    if (!pinned) return fail(pinned.error());
    const int fd = pinned->get();
    struct stat st;
    if (::fstat(fd, &st) != 0) return fail(sys_error(src.what + ": stat source " + src.path));
    if (S_ISDIR(st.st_mode) != src.is_dir)
      return fail(invalid(src.what + ": source " + src.path + " is no longer a " +
                          (src.is_dir ? "directory" : "file")));
    Fd tree(
        ::open_tree(fd, "", AT_EMPTY_PATH | OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE));
    if (!tree) return fail(sys_error(src.what + ": clone the tree of " + src.path));
    struct mount_attr attr {};
    attr.attr_set = src.attr;
    if (src.idmap) {
      if (userns_fd < 0)
        return fail(internal(src.what + ": an idmapped source without a user namespace"));
      attr.attr_set |= MOUNT_ATTR_IDMAP;
      attr.userns_fd = static_cast<uint64_t>(userns_fd);
    }
    int rc = ::mount_setattr(tree.get(), "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr);
    if (rc != 0 && src.idmap && errno == EINVAL) {
      // The filesystem cannot be idmapped on this kernel (or the tree holds
      // one that cannot).
      if (src.idmap_optional) {
        attr.attr_set &= ~uint64_t{MOUNT_ATTR_IDMAP};
        attr.userns_fd = 0;
        rc = ::mount_setattr(tree.get(), "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr);
      } else {
        return fail(sys_error(src.what + ": idmap " + src.path +
                              ": its filesystem cannot be idmapped on this kernel (tmpfs needs "
                              "Linux 6.3)"));
      }
    }
    if (rc != 0)
      return fail(sys_error(src.what + ": set the attributes of " + src.path +
                            (src.idmap ? " (idmapped)" : "")));
    out.push_back(std::move(tree));
  }
  return out;
}

std::vector<OpView> MountPlan::views_of(const std::vector<Op>& ops) {
  std::vector<OpView> v;
  v.reserve(ops.size());
  auto str = [](const std::string& x) { return x.empty() ? nullptr : x.c_str(); };
  for (const auto& o : ops)
    v.push_back(OpView{o.kind, o.optional, o.in_volume, o.source, o.flags, o.mode, o.dev,
                       str(o.src), o.path.c_str(), str(o.data)});
  return v;
}

std::vector<OpView> MountPlan::views(bool templated) const {
  return views_of(templated ? spawn_ops_ : ops_);
}

Result<MountTemplate> MountPlan::build_template(int userns_fd) const {
  if (!templatable()) return fail(invalid("this mount plan has no template"));
  auto made = make_trees(userns_fd);
  if (!made) return fail(made.error());
  std::vector<int> trees;
  for (const auto& t : *made) trees.push_back(t.get());
  const std::vector<OpView> ops = views_of(template_ops_);
  // On a thread of its own: unsharing the mount namespace (and with it the
  // fs struct) must not touch the caller's threads. The thread's namespace
  // outlives it through the fd.
  Result<MountTemplate> out = fail(internal("template not built"));
  std::thread([&] {
    if (::unshare(CLONE_FS | CLONE_NEWNS) != 0) {
      out = fail(sys_error("unshare a mount namespace for the template"));
      return;
    }
    Fd ns(::open("/proc/thread-self/ns/mnt", O_RDONLY | O_CLOEXEC));
    if (!ns) {
      out = fail(sys_error("open the template's mount namespace"));
      return;
    }
    int failed = -1;
    if (int e = run_ops(ops.data(), ops.size(), trees.data(), trees.size(), -1, -1, &failed)) {
      out = fail(sys_error("mount template: " + describe_op(template_ops_, failed), e));
      return;
    }
    Fd root(::open("/", O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!root) {
      out = fail(sys_error("open the template's root"));
      return;
    }
    out = MountTemplate{std::move(ns), std::move(root)};
  }).join();
  return out;
}

std::string MountPlan::describe(int index, bool templated) const {
  return describe_op(templated ? spawn_ops_ : ops_, index);
}

std::string describe_op(const std::vector<MountPlan::Op>& ops, int index) {
  using OpKind = MountPlan::OpKind;
  if (index < 0 || static_cast<size_t>(index) >= ops.size()) return "mount";
  const MountPlan::Op& o = ops[static_cast<size_t>(index)];
  auto shown = [](const std::string& p) {
    std::string s =
        p.compare(0, std::strlen(kStage), kStage) == 0 ? p.substr(std::strlen(kStage)) : p;
    return s.empty() ? std::string("/") : s;
  };
  switch (o.kind) {
    case OpKind::MakePrivate:
      return "make / private";
    case OpKind::MoveTree:
      return "bind at " + shown(o.path);
    case OpKind::Tmpfs:
      return "tmpfs at " + shown(o.path);
    case OpKind::Mkdir:
      return "mkdir " + shown(o.path);
    case OpKind::Touch:
      return "create mount point " + shown(o.path);
    case OpKind::Symlink:
      return "symlink " + shown(o.path) + " -> " + o.src;
    case OpKind::BindFile:
      return "mask " + shown(o.path);
    case OpKind::Proc:
      return "mount proc";
    case OpKind::PseudoFs:
      return std::string("mount ") + o.src + " at " + shown(o.path);
    case OpKind::ReadOnlyBind:
      return "read-only " + shown(o.path);
    case OpKind::Mknod:
      return "mknod " + shown(o.path);
    case OpKind::Devpts:
      return "mount devpts";
    case OpKind::SetReadOnly:
      return "make the root read-only";
    case OpKind::PivotRoot:
      return "pivot_root";
    case OpKind::Overlay:
      return "mount the image's overlay root";
    case OpKind::EnterTemplate:
      return "enter the mount template";
    case OpKind::CloneTree:
      return "pin and clone " + o.path;
  }
  return "mount";
}

}  // namespace cloister::mounts

#include "oci/layer.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cstring>
#include <string_view>
#include <vector>

#include "isolate/fd.h"
#include "oci/store.h"
#include "oci/tar.h"

namespace cloister::oci {
namespace {

constexpr size_t kMaxPath = 4095;
constexpr size_t kMaxXattrValue = 64 * 1024;
constexpr std::string_view kWhiteout = ".wh.";
constexpr std::string_view kOpaque = ".wh..wh..opq";

// "./a//b/" -> {"a","b"}; ".." anywhere is refused; "" / "." / "/" -> {}.
Result<std::vector<std::string>> split_path(std::string_view p) {
  if (p.size() > kMaxPath) return fail(make_error(ErrorKind::Limit, "path longer than 4095"));
  if (p.find('\0') != std::string_view::npos) return fail(invalid("NUL byte in path"));
  std::vector<std::string> out;
  size_t i = 0;
  while (i < p.size()) {
    size_t j = p.find('/', i);
    if (j == std::string_view::npos) j = p.size();
    auto c = p.substr(i, j - i);
    if (c == "..") return fail(invalid("path has a '..' component"));
    if (!c.empty() && c != ".") out.emplace_back(c);
    i = j + 1;
  }
  return out;
}

std::string join(const std::vector<std::string>& c, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    if (i) s += '/';
    s += c[i];
  }
  return s.empty() ? std::string(".") : s;
}

// In a user's store only user.* xattrs can be set, and user.overlay.* is
// what overlayfs reads there (userxattr): a layer's own would redirect or
// hide what the layers below hold.
bool keep_xattr(std::string_view name) {
  if (user_store()) return name.starts_with("user.") && !name.starts_with("user.overlay.");
  return name.starts_with("user.") || name == "security.capability";
}

// Owners are kept in root's store; a user's store holds the user's files
// (what the kernel allows it), its sandboxes' root's inside.
int chown_at(int dir, const char* name, uid_t uid, gid_t gid) {
  return user_store() ? 0 : ::fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW);
}

Status remove_entry(int parent, const std::string& name) {
  struct stat st;
  if (::fstatat(parent, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    if (errno == ENOENT) return {};
    return fail(sys_error("stat"));
  }
  if (S_ISDIR(st.st_mode)) {
    int fd = ::openat(parent, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return fail(sys_error("open directory to replace"));
    Fd dir(fd);
    if (auto s = remove_tree_contents(dir.get()); !s) return s;
    if (::unlinkat(parent, name.c_str(), AT_REMOVEDIR) != 0) return fail(sys_error("rmdir"));
    return {};
  }
  if (::unlinkat(parent, name.c_str(), 0) != 0) return fail(sys_error("unlink"));
  return {};
}

class Applier {
 public:
  Applier(int root, const ApplyOptions& o) : root_(root), opt_(o) {}

  Status apply(TarReader& tar, const TarEntry& e) {
    auto comps = split_path(e.path);
    if (!comps) return fail(comps.error());
    if (comps->empty()) {
      // The root itself: a directory entry is accepted and ignored (the
      // layer root's metadata is ours); anything else would replace it.
      if (e.type == '5') return {};
      return fail(invalid("entry would replace the layer root"));
    }
    const std::string name = comps->back();
    auto parent = open_parent(*comps);
    if (!parent) return fail(parent.error());
    const int pfd = *parent;

    if (opt_.whiteouts && name.starts_with(kWhiteout)) {
      if (name == kOpaque) {
        if (::fsetxattr(pfd, opaque_xattr(), "y", 1, 0) != 0)
          return fail(sys_error("set opaque xattr"));
        return {};
      }
      if (name == kWhiteout || name.starts_with(".wh.."))
        return fail(invalid("reserved whiteout name"));
      std::string target = name.substr(kWhiteout.size());
      if (auto s = replace(pfd, target); !s) return s;  // drops a cached parent below it
      if (::mknodat(pfd, target.c_str(), S_IFCHR | 0, makedev(0, 0)) != 0)
        return fail(sys_error("create whiteout"));
      return {};
    }

    switch (e.type) {
      case '0':
      case '7':
        return regular(tar, e, pfd, name);
      case '5':
        return directory(e, pfd, name);
      case '2': {
        if (e.linkname.empty() || e.linkname.size() > kMaxPath ||
            e.linkname.find('\0') != std::string::npos)
          return fail(invalid("bad symlink target"));
        // The target text is stored as is: it is only ever resolved inside
        // the container's root, never by us (every lookup here is
        // RESOLVE_IN_ROOT or does not follow). symlinkat never follows an
        // existing name: EEXIST, then replace.
        if (::symlinkat(e.linkname.c_str(), pfd, name.c_str()) != 0) {
          if (errno != EEXIST) return fail(sys_error("symlink"));
          if (auto s = replace(pfd, name); !s) return s;
          if (::symlinkat(e.linkname.c_str(), pfd, name.c_str()) != 0)
            return fail(sys_error("symlink"));
        }
        if (opt_.keep_owners && chown_at(pfd, name.c_str(), e.uid, e.gid) != 0)
          return fail(sys_error("chown symlink"));
        struct timespec ts[2] = {{e.mtime, 0}, {e.mtime, 0}};
        ::utimensat(pfd, name.c_str(), ts, AT_SYMLINK_NOFOLLOW);
        return {};
      }
      case '1':
        return hardlink(e, pfd, name);
      case '3':
      case '4':
        if (!opt_.allow_devices)
          return fail(make_error(ErrorKind::PermissionDenied, "device nodes are not allowed"));
        [[fallthrough]];
      case '6': {
        if (auto s = replace(pfd, name); !s) return s;
        mode_t kind = e.type == '3' ? S_IFCHR : e.type == '4' ? S_IFBLK : S_IFIFO;
        if (::mknodat(pfd, name.c_str(), kind | 0600, makedev(e.devmajor, e.devminor)) != 0)
          return fail(sys_error("mknod"));
        // Just created by mknodat, so not a symlink: chmod may name it.
        if (opt_.keep_owners && chown_at(pfd, name.c_str(), e.uid, e.gid) != 0)
          return fail(sys_error("chown"));
        if (::fchmodat(pfd, name.c_str(), e.mode & 07777, 0) != 0) return fail(sys_error("chmod"));
        return {};
      }
      default:
        return fail(invalid(std::string("unsupported entry type '") + e.type + "'"));
    }
  }

 private:
  // An open directory fd for the entry's parent, creating missing
  // directories (0755 root:root) inside the layer.
  Result<int> open_parent(const std::vector<std::string>& comps) {
    const std::string ppath = join(comps, comps.size() - 1);
    if (cached_ && ppath == cached_path_) return cached_.get();
    cached_.reset();
    const uint64_t kResolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS;
    int fd = openat2_raw(root_, ppath.c_str(), O_RDONLY | O_DIRECTORY, kResolve);
    if (fd < 0 && errno == ENOENT) {
      // Create each missing component below the deepest existing one.
      Fd cur(openat2_raw(root_, ".", O_RDONLY | O_DIRECTORY, kResolve));
      if (!cur) return fail(sys_error("open layer root"));
      for (size_t i = 0; i + 1 < comps.size(); ++i) {
        const std::string sub = join(comps, i + 1);
        int next = openat2_raw(root_, sub.c_str(), O_RDONLY | O_DIRECTORY, kResolve);
        if (next < 0 && errno == ENOENT) {
          // mkdirat never follows a symlink in its last component.
          if (::mkdirat(cur.get(), comps[i].c_str(), 0755) != 0 && errno != EEXIST)
            return fail(sys_error("create parent " + join(comps, i + 1)));
          next = openat2_raw(root_, sub.c_str(), O_RDONLY | O_DIRECTORY, kResolve);
        }
        if (next < 0) return fail(sys_error("open parent " + join(comps, i + 1)));
        cur = Fd(next);
      }
      fd = cur.release();
    }
    if (fd < 0) return fail(sys_error("open parent " + ppath));
    cached_ = Fd(fd);
    cached_path_ = ppath;
    return fd;
  }

  // Removes whatever is at name unless it is a directory we keep.
  Status replace(int pfd, const std::string& name) {
    struct stat st;
    if (::fstatat(pfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode)) {
      cached_path_
          .clear();  // a cached parent may lie below it (closed at the next lookup: pfd may be it)
      if (!opt_.replace_dirs) {
        if (::unlinkat(pfd, name.c_str(), AT_REMOVEDIR) == 0) return {};
        if (errno == ENOTEMPTY || errno == EEXIST)
          return fail(invalid("would replace a directory that is not empty"));
        return fail(sys_error("rmdir"));
      }
    }
    return remove_entry(pfd, name);
  }

  Status metadata_fd(int fd, const TarEntry& e) {
    // chown first: it clears setuid/setgid, which the chmod then sets.
    if (opt_.keep_owners && !user_store() && ::fchown(fd, e.uid, e.gid) != 0)
      return fail(sys_error("chown"));
    if (::fchmod(fd, e.mode & (opt_.setid ? 07777 : 01777)) != 0) return fail(sys_error("chmod"));
    for (const auto& [k, v] : e.xattrs) {
      if (!opt_.xattrs || !keep_xattr(k)) continue;
      if (v.size() > kMaxXattrValue) return fail(make_error(ErrorKind::Limit, "xattr too large"));
      if (::fsetxattr(fd, k.c_str(), v.data(), v.size(), 0) != 0)
        return fail(sys_error("set xattr " + k));
    }
    struct timespec ts[2] = {{e.mtime, 0}, {e.mtime, 0}};
    ::futimens(fd, ts);
    return {};
  }

  Status regular(TarReader& tar, const TarEntry& e, int pfd, const std::string& name) {
    // O_EXCL never follows or reuses what is there (a symlink included):
    // EEXIST, then replace. Trying the create first spares the common case,
    // a new name, two lookups.
    constexpr int kCreate = O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC;
    int fd = ::openat(pfd, name.c_str(), kCreate, 0600);
    if (fd < 0 && errno == EEXIST) {
      if (auto s = replace(pfd, name); !s) return s;
      fd = ::openat(pfd, name.c_str(), kCreate, 0600);
    }
    if (fd < 0) return fail(sys_error("create"));
    Fd f(fd);
    for (;;) {
      auto n = tar.read_data(buf_, sizeof buf_);
      if (!n) return fail(n.error());
      if (*n == 0) break;
      if (auto s = write_all(f.get(), std::string_view(buf_, *n)); !s) return s;
    }
    return metadata_fd(f.get(), e);
  }

  Status directory(const TarEntry& e, int pfd, const std::string& name) {
    // mkdirat first (the common case: a fresh directory); on EEXIST an
    // existing directory is kept, anything else replaced.
    if (::mkdirat(pfd, name.c_str(), 0700) != 0) {
      if (errno != EEXIST) return fail(sys_error("mkdir"));
      struct stat st;
      if (::fstatat(pfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
        return fail(sys_error("stat"));
      if (!S_ISDIR(st.st_mode)) {
        if (auto s = remove_entry(pfd, name); !s) return s;
        if (::mkdirat(pfd, name.c_str(), 0700) != 0) return fail(sys_error("mkdir"));
      }
    }
    int fd = ::openat(pfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return fail(sys_error("open directory"));
    Fd d(fd);
    return metadata_fd(d.get(), e);
  }

  Status hardlink(const TarEntry& e, int pfd, const std::string& name) {
    auto target = split_path(e.linkname);
    if (!target) return fail(target.error().wrap("hardlink target"));
    if (target->empty()) return fail(invalid("hardlink to the layer root"));
    // The target's parent, resolved inside the layer root (no creation).
    const std::string tparent = join(*target, target->size() - 1);
    Fd tp(openat2_raw(root_, tparent.c_str(), O_RDONLY | O_DIRECTORY,
                      RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS));
    if (!tp) return fail(sys_error("hardlink target " + e.linkname));
    struct stat st;
    if (::fstatat(tp.get(), target->back().c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0)
      return fail(sys_error("hardlink target " + e.linkname));
    if (S_ISDIR(st.st_mode)) return fail(invalid("hardlink to a directory"));
    struct stat cur;
    if (::fstatat(pfd, name.c_str(), &cur, AT_SYMLINK_NOFOLLOW) == 0 && cur.st_ino == st.st_ino &&
        cur.st_dev == st.st_dev)
      return {};
    if (auto s = replace(pfd, name); !s) return s;
    // Flags 0: a symlink target is linked itself, never followed.
    if (::linkat(tp.get(), target->back().c_str(), pfd, name.c_str(), 0) != 0)
      return fail(sys_error("link"));
    return {};
  }

  int root_;
  const ApplyOptions& opt_;
  Fd cached_;
  std::string cached_path_;
  char buf_[128 * 1024];
};

}  // namespace

Status remove_tree_contents(int dir_fd) {
  auto entries = read_dir(dir_fd);
  if (!entries) return fail(entries.error());
  std::vector<std::string> names;
  for (auto& e : *entries) names.push_back(std::move(e.name));
  for (const auto& n : names)
    if (auto s = remove_entry(dir_fd, n); !s) return fail(s.error().wrap(n));
  return {};
}

Result<ApplyResult> apply_layer(ByteStream& in, int root_fd, const ApplyOptions& opt) {
  HashingStream compressed(in, opt.expect_size.value_or(UINT64_MAX),
                           "layer larger than its descriptor says");
  // Progress is reported from the compressed side.
  struct Progress : ByteStream {
    HashingStream& in;
    const ApplyOptions& opt;
    Progress(HashingStream& i, const ApplyOptions& o) : in(i), opt(o) {}
    Result<size_t> read(char* b, size_t l) override {
      auto n = in.read(b, l);
      if (n && opt.progress) opt.progress(in.count());
      return n;
    }
  } progress(compressed, opt);
  auto raw = decompress(progress, opt.compression);
  HashingStream plain(*raw, opt.max_uncompressed, "uncompressed layer");
  // Download, both digests and decompression on one thread, the apply's
  // system calls on this one.
  ReadAheadStream ahead(plain);
  TarReader tar(ahead);
  Applier applier(root_fd, opt);
  ApplyResult r;
  TarEntry e;
  for (;;) {
    auto more = tar.next(e);
    if (!more) return fail(more.error().wrap(opt.what));
    if (!*more) break;
    if (++r.entries > opt.max_entries)
      return fail(make_error(ErrorKind::Limit, std::string(opt.what) + ": more than " +
                                                   std::to_string(opt.max_entries) + " entries"));
    if (auto s = applier.apply(tar, e); !s)
      return fail(s.error().wrap(std::string(opt.what) + " entry '" + e.path.substr(0, 256) + "'"));
  }
  // The rest of both streams still counts towards the digests.
  if (auto n = ahead.drain(); !n) return fail(n.error().wrap("layer"));
  if (auto n = progress.drain(); !n) return fail(n.error().wrap("layer"));
  r.digest = compressed.finish();
  r.diff_id = plain.finish();
  r.compressed_size = compressed.count();
  r.uncompressed_size = plain.count();
  if (opt.expect_size && r.compressed_size != *opt.expect_size)
    return fail(invalid("layer: size " + std::to_string(r.compressed_size) + ", expected " +
                        std::to_string(*opt.expect_size)));
  if (opt.expect_digest && r.digest != *opt.expect_digest)
    return fail(
        invalid("layer: digest " + r.digest.str() + ", expected " + opt.expect_digest->str()));
  if (opt.expect_diff_id && r.diff_id != *opt.expect_diff_id)
    return fail(
        invalid("layer: diff_id " + r.diff_id.str() + ", expected " + opt.expect_diff_id->str()));
  return r;
}

}  // namespace cloister::oci

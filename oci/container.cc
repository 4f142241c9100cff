#include "oci/container.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <dirent.h>
#include <sys/xattr.h>

#include <charconv>
#include <cstdlib>
#include <cstring>

#include "isolate/fd.h"
#include "oci/layer.h"
#include "oci/store.h"

namespace cloister::oci {
namespace {

std::optional<uint32_t> number(std::string_view s) {
  uint32_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty() || v == UINT32_MAX)
    return std::nullopt;
  return v;
}

// Fields of the line of a passwd/group file whose first field is name (or
// whose third field is the number, when by_id).
std::vector<std::string> find_line(const std::string& text, std::string_view key, bool by_id) {
  size_t i = 0;
  while (i < text.size()) {
    size_t j = text.find('\n', i);
    if (j == std::string::npos) j = text.size();
    std::string_view line(text.data() + i, j - i);
    i = j + 1;
    std::vector<std::string> f;
    size_t a = 0;
    while (true) {
      size_t b = line.find(':', a);
      f.emplace_back(line.substr(a, b == std::string_view::npos ? line.size() - a : b - a));
      if (b == std::string_view::npos) break;
      a = b + 1;
    }
    if (f.size() >= 3 && (by_id ? f[2] == key : f[0] == key)) return f;
  }
  return {};
}

bool opaque(int fd) {
  char v[2] = {};
  return ::fgetxattr(fd, opaque_xattr(), v, sizeof v) == 1 && v[0] == 'y';
}

Status remove_at(int dir, const char* name) {
  struct stat st;
  if (::fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return {};
  if (S_ISDIR(st.st_mode)) {
    Fd sub(::openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub) return fail(sys_error(std::string("open ") + name));
    if (auto r = remove_tree_contents(sub.get()); !r) return r;
    if (::unlinkat(dir, name, AT_REMOVEDIR) != 0) return fail(sys_error("rmdir"));
  } else if (::unlinkat(dir, name, 0) != 0) {
    return fail(sys_error(std::string("unlink ") + name));
  }
  return {};
}

// Merges the directory src into dst (both fds), never following a symlink.
Status merge_dir(int src, int dst) {
  auto entries = read_dir(src);
  if (!entries) return fail(entries.error());
  std::vector<std::string> names;
  for (auto& e : *entries) names.push_back(std::move(e.name));
  for (const auto& n : names) {
    const char* name = n.c_str();
    struct stat st;
    if (::fstatat(src, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return fail(sys_error(n));
    if (S_ISCHR(st.st_mode) && st.st_rdev == makedev(0, 0)) {  // whiteout
      if (auto r = remove_at(dst, name); !r) return r;
      continue;
    }
    if (S_ISDIR(st.st_mode)) {
      struct stat dt;
      if (::fstatat(dst, name, &dt, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISDIR(dt.st_mode))
        if (auto r = remove_at(dst, name); !r) return r;
      if (::mkdirat(dst, name, 0700) != 0 && errno != EEXIST) return fail(sys_error("mkdir " + n));
      Fd s2(::openat(src, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      Fd d2(::openat(dst, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!s2 || !d2) return fail(sys_error("open directory " + n));
      if (opaque(s2.get()))
        if (auto r = remove_tree_contents(d2.get()); !r) return r;
      if (::fchown(d2.get(), st.st_uid, st.st_gid) != 0 || ::fchmod(d2.get(), st.st_mode & 07777))
        return fail(sys_error("chown/chmod " + n));
      if (auto r = merge_dir(s2.get(), d2.get()); !r) return fail(r.error().wrap(n));
      continue;
    }
    if (auto r = remove_at(dst, name); !r) return r;
    if (S_ISREG(st.st_mode)) {
      // A hardlink shares the layer's inode: fine, both are read-only to
      // containers. Across filesystems, a copy.
      if (::linkat(src, name, dst, name, 0) == 0) continue;
      if (errno != EXDEV) return fail(sys_error("link " + n));
      Fd in(::openat(src, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
      Fd out(::openat(dst, name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
      if (!in || !out) return fail(sys_error("copy " + n));
      auto data = read_fd(in.get());
      if (!data) return fail(data.error());
      if (auto r = write_all(out.get(), *data); !r) return r;
      if (::fchown(out.get(), st.st_uid, st.st_gid) != 0 || ::fchmod(out.get(), st.st_mode & 07777))
        return fail(sys_error("chown/chmod " + n));
    } else if (S_ISLNK(st.st_mode)) {
      char buf[4096];
      ssize_t len = ::readlinkat(src, name, buf, sizeof buf - 1);
      if (len < 0) return fail(sys_error("readlink " + n));
      buf[len] = 0;
      if (::symlinkat(buf, dst, name) != 0) return fail(sys_error("symlink " + n));
      ::fchownat(dst, name, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW);
    } else {
      if (::mknodat(dst, name, st.st_mode, st.st_rdev) != 0) return fail(sys_error("mknod " + n));
      ::fchownat(dst, name, st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW);
    }
  }
  return {};
}

}  // namespace

bool overlay_available() {
  if (const char* e = std::getenv("CLOISTER_NO_OVERLAY"); e && std::strcmp(e, "1") == 0)
    return false;
  auto fs = read_file("/proc/filesystems");
  return fs && fs->find("\toverlay\n") != std::string::npos;
}

Result<std::string> merged_rootfs(const std::string& state_dir, const ContainerImage& image) {
  auto resolved = resolve_state_dir(state_dir);
  if (!resolved) return fail(resolved.error());
  const std::string root = *resolved;
  const std::string dir = root + "/snapshots/" + image.top_chain;
  const std::string rootfs = dir + "/rootfs";
  if (::access(rootfs.c_str(), F_OK) == 0) return rootfs;
  if (::mkdir((root + "/snapshots").c_str(), 0700) != 0 && errno != EEXIST)
    return fail(sys_error("mkdir snapshots"));
  auto lock = FileLock::acquire(root + "/locks/snapshot-" + image.top_chain + ".lock", true);
  if (!lock) return fail(lock.error());
  if (::access(rootfs.c_str(), F_OK) == 0) return rootfs;
  const std::string stage =
      root + "/tmp/snapshot-" + image.top_chain + "-" + std::to_string(::getpid());
  (void)remove_tree(stage);
  if (::mkdir(stage.c_str(), 0700) != 0 || ::mkdir((stage + "/rootfs").c_str(), 0755) != 0)
    return fail(sys_error("mkdir " + stage));
  auto made = [&]() -> Status {
    Fd dst(::open((stage + "/rootfs").c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!dst) return fail(sys_error("open " + stage));
    for (const auto& l : image.layer_dirs) {
      Fd src(::open(l.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!src) return fail(sys_error("open layer " + l));
      if (auto r = merge_dir(src.get(), dst.get()); !r) return fail(r.error().wrap("merge " + l));
    }
    if (::rename(stage.c_str(), dir.c_str()) != 0) return fail(sys_error("publish " + dir));
    return {};
  }();
  if (!made) {
    (void)remove_tree(stage);
    return fail(made.error().wrap("copying fallback (no overlayfs)"));
  }
  return rootfs;
}

Result<ContainerImage> open_container_image(const std::string& state_dir,
                                            const std::string& reference, bool pull,
                                            const RegistryOptions& registry) {
  auto dir = resolve_state_dir(state_dir);
  if (!dir) return fail(dir.error());
  auto store = Store::open(*dir);
  if (!store) return fail(store.error());
  auto img = resolve_image(*store, reference);
  if (!img && img.error().kind == ErrorKind::NotFound && pull) {
    auto pulled = pull_image(*store, reference, registry, {});
    if (!pulled) return fail(pulled.error());
    img = resolve_image(*store, reference);
  }
  if (!img) return fail(img.error());
  ContainerImage c;
  c.reference = img->record.reference;
  if (!img->record.chain_ids.empty()) c.top_chain = img->record.chain_ids.back().hex;
  c.layer_dirs = std::move(img->layer_dirs);
  c.config = std::move(img->config);
  return c;
}

Result<std::string> read_image_file(const std::vector<std::string>& layers,
                                    const std::string& path) {
  const std::string rel = path.substr(path.find_first_not_of('/'));
  for (auto it = layers.rbegin(); it != layers.rend(); ++it) {
    auto dir = open_fd(*it, O_PATH | O_DIRECTORY);
    if (!dir) continue;
    int fd = openat2_raw(dir->get(), rel.c_str(), O_RDONLY | O_NOFOLLOW,
                         RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS);
    if (fd < 0) {
      if (errno == ENOENT) continue;
      // A char device (whiteout) or a symlink: absent in the merged view.
      return fail(make_error(ErrorKind::NotFound, path + " is not a regular file in the image"));
    }
    Fd f(fd);
    struct stat st;
    if (::fstat(f.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (1 << 20))
      return fail(make_error(ErrorKind::NotFound, path + " is not a small regular file"));
    return read_fd(f.get());
  }
  return fail(make_error(ErrorKind::NotFound, path + " is not in the image"));
}

Result<Identity> image_user(const std::vector<std::string>& layers, const std::string& user) {
  Identity id;
  if (user.empty()) return id;
  auto colon = user.find(':');
  std::string u = user.substr(0, colon);
  std::string g = colon == std::string::npos ? "" : user.substr(colon + 1);
  std::string passwd = read_image_file(layers, "/etc/passwd").value_or("");
  if (auto n = number(u)) {
    id.uid = *n;
    auto f = find_line(passwd, u, true);
    id.gid = f.size() >= 4 && number(f[3]) ? *number(f[3]) : *n;
  } else {
    auto f = find_line(passwd, u, false);
    if (f.size() < 4 || !number(f[2]) || !number(f[3]))
      return fail(make_error(ErrorKind::NotFound, "user '" + u + "' not found in the image"));
    id.uid = *number(f[2]);
    id.gid = *number(f[3]);
  }
  if (!g.empty()) {
    if (auto n = number(g)) {
      id.gid = *n;
    } else {
      std::string group = read_image_file(layers, "/etc/group").value_or("");
      auto f = find_line(group, g, false);
      if (f.size() < 3 || !number(f[2]))
        return fail(make_error(ErrorKind::NotFound, "group '" + g + "' not found in the image"));
      id.gid = *number(f[2]);
    }
  }
  return id;
}

}  // namespace cloister::oci

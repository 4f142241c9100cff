#include "oci/container.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <charconv>

#include "isolate/fd.h"

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

}  // namespace

Result<ContainerImage> open_container_image(const std::string& state_dir,
                                            const std::string& reference, bool pull,
                                            const RegistryOptions& registry) {
  auto store = Store::open(state_dir.empty() ? kDefaultStateDir : state_dir);
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
    struct open_how how {};
    how.flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC;
    how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS;
    long fd = ::syscall(SYS_openat2, dir->get(), rel.c_str(), &how, sizeof how);
    if (fd < 0) {
      if (errno == ENOENT) continue;
      // A char device (whiteout) or a symlink: absent in the merged view.
      return fail(make_error(ErrorKind::NotFound, path + " is not a regular file in the image"));
    }
    Fd f(static_cast<int>(fd));
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

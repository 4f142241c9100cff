#include "oci/store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <nlohmann/json.hpp>
#include <set>

#include "oci/events.h"
#include "oci/layer.h"

namespace cloister::oci {
namespace {

using json = nlohmann::json;

Status make_dir(const std::string& p) {
  if (::mkdir(p.c_str(), 0700) != 0 && errno != EEXIST) return fail(sys_error("mkdir " + p));
  return {};
}

std::vector<std::string> list_dir(const std::string& p) {
  std::vector<std::string> out;
  if (auto entries = read_dir(p))
    for (auto& e : *entries) out.push_back(std::move(e.name));
  return out;
}

Status write_atomic(const std::string& dir_tmp, const std::string& final_path,
                    std::string_view data) {
  auto fd = open_fd(dir_tmp, O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (!fd) return fail(fd.error());
  if (auto s = write_all(fd->get(), data); !s) return s;
  if (::fsync(fd->get()) != 0) return fail(sys_error("fsync " + dir_tmp));
  if (::rename(dir_tmp.c_str(), final_path.c_str()) != 0) {
    int err = errno;
    ::unlink(dir_tmp.c_str());
    return fail(sys_error("rename into " + final_path, err));
  }
  return {};
}

json record_json(const ImageRecord& r) {
  json j;
  j["reference"] = r.reference;
  j["manifest"] = r.manifest.str();
  j["config"] = r.config.str();
  j["diff_ids"] = json::array();
  for (auto& d : r.diff_ids) j["diff_ids"].push_back(d.str());
  j["chain_ids"] = json::array();
  for (auto& d : r.chain_ids) j["chain_ids"].push_back(d.str());
  j["size"] = r.size;
  j["created"] = r.created;
  return j;
}

Result<ImageRecord> record_from(const std::string& text, const std::string& where) {
  auto j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return fail(invalid(where + ": not a JSON object"));
  ImageRecord r;
  auto dig = [&](const json& v) -> Result<Digest> {
    if (!v.is_string()) return fail(invalid(where + ": digest is not a string"));
    return parse_digest(v.get<std::string>());
  };
  if (!j.contains("reference") || !j["reference"].is_string())
    return fail(invalid(where + ": no reference"));
  r.reference = j["reference"].get<std::string>();
  auto m = dig(j.value("manifest", json()));
  auto c = dig(j.value("config", json()));
  if (!m || !c) return fail(invalid(where + ": bad manifest/config digest"));
  r.manifest = *m;
  r.config = *c;
  for (const char* key : {"diff_ids", "chain_ids"}) {
    const json& a = j.value(key, json::array());
    if (!a.is_array()) return fail(invalid(where + ": " + key + " is not an array"));
    for (const auto& v : a) {
      auto d = dig(v);
      if (!d) return fail(d.error().wrap(where));
      (std::string_view(key) == "diff_ids" ? r.diff_ids : r.chain_ids).push_back(*d);
    }
  }
  r.size = j.value("size", uint64_t{0});
  r.created = j.value("created", int64_t{0});
  return r;
}

// images/<name>.json: the reference with every byte outside [a-z0-9._-]
// as %XX (readable, and no hashing on the exec path); a long one by its
// sha256 instead, to stay within NAME_MAX.
std::string record_name(const std::string& ref) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : ref) {
    if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-')
      out += static_cast<char>(c);
    else
      out += '%', out += kHex[c >> 4], out += kHex[c & 15];
  }
  if (out.size() > 200 || out.starts_with(".")) return "sha256-" + sha256_of(ref).hex;
  return out;
}

}  // namespace

std::vector<Digest> chain_ids(const std::vector<Digest>& diff_ids) {
  std::vector<Digest> out;
  for (const auto& d : diff_ids) {
    if (out.empty())
      out.push_back(d);
    else
      out.push_back(sha256_of(out.back().str() + " " + d.str()));
  }
  return out;
}

Result<FileLock> FileLock::acquire(const std::string& path, bool exclusive) {
  auto fd = open_fd(path, O_RDWR | O_CREAT, 0600);
  if (!fd) return fail(fd.error());
  while (::flock(fd->get(), exclusive ? LOCK_EX : LOCK_SH) != 0)
    if (errno != EINTR) return fail(sys_error("flock " + path));
  FileLock l;
  l.fd_ = std::move(*fd);
  return l;
}

Status remove_tree(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) return errno == ENOENT ? Status{} : fail(sys_error(path));
  if (!S_ISDIR(st.st_mode)) {
    if (::unlink(path.c_str()) != 0) return fail(sys_error("unlink " + path));
    return {};
  }
  auto fd = open_fd(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  if (!fd) return fail(fd.error());
  if (auto s = remove_tree_contents(fd->get()); !s) return fail(s.error().wrap(path));
  if (::rmdir(path.c_str()) != 0) return fail(sys_error("rmdir " + path));
  return {};
}

uint64_t tree_usage(int dir_fd) {
  uint64_t total = 0;
  auto entries = read_dir(dir_fd);
  if (!entries) return 0;
  for (const auto& e : *entries) {
    struct stat st;
    if (::fstatat(dir_fd, e.name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    total += static_cast<uint64_t>(st.st_blocks) * 512;
    if (S_ISDIR(st.st_mode)) {
      int sub = ::openat(dir_fd, e.name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub >= 0) {
        Fd s(sub);
        total += tree_usage(s.get());
      }
    }
  }
  return total;
}

Result<std::string> resolve_state_dir(const std::string& configured) {
  if (!configured.empty()) return configured;
  if (!user_store()) return std::string(kDefaultStateDir);
  for (auto [var, tail] :
       {std::pair{"XDG_DATA_HOME", "/cloister"}, std::pair{"HOME", "/.local/share/cloister"}}) {
    const char* v = std::getenv(var);
    if (!v || v[0] != '/') continue;
    struct stat st {};
    if (::stat(v, &st) != 0 || !S_ISDIR(st.st_mode)) continue;
    return std::string(v) + tail;
  }
  return fail(
      invalid("an ordinary user's image store: set images.state_dir (--state-dir), or "
              "XDG_DATA_HOME or HOME to a directory of the user's"));
}

Result<Store> Store::open(std::string state_dir) {
  if (state_dir.empty() || state_dir[0] != '/')
    return fail(invalid("state dir '" + state_dir + "' is not an absolute path"));
  while (state_dir.size() > 1 && state_dir.back() == '/') state_dir.pop_back();
  // A user's default store may lie below directories not made yet
  // (~/.local/share): those first, the user's own.
  if (user_store())
    for (size_t slash = state_dir.find('/', 1); slash != std::string::npos;
         slash = state_dir.find('/', slash + 1))
      if (::mkdir(state_dir.substr(0, slash).c_str(), 0700) != 0 && errno != EEXIST &&
          errno != EACCES)
        return fail(sys_error("open store: mkdir " + state_dir.substr(0, slash)));
  for (const char* sub :
       {"", "/blobs", "/blobs/sha256", "/layers", "/layers/sha256", "/images", "/tmp", "/locks"})
    if (auto s = make_dir(state_dir + sub); !s) return fail(s.error().wrap("open store"));
  Store st;
  st.root_ = std::move(state_dir);
  return st;
}

Result<FileLock> Store::lock(bool exclusive) const {
  return FileLock::acquire(root_ + "/locks/store.lock", exclusive);
}

Result<std::string> Store::stage_name(const std::string& what) const {
  static std::atomic<uint64_t> seq{0};
  struct timespec ts;
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return root_ + "/tmp/" + what + "-" + std::to_string(::getpid()) + "-" +
         std::to_string(ts.tv_nsec) + "-" + std::to_string(seq++);
}

bool Store::has_blob(const Digest& d) const {
  return ::access((root_ + "/blobs/sha256/" + d.hex).c_str(), F_OK) == 0;
}

Result<std::string> Store::read_blob(const Digest& d, size_t max_size, bool verify) const {
  const std::string p = root_ + "/blobs/sha256/" + d.hex;
  auto fd = open_fd(p, O_RDONLY | O_NOFOLLOW);
  if (!fd) return fail(fd.error().wrap("blob " + d.str()));
  struct stat st;
  if (::fstat(fd->get(), &st) != 0) return fail(sys_error("stat " + p));
  if (static_cast<uint64_t>(st.st_size) > max_size)
    return fail(make_error(ErrorKind::Limit, "blob " + d.str() + " is too large"));
  auto text = read_fd(fd->get());
  if (!text) return fail(text.error().wrap("blob " + d.str()));
  if (verify && sha256_of(*text) != d)
    return fail(invalid("blob " + d.str() + " is corrupt in the store"));
  return text;
}

Status Store::put_blob(std::string_view data, const Digest& d) const {
  if (sha256_of(data) != d) return fail(invalid("blob does not match its digest " + d.str()));
  if (has_blob(d)) return {};
  auto tmp = stage_name("blob");
  return write_atomic(*tmp, root_ + "/blobs/sha256/" + d.hex, data);
}

std::string Store::layer_dir(const Digest& chain) const {
  return root_ + "/layers/sha256/" + chain.hex;
}

bool Store::has_layer(const Digest& chain) const {
  return ::access((layer_dir(chain) + "/layer.json").c_str(), F_OK) == 0;
}

Result<bool> Store::ensure_layer(const Digest& chain,
                                 const std::function<Result<std::string>(int)>& make) const {
  if (has_layer(chain)) return false;
  auto lock = FileLock::acquire(root_ + "/locks/layer-" + chain.hex + ".lock", true);
  if (!lock) return fail(lock.error());
  if (has_layer(chain)) return false;  // made by another pull while we waited
  auto stage = stage_name("layer");
  if (auto s = make_dir(*stage); !s) return fail(s.error());
  const std::string rootfs = *stage + "/rootfs";
  auto cleanup = [&] { (void)remove_tree(*stage); };
  if (::mkdir(rootfs.c_str(), 0755) != 0) {
    cleanup();
    return fail(sys_error("mkdir " + rootfs));
  }
  auto fd = open_fd(rootfs, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  if (!fd) {
    cleanup();
    return fail(fd.error());
  }
  auto meta = make(fd->get());
  fd->reset();
  if (!meta) {
    cleanup();
    return fail(meta.error());
  }
  if (auto s = write_atomic(*stage + "/layer.json.tmp", *stage + "/layer.json", *meta); !s) {
    cleanup();
    return fail(s.error());
  }
  // A leftover without layer.json (a crash between rename and nothing: not
  // possible, but a manual copy may leave one) is replaced.
  (void)remove_tree(layer_dir(chain));
  if (::rename(stage->c_str(), layer_dir(chain).c_str()) != 0) {
    int err = errno;
    cleanup();
    return fail(sys_error("publish layer " + chain.str(), err));
  }
  return true;
}

Status Store::put_image(const ImageRecord& r, std::string_view action) const {
  auto tmp = stage_name("image");
  if (!tmp) return fail(tmp.error());
  if (auto s = write_atomic(*tmp, root_ + "/images/" + record_name(r.reference) + ".json",
                            record_json(r).dump(2));
      !s)
    return s;
  // The image is stored either way: a log that cannot be written costs
  // subscribers an event, not the caller its pull.
  (void)record_store_event(root_, {std::string(action), r.reference, r.manifest.str(), {}});
  return {};
}

Result<ImageRecord> Store::get_image(const std::string& reference) const {
  const std::string p = root_ + "/images/" + record_name(reference) + ".json";
  auto text = read_file(p);
  if (!text) {
    if (text.error().code == ENOENT)
      return fail(make_error(ErrorKind::NotFound, "image " + reference + " is not in the store (" +
                                                      root_ + "): pull or load it first"));
    return fail(text.error());
  }
  return record_from(*text, p);
}

Result<std::vector<ImageRecord>> Store::list_images() const {
  std::vector<ImageRecord> out;
  for (const auto& n : list_dir(root_ + "/images")) {
    if (!n.ends_with(".json")) continue;
    auto text = read_file(root_ + "/images/" + n);
    if (!text) continue;
    auto r = record_from(*text, n);
    if (r) out.push_back(std::move(*r));
  }
  std::sort(out.begin(), out.end(),
            [](const ImageRecord& a, const ImageRecord& b) { return a.reference < b.reference; });
  return out;
}

Status Store::remove_image(const std::string& reference) const {
  const std::string p = root_ + "/images/" + record_name(reference) + ".json";
  auto was = get_image(reference);
  if (::unlink(p.c_str()) != 0) {
    if (errno == ENOENT)
      return fail(make_error(ErrorKind::NotFound, "image " + reference + " is not in the store"));
    return fail(sys_error("remove " + p));
  }
  (void)record_store_event(root_,
                           {"removed", reference, was ? was->manifest.str() : std::string(), {}});
  return {};
}

Result<Store::PruneResult> Store::prune() const {
  auto images = list_images();
  if (!images) return fail(images.error());
  std::set<std::string> blobs, layers;
  for (const auto& r : *images) {
    blobs.insert(r.manifest.hex);
    blobs.insert(r.config.hex);
    for (const auto& c : r.chain_ids) layers.insert(c.hex);
  }
  PruneResult res;
  auto usage = [](const std::string& p) -> uint64_t {
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0) return 0;
    uint64_t n = static_cast<uint64_t>(st.st_blocks) * 512;
    if (S_ISDIR(st.st_mode)) {
      auto fd = open_fd(p, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
      if (fd) n += tree_usage(fd->get());
    }
    return n;
  };
  for (const auto& n : list_dir(root_ + "/blobs/sha256")) {
    if (blobs.count(n)) continue;
    const std::string p = root_ + "/blobs/sha256/" + n;
    res.bytes += usage(p);
    if (auto s = remove_tree(p); !s) return fail(s.error());
    ++res.blobs;
  }
  for (const auto& n : list_dir(root_ + "/layers/sha256")) {
    if (layers.count(n)) continue;
    const std::string p = root_ + "/layers/sha256/" + n;
    res.bytes += usage(p);
    if (auto s = remove_tree(p); !s) return fail(s.error());
    ++res.layers;
  }
  // Merged snapshots (the no-overlayfs fallback) are keyed by top chain id.
  for (const auto& n : list_dir(root_ + "/snapshots")) {
    bool used = false;
    for (const auto& r : *images) used |= !r.chain_ids.empty() && r.chain_ids.back().hex == n;
    if (used) continue;
    const std::string p = root_ + "/snapshots/" + n;
    res.bytes += usage(p);
    if (auto s = remove_tree(p); !s) return fail(s.error());
    ++res.layers;
  }
  for (const auto& n : list_dir(root_ + "/tmp")) {
    const std::string p = root_ + "/tmp/" + n;
    res.bytes += usage(p);
    if (auto s = remove_tree(p); !s) return fail(s.error());
    ++res.staging;
  }
  return res;
}

Result<uint64_t> Store::disk_usage() const {
  auto fd = open_fd(root_, O_RDONLY | O_DIRECTORY);
  if (!fd) return fail(fd.error());
  return tree_usage(fd->get());
}

}  // namespace cloister::oci

#include "oci/load.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <map>
#include <nlohmann/json.hpp>

#include "isolate/fd.h"
#include "oci/reference.h"
#include "oci/tar.h"

namespace cloister::oci {
namespace {

class LayoutSource : public BlobSource {
 public:
  explicit LayoutSource(std::string dir) : dir_(std::move(dir)) {}

  Result<std::string> fetch(const Descriptor& d) override {
    if (d.size > kMaxConfigBytes) return fail(make_error(ErrorKind::Limit, "document too large"));
    auto fd = open_fd(path(d), O_RDONLY | O_NOFOLLOW);
    if (!fd) return fail(fd.error());
    std::string text;
    char buf[65536];
    for (;;) {
      ssize_t n = ::read(fd->get(), buf, sizeof buf);
      if (n < 0) return fail(sys_error("read " + path(d)));
      if (n == 0) break;
      text.append(buf, static_cast<size_t>(n));
      if (text.size() > d.size) break;
    }
    if (text.size() != d.size)
      return fail(invalid("blob " + d.digest.str() + ": size " + std::to_string(text.size()) +
                          ", expected " + std::to_string(d.size)));
    if (sha256_of(text) != d.digest)
      return fail(invalid("blob " + d.digest.str() + ": digest mismatch"));
    return text;
  }

  Result<std::unique_ptr<ByteStream>> open_blob(const Descriptor& d) override {
    auto fd = open_fd(path(d), O_RDONLY | O_NOFOLLOW);
    if (!fd) return fail(fd.error());
    struct Owned : FdStream {
      Fd fd;
      explicit Owned(Fd f) : FdStream(f.get()), fd(std::move(f)) {}
    };
    return std::unique_ptr<ByteStream>(std::make_unique<Owned>(std::move(*fd)));
  }

 private:
  std::string path(const Descriptor& d) const { return dir_ + "/blobs/sha256/" + d.digest.hex; }
  std::string dir_;
};

// What an archive held besides an OCI layout: the files of a `docker save`
// (docker-archive) archive, by their names in it, staged as docker/N.
struct DockerFiles {
  std::map<std::string, std::string> staged;  // "abc/layer.tar" -> dir + "/docker/3"
  std::map<std::string, std::string> links;   // "def/layer.tar" -> "abc/layer.tar"
};

// A docker-archive member we read: manifest.json, an image config
// (NAME.json) or a layer (DIR/layer.tar, or any DIR/NAME a manifest may
// name), one or two plain components.
bool docker_member(const std::string& name) {
  if (name.empty() || name.size() > 255 || name.front() == '/') return false;
  size_t parts = 0;
  for (size_t start = 0;;) {
    const size_t slash = name.find('/', start);
    const std::string part = name.substr(start, slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    ++parts;
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return parts <= 2;
}

// "abc/../def/layer.tar" as the archive's own path, or "" when it leaves it.
std::string resolve_member(const std::string& from, const std::string& link) {
  std::vector<std::string> parts;
  const size_t slash_at = from.rfind('/');
  const std::string from_dir = slash_at == std::string::npos ? "" : from.substr(0, slash_at + 1);
  const std::string base = link.starts_with("/") ? link.substr(1) : from_dir + link;
  for (size_t start = 0;;) {
    const size_t slash = base.find('/', start);
    const std::string part = base.substr(start, slash - start);
    if (part == "..") {
      if (parts.empty()) return "";
      parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : "/") + p;
  return out;
}

// Extracts from an archive into dir (which exists) the files of an OCI
// layout (oci-layout, index.json, blobs/sha256/<hex>) and those of a
// docker-archive; everything else is ignored.
Status extract_archive(const std::string& archive, const std::string& dir, DockerFiles& docker) {
  auto fd = open_fd(archive, O_RDONLY);
  if (!fd) return fail(fd.error());
  FdStream raw(fd->get());
  // OCI archives are plain tars; a compressed one is accepted too.
  char head[4] = {};
  ssize_t got = ::pread(fd->get(), head, sizeof head, 0);
  auto comp = sniff_compression(std::string_view(head, got > 0 ? static_cast<size_t>(got) : 0));
  auto in = decompress(raw, comp);
  TarReader tar(*in);
  for (const char* sub : {"/blobs", "/blobs/sha256", "/docker"})
    if (::mkdir((dir + sub).c_str(), 0700) != 0) return fail(sys_error("mkdir in " + dir));
  TarEntry e;
  char buf[65536];
  for (;;) {
    auto more = tar.next(e);
    if (!more) return fail(more.error().wrap(archive));
    if (!*more) break;
    std::string name = e.path;
    while (name.starts_with("./")) name.erase(0, 2);
    if (e.type == '2' || e.type == '1') {
      // docker save links a layer it holds twice to the first copy.
      if (docker_member(name)) {
        const std::string to =
            e.type == '1' ? resolve_member("", e.linkname) : resolve_member(name, e.linkname);
        if (!to.empty()) docker.links[name] = to;
      }
      continue;
    }
    if (e.type != '0' && e.type != '7') continue;
    std::string out;
    if (name == "index.json" || name == "oci-layout") {
      out = dir + "/" + name;
    } else if (name.starts_with("blobs/sha256/")) {
      auto d = parse_digest("sha256:" + name.substr(13));
      if (!d) continue;  // not a blob name we know: ignore it
      out = dir + "/blobs/sha256/" + d->hex;
    } else if (docker_member(name) && !docker.staged.count(name)) {
      out = dir + "/docker/" + std::to_string(docker.staged.size());
      docker.staged[name] = out;
    } else {
      continue;
    }
    auto of = open_fd(out, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
    if (!of) return fail(of.error().wrap(archive + ": " + name));
    for (;;) {
      auto n = tar.read_data(buf, sizeof buf);
      if (!n) return fail(n.error().wrap(archive));
      if (*n == 0) break;
      if (auto s = write_all(of->get(), std::string_view(buf, *n)); !s) return s;
    }
  }
  return {};
}

// A staged file's digest and size, moved to blobs/sha256/<hex> (a copy
// already there is the same content).
Result<Descriptor> stage_blob(const std::string& dir, const std::string& file,
                              std::string media_type) {
  auto fd = open_fd(file, O_RDONLY | O_NOFOLLOW);
  if (!fd) return fail(fd.error());
  Sha256 h;
  uint64_t size = 0;
  char buf[65536];
  std::string head;
  for (;;) {
    ssize_t n = ::read(fd->get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return fail(sys_error("read " + file));
    if (n == 0) break;
    if (head.size() < 8) head.append(buf, std::min<size_t>(static_cast<size_t>(n), 8));
    h.update(buf, static_cast<size_t>(n));
    size += static_cast<uint64_t>(n);
  }
  Descriptor d;
  d.digest = h.finish();
  d.size = size;
  if (media_type.empty()) {
    // Layers: plain tars from docker save; compressed ones from others.
    const Compression c = sniff_compression(head);
    media_type = c == Compression::Gzip   ? "application/vnd.oci.image.layer.v1.tar+gzip"
                 : c == Compression::Zstd ? "application/vnd.oci.image.layer.v1.tar+zstd"
                                          : "application/vnd.oci.image.layer.v1.tar";
  }
  d.media_type = std::move(media_type);
  const std::string blob = dir + "/blobs/sha256/" + d.digest.hex;
  if (::access(blob.c_str(), F_OK) != 0 && ::rename(file.c_str(), blob.c_str()) != 0)
    return fail(sys_error("stage " + file));
  return d;
}

// A docker-archive's manifest.json as the OCI layout beside it: a manifest
// blob per image over its config and layers, and an index naming each by
// its first RepoTag.
Status docker_to_layout(const std::string& dir, const DockerFiles& docker,
                        const std::string& archive) {
  auto staged = [&](std::string name) -> Result<std::string> {
    for (int hops = 0; hops < 8 && docker.links.count(name); ++hops) name = docker.links.at(name);
    auto it = docker.staged.find(name);
    if (it == docker.staged.end())
      return fail(invalid(archive + ": manifest.json names " + name + ", which it does not hold"));
    return it->second;
  };
  auto mpath = staged("manifest.json");
  if (!mpath)
    return fail(invalid(archive + ": neither an OCI layout nor a docker-archive "
                                  "(no index.json and oci-layout, no manifest.json)"));
  struct stat st {};
  if (::stat(mpath->c_str(), &st) != 0) return fail(sys_error(*mpath));
  if (static_cast<uint64_t>(st.st_size) > kMaxManifestBytes)
    return fail(invalid(archive + ": manifest.json is larger than " +
                        std::to_string(kMaxManifestBytes >> 20) + " MiB"));
  auto text = read_file(*mpath);
  if (!text) return fail(text.error());
  auto m = nlohmann::json::parse(*text, nullptr, false);
  if (!m.is_array() || m.empty())
    return fail(invalid(archive + ": manifest.json is not a list of images"));
  nlohmann::json index = {{"schemaVersion", 2}, {"manifests", nlohmann::json::array()}};
  std::map<std::string, Descriptor> done;  // a file staged once, named twice
  auto blob = [&](const std::string& name, const std::string& type) -> Result<Descriptor> {
    if (auto it = done.find(name); it != done.end()) return it->second;
    auto file = staged(name);
    if (!file) return fail(file.error());
    std::string real = name;
    for (int hops = 0; hops < 8 && docker.links.count(real); ++hops) real = docker.links.at(real);
    if (auto it = done.find(real); it != done.end()) return done[name] = it->second;
    auto d = stage_blob(dir, *file, type);
    if (!d) return fail(d.error().wrap(archive + ": " + name));
    done[real] = *d;
    return done[name] = *d;
  };
  for (const auto& img : m) {
    if (!img.is_object() || !img.contains("Config") || !img["Config"].is_string() ||
        !img.contains("Layers") || !img["Layers"].is_array())
      return fail(invalid(archive + ": manifest.json: an image needs Config and Layers"));
    auto config =
        blob(img["Config"].get<std::string>(), "application/vnd.oci.image.config.v1+json");
    if (!config) return fail(config.error());
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : img["Layers"]) {
      if (!l.is_string()) return fail(invalid(archive + ": manifest.json: a layer is not a name"));
      auto d = blob(l.get<std::string>(), "");
      if (!d) return fail(d.error());
      layers.push_back(
          {{"mediaType", d->media_type}, {"digest", d->digest.str()}, {"size", d->size}});
    }
    const std::string manifest = nlohmann::json{
        {"schemaVersion", 2},
        {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
        {"config",
         {{"mediaType", config->media_type},
          {"digest", config->digest.str()},
          {"size", config->size}}},
        {"layers", layers}}.dump();
    const Digest md = sha256_of(manifest);
    auto mf =
        open_fd(dir + "/blobs/sha256/" + md.hex, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0600);
    if (!mf) return fail(mf.error());
    if (auto s = write_all(mf->get(), manifest); !s) return s;
    nlohmann::json entry = {{"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                            {"digest", md.str()},
                            {"size", manifest.size()}};
    if (img.contains("RepoTags") && img["RepoTags"].is_array() && !img["RepoTags"].empty() &&
        img["RepoTags"][0].is_string())
      entry["annotations"] = {{"org.opencontainers.image.ref.name", img["RepoTags"][0]}};
    index["manifests"].push_back(entry);
  }
  for (const auto& [file, body] :
       {std::pair{dir + "/index.json", index.dump()},
        std::pair{dir + "/oci-layout", std::string(R"({"imageLayoutVersion":"1.0.0"})")}}) {
    auto of = open_fd(file, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
    if (!of) return fail(of.error());
    if (auto s = write_all(of->get(), body); !s) return s;
  }
  return {};
}

Result<std::vector<ImageRecord>> load_layout(const Store& store, const std::string& dir,
                                             const std::string& name, const ImportOptions& opt) {
  auto text = read_file(dir + "/index.json");
  if (!text) return fail(text.error().wrap("load " + dir + ": index.json"));
  auto layout = read_file(dir + "/oci-layout");
  if (!layout) return fail(layout.error().wrap("load " + dir + ": oci-layout"));
  auto lj = nlohmann::json::parse(*layout, nullptr, false);
  if (lj.is_discarded() || !lj.is_object() || lj.value("imageLayoutVersion", "") != "1.0.0")
    return fail(invalid("load " + dir + ": oci-layout is not imageLayoutVersion 1.0.0"));
  auto index = parse_index(*text);
  if (!index) return fail(index.error().wrap("load " + dir + ": index.json"));
  if (index->manifests.empty()) return fail(invalid("load " + dir + ": index.json is empty"));
  if (!name.empty() && index->manifests.size() > 1)
    return fail(invalid("load " + dir + ": a name is only allowed for a layout of one image"));
  LayoutSource source(dir);
  std::vector<ImageRecord> out;
  for (const auto& d : index->manifests) {
    std::string refname = name;
    if (refname.empty()) {
      auto a = d.annotations.find("org.opencontainers.image.ref.name");
      if (a == d.annotations.end())
        return fail(invalid("load " + dir + ": manifest " + d.digest.str() +
                            " has no org.opencontainers.image.ref.name: give a name"));
      refname = a->second;
    }
    auto ref = parse_reference(refname);
    if (!ref) return fail(ref.error().wrap("load " + dir));
    ImportOptions loading = opt;
    loading.event = "loaded";
    auto rec = import_image(store, source, d, ref->str(), loading);
    if (!rec) return fail(rec.error().wrap("load " + dir + " (" + ref->str() + ")"));
    out.push_back(std::move(*rec));
  }
  return out;
}

}  // namespace

Result<std::vector<ImageRecord>> load_images(const Store& store, const std::string& path,
                                             const std::string& name, const ImportOptions& opt) {
  struct stat st {};
  const bool from_stdin = path == "-";
  if (!from_stdin && ::stat(path.c_str(), &st) != 0) return fail(sys_error("load " + path));
  if (S_ISDIR(st.st_mode)) return load_layout(store, path, name, opt);
  // An archive: stage its layout in the store, load it, remove the staging.
  const std::string stage = store.root() + "/tmp/load-" + std::to_string(::getpid()) + "-" +
                            std::to_string(from_stdin ? 0 : st.st_ino);
  if (::mkdir(stage.c_str(), 0700) != 0) return fail(sys_error("mkdir " + stage));
  auto result = [&]() -> Result<std::vector<ImageRecord>> {
    std::string archive = path;
    if (from_stdin) {
      // Read once into the staging area: the archive is read as a file.
      archive = stage + "/stdin";
      auto of = open_fd(archive, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
      if (!of) return fail(of.error());
      char buf[65536];
      for (;;) {
        ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return fail(sys_error("load -: read stdin"));
        if (n == 0) break;
        if (auto s = write_all(of->get(), std::string_view(buf, static_cast<size_t>(n))); !s)
          return fail(s.error());
      }
    }
    const std::string where = stage + "/x";
    if (::mkdir(where.c_str(), 0700) != 0) return fail(sys_error("mkdir " + where));
    DockerFiles docker;
    if (auto s = extract_archive(archive, where, docker); !s) return fail(s.error().wrap("load"));
    if (::access((where + "/index.json").c_str(), F_OK) != 0)
      if (auto s = docker_to_layout(where, docker, from_stdin ? "stdin" : path); !s)
        return fail(s.error().wrap("load"));
    return load_layout(store, where, name, opt);
  }();
  (void)remove_tree(stage);
  return result;
}

}  // namespace cloister::oci

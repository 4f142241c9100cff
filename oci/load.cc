#include "oci/load.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

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

// Extracts the layout's files from an archive into dir (which exists).
Status extract_layout(const std::string& archive, const std::string& dir) {
  auto fd = open_fd(archive, O_RDONLY);
  if (!fd) return fail(fd.error());
  FdStream raw(fd->get());
  // OCI archives are plain tars; a compressed one is accepted too.
  char head[4] = {};
  ssize_t got = ::pread(fd->get(), head, sizeof head, 0);
  auto comp = sniff_compression(std::string_view(head, got > 0 ? static_cast<size_t>(got) : 0));
  auto in = decompress(raw, comp);
  TarReader tar(*in);
  if (::mkdir((dir + "/blobs").c_str(), 0700) != 0 ||
      ::mkdir((dir + "/blobs/sha256").c_str(), 0700) != 0)
    return fail(sys_error("mkdir in " + dir));
  TarEntry e;
  char buf[65536];
  for (;;) {
    auto more = tar.next(e);
    if (!more) return fail(more.error().wrap(archive));
    if (!*more) break;
    if (e.type != '0' && e.type != '7') continue;
    std::string name = e.path;
    while (name.starts_with("./")) name.erase(0, 2);
    std::string out;
    if (name == "index.json" || name == "oci-layout") {
      out = dir + "/" + name;
    } else if (name.starts_with("blobs/sha256/")) {
      auto d = parse_digest("sha256:" + name.substr(13));
      if (!d) continue;  // not a blob name we know: ignore it
      out = dir + "/blobs/sha256/" + d->hex;
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
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return fail(sys_error("load " + path));
  if (S_ISDIR(st.st_mode)) return load_layout(store, path, name, opt);
  // An archive: stage its layout in the store, load it, remove the staging.
  const std::string stage =
      store.root() + "/tmp/load-" + std::to_string(::getpid()) + "-" + std::to_string(st.st_ino);
  if (::mkdir(stage.c_str(), 0700) != 0) return fail(sys_error("mkdir " + stage));
  auto result = [&]() -> Result<std::vector<ImageRecord>> {
    if (auto s = extract_layout(path, stage); !s) return fail(s.error().wrap("load"));
    return load_layout(store, stage, name, opt);
  }();
  (void)remove_tree(stage);
  return result;
}

}  // namespace cloister::oci

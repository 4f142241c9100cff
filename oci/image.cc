#include "oci/image.h"

#include <sys/utsname.h>

#include <atomic>
#include <ctime>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "oci/layer.h"
#include "oci/reference.h"

namespace cloister::oci {
namespace {

using json = nlohmann::json;

Result<json> parse_json(std::string_view text, const char* what) {
  auto j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object())
    return fail(invalid(std::string(what) + ": not a JSON object"));
  return j;
}

Result<std::vector<std::string>> string_list(const json& j, const char* key) {
  std::vector<std::string> out;
  if (!j.contains(key) || j[key].is_null()) return out;
  if (!j[key].is_array()) return fail(invalid(std::string(key) + ": not an array"));
  for (const auto& v : j[key]) {
    if (!v.is_string()) return fail(invalid(std::string(key) + ": not an array of strings"));
    out.push_back(v.get<std::string>());
  }
  return out;
}

Result<Descriptor> descriptor(const json& j, const char* what) {
  if (!j.is_object()) return fail(invalid(std::string(what) + ": not an object"));
  Descriptor d;
  if (!j.contains("digest") || !j["digest"].is_string())
    return fail(invalid(std::string(what) + ": no digest"));
  auto dig = parse_digest(j["digest"].get<std::string>());
  if (!dig) return fail(dig.error().wrap(what));
  d.digest = *dig;
  if (!j.contains("size") || !j["size"].is_number_unsigned())
    return fail(invalid(std::string(what) + ": no size"));
  d.size = j["size"].get<uint64_t>();
  if (j.contains("mediaType") && j["mediaType"].is_string())
    d.media_type = j["mediaType"].get<std::string>();
  if (j.contains("platform") && j["platform"].is_object()) {
    const json& p = j["platform"];
    d.platform = Platform{p.value("os", ""), p.value("architecture", ""), p.value("variant", "")};
  }
  if (j.contains("annotations") && j["annotations"].is_object())
    for (auto& [k, v] : j["annotations"].items())
      if (v.is_string()) d.annotations[k] = v.get<std::string>();
  return d;
}

}  // namespace

Platform host_platform() {
  struct utsname u;
  ::uname(&u);
  std::string m = u.machine;
  Platform p{"linux", m, ""};
  if (m == "x86_64")
    p.architecture = "amd64";
  else if (m == "aarch64")
    p.architecture = "arm64", p.variant = "v8";
  else if (m == "i686" || m == "i386")
    p.architecture = "386";
  else if (m.starts_with("armv7"))
    p.architecture = "arm", p.variant = "v7";
  return p;
}

bool is_index_type(std::string_view t) {
  return t == media::kOciIndex || t == media::kDockerList;
}
bool is_manifest_type(std::string_view t) {
  return t == media::kOciManifest || t == media::kDockerManifest;
}

Result<Compression> layer_compression(std::string_view t) {
  constexpr std::string_view kOci = "application/vnd.oci.image.layer.";
  if (t == "application/vnd.docker.image.rootfs.diff.tar.gzip" ||
      t == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")
    return Compression::Gzip;
  if (t.starts_with(kOci)) {
    auto rest = t.substr(kOci.size());
    if (rest.starts_with("nondistributable.")) rest.remove_prefix(17);
    if (rest == "v1.tar") return Compression::None;
    if (rest == "v1.tar+gzip") return Compression::Gzip;
    if (rest == "v1.tar+zstd") return Compression::Zstd;
  }
  return fail(invalid("unsupported layer media type '" + std::string(t) + "'"));
}

Result<std::string> document_media_type(std::string_view text) {
  auto j = parse_json(text, "manifest");
  if (!j) return fail(j.error());
  if (j->contains("mediaType") && (*j)["mediaType"].is_string())
    return (*j)["mediaType"].get<std::string>();
  // OCI allows the field to be absent: the shape decides.
  if (j->contains("manifests")) return std::string(media::kOciIndex);
  if (j->contains("layers")) return std::string(media::kOciManifest);
  return std::string();
}

Result<Index> parse_index(std::string_view text) {
  auto j = parse_json(text, "index");
  if (!j) return fail(j.error());
  if (!j->contains("manifests") || !(*j)["manifests"].is_array())
    return fail(invalid("index: no manifests array"));
  Index idx;
  for (const auto& m : (*j)["manifests"]) {
    auto d = descriptor(m, "index entry");
    if (!d) return fail(d.error());
    idx.manifests.push_back(std::move(*d));
  }
  return idx;
}

Result<Manifest> parse_manifest(std::string_view text) {
  auto j = parse_json(text, "manifest");
  if (!j) return fail(j.error());
  if (j->value("schemaVersion", 0) != 2) return fail(invalid("manifest: schemaVersion is not 2"));
  Manifest m;
  auto c = descriptor(j->value("config", json()), "manifest config");
  if (!c) return fail(c.error());
  m.config = *c;
  if (!j->contains("layers") || !(*j)["layers"].is_array())
    return fail(invalid("manifest: no layers array"));
  for (const auto& l : (*j)["layers"]) {
    auto d = descriptor(l, "manifest layer");
    if (!d) return fail(d.error());
    m.layers.push_back(std::move(*d));
  }
  if (m.layers.size() > 500) return fail(invalid("manifest: more than 500 layers"));
  return m;
}

Result<ImageConfig> parse_image_config(std::string_view text) {
  auto j = parse_json(text, "image config");
  if (!j) return fail(j.error());
  ImageConfig c;
  c.os = j->value("os", "");
  c.architecture = j->value("architecture", "");
  c.variant = j->value("variant", "");
  if (j->contains("config") && (*j)["config"].is_object()) {
    const json& cfg = (*j)["config"];
    auto env = string_list(cfg, "Env");
    auto ep = string_list(cfg, "Entrypoint");
    auto cmd = string_list(cfg, "Cmd");
    for (auto* r : {&env, &ep, &cmd})
      if (!*r) return fail(r->error().wrap("image config"));
    c.env = std::move(*env);
    c.entrypoint = std::move(*ep);
    c.cmd = std::move(*cmd);
    if (cfg.contains("WorkingDir") && cfg["WorkingDir"].is_string())
      c.working_dir = cfg["WorkingDir"].get<std::string>();
    if (cfg.contains("User") && cfg["User"].is_string()) c.user = cfg["User"].get<std::string>();
  }
  if (!j->contains("rootfs") || !(*j)["rootfs"].is_object())
    return fail(invalid("image config: no rootfs"));
  auto ids = string_list((*j)["rootfs"], "diff_ids");
  if (!ids) return fail(ids.error().wrap("image config rootfs"));
  for (const auto& s : *ids) {
    auto d = parse_digest(s);
    if (!d) return fail(d.error().wrap("image config diff_ids"));
    c.diff_ids.push_back(*d);
  }
  return c;
}

Result<Descriptor> select_platform(const Index& index, const Platform& want) {
  std::string offered;
  const Descriptor* best = nullptr;
  for (const auto& d : index.manifests) {
    auto ref_type = d.annotations.find("vnd.docker.reference.type");
    if (ref_type != d.annotations.end() && ref_type->second == "attestation-manifest") continue;
    if (!d.platform) continue;
    const Platform& p = *d.platform;
    if (p.os == "unknown" && p.architecture == "unknown") continue;
    if (!offered.empty()) offered += ", ";
    offered += p.os + "/" + p.architecture + (p.variant.empty() ? "" : "/" + p.variant);
    if (p.os != want.os || p.architecture != want.architecture) continue;
    if (!want.variant.empty() && !p.variant.empty() && p.variant != want.variant) continue;
    // An exact variant beats an unspecified one.
    if (!best || (p.variant == want.variant && best->platform->variant != want.variant)) best = &d;
  }
  if (!best)
    return fail(make_error(ErrorKind::NotFound, "no manifest for " + want.os + "/" +
                                                    want.architecture + " in the index (offered: " +
                                                    (offered.empty() ? "none" : offered) + ")"));
  return *best;
}

Result<ImageRecord> import_image(const Store& store, BlobSource& source, const Descriptor& top,
                                 const std::string& reference, const ImportOptions& opt) {
  auto store_lock = store.lock(false);
  if (!store_lock) return fail(store_lock.error());

  // Index -> manifest, following nested indexes a few levels deep.
  Descriptor desc = top;
  std::string text;
  std::vector<std::pair<Digest, std::string>> documents;  // stored as blobs
  for (int depth = 0;; ++depth) {
    if (depth > 4) return fail(invalid("indexes nested more than 4 deep"));
    auto t = source.fetch(desc);
    if (!t) return fail(t.error().wrap("fetch " + desc.digest.str()));
    auto type = document_media_type(*t);
    if (!type) return fail(type.error());
    if (!desc.media_type.empty() && !type->empty() && *type != desc.media_type)
      return fail(invalid("document " + desc.digest.str() + " has mediaType " + *type +
                          " where its descriptor says " + desc.media_type));
    documents.emplace_back(desc.digest, *t);
    if (is_index_type(*type)) {
      auto idx = parse_index(*t);
      if (!idx) return fail(idx.error());
      auto pick = select_platform(*idx, opt.platform);
      if (!pick) return fail(pick.error());
      desc = *pick;
      continue;
    }
    if (!is_manifest_type(*type) && !type->empty())
      return fail(invalid("unsupported manifest media type '" + *type + "'"));
    text = std::move(*t);
    break;
  }
  const Digest manifest_digest = desc.digest;
  auto manifest = parse_manifest(text);
  if (!manifest) return fail(manifest.error());
  Descriptor cdesc = manifest->config;
  auto config_text = source.fetch(cdesc);
  if (!config_text) return fail(config_text.error().wrap("fetch config"));
  auto config = parse_image_config(*config_text);
  if (!config) return fail(config.error());
  if (config->diff_ids.size() != manifest->layers.size())
    return fail(invalid("image config lists " + std::to_string(config->diff_ids.size()) +
                        " diff_ids for " + std::to_string(manifest->layers.size()) + " layers"));
  for (const auto& l : manifest->layers)
    if (auto c = layer_compression(l.media_type); !c) return fail(c.error());

  ImageRecord rec;
  rec.reference = reference;
  rec.manifest = manifest_digest;
  rec.config = cdesc.digest;
  rec.diff_ids = config->diff_ids;
  rec.chain_ids = chain_ids(rec.diff_ids);
  for (const auto& l : manifest->layers) rec.size += l.size;

  // Layers are independent directories keyed by ChainID (known up front from
  // the config), so they are fetched and applied in parallel.
  const size_t n = manifest->layers.size();
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::optional<Error> first_error;
  auto worker = [&] {
    for (;;) {
      size_t i = next++;
      if (i >= n) return;
      {
        std::lock_guard g(mu);
        if (first_error) return;
      }
      const Descriptor& l = manifest->layers[i];
      auto made = store.ensure_layer(rec.chain_ids[i], [&](int fd) -> Result<std::string> {
        auto stream = source.open_blob(l);
        if (!stream) return fail(stream.error());
        ApplyOptions ao;
        ao.compression = *layer_compression(l.media_type);
        ao.expect_digest = l.digest;
        ao.expect_size = l.size;
        ao.expect_diff_id = rec.diff_ids[i];
        ao.max_uncompressed = opt.max_layer_bytes;
        ao.allow_devices = opt.allow_devices;
        if (opt.progress) ao.progress = [&, i](uint64_t done) { opt.progress(i, done, l.size); };
        auto r = apply_layer(**stream, fd, ao);
        if (!r) return fail(r.error());
        json meta{{"diff_id", r->diff_id.str()},
                  {"digest", r->digest.str()},
                  {"media_type", l.media_type},
                  {"size", r->compressed_size},
                  {"uncompressed_size", r->uncompressed_size},
                  {"entries", r->entries}};
        return meta.dump(2);
      });
      if (!made) {
        std::lock_guard g(mu);
        if (!first_error) first_error = made.error().wrap("layer " + l.digest.str());
        return;
      }
      if (opt.layer_done) opt.layer_done(i, l, !*made);
    }
  };
  const int threads = std::max(1, std::min<int>(opt.parallel, static_cast<int>(n)));
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  if (first_error) return fail(*first_error);

  for (const auto& [d, t] : documents)
    if (auto s = store.put_blob(t, d); !s) return fail(s.error());
  if (auto s = store.put_blob(*config_text, cdesc.digest); !s) return fail(s.error());
  rec.created = static_cast<int64_t>(::time(nullptr));
  if (auto s = store.put_image(rec, opt.event); !s) return fail(s.error());
  return rec;
}

Result<ResolvedImage> resolve_image(const Store& store, const std::string& reference) {
  auto ref = parse_reference(reference);
  if (!ref) return fail(ref.error());
  auto rec = store.get_image(ref->str());
  if (!rec) return fail(rec.error());
  auto text = store.read_blob(rec->config, kMaxConfigBytes, /*verify=*/false);
  if (!text) return fail(text.error().wrap("image " + rec->reference));
  auto cfg = parse_image_config(*text);
  if (!cfg) return fail(cfg.error().wrap("image " + rec->reference));
  ResolvedImage r;
  r.record = std::move(*rec);
  r.config = std::move(*cfg);
  for (const auto& c : r.record.chain_ids) {
    if (!store.has_layer(c))
      return fail(make_error(ErrorKind::NotFound, "image " + r.record.reference + ": layer " +
                                                      c.str() + " is missing (pull it again)"));
    r.layer_dirs.push_back(store.layer_rootfs(c));
  }
  return r;
}

}  // namespace cloister::oci

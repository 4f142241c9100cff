// OCI and Docker image documents (index, manifest, config), platform
// selection, and import: the one pipeline that turns a manifest and a source
// of blobs into layers and an image record in the store. `cloister load`
// (oci/load.h) and the registry client feed it different BlobSources.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "isolate/error.h"
#include "oci/digest.h"
#include "oci/store.h"
#include "oci/stream.h"

namespace cloister::oci {

namespace media {
inline constexpr const char* kOciIndex = "application/vnd.oci.image.index.v1+json";
inline constexpr const char* kOciManifest = "application/vnd.oci.image.manifest.v1+json";
inline constexpr const char* kOciConfig = "application/vnd.oci.image.config.v1+json";
inline constexpr const char* kDockerList =
    "application/vnd.docker.distribution.manifest.list.v2+json";
inline constexpr const char* kDockerManifest =
    "application/vnd.docker.distribution.manifest.v2+json";
inline constexpr const char* kDockerConfig = "application/vnd.docker.container.image.v1+json";
}  // namespace media

inline constexpr size_t kMaxManifestBytes = 4 << 20;
inline constexpr size_t kMaxConfigBytes = 8 << 20;

struct Platform {
  std::string os, architecture, variant;
};
// linux/<this machine's architecture in GOARCH spelling>
Platform host_platform();

struct Descriptor {
  std::string media_type;
  Digest digest;
  uint64_t size = 0;
  std::optional<Platform> platform;
  std::map<std::string, std::string> annotations;
};

bool is_index_type(std::string_view media_type);
bool is_manifest_type(std::string_view media_type);
// The compression a layer media type says; Invalid for unknown types.
Result<Compression> layer_compression(std::string_view media_type);

struct Index {
  std::vector<Descriptor> manifests;
};
struct Manifest {
  Descriptor config;
  std::vector<Descriptor> layers;
};
struct ImageConfig {
  std::vector<std::string> env, entrypoint, cmd;
  std::string working_dir, user;
  std::string os, architecture, variant;
  std::vector<Digest> diff_ids;
};

// The mediaType field of a manifest or index ("" when absent).
Result<std::string> document_media_type(std::string_view text);
Result<Index> parse_index(std::string_view text);
Result<Manifest> parse_manifest(std::string_view text);
Result<ImageConfig> parse_image_config(std::string_view text);
// The platform's manifest: exact os/architecture, the variant when given;
// attestation manifests (vnd.docker.reference.type=attestation-manifest,
// unknown/unknown) are skipped. NotFound lists what the index offers.
Result<Descriptor> select_platform(const Index& index, const Platform& want);

// Where import gets blobs from.
class BlobSource {
 public:
  virtual ~BlobSource() = default;
  // A small document (manifest, index, config): verified against d's digest
  // and size before it is returned. `media_type` is what the caller expects,
  // or "" for a manifest reference whose type is not yet known; sources that
  // learn the type (HTTP Content-Type) must check it matches the document.
  virtual Result<std::string> fetch(const Descriptor& d) = 0;
  // A layer blob as a stream; the caller verifies digest and size.
  virtual Result<std::unique_ptr<ByteStream>> open_blob(const Descriptor& d) = 0;
};

struct ImportOptions {
  Platform platform = host_platform();
  int parallel = 3;                        // layers fetched and applied at once
  uint64_t max_layer_bytes = 16ull << 30;  // uncompressed, per layer
  bool allow_devices = false;
  // (layer index, compressed bytes so far, layer size); called from worker threads.
  std::function<void(size_t, uint64_t, uint64_t)> progress;
  // Called once per layer with whether it was already present.
  std::function<void(size_t, const Descriptor&, bool cached)> layer_done;
  std::string event = "pulled";  // the store's event for it (oci/events.h): "loaded" by load
};

// Imports the image whose top document (index or manifest) is `top`, and
// records it under `reference`.
Result<ImageRecord> import_image(const Store& store, BlobSource& source, const Descriptor& top,
                                 const std::string& reference, const ImportOptions& options);

// An image ready to run: its layer directories and its config.
struct ResolvedImage {
  ImageRecord record;
  ImageConfig config;
  std::vector<std::string> layer_dirs;  // bottom to top
};
Result<ResolvedImage> resolve_image(const Store& store, const std::string& reference);

}  // namespace cloister::oci

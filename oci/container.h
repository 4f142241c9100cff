// What the container executor needs from an image: its layer directories
// (for SpawnSpec::image_root), the defaults of its config, and its users.
#pragma once

#include <string>
#include <vector>

#include "isolate/error.h"
#include "isolate/spec.h"
#include "oci/image.h"
#include "oci/registry.h"

namespace cloister::oci {

struct ContainerImage {
  std::string reference;
  std::string top_chain;                // hex of the top layer's ChainID
  std::vector<std::string> layer_dirs;  // bottom to top
  ImageConfig config;
};

// Opens the store at state_dir ("" = kDefaultStateDir) and resolves the
// image; one missing from the store is pulled first (with `registry`) when
// `pull` is set.
Result<ContainerImage> open_container_image(const std::string& state_dir,
                                            const std::string& reference, bool pull = false,
                                            const RegistryOptions& registry = {});

// Whether the kernel offers overlayfs (CLOISTER_NO_OVERLAY=1 forces the
// fallback, for tests).
bool overlay_available();

// The copying fallback for hosts without overlayfs: the layers merged into
// state_dir/snapshots/<top chain id>/rootfs once (whiteouts and opaque
// directories applied, files hardlinked from the layers where possible,
// copied otherwise), published with one rename under a lock. The container
// then gets it read-only; it needs every mount point to exist in the image.
Result<std::string> merged_rootfs(const std::string& state_dir, const ContainerImage& image);

// "uid[:gid]" or "name[:group]" resolved against the image's own
// /etc/passwd and /etc/group (the top-most layer that has them); "" = 0:0.
Result<Identity> image_user(const std::vector<std::string>& layer_dirs, const std::string& user);

// Reads a small file of the merged image (top-most layer wins, whiteouts and
// symlinks count as absent). NotFound when no layer has it.
Result<std::string> read_image_file(const std::vector<std::string>& layer_dirs,
                                    const std::string& path);

}  // namespace cloister::oci

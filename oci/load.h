// `cloister load`: imports images from an OCI image layout directory, an
// OCI archive (a tar of such a directory) or a docker-archive (what `docker
// save` and `podman save` write: manifest.json, the configs, DIR/layer.tar,
// a repeated layer as a link to the first), gzip'd or not, or "-" for one
// on stdin (staged as a file first), for machines without a registry.
// A docker-archive becomes an OCI layout in the staging area (a manifest
// per image, named by its first RepoTag) and is loaded as one.
//
// The layout's index.json names the images: each entry's
// org.opencontainers.image.ref.name annotation (a full reference, or a bare
// tag, which needs `name`) is the reference it is stored under; `name`
// overrides it when the layout holds one image. Blobs go through the same
// checks as a pull (digest, size, mediaType, diff_ids, safe apply). An
// archive is read once, as a stream: only oci-layout, index.json and
// blobs/sha256/<hex> entries are extracted (into the store's staging area),
// everything else in it is ignored.
#pragma once

#include <string>
#include <vector>

#include "isolate/error.h"
#include "oci/image.h"
#include "oci/store.h"

namespace cloister::oci {

Result<std::vector<ImageRecord>> load_images(const Store& store, const std::string& path,
                                             const std::string& name,
                                             const ImportOptions& options = {});

}  // namespace cloister::oci

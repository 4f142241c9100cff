// The content store under state_dir (default /var/lib/cloister):
//
//   blobs/sha256/<hex>            manifests and configs, verified by digest
//   layers/sha256/<chainid>/      one unpacked layer, shared by every image
//       rootfs/                   whose layer stack starts with the same
//       layer.json                diff_ids (ChainID); layer.json records the
//                                 diff_id, compressed digest and sizes
//   images/<sha256(ref)>.json     image record: reference -> manifest, config,
//                                 chain ids
//   events.jsonl                  pulled, loaded, removed (oci/events.h)
//   tmp/                          staging; renamed into place when complete
//   locks/                        flock(2) files
//
// Concurrency: every writer stages in tmp/ and publishes with one rename, so
// readers never see partial content. A layer is made under its own lock
// file: the second of two concurrent pulls of a layer waits for the first
// and then finds it done (the work is shared, not repeated). Pulls hold the
// store lock shared; rmi and prune hold it exclusive, so prune never removes
// what a running pull is about to reference, and any tmp/ entry it sees is
// stale.
#pragma once

#include <unistd.h>
#include <cstdint>
#include <functional>
#include <optional>

#include <string>
#include <string_view>
#include <vector>

#include "isolate/error.h"
#include "isolate/fd.h"
#include "oci/digest.h"

namespace cloister::oci {

inline constexpr const char* kDefaultStateDir = "/var/lib/cloister";

// The store an images section's state_dir names: itself when set; else
// kDefaultStateDir for root, and for an ordinary user a store of its own,
// $XDG_DATA_HOME/cloister or $HOME/.local/share/cloister (as podman keeps
// ~/.local/share/containers), or INVALID saying to set state_dir. A user's
// store holds the user's own files (docs/security.md, "Unprivileged use").
Result<std::string> resolve_state_dir(const std::string& configured);

// Whether this process makes a user's store: layers are applied with no
// owner change and user.* overlay xattrs.
inline bool user_store() {
  return ::geteuid() != 0;
}

// The xattr that marks an opaque directory in a layer: trusted.* in root's
// store, user.* in a user's (overlayfs's userxattr option reads those).
inline const char* opaque_xattr() {
  return user_store() ? "user.overlay.opaque" : "trusted.overlay.opaque";
}

struct ImageRecord {
  std::string reference;  // canonical (Reference::str())
  Digest manifest;
  Digest config;
  std::vector<Digest> diff_ids;   // bottom to top
  std::vector<Digest> chain_ids;  // bottom to top
  uint64_t size = 0;              // compressed bytes of the layers
  int64_t created = 0;            // when stored (unix seconds)
};

// ChainID(L0) = diff_id(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + diff_id(Ln)).
std::vector<Digest> chain_ids(const std::vector<Digest>& diff_ids);

// An flock(2) held until destruction.
class FileLock {
 public:
  static Result<FileLock> acquire(const std::string& path, bool exclusive);
  FileLock(FileLock&&) = default;
  FileLock& operator=(FileLock&&) = default;

 private:
  FileLock() = default;
  Fd fd_;
};

class Store {
 public:
  // Creates the directories (0700) when missing.
  static Result<Store> open(std::string state_dir);
  const std::string& root() const { return root_; }

  // The store-wide lock: shared for pulls and loads, exclusive for rmi/prune.
  Result<FileLock> lock(bool exclusive) const;

  bool has_blob(const Digest& d) const;
  // verify=false trusts the store (blobs are verified when written, and the
  // store is root's, 0700): the exec path then needs no hashing at all.
  Result<std::string> read_blob(const Digest& d, size_t max_size, bool verify = true) const;
  // Verifies data against d, then publishes it atomically.
  Status put_blob(std::string_view data, const Digest& d) const;

  std::string layer_dir(const Digest& chain) const;  // .../layers/sha256/<hex>
  std::string layer_rootfs(const Digest& chain) const { return layer_dir(chain) + "/rootfs"; }
  bool has_layer(const Digest& chain) const;
  // Makes the layer unless it exists: under the layer's lock, `make` fills a
  // fresh staging directory (its fd given), which is then renamed into
  // place with `meta` as layer.json. Returns false when the layer already
  // existed (possibly made by a concurrent pull meanwhile).
  Result<bool> ensure_layer(const Digest& chain,
                            const std::function<Result<std::string>(int rootfs_fd)>& make) const;

  // Records the image and appends `action` (pulled, loaded) to the event
  // log (oci/events.h); rmi appends removed.
  Status put_image(const ImageRecord& r, std::string_view action = "pulled") const;
  Result<ImageRecord> get_image(const std::string& reference) const;
  Result<std::vector<ImageRecord>> list_images() const;
  Status remove_image(const std::string& reference) const;

  struct PruneResult {
    int blobs = 0, layers = 0, staging = 0;
    uint64_t bytes = 0;
  };
  // Removes blobs and layers no image record references, and stale staging.
  Result<PruneResult> prune() const;
  // Bytes used on disk by the store (st_blocks).
  Result<uint64_t> disk_usage() const;

 private:
  Result<std::string> stage_name(const std::string& what) const;
  std::string root_;
};

// Removes a directory tree (no symlink followed). ENOENT is fine.
Status remove_tree(const std::string& path);
// Bytes on disk below path.
uint64_t tree_usage(int dir_fd);

}  // namespace cloister::oci

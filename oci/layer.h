// Safe layer apply: a compressed tar stream in, one layer directory out.
//
// Image layers are hostile input. The rules, each enforced here:
//  - every path is resolved relative to the layer's root fd: parents with
//    openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS), the last component with
//    *at calls that do not follow symlinks (AT_SYMLINK_NOFOLLOW, O_NOFOLLOW,
//    O_EXCL); a ".." component is refused, a symlink in a parent resolves
//    inside the layer, never outside;
//  - files are created fresh (an existing entry is removed first), so a
//    hardlink or symlink planted earlier cannot redirect a write;
//  - hardlinks only to entries already inside the layer (not to directories);
//  - the root entry is never replaced (a non-directory root entry is refused);
//  - whiteouts: ".wh.NAME" becomes an overlayfs whiteout (char device 0:0),
//    ".wh..wh..opq" sets trusted.overlay.opaque=y on its directory; a bare
//    ".wh." or any other ".wh..*" name is refused;
//  - device nodes are refused unless allow_devices; FIFOs are allowed;
//  - xattrs: user.* and security.capability are applied, trusted.*,
//    security.selinux and everything else are dropped;
//  - ownership first, then the mode, so setuid/setgid bits survive chown;
//  - caps on uncompressed bytes, entry count, path and metadata sizes;
//  - compressed digest and size, and the uncompressed digest (diff_id), are
//    computed on the way through and checked at the end.
// A failure names the entry. The caller applies into a fresh directory and
// renames it into place only on success (oci/store.h does), so no
// half-applied layer is ever visible.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "isolate/error.h"
#include "oci/digest.h"
#include "oci/stream.h"

namespace cloister::oci {

struct ApplyOptions {
  Compression compression = Compression::Gzip;
  std::optional<Digest> expect_digest;   // of the compressed bytes
  std::optional<uint64_t> expect_size;   // compressed size
  std::optional<Digest> expect_diff_id;  // of the uncompressed tar
  uint64_t max_uncompressed = 16ull << 30;
  uint64_t max_entries = 1'000'000;
  bool allow_devices = false;
  // Off for a copy into or out of a running sandbox (`cp`, runtime/copy.h): ".wh."
  // names are plain names, no owner is taken from the archive (what is
  // made belongs to whoever makes it), and no xattr is set.
  bool whiteouts = true;
  bool keep_owners = true;
  bool xattrs = true;
  // Off for a copy too: no setuid/setgid bit is set (whoever extracts it,
  // the archive is someone else's), and a directory with anything in it is
  // never replaced by an entry of another type (an error instead: its tree
  // is not the archive's to remove, and may be deeper than any stack).
  bool setid = true;
  bool replace_dirs = true;
  const char* what = "layer";  // what errors call the archive
  // Called with the compressed bytes consumed so far (from the pulling thread).
  std::function<void(uint64_t)> progress;
};

struct ApplyResult {
  Digest digest;   // compressed
  Digest diff_id;  // uncompressed
  uint64_t compressed_size = 0;
  uint64_t uncompressed_size = 0;
  uint64_t entries = 0;
};

// Applies the layer read from `in` into the directory root_fd (normally
// empty). Reads `in` to its end.
Result<ApplyResult> apply_layer(ByteStream& in, int root_fd, const ApplyOptions& options);

// Removes everything below dir_fd (not dir_fd itself), never following a
// symlink.
Status remove_tree_contents(int dir_fd);

}  // namespace cloister::oci

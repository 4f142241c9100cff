// A streaming tar reader (ustar, pax extended headers, GNU long names) over a
// ByteStream, and a writer of the same (ustar, with a pax header where a
// field does not fit). Neither touches the filesystem, so the rules of what
// may be written where live in one place (oci/layer.h), and of what is read
// in another (runtime/copy.h).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "isolate/error.h"
#include "oci/stream.h"

namespace cloister::oci {

struct TarEntry {
  std::string path;      // as stored (not normalised)
  std::string linkname;  // symlink text or hardlink target
  char type = '0';       // '0' file, '1' hardlink, '2' symlink, '3' chr, '4' blk, '5' dir, '6' fifo
  uint64_t size = 0;
  uint32_t mode = 0;
  uint32_t uid = 0, gid = 0;
  int64_t mtime = 0;
  uint32_t devmajor = 0, devminor = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;  // from SCHILY.xattr.*
};

class TarReader {
 public:
  explicit TarReader(ByteStream& in) : in_(in) {}
  // The next entry; false at the end of the archive (two zero blocks, or the
  // end of the stream right after one).
  Result<bool> next(TarEntry& e);
  // Reads the current entry's data; 0 at its end.
  Result<size_t> read_data(char* buf, size_t len);

 private:
  Status read_exact(char* buf, size_t len);
  Status skip(uint64_t n);
  Result<std::string> read_body(uint64_t size, const char* what);

  ByteStream& in_;
  uint64_t remaining_ = 0;  // data left in the current entry
  uint64_t padding_ = 0;    // after it, to the block boundary
};

// Writes a tar stream to an fd (not owned): for each entry its header, then
// (regular files) exactly e.size bytes of data, then finish(). Paths and
// link names of any length, sizes, ids and times beyond ustar's fields go
// in a pax header ('x') before the entry, as GNU tar and bsdtar write it.
class TarWriter {
 public:
  explicit TarWriter(int fd) : fd_(fd) {}
  Status header(const TarEntry& e);
  Status data(std::string_view bytes);  // the current entry's, in pieces
  Status finish();                      // the end: two zero blocks
  uint64_t written() const { return written_; }

 private:
  Status put(std::string_view bytes);
  int fd_;
  uint64_t left_ = 0, padding_ = 0, written_ = 0;
};

}  // namespace cloister::oci

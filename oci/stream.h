// Pull streams of bytes: the pipeline of a layer is
//   source (fd, HTTP body) -> HashingStream (compressed digest, size cap)
//   -> decompressor (gzip/zstd, in-process) -> HashingStream (diff_id, cap)
//   -> TarReader -> apply
// so every byte is looked at once, with no temp file and no second pass.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "isolate/error.h"
#include "oci/digest.h"

namespace cloister::oci {

class ByteStream {
 public:
  virtual ~ByteStream() = default;
  // Up to len bytes; 0 only at the end of the stream.
  virtual Result<size_t> read(char* buf, size_t len) = 0;
  // Reads until the end, discarding. Returns the number of bytes read.
  Result<uint64_t> drain();
};

// Reads an fd (not owned).
class FdStream : public ByteStream {
 public:
  explicit FdStream(int fd) : fd_(fd) {}
  Result<size_t> read(char* buf, size_t len) override;

 private:
  int fd_;
};

// Reads a string held elsewhere.
class MemoryStream : public ByteStream {
 public:
  explicit MemoryStream(std::string_view data) : data_(data) {}
  Result<size_t> read(char* buf, size_t len) override;

 private:
  std::string_view data_;
};

// Passes bytes through, hashing and counting them; fails with Limit once
// more than `limit` bytes went by (`what` names the limit in the error).
class HashingStream : public ByteStream {
 public:
  HashingStream(ByteStream& inner, uint64_t limit, std::string what)
      : inner_(inner), limit_(limit), what_(std::move(what)) {}
  Result<size_t> read(char* buf, size_t len) override;
  uint64_t count() const { return count_; }
  Digest finish() { return hash_.finish(); }

 private:
  ByteStream& inner_;
  Sha256 hash_;
  uint64_t count_ = 0;
  uint64_t limit_;
  std::string what_;
};

// Reads `inner` on a thread of its own, up to `depth` chunks ahead of the
// reader, so that what `inner` does (download, hashing, decompression) runs
// on one core while the reader's work (a tar apply's system calls) runs on
// another. `inner` belongs to the thread from the first read() until read()
// returns 0 or an error, or the destructor stops it; the thread is joined
// then, so the caller may use `inner` (its digests, drain()) afterwards.
class ReadAheadStream : public ByteStream {
 public:
  explicit ReadAheadStream(ByteStream& inner, size_t chunk = 1 << 20, size_t depth = 4);
  ~ReadAheadStream() override;
  ReadAheadStream(const ReadAheadStream&) = delete;
  ReadAheadStream& operator=(const ReadAheadStream&) = delete;
  Result<size_t> read(char* buf, size_t len) override;

 private:
  struct Chunk {
    std::unique_ptr<char[]> data;
    size_t len = 0;
  };
  void produce();
  void join();

  ByteStream& inner_;
  const size_t chunk_;
  std::vector<Chunk> ring_;
  std::mutex mu_;
  std::condition_variable cv_;
  size_t head_ = 0, tail_ = 0, filled_ = 0;  // guarded by mu_
  bool done_ = false;                        // guarded by mu_
  std::atomic<bool> stop_ = false;           // set (under mu_) by the destructor
  std::optional<Error> error_;               // guarded by mu_
  bool started_ = false, holding_ = false;   // the reader's own
  size_t pos_ = 0;                           // the reader's offset in ring_[head_]
  std::thread thread_;
};

enum class Compression { None, Gzip, Zstd };
std::string_view compression_name(Compression c);
// From the first bytes of a blob (gzip 1f 8b, zstd 28 b5 2f fd, else none).
Compression sniff_compression(std::string_view head);

// A decompressing view of `inner`; None passes bytes through.
std::unique_ptr<ByteStream> decompress(ByteStream& inner, Compression c);

}  // namespace cloister::oci

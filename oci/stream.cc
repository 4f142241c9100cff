#include "oci/stream.h"

#include <unistd.h>
#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <vector>

namespace cloister::oci {

Result<uint64_t> ByteStream::drain() {
  char buf[65536];
  uint64_t total = 0;
  for (;;) {
    auto n = read(buf, sizeof buf);
    if (!n) return fail(n.error());
    if (*n == 0) return total;
    total += *n;
  }
}

Result<size_t> FdStream::read(char* buf, size_t len) {
  for (;;) {
    ssize_t n = ::read(fd_, buf, len);
    if (n >= 0) return static_cast<size_t>(n);
    if (errno != EINTR) return fail(sys_error("read"));
  }
}

Result<size_t> MemoryStream::read(char* buf, size_t len) {
  size_t n = std::min(len, data_.size());
  std::memcpy(buf, data_.data(), n);
  data_.remove_prefix(n);
  return n;
}

Result<size_t> HashingStream::read(char* buf, size_t len) {
  auto n = inner_.read(buf, len);
  if (!n) return n;
  hash_.update(buf, *n);
  count_ += *n;
  if (count_ > limit_)
    return fail(
        make_error(ErrorKind::Limit, what_ + ": more than " + std::to_string(limit_) + " bytes"));
  return n;
}

std::string_view compression_name(Compression c) {
  switch (c) {
    case Compression::None:
      return "none";
    case Compression::Gzip:
      return "gzip";
    case Compression::Zstd:
      return "zstd";
  }
  return "none";
}

Compression sniff_compression(std::string_view h) {
  if (h.size() >= 2 && static_cast<unsigned char>(h[0]) == 0x1f &&
      static_cast<unsigned char>(h[1]) == 0x8b)
    return Compression::Gzip;
  if (h.size() >= 4 && h.substr(0, 4) == std::string_view("\x28\xb5\x2f\xfd", 4))
    return Compression::Zstd;
  return Compression::None;
}

namespace {

constexpr size_t kChunk = 128 * 1024;

class PassStream : public ByteStream {
 public:
  explicit PassStream(ByteStream& in) : in_(in) {}
  Result<size_t> read(char* buf, size_t len) override { return in_.read(buf, len); }

 private:
  ByteStream& in_;
};

// zlib inflate with gzip framing; concatenated members are read as one stream
// (as gzip -d does).
class GzipStream : public ByteStream {
 public:
  explicit GzipStream(ByteStream& in) : in_(in), buf_(kChunk) {
    z_ = {};
    ok_ = inflateInit2(&z_, 15 + 16) == Z_OK;
  }
  ~GzipStream() override {
    if (ok_) inflateEnd(&z_);
  }
  Result<size_t> read(char* out, size_t len) override {
    if (!ok_) return fail(internal("gzip: inflateInit2 failed"));
    z_.next_out = reinterpret_cast<Bytef*>(out);
    const uInt cap = static_cast<uInt>(std::min<size_t>(len, 1u << 30));
    z_.avail_out = cap;
    while (z_.avail_out == cap) {
      if (z_.avail_in == 0) {
        if (eof_) {
          if (mid_member_) return fail(invalid("gzip: truncated stream"));
          return 0;
        }
        auto n = in_.read(buf_.data(), buf_.size());
        if (!n) return fail(n.error());
        if (*n == 0) {
          eof_ = true;
          continue;
        }
        z_.next_in = reinterpret_cast<Bytef*>(buf_.data());
        z_.avail_in = static_cast<uInt>(*n);
      }
      mid_member_ = true;
      int rc = inflate(&z_, Z_NO_FLUSH);
      if (rc == Z_STREAM_END) {
        mid_member_ = false;
        inflateReset(&z_);
      } else if (rc != Z_OK && rc != Z_BUF_ERROR) {
        return fail(invalid(std::string("gzip: ") + (z_.msg ? z_.msg : "corrupt data")));
      }
    }
    return cap - z_.avail_out;
  }

 private:
  ByteStream& in_;
  std::vector<char> buf_;
  z_stream z_;
  bool ok_ = false;
  bool eof_ = false;
  bool mid_member_ = false;
};

class ZstdStream : public ByteStream {
 public:
  explicit ZstdStream(ByteStream& in) : in_(in), buf_(ZSTD_DStreamInSize()) {
    ctx_ = ZSTD_createDCtx();
    // Window cap: a frame may not make us allocate more than 128 MiB.
    if (ctx_) ZSTD_DCtx_setParameter(ctx_, ZSTD_d_windowLogMax, 27);
  }
  ~ZstdStream() override { ZSTD_freeDCtx(ctx_); }
  Result<size_t> read(char* out, size_t len) override {
    if (!ctx_) return fail(internal("zstd: cannot create a context"));
    ZSTD_outBuffer o{out, len, 0};
    while (o.pos == 0) {
      if (in_pos_ == in_len_) {
        if (eof_) {
          if (last_ != 0) return fail(invalid("zstd: truncated stream"));
          return 0;
        }
        auto n = in_.read(buf_.data(), buf_.size());
        if (!n) return fail(n.error());
        in_pos_ = 0;
        in_len_ = *n;
        if (*n == 0) {
          eof_ = true;
          continue;
        }
      }
      ZSTD_inBuffer i{buf_.data(), in_len_, in_pos_};
      last_ = ZSTD_decompressStream(ctx_, &o, &i);
      in_pos_ = i.pos;
      if (ZSTD_isError(last_))
        return fail(invalid(std::string("zstd: ") + ZSTD_getErrorName(last_)));
    }
    return o.pos;
  }

 private:
  ByteStream& in_;
  std::vector<char> buf_;
  ZSTD_DCtx* ctx_ = nullptr;
  size_t in_pos_ = 0, in_len_ = 0;
  size_t last_ = 0;
  bool eof_ = false;
};

}  // namespace

std::unique_ptr<ByteStream> decompress(ByteStream& inner, Compression c) {
  switch (c) {
    case Compression::Gzip:
      return std::make_unique<GzipStream>(inner);
    case Compression::Zstd:
      return std::make_unique<ZstdStream>(inner);
    case Compression::None:
      break;
  }
  return std::make_unique<PassStream>(inner);
}

}  // namespace cloister::oci

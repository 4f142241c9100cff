#include "oci/stream.h"

#include <dlfcn.h>
#include <isa-l/igzip_lib.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <system_error>
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

ReadAheadStream::ReadAheadStream(ByteStream& inner, size_t chunk, size_t depth)
    : inner_(inner), chunk_(chunk), ring_(std::max<size_t>(depth, 1)) {}

ReadAheadStream::~ReadAheadStream() {
  {
    std::lock_guard g(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  join();
}

void ReadAheadStream::join() {
  if (thread_.joinable()) thread_.join();
}

void ReadAheadStream::produce() {
  for (;;) {
    size_t slot;
    {
      std::unique_lock l(mu_);
      cv_.wait(l, [&] { return stop_ || filled_ < ring_.size(); });
      if (stop_) return;
      slot = tail_;
    }
    // The slot is ours until it is published: the reader never looks past
    // filled_.
    Chunk& c = ring_[slot];
    if (!c.data) c.data = std::make_unique<char[]>(chunk_);
    size_t got = 0;
    bool end = false;
    std::optional<Error> err;
    // A reader that left stops the filling between two reads of `inner`.
    while (got < chunk_ && !stop_.load(std::memory_order_relaxed)) {
      auto n = inner_.read(c.data.get() + got, chunk_ - got);
      if (!n) {
        err = n.error();
        break;
      }
      if (*n == 0) {
        end = true;
        break;
      }
      got += *n;
    }
    {
      std::lock_guard g(mu_);
      c.len = got;
      if (got) {
        tail_ = (tail_ + 1) % ring_.size();
        ++filled_;
      }
      if (err) error_ = std::move(err);
      done_ = end || error_.has_value();
    }
    cv_.notify_all();
    if (end || err) return;
  }
}

Result<size_t> ReadAheadStream::read(char* buf, size_t len) {
  if (!started_) {
    started_ = true;
    try {
      thread_ = std::thread([this] { produce(); });
    } catch (const std::system_error& e) {
      return fail(
          make_error(ErrorKind::Limit, "cannot start a read-ahead thread", e.code().value()));
    }
  }
  if (len == 0) return 0;
  if (!holding_) {
    std::unique_lock l(mu_);
    cv_.wait(l, [&] { return filled_ > 0 || done_; });
    if (filled_ == 0) {
      std::optional<Error> err = error_;
      l.unlock();
      join();
      if (err) return fail(*err);
      return 0;
    }
    holding_ = true;
    pos_ = 0;
  }
  const Chunk& c = ring_[head_];
  const size_t n = std::min(len, c.len - pos_);
  std::memcpy(buf, c.data.get() + pos_, n);
  pos_ += n;
  if (pos_ == c.len) {
    {
      std::lock_guard g(mu_);
      head_ = (head_ + 1) % ring_.size();
      --filled_;
    }
    holding_ = false;
    cv_.notify_all();
  }
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

// isa-l's inflate is several times faster than zlib's (AVX2/AVX-512 Huffman
// decoding): for a gzip layer it is most of the pull's CPU. libisal is
// loaded on first use, like libcrypto and libcurl, so the CLI's other verbs
// never map it.
struct IsalApi {
  void (*init)(inflate_state*);
  void (*reset)(inflate_state*);
  int (*inflate)(inflate_state*);
};

Result<const IsalApi*> isal_api() {
  static IsalApi api;
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    void* h = ::dlopen("libisal.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      error = std::string("gzip: cannot load libisal.so.2 (install libisal2): ") + ::dlerror();
      return;
    }
    api.init = reinterpret_cast<decltype(api.init)>(::dlsym(h, "isal_inflate_init"));
    api.reset = reinterpret_cast<decltype(api.reset)>(::dlsym(h, "isal_inflate_reset"));
    api.inflate = reinterpret_cast<decltype(api.inflate)>(::dlsym(h, "isal_inflate"));
    if (!api.init || !api.reset || !api.inflate) error = "gzip: libisal.so.2 lacks a needed symbol";
  });
  if (!error.empty()) return fail(internal(error));
  return &api;
}

std::string isal_error(int rc) {
  switch (rc) {
    case ISAL_INVALID_BLOCK:
      return "gzip: invalid deflate block";
    case ISAL_INVALID_SYMBOL:
      return "gzip: invalid deflate symbol";
    case ISAL_INVALID_LOOKBACK:
      return "gzip: invalid lookback distance";
    case ISAL_INVALID_WRAPPER:
      return "gzip: not a gzip header";
    case ISAL_UNSUPPORTED_METHOD:
      return "gzip: unsupported compression method";
    case ISAL_INCORRECT_CHECKSUM:
      return "gzip: CRC or length check failed";
    case ISAL_NEED_DICT:
      return "gzip: stream needs a preset dictionary";
    default:
      return "gzip: corrupt data (isa-l error " + std::to_string(rc) + ")";
  }
}

// gzip through isa-l, header and trailer (CRC-32, ISIZE) checked by it;
// concatenated members are read as one stream (as gzip -d does).
class GzipStream : public ByteStream {
 public:
  explicit GzipStream(ByteStream& in) : in_(in), buf_(kChunk) {}
  Result<size_t> read(char* out, size_t len) override {
    if (!api_) {
      auto api = isal_api();
      if (!api) return fail(api.error());
      api_ = *api;
      st_ = std::make_unique<inflate_state>();
      api_->init(st_.get());
      st_->crc_flag = ISAL_GZIP;
    }
    inflate_state& s = *st_;
    s.next_out = reinterpret_cast<uint8_t*>(out);
    const uint32_t cap = static_cast<uint32_t>(std::min<size_t>(len, 1u << 30));
    s.avail_out = cap;
    while (s.avail_out == cap) {
      if (s.block_state == ISAL_BLOCK_FINISH) {
        // A member ended: more input is another member.
        if (s.avail_in == 0 && !fill()) return fail(read_error_);
        if (s.avail_in == 0) return 0;
        uint8_t* next = s.next_in;
        uint32_t avail = s.avail_in;
        api_->reset(&s);
        s.crc_flag = ISAL_GZIP;
        s.next_in = next;
        s.avail_in = avail;
        s.next_out = reinterpret_cast<uint8_t*>(out);
        s.avail_out = cap;
      }
      if (s.avail_in == 0) {
        if (!fill()) return fail(read_error_);
        if (s.avail_in == 0) {
          if (mid_member_) return fail(invalid("gzip: truncated stream"));
          return 0;
        }
      }
      mid_member_ = true;
      int rc = api_->inflate(&s);
      if (rc < 0) return fail(invalid(isal_error(rc)));
      if (s.block_state == ISAL_BLOCK_FINISH) mid_member_ = false;
    }
    return cap - s.avail_out;
  }

 private:
  // Refills the input buffer; false on a read error, avail_in 0 at the end.
  bool fill() {
    auto n = in_.read(buf_.data(), buf_.size());
    if (!n) {
      read_error_ = n.error();
      return false;
    }
    st_->next_in = reinterpret_cast<uint8_t*>(buf_.data());
    st_->avail_in = static_cast<uint32_t>(*n);
    return true;
  }

  ByteStream& in_;
  std::vector<char> buf_;
  const IsalApi* api_ = nullptr;
  std::unique_ptr<inflate_state> st_;
  bool mid_member_ = false;
  Error read_error_;
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

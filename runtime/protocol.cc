#include "runtime/protocol.h"

namespace cloister::protocol {
namespace {

void put_u32(std::string& out, uint32_t v) {
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
void put_u64(std::string& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t get_be(std::string_view s, size_t at, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v = (v << 8) | static_cast<unsigned char>(s[at + i]);
  return v;
}

}  // namespace

std::string_view stream_name(StreamId s) {
  switch (s) {
    case StreamId::Stdin:
      return "stdin";
    case StreamId::Stdout:
      return "stdout";
    case StreamId::Stderr:
      return "stderr";
  }
  return "?";
}

Status encode(FrameType type, std::string_view body, std::string& out, uint32_t max_frame) {
  if (body.size() > max_frame)
    return fail(make_error(ErrorKind::Invalid, "frame body of " + std::to_string(body.size()) +
                                                   " bytes exceeds the maximum of " +
                                                   std::to_string(max_frame)));
  put_u32(out, static_cast<uint32_t>(body.size()));
  out.push_back(static_cast<char>(type));
  out.append(body);
  return {};
}

Status encode_data(uint64_t session, StreamId stream, uint64_t offset, std::string_view bytes,
                   std::string& out, uint32_t max_frame) {
  const size_t n = kDataHeaderSize + bytes.size();
  if (n > max_frame)
    return fail(invalid("data frame of " + std::to_string(n) + " bytes exceeds the maximum of " +
                        std::to_string(max_frame)));
  put_u32(out, static_cast<uint32_t>(n));
  out.push_back(static_cast<char>(FrameType::Data));
  put_u64(out, session);
  out.push_back(static_cast<char>(stream));
  put_u64(out, offset);
  out.append(bytes);
  return {};
}

Result<std::optional<Frame>> Decoder::next() {
  auto v = next_view();
  if (!v) return fail(v.error());
  if (!*v) return std::optional<Frame>();
  return std::optional<Frame>(Frame{(*v)->type, std::string((*v)->body)});
}

Result<std::optional<FrameView>> Decoder::next_view() {
  // What the last view pointed at is consumed now.
  if (pos_ == buf_.size()) {
    buf_.clear();
    pos_ = 0;
  }
  const size_t avail = buf_.size() - pos_;
  if (avail < kHeaderSize) {
    // Keep the buffer from growing with consumed bytes.
    if (pos_ > 0) {
      buf_.erase(0, pos_);
      pos_ = 0;
    }
    return std::optional<FrameView>();
  }
  const uint64_t len = get_be(buf_, pos_, 4);
  const uint8_t type = static_cast<uint8_t>(buf_[pos_ + 4]);
  if (len > max_frame_)
    return fail(invalid("frame of " + std::to_string(len) + " bytes exceeds the maximum of " +
                        std::to_string(max_frame_)));
  if (type != static_cast<uint8_t>(FrameType::Control) &&
      type != static_cast<uint8_t>(FrameType::Data))
    return fail(invalid("unknown frame type " + std::to_string(type)));
  if (avail < kHeaderSize + len) {
    if (pos_ > 0) {
      buf_.erase(0, pos_);
      pos_ = 0;
    }
    return std::optional<FrameView>();
  }
  FrameView f{static_cast<FrameType>(type), std::string_view(buf_).substr(pos_ + kHeaderSize, len)};
  pos_ += kHeaderSize + len;
  return std::optional<FrameView>(f);
}

Result<DataFrame> decode_data(std::string_view body) {
  if (body.size() < kDataHeaderSize)
    return fail(invalid("data frame of " + std::to_string(body.size()) +
                        " bytes is shorter than its 17-byte header"));
  DataFrame d;
  d.session = get_be(body, 0, 8);
  const uint8_t s = static_cast<uint8_t>(body[8]);
  if (s > 2) return fail(invalid("data frame: unknown stream " + std::to_string(s)));
  d.stream = static_cast<StreamId>(s);
  d.offset = get_be(body, 9, 8);
  d.bytes = body.substr(kDataHeaderSize);
  return d;
}

}  // namespace cloister::protocol

// The control protocol of cloisterd (docs/protocol.md is the reference):
// frames on a Unix stream socket.
//
//   offset 0  u32 big-endian  body length N (0 <= N <= the negotiated maximum)
//   offset 4  u8              frame type (FrameType)
//   offset 5  N bytes         body
//
// Control frames carry one JSON object (UTF-8). Data frames carry output or
// stdin bytes with their position:
//
//   body offset 0   u64 big-endian  session id
//   body offset 8   u8              stream (0 stdin, 1 stdout, 2 stderr)
//   body offset 9   u64 big-endian  absolute byte offset of the first byte
//   body offset 17  ...             the bytes
//
// This module is pure: it encodes and decodes frames from bytes, and never
// touches a socket, so that both the server's event loop and the blocking
// client share it and it can be unit-tested byte by byte.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "isolate/error.h"

namespace cloister::protocol {

inline constexpr uint32_t kVersion = 1;
inline constexpr size_t kHeaderSize = 5;
inline constexpr size_t kDataHeaderSize = 17;
// The maximum body both sides accept before hello has said otherwise.
inline constexpr uint32_t kDefaultMaxFrame = 1u << 20;

enum class FrameType : uint8_t { Control = 1, Data = 2 };
enum class StreamId : uint8_t { Stdin = 0, Stdout = 1, Stderr = 2 };
std::string_view stream_name(StreamId s);

struct Frame {
  FrameType type;
  std::string body;
};

// A frame still in the decoder's buffer: valid until its next feed() or next().
struct FrameView {
  FrameType type;
  std::string_view body;
};

struct DataFrame {
  uint64_t session = 0;
  StreamId stream = StreamId::Stdout;
  uint64_t offset = 0;
  std::string_view bytes;  // points into the frame's body
};

// Appends an encoded frame to out. INVALID when the body exceeds max_frame.
Status encode(FrameType type, std::string_view body, std::string& out,
              uint32_t max_frame = kDefaultMaxFrame);
Status encode_data(uint64_t session, StreamId stream, uint64_t offset, std::string_view bytes,
                   std::string& out, uint32_t max_frame = kDefaultMaxFrame);

// Incremental decoder over a byte stream: feed() what was received, then
// next() until it returns nullopt (needs more bytes). A frame whose declared
// length exceeds max_frame or whose type is unknown is an INVALID error; the
// stream cannot be resynchronised after that and the connection must end.
class Decoder {
 public:
  explicit Decoder(uint32_t max_frame = kDefaultMaxFrame) : max_frame_(max_frame) {}
  void set_max_frame(uint32_t max_frame) { max_frame_ = max_frame; }
  void feed(std::string_view bytes) { buf_.append(bytes); }
  Result<std::optional<Frame>> next();
  // next() without copying the body out (a data frame's bytes are copied
  // once, where they are kept).
  Result<std::optional<FrameView>> next_view();
  size_t buffered() const { return buf_.size() - pos_; }

 private:
  std::string buf_;
  size_t pos_ = 0;
  uint32_t max_frame_;
};

Result<DataFrame> decode_data(std::string_view body);

}  // namespace cloister::protocol

// Units of the service: the frame codec (byte by byte), the ring buffer
// (offsets and eviction), and the `service:` config section.
#include <gtest/gtest.h>

#include <random>

#include "runtime/config.h"
#include "runtime/protocol.h"
#include "runtime/ring_buffer.h"

using namespace cloister;
namespace proto = cloister::protocol;

namespace {

TEST(FrameCodec, LayoutIsBigEndianLengthTypeBody) {
  std::string out;
  ASSERT_TRUE(proto::encode(proto::FrameType::Control, "{}", out));
  EXPECT_EQ(out, std::string("\0\0\0\2\1{}", 7));
  out.clear();
  ASSERT_TRUE(
      proto::encode_data(0x0102030405060708ULL, proto::StreamId::Stderr, 0x1122, "hi", out));
  EXPECT_EQ(out, std::string("\0\0\0\x13\2"
                             "\1\2\3\4\5\6\7\x08"
                             "\2"
                             "\0\0\0\0\0\0\x11\x22"
                             "hi",
                             24));
  auto d = proto::decode_data(out.substr(5));
  ASSERT_TRUE(d);
  EXPECT_EQ(d->session, 0x0102030405060708ULL);
  EXPECT_EQ(d->stream, proto::StreamId::Stderr);
  EXPECT_EQ(d->offset, 0x1122u);
  EXPECT_EQ(d->bytes, "hi");
}

TEST(FrameCodec, DecoderReassemblesAnySplit) {
  std::string wire;
  std::vector<std::string> bodies = {"{\"op\":\"hello\"}", "", std::string(70000, 'x'), "{}"};
  for (auto& b : bodies) ASSERT_TRUE(proto::encode(proto::FrameType::Control, b, wire));
  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    proto::Decoder dec;
    std::vector<std::string> got;
    size_t at = 0;
    while (at < wire.size()) {
      size_t n = std::min<size_t>(wire.size() - at, 1 + rng() % 9000);
      dec.feed(std::string_view(wire).substr(at, n));
      at += n;
      // Copied out (next) and viewed in place (next_view) in turn.
      for (;;) {
        if (round % 2) {
          auto f = dec.next_view();
          ASSERT_TRUE(f);
          if (!*f) break;
          got.emplace_back((*f)->body);
          continue;
        }
        auto f = dec.next();
        ASSERT_TRUE(f);
        if (!*f) break;
        got.push_back((*f)->body);
      }
    }
    EXPECT_EQ(got, bodies);
    EXPECT_EQ(dec.buffered(), 0u);
  }
}

TEST(FrameCodec, OversizeUnknownTypeAndShortDataAreErrors) {
  std::string out;
  EXPECT_FALSE(proto::encode(proto::FrameType::Control, std::string(101, 'x'), out, 100));
  EXPECT_TRUE(out.empty());
  proto::Decoder dec(100);
  dec.feed(std::string("\0\0\0\x65\1", 5));  // 101 > 100, refused from the header alone
  auto f = dec.next();
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error().kind, ErrorKind::Invalid);
  proto::Decoder dec2;
  dec2.feed(std::string("\0\0\0\0\x07", 5));
  EXPECT_FALSE(dec2.next());
  EXPECT_FALSE(proto::decode_data(std::string(16, '\0')));
  std::string bad_stream(17, '\0');
  bad_stream[8] = 3;
  EXPECT_FALSE(proto::decode_data(bad_stream));
  // The limit is the body: exactly max_frame passes.
  proto::Decoder dec3(4);
  dec3.feed(std::string("\0\0\0\4\1abcd", 9));
  auto ok = dec3.next();
  ASSERT_TRUE(ok && *ok);
  EXPECT_EQ((*ok)->body, "abcd");
}

TEST(RingBuffer, OffsetsAndEviction) {
  RingBuffer rb(10);
  EXPECT_EQ(rb.allocated(), 0u);
  EXPECT_EQ(rb.append("abcdef"), 0u);
  EXPECT_EQ(rb.start(), 0u);
  EXPECT_EQ(rb.end(), 6u);
  EXPECT_EQ(rb.read(2, 3), "cde");
  EXPECT_EQ(rb.append("ghijk"), 1u);  // 11 bytes into 10: "a" is evicted
  EXPECT_EQ(rb.start(), 1u);
  EXPECT_EQ(rb.read(1, 100), "bcdefghijk");
  EXPECT_EQ(rb.read(0, 5), "");                // evicted: nothing, the caller checks start()
  EXPECT_EQ(rb.append("0123456789XYZ"), 13u);  // larger than the capacity: its tail stays
  EXPECT_EQ(rb.start(), 14u);
  EXPECT_EQ(rb.end(), 24u);
  EXPECT_EQ(rb.read(14, 100), "3456789XYZ");
  EXPECT_LE(rb.allocated(), 10u);
  rb.release();
  EXPECT_EQ(rb.end(), 24u);
  EXPECT_EQ(rb.size(), 0u);
}

TEST(RingBuffer, MatchesAModelUnderRandomAppends) {
  std::mt19937 rng(42);
  RingBuffer rb(1000);
  std::string all;
  for (int i = 0; i < 2000; ++i) {
    std::string chunk(rng() % 300, '\0');
    for (auto& c : chunk) c = static_cast<char>('a' + rng() % 26);
    rb.append(chunk);
    all += chunk;
    ASSERT_EQ(rb.end(), all.size());
    ASSERT_EQ(rb.start(), all.size() > 1000 ? all.size() - 1000 : 0);
    uint64_t at = rb.start() + (rb.size() ? rng() % rb.size() : 0);
    ASSERT_EQ(rb.read(at, 257), all.substr(at, 257));
    // peek: the same bytes in place, ending at the wrap at the latest.
    std::string peeked;
    for (uint64_t o = at; o < rb.end() && peeked.size() < 257;) {
      const std::string_view v = rb.peek(o, 257 - peeked.size());
      ASSERT_FALSE(v.empty());
      peeked += v;
      o += v.size();
    }
    ASSERT_EQ(peeked, all.substr(at, 257));
    ASSERT_LE(rb.allocated(), 1000u);
  }
}

TEST(ServiceConfig, DefaultsAndFields) {
  auto c = parse_config("executors:\n  - name: a\n", "t.yaml");
  ASSERT_TRUE(c) << c.error().what();
  EXPECT_EQ(c->service.socket, "/run/cloister/cloister.sock");
  EXPECT_EQ(c->service.buffer_size, 1u << 20);
  EXPECT_EQ(c->service.socket_mode, 0660u);
  EXPECT_EQ(c->service.shutdown, ShutdownMode::Kill);
  auto d = parse_config(
      "executors:\n  - name: a\nservice:\n  socket: /tmp/x.sock\n  socket_group: root\n"
      "  socket_mode: \"0600\"\n  buffer_size: 4m\n  retention: 30s\n"
      "  max_run_after_disconnect: 5m\n  max_sessions: 10\n  max_sessions_per_executor: 3\n"
      "  max_sessions_per_caller: 2\n  max_frame: 128k\n  shutdown: wait\n  shutdown_grace: 2s\n",
      "t.yaml");
  ASSERT_TRUE(d) << d.error().what();
  EXPECT_EQ(d->service.socket, "/tmp/x.sock");
  EXPECT_EQ(d->service.socket_gid, 0u);
  EXPECT_EQ(d->service.socket_mode, 0600u);
  EXPECT_EQ(d->service.buffer_size, 4u << 20);
  EXPECT_EQ(d->service.retention, std::chrono::seconds(30));
  EXPECT_EQ(d->service.max_run_after_disconnect, std::chrono::minutes(5));
  EXPECT_EQ(d->service.max_sessions, 10u);
  EXPECT_EQ(d->service.max_sessions_per_executor, 3u);
  EXPECT_EQ(d->service.max_sessions_per_caller, 2u);
  EXPECT_EQ(d->service.max_frame, 128u << 10);
  EXPECT_EQ(d->service.shutdown, ShutdownMode::Wait);
  EXPECT_EQ(d->service.shutdown_grace, std::chrono::seconds(2));
}

TEST(ServiceConfig, ErrorsNameFileLineAndField) {
  auto err = [](const std::string& service) {
    auto c = parse_config("executors:\n  - name: a\nservice:\n" + service, "s.yaml");
    return c ? std::string("(accepted)") : c.error().message;
  };
  EXPECT_EQ(
      err("  buffer_size: lots\n"),
      "s.yaml:4: service.buffer_size: expected a byte size (integer or 512m/1g), got \"lots\"");
  EXPECT_EQ(err("  buffer_size: 1k\n"), "s.yaml:4: service.buffer_size: must be between 4k and 1g");
  EXPECT_EQ(err("  shutdown: later\n"),
            "s.yaml:4: service.shutdown: expected kill or wait, got \"later\"");
  EXPECT_EQ(err("  socket_mode: 660\n"),
            "s.yaml:4: service.socket_mode: expected an octal mode like 0660, got \"660\"");
  EXPECT_EQ(err("  socket_group: no-such-group-xyz\n"),
            "s.yaml:4: service.socket_group: no group named \"no-such-group-xyz\"");
  EXPECT_EQ(err("  max_sessions: 0\n"), "s.yaml:4: service.max_sessions: must be at least 1");
  EXPECT_EQ(err("  buffer_sise: 1m\n"),
            "s.yaml:4: service.buffer_sise: unknown field (did you mean buffer_size?)");
  EXPECT_EQ(err("  socket: relative.sock\n").substr(0, 24), "s.yaml:4: service.socket");
}

}  // namespace

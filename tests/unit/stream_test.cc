// oci/stream: the gzip decoder (isa-l) and the read-ahead thread that the
// layer apply reads through.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <random>
#include <string>

#include "gzip_member.h"
#include "isolate/fd.h"
#include "oci/stream.h"
#include "oci/tar.h"

using namespace cloister;
using namespace cloister::oci;
using cloister::testing::gzip_member;

namespace {

// Half compressible text, half random bytes: both deflate block kinds.
std::string sample(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::string s;
  s.reserve(n);
  while (s.size() < n) {
    if (rng() % 2)
      s += "line " + std::to_string(s.size()) + " of the sample text\n";
    else
      for (int i = 0; i < 200; ++i) s += static_cast<char>(rng());
  }
  s.resize(n);
  return s;
}

// Reads everything with reads of varying sizes.
Result<std::string> read_all(ByteStream& in, unsigned seed = 1) {
  std::mt19937 rng(seed);
  const size_t sizes[] = {1, 7, 511, 512, 4096, 65536, (1 << 20) + 3};
  std::string out, buf((1 << 20) + 3, '\0');
  for (;;) {
    size_t want = sizes[rng() % std::size(sizes)];
    auto n = in.read(buf.data(), want);
    if (!n) return fail(n.error());
    if (*n == 0) return out;
    EXPECT_LE(*n, want);
    out.append(buf.data(), *n);
  }
}

Result<std::string> gunzip(const std::string& blob) {
  MemoryStream m(blob);
  auto z = decompress(m, Compression::Gzip);
  return read_all(*z);
}

// Hands out its data in pieces of odd sizes, then fails if told to.
class Pieces : public ByteStream {
 public:
  Pieces(std::string data, bool fail_at_end) : data_(std::move(data)), fail_(fail_at_end) {}
  Result<size_t> read(char* buf, size_t len) override {
    ++reads;
    if (pos_ == data_.size()) {
      if (fail_) return cloister::fail(make_error(ErrorKind::Limit, "inner failed", 0));
      return 0;
    }
    size_t n = std::min({len, data_.size() - pos_, size_t{1} + (pos_ * 7919) % 3001});
    std::memcpy(buf, data_.data() + pos_, n);
    pos_ += n;
    return n;
  }
  std::atomic<int> reads{0};

 private:
  std::string data_;
  size_t pos_ = 0;
  bool fail_;
};

}  // namespace

TEST(OciGzip, DecodesWholeStreamsAndConcatenatedMembers) {
  const std::string a = sample(3 << 20, 1), b = sample(100000, 2);
  auto one = gunzip(gzip_member(a));
  ASSERT_TRUE(one) << one.error().what();
  EXPECT_TRUE(*one == a);
  // Members back to back read as one stream, as gzip -d reads them; so does
  // an empty member, and a stored (level 0) one.
  auto many = gunzip(gzip_member(a) + gzip_member("") + gzip_member(b, 0) + gzip_member(b, 9));
  ASSERT_TRUE(many) << many.error().what();
  EXPECT_TRUE(*many == a + b + b);
  auto empty = gunzip("");
  ASSERT_TRUE(empty);
  EXPECT_EQ(*empty, "");
}

TEST(OciGzip, RefusesTruncatedCorruptAndTrailingData) {
  const std::string a = sample(300000, 3);
  const std::string blob = gzip_member(a);
  for (size_t cut :
       {size_t{1}, size_t{9}, size_t{10}, blob.size() / 2, blob.size() - 8, blob.size() - 1}) {
    auto r = gunzip(blob.substr(0, cut));
    ASSERT_FALSE(r) << "cut at " << cut;
    EXPECT_EQ(r.error().kind, ErrorKind::Invalid) << r.error().what();
  }
  // The trailer's CRC-32 and length are checked.
  for (size_t at : {blob.size() - 8, blob.size() - 1}) {
    std::string bad = blob;
    bad[at] = static_cast<char>(bad[at] ^ 0x55);
    auto r = gunzip(bad);
    ASSERT_FALSE(r) << "flipped byte " << at;
    EXPECT_NE(r.error().what().find("gzip"), std::string::npos) << r.error().what();
  }
  // A flipped bit in the deflate data.
  std::string bad = blob;
  bad[blob.size() / 3] = static_cast<char>(bad[blob.size() / 3] ^ 0x10);
  EXPECT_FALSE(gunzip(bad));
  // Bytes after the last member that are not another member.
  EXPECT_FALSE(gunzip(blob + "trailing garbage"));
  EXPECT_FALSE(gunzip("not gzip at all, just text"));
}

TEST(OciReadAhead, DeliversEveryByteInOrder) {
  const std::string data = sample(5 << 20, 4);
  Pieces inner(data, false);
  // Small chunks and a short ring: the ring wraps many times.
  ReadAheadStream ahead(inner, 10007, 3);
  auto got = read_all(ahead, 5);
  ASSERT_TRUE(got) << got.error().what();
  EXPECT_TRUE(*got == data);
  // After the end the thread is gone and the end is sticky.
  const int reads = inner.reads;
  char c;
  auto again = ahead.read(&c, 1);
  ASSERT_TRUE(again);
  EXPECT_EQ(*again, 0u);
  EXPECT_EQ(inner.reads, reads);
}

TEST(OciReadAhead, PassesTheInnerErrorAfterTheDataBeforeIt) {
  const std::string data = sample(200000, 6);
  Pieces inner(data, true);
  ReadAheadStream ahead(inner, 4096, 2);
  std::string got;
  char buf[3000];
  for (;;) {
    auto n = ahead.read(buf, sizeof buf);
    if (!n) {
      EXPECT_EQ(n.error().kind, ErrorKind::Limit);
      EXPECT_NE(n.error().what().find("inner failed"), std::string::npos);
      break;
    }
    ASSERT_NE(*n, 0u) << "the error was lost";
    got.append(buf, *n);
  }
  EXPECT_TRUE(got == data);
}

TEST(OciReadAhead, StopsWhenDroppedEarly) {
  const std::string data = sample(8 << 20, 7);
  Pieces inner(data, false);
  { ReadAheadStream never(inner); }
  EXPECT_EQ(inner.reads, 0);
  {
    // The reader takes one byte and leaves: the thread is blocked on a full
    // ring, and the destructor must stop and join it.
    ReadAheadStream ahead(inner, 4096, 2);
    char c;
    ASSERT_TRUE(ahead.read(&c, 1));
  }
  const int reads = inner.reads;
  EXPECT_GT(reads, 0);
  // Far less than the whole stream was read: the ring bounds the read-ahead.
  EXPECT_LT(reads, 100);
}

// What TarWriter writes, TarReader reads back: long names and link targets
// through a pax header, the data padded to its block, ids beyond ustar's
// octal fields; GNU tar lists the same stream.
TEST(TarWriter, RoundTripsThroughTheReader) {
  const std::string file = "/tmp/cloister-tarwriter-" + std::to_string(::getpid()) + ".tar";
  cloister::Fd fd(::open(file.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  ASSERT_TRUE(fd);
  const std::string long_name = "dir/" + std::string(150, 'n') + "/file";
  const std::string long_link = "/" + std::string(120, 'l');
  TarWriter w(fd.get());
  TarEntry e;
  e.path = "dir/";
  e.type = '5';
  e.mode = 0755;
  ASSERT_TRUE(w.header(e));
  e = {};
  e.path = long_name;
  e.type = '0';
  e.mode = 0640;
  e.uid = 0x60000000;  // past ustar's 7 octal digits
  e.size = 5;
  ASSERT_TRUE(w.header(e));
  ASSERT_TRUE(w.data("he"));
  ASSERT_TRUE(w.data("llo"));
  EXPECT_FALSE(w.data("x")) << "more data than the size";
  e = {};
  e.path = "dir/link";
  e.type = '2';
  e.mode = 0777;
  e.linkname = long_link;
  ASSERT_TRUE(w.header(e));
  ASSERT_TRUE(w.finish());
  fd.reset();
  auto blob = cloister::read_file(file);
  ASSERT_TRUE(blob);
  EXPECT_EQ(blob->size() % 512, 0u);
  MemoryStream m(*blob);
  TarReader r(m);
  TarEntry got;
  ASSERT_TRUE(*r.next(got));
  EXPECT_EQ(got.path, "dir/");
  EXPECT_EQ(got.type, '5');
  ASSERT_TRUE(*r.next(got));
  EXPECT_EQ(got.path, long_name);
  EXPECT_EQ(got.uid, 0x60000000u);
  EXPECT_EQ(got.mode & 07777, 0640u);
  char buf[16];
  auto n = r.read_data(buf, sizeof buf);
  ASSERT_TRUE(n);
  EXPECT_EQ(std::string(buf, *n), "hello");
  ASSERT_TRUE(*r.next(got));
  EXPECT_EQ(got.type, '2');
  EXPECT_EQ(got.linkname, long_link);
  EXPECT_FALSE(*r.next(got));
  std::string listing;
  if (FILE* p = ::popen(("tar -tf " + file + " 2>&1").c_str(), "r")) {
    char line[512];
    while (std::fgets(line, sizeof line, p)) listing += line;
    EXPECT_EQ(::pclose(p), 0) << listing;
  }
  EXPECT_NE(listing.find(long_name), std::string::npos) << listing;
  ::unlink(file.c_str());
}

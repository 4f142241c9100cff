#include "oci/tar.h"

#include <algorithm>
#include <charconv>
#include <cstring>

#include "isolate/fd.h"

namespace cloister::oci {
namespace {

constexpr size_t kBlock = 512;
constexpr uint64_t kMaxMetaBody = 1 << 20;  // pax / GNU long name bodies

Result<uint64_t> parse_number(const char* field, size_t len, const char* what) {
  const auto* p = reinterpret_cast<const unsigned char*>(field);
  if (len > 0 && (p[0] & 0x80)) {  // base-256 (GNU): big-endian, first byte's top bit set
    if (p[0] & 0x40) return fail(invalid(std::string("tar: negative ") + what));
    uint64_t v = p[0] & 0x3f;
    for (size_t i = 1; i < len; ++i) {
      if (v >> 56) return fail(invalid(std::string("tar: ") + what + " out of range"));
      v = (v << 8) | p[i];
    }
    return v;
  }
  size_t i = 0;
  while (i < len && (field[i] == ' ' || field[i] == '\0')) ++i;
  uint64_t v = 0;
  for (; i < len && field[i] >= '0' && field[i] <= '7'; ++i) {
    if (v >> 60) return fail(invalid(std::string("tar: ") + what + " out of range"));
    v = v * 8 + static_cast<uint64_t>(field[i] - '0');
  }
  for (; i < len; ++i)
    if (field[i] != ' ' && field[i] != '\0')
      return fail(invalid(std::string("tar: bad octal in ") + what));
  return v;
}

std::string field_string(const char* f, size_t len) {
  return std::string(f, strnlen(f, len));
}

struct Pax {
  bool has_path = false, has_link = false, has_size = false, has_uid = false, has_gid = false,
       has_mtime = false;
  std::string path, link;
  uint64_t size = 0, uid = 0, gid = 0;
  int64_t mtime = 0;
  std::vector<std::pair<std::string, std::string>> xattrs;
};

Result<uint64_t> decimal(std::string_view v, const char* what) {
  uint64_t out = 0;
  auto dot = v.find('.');  // mtime may be fractional
  auto digits = v.substr(0, dot);
  auto [p, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), out);
  if (ec != std::errc() || p != digits.data() + digits.size() || digits.empty())
    return fail(invalid(std::string("tar: pax ") + what + ": bad number"));
  return out;
}

Status parse_pax(std::string_view body, Pax& pax) {
  while (!body.empty()) {
    auto sp = body.find(' ');
    if (sp == std::string_view::npos) return fail(invalid("tar: bad pax record"));
    size_t len = 0;
    auto [p, ec] = std::from_chars(body.data(), body.data() + sp, len);
    if (ec != std::errc() || len <= sp + 1 || len > body.size() || body[len - 1] != '\n')
      return fail(invalid("tar: bad pax record length"));
    std::string_view rec = body.substr(sp + 1, len - sp - 2);
    body.remove_prefix(len);
    auto eq = rec.find('=');
    if (eq == std::string_view::npos) return fail(invalid("tar: pax record without '='"));
    std::string_view key = rec.substr(0, eq), val = rec.substr(eq + 1);
    if (key == "path") {
      pax.path = val, pax.has_path = true;
    } else if (key == "linkpath") {
      pax.link = val, pax.has_link = true;
    } else if (key == "size") {
      auto v = decimal(val, "size");
      if (!v) return fail(v.error());
      pax.size = *v, pax.has_size = true;
    } else if (key == "uid") {
      auto v = decimal(val, "uid");
      if (!v) return fail(v.error());
      pax.uid = *v, pax.has_uid = true;
    } else if (key == "gid") {
      auto v = decimal(val, "gid");
      if (!v) return fail(v.error());
      pax.gid = *v, pax.has_gid = true;
    } else if (key == "mtime") {
      if (!val.empty() && val[0] == '-') continue;  // before 1970: keep the header's
      auto v = decimal(val, "mtime");
      if (!v) return fail(v.error());
      pax.mtime = static_cast<int64_t>(*v), pax.has_mtime = true;
    } else if (key.starts_with("SCHILY.xattr.")) {
      pax.xattrs.emplace_back(std::string(key.substr(13)), std::string(val));
    }
    // Other keys (atime, ctime, GNU.sparse.*, charset...) carry nothing we
    // apply; sparse files are refused below by their type.
  }
  return {};
}

}  // namespace

Status TarReader::read_exact(char* buf, size_t len) {
  while (len) {
    auto n = in_.read(buf, len);
    if (!n) return fail(n.error());
    if (*n == 0) return fail(invalid("tar: truncated archive"));
    buf += *n;
    len -= *n;
  }
  return {};
}

Status TarReader::skip(uint64_t n) {
  char buf[16384];
  while (n) {
    size_t k = static_cast<size_t>(std::min<uint64_t>(n, sizeof buf));
    if (auto s = read_exact(buf, k); !s) return s;
    n -= k;
  }
  return {};
}

Result<std::string> TarReader::read_body(uint64_t size, const char* what) {
  if (size > kMaxMetaBody)
    return fail(make_error(ErrorKind::Limit, std::string("tar: ") + what + " larger than 1 MiB"));
  std::string body(size, '\0');
  if (auto s = read_exact(body.data(), size); !s) return fail(s.error());
  if (auto s = skip((kBlock - size % kBlock) % kBlock); !s) return fail(s.error());
  return body;
}

Result<size_t> TarReader::read_data(char* buf, size_t len) {
  if (remaining_ == 0) return 0;
  auto n = in_.read(buf, static_cast<size_t>(std::min<uint64_t>(len, remaining_)));
  if (!n) return n;
  if (*n == 0) return fail(invalid("tar: truncated archive"));
  remaining_ -= *n;
  return n;
}

Result<bool> TarReader::next(TarEntry& e) {
  if (auto s = skip(remaining_ + padding_); !s) return fail(s.error());
  remaining_ = padding_ = 0;
  Pax pax;
  std::string gnu_name, gnu_link;
  bool have_gnu_name = false, have_gnu_link = false;
  for (;;) {
    char h[kBlock];
    // The end: a zero block, then another or the end of the stream.
    auto n = in_.read(h, 1);
    if (!n) return fail(n.error());
    // Some writers omit the end-of-archive blocks: the end of the stream at a
    // header boundary ends the archive too.
    if (*n == 0) return false;
    if (auto s = read_exact(h + 1, kBlock - 1); !s) return fail(s.error());
    if (std::all_of(h, h + kBlock, [](char c) { return c == 0; })) return false;

    // Checksum: the header's bytes summed with the checksum field as spaces.
    auto stored = parse_number(h + 148, 8, "checksum");
    if (!stored) return fail(stored.error());
    uint64_t sum = 0;
    for (size_t i = 0; i < kBlock; ++i)
      sum += (i >= 148 && i < 156) ? ' ' : static_cast<unsigned char>(h[i]);
    if (sum != *stored) return fail(invalid("tar: header checksum mismatch"));

    auto size = parse_number(h + 124, 12, "size");
    if (!size) return fail(size.error());
    char type = h[156];
    if (type == 'x' || type == 'g') {
      auto body = read_body(*size, "pax header");
      if (!body) return fail(body.error());
      if (type == 'g') continue;  // global headers: nothing we apply
      if (auto s = parse_pax(*body, pax); !s) return fail(s.error());
      continue;
    }
    if (type == 'L' || type == 'K') {
      auto body = read_body(*size, "GNU long name");
      if (!body) return fail(body.error());
      std::string v(body->c_str());  // NUL-terminated
      if (type == 'L')
        gnu_name = std::move(v), have_gnu_name = true;
      else
        gnu_link = std::move(v), have_gnu_link = true;
      continue;
    }

    e = TarEntry{};
    e.type = type == '\0' ? '0' : type;
    std::string name = field_string(h, 100);
    if (std::memcmp(h + 257, "ustar", 5) == 0) {
      std::string prefix = field_string(h + 345, 155);
      if (!prefix.empty()) name = prefix + "/" + name;
    }
    e.path = pax.has_path ? pax.path : have_gnu_name ? gnu_name : name;
    e.linkname = pax.has_link ? pax.link : have_gnu_link ? gnu_link : field_string(h + 157, 100);
    auto mode = parse_number(h + 100, 8, "mode");
    auto uid = parse_number(h + 108, 8, "uid");
    auto gid = parse_number(h + 116, 8, "gid");
    auto mtime = parse_number(h + 136, 12, "mtime");
    auto major = parse_number(h + 329, 8, "devmajor");
    auto minor = parse_number(h + 337, 8, "devminor");
    for (auto* r : {&mode, &uid, &gid, &mtime, &major, &minor})
      if (!*r) return fail(r->error());
    e.mode = static_cast<uint32_t>(*mode & 07777);
    uint64_t u = pax.has_uid ? pax.uid : *uid, g = pax.has_gid ? pax.gid : *gid;
    if (u > 0xfffffffeu || g > 0xfffffffeu) return fail(invalid("tar: uid/gid out of range"));
    e.uid = static_cast<uint32_t>(u);
    e.gid = static_cast<uint32_t>(g);
    e.mtime = pax.has_mtime ? pax.mtime : static_cast<int64_t>(*mtime);
    e.devmajor = static_cast<uint32_t>(*major & 0xfffff);
    e.devminor = static_cast<uint32_t>(*minor & 0xfffff);
    e.size = pax.has_size ? pax.size : *size;
    e.xattrs = std::move(pax.xattrs);
    // Only regular files carry data; anything else's is skipped by next().
    remaining_ = e.size;
    padding_ = (kBlock - e.size % kBlock) % kBlock;
    return true;
  }
}

namespace {

// value in octal, right-aligned with leading zeros, NUL-terminated, in a
// field of len; false if it does not fit.
bool octal(char* field, size_t len, uint64_t value) {
  char* end = field + len - 1;
  *end = '\0';
  for (char* p = end; p > field;) {
    *--p = static_cast<char>('0' + (value & 7));
    value >>= 3;
  }
  return value == 0;
}

// One pax record: "LEN key=value\n", LEN counting itself.
void pax_record(std::string& out, std::string_view key, std::string_view value) {
  const size_t base = key.size() + value.size() + 3;  // ' ', '=', '\n'
  size_t len = base + 1;
  while (std::to_string(len).size() + base != len) ++len;
  out += std::to_string(len) + " " + std::string(key) + "=" + std::string(value) + "\n";
}

void checksum(char* block) {
  std::memset(block + 148, ' ', 8);
  unsigned sum = 0;
  for (size_t i = 0; i < kBlock; ++i) sum += static_cast<unsigned char>(block[i]);
  (void)octal(block + 148, 7, sum);
  block[155] = ' ';
}

// A ustar header block. A field that does not fit is 0: the caller's pax
// header holds the true value then.
void ustar(char* b, const std::string& name, const TarEntry& e, char type, uint64_t size) {
  std::memset(b, 0, kBlock);
  std::memcpy(b, name.data(), std::min<size_t>(name.size(), 100));
  (void)octal(b + 100, 8, e.mode & 07777);
  if (!octal(b + 108, 8, e.uid)) (void)octal(b + 108, 8, 0);
  if (!octal(b + 116, 8, e.gid)) (void)octal(b + 116, 8, 0);
  if (!octal(b + 124, 12, size)) (void)octal(b + 124, 12, 0);
  if (!octal(b + 136, 12, static_cast<uint64_t>(std::max<int64_t>(0, e.mtime))))
    (void)octal(b + 136, 12, 0);
  b[156] = type;
  std::memcpy(b + 157, e.linkname.data(), std::min<size_t>(e.linkname.size(), 100));
  std::memcpy(b + 257, "ustar", 6);
  std::memcpy(b + 263, "00", 2);
  (void)octal(b + 329, 8, e.devmajor);
  (void)octal(b + 337, 8, e.devminor);
  checksum(b);
}

}  // namespace

Status TarWriter::put(std::string_view bytes) {
  if (auto s = write_all(fd_, bytes); !s) return s;
  written_ += bytes.size();
  return {};
}

Status TarWriter::header(const TarEntry& e) {
  if (left_ != 0) return fail(internal("tar: an entry's data is short"));
  if (auto s = put(std::string(padding_, '\0')); !s) return s;
  padding_ = 0;
  const uint64_t size = e.type == '0' ? e.size : 0;
  char block[kBlock];
  std::string pax;
  if (e.path.size() > 100) pax_record(pax, "path", e.path);
  if (e.linkname.size() > 100) pax_record(pax, "linkpath", e.linkname);
  if (size > 077777777777ull) pax_record(pax, "size", std::to_string(size));
  if (e.uid > 07777777u) pax_record(pax, "uid", std::to_string(e.uid));
  if (e.gid > 07777777u) pax_record(pax, "gid", std::to_string(e.gid));
  if (!pax.empty()) {
    TarEntry x;
    x.mode = 0644;
    ustar(block, "PaxHeader", x, 'x', pax.size());
    if (auto s = put(std::string_view(block, kBlock)); !s) return s;
    pax.resize((pax.size() + kBlock - 1) / kBlock * kBlock, '\0');
    if (auto s = put(pax); !s) return s;
  }
  // Where the pax header holds the name, the ustar field gets a stand-in a
  // reader that ignores pax extracts harmlessly: never a cut of the name
  // (which could end in "..").
  ustar(block, e.path.size() > 100 ? std::string("PaxLongName") : e.path, e, e.type, size);
  if (auto s = put(std::string_view(block, kBlock)); !s) return s;
  left_ = size;
  padding_ = (kBlock - size % kBlock) % kBlock;
  return {};
}

Status TarWriter::data(std::string_view bytes) {
  if (bytes.size() > left_) return fail(internal("tar: more data than the entry's size"));
  left_ -= bytes.size();
  return put(bytes);
}

Status TarWriter::finish() {
  if (left_ != 0) return fail(internal("tar: an entry's data is short"));
  return put(std::string(padding_ + 2 * kBlock, '\0'));
}

}  // namespace cloister::oci

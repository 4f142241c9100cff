// oci/: references, the content store, and safe layer apply against a corpus
// of hostile layers. Every hostile case checks that nothing was written
// outside the layer directory (a sentinel directory on the host stays as it
// was) and that the error names the entry.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>

#include "gzip_member.h"
#include "isolate/fd.h"
#include "oci/image.h"
#include "oci/layer.h"
#include "oci/reference.h"
#include "oci/store.h"
#include "temp_dir.h"

namespace cloister::oci {
namespace {

// --- A tar writer for hand-made (hostile) layers. ---
class TarBuilder {
 public:
  struct Opt {
    std::string data, link;
    char type = '0';
    unsigned mode = 0644, uid = 0, gid = 0, major = 0, minor = 0;
    std::vector<std::pair<std::string, std::string>> xattrs;
  };
  TarBuilder& add(const std::string& name, Opt o) {
    std::string pax;
    for (auto& [k, v] : o.xattrs) pax += record("SCHILY.xattr." + k, v);
    if (name.size() > 99) pax += record("path", name);
    if (!pax.empty()) {
      header("pax", 'x', pax.size(), 0644, 0, 0, "", 0, 0);
      body(pax);
    }
    header(name.substr(0, 99), o.type, o.data.size(), o.mode, o.uid, o.gid, o.link, o.major,
           o.minor);
    body(o.data);
    return *this;
  }
  TarBuilder& file(const std::string& n, const std::string& data, unsigned mode = 0644) {
    return add(n, {.data = data, .mode = mode});
  }
  TarBuilder& dir(const std::string& n) { return add(n, {.type = '5', .mode = 0755}); }
  TarBuilder& symlink(const std::string& n, const std::string& to) {
    return add(n, {.link = to, .type = '2', .mode = 0777});
  }
  TarBuilder& hardlink(const std::string& n, const std::string& to) {
    return add(n, {.link = to, .type = '1'});
  }
  std::string finish() { return out_ + std::string(1024, '\0'); }

 private:
  static std::string record(const std::string& k, const std::string& v) {
    std::string rec = " " + k + "=" + v + "\n";
    size_t len = rec.size() + 1;
    while (std::to_string(len).size() + rec.size() != len) ++len;
    return std::to_string(len) + rec;
  }
  static void octal(char* f, size_t n, uint64_t v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%0*llo", static_cast<int>(n - 1),
                  static_cast<unsigned long long>(v));
    std::memcpy(f, buf, n - 1);  // the field's last byte stays NUL
  }
  void header(const std::string& name, char type, uint64_t size, unsigned mode, unsigned uid,
              unsigned gid, const std::string& link, unsigned major, unsigned minor) {
    char h[512] = {};
    std::memcpy(h, name.data(), std::min<size_t>(name.size(), 100));
    octal(h + 100, 8, mode);
    octal(h + 108, 8, uid);
    octal(h + 116, 8, gid);
    octal(h + 124, 12, size);
    octal(h + 136, 12, 0);
    h[156] = type;
    std::memcpy(h + 157, link.data(), std::min<size_t>(link.size(), 100));
    std::memcpy(h + 257,
                "ustar\0"
                "00",
                8);
    octal(h + 329, 8, major);
    octal(h + 337, 8, minor);
    std::memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (unsigned char c : h) sum += c;
    std::snprintf(h + 148, 8, "%06o", sum);
    out_.append(h, 512);
  }
  void body(const std::string& d) {
    out_ += d;
    out_.append((512 - d.size() % 512) % 512, '\0');
  }
  std::string out_;
};

std::string gzip(const std::string& in) {
  return cloister::testing::gzip_member(in);
}

std::string run(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  char buf[4096];
  while (p && !std::feof(p)) {
    size_t n = std::fread(buf, 1, sizeof buf, p);
    out.append(buf, n);
  }
  if (p) ::pclose(p);
  return out;
}

using Tmp = cloister::testing::TempDir;

// A layer dir and, beside it, a sentinel directory on the "host".
class Apply : public ::testing::Test {
 protected:
  void SetUp() override {
    root = tmp.path + "/layer";
    sentinel = tmp.path + "/sentinel";
    ::mkdir(root.c_str(), 0755);
    ::mkdir(sentinel.c_str(), 0755);
    std::ofstream(sentinel + "/file") << "original";
    before = listing();
  }
  std::string listing() {
    return run("cd '" + sentinel + "' && find . -printf '%p %s %m\\n' | sort && cat file");
  }
  Result<ApplyResult> apply(const std::string& tar, ApplyOptions o = {}) {
    std::string blob = gzip(tar);
    MemoryStream in(blob);
    auto fd = open_fd(root, O_RDONLY | O_DIRECTORY);
    EXPECT_TRUE(fd);
    return apply_layer(in, fd->get(), o);
  }
  void refused(const std::string& tar, const std::string& entry, ApplyOptions o = {}) {
    auto r = apply(tar, o);
    ASSERT_FALSE(r) << "layer with " << entry << " was accepted";
    EXPECT_NE(r.error().what().find(entry), std::string::npos) << r.error().what();
    EXPECT_EQ(listing(), before) << "the sentinel directory changed";
  }
  Tmp tmp;
  std::string root, sentinel, before;
};

TEST(OciReference, Normalises) {
  struct Case {
    const char* in;
    const char* out;
  } cases[] = {
      {"alpine", "docker.io/library/alpine:latest"},
      {"alpine:3.19", "docker.io/library/alpine:3.19"},
      {"user/app", "docker.io/user/app:latest"},
      {"index.docker.io/library/alpine", "docker.io/library/alpine:latest"},
      {"127.0.0.1:5000/busybox", "127.0.0.1:5000/busybox:latest"},
      {"localhost/a/b:v1", "localhost/a/b:v1"},
      {"ghcr.io/o/r@sha256:" + std::string(64, 'a') == "" ? "" : "", ""},
  };
  for (const auto& c : cases) {
    if (!*c.in) continue;
    auto r = parse_reference(c.in);
    ASSERT_TRUE(r) << c.in << ": " << r.error().what();
    EXPECT_EQ(r->str(), c.out) << c.in;
  }
  const std::string dig = "sha256:" + std::string(64, 'a');
  auto r = parse_reference("ghcr.io/o/r@" + dig);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->str(), "ghcr.io/o/r@" + dig);
  EXPECT_EQ(r->manifest_ref(), dig);
  EXPECT_TRUE(parse_reference("127.0.0.1:5000/x")->loopback());
  EXPECT_FALSE(parse_reference("example.com/x")->loopback());
  for (const char* bad :
       {"", "UPPER", "a//b", "a:", "a@sha256:12", "-a", "a:tag!", "host:99999x/a"})
    EXPECT_FALSE(parse_reference(bad)) << bad;
}

TEST(OciImage, PlatformSelectionSkipsAttestations) {
  const std::string d1 = "sha256:" + std::string(64, '1'), d2 = "sha256:" + std::string(64, '2'),
                    d3 = "sha256:" + std::string(64, '3');
  std::string idx = R"({"schemaVersion":2,"manifests":[
    {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":")" +
                    d3 +
                    R"(","size":1,"platform":{"os":"unknown","architecture":"unknown"},
     "annotations":{"vnd.docker.reference.type":"attestation-manifest"}},
    {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":")" +
                    d1 +
                    R"(","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
    {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":")" +
                    d2 + R"(","size":1,"platform":{"os":"linux","architecture":"amd64"}}]})";
  auto i = parse_index(idx);
  ASSERT_TRUE(i) << i.error().what();
  auto pick = select_platform(*i, {"linux", "amd64", ""});
  ASSERT_TRUE(pick);
  EXPECT_EQ(pick->digest.str(), d2);
  pick = select_platform(*i, {"linux", "arm64", "v8"});
  ASSERT_TRUE(pick);
  EXPECT_EQ(pick->digest.str(), d1);
  auto none = select_platform(*i, {"linux", "s390x", ""});
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().kind, ErrorKind::NotFound);
  EXPECT_NE(none.error().message.find("linux/arm64/v8, linux/amd64"), std::string::npos)
      << none.error().message;
}

TEST_F(Apply, GoodLayerWithWhiteoutsOpaqueSetuidAndXattrs) {
  TarBuilder t;
  t.dir("etc").file("etc/motd", "hi\n").dir("data");
  t.add("data/.wh..wh..opq", {});
  t.add(".wh.gone", {});
  t.add("bin/su",
        {.data = "x",
         .mode = 04755,
         .uid = 1000,
         .gid = 1000,
         .xattrs = {{"user.keep", "1"}, {"trusted.evil", "1"}, {"security.selinux", "x"}}});
  t.hardlink("bin/su2", "bin/su");
  t.symlink("abs", "/etc/motd");
  auto r = apply(t.finish());
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ(r->entries, 8u);
  struct stat st;
  ASSERT_EQ(::lstat((root + "/gone").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(0, 0));
  char v[8] = {};
  // trusted.* in root's store, user.* in an ordinary user's (oci/store.h).
  EXPECT_EQ(::getxattr((root + "/data").c_str(), oci::opaque_xattr(), v, sizeof v), 1);
  EXPECT_EQ(v[0], 'y');
  ASSERT_EQ(::stat((root + "/bin/su").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 04755u) << "setuid must survive the chown";
  // An ordinary user's store keeps no owners: every file is the user's.
  EXPECT_EQ(st.st_uid, oci::user_store() ? ::geteuid() : 1000u);
  EXPECT_EQ(st.st_nlink, 2u);
  EXPECT_GT(::getxattr((root + "/bin/su").c_str(), "user.keep", v, sizeof v), 0);
  EXPECT_LT(::getxattr((root + "/bin/su").c_str(), "trusted.evil", v, sizeof v), 0);
  EXPECT_EQ(run("readlink '" + root + "/abs'"), "/etc/motd\n");
  EXPECT_EQ(r->diff_id, sha256_of(t.finish()));
}

TEST_F(Apply, WhiteoutOfACachedParentIsSeen) {
  // a/b is the cached parent when its whiteout arrives; a later a/b/y must
  // not land in the removed directory unseen.
  auto r = apply(TarBuilder()
                     .dir("a")
                     .dir("a/b")
                     .file("a/b/x", "1")
                     .add("a/.wh.b", {})
                     .file("a/b/y", "2")
                     .finish());
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().what().find("a/b/y"), std::string::npos) << r.error().what();
}

TEST_F(Apply, LaterEntriesReplaceEarlierOnes) {
  // A directory replaced by a file, a file by a directory, a file by a symlink.
  auto r = apply(TarBuilder()
                     .dir("d")
                     .dir("d/sub")
                     .file("d/sub/x", "1")
                     .file("d/sub", "now a file")
                     .file("f", "1")
                     .dir("f")
                     .file("f/in", "2")
                     .file("s", "1")
                     .symlink("s", "f")
                     .finish());
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ(run("cat '" + root + "/d/sub' '" + root + "/f/in'; readlink '" + root + "/s'"),
            "now a file2f\n");
}

TEST_F(Apply, PathTraversalRefused) {
  refused(TarBuilder().file("../sentinel/file", "pwned").finish(), "../sentinel/file");
  refused(TarBuilder().file("a/../../sentinel/x", "pwned").finish(), "a/../../sentinel/x");
}

TEST_F(Apply, AbsolutePathsStayInside) {
  ASSERT_TRUE(apply(TarBuilder().file(sentinel + "/file", "pwned").finish()));
  EXPECT_EQ(listing(), before);
  EXPECT_EQ(run("cat '" + root + sentinel + "/file'"), "pwned");
}

TEST_F(Apply, SymlinkEscapesStayInside) {
  // A symlink to the host directory, then writes through it: resolved in the
  // layer root, they land inside the layer (where that path exists in it).
  auto r = apply(TarBuilder()
                     .file(sentinel + "/file", "inner")
                     .symlink("esc", sentinel)
                     .file("esc/file", "pwned")
                     .symlink("rel", "../../../../../../" + sentinel)
                     .file("rel/new", "pwned")
                     .finish());
  ASSERT_TRUE(r) << r.error().what();
  EXPECT_EQ(listing(), before);
  EXPECT_EQ(run("cat '" + root + sentinel + "/file' '" + root + sentinel + "/new'"), "pwnedpwned");
  // Through a symlink whose target is missing in the layer: refused, naming it.
  refused(TarBuilder().symlink("dangling", sentinel + "/sub").file("dangling/x", "p").finish(),
          "dangling/x");
  // A symlink planted at a name, then a file at that name: replaced, not followed.
  auto r2 = apply(TarBuilder().symlink("f", sentinel + "/file").file("f", "pwned").finish());
  ASSERT_TRUE(r2) << r2.error().what();
  EXPECT_EQ(listing(), before);
  EXPECT_EQ(run("cat '" + root + "/f'"), "pwned");
}

TEST_F(Apply, HardlinkEscapesRefused) {
  refused(TarBuilder().hardlink("h", "../sentinel/file").finish(), "'h'");
  refused(TarBuilder().hardlink("h", sentinel + "/file").finish(), "'h'");
  refused(TarBuilder().symlink("s", sentinel).hardlink("h", "s/file").finish(), "'h'");
  refused(TarBuilder().dir("d").hardlink("h", "d").finish(), "hardlink to a directory");
}

TEST_F(Apply, RootReplacementRefused) {
  refused(TarBuilder().symlink(".", sentinel).finish(), "layer root");
  refused(TarBuilder().symlink("./", "/").finish(), "layer root");
  refused(TarBuilder().file("/", "x").finish(), "layer root");
  struct stat st;
  ASSERT_EQ(::lstat(root.c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
}

TEST_F(Apply, ReservedWhiteoutsRefused) {
  refused(TarBuilder().add("a/.wh..", {}).finish(), "reserved whiteout name");
  refused(TarBuilder().add(".wh.", {}).finish(), "reserved whiteout name");
  refused(TarBuilder().add(".wh...", {}).finish(), "reserved whiteout name");
}

TEST_F(Apply, DeviceNodesRefusedUnlessAllowed) {
  auto tar = TarBuilder().add("dev/mem", {.type = '3', .major = 1, .minor = 1}).finish();
  refused(tar, "device nodes are not allowed");
  refused(TarBuilder().add("dev/sda", {.type = '4', .major = 8, .minor = 0}).finish(), "dev/sda");
  if (::geteuid() != 0)
    GTEST_SKIP() << "run as uid " << ::geteuid() << ": making a device node needs CAP_MKNOD";
  ApplyOptions o;
  o.allow_devices = true;
  ASSERT_TRUE(apply(
      TarBuilder().add("dev/null", {.type = '3', .mode = 0666, .major = 1, .minor = 3}).finish(),
      o));
}

TEST_F(Apply, DecompressionBombStopped) {
  std::string big(64 << 20, '\0');
  auto tar = TarBuilder().file("zeros", big).finish();
  ApplyOptions o;
  o.max_uncompressed = 8 << 20;
  auto r = apply(tar, o);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ErrorKind::Limit);
  o = {};
  o.max_entries = 10;
  TarBuilder many;
  for (int i = 0; i < 20; ++i) many.file("f" + std::to_string(i), "");
  r = apply(many.finish(), o);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ErrorKind::Limit);
}

TEST_F(Apply, DigestSizeAndTruncation) {
  auto tar = TarBuilder().file("a", "b").finish();
  const std::string blob = gzip(tar);
  ApplyOptions o;
  o.expect_digest = sha256_of("something else");
  EXPECT_FALSE(apply(tar, o));
  o = {};
  o.expect_size = blob.size() - 1;
  auto r = apply(tar, o);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().kind, ErrorKind::Limit);
  o = {};
  o.expect_diff_id = sha256_of("x");
  r = apply(tar, o);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().what().find("diff_id"), std::string::npos);
  // Truncated: half of the gzip stream.
  std::string half = blob.substr(0, blob.size() / 2);
  MemoryStream in(half);
  auto fd = open_fd(root, O_RDONLY | O_DIRECTORY);
  auto t = apply_layer(in, fd->get(), {});
  ASSERT_FALSE(t);
  EXPECT_EQ(listing(), before);
}

TEST(OciStore, FailedLayerLeavesNothingAndConcurrentMakersShareWork) {
  Tmp tmp;
  auto store = Store::open(tmp.path + "/store");
  ASSERT_TRUE(store) << store.error().what();
  const Digest chain = sha256_of("layer");
  auto r = store->ensure_layer(chain, [](int fd) -> Result<std::string> {
    Fd f(::openat(fd, "partial", O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
    return fail(invalid("broken layer"));
  });
  ASSERT_FALSE(r);
  EXPECT_FALSE(store->has_layer(chain));
  EXPECT_EQ(run("ls -A '" + tmp.path + "/store/tmp' '" + tmp.path + "/store/layers/sha256'"),
            tmp.path + "/store/layers/sha256:\n\n" + tmp.path + "/store/tmp:\n");
  std::atomic<int> made{0};
  auto maker = [&] {
    auto s = Store::open(tmp.path + "/store");
    auto res = s->ensure_layer(chain, [&](int fd) -> Result<std::string> {
      ++made;
      ::usleep(200000);  // long enough for the other to queue on the lock
      Fd f(::openat(fd, "file", O_CREAT | O_WRONLY | O_CLOEXEC, 0600));
      return std::string("{}");
    });
    EXPECT_TRUE(res);
  };
  std::thread a(maker), b(maker);
  a.join();
  b.join();
  EXPECT_EQ(made.load(), 1);
  EXPECT_TRUE(store->has_layer(chain));
  EXPECT_EQ(::access((store->layer_rootfs(chain) + "/file").c_str(), F_OK), 0);
}

class MapSource : public BlobSource {
 public:
  std::map<std::string, std::string> blobs;
  Result<std::string> fetch(const Descriptor& d) override {
    auto it = blobs.find(d.digest.str());
    if (it == blobs.end()) return fail(make_error(ErrorKind::NotFound, "no blob"));
    if (it->second.size() != d.size || sha256_of(it->second) != d.digest)
      return fail(invalid("blob mismatch"));
    return it->second;
  }
  Result<std::unique_ptr<ByteStream>> open_blob(const Descriptor& d) override {
    auto it = blobs.find(d.digest.str());
    if (it == blobs.end()) return fail(make_error(ErrorKind::NotFound, "no blob"));
    return std::unique_ptr<ByteStream>(std::make_unique<MemoryStream>(it->second));
  }
  Descriptor put(const std::string& data, const std::string& type) {
    Descriptor d{type, sha256_of(data), data.size()};
    blobs[d.digest.str()] = data;
    return d;
  }
};

TEST(OciImport, MediaTypeMismatchAndBadLayerRefused) {
  Tmp tmp;
  auto store = Store::open(tmp.path + "/store");
  MapSource src;
  auto tar = TarBuilder().file("ok", "1").finish();
  auto layer = src.put(gzip(tar), "application/vnd.oci.image.layer.v1.tar+gzip");
  auto cfg = src.put(R"({"rootfs":{"type":"layers","diff_ids":[")" + sha256_of(tar).str() +
                         R"("]},"config":{"Cmd":["sh"]}})",
                     media::kOciConfig);
  auto manifest_text =
      R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":")" +
      std::string(media::kOciConfig) + R"(","digest":")" + cfg.digest.str() + R"(","size":)" +
      std::to_string(cfg.size) +
      R"(},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":")" +
      layer.digest.str() + R"(","size":)" + std::to_string(layer.size) + "}]}";
  auto m = src.put(manifest_text, media::kOciManifest);
  Descriptor wrong = m;
  wrong.media_type = media::kOciIndex;
  auto r = import_image(*store, src, wrong, "localhost/x:1", {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().what().find("mediaType"), std::string::npos) << r.error().what();
  auto ok = import_image(*store, src, m, "localhost/x:1", {});
  ASSERT_TRUE(ok) << ok.error().what();
  EXPECT_EQ(ok->chain_ids.size(), 1u);
  auto resolved = resolve_image(*store, "localhost/x:1");
  ASSERT_TRUE(resolved) << resolved.error().what();
  EXPECT_EQ(resolved->config.cmd, std::vector<std::string>{"sh"});
  // Nested indexes: index -> index (with an attestation) -> manifest.
  const std::string inner =
      R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":")" +
      m.digest.str() + R"(","size":)" + std::to_string(m.size) +
      R"(,"platform":{"os":"unknown","architecture":"unknown"},"annotations":{"vnd.docker.reference.type":"attestation-manifest"}},{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":")" +
      m.digest.str() + R"(","size":)" + std::to_string(m.size) +
      R"(,"platform":{"os":"linux","architecture":")" + host_platform().architecture + R"("}}]})";
  auto in = src.put(inner, media::kOciIndex);
  const std::string outer =
      R"({"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":")" +
      in.digest.str() + R"(","size":)" + std::to_string(in.size) +
      R"(,"platform":{"os":"linux","architecture":")" + host_platform().architecture + R"("}}]})";
  auto out = src.put(outer, media::kOciIndex);
  auto nested = import_image(*store, src, out, "localhost/x:nested", {});
  ASSERT_TRUE(nested) << nested.error().what();
  EXPECT_EQ(nested->manifest, m.digest);
  ASSERT_TRUE(store->remove_image("localhost/x:nested"));
  // A descriptor whose size is wrong is refused before the document is used.
  Descriptor short_m = m;
  short_m.size -= 1;
  EXPECT_FALSE(import_image(*store, src, short_m, "localhost/x:short", {}));

  // prune keeps what the record uses, rmi + prune frees it.
  auto p = store->prune();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->layers, 0);
  EXPECT_EQ(p->blobs, 2);  // the two indexes of the removed nested record
  ASSERT_TRUE(store->remove_image("localhost/x:1"));
  p = store->prune();
  ASSERT_TRUE(p);
  EXPECT_EQ(p->layers, 1);
  EXPECT_EQ(p->blobs, 2);  // manifest and config
}

}  // namespace
}  // namespace cloister::oci

#include "oci/digest.h"

#include <dlfcn.h>
#include <openssl/evp.h>

#include <mutex>

namespace cloister::oci {
namespace {

// libcrypto is loaded on first use: linked in, its constructor runs CPUID
// (a VM exit under virtualisation) at every start of every binary, which
// measurably slowed `cloister --version` and every `cloister exec`; only
// image operations hash.
struct Evp {
  EVP_MD_CTX* (*ctx_new)();
  void (*ctx_free)(EVP_MD_CTX*);
  int (*init)(EVP_MD_CTX*, const EVP_MD*, ENGINE*);
  int (*update)(EVP_MD_CTX*, const void*, size_t);
  int (*final)(EVP_MD_CTX*, unsigned char*, unsigned int*);
  const EVP_MD* (*sha256)();
};

const Evp* evp() {
  static Evp api;
  static bool ok = false;
  static std::once_flag once;
  std::call_once(once, [] {
    void* h = ::dlopen("libcrypto.so.3", RTLD_NOW | RTLD_LOCAL);
    if (!h) return;
    api.ctx_new = reinterpret_cast<decltype(api.ctx_new)>(::dlsym(h, "EVP_MD_CTX_new"));
    api.ctx_free = reinterpret_cast<decltype(api.ctx_free)>(::dlsym(h, "EVP_MD_CTX_free"));
    api.init = reinterpret_cast<decltype(api.init)>(::dlsym(h, "EVP_DigestInit_ex"));
    api.update = reinterpret_cast<decltype(api.update)>(::dlsym(h, "EVP_DigestUpdate"));
    api.final = reinterpret_cast<decltype(api.final)>(::dlsym(h, "EVP_DigestFinal_ex"));
    api.sha256 = reinterpret_cast<decltype(api.sha256)>(::dlsym(h, "EVP_sha256"));
    ok = api.ctx_new && api.ctx_free && api.init && api.update && api.final && api.sha256;
  });
  return ok ? &api : nullptr;
}

}  // namespace

Result<Digest> parse_digest(std::string_view text) {
  constexpr std::string_view kPrefix = "sha256:";
  if (text.substr(0, kPrefix.size()) != kPrefix || text.size() != kPrefix.size() + 64)
    return fail(invalid("digest '" + std::string(text.substr(0, 80)) +
                        "': expected sha256:<64 hex digits>"));
  for (char c : text.substr(kPrefix.size()))
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
      return fail(invalid("digest '" + std::string(text) + "': not lowercase hex"));
  return Digest{"sha256", std::string(text.substr(kPrefix.size()))};
}

struct Sha256::Impl {
  const Evp* api = evp();
  EVP_MD_CTX* ctx = api ? api->ctx_new() : nullptr;
  ~Impl() {
    if (ctx) api->ctx_free(ctx);
  }
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  if (impl_->ctx) impl_->api->init(impl_->ctx, impl_->api->sha256(), nullptr);
}
Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::update(const void* data, size_t len) {
  if (len && impl_->ctx) impl_->api->update(impl_->ctx, data, len);
}

Digest Sha256::finish() {
  // Without libcrypto the digest is "sha256:unavailable", which matches no
  // valid digest: every verification fails closed.
  if (!impl_->ctx) return Digest{"sha256", "unavailable (libcrypto.so.3 not loadable)"};
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  impl_->api->final(impl_->ctx, md, &len);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(len * 2);
  for (unsigned i = 0; i < len; ++i) {
    hex += kHex[md[i] >> 4];
    hex += kHex[md[i] & 15];
  }
  return Digest{"sha256", std::move(hex)};
}

Digest sha256_of(std::string_view data) {
  Sha256 h;
  h.update(data.data(), data.size());
  return h.finish();
}

}  // namespace cloister::oci

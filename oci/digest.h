// Content digests ("sha256:<64 hex>") and a streaming SHA-256 over OpenSSL's
// EVP interface. A Digest is only ever built from validated text, so its hex
// part is safe to use as a file name in the content store.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "isolate/error.h"

namespace cloister::oci {

struct Digest {
  std::string algorithm;  // "sha256" (the only one the store accepts)
  std::string hex;        // 64 lowercase hex digits
  std::string str() const { return algorithm + ":" + hex; }
  bool operator==(const Digest&) const = default;
};

// Accepts exactly "sha256:" followed by 64 lowercase hex digits.
Result<Digest> parse_digest(std::string_view text);

// Incremental SHA-256.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  void update(const void* data, size_t len);
  // Ends the computation; the object may not be updated afterwards.
  Digest finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

Digest sha256_of(std::string_view data);

}  // namespace cloister::oci

// Image references, parsed and normalised the way Docker does:
//   alpine                      -> docker.io/library/alpine:latest
//   user/app:1.2                -> docker.io/user/app:1.2
//   127.0.0.1:5000/busybox      -> 127.0.0.1:5000/busybox:latest
//   localhost/app@sha256:...    -> localhost/app@sha256:... (tag optional)
// The first component is a registry host when it contains '.' or ':' or is
// "localhost"; "index.docker.io" is spelt "docker.io".
#pragma once

#include <string>
#include <string_view>

#include "isolate/error.h"

namespace cloister::oci {

struct Reference {
  std::string registry;    // "docker.io", "127.0.0.1:5000"
  std::string repository;  // "library/alpine"
  std::string tag;         // "latest" unless only a digest was given
  std::string digest;      // "sha256:..." or ""

  // The canonical form: registry/repository[:tag][@digest].
  std::string str() const;
  // registry/repository
  std::string name() const { return registry + "/" + repository; }
  // What to ask the registry's manifest endpoint for: the digest, else the tag.
  std::string manifest_ref() const { return digest.empty() ? tag : digest; }
  // True for loopback registries (localhost, 127.0.0.0/8, [::1]).
  bool loopback() const;
};

Result<Reference> parse_reference(std::string_view text);

}  // namespace cloister::oci

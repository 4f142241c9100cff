// The registry client: pulls an image over the OCI distribution API into the
// store, through the same import pipeline as `cloister load`.
//
//  - GET /v2/ and its challenge: Bearer (a token from the realm, anonymous or
//    with credentials) or Basic;
//  - credentials from $REGISTRY_AUTH_FILE, containers' auth.json
//    ($XDG_RUNTIME_DIR/containers/auth.json, ~/.config/containers/auth.json)
//    and ~/.docker/config.json: `auths` entries, and `credHelpers` /
//    `credsStore` through the docker-credential-<helper> protocol;
//  - manifests asked for with the OCI and Docker Accept types; the document's
//    mediaType must match the Content-Type; digests and sizes checked;
//  - blobs streamed straight into safe apply (no temp file), layers in
//    parallel; redirects followed (libcurl drops Authorization when the host
//    changes); retries with backoff that resume with Range, and cope with a
//    200 answer by skipping what was already consumed;
//  - plain HTTP only for registries listed as insecure; loopback registries
//    (localhost, 127.0.0.0/8, [::1]) are insecure by default, as in Docker;
//  - mirrors: tried in order before the registry itself.
// libcurl is loaded with dlopen on the first pull, so the CLI's other verbs
// do not pay for its dynamic linking.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "isolate/error.h"
#include "oci/image.h"
#include "oci/store.h"

namespace cloister::oci {

struct RegistryOptions {
  std::vector<std::string> insecure;                        // host[:port]
  std::map<std::string, std::vector<std::string>> mirrors;  // registry -> mirrors
  std::string auth_file;                                    // "" = the default search list
  int retries = 4;
  bool loopback_insecure = true;
};

Result<ImageRecord> pull_image(const Store& store, const std::string& reference,
                               const RegistryOptions& registry, const ImportOptions& options);

}  // namespace cloister::oci

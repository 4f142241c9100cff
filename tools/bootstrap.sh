#!/usr/bin/env bash
# Installs what cloister needs to build and test (Debian packages, only those
# missing), then configures and builds into build/. Idempotent; run as root
# (or with sudo available) on a fresh Debian 12 machine.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config clang-format
  libseccomp-dev libcap-dev libnl-3-dev libnl-route-3-dev libyaml-cpp-dev
  nlohmann-json3-dev libcli11-dev libfmt-dev libsystemd-dev libgtest-dev
  util-linux iproute2 procps
  uidmap  # newuidmap/newgidmap: an ordinary user's subordinate range
)
# oci/: layer decompression (isa-l, zstd) and digests, the registry client,
# and what the image tests (zlib makes their gzip layers) and the demo use (a real registry, busybox-static, zstd, python3).
PACKAGES+=(zlib1g-dev libisal-dev libzstd-dev libssl-dev libcurl4-openssl-dev docker-registry busybox-static
  zstd python3 python3-cryptography)
# Peers for the side-by-side benchmarks and tests, and the clients of
# cloister-oci (tests/clients/run.sh: containerd's ctr and runc shim, podman;
# tests/clients/runtime_tools.sh: runc and golang-go, which builds the OCI
# runtime-tools suite offline).
PACKAGES+=(bubblewrap hyperfine containerd podman runc golang-go)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "bootstrap: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
if [ ! -f build/build.ninja ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" >/dev/null
fi
cmake --build build -j"$(nproc)"

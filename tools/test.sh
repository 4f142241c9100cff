#!/usr/bin/env bash
# The test suite: bootstrap (packages + build), then every ctest group.
#   unit         GoogleTest units, no privileges needed
#   integration  real namespaces, cgroups and seccomp on this host (root)
#   clients      cloister-oci under real clients: containerd's runc shim (ctr)
#                and podman's conmon, in private directories
#                (tests/clients/run.sh; CLIENTS_WITH_* there turn on more)
#   unprivileged the host executor's suite again as an ordinary user this
#                creates (tests/unprivileged/run.sh)
#   vm           the cgroup and isolation tests again inside a qemu guest
#                with a pure cgroup-v2 hierarchy (tests/vm/README.md), and
#                the unprivileged run with a delegated cgroup
#   slow         cloisterd at scale: 1,000 concurrent and 10,000 sequential
#                sessions (about 1.5 min; docs/benchmarks.md, Service section)
# Set CLOISTER_TEST_LABELS to run only some groups, e.g. "unit|integration".
set -euo pipefail
cd "$(dirname "$0")/.."

tools/bootstrap.sh

if [ "$(id -u)" -ne 0 ]; then
  echo "test.sh: the integration, clients and vm groups need root; run as root" >&2
  exit 1
fi

labels=${CLOISTER_TEST_LABELS:-unit|integration|clients|unprivileged|vm|slow}
start=$(date +%s)
ctest --test-dir build -L "$labels" --output-on-failure --timeout 1500 -j1
echo "test.sh: all groups ($labels) passed in $(( $(date +%s) - start )) s"

#!/usr/bin/env bash
# The OCI runtime-tools validation suite (opencontainers/runtime-tools at the
# commit Debian packages) over runc and over cloister-oci, side by side.
#   runtime_tools.sh [CLOISTER_OCI]   (default: build/bin/cloister-oci)
# Builds the suite offline from the source tarball (with its vendor/) with
# Debian's golang-go, once per tarball (cached in $RUNTIME_TOOLS_CACHE), then
# runs every validation test with RUNTIME=runc and with RUNTIME=cloister-oci.
# A test passes when it exits 0 and its TAP stream has an "ok" line and no
# "not ok" line (a runtimetest that is not static gives an empty stream).
#
# Prints one line per test ("NAME runc=pass cloister-oci=fail") and writes
# them to $RUNTIME_TOOLS_RESULTS; exits 1 when cloister-oci fails a test
# that runc passes (but for the by-design list below, each with its reason),
# or leaves a container or mount behind.
# The suite's own leftovers (bundle mounts, its cgroups "cgrouptest" and
# "testdir", containers it did not delete) are removed after every test,
# for either runtime, before the check.
# Exit 77 (skipped, with the reason) without root, go, runc or the tarball.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OCI=$(realpath "${1:-$ROOT/build/bin/cloister-oci}")
TARBALL=${RUNTIME_TOOLS_TARBALL:-}
if [[ -z $TARBALL ]]; then
  for d in "$ROOT/../shared/runtime-tools" /work/shared/runtime-tools; do
    t=$(ls "$d"/runtime-tools-*.tar.gz 2>/dev/null | head -1)
    [[ -n $t ]] && TARBALL=$t && break
  done
fi
CACHE=${RUNTIME_TOOLS_CACHE:-/var/tmp/cloister-runtime-tools}
RESULTS=${RUNTIME_TOOLS_RESULTS:-$ROOT/build/runtime-tools-results.txt}
PER_TEST_TIMEOUT=${RUNTIME_TOOLS_TIMEOUT:-60}

skip() {
  echo "skip - runtime-tools: $*"
  exit 77
}
[[ $(id -u) -eq 0 ]] || skip "needs root (both runtimes make cgroups and mounts)"
command -v go > /dev/null || skip "needs go (apt-get install golang-go)"
RUNC=$(command -v runc) || skip "needs runc (apt-get install runc) to compare with"
[[ -n $TARBALL && -f $TARBALL ]] ||
  skip "no runtime-tools source tarball (set RUNTIME_TOOLS_TARBALL; ../shared/runtime-tools/)"
[[ -x $OCI ]] || {
  echo "not ok - runtime-tools: $OCI is not an executable"
  exit 1
}

# Build once per tarball: runtimetest static (netgo, osusergo), as the README
# of the tarball says, and one binary per validation test.
key=$(sha256sum "$TARBALL" | cut -c1-16)
SRC=$CACHE/$key/runtime-tools
if [[ ! -f $CACHE/$key/built ]]; then
  rm -rf "${CACHE:?}/$key"
  mkdir -p "$CACHE/$key"
  tar -xzf "$TARBALL" -C "$CACHE/$key" || exit 1
  (
    cd "$SRC" || exit 1
    export GOFLAGS=-mod=vendor GOPROXY=off GO111MODULE=on GOCACHE=$CACHE/gocache
    go build -tags "netgo osusergo" -ldflags "-extldflags -static" -o runtimetest ./cmd/runtimetest &&
      for f in $(find validation -name '*.go' | grep -v /util/ | sort); do
        go build -o "${f%.go}.t" "$f" || exit 1
      done
  ) > "$CACHE/$key/build.log" 2>&1 || {
    echo "not ok - runtime-tools: build failed ($CACHE/$key/build.log):"
    tail -20 "$CACHE/$key/build.log"
    exit 1
  }
  if ! file "$SRC/runtimetest" | grep -q 'statically linked'; then
    echo "not ok - runtime-tools: runtimetest is not static (its TAP output would be empty)"
    exit 1
  fi
  touch "$CACHE/$key/built"
fi

WORK=$(mktemp -d /var/tmp/cloister-rt.XXXXXX)
chmod 0755 "$WORK"
OCI_ROOT=/run/cloister-oci
RUNC_ROOT=/run/runc

# What a test may leave, for either runtime: mounts below the work dir, the
# suite's cgroups, containers in the runtimes' default roots (the suite
# passes no --root) whose bundle is in the work dir.
cleanup_after_test() {
  local rt
  for rt in "$RUNC" "$OCI"; do
    local root=$RUNC_ROOT
    [[ $rt == "$OCI" ]] && root=$OCI_ROOT
    for d in "$root"/*/; do
      [[ -d $d ]] || continue
      local id
      id=$(basename "$d")
      if "$rt" state "$id" 2> /dev/null | grep -q "\"bundle\": *\"$WORK"; then
        echo "note - $1: the test left $(basename "$rt") container $id (deleted now)"
        "$rt" delete --force "$id" > /dev/null 2>&1
      fi
    done
  done
  awk -v w="$WORK" '$5 ~ "^"w {print $5}' /proc/self/mountinfo | sort -r |
    while read -r m; do umount -l "$m" 2> /dev/null; done
  local cg
  for cg in $(find /sys/fs/cgroup -depth -type d \( -name cgrouptest -o -name testdir \) \
    2> /dev/null); do
    find "$cg" -depth -type d | while read -r d; do
      if [[ -f $d/cgroup.kill ]]; then echo 1 > "$d/cgroup.kill" 2> /dev/null; fi
      for p in $(cat "$d/cgroup.procs" 2> /dev/null); do kill -9 "$p" 2> /dev/null; done
      rmdir "$d" 2> /dev/null
    done
  done
}

# Tests runc passes here that cloister-oci fails on purpose: each config
# asks for something cloister refuses because it weakens isolation, or does
# differently by design (docs/oci-runtime.md, "runtime-tools"). Anything
# else runc passes, cloister-oci must pass.
declare -A by_design=(
  [config_updates_without_affect]="its config sets linux.rootfsPropagation shared: refused, a container's mounts never propagate to the host"
  [mounts]="binds the host's /etc with shared and rshared propagation: refused, as above"
  [linux_ns_itype]="leaves out the pid namespace to share the host's: refused, a container always gets its own"
  [linux_uid_mappings]="maps host uid 0 into the container (hostID 0): refused, the payload's root is never host root"
  [linux_ns_path]="joins pid and mount namespaces by path as well: only network, ipc and uts namespaces may be joined (docs/oci-runtime.md)"
  [killsig]="checks for a file the payload writes into the bundle's rootfs: a writable root is an overlay whose writes stay in the container (docs/oci-runtime.md, root)"
)

declare -A result
tests=$(cd "$SRC" && find validation -name '*.t' | sort)
for rt in "$RUNC" "$OCI"; do
  for t in $tests; do
    name=$(basename "$t" .t)
    tmp=$WORK/tmp
    mkdir -p "$tmp" && chmod 0755 "$tmp"
    out=$WORK/$name.$(basename "$rt").tap
    (cd "$SRC" && RUNTIME=$rt TMPDIR=$tmp timeout -k 5 "$PER_TEST_TIMEOUT" "./$t") \
      > "$out" 2>&1
    rc=$?
    verdict=fail
    if [[ $rc -eq 0 ]] && grep -q '^ok ' "$out" && ! grep -q '^not ok ' "$out"; then
      verdict=pass
    fi
    result[$name,$(basename "$rt")]=$verdict
    cleanup_after_test "$name"
    rm -rf "$tmp"
  done
done

status=0
: > "$RESULTS"
runc_pass=0
oci_pass=0
for t in $tests; do
  name=$(basename "$t" .t)
  r=${result[$name,runc]}
  c=${result[$name,$(basename "$OCI")]}
  [[ $r == pass ]] && runc_pass=$((runc_pass + 1))
  [[ $c == pass ]] && oci_pass=$((oci_pass + 1))
  line="$name runc=$r cloister-oci=$c"
  echo "$line" >> "$RESULTS"
  if [[ $r == pass && $c != pass && -n ${by_design[$name]:-} ]]; then
    echo "ok - $line: by design: ${by_design[$name]}"
  elif [[ $r == pass && $c != pass ]]; then
    echo "not ok - $line: cloister-oci fails what runc passes ($WORK/$name.$(basename "$OCI").tap)"
    sed 's/^/    /' "$WORK/$name.$(basename "$OCI").tap" | grep -v '^    ok ' | head -20
    status=1
  else
    echo "ok - $line"
    if [[ $c == pass && -n ${by_design[$name]:-} ]]; then
      echo "note - $name passes now: take it off the by-design list"
    fi
  fi
done
echo "runtime-tools: $(echo "$tests" | wc -w) tests; runc passes $runc_pass, cloister-oci $oci_pass"

# Nothing of ours may be left: containers, processes of their bundles, mounts.
left=$(ls "$OCI_ROOT" 2> /dev/null | wc -l)
if ((left > 0)) && ls "$OCI_ROOT"/*/state.json > /dev/null 2>&1; then
  for s in "$OCI_ROOT"/*/state.json; do
    if grep -q "\"bundle\":\"$WORK" "$s"; then
      echo "not ok - runtime-tools: a cloister-oci container is left: $s"
      status=1
    fi
  done
fi
if grep -q " $WORK" /proc/self/mountinfo; then
  echo "not ok - runtime-tools: mounts are left below $WORK"
  status=1
fi
if ((status == 0)); then rm -rf "$WORK"; fi
exit $status

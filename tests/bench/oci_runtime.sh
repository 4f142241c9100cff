#!/usr/bin/env bash
# The OCI runtime (docs/oci-runtime.md) against runc, in one run:
#   1. the runtime alone on one bundle (a busybox rootfs, /bin/true, the
#      config runc's `spec` writes, no terminal): `create` + `start` +
#      `delete --force` as three commands, and `run` (create, start, wait,
#      delete in one);
#   2. through containerd 1.6's runc shim: `ctr run --rm` start -> exit of
#      /bin/true with --runc-binary cloister-oci and with runc, against a
#      private containerd.
#   3. through podman 4.3: `podman run --rm` of /bin/true with each runtime
#      (NO_PODMAN=1 skips it).
# Needs root, runc, containerd, podman, hyperfine, busybox-static. Results:
# docs/benchmarks.md, "OCI runtime". RUNS (default 30) per command.
set -euo pipefail
cd "$(dirname "$0")/../.."
OCI=${OCI:-$PWD/build/bin/cloister-oci}
RUNC=${RUNC:-$(command -v runc)}
RUNS=${RUNS:-30}
for tool in runc containerd ctr hyperfine python3; do
  command -v $tool >/dev/null || { echo "oci_runtime.sh: $tool missing" >&2; exit 1; }
done
work=$(mktemp -d /tmp/cloister-bench-oci.XXXXXX)
cleanup() {
  [ -n "${ctrd_pid:-}" ] && kill "$ctrd_pid" 2>/dev/null && wait "$ctrd_pid" 2>/dev/null || true
  for rt in "$OCI" "$RUNC"; do
    for r in "$work"/root-* "$work"/ctr-root-*/*; do
      [ -d "$r" ] || continue
      for id in $("$rt" --root "$r" list -q 2>/dev/null); do "$rt" --root "$r" delete --force "$id" >/dev/null 2>&1 || true; done
    done
  done
  grep " $work" /proc/mounts | awk '{print $2}' | sort -r | xargs -r umount -l 2>/dev/null || true
  rm -rf "$work"
  # containerd's namespace parents (runc leaves them, so does cloister-oci).
  rmdir /sys/fs/cgroup/*/bench /sys/fs/cgroup/*/cloister-oci 2>/dev/null || true
  find /sys/fs/cgroup -maxdepth 3 -depth -type d -path '*cloister-bench-pm*' -exec rmdir {} \; 2>/dev/null || true
}
trap cleanup EXIT

b=$work/bundle
mkdir -p "$b/rootfs/bin" "$b/rootfs/proc" "$b/rootfs/dev" "$b/rootfs/tmp" "$b/rootfs/etc" "$b/rootfs/sys"
cp /bin/busybox "$b/rootfs/bin/"
for c in sh true; do ln -s busybox "$b/rootfs/bin/$c"; done
(cd "$b" && "$RUNC" spec)
python3 - "$b/config.json" <<'EOF'
import json, sys
p = sys.argv[1]
c = json.load(open(p))
c["process"]["terminal"] = False
c["process"]["args"] = ["/bin/true"]
json.dump(c, open(p, "w"))
EOF

out=$work/results
mkdir -p "$out"
seq3() {  # runtime root: create + start + delete --force
  echo "$1 --root $2 create --bundle $b x >/dev/null 2>&1 </dev/null && $1 --root $2 start x && $1 --root $2 delete --force x"
}
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$out/verbs.json" \
  -n "cloister-oci create+start+delete" "bash -c '$(seq3 "$OCI" "$work/root-c")'" \
  -n "runc create+start+delete" "bash -c '$(seq3 "$RUNC" "$work/root-r")'" \
  -n "cloister-oci run" "$OCI --root $work/root-c run --bundle $b y" \
  -n "runc run" "$RUNC --root $work/root-r run --bundle $b y"

# containerd, private: its own root, state and socket.
c=$work/ctrd
mkdir -p "$c"
cat > "$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$c/sock"
[ttrpc]
  address = "$c/sock.ttrpc"
EOF
containerd --config "$c/config.toml" >"$c/log" 2>&1 &
ctrd_pid=$!
for _ in $(seq 100); do ctr -a "$c/sock" version >/dev/null 2>&1 && break; sleep 0.1; done
python3 tools/oci-build.py "$work/img" --ref docker.io/library/cloister-bench-bb:latest \
  --layer "$b/rootfs:gzip" --cmd '["/bin/true"]' --archive "$work/img.tar" >/dev/null
ctr -a "$c/sock" -n bench images import "$work/img.tar" >/dev/null
ctr_run() {  # runtime binary, runtime root
  echo "ctr -a $c/sock -n bench run --rm --runc-binary $1 --runc-root $2 docker.io/library/cloister-bench-bb:latest b /bin/true"
}
hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$out/ctr.json" \
  -n "ctr run --rm, cloister-oci" "$(ctr_run "$OCI" "$work/ctr-root-c")" \
  -n "ctr run --rm, runc" "$(ctr_run "$RUNC" "$work/ctr-root-r")"

# podman 4.3, private (storage, runroot, tmpdir, containers.conf as
# tests/clients/run.sh has them): `podman run --rm` of /bin/true with each
# runtime, both through a wrapper script (podman passes no --root).
if [ -z "${NO_PODMAN:-}" ] && command -v podman >/dev/null; then
  P=$work/podman
  mkdir -p "$P/tmp" "$P/net" "$P/varlib" "$P/vartmp"
  for rt in c r; do
    bin=$OCI
    [ $rt = r ] && bin=$RUNC
    printf '#!/bin/sh\nexec %s --root %s "$@"\n' "$bin" "$P/oci-root-$rt" >"$P/rt-$rt"
    chmod +x "$P/rt-$rt"
  done
  cat >"$P/containers.conf" <<EOC
[containers]
default_ulimits = []
netns = "none"
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
image_copy_tmp_dir = "$P/tmp"
[network]
network_config_dir = "$P/net"
EOC
  printf '[storage]\ndriver = "overlay"\nrunroot = "%s"\ngraphroot = "%s"\n' "$P/runroot" "$P/root" \
    >"$P/storage.conf"
  echo 'unqualified-search-registries = []' >"$P/registries.conf"
  pm="env CONTAINERS_CONF=$P/containers.conf CONTAINERS_STORAGE_CONF=$P/storage.conf"
  pm="$pm CONTAINERS_REGISTRIES_CONF=$P/registries.conf TMPDIR=$P/tmp podman --root $P/root"
  pm="$pm --runroot $P/runroot --tmpdir $P/tmp --cgroup-manager cgroupfs --events-backend file"
  # c/image writes below /var/lib and /var/tmp whatever --root says.
  unshare --mount --propagation private sh -c \
    'mount --bind "$1" /var/lib && mount --bind "$2" /var/tmp && shift 2 && exec "$@"' \
    sh "$P/varlib" "$P/vartmp" $pm load -i "$work/img.tar" >/dev/null
  pm_run() {  # wrapper
    echo "$pm --runtime $1 run --rm --pull never --network none --ipc none --cgroup-parent /cloister-bench-pm docker.io/library/cloister-bench-bb:latest /bin/true"
  }
  hyperfine -N --warmup 3 --runs "$RUNS" --export-json "$out/podman.json" \
    -n "podman run --rm, cloister-oci" "$(pm_run "$P/rt-c")" \
    -n "podman run --rm, runc" "$(pm_run "$P/rt-r")"
  podman_cleanup() {
    $pm rm -af >/dev/null 2>&1 || true
    grep " $P" /proc/mounts | awk '{print $2}' | sort -r | xargs -r umount -l 2>/dev/null || true
  }
  podman_cleanup
fi
results=("$out/verbs.json" "$out/ctr.json")
[ -f "$out/podman.json" ] && results+=("$out/podman.json")

python3 - "${results[@]}" <<'EOF'
import json, sys
for f in sys.argv[1:]:
    r = {x["command"]: x for x in json.load(open(f))["results"]}
    names = list(r)
    for n in names:
        x = r[n]
        print(f"{n:40s} mean {x['mean']*1000:7.2f} ms  median {x['median']*1000:7.2f} ms  (±{x['stddev']*1000:.2f})")
    for a, b in zip(names[0::2], names[1::2]):
        print(f"  ratio {b} / {a}: {r[b]['median'] / r[a]['median']:.2f}x")
EOF

#!/usr/bin/env bash
# OCI image benchmark: pull + unpack of a debian:bookworm-sized image (one
# ~60 MB gzip layer made with debootstrap --variant=minbase, cached in
# /var/cache/cloister-bench) from a loopback docker-registry, cloister vs
# `podman pull` and `skopeo copy` + `umoci unpack`; then container
# start -> exit of /bin/true: cloister exec vs `runc run` on the same rootfs
# vs `podman run --rm`. Needs root, docker-registry, podman, skopeo, umoci,
# runc, debootstrap, hyperfine. Results: docs/benchmarks.md "## OCI images".
set -euo pipefail
cd "$(dirname "$0")/../.."
CLOISTER=${CLOISTER:-$PWD/build/bin/cloister}
for tool in docker-registry podman skopeo umoci runc debootstrap hyperfine curl python3; do
  command -v $tool >/dev/null || {
    echo "oci.sh: $tool missing: apt-get install docker-registry podman skopeo umoci runc debootstrap hyperfine" >&2
    exit 1
  }
done
CACHE=/var/cache/cloister-bench
PORT=${PORT:-5077}
RUNS=${RUNS:-5}
REF=127.0.0.1:$PORT/bench/debian:bookworm
WORK=$(mktemp -d /tmp/cloister-bench-oci.XXXXXX)
REG_PID=
DAEMON_PID=
FS=$WORK/fs
PODMAN="podman --root $FS/podman --runroot $FS/podman-run"
cleanup() {
  [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null || true
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
  runc delete -f bench-oci >/dev/null 2>&1 || true
  if mountpoint -q "$FS"; then
    $PODMAN rmi -af >/dev/null 2>&1 || true
    umount "$FS" 2>/dev/null || umount -l "$FS"
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ ! -d $CACHE/debian/usr ]; then
  debootstrap --variant=minbase bookworm $CACHE/debian http://deb.debian.org/debian >/dev/null
fi
if [ ! -f $CACHE/layout/index.json ]; then
  # /dev's device nodes are not part of an image (the runtime makes /dev).
  python3 tools/oci-build.py $CACHE/layout --ref $REF --layer $CACHE/debian:gzip --keep-owners \
    --exclude dev/console --exclude dev/full --exclude dev/null --exclude dev/ptmx \
    --exclude dev/random --exclude dev/tty --exclude dev/urandom --exclude dev/zero \
    --cmd '["bash"]' >/dev/null
fi
cat > $WORK/reg.yml <<YAML
version: 0.1
log: { level: error }
storage: { filesystem: { rootdirectory: $CACHE/registry } }
http: { addr: 127.0.0.1:$PORT }
YAML
docker-registry serve $WORK/reg.yml >$WORK/reg.log 2>&1 &
REG_PID=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:$PORT/v2/ >/dev/null && break; sleep 0.1; done
python3 tools/oci-build.py $CACHE/layout --ref $REF --layer $CACHE/debian:gzip --keep-owners \
  --exclude dev/console --exclude dev/full --exclude dev/null --exclude dev/ptmx \
  --exclude dev/random --exclude dev/tty --exclude dev/urandom --exclude dev/zero \
  --cmd '["bash"]' --push http://$REF >/dev/null
blob=$(find $CACHE/layout/blobs -size +1M -printf '%s\n' | head -1)
echo "image: $REF, layer $((blob / 1000000)) MB gzip, $(find $CACHE/debian | wc -l) files"

# Every tool unpacks onto one fresh ext4 made with mkfs's defaults (so with a
# journal), on a loop device. This VM's root filesystem has no journal, and
# ext4 without one will not reuse an inode freed in the last minute: every
# new inode scans past those (recently_deleted() in fs/ext4/ialloc.c), which
# after each run's `rm -rf` or `rmi` of 6,768 files is quadratic, and took
# most of all three tools' time (docs/benchmarks.md).
truncate -s 8G $WORK/fs.img
mkfs.ext4 -q -F $WORK/fs.img
mkdir -p $FS
mount -o loop $WORK/fs.img $FS
$PODMAN info >/dev/null  # podman's one-time storage set-up, not timed

echo "== pull + unpack"
hyperfine -N -r "$RUNS" --export-markdown $WORK/pull.md --export-json $WORK/pull.json \
  --prepare "rm -rf $FS/store" \
  "$CLOISTER pull --state-dir $FS/store $REF" \
  --prepare "$PODMAN rmi -f $REF" \
  "$PODMAN pull -q --tls-verify=false $REF" \
  --prepare "rm -rf $FS/oci $FS/bundle" \
  "sh -c 'skopeo copy -q --src-tls-verify=false docker://$REF oci:$FS/oci:bench && umoci unpack --image $FS/oci:bench $FS/bundle >/dev/null'"
cat $WORK/pull.md
python3 - $WORK/pull.json <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))["results"]
mean = lambda r: r["mean"]
print(f"pull: podman / cloister {mean(res[1]) / mean(res[0]):.2f}x by the means,"
      f" {res[1]['min'] / res[0]['min']:.2f}x by the minima;"
      f" skopeo+umoci / cloister {mean(res[2]) / mean(res[0]):.2f}x")
PY

echo "== start -> exit (/bin/true)"
$CLOISTER pull --state-dir $FS/store $REF >/dev/null 2>&1
rm -rf $FS/oci $FS/bundle
skopeo copy -q --src-tls-verify=false docker://$REF oci:$FS/oci:bench
umoci unpack --image $FS/oci:bench $FS/bundle >/dev/null
# runc: the same rootfs, read-only, no network namespace sharing, /bin/true.
python3 - $FS/bundle/config.json <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["args"] = ["/bin/true"]; c["process"]["terminal"] = False
c["root"]["readonly"] = True
json.dump(c, open(p, "w"))
PY
cat > $WORK/c.yaml <<YAML
images: { state_dir: $FS/store }
executors:
  - name: deb
    kind: container
    image: $REF
    read_only_rootfs: true
service:
  socket: $WORK/cloister.sock
  log_dir: $WORK/logs
YAML
# The same executor in cloisterd: its sandboxes come from the executor's
# mount template and warm init (docs/architecture.md).
"$(dirname "$CLOISTER")/cloisterd" --config $WORK/c.yaml 2>$WORK/cloisterd.log &
DAEMON_PID=$!
for _ in $(seq 100); do [ -S $WORK/cloister.sock ] && break; sleep 0.05; done
# `podman run` is not compared: on this host (no CAP_SYS_RESOURCE) its runc
# fails to apply podman's default rlimits (NOFILE, then NPROC with --ulimit).
hyperfine -N -w 5 -r $((RUNS * 10)) --export-markdown $WORK/start.md --export-json $WORK/start.json \
  "$CLOISTER exec -c $WORK/c.yaml -x deb -- /bin/true" \
  "$CLOISTER --socket $WORK/cloister.sock run deb -- /bin/true" \
  "runc run -b $FS/bundle bench-oci"
cat $WORK/start.md
# Through the client library, as a daemon embedding cloister would start
# containers: back to back, and 5 ms apart.
"$(dirname "$CLOISTER")/cloister_bench_service" latency $WORK/cloister.sock $((RUNS * 20)) deb > $WORK/lib.txt
"$(dirname "$CLOISTER")/cloister_bench_service" latency $WORK/cloister.sock $((RUNS * 20)) deb 5 > $WORK/lib5.txt
kill -TERM $DAEMON_PID; wait $DAEMON_PID 2>/dev/null || true
python3 - $WORK/start.json $WORK/lib.txt $WORK/lib5.txt <<'PY'
import json, sys
res = json.load(open(sys.argv[1]))["results"]
med = lambda r: sorted(r["times"])[len(r["times"]) // 2] * 1000
runc = med(res[2])
print(f"runc run p50 {runc:.2f} ms; cloister exec p50 {med(res[0]):.2f} ms ({runc / med(res[0]):.1f}x);"
      f" cloister run p50 {med(res[1]):.2f} ms ({runc / med(res[1]):.1f}x)")
for path, label in ((sys.argv[2], "back to back"), (sys.argv[3], "5 ms apart")):
    kv = dict(x.split("=") for x in open(path).read().split()[1:])
    p50 = float(kv["p50_ms"])
    print(f"client library ({label}): p50 {p50:.2f} ms, p99 {float(kv['p99_ms']):.2f} ms ({runc / p50:.1f}x faster than runc run)")
PY

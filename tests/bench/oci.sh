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
cleanup() {
  [ -n "$REG_PID" ] && kill "$REG_PID" 2>/dev/null && wait "$REG_PID" 2>/dev/null || true
  [ -n "$DAEMON_PID" ] && kill "$DAEMON_PID" 2>/dev/null && wait "$DAEMON_PID" 2>/dev/null || true
  runc delete -f bench-oci >/dev/null 2>&1 || true
  podman rmi -f "$REF" >/dev/null 2>&1 || true
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

echo "== pull + unpack"
hyperfine -N -r "$RUNS" --export-markdown $WORK/pull.md \
  --prepare "rm -rf $WORK/store" \
  "$CLOISTER pull --state-dir $WORK/store $REF" \
  --prepare "podman rmi -f $REF" \
  "podman pull -q --tls-verify=false $REF" \
  --prepare "rm -rf $WORK/oci $WORK/bundle" \
  "sh -c 'skopeo copy -q --src-tls-verify=false docker://$REF oci:$WORK/oci:bench && umoci unpack --image $WORK/oci:bench $WORK/bundle >/dev/null'"
cat $WORK/pull.md

echo "== start -> exit (/bin/true)"
$CLOISTER pull --state-dir $WORK/store $REF >/dev/null 2>&1
rm -rf $WORK/oci $WORK/bundle
skopeo copy -q --src-tls-verify=false docker://$REF oci:$WORK/oci:bench
umoci unpack --image $WORK/oci:bench $WORK/bundle >/dev/null
# runc: the same rootfs, read-only, no network namespace sharing, /bin/true.
python3 - $WORK/bundle/config.json <<'PY'
import json, sys
p = sys.argv[1]; c = json.load(open(p))
c["process"]["args"] = ["/bin/true"]; c["process"]["terminal"] = False
c["root"]["readonly"] = True
json.dump(c, open(p, "w"))
PY
cat > $WORK/c.yaml <<YAML
images: { state_dir: $WORK/store }
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
  "runc run -b $WORK/bundle bench-oci"
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

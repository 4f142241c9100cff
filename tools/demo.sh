#!/usr/bin/env bash
# The main job: build cloister, then run example commands through
# `cloister exec` with configs/example.yaml and show what a sandbox sees.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh >/dev/null

if [ "$(id -u)" -ne 0 ]; then
  echo "demo.sh: cloister needs root (namespaces, cgroups); run as root" >&2
  exit 1
fi

CLOISTER=build/bin/cloister
CONFIG=configs/example.yaml
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
show() { step "$*"; "$@" || echo "(exit code $?)"; }

show $CLOISTER exec -c $CONFIG -x shell -- sh -c 'echo "pid $$ on $(hostname) as $(id -un)"; ps -e -o pid,comm'
show $CLOISTER exec -c $CONFIG -x shell -- sh -c 'ls /; echo; ls /dev'
show $CLOISTER exec -c $CONFIG -x shell -- sh -c 'grep -E "^(CapEff|NoNewPrivs|Seccomp):" /proc/self/status; cat /proc/net/dev | grep :'
show $CLOISTER exec -c $CONFIG -x shell -- sh -c 'touch /usr/x; echo hi > /tmp/x && cat /tmp/x; wc -c < /etc/shadow'
show $CLOISTER exec -c $CONFIG -x shell -- sh -c 'unshare -m true; mount -t tmpfs x /mnt'
step "echo 'hello from stdin' | $CLOISTER exec -c $CONFIG -x shell -i -- tr a-z A-Z"
echo 'hello from stdin' | $CLOISTER exec -c $CONFIG -x shell -i -- tr a-z A-Z
show $CLOISTER exec -c $CONFIG -x restricted -- sh -c 'cat /sys/fs/cgroup/memory.max 2>/dev/null; ulimit -n'
show $CLOISTER exec -c $CONFIG -x restricted -- git status
show $CLOISTER exec -c $CONFIG -x shell --timeout 1 -- sh -c 'sleep 30 & sleep 30; echo never'
show $CLOISTER exec -c $CONFIG -x shell -- no-such-command
show $CLOISTER exec -c $CONFIG -x shell -- sh -c 'exit 42'
show $CLOISTER exec -c $CONFIG -x net -- sh -c 'id; grep CapEff /proc/self/status; grep -c : /proc/net/dev'

# --- The service: cloisterd on a temporary socket -------------------------------
# run (attached: exit codes as exec), a detached session, ps, logs, attach,
# kill; then SIGTERM stops the service and removes its sessions' cgroups.
CLOISTERD=build/bin/cloisterd
svc=$(mktemp -d /tmp/cloister-demo-XXXXXX)
sed -n '/^executors:/,$p' $CONFIG > "$svc/cloister.yaml"
cat >> "$svc/cloister.yaml" <<YAML
service:
  socket: $svc/cloister.sock
  log_dir: $svc/logs
YAML
step "$CLOISTERD --config $svc/cloister.yaml &"
$CLOISTERD --config "$svc/cloister.yaml" 2> "$svc/cloisterd.log" &
svc_pid=$!
stop_service() {
  kill -TERM $svc_pid 2>/dev/null && wait $svc_pid 2>/dev/null || true
  rm -rf "$svc"
}
trap stop_service EXIT
for _ in $(seq 100); do [ -S "$svc/cloister.sock" ] && break; sleep 0.05; done
export CLOISTER_SOCKET=$svc/cloister.sock
show $CLOISTER executors
show $CLOISTER run shell -- sh -c 'echo "through the service: $(hostname)"; exit 3'
step "$CLOISTER run -d shell -- sh -c 'for i in 1 2 3 4 5; do echo tick \$i; sleep 0.4; done; echo done'"
sid=$($CLOISTER run -d --log-file demo.log shell -- sh -c 'for i in 1 2 3 4 5; do echo tick $i; sleep 0.4; done; echo done')
echo "$sid"
long=$($CLOISTER run -d shell -- sleep 300)
show $CLOISTER ps
sleep 0.5
show $CLOISTER logs "$sid"
show $CLOISTER attach "$sid"
show $CLOISTER logs --tail 2 "$sid"
show $CLOISTER kill -s KILL "$long"
show $CLOISTER wait "$long"
show $CLOISTER ps
show $CLOISTER rm "$sid"
step "kill -TERM cloisterd"
kill -TERM $svc_pid && wait $svc_pid
cat "$svc/cloisterd.log"
echo "left behind: $(find "$svc" -type s | wc -l) sockets, $(pgrep -c -P $svc_pid || true) children"

# --- OCI images (oci/): an image built here from busybox-static, no registry.
# `busybox --install -s` into a directory, tools/oci-build.py packs it into an
# OCI layout (and archive), `cloister load` imports it, and a container runs.
DEMO=$(mktemp -d /tmp/cloister-demo-oci.XXXXXX)
trap 'stop_service; rm -rf "$DEMO"' EXIT
mkdir -p "$DEMO/rootfs/bin" "$DEMO/rootfs/etc" "$DEMO/rootfs/root"
cp "$(command -v busybox)" "$DEMO/rootfs/bin/busybox"
# Inside the rootfs, so that the links say /bin/busybox, not a host path.
chroot "$DEMO/rootfs" /bin/busybox --install -s /bin
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$DEMO/rootfs/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$DEMO/rootfs/etc/group"
echo "hello from an OCI image" > "$DEMO/rootfs/etc/motd"
python3 tools/oci-build.py "$DEMO/layout" --ref localhost/demo/busybox:latest \
  --layer "$DEMO/rootfs:gzip" --cmd '["sh"]' --archive "$DEMO/busybox.tar" >/dev/null
cat > "$DEMO/cloister.yaml" <<YAML
images:
  state_dir: $DEMO/store
executors:
  - name: box
    kind: container
    image: localhost/demo/busybox:latest
    network_mode: none
    read_only_rootfs: true
    user: nobody
    tmpfs: { /tmp: "rw,noexec,nosuid,size=16m" }
YAML
show $CLOISTER load --state-dir "$DEMO/store" "$DEMO/busybox.tar"
show $CLOISTER images --state-dir "$DEMO/store"
show $CLOISTER exec -c "$DEMO/cloister.yaml" -x box -- sh -c 'cat /etc/motd; id; ls /; touch /x'
show $CLOISTER exec -c "$DEMO/cloister.yaml" -x box -- sh -c 'echo $$; ps; grep -c : /proc/net/dev'

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

#!/usr/bin/env bash
# Start->exit latency of `true` for an ordinary user, side by side in one
# run: `cloister exec` and bwrap, both run by cloister-unpriv
# (tests/unprivileged/user.sh), the library against fork+exec in-process as
# that user (cloister_bench_spawn), and root's `cloister exec` for what the
# unprivileged mode costs. Prints p50/p99 per method and the ratios.
# Usage: tests/bench/unprivileged.sh [RUNS]   (default 500; run as root, after a build)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-500}
BIN=$PWD/build/bin
[ -x "$BIN/cloister" ] && [ -x "$BIN/cloister_bench_spawn" ] || { echo "build first: tools/bootstrap.sh" >&2; exit 1; }
command -v hyperfine >/dev/null && command -v bwrap >/dev/null || tools/bootstrap.sh >/dev/null
ids=$(tests/unprivileged/user.sh)
uid=${ids% *}
gid=${ids#* }
as_user=(setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
cat > "$work/bench.yaml" <<'YAML'
executors:
  - name: bench
    kind: host
    default_env: { PATH: /usr/bin:/bin }
YAML
chmod 644 "$work/bench.yaml"
touch "$work/h.json" "$work/lib.txt" && chown "$uid:$gid" "$work/h.json" "$work/lib.txt"

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
"${as_user[@]}" env CLOISTER_AUDIT=off hyperfine -N --warmup 20 --runs "$RUNS" \
  --export-json "$work/h.json" \
  -n "cloister exec (user)" "$BIN/cloister exec -c $work/bench.yaml -x bench -- /bin/true" \
  -n "bwrap (user)" "bwrap --unshare-user --unshare-all --ro-bind / / --proc /proc --dev /dev /bin/true" \
  >/dev/null
hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$work/root.json" \
  -n "cloister exec (root)" "env CLOISTER_AUDIT=off $BIN/cloister exec -c $work/bench.yaml -x bench -- /bin/true" \
  >/dev/null
"${as_user[@]}" env CLOISTER_AUDIT=off "$BIN/cloister_bench_spawn" "$RUNS" "$work/bench.yaml" > "$work/lib.txt"

python3 tests/bench/table.py "$work/h.json" "$work/root.json" --lib "$work/lib.txt" \
  --suffix " (user, in-process)" \
  --ratio "cloister exec (user)/bwrap (user)" \
  --ratio "cloister exec (user)/cloister exec (root)" \
  --ratio "libcloister (user, in-process)/fork+exec (user, in-process)" \
  --ratio "libcloister-spaced (user, in-process)/fork+exec-spaced (user, in-process)"

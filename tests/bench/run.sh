#!/usr/bin/env bash
# Start->exit latency of `true`, side by side in one run:
#   cloister exec (CLI, full isolation), bwrap, unshare, plain fork+exec
#   (through hyperfine), and the library call against fork+exec in-process
#   (cloister_bench_spawn: back to back, then 5 ms apart, which lets a warm
#   sandbox get ready between runs); then cloister exec and bwrap alternated
#   run by run (interleave.py), with a range per sandbox (userns: sandbox)
#   beside them. Prints p50/p99 per method and the ratios.
# Usage: tests/bench/run.sh [RUNS]   (default 500; needs root and a build)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-500}
BIN=build/bin
[ -x $BIN/cloister ] && [ -x $BIN/cloister_bench_spawn ] || { echo "build first: tools/bootstrap.sh" >&2; exit 1; }
command -v hyperfine >/dev/null && command -v bwrap >/dev/null || tools/bootstrap.sh >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/bench.yaml" <<'YAML'
executors:
  - name: bench
    kind: host
    default_env: { PATH: /usr/bin:/bin }
  - name: per-sandbox
    kind: host
    userns: sandbox
    default_env: { PATH: /usr/bin:/bin }
YAML

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$work/h.json" \
  -n "cloister exec" "$BIN/cloister exec -c $work/bench.yaml -x bench -- /bin/true" \
  -n "bwrap" "bwrap --unshare-user --unshare-all --ro-bind / / --proc /proc --dev /dev /bin/true" \
  -n "unshare -fpimnu" "unshare -fpimnu /bin/true" \
  -n "fork+exec (hyperfine)" "/bin/true" >/dev/null
# The same two starts alternated run by run, which a drifting machine slows
# alike; and a range per sandbox (userns: sandbox) beside the default.
BWRAP="bwrap --unshare-user --unshare-all --ro-bind / / --proc /proc --dev /dev /bin/true"
python3 tests/bench/interleave.py "$RUNS" "$work/alt.json" \
  "cloister exec, alternated=$BIN/cloister exec -c $work/bench.yaml -x bench -- /bin/true" \
  "bwrap, alternated=$(command -v bwrap) ${BWRAP#bwrap }" \
  "cloister exec, userns: sandbox, alternated=$BIN/cloister exec -c $work/bench.yaml -x per-sandbox -- /bin/true"

$BIN/cloister_bench_spawn "$RUNS" "$work/bench.yaml" > "$work/lib.txt"

python3 tests/bench/table.py "$work/h.json" "$work/alt.json" --lib "$work/lib.txt" \
  --ratio "cloister exec/bwrap" \
  --ratio "cloister exec, alternated/bwrap, alternated" \
  --ratio "cloister exec, userns: sandbox, alternated/cloister exec, alternated" \
  --ratio "libcloister (in-process)/fork+exec (in-process)" \
  --ratio "libcloister-spaced (in-process)/fork+exec-spaced (in-process)"

#!/usr/bin/env bash
# Start->exit latency of `true`, side by side in one run:
#   cloister exec (CLI, full isolation), bwrap, unshare, plain fork+exec
#   (through hyperfine), and the library call against fork+exec in-process
#   (cloister_bench_spawn: back to back, then 5 ms apart, which lets a warm
#   sandbox get ready between runs). Prints p50/p99 per method and the ratios.
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
YAML

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$work/h.json" \
  -n "cloister exec" "$BIN/cloister exec -c $work/bench.yaml -x bench -- /bin/true" \
  -n "bwrap" "bwrap --unshare-user --unshare-all --ro-bind / / --proc /proc --dev /dev /bin/true" \
  -n "unshare -fpimnu" "unshare -fpimnu /bin/true" \
  -n "fork+exec (hyperfine)" "/bin/true" >/dev/null

$BIN/cloister_bench_spawn "$RUNS" "$work/bench.yaml" > "$work/lib.txt"

python3 - "$work/h.json" "$work/lib.txt" <<'PY'
import json, sys, statistics
rows = []
for r in json.load(open(sys.argv[1]))["results"]:
    t = sorted(x * 1000 for x in r["times"])
    rows.append((r["command"], t[len(t) // 2], t[min(len(t) - 1, int(len(t) * 0.99))], len(t)))
for line in open(sys.argv[2]):
    f = line.split()
    kv = dict(x.split("=") for x in f[1:])
    rows.append((f[0] + " (in-process)", float(kv["p50_ms"]), float(kv["p99_ms"]), int(kv["runs"])))
print(f"| {'method':34} | {'p50 ms':>8} | {'p99 ms':>8} | runs |")
print(f"|{'-'*36}|{'-'*10}|{'-'*10}|------|")
for name, p50, p99, n in rows:
    print(f"| {name:34} | {p50:8.2f} | {p99:8.2f} | {n:4} |")
d = {r[0]: r for r in rows}
print()
print(f"cloister exec p50 / bwrap p50 = {d['cloister exec'][1] / d['bwrap'][1]:.2f}")
print(f"libcloister p50 / fork+exec p50 (in-process, back to back) = {d['libcloister (in-process)'][1] / d['fork+exec (in-process)'][1]:.2f}")
print(f"libcloister p50 / fork+exec p50 (in-process, 5 ms apart) = {d['libcloister-spaced (in-process)'][1] / d['fork+exec-spaced (in-process)'][1]:.2f}")
PY

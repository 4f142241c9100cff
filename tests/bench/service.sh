#!/usr/bin/env bash
# cloisterd benchmarks, side by side in one run:
#   start->exit latency of /bin/true: client library (RemoteProcess),
#   `cloister run`, `cloister exec` (in-process, no service), bwrap;
#   stdout throughput of 1 GiB: through the socket, through passed fds
#   (SCM_RIGHTS), and a raw pipe; stdin throughput of as much, the same
#   three ways (into `wc -c`, whose count is checked).
# Usage: tests/bench/service.sh [RUNS] [BYTES]   (default 300, 1 GiB; root, a build)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-300}
BYTES=${2:-1073741824}
BIN=build/bin
[ -x $BIN/cloisterd ] && [ -x $BIN/cloister_bench_service ] || { echo "build first" >&2; exit 1; }
command -v hyperfine >/dev/null && command -v bwrap >/dev/null || tools/bootstrap.sh >/dev/null

work=$(mktemp -d /tmp/cloister-bench-XXXXXX)
cat > "$work/bench.yaml" <<YAML
executors:
  - name: bench
    kind: host
    default_env: { PATH: /usr/bin:/bin }
service:
  socket: $work/cloister.sock
  log_dir: $work/logs
YAML
$BIN/cloisterd --config "$work/bench.yaml" 2> "$work/cloisterd.log" &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$work/cloister.sock" ] && break; sleep 0.05; done

echo "machine: $(nproc) cores, $(uname -r), load $(cut -d' ' -f1-3 /proc/loadavg)"
hyperfine -N --warmup 20 --runs "$RUNS" --export-json "$work/h.json" \
  -n "cloister run" "$BIN/cloister --socket $work/cloister.sock run bench -- /bin/true" \
  -n "cloister exec" "$BIN/cloister exec -c $work/bench.yaml -x bench -- /bin/true" \
  -n "bwrap" "bwrap --unshare-all --ro-bind / / --proc /proc --dev /dev /bin/true" >/dev/null
$BIN/cloister_bench_service latency "$work/cloister.sock" "$RUNS" > "$work/lib.txt"
$BIN/cloister_bench_service throughput "$work/cloister.sock" "$BYTES" > "$work/tp.txt"
$BIN/cloister_bench_service stdin "$work/cloister.sock" "$BYTES" > "$work/in.txt"

python3 - "$work/h.json" "$work/lib.txt" "$work/tp.txt" "$work/in.txt" <<'PY'
import json, sys
rows = []
for r in json.load(open(sys.argv[1]))["results"]:
    t = sorted(x * 1000 for x in r["times"])
    rows.append((r["command"], t[len(t) // 2], t[min(len(t) - 1, int(len(t) * 0.99))], len(t)))
for line in open(sys.argv[2]):
    f = line.split(); kv = dict(x.split("=") for x in f[1:])
    rows.append(("client library (socket)", float(kv["p50_ms"]), float(kv["p99_ms"]), int(kv["runs"])))
print(f"| {'start->exit of /bin/true':28} | {'p50 ms':>8} | {'p99 ms':>8} | runs |")
print(f"|{'-'*30}|{'-'*10}|{'-'*10}|------|")
for name, p50, p99, n in rows:
    print(f"| {name:28} | {p50:8.2f} | {p99:8.2f} | {n:4} |")
print()
for title, path in (("stdout throughput", sys.argv[3]), ("stdin throughput", sys.argv[4])):
    rates = {}
    print(f"| {title:28} | {'MiB/s':>8} | {'seconds':>8} |")
    print(f"|{'-'*30}|{'-'*10}|{'-'*10}|")
    for line in open(path):
        f = line.split(); kv = dict(x.split("=") for x in f[1:])
        rates[f[0]] = float(kv['mib_s'])
        print(f"| {f[0]:28} | {rates[f[0]]:8.0f} | {float(kv['secs']):8.2f} |")
    print(f"| {'socket / raw pipe':28} | {rates['socket'] / rates['raw-pipe']:7.2f}x |          |")
    print()
PY

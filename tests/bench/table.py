#!/usr/bin/env python3
"""The start->exit table of run.sh and unprivileged.sh: p50/p99 per method
from hyperfine JSON exports and cloister_bench_spawn's lines, then p50 ratios.

  table.py [--lib FILE] [--suffix TEXT] [--ratio NUM/DEN ...] JSON...

--suffix is added to the names of --lib's methods ("fork+exec" becomes
"fork+exec (in-process)"); each --ratio names two methods of the table."""
import argparse
import json

ap = argparse.ArgumentParser()
ap.add_argument("--lib")
ap.add_argument("--suffix", default=" (in-process)")
ap.add_argument("--ratio", action="append", default=[])
ap.add_argument("json", nargs="*")
a = ap.parse_args()

rows = []
for path in a.json:
    for r in json.load(open(path))["results"]:
        t = sorted(x * 1000 for x in r["times"])
        rows.append((r["command"], t[len(t) // 2], t[min(len(t) - 1, int(len(t) * 0.99))], len(t)))
if a.lib:
    for line in open(a.lib):
        f = line.split()
        kv = dict(x.split("=") for x in f[1:])
        rows.append((f[0] + a.suffix, float(kv["p50_ms"]), float(kv["p99_ms"]), int(kv["runs"])))
w = max([34] + [len(r[0]) for r in rows])
print(f"| {'method':{w}} | {'p50 ms':>8} | {'p99 ms':>8} | runs |")
print(f"|{'-' * (w + 2)}|{'-' * 10}|{'-' * 10}|------|")
for name, p50, p99, n in rows:
    print(f"| {name:{w}} | {p50:8.2f} | {p99:8.2f} | {n:4} |")
p50 = {r[0]: r[1] for r in rows}
print()
for ratio in a.ratio:
    num, den = ratio.split("/", 1)
    print(f"{num} p50 / {den} p50 = {p50[num] / p50[den]:.2f}")

#!/usr/bin/env python3
"""Start->exit times of commands run in turn, one run of each per round
(the order reversed every other round), so that a machine whose speed
drifts during the measurement (a VM on a shared host) slows every command
alike; hyperfine runs all of one command's runs before the next one's.

  interleave.py RUNS OUT.json NAME=COMMAND...

Writes hyperfine's JSON shape ({"results": [{"command", "times"}]}, times in
seconds) for table.py. Each run is posix_spawn + waitpid, stdout to
/dev/null; 10 warm-up rounds first."""
import json
import os
import shlex
import sys
import time

runs, out = int(sys.argv[1]), sys.argv[2]
cmds = [(a.split("=", 1)[0], shlex.split(a.split("=", 1)[1])) for a in sys.argv[3:]]
devnull = os.open("/dev/null", os.O_RDWR)


def once(argv):
    t = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ,
                         file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 1)])
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"interleave.py: {' '.join(argv)} failed")
    return time.perf_counter() - t


for _ in range(10):
    for _, argv in cmds:
        once(argv)
times = [[] for _ in cmds]
for i in range(runs):
    order = range(len(cmds)) if i % 2 == 0 else reversed(range(len(cmds)))
    for j in order:
        times[j].append(once(cmds[j][1]))
json.dump({"results": [{"command": n, "times": t} for (n, _), t in zip(cmds, times)]},
          open(out, "w"))

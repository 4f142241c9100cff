#!/usr/bin/env bash
# The host executor's functional suite again as an ordinary user (issue 12):
#   run.sh [--delegate] CLOISTER_INTEGRATION [gtest args...]
# Run as root. Creates the system user cloister-unpriv (once), then runs the
# test binary as that user with no capabilities, so every sandbox it starts
# is unprivileged (docs/security.md, "Unprivileged use"). What needs root, a
# container store or a delegated cgroup skips and says why.
#
# --delegate: first hand the user a cgroup-v2 subtree of its own, as systemd
# does for a unit with Delegate=yes (the cgroup directory and its
# cgroup.procs, cgroup.subtree_control and cgroup.threads chowned to it,
# memory and pids enabled above it, this process moved in), so that the
# limit tests run with limits. Pure cgroup v2 only: the VM group uses it.
set -euo pipefail

delegate=0
if [[ ${1:-} == --delegate ]]; then delegate=1; shift; fi
bin=$(realpath "${1:?usage: run.sh [--delegate] CLOISTER_INTEGRATION [gtest args...]}")
shift

user=cloister-unpriv
ids=$("$(dirname "$0")/user.sh")  # (no /dev/fd in the test VM for <(...))
uid=${ids% *}
gid=${ids#* }
as_user=(setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all --bounding-set=-all)

if ! "${as_user[@]}" test -x "$bin"; then
  echo "run.sh: $bin cannot be run by $user: a directory above it is closed to others" >&2
  exit 1
fi

if (( delegate )); then
  cg=/sys/fs/cgroup
  [[ $(stat -f -c %T "$cg") == cgroup2fs ]] || { echo "run.sh: --delegate needs cgroup v2 at $cg" >&2; exit 1; }
  own=$cg$(sed -n 's/^0:://p' /proc/self/cgroup)
  # Controllers for the subtree (from the root down to our cgroup, which
  # then must hold no process of its own: we move to a sibling leaf first).
  mkdir -p "$own/unpriv.leaf" "$own/unpriv.delegated"
  while read -r p; do echo "$p" > "$own/unpriv.leaf/cgroup.procs" 2>/dev/null || true; done \
    < "$own/cgroup.procs"
  for c in memory pids cpu; do
    grep -qw "$c" "$own/cgroup.controllers" && echo "+$c" > "$own/cgroup.subtree_control"
  done
  d=$own/unpriv.delegated
  chown "$uid:$gid" "$d" "$d/cgroup.procs" "$d/cgroup.subtree_control" "$d/cgroup.threads"
  echo $$ > "$d/cgroup.procs"
  echo "run.sh: delegated $d to $user"
fi

# The host and container executors' suites; PolicyCallers, PolicyLimits,
# PolicyAudit test the service's callers rules (uid 0 and other uids);
# Service*, Registry, Cgroups and EscapeUserNs need root by what they test.
filter='Isolation.*:ProcessApi.*:Executor.*:Limits.*:Container.*:Modes/Escape.*:EscapeSwap.*'
filter+=':EscapePolicy.*:EscapeInitProgram.*:EscapeCli.*:PolicyExec.*:PolicyShell.*'
filter+=':PolicyExecutables.*:PolicyDirs.*:PolicyOutput.*'
cd /tmp
echo "run.sh: $bin as $user (uid $uid, gid $gid)"
exec "${as_user[@]}" env -i PATH=/usr/bin:/bin HOME=/nonexistent CLOISTER_AUDIT=off \
  "$bin" --gtest_filter="$filter" "$@"

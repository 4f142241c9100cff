#!/usr/bin/env bash
# Prints "UID GID" of an ordinary user of the unprivileged tests and
# benchmarks, creating it first where it does not exist: a system user with
# no home and no login. Run as root.
#   user.sh                      cloister-unpriv, no subordinate range
#   user.sh NAME [START:COUNT]   NAME, with that range in /etc/subuid and
#                                /etc/subgid (added once)
set -euo pipefail
user=${1:-cloister-unpriv}
range=${2:-}
if ! id -u "$user" >/dev/null 2>&1; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$user"
fi
if [[ -n $range ]]; then
  start=${range%%:*}
  count=${range##*:}
  last=$((start + count - 1))
  grep -q "^$user:" /etc/subuid 2>/dev/null || usermod --add-subuids "$start-$last" "$user"
  grep -q "^$user:" /etc/subgid 2>/dev/null || usermod --add-subgids "$start-$last" "$user"
fi
echo "$(id -u "$user") $(id -g "$user")"

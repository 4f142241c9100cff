#!/usr/bin/env bash
# Prints "UID GID" of cloister-unpriv, the ordinary user of the unprivileged
# tests and benchmarks, creating it first (a system user with no home and
# no login) where it does not exist. Run as root.
set -euo pipefail
user=cloister-unpriv
if ! id -u "$user" >/dev/null 2>&1; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$user"
fi
echo "$(id -u "$user") $(id -g "$user")"

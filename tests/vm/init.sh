#!/bin/sh
# cloister VM guest init: /init (PID 1) of the initramfs built by setup.sh,
# run by busybox sh. See tests/vm/README.md.
#
# It mounts the host's / read-only over 9p at /host, mounts the guest's own
# proc, sys, dev, a pure cgroup2 hierarchy (all controllers enabled in the
# root's cgroup.subtree_control) and tmpfs /tmp, /run (...) over it, moves it
# onto / and runs /run/cloister-vm/cmd.sh (written by run.sh into a second
# cpio appended to the initramfs), then prints
#     CLOISTER-VM-RESULT rc=N
# and powers off. Any failure before the command prints
#     CLOISTER-VM-INIT-FAIL <reason>
# and powers off too.
export PATH=/bin
umask 022

off() {
  poweroff -f
  sleep 5
  echo o > /proc/sysrq-trigger
  sleep 60
}
fail() {
  echo "CLOISTER-VM-INIT-FAIL $*"
  off
}
up() { cut -d' ' -f1 /proc/uptime; }

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
echo; echo "CLOISTER-VM: init started at uptime $(up)s"

# Defaults, overridden by /cmd.conf (from run.sh).
CGROUP=test     # cgroup (below the root) the command starts in; "root" = the root cgroup
KEEP=""         # host paths under /tmp, /run or /var/tmp to keep visible
HOSTNAME=cloister-vm
DUMP_AFTER=0    # seconds after the command starts to print where every task waits (0: never)
[ -f /cmd.conf ] && . /cmd.conf
[ -f /cmd.sh ] || fail "no /cmd.sh in the initramfs (start the VM with tests/vm/run.sh)"

# --- modules: no modules.dep, so insmod in passes until all are loaded.
pending=$(cat /lib/modules/load-order)
for pass in 1 2 3 4 5; do
  left=""
  for m in $pending; do
    [ -d "/sys/module/$m" ] && continue
    insmod "/lib/modules/$m.ko" 2>/dev/null || [ -d "/sys/module/$m" ] || left="$left $m"
  done
  pending=$left
  [ -z "$pending" ] && break
done
if [ -n "$pending" ]; then
  for m in $pending; do insmod "/lib/modules/$m.ko"; done
  fail "modules not loaded:$pending"
fi

# --- the host's / over 9p (the virtio device may probe a moment after insmod).
i=0
until mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 host /host 2>/dev/null; do
  i=$((i + 1))
  [ $i -ge 100 ] && { mount -t 9p -o trans=virtio,version=9p2000.L,ro host /host; fail "mount 9p host /host"; }
  sleep 0.1
done
[ -x /host/bin/sh ] || fail "/host/bin/sh missing: is the 9p share the host's / ?"

# --- the guest's own kernel filesystems over the host's.
mount -t proc proc /host/proc || fail "mount /host/proc"
mount -t sysfs sysfs /host/sys || fail "mount /host/sys"
mount -t devtmpfs devtmpfs /host/dev || fail "mount /host/dev"
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /host/dev/pts || fail "mount /host/dev/pts"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /host/dev/shm || fail "mount /host/dev/shm"
# The host's view of the directories about to be covered stays reachable
# here, so that paths the command needs (KEEP) can be bound back on top.
mkdir -p /hostview
mount -o bind /host /hostview || fail "bind /host /hostview"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /host/tmp || fail "mount /host/tmp"
mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /host/run || fail "mount /host/run"
[ -d /host/var/tmp ] && { mount -t tmpfs -o mode=1777 tmpfs /host/var/tmp || fail "mount /host/var/tmp"; }
for keep in $KEEP; do
  case $keep in
    /tmp/*|/run/*|/var/tmp/*)
      [ -d "/host$keep" ] && continue  # already bound (a parent was kept)
      mkdir -p "/host$keep" && mount -o bind "/hostview$keep" "/host$keep" \
        || fail "bind $keep back over the guest's tmpfs" ;;
  esac
done
[ -d /host/var/lib/cloister ] && { mount -t tmpfs -o mode=755 tmpfs /host/var/lib/cloister || fail "mount /host/var/lib/cloister"; }

# A pure cgroup2 hierarchy, mounted as systemd mounts it.
CG=/host/sys/fs/cgroup
mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 $CG 2>/dev/null \
  || mount -t cgroup2 cgroup2 $CG || fail "mount cgroup2 at /sys/fs/cgroup"
for c in $(cat $CG/cgroup.controllers); do
  echo "+$c" > $CG/cgroup.subtree_control || echo "CLOISTER-VM: cannot enable controller $c"
done
controllers=$(cat $CG/cgroup.controllers)
subtree=$(cat $CG/cgroup.subtree_control)
echo "CLOISTER-VM: kernel $(uname -r)"
echo "CLOISTER-VM: cgroup.controllers: $controllers"
echo "CLOISTER-VM: cgroup.subtree_control: $subtree"
[ "$controllers" = "$subtree" ] || fail "not every controller could be enabled at the cgroup2 root"

hostname "$HOSTNAME"
ip link set lo up 2>/dev/null

mkdir -p /host/run/cloister-vm
cp /cmd.sh /host/run/cloister-vm/cmd.sh || fail "copy cmd.sh"
if [ "$CGROUP" = root ]; then
  procs=$CG/cgroup.procs
else
  # As under systemd: the command starts in a leaf cgroup of its own, so code
  # that wants controllers for sub-cgroups must first move itself into a leaf
  # (the no-internal-process rule).
  mkdir -p "$CG/$CGROUP" || fail "mkdir cgroup $CGROUP"
  procs=$CG/$CGROUP/cgroup.procs
fi
echo "CLOISTER-VM: running command in cgroup /${CGROUP#root} at uptime $(up)s"

# A command still running near the host's timeout is about to be killed
# with the VM: first print where every task waits, so that a hang in CI
# leaves more than its last line of output (the host keeps only this log).
if [ "$DUMP_AFTER" -gt 0 ] 2>/dev/null; then
  (
    sleep "$DUMP_AFTER"
    echo; echo "CLOISTER-VM: command still running at uptime $(up)s: where its tasks are"
    # This shell keeps the initramfs's root, where /proc is the guest's;
    # the cgroup2 tree moved with /host: mount it again to read it.
    mkdir -p /cg && mount -t cgroup2 cgroup2 /cg 2>/dev/null
    for d in /proc/[0-9]*; do
      pid=${d##*/}
      [ "$pid" -gt 2 ] 2>/dev/null || continue
      [ -r "$d/stack" ] || continue
      grep -q '^PPid:[[:space:]]*2$' "$d/status" 2>/dev/null && continue  # kernel threads
      echo "--- pid $pid ($(cat "$d/comm" 2>/dev/null)) $(grep '^State:' "$d/status" 2>/dev/null)" \
        "wchan=$(cat "$d/wchan" 2>/dev/null) cgroup=$(cut -d: -f3 "$d/cgroup" 2>/dev/null)"
      tr '\0' ' ' < "$d/cmdline" 2>/dev/null; echo
      cat "$d/stack" 2>/dev/null
    done
    for f in $(find /cg -name cpu.max 2>/dev/null); do
      [ "$(cat "$f")" = "max 100000" ] && continue
      echo "--- ${f%/cpu.max}: cpu.max $(cat "$f"); $(tr '\n' ' ' < "${f%/cpu.max}/cpu.stat")"
    done
    echo "CLOISTER-VM: end of the task dump"
  ) &
  dumper=$!
fi

# "echo 0 > cgroup.procs" moves the writing shell itself, then it becomes the
# command. The environment is built by cmd.sh from scratch (env -i). /host is
# moved onto / first (as switch_root does), so that the command's root is
# its mount namespace's root: the kernel refuses new user namespaces to a
# chrooted process, and a real host's root is no chroot. PID 1 keeps its
# own root (the initramfs) for what follows.
sh -c 'echo 0 > "$1" && cd /host && mount --move . / && exec chroot . /usr/bin/env -i /bin/sh /run/cloister-vm/cmd.sh' sh "$procs"
rc=$?
[ -n "${dumper:-}" ] && kill "$dumper" 2>/dev/null
echo
echo "CLOISTER-VM: command finished at uptime $(up)s"
echo "CLOISTER-VM-RESULT rc=$rc"
off

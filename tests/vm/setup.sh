#!/usr/bin/env bash
# tests/vm/setup.sh — prepare everything the VM harness needs, idempotently.
#
#   1. host tools: qemu-system-x86_64, a static busybox, cpio (apt-get);
#   2. the guest kernel: the versioned package that Debian's `linux-image-amd64`
#      depends on (e.g. linux-image-6.1.0-56-amd64), downloaded with
#      `apt-get download` into the cache and unpacked with `dpkg -x` — never
#      installed on the host;
#   3. the initramfs: busybox, the 9p/virtio modules (and what they depend on,
#      read from each module's .modinfo) and tests/vm/init.sh as /init.
#
# Outputs live in $CLOISTER_VM_CACHE (default /var/cache/cloister-vm), which
# survives fresh clones of the repository; each output is keyed by its inputs
# and rebuilt only when they change. The last lines of stdout are
# shell-sourceable: KERNEL=..., INITRD=..., KVER=... (run.sh reads them).
#
# Environment:
#   CLOISTER_VM_CACHE       cache directory (default /var/cache/cloister-vm)
#   CLOISTER_VM_KERNEL_PKG  kernel package to use instead of linux-image-amd64's
#                           dependency (e.g. linux-image-6.1.0-56-amd64)
#   CLOISTER_VM_NO_APT=1    never call apt-get (fail if something is missing)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${CLOISTER_VM_CACHE:-/var/cache/cloister-vm}
# Modules the guest needs; their dependencies are added automatically.
WANT_MODULES=(virtio_pci 9pnet_virtio 9p)

log() { echo "vm-setup: $*" >&2; }
die() { echo "vm-setup: error: $*" >&2; exit 1; }

mkdir -p "$CACHE"
# One setup at a time per cache (parallel ctest runs, two developers...).
exec 9>"$CACHE/.lock"
flock 9

apt_updated=0
apt_update_once() {
  [[ ${CLOISTER_VM_NO_APT:-0} == 1 ]] && die "apt-get disabled (CLOISTER_VM_NO_APT=1)"
  if (( ! apt_updated )); then
    log "apt-get update"
    apt-get update -qq >&2 || log "apt-get update failed (continuing)"
    apt_updated=1
  fi
}

# --- 1. host tools ---------------------------------------------------------
need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86)
# busybox-static ships /bin/busybox statically linked; the dynamic `busybox`
# package would not run in the initramfs.
if ! dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'install ok installed'; then
  need_pkgs+=(busybox-static)
fi
command -v cpio >/dev/null || need_pkgs+=(cpio)
if (( ${#need_pkgs[@]} )); then
  [[ $(id -u) == 0 ]] || die "need root to install: ${need_pkgs[*]}"
  apt_update_once
  log "installing ${need_pkgs[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${need_pkgs[@]}" >&2 || die "apt-get install ${need_pkgs[*]} failed"
fi
BUSYBOX=/bin/busybox
[[ -x $BUSYBOX ]] || die "$BUSYBOX missing"

# --- 2. kernel -------------------------------------------------------------
resolve_kernel_pkg() {
  apt-cache depends linux-image-amd64 2>/dev/null \
    | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
pkg=${CLOISTER_VM_KERNEL_PKG:-}
if [[ -z $pkg ]]; then
  pkg=$(resolve_kernel_pkg || true)
  if [[ -z $pkg && ${CLOISTER_VM_NO_APT:-0} != 1 ]]; then
    apt_update_once
    pkg=$(resolve_kernel_pkg || true)
  fi
fi
mkdir -p "$CACHE/debs" "$CACHE/kernel"
if [[ -z $pkg ]]; then
  # Offline and no package index: fall back to the newest cached kernel.
  last=$(ls -1 "$CACHE/debs"/linux-image-*.deb 2>/dev/null | sort -V | tail -n1 || true)
  [[ -n $last ]] || die "cannot resolve linux-image-amd64's kernel package and nothing is cached"
  pkg=$(basename "$last"); pkg=${pkg%%_*}
  log "package index unavailable; using cached $pkg"
fi

deb=$(ls -1 "$CACHE/debs/${pkg}"_*.deb 2>/dev/null | sort -V | tail -n1 || true)
if [[ -z $deb ]]; then
  [[ ${CLOISTER_VM_NO_APT:-0} == 1 ]] && die "$pkg not cached and apt disabled"
  log "downloading $pkg"
  # `apt-get download` writes to the current directory; as root it warns that
  # _apt cannot write there, which is harmless.
  (cd "$CACHE/debs" && apt-get download -qq "$pkg" >&2 2>/dev/null) \
    || { apt_update_once; (cd "$CACHE/debs" && apt-get download -qq "$pkg" >&2); } \
    || die "apt-get download $pkg failed"
  deb=$(ls -1 "$CACHE/debs/${pkg}"_*.deb | sort -V | tail -n1)
fi
debname=$(basename "$deb")

# Unpack once per .deb (about 400 MB; kept so that the module list can change
# without unpacking again).
kdir="$CACHE/kernel/${debname%.deb}"
if [[ ! -f $kdir/.done ]]; then
  log "unpacking $debname"
  rm -rf "$kdir" "$kdir.tmp"
  mkdir -p "$kdir.tmp"
  dpkg -x "$deb" "$kdir.tmp"
  mv "$kdir.tmp" "$kdir"
  touch "$kdir/.done"
fi
# Drop kernels of older packages (about 470 MB each with the .deb).
for old in "$CACHE"/debs/*.deb "$CACHE"/kernel/*; do
  [[ -e $old && $old != "$deb" && $old != "$kdir" ]] || continue
  log "removing old $old"; rm -rf "$old"
done
vmlinuz=$(ls -1 "$kdir"/boot/vmlinuz-* | head -n1)
KVER=${vmlinuz##*/vmlinuz-}
moddir="$kdir/lib/modules/$KVER"
[[ -d $moddir ]] || die "no modules dir in $deb"

# --- 3. initramfs ----------------------------------------------------------
# name -> path of every module in the package (names use '_', as the kernel does).
declare -A modpath=()
while IFS= read -r -d '' f; do
  n=${f##*/}; n=${n%%.ko*}; n=${n//-/_}
  modpath[$n]=$f
done < <(find "$moddir/kernel" -name '*.ko*' -print0)
declare -A builtin=()
if [[ -f $moddir/modules.builtin ]]; then
  while read -r f; do n=${f##*/}; n=${n%.ko}; builtin[${n//-/_}]=1; done < "$moddir/modules.builtin"
fi

# Decompressed module contents (busybox insmod may not understand .xz/.zst).
mod_cat() {
  case $1 in
    *.ko.xz)  xz -dc "$1" ;;
    *.ko.zst) zstd -qdc "$1" ;;
    *.ko.gz)  gzip -dc "$1" ;;
    *)        cat "$1" ;;
  esac
}
mod_depends() { mod_cat "$1" | tr '\0' '\n' | sed -n 's/^depends=//p' | tr ',' ' '; }

# Depth-first: dependencies first, so one insmod pass usually suffices (init.sh
# still retries in passes, as there is no modules.dep).
order=()
declare -A seen=()
visit() {
  local m=$1 d
  [[ -n ${seen[$m]:-} ]] && return 0
  seen[$m]=1
  if [[ -n ${builtin[$m]:-} ]]; then return 0; fi
  [[ -n ${modpath[$m]:-} ]] || die "module $m not found in $pkg"
  for d in $(mod_depends "${modpath[$m]}"); do visit "${d//-/_}"; done
  order+=("$m")
}
for m in "${WANT_MODULES[@]}"; do visit "$m"; done

key=$( {
  echo "v2 $debname ${order[*]}"
  sha256sum "$BUSYBOX" "$HERE/init.sh" "${BASH_SOURCE[0]}"
} | sha256sum | cut -c1-16)
# Uncompressed (a few MB): run.sh appends a small cpio with the command, and
# the kernel does not reliably find an archive that follows a gzip one.
initrd="$CACHE/initramfs-$KVER-$key.cpio"
if [[ ! -f $initrd ]]; then
  log "building initramfs ($KVER; modules: ${order[*]})"
  stage=$(mktemp -d "$CACHE/stage.XXXXXX")
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage"/{bin,dev,proc,sys,host,tmp,lib/modules}
  cp "$BUSYBOX" "$stage/bin/busybox"
  for a in $("$BUSYBOX" --list); do
    [[ $a == busybox ]] || ln -s busybox "$stage/bin/$a"
  done
  for m in "${order[@]}"; do mod_cat "${modpath[$m]}" > "$stage/lib/modules/$m.ko"; done
  printf '%s\n' "${order[@]}" > "$stage/lib/modules/load-order"
  echo "$KVER" > "$stage/lib/modules/kver"
  install -m 0755 "$HERE/init.sh" "$stage/init"
  mknod -m 600 "$stage/dev/console" c 5 1
  mknod -m 666 "$stage/dev/null" c 1 3
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0) \
    > "$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  rm -rf "$stage"; trap - EXIT
  # Drop initramfs images of older inputs.
  find "$CACHE" -maxdepth 1 -name 'initramfs-*.cpio*' ! -name "${initrd##*/}" -delete
fi

echo "KERNEL=$vmlinuz"
echo "INITRD=$initrd"
echo "KVER=$KVER"

#!/usr/bin/env bash
# Build the pipacs SD-card image: image/build.sh [arm64|amd64] [OUTDIR]
# (CARD_MB=N: refuse when the image would not fit a card of N MB; COMPRESS=0: no .xz)
#
# Root file system by mmdebstrap (Debian 13 "trixie"), foreign-architecture steps under
# qemu-user-static + binfmt; the card assembled from plain files (sfdisk, mkfs.vfat -C + mcopy,
# mke2fs -d, dd conv=notrunc): no loop devices, mounts or device-mapper. Needs root.
#
# Caches under OUTDIR/cache: the base root as a tarball keyed by the package lists (the slow part:
# 20-25 minutes for arm64 under emulation), and the downloaded wheels. The appliance layer
# (venv, units, configuration) is laid on top in a minute, so changing pipacs rebuilds only that.
set -euo pipefail

ARCH="${1:-arm64}"
HERE="$(cd "$(dirname "$0")" && pwd)"
SRC="$(dirname "$HERE")"
OUT="$(mkdir -p "${2:-$SRC/build/image}" && cd "${2:-$SRC/build/image}" && pwd)"
SUITE="${SUITE:-trixie}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
PYVER="${PYVER:-3.13}"               # trixie's python3
BOOT_MB="${BOOT_MB:-256}"
VERSION="$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$SRC/appliance/__init__.py")"
NAME="pipacs-$VERSION-$ARCH"
CACHE="$OUT/cache/$ARCH"
WORK="$OUT/work-$ARCH"

say() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { echo "image/build.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (mmdebstrap --mode=root and file ownership in the root file system)"
case "$ARCH" in
  arm64) COMPONENTS="main non-free-firmware"; PYPLAT=aarch64 ;;
  amd64) COMPONENTS="main"; PYPLAT=x86_64 ;;
  *) die "unknown architecture $ARCH (arm64 or amd64)" ;;
esac
for tool in mmdebstrap sfdisk mkfs.vfat mcopy mke2fs xz; do
  command -v "$tool" >/dev/null || die "$tool is missing: apt-get install mmdebstrap fdisk dosfstools mtools e2fsprogs xz-utils"
done
if [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
  command -v arch-test >/dev/null && arch-test "$ARCH" >/dev/null 2>&1 || \
    die "cannot run $ARCH programs: apt-get install qemu-user-static binfmt-support arch-test, and mount binfmt_misc"
fi
mkdir -p "$CACHE" "$OUT"
T0=$SECONDS

# ------------------------------------------------------------------ 1. base root (cached)
PKGS="$(grep -hv '^\s*#' "$HERE/packages.txt" "$HERE/packages-$ARCH.txt" | grep -v '^\s*$' | sort -u | paste -sd, -)"
KEY="$(printf '%s\n' "$SUITE" "$ARCH" "$COMPONENTS" "$PKGS" "$(cat "$HERE/base-hooks.sh")" | sha256sum | cut -c1-16)"
BASE="$CACHE/base-$KEY.tar"
if [ ! -s "$BASE" ]; then
  say "building the $ARCH base root ($SUITE; this is the slow step for a foreign architecture)"
  mkdir -p "$CACHE/debs"
  # the host's apt configuration is not touched: the mirror is given here; debs are cached between builds
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root mmdebstrap --mode=root --variant=minbase \
    --architectures="$ARCH" --components="$COMPONENTS" --include="$PKGS" \
    --aptopt='Acquire::Retries "3"' \
    --setup-hook='mkdir -p "$1/var/cache/apt/archives"' \
    --setup-hook="sync-in $CACHE/debs /var/cache/apt/archives" \
    --customize-hook="sync-out /var/cache/apt/archives $CACHE/debs" \
    --customize-hook="$HERE/base-hooks.sh \"\$1\" $ARCH" \
    --skip=cleanup/apt/cache \
    "$SUITE" "${BASE%.tar}.partial.tar" "deb $MIRROR $SUITE $COMPONENTS"
  mv "${BASE%.tar}.partial.tar" "$BASE"
  say "base root ready in $((SECONDS - T0)) s"
else
  say "base root from the cache ($BASE)"
fi

# ------------------------------------------------------------------ 2. the appliance layer
rm -rf "$WORK"
mkdir -p "$WORK/root"
tar -C "$WORK/root" -xpf "$BASE"
R="$WORK/root"
rm -rf "$R/var/cache/apt/archives/"*.deb

say "collecting wheels for cp${PYVER/./} $PYPLAT"
WHEELS="$CACHE/wheels"
mkdir -p "$WHEELS" "$WORK/dist"
rm -f "$WHEELS"/pipacs-*.whl   # our own wheel changes with every build: never the cached one
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip wheel --quiet --no-deps -w "$WORK/dist" "$SRC"
PLAT=(--platform "manylinux_2_28_$PYPLAT" --platform "manylinux_2_17_$PYPLAT" --platform "manylinux2014_$PYPLAT"
      --platform "manylinux_2_27_$PYPLAT" --platform "manylinux_2_26_$PYPLAT" --platform "manylinux_2_24_$PYPLAT"
      --platform any --implementation cp --python-version "$PYVER" --only-binary=:all:)
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip download --quiet "${PLAT[@]}" \
  -d "$WHEELS" "$WORK/dist/"pipacs-*.whl
SITE="$R/opt/pipacs/venv/lib/python$PYVER/site-packages"
mkdir -p "$SITE" "$R/opt/pipacs/venv/bin"
# pip of the host installs the target's wheels (no pip run under emulation, nothing from the network)
env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet --no-index --find-links "$WHEELS" \
  --target "$SITE" --no-compile --ignore-requires-python "${PLAT[@]}" "$WORK/dist/"pipacs-*.whl
# a virtual environment as `python3 -m venv` lays it out, without running the target's python
cat > "$R/opt/pipacs/venv/pyvenv.cfg" <<EOF
home = /usr/bin
include-system-site-packages = false
version = $PYVER
EOF
ln -sf /usr/bin/python3 "$R/opt/pipacs/venv/bin/python3"
ln -sf python3 "$R/opt/pipacs/venv/bin/python"
cat > "$R/opt/pipacs/venv/bin/pipacs" <<'EOF'
#!/opt/pipacs/venv/bin/python3
import sys
from appliance.cli import main
sys.exit(main())
EOF
chmod 755 "$R/opt/pipacs/venv/bin/pipacs"
# `pipacs` over SSH acts on the running appliance: the configuration and storage pipacs.service uses
# (keep in step with its ExecStart and Environment), unless PIPACS_CONFIG or --config says otherwise
cat > "$R/usr/local/bin/pipacs" <<'EOF'
#!/bin/sh
if [ -z "${PIPACS_CONFIG:-}" ]; then
    for f in /var/lib/pipacs/pipacs.json /boot/firmware/pipacs.json; do
        if [ -f "$f" ]; then export PIPACS_CONFIG="$f"; break; fi
    done
fi
export PIPACS_STORAGE_DIRECTORY="${PIPACS_STORAGE_DIRECTORY:-/var/lib/pipacs/data}"
exec /opt/pipacs/venv/bin/pipacs "$@"
EOF
chmod 755 "$R/usr/local/bin/pipacs"

say "laying out units and configuration"
install -d "$R/opt/pipacs/image" "$R/etc/systemd/system" "$R/etc/udev/rules.d"
install -m 755 "$HERE/firstboot.sh" "$HERE/usb-import.sh" "$R/opt/pipacs/image/"
install -m 644 "$SRC/README.md" "$R/opt/pipacs/README.md"
install -m 644 "$SRC/systemd/"*.service "$R/etc/systemd/system/"
install -m 644 "$SRC/systemd/99-pipacs-usb-import.rules" "$R/etc/udev/rules.d/"
cp -a "$HERE/overlay/." "$R/"
chown -R 0:0 "$R/etc/systemd" "$R/opt/pipacs"
mkdir -p "$R/etc/systemd/system/multi-user.target.wants" "$R/etc/systemd/system/sysinit.target.wants"
ln -sf /etc/systemd/system/pipacs.service "$R/etc/systemd/system/multi-user.target.wants/pipacs.service"
ln -sf /etc/systemd/system/pipacs-network.service "$R/etc/systemd/system/multi-user.target.wants/pipacs-network.service"
ln -sf /etc/systemd/system/pipacs-firstboot.service "$R/etc/systemd/system/sysinit.target.wants/pipacs-firstboot.service"
ln -sf /usr/lib/systemd/system/systemd-networkd.service "$R/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
# the card's configuration starts as the image's defaults; the teacher edits it on the FAT partition
mkdir -p "$R/boot/firmware"
install -m 644 "$HERE/pipacs.json" "$R/boot/firmware/pipacs.json"
install -m 644 "$HERE/wifi.txt" "$R/boot/firmware/wifi.txt"
echo "pipacs $VERSION $ARCH built $(date -u +%Y-%m-%dT%H:%MZ)" > "$R/etc/pipacs-release"

# ------------------------------------------------------------------ 3. the card
say "assembling the card"
IMG="$OUT/$NAME.img"
ROOT_KB=$(du -sk --apparent-size "$R" | cut -f1)
ROOT_MB=$(( ROOT_KB / 1024 * 13 / 10 + 300 ))
BOOT_START=2048                                 # sectors: 1 MiB alignment
BOOT_SECTORS=$(( BOOT_MB * 2048 ))
ROOT_START=$(( BOOT_START + BOOT_SECTORS ))
ROOT_SECTORS=$(( ROOT_MB * 2048 ))
TOTAL=$(( ROOT_START + ROOT_SECTORS + 2048 ))
if [ -n "${CARD_MB:-}" ] && [ $(( TOTAL / 2048 )) -gt "$CARD_MB" ]; then
  die "the image needs $(( TOTAL / 2048 )) MB but the card (CARD_MB) has $CARD_MB MB: use a larger card"
fi
rm -f "$IMG" "$WORK/boot.vfat" "$WORK/root.ext4"
truncate -s $(( TOTAL * 512 )) "$IMG"
sfdisk --quiet "$IMG" <<EOF
label: dos
start=$BOOT_START, size=$BOOT_SECTORS, type=c, bootable
start=$ROOT_START, size=$ROOT_SECTORS, type=83
EOF
mkfs.vfat -C -n PIPACS-BOOT -F 32 "$WORK/boot.vfat" $(( BOOT_SECTORS / 2 )) >/dev/null
MTOOLS_SKIP_CHECK=1 mcopy -s -i "$WORK/boot.vfat" "$R/boot/firmware/"* ::/
rm -rf "$R/boot/firmware" && mkdir "$R/boot/firmware"   # a mount point: the FAT partition goes there
mke2fs -q -t ext4 -L pipacs-root -d "$R" -E root_owner=0:0 "$WORK/root.ext4" "${ROOT_MB}M"
dd if="$WORK/boot.vfat" of="$IMG" bs=512 seek=$BOOT_START conv=notrunc,sparse status=none
dd if="$WORK/root.ext4" of="$IMG" bs=512 seek=$ROOT_START conv=notrunc,sparse status=none
# the kernel and initramfs beside the image, for booting it in qemu without a firmware
cp "$(ls -1 "$R"/boot/vmlinuz-* | tail -1)" "$OUT/$NAME.vmlinuz"
cp "$(ls -1 "$R"/boot/initrd.img-* | tail -1)" "$OUT/$NAME.initrd"
rm -f "$WORK/boot.vfat" "$WORK/root.ext4"
if [ "${COMPRESS:-1}" = 1 ]; then
  say "compressing"
  xz -T0 -3 -k -f "$IMG"
fi
say "done in $((SECONDS - T0)) s: $IMG ($(( TOTAL / 2048 )) MB)"

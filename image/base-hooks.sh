#!/bin/sh
# mmdebstrap customize hook for the base root: $1 the root directory, $2 the architecture.
# (Part of the base root's cache key: editing it rebuilds the base.)
set -eu
R="$1"; ARCH="$2"
echo pipacs > "$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tpipacs\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$R/etc/hosts"
# a fresh machine-id and new SSH host keys are made at first boot, not shipped on every card
: > "$R/etc/machine-id"
rm -f "$R"/etc/ssh/ssh_host_*
mkdir -p "$R/var/log/journal"
# nobody logs in with a password; SSH keys come from the card (see firstboot.sh)
chroot "$R" passwd -l root >/dev/null
if [ "$ARCH" = arm64 ]; then
    # the Pi firmware's kernel hook writes cmdline.txt and config.txt from this file
    cat > "$R/etc/default/raspi-firmware" <<'CONF'
ROOTPART=LABEL=pipacs-root
CONSOLES="serial0,115200 tty1"
KERNEL_ARCH=arm64
CONF
    for k in "$R"/boot/vmlinuz-*; do
        v="${k##*/vmlinuz-}"
        # the hook acts only when called as a package's "configure" step would call it
        chroot "$R" env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$v" "/boot/vmlinuz-$v"
        grep -q "root=LABEL=pipacs-root" "$R/boot/firmware/cmdline.txt" || { echo "cmdline.txt lacks the root label" >&2; exit 1; }
    done
fi

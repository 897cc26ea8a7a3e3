#!/bin/sh
# Mount a USB medium read-only, import its DICOM files into the running appliance, unmount.
set -eu
dev="/dev/$1"
mnt="$(mktemp -d /run/pipacs-import.XXXXXX)"
cleanup() { umount "$mnt" 2>/dev/null || true; rmdir "$mnt" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
if ! mount -o ro,nosuid,nodev,noexec "$dev" "$mnt"; then
    echo "pipacs import: cannot mount $dev (not a readable file system?)" >&2
    exit 1
fi
echo "pipacs import: importing from $dev"
/opt/pipacs/venv/bin/pipacs import --config /var/lib/pipacs/pipacs.json --quiet --status-file /run/pipacs/import.json "$mnt"

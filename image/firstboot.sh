#!/bin/sh
# First boot of a freshly written card (pipacs-firstboot.service), as Debian's raspi images do it:
# grow the root partition and file system to the card, new SSH host keys, a fresh machine-id,
# the host name; SSH keys and Wi-Fi from the FAT partition; the board's own teacher password and
# hotspot passphrase. Safe to run again.
set -u
log() { echo "pipacs-firstboot: $*"; }
BOOT=/boot/firmware

rootdev="$(findmnt -no SOURCE /)"
disk="/dev/$(lsblk -no PKNAME "$rootdev" | head -1)"
part="$(cat "/sys/class/block/${rootdev##*/}/partition" 2>/dev/null || echo 2)"
if growpart "$disk" "$part" >/dev/null 2>&1; then
    resize2fs "$rootdev" >/dev/null 2>&1 && log "root file system grown to the whole card ($(df -h --output=size / | tail -1 | tr -d ' '))"
else
    log "root partition already fills the card"
fi

if ! ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1; then
    ssh-keygen -A >/dev/null && log "new SSH host keys"
fi
if [ ! -s /etc/machine-id ]; then
    systemd-machine-id-setup >/dev/null 2>&1 && log "new machine-id"
fi
echo pipacs > /etc/hostname
hostname pipacs 2>/dev/null || true

# SSH keys a teacher put on the card (ssh-authorized-keys.txt): root logs in with them only
if [ -s "$BOOT/ssh-authorized-keys.txt" ]; then
    install -d -m 700 /root/.ssh
    install -m 600 "$BOOT/ssh-authorized-keys.txt" /root/.ssh/authorized_keys
    log "SSH keys taken from the card"
fi

# Wi-Fi from wifi.txt (SSID=, PASSWORD=, COUNTRY=)
if [ -s "$BOOT/wifi.txt" ]; then
    ssid="$(sed -n 's/^SSID=//p' "$BOOT/wifi.txt" | tr -d '\r' | head -1)"
    pass="$(sed -n 's/^PASSWORD=//p' "$BOOT/wifi.txt" | tr -d '\r' | head -1)"
    country="$(sed -n 's/^COUNTRY=//p' "$BOOT/wifi.txt" | tr -d '\r' | head -1)"
    if [ -n "$ssid" ]; then
        conf=/etc/wpa_supplicant/wpa_supplicant-wlan0.conf
        umask 077
        {
            echo "ctrl_interface=DIR=/run/wpa_supplicant"
            [ -n "$country" ] && echo "country=$country"
            echo "network={"
            printf '  ssid="%s"\n' "$ssid"
            if [ -n "$pass" ]; then printf '  psk="%s"\n' "$pass"; else echo "  key_mgmt=NONE"; fi
            echo "}"
        } > "$conf"
        ln -sf /usr/lib/systemd/system/wpa_supplicant@.service \
            /etc/systemd/system/multi-user.target.wants/wpa_supplicant@wlan0.service
        log "Wi-Fi set for network \"$ssid\""
    fi
fi
# This board's own secrets (pipacs first-boot): the teacher password (unless the card's pipacs.json
# has RegisteredUsers) and the hotspot passphrase (unless the card sets one), never the same on two
# boards; kept ones are kept. Both go to pipacs-status.txt on the card and to the journal, where
# systemd-cat puts them without the console (a projector may show the console).
if secrets="$(/usr/local/bin/pipacs first-boot --card "$BOOT")"; then
    if [ -n "$secrets" ]; then
        printf '%s\n' "$secrets" | systemd-cat -t pipacs-firstboot -p notice
        log "the teacher password and the Wi-Fi password are in pipacs-status.txt on the card"
    fi
else
    log "could not make this board's teacher password or Wi-Fi password (see above)"
fi

# firstrun.sh on the card, as Raspberry Pi Imager writes it: run once, as root, then set aside
if [ -f "$BOOT/firstrun.sh" ]; then
    log "running firstrun.sh from the card"
    sh "$BOOT/firstrun.sh" && log "firstrun.sh done" || log "firstrun.sh failed (exit $?)"
    mv -f "$BOOT/firstrun.sh" "$BOOT/firstrun.sh.done" 2>/dev/null || true
fi
touch /var/lib/pipacs-firstboot.done
log "done"

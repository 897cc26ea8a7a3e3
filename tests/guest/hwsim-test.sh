#!/bin/sh
# Runs inside the booted image (installed by firstrun.sh, started at first boot): a Wi-Fi client on
# the second simulated radio, in its own network namespace, joins the appliance's hotspot on the
# first, gets an address by DHCP, resolves pipacs.local and pacs.lan, and asks the appliance for
# /system over HTTP and for a C-ECHO. Results go to the console as HWSIM-TEST lines.
say() { echo "HWSIM-TEST: $*" > /dev/console; echo "HWSIM-TEST: $*"; }
fail() { say "FAIL $*"; exit 1; }
i=0
while [ $i -lt 300 ]; do
    grep -q '"Mode": "hotspot"' /run/pipacs/network.json 2>/dev/null && break
    sleep 1; i=$((i + 1))
done
say "network $(tr -d '\n' < /run/pipacs/network.json 2>/dev/null)"
[ $i -lt 300 ] || fail "no hotspot after 300 s"
k=0
while [ $k -lt 30 ] && ! pgrep -x hostapd >/dev/null; do sleep 1; k=$((k + 1)); done
pgrep -x hostapd >/dev/null || fail "hostapd is not running"
pgrep -x dnsmasq >/dev/null || fail "dnsmasq is not running"
ip netns add client
iw phy phy1 set netns name client || fail "cannot move phy1 into the client namespace"
ip netns exec client ip link set lo up
ip netns exec client ip link set wlan1 up
mkdir -p /etc/netns/client
echo "nameserver 10.42.0.1" > /etc/netns/client/resolv.conf
PSK="$(sed -n 's/.*"HotspotPassphrase": "\([^"]*\)".*/\1/p' /run/pipacs/network.json)"
/opt/pipacs/venv/bin/python3 - "$PSK" <<'PY'
import sys
from appliance.network import NetworkPlan, wpa_supplicant_conf
plan = NetworkPlan("client", "wlan1", "pipacs", sys.argv[1], "", 60, "", "", "10.42.0.1", "pacs.lan")
open("/run/hwsim-client.conf", "w").write(wpa_supplicant_conf(plan))
PY
ip netns exec client wpa_supplicant -B -i wlan1 -c /run/hwsim-client.conf -P /run/hwsim-wpa.pid || fail "wpa_supplicant"
j=0
while [ $j -lt 60 ]; do
    ip netns exec client iw dev wlan1 link | grep -q "Connected to" && break
    sleep 1; j=$((j + 1))
done
[ $j -lt 60 ] || fail "the client did not associate with the hotspot"
say "associated: $(ip netns exec client iw dev wlan1 link | head -2 | tr '\n' ' ')"
cat > /usr/local/sbin/hwsim-udhcpc <<'SH'
#!/bin/sh
case "$1" in
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        echo "$ip $dns $router" > /run/hwsim-lease ;;
esac
exit 0
SH
chmod 755 /usr/local/sbin/hwsim-udhcpc
ip netns exec client busybox udhcpc -i wlan1 -n -q -t 10 -T 2 -s /usr/local/sbin/hwsim-udhcpc || fail "no DHCP answer"
set -- $(cat /run/hwsim-lease 2>/dev/null)
say "dhcp gave $1 (dns $2, router $3); $(ip netns exec client ip -4 -o addr show wlan1 | tr -s ' ' | cut -d' ' -f2-4)"
ip netns exec client ip -4 -o addr show wlan1 | grep -q "inet $1/" || fail "the lease was not applied"
ip netns exec client /opt/pipacs/venv/bin/python3 - <<'PY' || fail "from the client: see above"
import json, socket, urllib.request
from pynetdicom import AE
def say(m):
    with open("/dev/console", "w") as c:
        c.write(f"HWSIM-TEST: {m}\n")
for name in ("pipacs.local", "pacs.lan"):
    addr = socket.getaddrinfo(name, 8042, socket.AF_INET)[0][4][0]
    say(f"resolve {name} {addr}")
    assert addr == "10.42.0.1", addr
system = json.loads(urllib.request.urlopen("http://pipacs.local:8042/system", timeout=20).read())
say(f"http /system {system['DicomAet']} {system['Name']}")
ae = AE(ae_title="IPAD")
ae.add_requested_context("1.2.840.10008.1.1")
assoc = ae.associate("pacs.lan", 4242, ae_title=system["DicomAet"])
assert assoc.is_established
status = assoc.send_c_echo()
assoc.release()
say(f"c-echo status 0x{status.Status:04x}")
assert status.Status == 0
PY
say "card status file: $(ls -l /boot/firmware/pipacs-status.txt) $(findmnt -no OPTIONS /boot/firmware)"
say "PASS"

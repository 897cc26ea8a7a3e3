"""Classroom network: configuration, the mode decision, generated hostapd/dnsmasq/wpa_supplicant
settings (checked with the real tools where they can check), status file, QR codes, `pipacs status`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.config import NETWORK_DEFAULT, ConfigError, validate
from appliance.network import (
    NetworkController,
    decide_mode,
    dnsmasq_conf,
    hostapd_conf,
    plan_network,
    status_text,
    wifi_qr_text,
    wpa_supplicant_conf,
)

ROOT = Path(__file__).resolve().parent.parent


def _net(**kw):
    return validate({"Network": kw})["Network"]


def test_network_configuration_is_checked_key_by_key():
    assert _net() == NETWORK_DEFAULT
    for bad, key in (({"Mode": "mesh"}, "Network.Mode"), ({"Country": "France"}, "Network.Country"),
                     ({"HotspotAddress": "8.8.8.8"}, "Network.HotspotAddress"),
                     ({"HotspotAddress": "10.42.0"}, "Network.HotspotAddress"),
                     ({"HotspotSsid": "x" * 33}, "Network"), ({"ClientTimeout": 1}, "Network.ClientTimeout"),
                     ({"Pasword": "x"}, "Network.Pasword")):
        with pytest.raises(ConfigError) as e:
            _net(**bad)
        assert e.value.key == key, (bad, e.value)


def test_a_short_hotspot_passphrase_turns_the_hotspot_off_with_the_reason():
    plan = plan_network(_net(HotspotPassphrase="short"))
    assert not plan.hotspot_allowed and "8 to 63" in plan.problems[0]
    mode, why = decide_mode(plan, has_wifi=True, address=None, waited=999)
    assert mode == "none" and "8 to 63" in why
    # the appliance itself still starts: the configuration is valid
    assert validate({"Network": {"HotspotPassphrase": "short"}})["Network"]["HotspotPassphrase"] == "short"


def test_mode_decision():
    auto = plan_network(_net(WifiSsid="School", WifiPassword="wrong-password", ClientTimeout=30,
                             HotspotPassphrase="radiology"))
    assert decide_mode(auto, True, "192.168.1.20", 5)[0] == "client"
    assert decide_mode(auto, True, None, 10) == ("client", "waiting for a network (10/30 s)")
    mode, why = decide_mode(auto, True, None, 31)
    assert mode == "hotspot" and 'could not join Wi-Fi "School" within 30 s' in why
    assert decide_mode(auto, False, None, 31)[0] == "none"          # no Wi-Fi hardware: nothing crashes
    client = plan_network(_net(Mode="client", WifiSsid="School"))
    assert decide_mode(client, True, None, 9999)[0] == "client"    # client mode never makes a hotspot
    hot = plan_network(_net(Mode="hotspot", HotspotPassphrase="radiology"))
    assert decide_mode(hot, True, None, 0)[0] == "hotspot"
    assert decide_mode(hot, False, None, 0) == ("none", "hotspot mode asked, but this board has no Wi-Fi hardware")
    assert decide_mode(plan_network(_net(Mode="off")), True, None, 999)[0] == "none"


def test_wifi_from_the_simple_file_on_the_card(tmp_path):
    (tmp_path / "wifi.txt").write_text("# comment\nSSID=Lecture Hall\r\nPASSWORD=secret123\nCOUNTRY=fr\n")
    plan = plan_network(_net(), tmp_path / "wifi.txt")
    assert (plan.wifi_ssid, plan.wifi_password, plan.country) == ("Lecture Hall", "secret123", "FR")


def test_generated_hostapd_settings():
    plan = plan_network(_net(HotspotSsid="Radiologie élèves", HotspotPassphrase="pa;ss word#1", Country="fr"))
    conf = dict(line.split("=", 1) for line in hostapd_conf(plan).splitlines())
    assert bytes.fromhex(conf["ssid2"]).decode() == "Radiologie élèves"
    assert conf["wpa"] == "2" and conf["wpa_key_mgmt"] == "WPA-PSK" and conf["rsn_pairwise"] == "CCMP"
    assert conf["wpa_passphrase"] == "pa;ss word#1" and conf["country_code"] == "FR"
    assert conf["interface"] == "wlan0" and conf["driver"] == "nl80211"
    open_conf = hostapd_conf(plan_network(_net()))
    assert "wpa=" not in open_conf and "wpa_passphrase" not in open_conf


@pytest.mark.skipif(not shutil.which("dnsmasq"), reason="dnsmasq is not installed")
def test_generated_dnsmasq_settings_pass_dnsmasq_own_check(tmp_path):
    plan = plan_network(_net(HotspotAddress="192.168.4.1", ShortName="pacs.lan"))
    text = dnsmasq_conf(plan)
    f = tmp_path / "dnsmasq.conf"
    f.write_text(text)
    out = subprocess.run(["dnsmasq", "--test", f"--conf-file={f}"], capture_output=True, text=True)
    assert out.returncode == 0 and "syntax check OK" in (out.stdout + out.stderr), out.stderr
    assert "dhcp-range=192.168.4.10,192.168.4.250,255.255.255.0,12h" in text
    assert "address=/pipacs.local/192.168.4.1" in text and "address=/pacs.lan/192.168.4.1" in text
    assert "no-resolv" in text   # offline: no upstream DNS to wait for


@pytest.mark.skipif(not shutil.which("wpa_passphrase"), reason="wpasupplicant is not installed")
def test_generated_client_settings_match_wpa_passphrase():
    plan = plan_network(_net(WifiSsid="Hôpital-Wifi", WifiPassword='a"quoted\\pass', Country="DE"))
    conf = wpa_supplicant_conf(plan)
    ref = subprocess.run(["wpa_passphrase", "Hôpital-Wifi", 'a"quoted\\pass'], capture_output=True,
                         text=True).stdout
    psk = next(line.split("=", 1)[1] for line in ref.splitlines() if line.strip().startswith("psk=") and
           not line.strip().startswith("#"))
    assert f"  psk={psk}" in conf and "country=DE" in conf
    assert f"  ssid={'Hôpital-Wifi'.encode().hex()}" in conf


def test_wifi_qr_payload_escapes_special_characters():
    assert wifi_qr_text('a;b,c:"d\\', "p;w") == 'WIFI:T:WPA;S:a\\;b\\,c\\:\\"d\\\\;P:p\\;w;;'
    assert wifi_qr_text("open", "") == "WIFI:T:nopass;S:open;P:;;"


def test_controller_reports_to_the_card_and_the_page(tmp_path):
    plan = plan_network(_net(Mode="hotspot", HotspotSsid="pipacs", HotspotPassphrase="radiology"))
    ctl = NetworkController(plan, {"DicomAet": "PIPACS", "DicomPort": 4242, "HttpPort": 8042},
                            boot_dir=tmp_path / "boot", run_dir=tmp_path / "run")
    ctl.report("hotspot", "hotspot mode (Network.Mode)")
    status = json.loads((tmp_path / "run" / "network.json").read_text())
    assert status["Mode"] == "hotspot" and status["HotspotSsid"] == "pipacs"
    card = (tmp_path / "boot" / "pipacs-status.txt").read_text()
    assert 'Join the Wi-Fi "pipacs" with the password radiology' in card
    assert "AE title PIPACS, port 4242" in card and "Network mode: hotspot" in card
    text = status_text(dict(status, Addresses=["10.42.0.1"]), {"DicomAet": "PIPACS", "DicomPort": 4242,
                                                               "HttpPort": 8042})
    assert "http://10.42.0.1:8042/" in text and "http://pacs.lan:8042/" in text


def test_qr_codes_and_status_on_the_page(make_server, tmp_path):
    status = tmp_path / "network.json"
    status.write_text(json.dumps({"Mode": "hotspot", "Reason": "could not join Wi-Fi", "HotspotSsid": "pipacs",
                                  "HotspotPassphrase": "radiology", "Problems": [], "Addresses": []}))
    srv = make_server(env={"PIPACS_NETWORK_STATUS_FILE": str(status)})
    st = srv.get_json("/pipacs/status")
    assert st["Network"]["Mode"] == "hotspot"
    a = srv.get("/pipacs/qr.svg?text=" + "WIFI:T:WPA;S:pipacs;P:radiology;;")
    b = srv.get("/pipacs/qr.svg?text=http://10.42.0.1:8042/")
    assert a.status == b.status == 200 and a.headers["Content-Type"] == "image/svg+xml"
    assert a.body.startswith(b"<?xml") and b"<svg" in a.body and a.body != b.body
    assert srv.get("/pipacs/qr.svg").status == 400
    out = subprocess.run([sys.executable, "-m", "appliance", "status", "--config", str(srv.config_path),
                          "--port", str(srv.http_port)],
                         capture_output=True, text=True, cwd=ROOT,
                         env={"PIPACS_NETWORK_STATUS_FILE": str(status), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert f"AE title PIPACS, DICOM port {srv.dicom_port}" in out.stdout
    assert 'Network: hotspot - could not join Wi-Fi' in out.stdout and 'Wi-Fi "pipacs", password radiology' in out.stdout


def test_network_plan_can_be_printed_without_changing_anything(tmp_path):
    cfg = tmp_path / "p.json"
    cfg.write_text(json.dumps({"Network": {"Mode": "hotspot", "HotspotPassphrase": "radiology"}}))
    out = subprocess.run([sys.executable, "-m", "appliance", "network", "--config", str(cfg), "--print"],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and '"mode": "hotspot"' in out.stdout and "wpa_passphrase=radiology" in out.stdout

"""The card's secrets: `pipacs teacher-password` (made, from a pipe, only when unset), the first
boot's teacher password and hotspot passphrase (appliance.card), the sign-in section of
pipacs-status.txt kept by the network service, and `pipacs status` saying how to sign in."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from appliance import accounts
from appliance.accounts import PasswordFile, verify_password
from appliance.card import SIGN_IN_HEADING, first_boot, sign_in_section
from appliance.config import HOTSPOT_PASSPHRASE_AT_FIRST_BOOT, load_settings, validate
from appliance.network import NetworkController, decide_mode, plan_network

ROOT = Path(__file__).resolve().parent.parent
GENERATED = re.compile(r"[a-z2-9]{4}-[a-z2-9]{4}-[a-z2-9]{4}")


def _cli(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PIPACS_")}
    return subprocess.run([sys.executable, "-m", "appliance", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env=base | (env or {}), timeout=120)


def _config(tmp_path: Path, **extra) -> Path:
    cfg = tmp_path / "pipacs.json"
    cfg.write_text(json.dumps({"StorageDirectory": str(tmp_path / "data"), **extra}))
    return cfg


def _basic(password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"teacher:{password}".encode()).decode()}


def test_generate_prints_it_once_and_keeps_only_a_private_hash(tmp_path):
    cfg = _config(tmp_path)
    out = _cli("teacher-password", "--config", str(cfg), "--generate")
    assert out.returncode == 0, out.stderr
    password = out.stdout.strip()
    assert GENERATED.fullmatch(password), out.stdout
    kept = tmp_path / "data" / "teacher-password"
    stored = kept.read_text()
    assert stored.startswith("scrypt$") and password not in stored and verify_password(password, stored.strip())
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert password not in out.stderr and str(kept) in out.stderr
    assert "AuthenticationEnabled is false" in out.stderr


def test_if_unset_keeps_a_kept_password_and_registered_users(tmp_path):
    cfg = _config(tmp_path, AuthenticationEnabled=True)
    first = _cli("teacher-password", "--config", str(cfg), "--generate", "--if-unset")
    assert first.returncode == 0 and GENERATED.fullmatch(first.stdout.strip())
    kept = (tmp_path / "data" / "teacher-password").read_text()
    again = _cli("teacher-password", "--config", str(cfg), "--generate", "--if-unset")
    assert again.returncode == 0 and again.stdout == "" and "kept already" in again.stderr
    assert (tmp_path / "data" / "teacher-password").read_text() == kept
    users = tmp_path / "users"
    users.mkdir()
    cfg2 = _config(users, AuthenticationEnabled=True, RegisteredUsers={"anna": "secret-1"})
    out = _cli("teacher-password", "--config", str(cfg2), "--generate", "--if-unset")
    assert out.returncode == 0 and out.stdout == "" and "RegisteredUsers" in out.stderr
    assert not (users / "data" / "teacher-password").exists()


def test_a_password_from_standard_input(tmp_path):
    cfg = _config(tmp_path)
    out = _cli("teacher-password", "--config", str(cfg), stdin="piped-password-1\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and "piped-password-1" not in out.stderr
    assert verify_password("piped-password-1", (tmp_path / "data" / "teacher-password").read_text().strip())
    short = _cli("teacher-password", "--config", str(cfg), stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    empty = _cli("teacher-password", "--config", str(cfg), stdin="")
    assert empty.returncode == 1 and "no password" in empty.stderr
    assert verify_password("piped-password-1", (tmp_path / "data" / "teacher-password").read_text().strip())


def test_root_keeps_it_for_the_owner_of_the_folder(tmp_path, monkeypatch):
    """As root (over SSH) the file goes to the service's user, who owns the state folder: systemd
    hands over a state folder's files only when the folder itself changes hands."""
    state = tmp_path / "state"
    state.mkdir()
    folder = state / "data"
    if os.geteuid() == 0:   # really root: a folder of another user (the service's, DynamicUser)
        service = (4321, 4321)
        os.chown(state, *service)
        PasswordFile(folder).set("for-the-service")
        for path, mode in ((folder, 0o700), (folder / accounts.PASSWORD_FILE, 0o600)):
            st = path.stat()
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (*service, mode), path
        # the root's own folder: root's file
        mine = tmp_path / "root-owned"
        PasswordFile(mine).set("for-root-1")
        assert (mine / accounts.PASSWORD_FILE).stat().st_uid == 0
    else:   # as root would: os.geteuid() says 0, and the (f)chown calls are watched
        chowned = []
        real_fchown, real_chown = os.fchown, os.chown
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        monkeypatch.setattr(os, "fchown", lambda fd, u, g: (chowned.append(("file", u, g)), real_fchown(fd, u, g)))
        monkeypatch.setattr(os, "chown", lambda p, u, g: (chowned.append((Path(p).name, u, g)), real_chown(p, u, g)))
        PasswordFile(folder).set("for-the-service")
        me = (os.getuid(), os.getgid())
        assert chowned == [("data", *me), ("file", *me)]
        assert stat.S_IMODE((folder / accounts.PASSWORD_FILE).stat().st_mode) == 0o600
    assert verify_password("for-the-service", PasswordFile(folder).read())


def test_the_running_appliance_takes_a_new_password_without_restart(make_server):
    srv = make_server({"AuthenticationEnabled": True, "StudentAccess": "open"}, name="live")
    assert srv.get("/statistics", headers=_basic("first-pass-1")).status == 401
    out = _cli("teacher-password", "--config", str(srv.config_path), stdin="first-pass-1\n")
    assert out.returncode == 0, out.stderr
    assert srv.get("/statistics", headers=_basic("first-pass-1")).status == 200
    gen = _cli("teacher-password", "--config", str(srv.config_path), "--generate")
    new = gen.stdout.strip()
    assert srv.get("/statistics", headers=_basic(new)).status == 200
    assert srv.get("/statistics", headers=_basic("first-pass-1")).status == 401
    # `pipacs status` says how to sign in, and never the password
    st = _cli("status", "--config", str(srv.config_path), "--port", str(srv.http_port),
              env={"PIPACS_NETWORK_STATUS_FILE": str(srv.workdir / "none.json")})
    assert st.returncode == 0, st.stdout + st.stderr
    assert 'sign in as user "teacher"' in st.stdout and "pipacs-status.txt" in st.stdout
    assert "pipacs teacher-password" in st.stdout and "Students: nothing to sign in" in st.stdout
    assert new not in st.stdout and "first-pass-1" not in st.stdout


# ---------------------------------------------------------------------- the first boot


def _card(tmp_path: Path, card_json: str | None = None) -> tuple[Path, dict[str, str]]:
    boot = tmp_path / "boot"
    boot.mkdir(parents=True)
    if card_json is None:
        shutil.copy(ROOT / "image" / "pipacs.json", boot / "pipacs.json")
    else:
        (boot / "pipacs.json").write_text(card_json)
    return boot, {"PIPACS_STORAGE_DIRECTORY": str(tmp_path / "state" / "data")}


def test_the_cards_defaults():
    s = load_settings(ROOT / "image" / "pipacs.json", environ={})
    assert s["AuthenticationEnabled"] is True and s["StudentAccess"] == "open"
    assert s["DicomAlwaysAllowStore"] is False and s["RemoteAccessAllowed"] is True
    assert s["RegisteredUsers"] == {} and s["Network"]["HotspotPassphrase"] == HOTSPOT_PASSPHRASE_AT_FIRST_BOOT
    # the placeholder left in place (the card could not be written) keeps the hotspot off, with the reason
    plan = plan_network(s["Network"])
    assert not plan.hotspot_allowed and "first boot" in plan.problems[0]
    assert decide_mode(plan, has_wifi=True, address=None, waited=999)[0] == "none"


def test_first_boot_makes_both_and_writes_them_to_the_card_only(tmp_path):
    boot, env = _card(tmp_path)
    done = first_boot(boot, env)
    password, passphrase = done.teacher_password, done.hotspot_passphrase
    assert GENERATED.fullmatch(password) and GENERATED.fullmatch(passphrase) and password != passphrase
    card = (boot / "pipacs.json").read_text()
    assert f'"HotspotPassphrase": "{passphrase}"' in card and "// pipacs on this card" in card
    assert load_settings(boot / "pipacs.json", environ={})["Network"]["HotspotPassphrase"] == passphrase
    stored = (tmp_path / "state" / "data" / "teacher-password").read_text().strip()
    assert verify_password(password, stored)
    status = (boot / "pipacs-status.txt").read_text()
    assert f'user "teacher" with the password {password}' in status
    assert f'"pipacs", password {passphrase}' in status and "Students: nothing to sign in" in status
    assert any(password in line for line in done.secrets) and any(passphrase in line for line in done.secrets)
    assert not any(password in n or passphrase in n for n in done.notes)   # the console gets no secret
    # a second board from the same image: its own of both
    other, env2 = _card(tmp_path / "b")
    again = first_boot(other, env2)
    assert again.teacher_password != password and again.hotspot_passphrase != passphrase


def test_first_boot_again_changes_nothing(tmp_path):
    boot, env = _card(tmp_path)
    first_boot(boot, env)
    card, status = (boot / "pipacs.json").read_text(), (boot / "pipacs-status.txt").read_text()
    stored = (tmp_path / "state" / "data" / "teacher-password").read_text()
    done = first_boot(boot, env)
    assert done.teacher_password is None and done.hotspot_passphrase is None and done.secrets == []
    assert (boot / "pipacs.json").read_text() == card and (boot / "pipacs-status.txt").read_text() == status
    assert (tmp_path / "state" / "data" / "teacher-password").read_text() == stored


def test_first_boot_keeps_what_the_card_sets(tmp_path):
    boot, env = _card(tmp_path, json.dumps({
        "AuthenticationEnabled": True, "RegisteredUsers": {"anna": "anna-secret"},
        "Network": {"HotspotPassphrase": "our-own-phrase"}}))
    done = first_boot(boot, env)
    assert done.teacher_password is None and done.hotspot_passphrase is None
    assert not (tmp_path / "state" / "data" / "teacher-password").exists()
    status = (boot / "pipacs-status.txt").read_text()
    assert "RegisteredUsers" in status and "password our-own-phrase" in status and "anna-secret" not in status
    # the fixed passphrase older cards shipped is not the teacher's choice: replaced
    old, env2 = _card(tmp_path / "old", '{"Network": {"HotspotPassphrase": "radiology-class"}}')
    made = first_boot(old, env2).hotspot_passphrase
    assert made and "radiology-class" not in (old / "pipacs.json").read_text()


def test_the_network_service_keeps_the_sign_in_section(tmp_path):
    boot, env = _card(tmp_path)
    done = first_boot(boot, env)
    net = validate({"Network": {"Mode": "hotspot", "HotspotPassphrase": done.hotspot_passphrase}})["Network"]
    ctl = NetworkController(plan_network(net), {"DicomAet": "PIPACS", "DicomPort": 4242, "HttpPort": 8042},
                            boot_dir=boot, run_dir=tmp_path / "run")
    ctl.report("client", "waiting for a network (2/60 s)")
    ctl.report("hotspot", "hotspot mode (Network.Mode)")
    status = (boot / "pipacs-status.txt").read_text()
    assert "Network mode: hotspot" in status and "Network: starting" not in status
    assert status.count(SIGN_IN_HEADING) == 1 and status.rstrip().endswith("keep the card away from students.")
    assert f"the password {done.teacher_password}" in sign_in_section(status)
    # the page's status JSON has the hotspot's passphrase (students join with it), never the teacher's
    page = (tmp_path / "run" / "network.json").read_text()
    assert done.hotspot_passphrase in page and done.teacher_password not in page


def test_first_boot_command_keeps_secrets_off_stderr(tmp_path):
    boot, env = _card(tmp_path)
    out = _cli("first-boot", "--card", str(boot), env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith('teacher password (user "teacher"): ')
    password = lines[0].rsplit(" ", 1)[1]
    assert password not in out.stderr and "pipacs-status.txt" in out.stderr
    assert password in (boot / "pipacs-status.txt").read_text()

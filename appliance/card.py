"""The board's own secrets, made at its first boot (``pipacs first-boot``, run as root by the
image's pipacs-firstboot.service): the teacher password and the classroom hotspot's passphrase,
so that no two boards written from one image share either.

- The teacher password (user ``teacher``) is kept as a hash beside the index (``PasswordFile``),
  unless the card's pipacs.json has ``RegisteredUsers`` (then they are the teachers) or one is
  kept already (a second run changes nothing).
- The hotspot passphrase replaces the image's placeholder (``HOTSPOT_PASSPHRASE_AT_FIRST_BOOT``,
  or the fixed ``radiology-class`` that older cards shipped) in the card's pipacs.json, where
  the network service and the Connect page (which shows it to students: they need it) take it.
  A passphrase a teacher wrote there is kept.

Both go, with how to sign in, to a section of ``pipacs-status.txt`` on the card's FAT partition
(the network service rewrites the rest of that file at every change and keeps this section) and
to the journal: never to a web page.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .accounts import TEACHER, PasswordFile, generate_password
from .config import HOTSPOT_PASSPHRASE_AT_FIRST_BOOT, ConfigError, Settings, load_settings, write_text_atomically

STATUS_FILE = "pipacs-status.txt"
SIGN_IN_HEADING = "=== Signing in: written at first boot, kept when this file is rewritten ==="
# what the first boot replaces: the placeholder, and the passphrase every older card shipped
SHIPPED_PASSPHRASES = (HOTSPOT_PASSPHRASE_AT_FIRST_BOOT, "radiology-class")
_PASSPHRASE_VALUE = re.compile(r'("HotspotPassphrase"\s*:\s*)"(' + "|".join(map(re.escape, SHIPPED_PASSPHRASES))
                               + r')"')


def sign_in_section(text: str | None) -> str:
    """The first boot's section of a status file's text ('' when there is none)."""
    if not text:
        return ""
    at = text.find(SIGN_IN_HEADING)
    return text[at:] if at >= 0 else ""


def with_sign_in(new_text: str, old_text: str | None) -> str:
    """``new_text`` (without a section of its own) followed by the section ``old_text`` had."""
    kept = sign_in_section(old_text)
    if not kept:
        return new_text
    return new_text.rstrip("\n") + "\n\n" + kept


def read_status_file(boot_dir: Path) -> str | None:
    try:
        return (boot_dir / STATUS_FILE).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def write_status_file(boot_dir: Path, text: str) -> None:
    write_text_atomically(boot_dir / STATUS_FILE, text)
    os.sync()   # on FAT a rename's directory entry is not made durable by fsync (seen in qemu)


def make_hotspot_passphrase(card_json: Path) -> str | None:
    """Put a passphrase of this board's own in place of the shipped one in ``card_json`` (the rest
    of the file, comments included, is kept); None when the card sets its own, or has none."""
    try:
        text = card_json.read_text(encoding="utf-8")
    except OSError:
        return None
    m = _PASSPHRASE_VALUE.search(text)
    if m is None:
        return None
    passphrase = generate_password()   # three groups of four: 14 characters, WPA2 takes 8 to 63
    write_text_atomically(card_json, text[:m.start()] + m.group(1) + json.dumps(passphrase) + text[m.end():])
    os.sync()
    return passphrase


@dataclass
class FirstBoot:
    """What the first boot did: ``notes`` for the console, ``secrets`` for the journal only."""
    teacher_password: str | None
    hotspot_passphrase: str | None
    notes: list[str]
    secrets: list[str]


def _settings(card_json: Path, environ: Mapping[str, str]) -> tuple[Settings, str]:
    """The configuration the service will start with: the card's, or the defaults when it is refused."""
    env = dict(environ)
    env.pop("PIPACS_CONFIG", None)
    if card_json.is_file():
        try:
            return load_settings(card_json, environ=env), ""
        except ConfigError as e:
            return load_settings(None, environ=env), f"the card's pipacs.json is refused ({e}): the defaults apply"
    return load_settings(None, environ=env), f"no {card_json}: the defaults apply"


def _teacher_paragraph(settings: Settings, password: str | None, old_section: str) -> list[str]:
    if settings["RegisteredUsers"]:
        lines = ["Teachers: sign in on the web page as one of the RegisteredUsers in pipacs.json",
                 "  (scripts: HTTP Basic with the same)."]
    elif password:
        lines = [f'Teacher: sign in on the web page as user "{TEACHER}" with the password {password}',
                 "  (scripts: HTTP Basic with the same). A new one: Change password on the web page, or",
                 "  `pipacs teacher-password` over SSH; this file is not updated then."]
    else:
        old = old_section.splitlines()
        start = next((i for i, line in enumerate(old) if line.startswith("Teacher")), None)
        if start is not None:
            end = next((i for i in range(start + 1, len(old)) if not old[i].startswith("  ")), len(old))
            return old[start:end]
        lines = [f'Teacher: sign in on the web page as user "{TEACHER}" with the password kept on this board',
                 "  (made before; not shown again). A new one: `pipacs teacher-password` over SSH."]
    if not settings["AuthenticationEnabled"]:
        lines.append("  AuthenticationEnabled is false in pipacs.json: anyone on the network may change the archive.")
    return lines


def _wifi_paragraph(settings: Settings) -> list[str]:
    net = settings["Network"]
    p = net["HotspotPassphrase"]
    if p == HOTSPOT_PASSPHRASE_AT_FIRST_BOOT:
        what = "no password could be made (is the card write-protected?): the hotspot stays off"
    elif p:
        what = f"password {p}"
    else:
        what = "an open network (no password)"
    return [f'Classroom Wi-Fi, when the board serves its own: "{net["HotspotSsid"]}", {what}',
            "  (the Connect page shows it to students; change Network.HotspotPassphrase in pipacs.json)."]


def sign_in_text(settings: Settings, teacher_password: str | None, old_section: str = "") -> str:
    students = {"open": "Students: nothing to sign in; they see the studies you publish.",
                "code": "Students: the room code your web page shows; they see the studies you publish.",
                "off": "Students: none (StudentAccess is off): only teachers."}[settings["StudentAccess"]]
    return "\n".join([
        SIGN_IN_HEADING,
        time.strftime("Made %Y-%m-%d %H:%M %Z."),
        *_teacher_paragraph(settings, teacher_password, old_section),
        students,
        *_wifi_paragraph(settings),
        "This file holds the teacher password: keep the card away from students.",
        "",
    ])


def first_boot(boot_dir: Path, environ: Mapping[str, str] | None = None) -> FirstBoot:
    """Make what this board lacks and write the sign-in section to ``boot_dir/pipacs-status.txt``.
    Safe to run again: what exists is kept, and the section is rewritten only when something was made
    (or it is missing)."""
    environ = os.environ if environ is None else environ
    card_json = boot_dir / "pipacs.json"
    notes: list[str] = []
    passphrase = make_hotspot_passphrase(card_json)
    if passphrase:
        notes.append("a hotspot passphrase of this board's own is in pipacs.json on the card")
    settings, problem = _settings(card_json, environ)
    if problem:
        notes.append(problem)
    password = None
    kept = PasswordFile(settings.index_dir)
    if settings["RegisteredUsers"]:
        notes.append("no teacher password made: the teachers are the RegisteredUsers in pipacs.json")
    elif kept.read() is not None:
        notes.append(f"a teacher password is kept already ({kept.path}): unchanged")
    else:
        password = generate_password()
        kept.set(password)
        notes.append(f"a teacher password made, kept as a hash in {kept.path}")
    old = read_status_file(boot_dir)
    old_section = sign_in_section(old)
    if password or passphrase or not old_section:
        section = sign_in_text(settings, password, old_section)
        head = old[:old.find(SIGN_IN_HEADING)] if old and old_section else old
        if not head:
            head = (time.strftime("pipacs status, %Y-%m-%d %H:%M:%S\n\n") +
                    "Network: starting (this part is rewritten when the network is up)\n")
        try:
            write_status_file(boot_dir, head.rstrip("\n") + "\n\n" + section)
            notes.append(f"how to sign in is in {STATUS_FILE} on the card")
        except OSError as e:   # the journal still has it
            notes.append(f"cannot write {STATUS_FILE} on the card: {e}")
    secrets = []
    if password:
        secrets.append(f'teacher password (user "{TEACHER}"): {password}')
    if passphrase:
        secrets.append(f'hotspot "{settings["Network"]["HotspotSsid"]}" passphrase: {passphrase}')
    return FirstBoot(password, passphrase, notes, secrets)

"""Teacher accounts: who may change the archive.

Two sources, both teachers: ``RegisteredUsers`` from the configuration (Orthanc's meaning:
passwords in clear, written there by whoever configures the board), and the teacher password
pipacs keeps itself (made at first boot, changed in the web page), stored only as an scrypt
hash in ``teacher-password`` beside the index, never in clear in a file or a log.

scrypt is memory-hard (16 MiB and about 0.1 s per check on a Raspberry Pi 4), so a stolen
file does not give the password away; checks of the same credentials are remembered for a
few minutes (a keyed digest, never the password), so a script sending HTTP Basic on every
request does not pay for scrypt each time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from .config import write_text_atomically

TEACHER = "teacher"                       # the user name of the password pipacs keeps
PASSWORD_FILE = "teacher-password"
MAX_PASSWORD_BYTES = 1024                 # longer is refused before any hashing
MIN_PASSWORD_LENGTH = 8
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 2**20
_PASSWORD_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"   # no 0/o, 1/l/i: read off a card by a teacher


LOCAL_TOKEN_FILE = "local-token"         # beside the index: made at each start, for commands on the board


def make_local_token(folder: Path) -> str:
    """A new random token for commands run on the board itself (``pipacs import`` from a USB
    stick): written where only the service's user and root can read it, sent back from loopback."""
    token = secrets.token_hex(32)
    old = os.umask(0o077)
    try:
        write_text_atomically(folder / LOCAL_TOKEN_FILE, token + "\n")
    finally:
        os.umask(old)
    return token


def read_local_token(folder: Path) -> str | None:
    try:
        return (folder / LOCAL_TOKEN_FILE).read_text(encoding="ascii").strip() or None
    except OSError:
        return None


class PasswordRejected(ValueError):
    """A new password that cannot be used; the message says why."""


def hash_password(password: str) -> str:
    """``scrypt$N$r$p$salt$hash`` (salt and hash in base64)."""
    salt = os.urandom(16)
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                            maxmem=_SCRYPT_MAXMEM, dklen=32)
    return "$".join(["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` is the one ``stored`` was made from (constant time; False for a
    malformed or foreign record, or a password over MAX_PASSWORD_BYTES)."""
    encoded = password.encode("utf-8", "surrogatepass")
    if len(encoded) > MAX_PASSWORD_BYTES:
        return False
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest, validate=True)
        actual = hashlib.scrypt(encoded, salt=base64.b64decode(salt, validate=True), n=int(n), r=int(r),
                                p=int(p), maxmem=_SCRYPT_MAXMEM, dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def generate_password() -> str:
    """A password a teacher can read off a card and type on an iPad: three groups of four
    (about 59 bits), e.g. ``k7mp-x3qa-9tfe``."""
    return "-".join("".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(4)) for _ in range(3))


def check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordRejected(f"a password has at least {MIN_PASSWORD_LENGTH} characters")
    if len(password.encode("utf-8", "surrogatepass")) > MAX_PASSWORD_BYTES:
        raise PasswordRejected(f"a password has at most {MAX_PASSWORD_BYTES} bytes")
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise PasswordRejected("a password cannot hold control characters")


@dataclass
class PasswordFile:
    """The teacher password pipacs keeps, as a hash, in ``folder/teacher-password``."""
    folder: Path

    @property
    def path(self) -> Path:
        return self.folder / PASSWORD_FILE

    def read(self) -> str | None:
        try:
            return self.path.read_text(encoding="ascii").strip() or None
        except FileNotFoundError:
            return None

    def set(self, password: str) -> None:
        """Keep ``password`` (hashed); written whole or not at all, readable by its owner only.

        Root (``pipacs teacher-password`` over SSH) writes it for the owner of the folder: the
        service's own user (systemd's DynamicUser) must read it, and systemd hands a state
        directory's files over only when the directory itself is not the service's yet (as at the
        first boot, where root makes the folder). Under systemd 257 (Debian 13) that owner is
        ``nobody`` on disk, id-mapped to the dynamic user inside the service."""
        check_new_password(password)
        old = os.umask(0o077)
        try:
            write_text_atomically(self.path, hash_password(password) + "\n", owner=self._owner())
        finally:
            os.umask(old)

    def _owner(self) -> tuple[int, int] | None:
        """When we are root and the nearest existing folder on the way is not root's: its (uid, gid),
        after making the missing folders theirs too."""
        if not hasattr(os, "geteuid") or os.geteuid() != 0:
            return None
        missing = []
        folder = self.folder
        while not folder.exists() and folder.parent != folder:
            missing.append(folder)
            folder = folder.parent
        st = folder.stat()
        if st.st_uid == 0:
            return None
        for d in reversed(missing):
            d.mkdir(mode=0o750, exist_ok=True)
            os.chown(d, st.st_uid, st.st_gid)
        return st.st_uid, st.st_gid


class Teachers:
    """Checks a teacher's name and password against both sources."""

    REMEMBER_SECONDS = 300
    REMEMBER_MAX = 256

    def __init__(self, registered: dict[str, str], password_file: PasswordFile | None):
        self.registered = dict(registered)
        self.password_file = password_file
        self._key = os.urandom(32)
        self._verified: OrderedDict[bytes, float] = OrderedDict()

    @property
    def has_own_password(self) -> bool:
        return self.password_file is not None and self.password_file.read() is not None

    def quick_check(self, user: str, password: str) -> bool | None:
        """``check``'s answer when it needs no scrypt (a registered user, no kept password, a
        check remembered); None when only hashing can tell (call ``check`` off the event loop)."""
        expected = self.registered.get(user)
        if expected is not None:
            return hmac.compare_digest(expected.encode("utf-8", "surrogatepass"),
                                       password.encode("utf-8", "surrogatepass"))
        if user != TEACHER or self.password_file is None:
            return False
        stored = self.password_file.read()
        if stored is None:
            return False
        seen = self._verified.get(self._remember_key(stored, password))
        if seen is not None and time.monotonic() - seen < self.REMEMBER_SECONDS:
            return True
        return None

    def _remember_key(self, stored: str, password: str) -> bytes:
        return hmac.new(self._key, f"{stored}\0{password}".encode("utf-8", "surrogatepass"), "sha256").digest()

    def check(self, user: str, password: str) -> bool:
        """True for a registered user's password, or the kept password under the name ``teacher``
        (when no registered user takes that name). May hash with scrypt: a blocking call."""
        quick = self.quick_check(user, password)
        if quick is not None:
            return quick
        stored = self.password_file.read() if self.password_file is not None else None
        if stored is None:
            return False
        key = self._remember_key(stored, password)
        now = time.monotonic()
        if not verify_password(password, stored):
            return False
        self._verified[key] = now
        while len(self._verified) > self.REMEMBER_MAX:
            self._verified.popitem(last=False)
        return True

    def change_own_password(self, current: str, new: str) -> None:
        """The web page's *change password*: the current one first."""
        if self.password_file is None:
            raise PasswordRejected("this appliance keeps no teacher password of its own; "
                                   "the teachers are the configuration's RegisteredUsers")
        if self.has_own_password and not self.check(TEACHER, current):
            raise PasswordRejected("the current password is not right")
        self.password_file.set(new)
        self._verified.clear()

"""Teacher passwords and the state behind sign-in, called directly (no server, no clock:
times are given)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from appliance.accounts import (
    TEACHER,
    PasswordFile,
    PasswordRejected,
    Teachers,
    generate_password,
    hash_password,
    verify_password,
)
from appliance.audit import Audit
from appliance.web.access_state import Sessions, Throttle


def test_a_kept_password_is_an_scrypt_hash_readable_by_its_owner_only(tmp_path: Path) -> None:
    f = PasswordFile(tmp_path)
    f.set("corr\u00e9ct horse")
    text = f.path.read_text()
    assert text.startswith("scrypt$") and "horse" not in text
    assert stat.S_IMODE(f.path.stat().st_mode) == 0o600
    assert verify_password("corr\u00e9ct horse", f.read())
    assert not verify_password("correct horse", f.read())


@pytest.mark.parametrize("stored", ["", "scrypt$", "bcrypt$1$2$3$4$5", "scrypt$x$8$1$AAAA$AAAA",
                                    "scrypt$16384$8$1$!!$AAAA", "plain"])
def test_a_malformed_record_never_verifies(stored: str) -> None:
    assert verify_password("anything", stored) is False


def test_an_overlong_password_is_not_hashed() -> None:
    assert verify_password("x" * 5000, hash_password("x" * 10)) is False


@pytest.mark.parametrize("bad", ["short", "", "tab\there!", "x" * 1025])
def test_a_new_password_that_cannot_be_used_is_refused_with_the_reason(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PasswordRejected):
        PasswordFile(tmp_path).set(bad)
    assert PasswordFile(tmp_path).read() is None


def test_generated_passwords_are_readable_and_differ() -> None:
    made = {generate_password() for _ in range(50)}
    assert len(made) == 50
    for p in made:
        assert len(p) == 14 and p.count("-") == 2 and not set(p) & set("01lio")


def test_teachers_from_the_configuration_and_the_kept_password(tmp_path: Path) -> None:
    f = PasswordFile(tmp_path)
    f.set("first-password")
    t = Teachers({"alice": "alice-pw"}, f)
    assert t.check("alice", "alice-pw") and not t.check("alice", "wrong")
    assert t.check(TEACHER, "first-password")
    assert t.check(TEACHER, "first-password")           # remembered, same answer
    assert not t.check(TEACHER, "alice-pw") and not t.check("bob", "first-password")
    t.change_own_password("first-password", "second-password")
    assert not t.check(TEACHER, "first-password"), "a changed password must not stay remembered"
    assert t.check(TEACHER, "second-password")
    with pytest.raises(PasswordRejected, match="current password"):
        t.change_own_password("wrong", "third-password")


def test_a_registered_user_named_teacher_wins_over_the_kept_password(tmp_path: Path) -> None:
    f = PasswordFile(tmp_path)
    f.set("kept-password")
    t = Teachers({TEACHER: "configured"}, f)
    assert t.check(TEACHER, "configured") and not t.check(TEACHER, "kept-password")


def test_sessions_expire_when_idle_and_are_bounded() -> None:
    s = Sessions(idle=100, most=3)
    token, session = s.start("teacher", now=0)
    assert s.get(token, now=50) is session
    assert s.get(token, now=149) is session          # seen at 50: idle for 99 s
    assert s.get(token, now=250) is None             # idle for 101 s
    tokens = [s.start("t", now=300)[0] for _ in range(5)]
    assert len(s) == 3 and s.get(tokens[0], now=301) is None and s.get(tokens[-1], now=301) is not None
    assert s.get("x" * 500) is None and s.get("") is None
    s.end(tokens[-1])
    assert s.get(tokens[-1], now=302) is None


def test_throttle_counts_failures_per_address_in_a_window() -> None:
    t = Throttle(limit=3, window=60)
    for i in range(3):
        assert t.wait("10.0.0.5", now=i) == 0
        t.failed("10.0.0.5", now=i)
    assert t.wait("10.0.0.5", now=3) == pytest.approx(57)
    assert t.wait("10.0.0.6", now=3) == 0, "another device is not slowed"
    assert t.wait("10.0.0.5", now=60.5) == 0, "the first failure has left the window"
    assert t.wait("10.0.0.5", now=61) == 0


def test_throttle_remembers_a_bounded_number_of_addresses() -> None:
    t = Throttle(limit=1, window=60, addresses=10)
    for i in range(100):
        t.failed(f"10.0.{i // 256}.{i % 256}", now=0)
    assert len(t._failures) == 10


def test_audit_keeps_the_recent_events_newest_first() -> None:
    a = Audit(kept=3)
    for i in range(5):
        a.record("10.0.0.1", "teacher", f"DELETE /studies/{i}", "done")
    assert [e["Action"] for e in a.recent()] == ["DELETE /studies/4", "DELETE /studies/3", "DELETE /studies/2"]


@pytest.mark.parametrize("header, value", [
    ("pipacs_session=abc", "abc"), ("x=1; pipacs_session=abc; y=2", "abc"), ('pipacs_session="abc"', "abc"),
    ("xpipacs_session=abc", ""), ("pipacs_session", ""), ("", ""), ("a=pipacs_session=zz", ""),
    ("pipacs_session=; other=1", ""), ("pipacs_session=a=b", "a=b")])
def test_one_cookie_is_read_from_the_header(header: str, value: str) -> None:
    from appliance.web.access import cookie_value
    assert cookie_value(header, "pipacs_session") == value

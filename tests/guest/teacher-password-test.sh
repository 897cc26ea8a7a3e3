#!/bin/sh
# Runs inside the booted image (installed by firstrun.sh, started at first boot), as root over SSH
# would: `pipacs teacher-password` while the service runs. The running appliance takes the new
# password at once (no restart), the file stays the service's own (DynamicUser) and private, then the
# first boot's password is put back from the card. Results go to the console as TEACHER-PW lines.
say() { echo "TEACHER-PW: $*" > /dev/console; echo "TEACHER-PW: $*"; }
fail() { say "FAIL $*"; exit 1; }
PY=/opt/pipacs/venv/bin/python3
# the HTTP status of GET /statistics (teachers only) as user teacher with the password $1 (none: of
# GET /system, which students may read: wrong passwords are slowed after 10 a minute)
code() {
    $PY - "${1:-}" <<'PY'
import base64, sys, urllib.error, urllib.request
auth = {"Authorization": "Basic " + base64.b64encode(("teacher:" + sys.argv[1]).encode()).decode()}
req = urllib.request.Request("http://127.0.0.1:8042/" + ("statistics" if sys.argv[1] else "system"),
                             headers=auth if sys.argv[1] else {})
try:
    print(urllib.request.urlopen(req, timeout=20).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError as e:
    print(f"error {e}")
PY
}
i=0
while [ $i -lt 400 ]; do
    systemctl -q is-active pipacs.service && [ "$(code)" = 200 ] && break
    sleep 2; i=$((i + 1))
done
[ $i -lt 400 ] || fail "the appliance did not answer"
FIRST="$(sed -n 's/.*user "teacher" with the password \([^ ]*\)$/\1/p' /boot/firmware/pipacs-status.txt | head -1)"
[ -n "$FIRST" ] || fail "no teacher password in pipacs-status.txt"
[ "$(code "$FIRST")" = 200 ] || fail "the first boot's password is refused: $(code "$FIRST")"
echo "guest-set-pw-2" | pipacs teacher-password || fail "pipacs teacher-password from a pipe"
KEPT=/var/lib/pipacs/data/teacher-password
say "kept: $(stat -c '%U %a' "$KEPT"); folder: $(stat -c '%U %a' /var/lib/pipacs/data)"
[ "$(stat -c %u "$KEPT")" = "$(stat -c %u /var/lib/pipacs/data)" ] || fail "the file is not the service's"
[ "$(stat -c %a "$KEPT")" = 600 ] || fail "the file is not private"
[ "$(code guest-set-pw-2)" = 200 ] || fail "the new password is refused: $(code guest-set-pw-2)"
[ "$(code "$FIRST")" = 401 ] || fail "the old password still works"
say "a new password is taken without restart"
printf '%s\n' "$FIRST" | pipacs teacher-password || fail "putting the first password back"
[ "$(code "$FIRST")" = 200 ] || fail "the first password, put back, is refused"
STATUS="$(pipacs status 2>&1)"
echo "$STATUS" | grep -q 'sign in as user "teacher"' || fail "pipacs status does not say how to sign in: $STATUS"
case "$STATUS" in *"$FIRST"*) fail "pipacs status shows the password" ;; esac
say "pipacs status: $(echo "$STATUS" | grep -E '^(Teacher|Students|Sign-in)' | tr '\n' ' ')"
say "PASS"

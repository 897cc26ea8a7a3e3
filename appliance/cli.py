"""The ``pipacs`` command: serve, config, import, network, status, teacher-password, first-boot."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .config import ConfigError, defaults_document, load_settings


def _setup_logging(verbose: bool) -> None:
    from .systemd_notify import journal_handler, under_journal

    level = logging.DEBUG if verbose else logging.INFO
    if under_journal():   # the journal adds its own time stamps; give it priorities and fields
        logging.basicConfig(level=level, handlers=[journal_handler()])
    else:
        logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom logs every PDU at INFO; our own lines say what a person needs.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # pydicom logs a traceback for each codec that fails before trying the next; the error
    # it raises at the end names every codec's reason, and that goes to the client and our log
    logging.getLogger("pydicom.pixels.decoders.base").setLevel(logging.DEBUG if verbose else logging.CRITICAL)
    # and an error line for a nested value it cannot turn into DICOM JSON, before raising: the
    # element is then left out, and the DICOMweb metadata says so in our log
    logging.getLogger("pydicom").addFilter(
        lambda r: not (r.levelno >= logging.ERROR and r.getMessage().startswith("Error while processing tag")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipacs", description="DICOM teaching-file appliance")
    parser.add_argument("--version", action="version", version=f"pipacs {__version__}")
    sub = parser.add_subparsers(dest="command")
    p_serve = sub.add_parser("serve", help="run the appliance (DICOM listener and web server)")
    p_serve.add_argument("--config", help="configuration file (JSON; default: built-in defaults)")
    p_serve.add_argument("--verbose", action="store_true", help="log every detail")
    p_conf = sub.add_parser("config", help="show or check configuration")
    p_conf.add_argument("--defaults", action="store_true", help="print the documented default configuration")
    p_conf.add_argument("--check", metavar="FILE", help="validate a configuration file and print the result")
    p_conf.add_argument("--adopt", metavar="CARD_FILE",
                        help="take this file as the configuration if it is valid (with --last-good); "
                             "otherwise keep the last good one and record why")
    p_conf.add_argument("--last-good", metavar="FILE", help="where the configuration in use is kept")
    p_imp = sub.add_parser("import", help="import folders, ZIP files and DICOMDIR media into the running appliance")
    p_imp.add_argument("paths", nargs="+", metavar="PATH", help="folder, file, ZIP or DICOMDIR medium (recursive)")
    p_imp.add_argument("--config", help="the appliance's configuration file (for its HTTP port and users)")
    p_imp.add_argument("--port", type=int, help="the appliance's HTTP port (default: from the configuration)")
    p_imp.add_argument("--user", help="HTTP user, when authentication is on")
    p_imp.add_argument("--password", help="HTTP password, when authentication is on")
    p_imp.add_argument("--anonymize", action="store_true",
                       help="de-identify on the way in (the same source always gives the same anonymized case; "
                            "a case bundle's files that are de-identified already are stored as they are)")
    p_imp.add_argument("--quiet", action="store_true", help="no progress bar, only the summary")
    p_imp.add_argument("--status-file", help="also write the progress there as JSON (the web page shows it)")
    p_net = sub.add_parser("network", help="run the classroom network (Wi-Fi client or hotspot); as root")
    p_net.add_argument("--config", help="configuration file (the card's)")
    p_net.add_argument("--last-good", help="configuration to use when the card's is refused")
    p_net.add_argument("--print", action="store_true", help="print the plan and generated settings, change nothing")
    p_stat = sub.add_parser("status", help="where the appliance is: addresses, network mode, viewer settings")
    p_stat.add_argument("--config", help="configuration file")
    p_stat.add_argument("--port", type=int, help="the appliance's HTTP port (default: from the configuration)")
    p_pw = sub.add_parser("teacher-password",
                          help="set the password of the user 'teacher' that pipacs keeps (as a hash, beside the index)")
    p_pw.add_argument("--config", help="the appliance's configuration file (for its IndexDirectory)")
    p_pw.add_argument("--generate", action="store_true", help="make one and print it (once) on stdout")
    p_pw.add_argument("--if-unset", action="store_true",
                      help="do nothing when a password is kept already or the configuration has RegisteredUsers")
    p_first = sub.add_parser("first-boot", help="the image's first boot, as root: make this board's teacher "
                                                "password and hotspot passphrase, write them to the card")
    p_first.add_argument("--card", default="/boot/firmware", help="the card's FAT partition (default: %(default)s)")
    args = parser.parse_args(argv)

    if args.command == "teacher-password":
        return _teacher_password(args)
    if args.command == "first-boot":
        return _first_boot(args)
    if args.command == "import":
        return _import(args)
    if args.command == "network":
        return _network(args)
    if args.command == "status":
        return _status(args)

    if args.command == "config":
        if args.adopt:
            if not args.last_good:
                parser.error("--adopt needs --last-good FILE")
            from pathlib import Path

            from .config import adopt
            adopted, message = adopt(Path(args.adopt), Path(args.last_good))
            print(f"pipacs: {message}", file=sys.stderr if not adopted else sys.stdout)
            return 0   # never a boot loop: the service starts with the last good configuration
        if args.check:
            try:
                s = load_settings(args.check)
            except ConfigError as e:
                print(f"pipacs: {e}", file=sys.stderr)
                return 2
            import json
            print(json.dumps(dict(s), indent=2))
            return 0
        print(defaults_document(), end="")
        return 0
    if args.command in (None, "serve"):
        config = getattr(args, "config", None)
        _setup_logging(getattr(args, "verbose", False))
        try:
            settings = load_settings(config)
        except ConfigError as e:
            print(f"pipacs: refusing to start: {e}", file=sys.stderr)
            return 2
        import uvloop

        from . import pydicom_setup
        from .service import StartupError, print_banner, serve
        pydicom_setup.configure(settings["Dictionary"])
        try:
            # uvloop: the same asyncio, with its loop and transports in C (libuv). A web request
            # costs about a fifth less time here (a /file request 0.65 -> 0.55 ms, same aiohttp code).
            uvloop.run(serve(settings, on_ready=print_banner))
        except StartupError as e:
            print(f"pipacs: cannot start: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
        return 0
    parser.print_help()
    return 2


def _settings_or_none(path: str | None):
    """The configuration, or None after saying why it cannot be used."""
    try:
        return load_settings(path)
    except ConfigError as e:
        print(f"pipacs: {e}", file=sys.stderr)
        return None


def _teacher_password(args) -> int:
    """Keep a new teacher password: asked twice at a terminal, one line from a pipe, or made
    (``--generate``). The running appliance reads the file at each check: no restart."""
    import getpass

    from .accounts import PasswordFile, PasswordRejected, generate_password

    settings = _settings_or_none(args.config)
    if settings is None:
        return 2
    kept = PasswordFile(settings.index_dir)
    if args.if_unset:
        if settings["RegisteredUsers"]:
            print("pipacs: the teachers are the configuration's RegisteredUsers: no password made", file=sys.stderr)
            return 0
        try:
            if kept.read() is not None:
                print(f"pipacs: a teacher password is kept already ({kept.path}): unchanged", file=sys.stderr)
                return 0
        except OSError as e:
            print(f"pipacs: cannot read {kept.path}: {e}", file=sys.stderr)
            return 1
    if args.generate:
        password = generate_password()
    elif sys.stdin.isatty():
        try:
            password = getpass.getpass("New teacher password: ")
            if getpass.getpass("Again: ") != password:
                print("pipacs: the two passwords differ; nothing changed", file=sys.stderr)
                return 1
        except (EOFError, KeyboardInterrupt):
            print("\npipacs: nothing changed", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            print("pipacs: no password on standard input; nothing changed", file=sys.stderr)
            return 1
    try:
        kept.set(password)
    except PasswordRejected as e:
        print(f"pipacs: {e}; nothing changed", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"pipacs: cannot keep the password in {kept.path}: {e}", file=sys.stderr)
        return 1
    if args.generate:
        print(password)
    print(f"pipacs: teacher password kept (as a hash) in {kept.path}; sign in as user 'teacher'", file=sys.stderr)
    if "teacher" in settings["RegisteredUsers"]:
        print("pipacs: note: RegisteredUsers has a user 'teacher' too, whose password is the one that counts",
              file=sys.stderr)
    if not settings["AuthenticationEnabled"]:
        print("pipacs: note: AuthenticationEnabled is false, so every client is the teacher until it is true",
              file=sys.stderr)
    return 0


def _first_boot(args) -> int:
    """The board's own secrets (appliance.card): notes on stderr (the console), the secrets alone on
    stdout, which the image's first boot sends to the journal only."""
    from pathlib import Path

    from .card import first_boot

    try:
        done = first_boot(Path(args.card))
    except OSError as e:
        print(f"pipacs first-boot: {e}", file=sys.stderr)
        return 1
    for note in done.notes:
        print(f"pipacs first-boot: {note}", file=sys.stderr)
    for line in done.secrets:
        print(line)
    return 0


def _sign_in_lines(settings) -> list[str]:
    """How to sign in, for `pipacs status`: never a password."""
    from .accounts import PasswordFile

    if not settings["AuthenticationEnabled"]:
        return ["Sign-in: none (AuthenticationEnabled is false: every client may change the archive)"]
    lines = []
    if settings["RegisteredUsers"]:
        lines.append("Teachers: sign in as one of the RegisteredUsers in the configuration")
    if "teacher" not in settings["RegisteredUsers"]:
        try:
            kept = PasswordFile(settings.index_dir).read() is not None
        except OSError:
            kept = None
        if kept or kept is None:
            lines.append("Teacher: sign in as user \"teacher\"; the password made at first boot is in "
                         "pipacs-status.txt on the card's FAT partition (/boot/firmware here)")
            lines.append("  A new one: `pipacs teacher-password` (or Change password on the web page)")
        elif not settings["RegisteredUsers"]:
            lines.append("Teacher: no password is kept yet: set one with `pipacs teacher-password`")
    lines.append({"open": "Students: nothing to sign in (they see what the teacher publishes)",
                  "code": "Students: the room code on the teacher's page",
                  "off": "Students: no access (StudentAccess is off)"}[settings["StudentAccess"]])
    return lines


def _import(args) -> int:
    from pathlib import Path

    from . import pydicom_setup
    from .client import default_target
    from .teaching.importer import run_import

    settings = _settings_or_none(args.config)
    if settings is None:
        return 2
    pydicom_setup.configure(settings["Dictionary"])   # a DICOMDIR on the medium is read here
    host, port, user, password, token = default_target(settings)
    paths = [Path(p) for p in args.paths]
    bundles = [p for p in paths if _is_bundle_file(p)]
    paths = [p for p in paths if p not in bundles]
    failed = False
    for b in bundles:   # case bundles go whole to POST /cases/import, which stores their files too
        ok = _import_bundle(b, host, args.port or port, args.user or user, args.password or password,
                            None if args.user else token, anonymize=args.anonymize)
        failed = failed or not ok
    if not paths:
        return 3 if failed else 0
    try:
        summary = run_import(paths, host, args.port or port, args.user or user,
                             args.password or password, anonymize=args.anonymize, progress=not args.quiet,
                             status_file=Path(args.status_file) if args.status_file else None,
                             local_token=None if args.user else token)
    except ConnectionError as e:
        print(f"pipacs import: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pipacs import: interrupted; what was sent is stored", file=sys.stderr)
        return 130
    for line in summary.lines():
        print(line)
    return 0 if not summary.rejected and not summary.missing and not failed else 3


def _is_bundle_file(path) -> bool:
    """A case bundle: a file whose first ZIP member is bundle.json (teaching.bundles.is_bundle)."""
    from .teaching.bundles import is_bundle

    try:
        with open(path, "rb") as f:
            return path.is_file() and is_bundle(f.read(64))
    except OSError:
        return False


def _import_bundle(path, host: str, port: int, user: str | None, password: str | None,
                   token: str | None, anonymize: bool = False) -> bool:
    """POST one case bundle to /cases/import and print its report; False when it was refused or a
    case of it was not imported whole."""
    from .client import ApplianceClient
    from .teaching.bundles import report_lines

    appliance = ApplianceClient(host, port, user, password, local_token=token)
    try:
        appliance.check()
        status, report = appliance.import_bundle(path, anonymize)
    except (ConnectionError, OSError) as e:
        print(f"pipacs import: {path}: {e}", file=sys.stderr)
        return False
    finally:
        appliance.close()
    if status != 200:
        why = report.get("Message") or report.get("Details") if isinstance(report, dict) else report
        print(f"pipacs import: {path}: refused ({status}): {why}", file=sys.stderr)
        return False
    for line in report_lines(str(path), report):
        print(line)
    return all(c["Status"] != "Refused" and not c["Problems"] for c in report["Cases"]) and not report["Problems"]


def _network(args) -> int:
    from pathlib import Path

    from .network import (
        NetworkController,
        dnsmasq_conf,
        hostapd_conf,
        plan_as_json,
        plan_network,
    )

    try:
        settings = load_settings(args.config)
    except ConfigError as e:
        print(f"pipacs network: {e}; using {args.last_good or 'the defaults'}", file=sys.stderr)
        try:
            settings = load_settings(args.last_good if args.last_good and Path(args.last_good).exists() else None)
        except ConfigError:
            settings = load_settings(None, environ={})
    plan = plan_network(settings["Network"], Path("/boot/firmware/wifi.txt"))
    if args.print:
        import json
        print(json.dumps(plan_as_json(plan), indent=2))
        print("--- hostapd.conf\n" + hostapd_conf(plan) + "--- dnsmasq.conf\n" + dnsmasq_conf(plan), end="")
        return 0
    _setup_logging(False)
    summary = {k: settings[k] for k in ("DicomAet", "DicomPort", "HttpPort")}
    NetworkController(plan, summary).run()
    return 0


def _status(args) -> int:
    import json
    import urllib.request

    from .network import status_json

    settings = _settings_or_none(args.config)
    if settings is None:
        return 2
    port = args.port or settings["HttpPort"]
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/pipacs/status", timeout=5) as r:
            st = json.loads(r.read())
    except OSError as e:
        print(f"pipacs is not answering on port {port}: {e}")
        st = None
    net = status_json()
    if st:
        addrs = [a["Address"] for a in st["Addresses"] if not a["Address"].startswith("127.")]
        print(f"{st['Name']}: AE title {st['DicomAet']}, DICOM port {st['DicomPort']}, web port {st['HttpPort']}")
        for a in addrs:
            print(f"  http://{a}:{st['HttpPort']}/    WADO http://{a}:{st['HttpPort']}/wado")
        if st.get("Zeroconf"):
            print(f"  Bonjour: {st['Zeroconf']['HostName']}")
        s = st["Storage"]
        print(f"  {s['Studies']} studies, {s['Instances']} instances, {s['UsedBytes'] // 2**20} MB used, "
              f"{s['FreeBytes'] // 2**20} MB free")
        if st.get("ConfigurationProblem"):
            print(f"  Problem: {st['ConfigurationProblem']}")
    for line in _sign_in_lines(settings):
        print(line)
    if net:
        print(f"Network: {net['Mode']} - {net['Reason']}")
        if net["Mode"] == "hotspot":
            print(f"  Wi-Fi \"{net['HotspotSsid']}\"" + (f", password {net['HotspotPassphrase']}"
                                                        if net["HotspotPassphrase"] else " (open)"))
        for p in net.get("Problems", []):
            print(f"  Problem: {p}")
    return 0 if st else 1

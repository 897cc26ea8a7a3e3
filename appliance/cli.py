"""The ``pipacs`` command: serve, config."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import __version__
from .config import ConfigError, defaults_document, load_settings


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom logs every PDU at INFO; our own lines say what a person needs.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


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
    args = parser.parse_args(argv)

    if args.command == "config":
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
        from .service import StartupError, print_banner, serve
        try:
            asyncio.run(serve(settings, on_ready=print_banner))
        except StartupError as e:
            print(f"pipacs: cannot start: {e}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
        return 0
    parser.print_help()
    return 2

"""The machine's own addresses, to tell a teacher where to point the viewers."""

from __future__ import annotations

import fcntl
import socket
import struct

_SIOCGIFADDR = 0x8915


def ipv4_addresses() -> list[tuple[str, str]]:
    """(interface, address) for every interface with an IPv4 address, loopback last."""
    out: list[tuple[str, str]] = []
    try:
        names = [n for _, n in socket.if_nameindex()]
    except OSError:
        return out
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for name in names:
            try:
                raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            out.append((name, socket.inet_ntoa(raw[20:24])))
    out.sort(key=lambda t: t[1].startswith("127."))
    return out

"""What the client asked for in its Accept header, read in one place for every service.

Accept is read as RFC 9110 12.5.1 says (a list of media ranges, wildcards, q-values; PS3.18 8.7.3
lets a client name several): the best range a route can satisfy decides its answer. An Accept that
names nothing the route can make is refused with 400, as Orthanc's DICOMweb plugin refuses it
(PS3.18 8.7.3 would say 406: the plugin's status is kept, so that clients written for it see what
they expect), never answered with something else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from aiohttp import web

from ..errors import BAD_REQUEST, PARAMETER_OUT_OF_RANGE, BadRequestBody

_PARAM = re.compile(r';\s*([^=;,\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,]*)')


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept list: ``type/subtype`` (lower case), its parameters, its weight."""
    media: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0

    def covers(self, media: str) -> bool:
        """Whether this range names ``media`` (``*/*``, ``image/*`` or the type itself)."""
        if self.media in ("*/*", media):
            return True
        major, _, minor = self.media.partition("/")
        return minor == "*" and media.split("/")[0] == major


def media_ranges(request: web.Request) -> list[MediaRange]:
    """The Accept list, best weight first (the client's order among equals); ``*/*`` when the
    request has no Accept (RFC 9110: any media type) or an empty one."""
    header = ",".join(request.headers.getall("Accept", []))
    if not header.strip():
        return [MediaRange("*/*")]
    out: list[tuple[float, int, MediaRange]] = []
    for n, element in enumerate(_split(header)):
        media, _, rest = element.partition(";")
        media = media.strip().lower()
        if "/" not in media:
            continue
        params: dict[str, str] = {}
        q = 1.0
        for name, value in _PARAM.findall(";" + rest):
            value = value.strip()
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            name = name.lower()
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
                break   # what follows q are accept-extensions, not media type parameters
            params[name] = value
        if q > 0:
            out.append((-q, n, MediaRange(media, params, q)))
    return [r for _, _, r in sorted(out, key=lambda t: (t[0], t[1]))]


def _split(header: str) -> list[str]:
    """The elements of a comma-separated list, commas inside quoted strings kept."""
    parts, cur, quoted, escaped = [], "", False, False
    for ch in header:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append(cur)
            cur = ""
            continue
        cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def refuse(request: web.Request, offered: str) -> BadRequestBody:
    """The 400 an Accept that names nothing this route makes is answered with (Orthanc's plugin: a
    parameter out of range)."""
    accept = ",".join(request.headers.getall("Accept", []))
    # Orthanc's plugin: a parameter out of range for an image it cannot render, a bad request otherwise
    image = request.path.endswith(("/rendered", "/thumbnail")) or (
        "/frames/" in request.path and accept.strip().lower().startswith("image/"))
    return BadRequestBody(f"this route cannot answer Accept: {accept[:200]}; it answers {offered}",
                          PARAMETER_OUT_OF_RANGE if image else BAD_REQUEST)


def single_part(request: web.Request, offered: list[str]) -> str:
    """Which of the ``offered`` media types (the first is the default) the client takes best;
    400 when none."""
    for r in media_ranges(request):
        for media in offered:
            if r.covers(media):
                return media
    raise refuse(request, " or ".join(offered))


def multipart_part(request: web.Request, offered: list[str]) -> tuple[str, MediaRange]:
    """Which part type of a multipart/related answer the client takes best, and the range that
    chose it (its transfer-syntax parameter, if any); a range that names no type takes the
    default, ``offered[0]``; 400 when none."""
    for r in media_ranges(request):
        if r.media in ("*/*", "multipart/*") or (r.media == "multipart/related" and "type" not in r.params):
            return offered[0], r
        if r.media == "multipart/related":
            wanted = MediaRange(r.params["type"].strip().lower())
            for media in offered:
                if wanted.covers(media):
                    return media, r
    names = ", ".join(f'multipart/related; type="{m}"' for m in offered)
    raise refuse(request, names)


def accepted_syntax(chosen: MediaRange) -> str | None:
    """The transfer syntax the chosen range asks for, None for 'as stored' (absent or *)."""
    ts = chosen.params.get("transfer-syntax", "").strip()
    if not ts or ts == "*":
        return None
    return ts


def accepted_image(request: web.Request) -> str:
    """The image format of a rendered answer: JPEG (the default) or PNG; 400 for anything else."""
    return single_part(request, ["image/jpeg", "image/png"]).split("/")[1]


def accepted_json(request: web.Request) -> None:
    """A DICOM JSON answer (QIDO-RS, metadata): application/dicom+json or application/json taken;
    anything else (DICOM XML is not offered) refused."""
    single_part(request, ["application/dicom+json", "application/json"])

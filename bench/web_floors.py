"""Floors for `/instances/{id}/file`: how fast Python can send the same files, with and without aiohttp.

`python -m bench.web_floors aiohttp|protocol FOLDER` serves the sorted `*.dcm` of FOLDER as
`/f/{index}` on a loopback port chosen by the kernel, printed on the first line of stdout.

- aiohttp: one route in a bare aiohttp application on uvloop, answered by pipacs' own
  `stored_file_response`, with no middleware and no index: what pipacs costs beyond aiohttp.
- protocol: an asyncio protocol on uvloop that reads a request's first line and writes the
  headers and the file's bytes: Python with no HTTP framework at all.

Measurement floors for the bench only, never a server for clients: the protocol one skips
everything HTTP asks of a real server but the shape of one GET.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from appliance.web.filesend import stored_file_response

HEADERS = {"Content-Type": "application/dicom", "Content-Disposition": 'attachment; filename="f.dcm"'}


async def serve_aiohttp(files: list[Path]) -> int:
    sizes = [p.stat().st_size for p in files]

    async def one_file(request: web.Request) -> web.StreamResponse:
        i = int(request.match_info["i"])
        return await stored_file_response(request, files[i], sizes[i], HEADERS)

    app = web.Application()
    app.router.add_get("/f/{i}", one_file)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, tcp_keepalive=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner.addresses[0][1]


class FileProtocol(asyncio.Protocol):
    """GET /f/{i}: the first line picks the file; keep-alive unless the client asks to close."""

    def __init__(self, files: list[Path], sizes: list[int]):
        self.files, self.sizes, self.buffer = files, sizes, b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            i = int(head.split(b"\r\n", 1)[0].split()[1].rsplit(b"/", 1)[1])
            close = b"connection: close" in head.lower()
            fd = os.open(self.files[i], os.O_RDONLY)
            try:
                body = os.pread(fd, self.sizes[i], 0)
            finally:
                os.close(fd)
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/dicom\r\nContent-Length: %d\r\n%s\r\n"
                                 % (len(body), b"Connection: close\r\n" if close else b""))
            self.transport.write(body)
            if close:
                self.transport.close()
                return


async def serve_protocol(files: list[Path]) -> int:
    sizes = [p.stat().st_size for p in files]
    server = await asyncio.get_running_loop().create_server(lambda: FileProtocol(files, sizes), "127.0.0.1", 0)
    return server.sockets[0].getsockname()[1]


async def main(kind: str, folder: Path) -> None:
    files = sorted(folder.glob("*.dcm"))
    port = await (serve_aiohttp if kind == "aiohttp" else serve_protocol)(files)
    print(port, flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("aiohttp", "protocol"):
        sys.exit("usage: python -m bench.web_floors aiohttp|protocol FOLDER")
    uvloop.run(main(sys.argv[1], Path(sys.argv[2])))

"""A real HTTP file server on 127.0.0.1 for download tests, with injectable faults.

It serves one directory, honours ``Range: bytes=N-`` / ``bytes=N-M`` with 206
answers (unless told to ignore ranges), and logs every request. Faults, set on
``server.faults`` before a download:

- ``missing``: names answered with 404;
- ``drop_after``: name -> byte count; the next answer for that name announces
  the full length, sends that many body bytes and closes the connection (once);
- ``reset_after``: the same, but the connection is reset (TCP RST), not closed;
- ``stall_after``: the same, but the server then goes silent for ``stall_s``;
- ``corrupt``: name -> offset; that byte is flipped in every answer;
- ``unavailable``: name -> count; that many 503 answers come first;
- ``ignore_range``: answer every request with 200 and the whole file.

Use the ``http_server`` fixture (import it into a test module), or
``FileServer(directory)`` as a context manager.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Faults:
    missing: set[str] = field(default_factory=set)
    drop_after: dict[str, int] = field(default_factory=dict)
    reset_after: dict[str, int] = field(default_factory=dict)
    stall_after: dict[str, int] = field(default_factory=dict)
    stall_s: float = 2.0
    corrupt: dict[str, int] = field(default_factory=dict)
    unavailable: dict[str, int] = field(default_factory=dict)
    ignore_range: bool = False


@dataclass(frozen=True)
class Logged:
    """One answered request: file name, the Range header sent (or None), status."""

    name: str
    range: str | None
    status: int


class FileServer:
    """Serves ``directory`` at ``self.url`` (``http://127.0.0.1:<port>/``) from a thread."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.faults = Faults()
        self.requests: list[Logged] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> FileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def _log(self, name: str, range_header: str | None, status: int) -> None:
        with self._lock:
            self.requests.append(Logged(name, range_header, status))

    def _take_cut(self, name: str) -> tuple[str, int] | None:
        """The one-shot (kind, byte count) of a drop, reset or stall for ``name``, removed once used."""
        with self._lock:
            for kind in ("drop_after", "reset_after", "stall_after"):
                table = getattr(self.faults, kind)
                if name in table:
                    return kind, table.pop(name)
            return None

    def _take_unavailable(self, name: str) -> bool:
        """Whether to answer 503 now; counts ``unavailable[name]`` down."""
        with self._lock:
            left = self.faults.unavailable.get(name, 0)
            if left:
                self.faults.unavailable[name] = left - 1
            return left > 0

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _status(self, code: int, name: str, extra: dict[str, str] | None = None) -> None:
                server._log(name, self.headers.get("Range"), code)
                self.send_response(code)
                for key, value in (extra or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True

            def do_GET(self) -> None:
                name = self.path.lstrip("/")
                path = server.directory / name
                if name in server.faults.missing or "/" in name or not path.is_file():
                    return self._status(404, name)
                if server._take_unavailable(name):
                    return self._status(503, name)
                data = bytearray(path.read_bytes())
                if name in server.faults.corrupt:
                    data[server.faults.corrupt[name]] ^= 0xFF
                start, end, status = 0, len(data) - 1, 200
                match = _RANGE.match(self.headers.get("Range", ""))
                if match and not server.faults.ignore_range:
                    start = int(match.group(1))
                    end = min(int(match.group(2)), end) if match.group(2) else end
                    if start >= len(data):
                        return self._status(416, name, {"Content-Range": f"bytes */{len(data)}"})
                    status = 206
                body = bytes(data[start : end + 1])
                server._log(name, self.headers.get("Range"), status)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "none" if server.faults.ignore_range else "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                cut = server._take_cut(name)
                self.wfile.write(body if cut is None else body[: cut[1]])
                self.wfile.flush()
                if cut is None:
                    return
                kind = cut[0]
                if kind == "stall_after":
                    time.sleep(server.faults.stall_s)
                if kind == "reset_after":
                    time.sleep(0.1)  # let the client read the bytes sent: an RST discards unread ones
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                else:
                    self.connection.shutdown(socket.SHUT_RDWR)

        return Handler


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 whose port has nothing listening (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[FileServer]:
    """A running FileServer over ``tmp_path / "served"``."""
    with FileServer(tmp_path / "served") as server:
        yield server

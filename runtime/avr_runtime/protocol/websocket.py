"""RFC 6455 WebSocket, pure: the opening handshake and the framing, both sides.

The STS provider leg carries two messages per call every 20 ms, so this path is hot: a general client (aiohttp's)
spent most of the worker's CPU per frame on it, in task wake-ups and generic framing. This module only
builds and parses bytes; the worker's connection is ``services/providers/wsclient.py``, the reference echo
provider's is ``reference/sts_server.py``. No extensions are negotiated (no compression), so the reserved bits must
be zero.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass
from typing import Final

GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA
_DATA_OPCODES: Final = frozenset((CONTINUATION, TEXT, BINARY))
_CONTROL_OPCODES: Final = frozenset((CLOSE, PING, PONG))

# close codes (RFC 6455 section 7.4.1)
NORMAL: Final = 1000
PROTOCOL_ERROR: Final = 1002
NO_STATUS: Final = 1005  # what a close frame without a body stands for; never sent
TOO_BIG: Final = 1009

MAX_HANDSHAKE: Final = 16 * 1024
DEFAULT_MAX_MESSAGE: Final = 4 * 1024 * 1024

_HEADER_2: Final = struct.Struct("!BB")
_HEADER_4: Final = struct.Struct("!BBH")
_HEADER_10: Final = struct.Struct("!BBQ")
_LEN_16: Final = struct.Struct("!H")
_LEN_64: Final = struct.Struct("!Q")


class WebSocketError(ValueError):
    """Input that breaks the protocol; ``code`` is the close code to send back."""

    def __init__(self, detail: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(detail)
        self.code = code


class HandshakeError(ConnectionError):
    """The server did not accept the upgrade (a connection-level failure: worth a retry)."""


# --- opening handshake ---


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + GUID).digest()).decode("ascii")


def handshake_request(host: str, target: str, key: str, headers: dict[str, str] | None = None) -> bytes:
    """The GET that asks for the upgrade; ``target`` is the path and query, ``host`` the Host header value."""
    lines = [
        f"GET {target or '/'} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
    ]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _split_head(data: bytes, what: str) -> tuple[str, dict[str, str], int] | None:
    """An HTTP head's first line, its headers (lower-case names) and its length; None while incomplete."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_HANDSHAKE:
            raise HandshakeError(f"{what} longer than {MAX_HANDSHAKE} bytes")
        return None
    first, *lines = data[:end].decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return first, headers, end + 4


def _upgrades(headers: dict[str, str]) -> bool:
    """``Upgrade: websocket`` with ``upgrade`` among the Connection tokens."""
    connection = [token.strip().lower() for token in headers.get("connection", "").split(",")]
    return headers.get("upgrade", "").lower() == "websocket" and "upgrade" in connection


def parse_handshake_response(data: bytes, key: str) -> int | None:
    """Check the server's answer; returns the length of the header block, or None while it is incomplete.

    Raises HandshakeError for anything but a valid ``101 Switching Protocols`` for ``key``.
    """
    head = _split_head(data, "handshake response")
    if head is None:
        return None
    status_line, headers, size = head
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HandshakeError(f"not an HTTP response: {status_line[:80]!r}")
    if parts[1] != "101":
        raise HandshakeError(f"server answered {' '.join(parts[1:])[:80]!r} instead of 101 Switching Protocols")
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError("response lacks 'Upgrade: websocket'")
    if not _upgrades(headers):
        raise HandshakeError("response lacks 'Connection: Upgrade'")
    if headers.get("sec-websocket-accept") != accept_for(key):
        raise HandshakeError("wrong Sec-WebSocket-Accept")
    if headers.get("sec-websocket-extensions"):
        raise HandshakeError("server chose an extension that was not offered")
    return size


@dataclass(frozen=True, slots=True)
class Request:
    """The head of an HTTP request, as a server reads it before deciding to upgrade."""

    method: str
    target: str
    headers: dict[str, str]  # lower-case names

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    @property
    def wants_websocket(self) -> bool:
        return _upgrades(self.headers)


def parse_request(data: bytes) -> tuple[Request, int] | None:
    """An HTTP request head and its length, or None while incomplete; HandshakeError if it is not HTTP."""
    head = _split_head(data, "request head")
    if head is None:
        return None
    request_line, headers, size = head
    parts = request_line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HandshakeError(f"not an HTTP/1.1 request: {request_line[:80]!r}")
    return Request(parts[0], parts[1], headers), size


def handshake_response(request: Request) -> bytes:
    """The 101 answer to a valid upgrade request; HandshakeError names what is wrong with an invalid one."""
    if request.method != "GET" or not request.wants_websocket:
        raise HandshakeError("not a WebSocket upgrade request")
    if request.headers.get("sec-websocket-version") != "13":
        raise HandshakeError("only WebSocket version 13 is supported")
    key = request.headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError
    except ValueError:
        raise HandshakeError("bad Sec-WebSocket-Key") from None
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept_for(key)}\r\n\r\n"
    ).encode("latin-1")


# --- framing ---


class Masker:
    """Fresh random masking keys for client frames, drawn from the OS in blocks (one syscall per 1024 frames)."""

    __slots__ = ("_pool", "_pos")

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def key(self) -> bytes:
        pos = self._pos
        if pos >= len(self._pool):
            self._pool, pos = os.urandom(4096), 0
        self._pos = pos + 4
        return self._pool[pos : pos + 4]


def apply_mask(data: bytes, key: bytes) -> bytes:
    """XOR with the repeated 4-byte key, as one big-integer operation (a loop would run Python for every byte)."""
    n = len(data)
    if not n:
        return b""
    stream = key * ((n >> 2) + 1)
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream[:n], "little")).to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes, mask_key: bytes | None = None) -> bytes:
    """One final frame; clients pass ``mask_key`` (required from clients), servers do not."""
    n = len(payload)
    bit = 0x80 if mask_key is not None else 0
    first = 0x80 | opcode
    if n < 126:
        header = _HEADER_2.pack(first, bit | n)
    elif n < 65536:
        header = _HEADER_4.pack(first, bit | 126, n)
    else:
        header = _HEADER_10.pack(first, bit | 127, n)
    if mask_key is None:
        return header + payload
    return header + mask_key + apply_mask(payload, mask_key)


def close_payload(code: int, reason: str = "") -> bytes:
    return _LEN_16.pack(code) + reason.encode("utf-8")[:123]


class FrameParser:
    """Incremental frame parser; yields whole messages and control frames.

    ``feed`` returns ``(opcode, payload)`` pairs: TEXT or BINARY with fragments joined, and CLOSE, PING, PONG as
    they come. A client reads server frames, which must not be masked; a server (``from_client``) reads client
    frames, which must be, and gets them unmasked. A message above ``max_message`` bytes is refused before it is
    buffered (close code 1009).
    """

    __slots__ = ("_buf", "_fragments", "_fragments_size", "_masked", "_message_opcode", "max_message")

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE, *, from_client: bool = False) -> None:
        self.max_message = max_message
        self._masked = 0x80 if from_client else 0
        self._buf = b""
        self._message_opcode: int | None = None  # opcode of a fragmented message in progress
        self._fragments: list[bytes] = []
        self._fragments_size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf + data if self._buf else data
        out: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 2:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 & 0x70:
                raise WebSocketError("reserved bits set without a negotiated extension")
            if b1 & 0x80 != self._masked:
                raise WebSocketError("unmasked frame from a client" if self._masked else "masked frame from the server")
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if end - start < 2:
                    break
                (length,) = _LEN_16.unpack_from(buf, start)
                start += 2
            elif length == 127:
                if end - start < 8:
                    break
                (length,) = _LEN_64.unpack_from(buf, start)
                start += 8
            if opcode in _CONTROL_OPCODES:
                if not b0 & 0x80 or length > 125:
                    raise WebSocketError("fragmented or oversized control frame")
            elif opcode not in _DATA_OPCODES:
                raise WebSocketError(f"unknown opcode {opcode:#x}")
            elif length + self._fragments_size > self.max_message:
                raise WebSocketError(f"message above {self.max_message} bytes", TOO_BIG)
            if self._masked:
                key = buf[start : start + 4]
                start += 4
            stop = start + length
            if stop > end:
                break
            payload = apply_mask(buf[start:stop], key) if self._masked else buf[start:stop]
            pos = stop
            # control frames, and the common case: a whole message in one frame
            if opcode >= CLOSE or (b0 & 0x80 and opcode and self._message_opcode is None):
                out.append((opcode, payload))
            else:
                self._fragment(opcode, bool(b0 & 0x80), payload, out)
        self._buf = buf[pos:] if pos < end else b""
        return out

    def _fragment(self, opcode: int, fin: bool, payload: bytes, out: list[tuple[int, bytes]]) -> None:
        if opcode == CONTINUATION:
            if self._message_opcode is None:
                raise WebSocketError("continuation frame without a message to continue")
        elif self._message_opcode is not None:
            raise WebSocketError("new message inside a fragmented one")
        else:
            self._message_opcode = opcode
        self._fragments.append(payload)
        self._fragments_size += len(payload)
        if fin:
            out.append((self._message_opcode, b"".join(self._fragments)))
            self._message_opcode = None
            self._fragments = []
            self._fragments_size = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) + self._fragments_size

    @property
    def idle(self) -> bool:
        """Between messages: nothing buffered, no fragmented message under way."""
        return not self._buf and self._message_opcode is None


def single_text_frame(data: bytes) -> bytes | None:
    """The payload if ``data`` is exactly one final, unmasked text frame under 64 KiB, else None. Hot path: what
    one read from an STS provider nearly always holds, recognised without the general parser."""
    n = len(data)
    if n < 2 or data[0] != 0x81:
        return None
    b1 = data[1]
    if b1 == 126:
        return data[4:] if n >= 4 and (data[2] << 8 | data[3]) == n - 4 else None
    return data[2:] if b1 == n - 2 and b1 < 126 else None


def parse_close(payload: bytes) -> tuple[int | None, str]:
    """Code and reason of a close frame (code None when the frame has no body)."""
    if len(payload) < 2:
        return None, ""
    (code,) = _LEN_16.unpack_from(payload)
    return code, payload[2:].decode("utf-8", "replace")


def abnormal_end(close_code: int | None) -> str | None:
    """How a peer's end of the connection differs from a normal goodbye, as a short label; None when it does not.

    ``close_code`` is the code of the close frame the peer sent (``NO_STATUS`` for one without a body), None when
    the connection ended without one (reset, or closed at the TCP level: a process killed, a host gone). A close
    frame with ``NORMAL`` or no code is a goodbye; any other code (1001 going away, 1011 internal error, ...) is not.
    """
    if close_code is None:
        return "dropped"
    if close_code in (NORMAL, NO_STATUS):
        return None
    return f"close_{close_code}"

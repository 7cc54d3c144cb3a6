"""RFC 6455 client-side framing and handshake: pure functions, byte-exact."""

from __future__ import annotations

import os
import random
import struct

import pytest

from avr_runtime.protocol import websocket as ws


def server_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """A frame as a server sends it (unmasked), built independently of the module under test."""
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        return bytes([first, n]) + payload
    if n < 65536:
        return bytes([first, 126]) + struct.pack("!H", n) + payload
    return bytes([first, 127]) + struct.pack("!Q", n) + payload


def naive_mask(data: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(data))


def unmask_client_frame(frame: bytes) -> tuple[int, bool, bytes]:
    """Decode a client frame (masked) the slow, obvious way."""
    first, second = frame[0], frame[1]
    assert second & 0x80, "client frames must be masked"
    n, pos = second & 0x7F, 2
    if n == 126:
        (n,) = struct.unpack_from("!H", frame, 2)
        pos = 4
    elif n == 127:
        (n,) = struct.unpack_from("!Q", frame, 2)
        pos = 10
    key = frame[pos : pos + 4]
    body = frame[pos + 4 :]
    assert len(body) == n
    return first & 0x0F, bool(first & 0x80), naive_mask(body, key)


def test_accept_value_matches_the_rfc_example() -> None:
    assert ws.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_request_names_the_key_and_version() -> None:
    req = ws.handshake_request("sts:6030", "/?a=1", "k3y", {"Authorization": "Basic eDp5"}).decode()
    assert req.startswith("GET /?a=1 HTTP/1.1\r\n")
    assert "\r\nHost: sts:6030\r\n" in req
    assert "\r\nSec-WebSocket-Key: k3y\r\n" in req and "\r\nSec-WebSocket-Version: 13\r\n" in req
    assert "\r\nAuthorization: Basic eDp5\r\n" in req
    assert req.endswith("\r\n\r\n")


def response(key: str, status: str = "101 Switching Protocols", **extra: str) -> bytes:
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Accept": ws.accept_for(key), **extra}
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers.items() if v)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_handshake_response_accepted_and_incomplete() -> None:
    key = ws.new_key()
    full = response(key) + b"\x81\x02hi"
    assert ws.parse_handshake_response(full[:20], key) is None
    size = ws.parse_handshake_response(full, key)
    assert size is not None and full[size:] == b"\x81\x02hi"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"status": "404 Not Found"}, "404"),
        ({"Upgrade": ""}, "Upgrade"),
        ({"Connection": "keep-alive"}, "Connection"),
        ({"Sec-WebSocket-Accept": "bogus"}, "Accept"),
        ({"Sec-WebSocket-Extensions": "permessage-deflate"}, "extension"),
    ],
)
def test_handshake_response_refused(kwargs: dict[str, str], message: str) -> None:
    key = ws.new_key()
    with pytest.raises(ws.HandshakeError, match=message):
        ws.parse_handshake_response(response(key, **kwargs), key)


def test_handshake_response_not_http_or_endless() -> None:
    with pytest.raises(ws.HandshakeError, match="not an HTTP"):
        ws.parse_handshake_response(b"SSH-2.0-x\r\n\r\n", "k")
    with pytest.raises(ws.HandshakeError, match="longer"):
        ws.parse_handshake_response(b"HTTP/1.1 101 x\r\n" + b"X: y\r\n" * 5000, "k")


def test_mask_matches_the_obvious_xor() -> None:
    rng = random.Random(7)
    for n in [0, 1, 2, 3, 4, 5, 125, 126, 455, 4097]:
        data = rng.randbytes(n)
        key = rng.randbytes(4)
        assert ws.apply_mask(data, key) == naive_mask(data, key)
        assert ws.apply_mask(ws.apply_mask(data, key), key) == data


def test_masker_keys_are_fresh() -> None:
    masker = ws.Masker()
    keys = [masker.key() for _ in range(3000)]  # crosses a refill of the key pool
    assert all(len(k) == 4 for k in keys)
    assert len(set(keys)) > 2900


@pytest.mark.parametrize("n", [0, 125, 126, 65535, 65536])
def test_client_frames_round_trip_at_every_length_encoding(n: int) -> None:
    payload = os.urandom(n)
    frame = ws.encode_frame(ws.BINARY, payload, os.urandom(4))
    assert unmask_client_frame(frame) == (ws.BINARY, True, payload)
    # unmasked (server side) frames are what the parser reads
    assert ws.FrameParser().feed(ws.encode_frame(ws.TEXT, payload)) == [(ws.TEXT, payload)]


def test_parser_reads_byte_by_byte_and_joins_fragments_around_control_frames() -> None:
    stream = (
        server_frame(ws.TEXT, b"hel", fin=False)
        + server_frame(ws.PING, b"p")
        + server_frame(ws.CONTINUATION, b"lo", fin=False)
        + server_frame(ws.CONTINUATION, b"!")
        + server_frame(ws.BINARY, bytes(300))
        + server_frame(ws.CLOSE, struct.pack("!H", 1000) + b"bye")
    )
    parser = ws.FrameParser()
    got: list[tuple[int, bytes]] = []
    for i in range(len(stream)):
        got += parser.feed(stream[i : i + 1])
    assert got == [
        (ws.PING, b"p"),
        (ws.TEXT, b"hello!"),
        (ws.BINARY, bytes(300)),
        (ws.CLOSE, struct.pack("!H", 1000) + b"bye"),
    ]
    assert parser.buffered == 0
    assert ws.parse_close(got[-1][1]) == (1000, "bye")
    assert ws.parse_close(b"") == (None, "")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (bytes([0x81, 0x82]) + b"abcd" + b"xx", "masked"),
        (server_frame(ws.TEXT, b"x", rsv=0x40), "reserved"),
        (server_frame(0x3, b"x"), "opcode"),
        (server_frame(ws.PING, b"x", fin=False), "control"),
        (server_frame(ws.PING, bytes(126)), "control"),
        (server_frame(ws.CONTINUATION, b"x"), "continuation"),
        (server_frame(ws.TEXT, b"a", fin=False) + server_frame(ws.TEXT, b"b"), "inside"),
    ],
)
def test_parser_refuses_protocol_violations(data: bytes, message: str) -> None:
    with pytest.raises(ws.WebSocketError, match=message) as info:
        ws.FrameParser().feed(data)
    assert info.value.code == ws.PROTOCOL_ERROR


def test_too_big_is_refused_from_the_header_before_buffering() -> None:
    parser = ws.FrameParser(max_message=1000)
    header_only = bytes([0x82, 127]) + struct.pack("!Q", 2**40)
    with pytest.raises(ws.WebSocketError, match="above 1000") as info:
        parser.feed(header_only)
    assert info.value.code == ws.TOO_BIG
    # fragments count towards the limit too
    parser = ws.FrameParser(max_message=1000)
    parser.feed(server_frame(ws.TEXT, bytes(600), fin=False))
    with pytest.raises(ws.WebSocketError, match="above 1000"):
        parser.feed(server_frame(ws.CONTINUATION, bytes(600)))


@pytest.mark.parametrize("n", [0, 5, 125, 126, 70_000])
def test_server_side_reads_masked_client_frames(n: int) -> None:
    payload = os.urandom(n)
    stream = ws.encode_frame(ws.TEXT, payload, os.urandom(4)) + ws.encode_frame(ws.PING, b"x", os.urandom(4))
    assert ws.FrameParser(from_client=True).feed(stream) == [(ws.TEXT, payload), (ws.PING, b"x")]
    parser = ws.FrameParser(from_client=True)
    got: list[tuple[int, bytes]] = []
    for i in range(0, len(stream), 7):
        got += parser.feed(stream[i : i + 7])
    assert got == [(ws.TEXT, payload), (ws.PING, b"x")]
    with pytest.raises(ws.WebSocketError, match="unmasked"):
        ws.FrameParser(from_client=True).feed(ws.encode_frame(ws.TEXT, payload))


def test_request_head_and_the_answer_a_client_accepts() -> None:
    key = ws.new_key()
    raw = ws.handshake_request("h:1", "/speech-to-speech?uuid=1", key) + b"frames"
    assert ws.parse_request(raw[:10]) is None
    parsed = ws.parse_request(raw)
    assert parsed is not None
    request, size = parsed
    assert raw[size:] == b"frames"
    assert (request.method, request.path, request.query, request.wants_websocket) == (
        "GET",
        "/speech-to-speech",
        "uuid=1",
        True,
    )
    answer = ws.handshake_response(request)
    assert ws.parse_handshake_response(answer, key) == len(answer)
    with pytest.raises(ws.HandshakeError, match=r"HTTP/1\.1"):
        ws.parse_request(b"GET /\r\n\r\n")
    plain = ws.parse_request(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert plain is not None and not plain[0].wants_websocket
    with pytest.raises(ws.HandshakeError, match="not a WebSocket"):
        ws.handshake_response(plain[0])


def test_single_text_frame_recognises_exactly_one_whole_text_frame() -> None:
    for n in (0, 1, 125, 126, 455, 65535):
        payload = os.urandom(n)
        frame = ws.encode_frame(ws.TEXT, payload)
        assert ws.single_text_frame(frame) == payload
        if n:
            assert ws.single_text_frame(frame[:-1]) is None  # cut short
        assert ws.single_text_frame(frame + frame) is None  # two frames: the general parser's job
        assert ws.single_text_frame(ws.encode_frame(ws.BINARY, payload)) is None
    assert ws.single_text_frame(ws.encode_frame(ws.TEXT, bytes(70_000))) is None  # 64-bit length
    assert ws.single_text_frame(ws.encode_frame(ws.TEXT, b"x", os.urandom(4))) is None  # masked
    assert ws.single_text_frame(server_frame(ws.TEXT, b"x", fin=False)) is None
    assert ws.single_text_frame(b"\x81") is None


def test_parser_is_idle_only_between_messages() -> None:
    parser = ws.FrameParser()
    states = [parser.idle]
    parser.feed(server_frame(ws.TEXT, b"ab", fin=False))
    states.append(parser.idle)  # a fragmented message is under way
    parser.feed(server_frame(ws.CONTINUATION, b"c") + server_frame(ws.TEXT, b"xyz")[:2])
    states.append(parser.idle)  # half a frame buffered
    assert parser.feed(server_frame(ws.TEXT, b"xyz")[2:]) == [(ws.TEXT, b"xyz")]
    states.append(parser.idle)
    assert states == [True, False, False, True]

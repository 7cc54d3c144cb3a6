"""Property-based fuzzing of the pure parsers: every byte from Asterisk, a provider or a stream client goes
through one of them, split by TCP wherever it pleases. For any input they either return what the input means or
raise their own protocol error (which ends that one call): never another exception, never a different result for
a different split, never unbounded buffering.

Bounded in CI (the ``ci`` profile); ``make fuzz`` runs the same properties for longer (``HYPOTHESIS_PROFILE=fuzz``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import struct

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from avr_runtime.audio.opus import OpusFrameError
from avr_runtime.config import Codec, Settings
from avr_runtime.protocol import audiosocket as asock
from avr_runtime.protocol import chain, sts
from avr_runtime.protocol import websocket as ws
from avr_runtime.server.stream import StreamCodec

settings.register_profile("ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

#: Byte sequences a real Asterisk was seen to send (UUID, a 20 ms slin frame, DTMF, hangup): the seed corpus.
ASTERISK_UUID = bytes.fromhex("0100101b4e0e4ef84d7b9f0e3c7a2b1d9e5f60")
ASTERISK_AUDIO = b"\x10\x01\x40" + bytes(320)
ASTERISK_DTMF = b"\x03\x00\x01#"
ASTERISK_HANGUP = b"\x00\x00\x00"


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def feed_all(parser_feed: object, chunks: list[bytes]) -> list[object]:
    out: list[object] = []
    for chunk in chunks:
        out += parser_feed(chunk)  # type: ignore[operator]
    return out


# --- AudioSocket ---

audiosocket_frames = st.one_of(
    st.binary(min_size=16, max_size=16).map(lambda b: asock.encode(asock.Kind.UUID, b)),
    st.binary(min_size=1, max_size=asock.MAX_AUDIO_PAYLOAD).map(asock.audio_frame),
    st.sampled_from(b"0123456789*#ABCD").map(lambda d: asock.encode(asock.Kind.DTMF, bytes([d]))),
    st.just(asock.HANGUP_FRAME),
    st.binary(max_size=8).map(lambda b: asock.encode(asock.Kind.ERROR, b)),
)


@given(st.lists(audiosocket_frames, max_size=20), st.lists(st.integers(min_value=0), max_size=30))
@example([ASTERISK_UUID, ASTERISK_AUDIO, ASTERISK_DTMF, ASTERISK_HANGUP], [1, 3, 20, 322, 323])
def test_audiosocket_frames_parse_the_same_however_they_are_split(frames: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(frames)
    whole = asock.FrameParser().feed(stream)
    parser = asock.FrameParser()
    assert feed_all(parser.feed, splits(stream, cuts)) == whole
    assert [asock.encode(f.kind, f.payload) for f in whole] == frames
    assert parser.pending == 0
    parser.close()


@given(st.binary(max_size=4096), st.lists(st.integers(min_value=0), max_size=10))
@example(b"\x12\x02\x80" + bytes(640), [])  # slin16 as newer Asterisk sends it
@example(b"\x10\xff\xff", [])  # an absurd length, refused from the header
def test_audiosocket_garbage_is_a_protocol_error_or_frames_and_never_buffers_beyond_a_frame(
    data: bytes, cuts: list[int]
) -> None:
    parser = asock.FrameParser()
    try:
        for chunk in splits(data, cuts):
            parser.feed(chunk)
            assert parser.pending <= asock.HEADER_SIZE + max(asock.MAX_AUDIO_PAYLOAD, asock.MAX_ERROR_PAYLOAD)
        parser.close()
    except asock.ProtocolError as exc:
        assert exc.reason


# --- WebSocket ---


@st.composite
def ws_messages(draw: st.DrawFn) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    """Frames of every length encoding, fragmented or not, with control frames between fragments, and the
    messages a reader must get from them."""
    frames: list[bytes] = []
    messages: list[tuple[int, bytes]] = []
    masked = draw(st.booleans())
    for _ in range(draw(st.integers(0, 6))):
        opcode = draw(st.sampled_from([ws.TEXT, ws.BINARY]))
        size = draw(st.sampled_from([0, 1, 125, 126, 127, 65535, 65536, 70000]))
        payload = draw(st.binary(min_size=0, max_size=64)) * (size // 64 + 1)
        payload = payload[:size] if payload else bytes(size)
        pieces = draw(st.integers(1, 3))
        step = max(1, len(payload) // pieces)
        parts = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
        for i, part in enumerate(parts):
            fin = i == len(parts) - 1
            first = (0x80 if fin else 0) | (opcode if i == 0 else ws.CONTINUATION)
            frames.append(frame(first, part, masked, draw(st.binary(min_size=4, max_size=4))))
            if not fin and draw(st.booleans()):
                ping = draw(st.binary(max_size=125))
                frames.append(frame(0x80 | ws.PING, ping, masked, b"\x01\x02\x03\x04"))
                messages.append((ws.PING, ping))
        messages.append((opcode, payload))
    return [bytes([masked]), *frames], messages


def frame(first: int, payload: bytes, masked: bool, key: bytes) -> bytes:
    """Built here from RFC 6455 5.2, not with the module under test's encoder."""
    n = len(payload)
    mask = 0x80 if masked else 0
    if n < 126:
        head = bytes([first, mask | n])
    elif n < 65536:
        head = bytes([first, mask | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, mask | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@given(ws_messages(), st.lists(st.integers(min_value=0), max_size=20))
def test_websocket_messages_parse_the_same_however_they_are_split(
    sample: tuple[list[bytes], list[tuple[int, bytes]]], cuts: list[int]
) -> None:
    (flag, *frames), messages = sample
    parser = ws.FrameParser(max_message=1 << 20, from_client=bool(flag[0]))
    stream = b"".join(frames)
    assert feed_all(parser.feed, splits(stream, cuts)) == messages
    assert parser.idle


@given(st.binary(max_size=2048), st.booleans(), st.lists(st.integers(min_value=0), max_size=10))
@example(b"\x81\x7f" + struct.pack("!Q", 1 << 63), False, [])  # a 64-bit length with its top bit set
@example(b"\x89\x7e\x00\x80" + bytes(128), False, [])  # a control frame above 125 bytes
def test_websocket_garbage_is_a_websocket_error_or_messages(data: bytes, from_client: bool, cuts: list[int]) -> None:
    parser = ws.FrameParser(max_message=4096, from_client=from_client)
    try:
        for chunk in splits(data, cuts):
            for opcode, payload in parser.feed(chunk):
                assert opcode in (ws.TEXT, ws.BINARY, ws.CLOSE, ws.PING, ws.PONG)
                assert len(payload) <= 4096
            assert parser.buffered <= 4096 + 14 + len(data)
    except ws.WebSocketError as exc:
        assert exc.code in (ws.PROTOCOL_ERROR, ws.TOO_BIG)


# --- STS messages ---

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@given(st.one_of(st.binary(max_size=512), json_values.map(orjson.dumps)))
@example(b'{"type":"audio","audio":"not base64!"}')
@example(b'{"type":"audio"}')
@example(b'{"type":"transcript","role":"user"}')
def test_sts_messages_decode_or_are_refused_by_name(payload: bytes) -> None:
    for decode in (sts.decode, sts.decode_client, sts.audio_of):
        with contextlib.suppress(sts.MessageError):
            decode(payload)


@given(st.binary(max_size=960).filter(lambda b: len(b) % 2 == 0))
def test_sts_audio_round_trips(pcm: bytes) -> None:
    assert sts.decode(sts.encode_audio(pcm)) == sts.Audio(pcm)


# --- the chain's streams ---


@given(st.lists(st.text(max_size=40), max_size=10), st.lists(st.integers(min_value=0), max_size=20))
@example(["Hi. <think>plan", "ning</think> The answer is 3.5 units! Ok?"], [3, 7, 15])
def test_sentences_are_the_same_however_the_text_is_split(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    whole = chain.SentenceSplitter()
    expected = whole.feed(text) + whole.flush()
    points = sorted({c % (len(text) + 1) for c in cuts})
    edges = [0, *points, len(text)]
    split = chain.SentenceSplitter()
    got: list[str] = []
    for a, b in itertools.pairwise(edges):
        got += split.feed(text[a:b])
    assert got + split.flush() == expected
    assert all("<think>" not in s for s in expected)


@given(st.lists(json_values, max_size=8), st.lists(st.integers(min_value=0), max_size=20))
def test_llm_json_chunks_are_the_same_however_the_stream_is_split(values: list[object], cuts: list[int]) -> None:
    stream = "\n".join(orjson.dumps(v).decode() for v in values)

    def run(chunks: list[str]) -> list[chain.LlmChunk] | str:
        parser = chain.JsonChunkStream()
        out: list[chain.LlmChunk] = []
        try:
            for c in chunks:
                out += parser.feed(c)
            parser.close()
        except chain.StreamFormatError as exc:
            return f"error: {type(exc).__name__}"
        return out

    points = sorted({c % (len(stream) + 1) for c in cuts})
    edges = [0, *points, len(stream)]
    assert run([stream[a:b] for a, b in itertools.pairwise(edges)]) == run([stream])


# --- the stream leg's client audio ---


@given(st.sampled_from(["opus", "pcm16", "ulaw", "alaw"]), st.integers(1, 2), st.binary(max_size=1500))
@example("opus", 1, b"\x03")  # a packet libopus refuses
@example("opus", 1, b"\xfc\xff\xfe")  # a code-3 packet announcing more frames than it holds
@example("pcm16", 2, b"\x00\x01\x02")  # not whole stereo samples
def test_stream_client_audio_decodes_or_is_refused_by_name(codec: str, channels: int, packet: bytes) -> None:
    """What a /stream client sends as audio: 8 kHz mono PCM of whole samples, or the error that ends that call."""
    stream_codec = StreamCodec(Codec(codec), Settings(audio_channels=channels))
    try:
        pcm = stream_codec.decode(packet)
    except (OpusFrameError, ValueError):
        return
    assert len(pcm) % 2 == 0
    assert len(pcm) <= 2 * 8000 * 120 // 1000 or codec != "opus", "Opus gives at most 120 ms"

"""AudioSocket framing: 1 byte type, 2 bytes big-endian length, payload (Asterisk's AudioSocket protocol)."""

from __future__ import annotations

import struct
import uuid

import pytest

from avr_runtime.protocol import audiosocket as a
from avr_runtime.protocol.audiosocket import Frame, FrameParser, Kind, ProtocolError


def raw(kind: int, payload: bytes) -> bytes:
    """A frame built from the spec, independently of the module's encoders."""
    return struct.pack(">BH", kind, len(payload)) + payload


CALL_ID = uuid.UUID("0123456789abcdef0123456789abcdef")
PCM_20MS = bytes(range(256)) + bytes(64)  # 320 bytes, not all zero

SESSION: list[tuple[int, bytes]] = [
    (0x01, CALL_ID.bytes),
    (0x10, PCM_20MS),
    (0x03, b"5"),
    (0x10, b"\x01\x02"),
    (0xFF, b""),
    (0xFF, b"\x07"),
    (0x10, bytes(1920)),
    (0x00, b""),
]
STREAM = b"".join(raw(k, p) for k, p in SESSION)
EXPECTED = [Frame(Kind(k), p, 8000 if k == 0x10 else 0) for k, p in SESSION]


def test_each_message_type_is_parsed() -> None:
    p = FrameParser()
    frames = p.feed(STREAM)
    assert frames == EXPECTED
    assert [f.kind for f in frames] == [
        Kind.UUID,
        Kind.AUDIO,
        Kind.DTMF,
        Kind.AUDIO,
        Kind.ERROR,
        Kind.ERROR,
        Kind.AUDIO,
        Kind.HANGUP,
    ]
    assert p.pending == 0
    p.close()


def test_kind_values_match_the_spec() -> None:
    assert (Kind.HANGUP, Kind.UUID, Kind.DTMF, Kind.AUDIO, Kind.ERROR) == (0x00, 0x01, 0x03, 0x10, 0xFF)
    assert a.HANGUP_FRAME == b"\x00\x00\x00"


def test_length_is_big_endian() -> None:
    # 0x01 0x40 = 320 big-endian (it would be 16385 little-endian)
    frames = FrameParser().feed(b"\x10\x01\x40" + PCM_20MS)
    assert frames == [Frame(Kind.AUDIO, PCM_20MS, 8000)]


def test_split_at_every_byte_boundary_gives_the_same_frames() -> None:
    for cut in range(len(STREAM) + 1):
        p = FrameParser()
        frames = p.feed(STREAM[:cut]) + p.feed(STREAM[cut:])
        assert frames == EXPECTED, f"split at byte {cut}"
        p.close()


def test_three_way_splits_give_the_same_frames() -> None:
    head = STREAM[:400]  # uuid, audio, dtmf and the start of the next frame
    for i in range(len(head) + 1):
        for j in range(i, len(head) + 1, 13):
            p = FrameParser()
            frames = p.feed(STREAM[:i]) + p.feed(STREAM[i:j]) + p.feed(STREAM[j:])
            assert frames == EXPECTED, f"split at {i} and {j}"


def test_byte_by_byte_gives_the_same_frames() -> None:
    p = FrameParser()
    frames: list[Frame] = []
    for i in range(len(STREAM)):
        frames += p.feed(STREAM[i : i + 1])
        assert p.pending < a.HEADER_SIZE + 1920
    assert frames == EXPECTED
    p.close()


def test_many_frames_in_one_chunk() -> None:
    chunk = b"".join(raw(0x10, bytes([i]) * 320) for i in range(100))
    frames = FrameParser().feed(chunk)
    assert len(frames) == 100
    assert all(f.kind is Kind.AUDIO for f in frames)
    assert [f.payload[0] for f in frames] == list(range(100))


def test_pending_counts_the_partial_frame() -> None:
    p = FrameParser()
    assert p.feed(raw(0x10, PCM_20MS)[:100]) == []
    assert p.pending == 100
    with pytest.raises(ProtocolError) as err:
        p.close()
    assert err.value.reason == "truncated"


@pytest.mark.parametrize("cut", [1, 2, 3, 10, 322])
def test_truncated_frame_at_close(cut: int) -> None:
    p = FrameParser()
    p.feed(raw(0x01, CALL_ID.bytes) + raw(0x10, PCM_20MS)[:cut])
    with pytest.raises(ProtocolError) as err:
        p.close()
    assert err.value.reason == "truncated"
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("kind", [0x02, 0x04, 0x0F, 0x19, 0x20, 0x7F, 0xFE])
def test_unknown_type_is_refused(kind: int) -> None:
    with pytest.raises(ProtocolError) as err:
        FrameParser().feed(raw(kind, b"\x00"))
    assert err.value.reason == "unknown_type"
    assert f"0x{kind:02x}" in str(err.value)


RATES = [
    (0x10, 8000),
    (0x11, 12000),
    (0x12, 16000),
    (0x13, 24000),
    (0x14, 32000),
    (0x15, 44100),
    (0x16, 48000),
    (0x17, 96000),
    (0x18, 192000),
]


@pytest.mark.parametrize(("kind", "rate"), RATES)
def test_every_slin_type_is_audio_at_its_rate(kind: int, rate: int) -> None:
    n = rate * 20 // 1000 * 2  # 20 ms: 640 bytes at 16 kHz
    payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
    p = FrameParser()
    frames = p.feed(raw(0x01, CALL_ID.bytes) + raw(kind, payload) + raw(0x03, b"1") + raw(kind, payload))
    assert frames == [
        Frame(Kind.UUID, CALL_ID.bytes),
        Frame(Kind.AUDIO, payload, rate),
        Frame(Kind.DTMF, b"1"),
        Frame(Kind.AUDIO, payload, rate),
    ]
    assert p.rate == rate
    assert a.SLIN_RATES[kind] == rate


@pytest.mark.parametrize(("kind", "rate"), RATES)
def test_every_slin_type_survives_any_split(kind: int, rate: int) -> None:
    n = rate * 20 // 1000 * 2
    frames_in = [raw(kind, bytes([i]) * n) for i in range(5)]
    stream = raw(0x01, CALL_ID.bytes) + b"".join(frames_in) + raw(0x00, b"")
    for step in (1, 2, 3, 7, n + 2, n + 3, n + 4):
        p = FrameParser()
        out: list[Frame] = []
        for i in range(0, len(stream), step):
            out += p.feed(stream[i : i + step])
        p.close()
        assert [f.payload for f in out if f.kind is Kind.AUDIO] == [f[3:] for f in frames_in], step
        assert {f.rate for f in out if f.kind is Kind.AUDIO} == {rate}
        assert out[-1].kind is Kind.HANGUP


@pytest.mark.parametrize(("first", "then"), [(0x10, 0x12), (0x12, 0x10), (0x12, 0x16), (0x16, 0x11)])
def test_a_change_of_audio_type_mid_call_is_refused_from_its_header(first: int, then: int) -> None:
    p = FrameParser()
    good = raw(first, bytes(640))
    with pytest.raises(ProtocolError) as err:
        p.feed(raw(0x01, CALL_ID.bytes) + good + good + raw(then, bytes(640))[:3])
    assert err.value.reason == "rate_changed"
    assert f"0x{then:02x}" in str(err.value) and f"0x{first:02x}" in str(err.value)
    # the valid frames before it are still handed over
    assert [f.kind for f in err.value.frames] == [Kind.UUID, Kind.AUDIO, Kind.AUDIO]


def test_the_call_type_holds_across_feeds() -> None:
    p = FrameParser()
    p.feed(raw(0x12, bytes(640)))
    assert p.feed(raw(0x12, bytes(640))) == [Frame(Kind.AUDIO, bytes(640), 16000)]
    with pytest.raises(ProtocolError) as err:
        p.feed(raw(0x10, bytes(320)))
    assert err.value.reason == "rate_changed"


def test_a_client_s_parser_reads_each_frame_by_its_type() -> None:
    p = FrameParser(one_type=False)
    frames = p.feed(raw(0x10, bytes(320)) + raw(0x12, bytes(640)) + raw(0x10, bytes(320)))
    assert [f.rate for f in frames] == [8000, 16000, 8000]
    with pytest.raises(ProtocolError) as err:
        p.feed(struct.pack(">BH", 0x10, 3000))  # each type's length limit still holds
    assert err.value.reason == "bad_length"


@pytest.mark.parametrize(("kind", "rate"), [(0x17, 96000), (0x18, 192000), (0x12, 16000)])
def test_rates_outside_the_accepted_set_are_refused_by_name(kind: int, rate: int) -> None:
    p = FrameParser(rates=(8000, 12000))
    # only the header: the refusal must not wait for the payload
    with pytest.raises(ProtocolError) as err:
        p.feed(raw(kind, bytes(640))[:3])
    assert err.value.reason == "unsupported_rate"
    assert str(rate) in str(err.value) and f"0x{kind:02x}" in str(err.value)


@pytest.mark.parametrize(("kind", "rate"), RATES)
def test_audio_longer_than_120_ms_at_its_rate_is_refused_from_the_header(kind: int, rate: int) -> None:
    limit = min(0xFFFF, rate * 120 // 1000 * 2)
    assert FrameParser().feed(raw(kind, bytes(limit)))[0].rate == rate
    if limit < 0xFFFF:
        with pytest.raises(ProtocolError) as err:
            FrameParser().feed(struct.pack(">BH", kind, limit + 1))
        assert err.value.reason == "bad_length"


def test_audio_frame_encodes_other_types() -> None:
    assert a.audio_frame(b"\x01\x02", 0x12) == b"\x12\x00\x02\x01\x02"
    assert a.audio_header(0x12, 640) == b"\x12\x02\x80"


@pytest.mark.parametrize("length", [1921, 4000, 0xFFFF])
def test_oversized_audio_is_refused_from_the_header_alone(length: int) -> None:
    p = FrameParser()
    with pytest.raises(ProtocolError) as err:
        p.feed(struct.pack(">BH", 0x10, length))
    assert err.value.reason == "bad_length"


def test_oversized_length_after_a_valid_frame_is_refused_before_its_payload() -> None:
    p = FrameParser()
    with pytest.raises(ProtocolError) as err:
        p.feed(raw(0x10, PCM_20MS) + b"\x10\xff\xff" + bytes(10))
    assert err.value.reason == "bad_length"


def test_empty_audio_is_refused() -> None:
    with pytest.raises(ProtocolError) as err:
        FrameParser().feed(raw(0x10, b""))
    assert err.value.reason == "bad_length"


def test_largest_audio_payload_is_accepted() -> None:
    payload = bytes(a.MAX_AUDIO_PAYLOAD)
    assert FrameParser().feed(raw(0x10, payload)) == [Frame(Kind.AUDIO, payload, 8000)]


def test_oversized_error_payload_is_refused() -> None:
    with pytest.raises(ProtocolError) as err:
        FrameParser().feed(struct.pack(">BH", 0xFF, a.MAX_ERROR_PAYLOAD + 1))
    assert err.value.reason == "bad_length"


@pytest.mark.parametrize("length", [0, 1, 15, 17, 36])
def test_uuid_of_the_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(ProtocolError) as err:
        FrameParser().feed(raw(0x01, bytes(length)))
    assert err.value.reason == "bad_length"
    assert str(length) in str(err.value)


@pytest.mark.parametrize("length", [0, 2, 3])
def test_dtmf_of_the_wrong_length_is_refused(length: int) -> None:
    with pytest.raises(ProtocolError) as err:
        FrameParser().feed(raw(0x03, b"1" * length))
    assert err.value.reason == "bad_length"


def test_hangup_with_a_payload_is_refused() -> None:
    with pytest.raises(ProtocolError) as err:
        FrameParser().feed(raw(0x00, b"x"))
    assert err.value.reason == "bad_length"


def test_parse_uuid() -> None:
    assert a.parse_uuid(CALL_ID.bytes) == "01234567-89ab-cdef-0123-456789abcdef"


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_parse_dtmf_accepts_every_digit(digit: str) -> None:
    assert a.parse_dtmf(digit.encode()) == digit
    assert a.parse_dtmf(digit.lower().encode()) == digit


@pytest.mark.parametrize("payload", [b"x", b"E", b"\x00", b"\xff", b" "])
def test_parse_dtmf_refuses_non_digits(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as err:
        a.parse_dtmf(payload)
    assert err.value.reason == "bad_dtmf"


def test_encoders_match_the_spec_bytes() -> None:
    assert a.audio_frame(PCM_20MS) == b"\x10\x01\x40" + PCM_20MS
    assert a.error_frame(0x105) == b"\xff\x00\x01\x05"
    assert a.uuid_frame(CALL_ID) == b"\x01\x00\x10" + CALL_ID.bytes
    assert a.encode(Kind.HANGUP) == a.HANGUP_FRAME
    assert a.encode(Kind.DTMF, b"#") == b"\x03\x00\x01#"


def test_encoders_round_trip_through_the_parser() -> None:
    stream = (
        a.uuid_frame(CALL_ID)
        + a.audio_frame(PCM_20MS)
        + a.encode(Kind.DTMF, b"7")
        + a.error_frame(a.ErrorCode.AT_CAPACITY)
        + a.encode(Kind.AUDIO, b"\x00\x01" * 960)
        + a.encode(Kind.HANGUP)
    )
    p = FrameParser()
    frames = p.feed(stream)
    p.close()
    assert frames == [
        Frame(Kind.UUID, CALL_ID.bytes),
        Frame(Kind.AUDIO, PCM_20MS, 8000),
        Frame(Kind.DTMF, b"7"),
        Frame(Kind.ERROR, bytes([a.ErrorCode.AT_CAPACITY])),
        Frame(Kind.AUDIO, b"\x00\x01" * 960, 8000),
        Frame(Kind.HANGUP, b""),
    ]
    assert a.parse_uuid(frames[0].payload) == str(CALL_ID)
    assert a.parse_dtmf(frames[2].payload) == "7"


def test_parser_keeps_working_after_a_partial_feed_of_many_frames() -> None:
    frames_in = [raw(0x10, bytes([i % 256]) * (2 * (i + 1))) for i in range(50)]
    stream = b"".join(frames_in)
    p = FrameParser()
    out: list[Frame] = []
    step = 7
    for i in range(0, len(stream), step):
        out += p.feed(stream[i : i + step])
    p.close()
    assert [f.payload for f in out] == [f[3:] for f in frames_in]

"""ASR → LLM → TTS streaming text formats: lines, JSON chunks, sentences without <think> blocks."""

from __future__ import annotations

import json

import pytest

from avr_runtime.protocol.chain import JsonChunkStream, LineSplitter, SentenceSplitter, StreamFormatError

# --- LineSplitter ---


def test_line_splitter_yields_complete_lines() -> None:
    s = LineSplitter()
    assert s.feed("hello wor") == []
    assert s.feed("ld\nsecond") == ["hello world"]
    assert s.feed(" line\n\n  \nthird\r\n") == ["second line", "third"]
    assert s.flush() == []


def test_line_splitter_flush_returns_the_tail() -> None:
    s = LineSplitter()
    assert s.feed("a\nlast words ") == ["a"]
    assert s.flush() == ["last words"]
    assert s.flush() == []


def test_line_splitter_every_split_gives_the_same_lines() -> None:
    text = "one\ntwo three\n\nfour\n"
    for cut in range(len(text) + 1):
        s = LineSplitter()
        assert s.feed(text[:cut]) + s.feed(text[cut:]) + s.flush() == ["one", "two three", "four"]


def test_line_splitter_refuses_an_endless_line() -> None:
    s = LineSplitter(max_line=10)
    s.feed("x" * 10)
    with pytest.raises(StreamFormatError):
        s.feed("y")


# --- JsonChunkStream ---

OBJS = [
    {"type": "text", "content": "Hello"},
    {"type": "text", "content": ' {braces} and "quotes" and\nnewline'},
    {"type": "audio", "content": "", "audio": "AAAA"},
    {"type": "text", "content": "é"},
]


def chunks_of(stream: JsonChunkStream, text: str) -> list[tuple[str, str]]:
    return [(c.type, c.content) for c in stream.feed(text)]


EXPECTED = [(o["type"], o["content"]) for o in OBJS]


@pytest.mark.parametrize(
    "text",
    [
        "".join(json.dumps(o) + "\n" for o in OBJS),  # NDJSON
        "".join(json.dumps(o) for o in OBJS),  # back to back
        "".join(f"data: {json.dumps(o)}\n\n" for o in OBJS) + "data: [DONE]\n\n",  # SSE
        "".join(f"data:{json.dumps(o)}\r\n" for o in OBJS),  # SSE without space
        "  " + " \n ".join(json.dumps(o, indent=2) for o in OBJS) + "\n",  # pretty-printed
    ],
    ids=["ndjson", "back-to-back", "sse", "sse-tight", "pretty"],
)
def test_json_stream_formats(text: str) -> None:
    s = JsonChunkStream()
    assert chunks_of(s, text) == EXPECTED
    s.close()


def test_json_stream_split_at_every_position() -> None:
    text = "".join(f"data: {json.dumps(o)}\n\n" for o in OBJS) + "data: [DONE]\n\n"
    for cut in range(len(text) + 1):
        s = JsonChunkStream()
        got = chunks_of(s, text[:cut]) + chunks_of(s, text[cut:])
        s.close()
        assert got == EXPECTED, f"split at {cut}"


def test_json_stream_character_by_character() -> None:
    text = "".join(json.dumps(o) for o in OBJS)
    s = JsonChunkStream()
    got: list[tuple[str, str]] = []
    for ch in text:
        got += chunks_of(s, ch)
    s.close()
    assert got == EXPECTED


def test_json_chunk_keeps_the_whole_object() -> None:
    (chunk,) = JsonChunkStream().feed('{"type":"audio","audio":"AAAA","n":1}')
    assert chunk.type == "audio"
    assert chunk.data == {"type": "audio", "audio": "AAAA", "n": 1}


def test_json_chunk_defaults() -> None:
    (chunk,) = JsonChunkStream().feed('{"content":"hi"}')
    assert (chunk.type, chunk.content) == ("text", "hi")


def test_done_marker_alone() -> None:
    s = JsonChunkStream()
    assert s.feed("[DONE]") == []
    assert s.feed("data: [DONE]\n") == []
    s.close()


@pytest.mark.parametrize("text", ["hello", "[1,2]", "data: nonsense\n", '{"a":1} garbage', "<html>"])
def test_garbage_is_a_stream_format_error(text: str) -> None:
    with pytest.raises(StreamFormatError):
        JsonChunkStream().feed(text)


def test_stream_ending_inside_an_object_is_an_error() -> None:
    s = JsonChunkStream()
    assert s.feed('{"type":"text","content":"unfinis') == []
    with pytest.raises(StreamFormatError):
        s.close()


def test_json_stream_refuses_an_endless_object() -> None:
    s = JsonChunkStream(max_pending=100)
    with pytest.raises(StreamFormatError):
        s.feed('{"content":"' + "x" * 200)


# --- SentenceSplitter ---


def split_all(chunks: list[str]) -> list[str]:
    s = SentenceSplitter()
    out: list[str] = []
    for c in chunks:
        out += s.feed(c)
    return out + s.flush()


def test_splits_on_sentence_ends() -> None:
    assert split_all(["Hello there. How are you? Great! Bye"]) == [
        "Hello there.",
        "How are you?",
        "Great!",
        "Bye",
    ]


def test_sentence_is_emitted_once_the_next_character_arrives() -> None:
    s = SentenceSplitter()
    assert s.feed("Hello there.") == []
    assert s.feed(" Next") == ["Hello there."]
    assert s.flush() == ["Next"]


def test_decimal_numbers_are_not_sentence_ends() -> None:
    assert split_all(["It costs 3.5 dollars. Pi is 3.14159! ok"]) == [
        "It costs 3.5 dollars.",
        "Pi is 3.14159!",
        "ok",
    ]


def test_decimal_split_across_chunks() -> None:
    assert split_all(["It costs 3.", "5 dollars. Next"]) == ["It costs 3.5 dollars.", "Next"]


def test_repeated_punctuation_stays_with_its_sentence() -> None:
    assert split_all(["Really?! Yes... Fine"]) == ["Really?!", "Yes...", "Fine"]


def test_think_block_is_removed() -> None:
    assert split_all(["<think>The user wants. Hmm!</think>Sure. I can help."]) == ["Sure.", "I can help."]


def test_unfinished_think_block_is_dropped_at_flush() -> None:
    assert split_all(["Answer. <think>still thinking. more"]) == ["Answer."]


def test_angle_brackets_that_are_not_think_tags_are_kept() -> None:
    assert split_all(["a < b and <th> x. "]) == ["a < b and <th> x."]


TEXT = "Hi there. <think>Let me think. Maybe 3.5?</think>The price is 3.5 euros! Anything else? <think>x</think>Bye"
SENTENCES = ["Hi there.", "The price is 3.5 euros!", "Anything else?", "Bye"]


def test_think_and_sentences_split_at_every_position() -> None:
    assert split_all([TEXT]) == SENTENCES
    for cut in range(len(TEXT) + 1):
        assert split_all([TEXT[:cut], TEXT[cut:]]) == SENTENCES, f"split at {cut}"


def test_think_and_sentences_character_by_character() -> None:
    assert split_all(list(TEXT)) == SENTENCES


def test_think_tags_split_at_every_pair_of_positions() -> None:
    text = "A.<think>secret.</think> B."
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            got = split_all([text[:i], text[i:j], text[j:]])
            assert got == ["A.", "B."], f"split at {i}, {j}"
            assert all("secret" not in s and "think" not in s for s in got)


def test_flush_resets_state() -> None:
    s = SentenceSplitter()
    s.feed("<think>hidden")
    assert s.flush() == []
    assert s.feed("Visible. ") == ["Visible."]
    assert s.flush() == []

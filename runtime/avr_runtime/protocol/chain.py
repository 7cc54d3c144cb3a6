"""AVR's ASR → LLM → TTS HTTP streaming formats: the incremental text parsing the core does between them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Final

ASR_CONTENT_TYPE: Final = "audio/l16"


class StreamFormatError(ValueError):
    pass


class LineSplitter:
    """ASR responses stream plain text, one line per utterance; this yields complete, non-empty lines."""

    __slots__ = ("_buf", "_max")

    def __init__(self, max_line: int = 64 * 1024) -> None:
        self._buf = ""
        self._max = max_line

    def feed(self, chunk: str) -> list[str]:
        self._buf += chunk
        *lines, self._buf = self._buf.split("\n")
        if len(self._buf) > self._max:
            raise StreamFormatError(f"line longer than {self._max} characters without a newline")
        return [line.strip() for line in lines if line.strip()]

    def flush(self) -> list[str]:
        rest, self._buf = self._buf.strip(), ""
        return [rest] if rest else []


@dataclass(frozen=True, slots=True)
class LlmChunk:
    type: str
    content: str
    data: dict[str, Any]


class JsonChunkStream:
    """LLM responses stream JSON objects such as ``{"type":"text","content":"..."}``.

    Providers separate them by newlines, by nothing, or as server-sent events (``data: {...}``); all three are read.
    """

    __slots__ = ("_buf", "_decoder", "_max")

    def __init__(self, max_pending: int = 1024 * 1024) -> None:
        self._buf = ""
        self._decoder = json.JSONDecoder()
        self._max = max_pending

    def feed(self, chunk: str) -> list[LlmChunk]:
        self._buf += chunk
        out: list[LlmChunk] = []
        while True:
            text = self._buf.lstrip()
            if text.startswith("data:"):
                text = text[5:].lstrip()
            if text.startswith("[DONE]"):
                text = text[6:]
                self._buf = text
                continue
            if not text:
                self._buf = ""
                break
            if text[0] != "{":
                if "data:".startswith(text) or "[DONE]".startswith(text):
                    self._buf = text  # a marker split across chunks: wait for the rest
                    break
                raise StreamFormatError(f"expected a JSON object, got {text[:40]!r}")
            try:
                obj, end = self._decoder.raw_decode(text)
            except json.JSONDecodeError:
                self._buf = text  # incomplete: wait for more
                if len(self._buf) > self._max:
                    raise StreamFormatError("JSON chunk larger than the limit") from None
                break
            self._buf = text[end:]
            if isinstance(obj, dict):
                out.append(LlmChunk(str(obj.get("type", "text")), str(obj.get("content", "")), obj))
        return out

    def close(self) -> None:
        if self._buf.strip():
            raise StreamFormatError(f"stream ended inside a JSON chunk: {self._buf[:40]!r}")


_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)")
_THINK_OPEN: Final = "<think>"
_THINK_CLOSE: Final = "</think>"


class SentenceSplitter:
    """Cuts streamed LLM text into sentences for TTS (on ``.!?``) and drops ``<think>…</think>`` blocks.

    Both the sentence end and the think tags may be split across chunks, so text is held back until it is certain.
    """

    __slots__ = ("_buf", "_in_think", "_pending")

    def __init__(self) -> None:
        self._buf = ""  # raw text not yet cleared of think tags
        self._pending = ""  # visible text not yet ending in a sentence
        self._in_think = False

    def _strip_think(self) -> str:
        """Move visible text out of the buffer; keep anything that may be the start of a tag."""
        visible = []
        buf = self._buf
        while buf:
            if self._in_think:
                end = buf.find(_THINK_CLOSE)
                if end < 0:
                    # keep a possible partial closing tag
                    buf = buf[-(len(_THINK_CLOSE) - 1) :]
                    break
                buf = buf[end + len(_THINK_CLOSE) :]
                self._in_think = False
                continue
            start = buf.find(_THINK_OPEN)
            if start >= 0:
                visible.append(buf[:start])
                buf = buf[start + len(_THINK_OPEN) :]
                self._in_think = True
                continue
            # hold back a trailing '<' prefix of "<think>"
            cut = len(buf)
            for k in range(min(len(_THINK_OPEN) - 1, len(buf)), 0, -1):
                if _THINK_OPEN.startswith(buf[-k:]):
                    cut = len(buf) - k
                    break
            visible.append(buf[:cut])
            buf = buf[cut:]
            break
        self._buf = buf
        return "".join(visible)

    def feed(self, chunk: str) -> list[str]:
        self._buf += chunk
        visible = self._strip_think()
        self._pending += visible
        sentences: list[str] = []
        text = self._pending
        pos = 0
        for m in _SENTENCE_END.finditer(text):
            if m.end() == len(text):
                break  # "3." may continue as "3.5": wait for the next character
            sentence = text[pos : m.end()].strip()
            if sentence:
                sentences.append(sentence)
            pos = m.end()
        self._pending = text[pos:]
        return sentences

    def flush(self) -> list[str]:
        rest = self._pending
        if not self._in_think:
            rest += self._buf
        self._buf = ""
        self._pending = ""
        self._in_think = False
        rest = rest.strip()
        return [rest] if rest else []

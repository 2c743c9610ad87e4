"""A parser of server-sent events (the WHATWG ``text/event-stream`` format)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterable, AsyncIterator, Iterable, Iterator, List, Optional

__all__ = ["SseEvent", "SseParser", "parse_sse", "aparse_sse"]


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: Optional[str] = None


class SseParser:
    """Feed it lines (without their line ending); it returns an event at
    each blank line that ends one."""

    def __init__(self) -> None:
        self._event = ""
        self._data: List[str] = []
        self._id: Optional[str] = None
        self._has_data = False

    def feed(self, line: str) -> Optional[SseEvent]:
        line = line.rstrip("\r\n")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (the server's keep-alive)
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "id":
            if "\0" not in value:
                self._id = value
        # "retry" and unknown fields are ignored.
        return None

    def _dispatch(self) -> Optional[SseEvent]:
        if not self._has_data:
            self._event = ""
            return None
        ev = SseEvent(event=self._event or "message", data="\n".join(self._data), id=self._id)
        self._event = ""
        self._data = []
        self._has_data = False
        return ev


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """The events in ``lines``; an event the stream ends inside is dropped."""
    p = SseParser()
    for line in lines:
        ev = p.feed(line)
        if ev is not None:
            yield ev


async def aparse_sse(lines: AsyncIterable[str]) -> AsyncIterator[SseEvent]:
    p = SseParser()
    async for line in lines:
        ev = p.feed(line)
        if ev is not None:
            yield ev

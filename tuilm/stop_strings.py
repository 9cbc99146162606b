"""Stop strings: text that ends a generation at its first occurrence, itself never shown.

Streaming makes this subtle: a stop string may arrive split over several tokens, so the text that could be the
start of one is held back until the next piece decides it; only as many characters as could begin a stop string
are held, so everything else streams as it comes. Torch-free: the CLI parses and shows stop strings without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuilm.errors import ConfigError

MAX_STOPS = 16
MAX_STOP_CHARS = 200
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def parse_stop(text: str) -> str:
    """A stop string as typed: \\n, \\t, \\r and \\\\ stand for newline, tab, return and a backslash (a shell or
    a one-line prompt cannot easily type them), and surrounding quotes keep leading or trailing spaces."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    out, chars = [], iter(text)
    for c in chars:
        if c == "\\":
            nxt = next(chars, "")
            out.append(_ESCAPES.get(nxt, "\\" + nxt))
        else:
            out.append(c)
    return "".join(out)


def show_stop(stop: str) -> str:
    """A stop string as `parse_stop` reads it back, quoted."""
    escaped = stop.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return f'"{escaped}"'


def check_stops(stops: tuple[str, ...]) -> None:
    if len(stops) > MAX_STOPS:
        raise ConfigError(f"at most {MAX_STOPS} stop strings, got {len(stops)}")
    for stop in stops:
        if not isinstance(stop, str) or not stop:
            raise ConfigError("a stop string cannot be empty")
        if len(stop) > MAX_STOP_CHARS:
            raise ConfigError(f"a stop string is at most {MAX_STOP_CHARS} characters, got {len(stop)}")


def first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    """Where the earliest stop string in `text` starts, or None."""
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


def cut_at_stop(text: str, stops: tuple[str, ...]) -> str:
    at = first_stop(text, stops)
    return text if at is None else text[:at]


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could be the start of a stop string."""
    longest = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:k]):
                longest = k
                break
    return longest


@dataclass
class Piece:
    text: str
    tag: Any = None  # whatever the caller attached to the text it fed (a token's probability, say)
    last: bool = True  # this piece ends the text fed with its tag (not split off by a hold-back)


@dataclass
class StopFilter:
    """Fed text as it is decoded; gives back what may be shown now, as pieces that keep the caller's tags.

    `stopped` turns true at the first stop string; from then on nothing more is given back.
    """

    stops: tuple[str, ...] = ()
    stopped: bool = False
    _pending: list[Piece] = field(default_factory=list)

    def feed(self, text: str, tag: Any = None) -> list[Piece]:
        if self.stopped:
            return []
        if text:
            self._pending.append(Piece(text, tag))
        buffered = "".join(p.text for p in self._pending)
        at = first_stop(buffered, self.stops)
        if at is not None:
            self.stopped = True
            shown, self._pending = _split(self._pending, at)
            self._pending = []
            return shown
        shown, self._pending = _split(self._pending, len(buffered) - held_back(buffered, self.stops))
        return shown

    def flush(self) -> list[Piece]:
        """What was held back, once no more text comes (nothing after a stop)."""
        shown, self._pending = self._pending, []
        return [] if self.stopped else shown


def _split(pieces: list[Piece], at: int) -> tuple[list[Piece], list[Piece]]:
    """The pieces before character `at` and those from it, a piece cut in two where `at` falls inside it."""
    before, after, seen = [], [], 0
    for piece in pieces:
        end = seen + len(piece.text)
        if end <= at:
            before.append(piece)
        elif seen >= at:
            after.append(piece)
        else:
            before.append(Piece(piece.text[: at - seen], piece.tag, last=False))
            after.append(Piece(piece.text[at - seen :], piece.tag, piece.last))
        seen = end
    return before, after

"""A large JSON job body, cut into pieces of its ``recipients`` array without decoding it whole.

Decoding a JSON job of a million recipients is one C call of 0.35 s (``list[msgspec.Raw]``) to
2.4 s (the typed recipients) that holds the event loop, and so every other tenant, for that long.
``recipient_pieces(body)`` finds the array (the first ``"recipients"`` key followed by ``:`` and
``[``: inside a JSON string a quote is always escaped, so that text cannot occur in one) and cuts
it after an element every ``piece`` bytes or so, where a ``}`` is followed by ``,`` or ``]``.

Why such a cut is right: a cut is kept only if ``[`` + the piece + ``]`` decodes as a JSON array.
A piece that starts at an element and ends inside a string (``"a},b"``) or inside a nested object
(``"vars": {...},``) cannot be a complete array, so whatever decodes ends exactly after an
element, at the array's own depth. Each piece costs one small decode: the caller yields between
pieces. A body this cannot cut (an element that is not an object, a piece that will not end
within ``max_tries`` candidates) gives None: it is decoded whole, as before.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

import msgspec

__all__ = ["Pieces", "elements", "recipient_pieces"]

_ARRAY = re.compile(rb'"recipients"\s*:\s*\[')
_CUT = re.compile(rb"\}\s*([,\]])")
_END = re.compile(rb"\}\s*(\])")
_SPACE = re.compile(rb"\s*")
_RAW_LIST = msgspec.json.Decoder(list[msgspec.Raw])


class Pieces(msgspec.Struct, frozen=True):
    """Where the recipients array is: ``head`` is the body with the array emptied (``[]``);
    ``spans`` are (start, end) of the pieces, each a run of whole elements (no outer commas)."""

    head: bytes
    spans: list[tuple[int, int]]


def recipient_pieces(body: bytes, *, piece: int = 128 * 1024, max_tries: int = 64) -> Iterator[Pieces | None]:
    """A generator: yields None after each piece found (the caller may yield the event loop
    there), then the ``Pieces`` as its last item; if the body cannot be cut, it ends without."""
    m = _ARRAY.search(body)
    if m is None:
        return
    pos = _SPACE.match(body, m.end()).end()  # type: ignore[union-attr]
    spans: list[tuple[int, int]] = []
    if body[pos : pos + 1] == b"]":
        yield Pieces(head=body, spans=[])
        return
    while True:
        found, tries, want = None, 0, min(len(body), pos + piece)
        # The array's end is taken wherever it is; a cut between elements only past ``want``.
        early = [c for c in _END.finditer(body, pos, want)]
        # Candidates past ``want`` start at the last "}" before it: its "," or "]" may lie past it.
        last = body.rfind(b"}", pos, want)
        for cut in itertools.chain(early, _CUT.finditer(body, want if last < 0 else last)):
            end = cut.start() + 1
            try:
                _RAW_LIST.decode(b"[" + body[pos:end] + b"]")
            except (msgspec.DecodeError, msgspec.ValidationError):
                tries += 1
                if tries >= max_tries:
                    break
                continue
            found = (end, cut.group(1), cut.end())
            break
        if found is None:
            return  # cannot cut it: decoded whole
        end, sep, after = found
        spans.append((pos, end))
        if sep == b"]":
            yield Pieces(head=body[: m.end() - 1] + b"[]" + body[after:], spans=spans)
            return
        pos = _SPACE.match(body, after).end()  # type: ignore[union-attr]
        yield None


def elements(body: bytes, span: tuple[int, int]) -> list[bytes]:
    """The JSON text of each element of one piece."""
    start, end = span
    return [bytes(r) for r in _RAW_LIST.decode(b"[" + body[start:end] + b"]")]

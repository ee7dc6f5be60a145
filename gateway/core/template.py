"""Message templates with ``{name}`` placeholders, compiled once per job.

A job of a million recipients stores its template once; each recipient keeps only its values,
packed into one ``bytes`` (``pack``), and the body is rendered at dispatch with ``str.format``
(C speed). Braces that are not a placeholder are literal text.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence

from gateway.core import segments

__all__ = ["MissingVariable", "Template"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_SEP = "\x00"  # values never contain NUL (rejected by pack), so it can separate them


class MissingVariable(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"missing variable {name!r}")
        self.name = name


class Template:
    __slots__ = ("source", "fields", "_fmt", "_get", "_plain")

    def __init__(self, source: str) -> None:
        self.source = source
        fields: list[str] = []
        parts: list[str] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(source):
            parts.append(_escape(source[pos : m.start()]))
            name = m.group(1)
            if name not in fields:
                fields.append(name)
            parts.append("{%d}" % fields.index(name))
            pos = m.end()
        parts.append(_escape(source[pos:]))
        self.fields = tuple(fields)
        self._fmt = "".join(parts)
        self._get = operator.itemgetter(*fields) if fields else None  # the values, in field order
        # The literal text's length if it is plain GSM-7 and each field appears once: then a
        # body's length is known from the values alone (``measure``); else -1.
        literal = _PLACEHOLDER.sub("", source)
        once = len(_PLACEHOLDER.findall(source)) == len(fields)
        self._plain = len(literal) if once and segments.is_plain(literal) else -1

    def fill(self, values: dict[str, str]) -> tuple[str, bytes]:
        """The rendered body and this recipient's values packed in field order (what is stored).
        Raises MissingVariable, or ValueError for a value with a NUL character."""
        if not self.fields:
            return self.source, b""
        vals, joined = self._values(values)
        return self._fmt.format(*vals), joined.encode()

    def measure(self, values: dict[str, str]) -> tuple[bytes, int]:
        """``fill`` without rendering when it can: the packed values, and the body's length if
        all of it is plain GSM-7 (``segments.is_plain``), else -1 (then ``fill`` and plan it)."""
        if not self.fields or self._plain < 0:
            return self.fill(values)[1], -1
        vals, joined = self._values(values)
        flat = "".join(vals)
        return joined.encode(), self._plain + len(flat) if segments.is_plain(flat) else -1

    def measure_all(self, values: Sequence[dict[str, str]]) -> tuple[list[bytes], list[int]] | None:
        """``measure`` of many recipients at once (a chunk of a large job), when every recipient
        has its values: the packed values and the bodies' lengths in septets when every
        character is one GSM-7 septet ("Chloé" too, which ``measure`` leaves to ``plan``), else
        -1 (render and plan it). None otherwise: ask ``measure`` one by one (which says who is wrong
        and why)."""
        if not self.fields or self._plain < 0:
            return None
        try:
            vals = list(map(self._get, values))
            joined = vals if len(self.fields) == 1 else list(map(_SEP.join, vals))
            text = "".join(joined)
        except (KeyError, TypeError):
            return None
        if text.count(_SEP) != len(joined) * (len(self.fields) - 1):
            return None  # a value with a NUL
        fixed = self._plain - (len(self.fields) - 1)  # the literal text, less the separators
        flat = text.replace(_SEP, "") if len(self.fields) > 1 else text
        if not flat.isascii() and segments.plain_septets(flat):  # "Chloé": one scan, not three
            units = [len(j) + fixed for j in joined]
        elif not segments.no_ascii_special(flat):  # some value has an ASCII special: ask each
            units = [len(j) + fixed if segments.is_plain(j.replace(_SEP, "")) else -1 for j in joined]
        elif flat.isascii() or segments.one_septet_each(flat):  # the usual case: one septet a character
            units = [len(j) + fixed for j in joined]
        else:  # plain iff ASCII
            units = [len(j) + fixed if j.isascii() else -1 for j in joined]
        return list(map(str.encode, joined)), units

    def _values(self, values: dict[str, str]) -> tuple[tuple[str, ...], str]:
        try:
            vals = self._get(values)
        except KeyError as exc:
            raise MissingVariable(exc.args[0]) from None
        if len(self.fields) == 1:  # itemgetter of one field gives the value, not a tuple
            vals = (vals,)
        joined = _SEP.join(vals)
        if joined.count(_SEP) != len(vals) - 1:
            raise ValueError("variable values must not contain NUL characters")
        return vals, joined

    def pack(self, values: dict[str, str]) -> bytes:
        return self.fill(values)[1]

    def render(self, packed: bytes) -> str:
        if not self.fields:
            return self.source
        return self._fmt.format(*packed.decode().split(_SEP))

    def render_values(self, values: dict[str, str]) -> str:
        return self.render(self.pack(values))


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")

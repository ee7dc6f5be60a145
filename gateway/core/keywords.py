"""What an inbound (MO) message asks for: opt out, opt back in, help, or nothing (a message).

Pure: text in, a value out. A message is a keyword only when it is the keyword and nothing else
(CTIA Messaging Principles, §5: "STOP" opts out, "please stop sending me offers" is a message for
the tenant), compared after ``normalise``: Unicode NFKD (full-width letters become ASCII, accents come
apart), casefold, and everything but letters and digits removed (accents too), so ``Stop.``,
`` stop ``, ``S T O P`` and ``ＳＴＯＰ`` are all ``stop``, ``Arrêt`` is ``arret``, and the two-word keywords ``OPT OUT`` / ``STOP ALL`` match
``optout`` / ``stopall`` however they are spaced.

Keyword sets are per tenant and per *locale*, a locale being the calling-code prefix of the
sender's number (``"86"`` for China, ``"33"`` for France): the longest matching prefix wins,
else the tenant's default set. Each set carries its replies (the opt-out confirmation, the
opt-in confirmation, the help text) so a Chinese subscriber is answered in Chinese.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from typing import Annotated

import msgspec

__all__ = [
    "DEFAULT_HELP",
    "DEFAULT_OPT_IN",
    "DEFAULT_OPT_OUT",
    "Help",
    "Intent",
    "KeywordSet",
    "KeywordSettings",
    "Keywords",
    "OptIn",
    "OptOut",
    "Other",
    "normalise",
]

#: CTIA's standard opt-out words, the common extras, French (ARRET) and Chinese (TD, R, 退订).
DEFAULT_OPT_OUT = ("STOP", "QUIT", "END", "REVOKE", "OPT OUT", "CANCEL", "UNSUBSCRIBE", "STOPALL", "STOP ALL",
                   "OPTOUT", "REMOVE", "ARRET", "TD", "R", "退订")  # fmt: skip
DEFAULT_OPT_IN = ("START", "UNSTOP", "YES")
DEFAULT_HELP = ("HELP", "INFO")

Words = Annotated[list[Annotated[str, msgspec.Meta(min_length=1, max_length=64)]], msgspec.Meta(max_length=200)]
Reply = Annotated[str, msgspec.Meta(max_length=1600)]


class KeywordSet(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The keywords of one tenant in one locale, and what is answered to each. An empty reply
    sends nothing (the keyword still acts)."""

    opt_out: Words = msgspec.field(default_factory=lambda: list(DEFAULT_OPT_OUT))
    opt_in: Words = msgspec.field(default_factory=lambda: list(DEFAULT_OPT_IN))
    help: Words = msgspec.field(default_factory=lambda: list(DEFAULT_HELP))
    opt_out_reply: Reply = "You are unsubscribed and will receive no more messages. Reply START to resubscribe."
    opt_in_reply: Reply = "You are subscribed again. Reply STOP to unsubscribe, HELP for help."
    help_reply: Reply = "Reply STOP to unsubscribe."

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for kind, words in (("opt_out", self.opt_out), ("opt_in", self.opt_in), ("help", self.help)):
            for w in words:
                key = normalise(w)
                if not key:
                    raise ValueError(f"{kind}: keyword {w!r} has no letters or digits")
                if seen.get(key, kind) != kind:
                    raise ValueError(f"keyword {w!r} is both {seen[key]} and {kind}")
                seen[key] = kind


class KeywordSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tenant's keywords: ``default``, and per locale (calling-code prefix of the sender's
    number, digits) a whole set of its own."""

    default: KeywordSet = msgspec.field(default_factory=KeywordSet)
    locales: dict[Annotated[str, msgspec.Meta(pattern=r"^[0-9]{1,6}$")], KeywordSet] = {}


class OptOut(msgspec.Struct, frozen=True, kw_only=True, tag="opt_out"):
    keyword: str  # as configured (upper case), for the audit record
    reply: str


class OptIn(msgspec.Struct, frozen=True, kw_only=True, tag="opt_in"):
    keyword: str
    reply: str


class Help(msgspec.Struct, frozen=True, kw_only=True, tag="help"):
    keyword: str
    reply: str


class Other(msgspec.Struct, frozen=True, tag="message"):
    """Not a keyword: a message for the tenant."""


Intent = OptOut | OptIn | Help | Other
_OTHER = Other()
_KEEP = frozenset("LN")  # Unicode major categories kept: letters (incl. CJK) and digits


def normalise(text: str) -> str:
    """NFKD (compatibility forms and accents split off), casefold, and letters and digits only:
    punctuation, symbols, spaces and combining marks (accents) dropped."""
    folded = unicodedata.normalize("NFKD", text).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] in _KEEP)


class _Table:
    __slots__ = ("words",)

    def __init__(self, ks: KeywordSet) -> None:
        self.words: dict[str, Intent] = {}
        for kind, words, reply in ((OptOut, ks.opt_out, ks.opt_out_reply), (OptIn, ks.opt_in, ks.opt_in_reply),
                                   (Help, ks.help, ks.help_reply)):  # fmt: skip
            for w in words:
                self.words.setdefault(normalise(w), kind(keyword=w.upper(), reply=reply))


class Keywords:
    """One tenant's keywords, normalised once; ``classify`` is a dict lookup."""

    __slots__ = ("_default", "_locales", "_lengths")

    def __init__(self, settings: KeywordSettings | None = None) -> None:
        s = settings or KeywordSettings()
        self._default = _Table(s.default)
        self._locales: Mapping[str, _Table] = {p: _Table(ks) for p, ks in s.locales.items()}
        self._lengths = sorted({len(p) for p in self._locales}, reverse=True)

    def classify(self, text: str, sender: str = "") -> Intent:
        """What ``text`` from ``sender`` (E.164, '+' optional) asks for."""
        key = normalise(text)
        if not key or len(key) > 64:
            return _OTHER
        return self._table(sender).words.get(key, _OTHER)

    def _table(self, sender: str) -> _Table:
        digits = sender.lstrip("+")
        for n in self._lengths:
            hit = self._locales.get(digits[:n])
            if hit is not None:
                return hit
        return self._default

    def words(self, sender: str = "") -> Iterable[str]:
        return self._table(sender).words.keys()

"""What an inbound (MO) message asks for: opt out, opt back in, help, answer yes, or nothing.

Pure: text in, a value out. First the tenant's configured keywords, each matched as the whole
message, compared after ``normalise``: Unicode NFKD (full-width letters become ASCII, accents come
apart), casefold, and everything but letters and digits removed (accents too), so ``Stop.``,
`` stop ``, ``S T O P`` and ``ＳＴＯＰ`` are all ``stop``, ``Arrêt`` is ``arret``, and the two-word keywords ``OPT OUT`` / ``STOP ALL`` match
``optout`` / ``stopall`` however they are spaced.

Then, because revocation "by any reasonable means" must be honoured (FCC 2024 order, 47 CFR
64.1200(a)(10)), the opt-out classifier (``gateway.core.optout``) on the text: "stop please",
"Please stop texting me", "no me envíen más", "больше не пишите" are opt-outs (``certain``), a
weak cue ("leave me alone") an opt-out the classifier is unsure of (``certain=False``: the
tenant's ``opt_out_uncertain`` decides), while "don't stop the deals" stays a message.

``YES`` (and "sí", "oui", "ja", "да", "是"...) is ``Yes``: it re-subscribes a number only when it
answers a pending question (the pipeline knows), never on its own; a configured opt-in word
that is a yes-word is treated the same way. START / UNSTOP re-subscribe unconditionally.

Keyword sets are per tenant and per *locale*, a locale being the calling-code prefix of the
sender's number (``"86"`` for China, ``"33"`` for France): the longest matching prefix wins,
else the tenant's default set. Each set carries its replies (the opt-out confirmation, the
opt-in confirmation, the help text) so a Chinese subscriber is answered in Chinese.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from typing import Annotated, Literal

import msgspec

from gateway.core import optout

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
    "Yes",
    "normalise",
]

#: CTIA's standard opt-out words, the common extras, French (ARRET) and Chinese (TD, R, 退订).
DEFAULT_OPT_OUT = ("STOP", "QUIT", "END", "REVOKE", "OPT OUT", "CANCEL", "UNSUBSCRIBE", "STOPALL", "STOP ALL",
                   "OPTOUT", "REMOVE", "ARRET", "TD", "R", "退订")  # fmt: skip
DEFAULT_OPT_IN = ("START", "UNSTOP")
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
    # Sent once for an opt-out the classifier is unsure of, when the tenant's opt_out_uncertain is "ask".
    question_reply: Reply = "Do you want to stop receiving our messages? Reply STOP to unsubscribe or YES to keep them."

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
    # An opt-out the classifier is unsure of ("leave me alone"): act on it ("opt_out", the safe
    # default), or also ask once ("ask": the number is suppressed meanwhile; YES re-subscribes it,
    # STOP confirms). See docs/COMPLIANCE.md.
    opt_out_uncertain: Literal["opt_out", "ask"] = "opt_out"
    # Use the built-in classifier (words and phrases in many languages) besides the keywords.
    classifier: bool = True


class OptOut(msgspec.Struct, frozen=True, kw_only=True, tag="opt_out"):
    keyword: str  # as configured (upper case), or what the classifier matched, for the audit record
    reply: str
    certain: bool = True
    question: str = ""  # the clarifying question, for an unsure opt-out of an "ask" tenant


class OptIn(msgspec.Struct, frozen=True, kw_only=True, tag="opt_in"):
    keyword: str
    reply: str


class Help(msgspec.Struct, frozen=True, kw_only=True, tag="help"):
    keyword: str
    reply: str


class Yes(msgspec.Struct, frozen=True, kw_only=True, tag="yes"):
    """A bare yes: an opt-in only if it answers a pending question, else a message."""

    keyword: str
    reply: str  # the opt-in reply, if it does


class Other(msgspec.Struct, frozen=True, tag="message"):
    """Not a keyword: a message for the tenant."""


Intent = OptOut | OptIn | Help | Yes | Other
_OTHER = Other()
_KEEP = frozenset("LN")  # Unicode major categories kept: letters (incl. CJK) and digits


def normalise(text: str) -> str:
    """NFKD (compatibility forms and accents split off), casefold, and letters and digits only:
    punctuation, symbols, spaces and combining marks (accents) dropped."""
    folded = unicodedata.normalize("NFKD", text).casefold()
    return "".join(ch for ch in folded if unicodedata.category(ch)[0] in _KEEP)


class _Table:
    __slots__ = ("words", "extra", "ks")

    def __init__(self, ks: KeywordSet) -> None:
        self.ks = ks
        self.words: dict[str, Intent] = {}
        for kind, words, reply in ((OptOut, ks.opt_out, ks.opt_out_reply), (OptIn, ks.opt_in, ks.opt_in_reply),
                                   (Help, ks.help, ks.help_reply)):  # fmt: skip
            for w in words:
                if kind is OptIn and optout.is_yes(w):
                    kind_w: type = Yes  # a yes-word never re-subscribes on its own
                else:
                    kind_w = kind
                self.words.setdefault(normalise(w), kind_w(keyword=w.upper(), reply=reply))
        # The tenant's own one-word opt-out keywords count as conclusive words in phrases too, but
        # not the one- and two-letter ones (the Chinese footer's R, TD): inside a sentence they are
        # chat ("r u ok?"); alone they are keywords, and in a Chinese reply optout's footer rule hears them.
        self.extra = frozenset(f for w in ks.opt_out if len((f := optout.fold(w).strip()).split()) == 1 and len(f) >= 3)


class Keywords:
    """One tenant's keywords, normalised once; ``classify`` is a dict lookup."""

    __slots__ = ("_default", "_locales", "_lengths", "_ask", "_classifier")

    def __init__(self, settings: KeywordSettings | None = None) -> None:
        s = settings or KeywordSettings()
        self._ask = s.opt_out_uncertain == "ask"
        self._classifier = s.classifier
        self._default = _Table(s.default)
        self._locales: Mapping[str, _Table] = {p: _Table(ks) for p, ks in s.locales.items()}
        self._lengths = sorted({len(p) for p in self._locales}, reverse=True)

    def classify(self, text: str, sender: str = "") -> Intent:
        """What ``text`` from ``sender`` (E.164, '+' optional) asks for."""
        key = normalise(text)
        if not key:
            return _OTHER
        table = self._table(sender)
        hit = table.words.get(key) if len(key) <= 64 else None
        if hit is not None:
            return hit
        ks = table.ks
        if self._classifier:
            verdict, matched = optout.classify(text, table.extra)
            if verdict is not optout.OptOutVerdict.NO:
                certain = verdict is optout.OptOutVerdict.CERTAIN
                return OptOut(keyword=matched.upper()[:64], reply=ks.opt_out_reply, certain=certain,
                              question=ks.question_reply if self._ask and not certain else "")  # fmt: skip
            if optout.is_yes(text):
                return Yes(keyword="YES", reply=ks.opt_in_reply)
        return _OTHER

    def _table(self, sender: str) -> _Table:
        digits = sender.lstrip("+")
        for n in self._lengths:
            hit = self._locales.get(digits[:n])
            if hit is not None:
                return hit
        return self._default

    def words(self, sender: str = "") -> Iterable[str]:
        return self._table(sender).words.keys()

"""Is this an E.164 number phonenumbers accepts? Fast enough for jobs of a million recipients.

phonenumbers validates a number in ~17 µs (parse + pattern match): 17 s for a 1M job. Validity
is decided by the number's leading digits and length (the numbering plan's ranges), so verdicts
are cached per *class*: the number without its last three digits, plus its length. The first
number of a class is checked by phonenumbers; the others of the class share its verdict. The
approximation: a plan whose ranges split inside the last three digits. Those are rare and the
carrier's answer (a permanent error, `rejected`) still ends such a message cleanly.
"""

from __future__ import annotations

import phonenumbers

__all__ = ["NumberCheck"]

_TAIL = 3


class NumberCheck:
    __slots__ = ("_cache", "_max")

    def __init__(self, *, max_classes: int = 1_000_000) -> None:
        self._cache: dict[str, str | None] = {}
        self._max = max_classes

    def error(self, number: str) -> str | None:
        """None if valid, else why not (for the API's error body)."""
        if not (number[:1] == "+" and number[1:].isdigit() and 8 <= len(number) <= 16 and number[1] != "0"):
            return f"invalid number {number!r}: E.164 is '+' and 7 to 15 digits"
        key = number[:-_TAIL] + str(len(number))
        hit = self._cache.get(key, "")
        if hit != "":
            return None if hit is None else hit.replace("{}", repr(number))
        verdict = self._check(number)
        if len(self._cache) >= self._max:
            self._cache.clear()
        self._cache[key] = None if verdict is None else verdict.replace(repr(number), "{}")
        return verdict

    @staticmethod
    def _check(number: str) -> str | None:
        try:
            parsed = phonenumbers.parse(number)
        except phonenumbers.NumberParseException as exc:
            return f"invalid number {number!r}: {exc}"
        if not phonenumbers.is_valid_number(parsed):
            return f"invalid number {number!r}: not a number in use in its country's numbering plan"
        return None

"""Realistic synthetic traffic for benchmarks and the demo: numbers across time zones, a mix of
categories, templated bulk jobs. Deterministic for a given seed."""

from __future__ import annotations

import random
from collections.abc import Iterator

from gateway.core.model import Job, Recipient

__all__ = ["PREFIXES", "REGIONS", "numbers", "recipients", "region_of"]

# (E.164 prefix, digits after it, weight): mobile ranges in many zones, incl. multi-zone ones.
PREFIXES: list[tuple[str, int, int]] = [
    ("1212", 7, 12),  # New York
    ("1305", 7, 6),  # Miami (US-FL window 08-20)
    ("1415", 7, 10),  # San Francisco
    ("1312", 7, 6),  # Chicago
    ("1808", 7, 1),  # Honolulu
    ("1405", 7, 2),  # Oklahoma City (US-OK window)
    ("447", 9, 10),  # UK mobile
    ("336", 8, 8),  # France mobile
    ("4915", 9, 8),  # Germany mobile
    ("919", 9, 10),  # India
    ("614", 8, 5),  # Australia mobile (several zones)
    ("55119", 8, 6),  # Sao Paulo
    ("8190", 8, 6),  # Japan
    ("7916", 7, 4),  # Russia mobile (many zones)
]

#: A name for each prefix above, for people reading a summary.
REGIONS = {
    "1212": "New York", "1305": "Miami", "1415": "San Francisco", "1312": "Chicago", "1808": "Honolulu",
    "1405": "Oklahoma City", "447": "UK", "336": "France", "4915": "Germany", "919": "India",
    "614": "Australia", "55119": "Sao Paulo", "8190": "Japan", "7916": "Russia",
}  # fmt: skip


def region_of(number: str) -> str:
    """The REGIONS name of a number generated here ("other" for any other number)."""
    for p in sorted(REGIONS, key=len, reverse=True):
        if number[1:].startswith(p):
            return REGIONS[p]
    return "other"


def numbers(count: int, seed: int = 1) -> Iterator[str]:
    rnd = random.Random(seed)
    prefixes = [p for p, _, w in PREFIXES for _ in range(w)]
    digits = {p: n for p, n, _ in PREFIXES}
    for _ in range(count):
        p = rnd.choice(prefixes)
        n = digits[p]
        yield "+" + p + str(rnd.randrange(10 ** (n - 1), 10**n))


NAMES = ["Ann", "Bo", "Chloé", "Dmitri", "Eve", "Fatima", "Gus", "Hana", "Ivan", "Juno", "Kai", "Léa"]


def recipients(count: int, seed: int = 1, *, vars_for: str = "marketing") -> Iterator[Recipient]:
    rnd = random.Random(seed + 7)
    for to in numbers(count, seed):
        if vars_for == "marketing":
            v = {"name": rnd.choice(NAMES), "pct": str(rnd.choice((10, 15, 20, 25, 30)))}
        elif vars_for == "otp":
            v = {"code": f"{rnd.randrange(10**6):06d}"}
        else:
            v = {"order": str(rnd.randrange(10**7, 10**8))}
        yield Recipient(to=to, vars=v)


TEMPLATES = {
    "marketing": "Hi {name}, our winter sale is on: {pct}% off everything until Sunday. Reply STOP to opt out.",
    "transactional": "Your order {order} has shipped and will arrive within 2 working days.",
    "otp": "Your Sluice code is {code}. It expires in 5 minutes.",
}


def job(job_id: str, category: str, *, tenant: str = "shop", sender: str = "SLUICE", **kw) -> Job:
    return Job(id=job_id, tenant=tenant, sender=sender, template=TEMPLATES[category], category=category, **kw)

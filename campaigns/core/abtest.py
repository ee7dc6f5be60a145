"""A/B tests: who gets which variant, and when a variant has won.

**Assignment** is deterministic: ``u = SHA-256("{campaign}:{subscriber}")`` read as a number in [0, 1).
``u < test_share`` puts the subscriber in the test, split among the variants by weight (the same
``u`` rescaled, so the split is independent of the order recipients come in and a relaunch assigns the
same); everyone else is in the *rest*, who get the winner once it is decided (``assign`` returns None).

**Winner** (``decide(test, results, now)``): before ``decide_at`` the answer is ``pending``. After, the
variant with the best point estimate of the metric wins only if it beats *every* other variant at the
significance level ``alpha`` (two-sided, Bonferroni-corrected over the k-1 comparisons), and every
variant has at least ``min_per_variant`` delivered messages. The tests:

- ``ctr`` (unique clickers / delivered) and ``conversion`` (conversions / delivered): the
  two-proportion z-test with the pooled standard error;
- ``revenue_per_message`` (revenue / delivered message): Welch's t-test on the per-message revenue
  (from n, sum and sum of squares; Welch-Satterthwaite degrees of freedom; Student's t computed with
  the regularised incomplete beta function, no SciPy).

Otherwise there is no winner, and ``fallback`` says what the rest get: ``control`` (the first variant),
``best`` (the best point estimate anyway) or ``none`` (the rest are not sent). Reports carry 95 %
(``1 - alpha``) confidence intervals: Wilson's score interval for proportions, Welch's t interval for
revenue per message.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Annotated, Literal

import msgspec

from campaigns.errors import InvalidInput

__all__ = ["AbTest", "Decision", "Estimate", "Moments", "Variant", "VariantResult", "assign", "bucket", "decide",
           "results_from_revenues", "student_t_sf", "welch_t", "wilson", "z_test"]  # fmt: skip

Metric = Literal["ctr", "conversion", "revenue_per_message"]
Share = Annotated[float, msgspec.Meta(gt=0, le=1)]


class Variant(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=40)]
    weight: Annotated[float, msgspec.Meta(gt=0, le=1e6)] = 1.0


class AbTest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    campaign: str
    variants: tuple[Variant, ...]
    test_share: Share = 0.2
    metric: Metric = "ctr"
    decide_at: float  # epoch seconds: launch + the test period
    alpha: Annotated[float, msgspec.Meta(gt=0, lt=0.5)] = 0.05
    min_per_variant: Annotated[int, msgspec.Meta(ge=1)] = 100
    fallback: Literal["control", "best", "none"] = "control"

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(names) < 2:
            raise InvalidInput("an A/B test needs at least two variants", code="too_few_variants", field="variants")
        if len(set(names)) != len(names):
            raise InvalidInput("variant names must be unique", code="duplicate_variant", field="variants")


def bucket(campaign: str, subscriber: int | str) -> float:
    """The subscriber's uniform position in [0, 1) for this campaign."""
    digest = hashlib.sha256(f"{campaign}:{subscriber}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(test: AbTest, subscriber: int | str) -> str | None:
    """The variant's name, or None when the subscriber is in the rest (sent the winner later)."""
    u = bucket(test.campaign, subscriber)
    if u >= test.test_share:
        return None
    x = u / test.test_share * sum(v.weight for v in test.variants)
    for v in test.variants:
        if x < v.weight:
            return v.name
        x -= v.weight
    return test.variants[-1].name  # float rounding at the top edge


# ---- statistics -----------------------------------------------------------------------------

_N = NormalDist()


def wilson(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson's score interval for a proportion; (0, 1) when n == 0."""
    if n == 0:
        return (0.0, 1.0)
    z = _N.inv_cdf(1 - alpha / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends, no float residue
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


def z_test(s1: int, n1: int, s2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test (1.0 when undefined)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (s1 / n1 - s2 / n2) / se
    return 2 * _N.cdf(-abs(z))


def _betacf(a: float, b: float, x: float) -> float:
    # Lentz's continued fraction for the incomplete beta (Numerical Recipes, 3rd ed., §6.4).
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((a + m2 - 1) * (a + m2)), -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(ln) * _betacf(a, b, x) / a
    return 1 - math.exp(ln) * _betacf(b, a, 1 - x) / b


def student_t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return tail if t >= 0 else 1 - tail


def _t_quantile(p: float, df: float) -> float:
    """The t with P(T > t) = 1 - p, by bisection (p in (0.5, 1))."""
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if student_t_sf(mid, df) > 1 - p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


class Moments(msgspec.Struct, frozen=True, kw_only=True):
    n: int
    total: float  # sum of the values
    total_sq: float  # sum of their squares

    def mean(self) -> float:
        return self.total / self.n if self.n else 0.0

    def var(self) -> float:
        if self.n < 2:
            return 0.0
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))


def welch_t(a: Moments, b: Moments) -> float:
    """Two-sided p-value of Welch's t-test (1.0 when undefined)."""
    if a.n < 2 or b.n < 2:
        return 1.0
    va, vb = a.var() / a.n, b.var() / b.n
    se2 = va + vb
    if se2 == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    t = (a.mean() - b.mean()) / math.sqrt(se2)
    df = se2 * se2 / (va * va / (a.n - 1) + vb * vb / (b.n - 1))
    return min(1.0, 2 * student_t_sf(abs(t), df))


def _mean_interval(m: Moments, alpha: float) -> tuple[float, float]:
    if m.n < 2:
        return (-math.inf, math.inf) if m.n == 0 else (m.mean(), m.mean())
    half = _t_quantile(1 - alpha / 2, m.n - 1) * math.sqrt(m.var() / m.n)
    return (m.mean() - half, m.mean() + half)


# ---- the decision ---------------------------------------------------------------------------


class VariantResult(msgspec.Struct, frozen=True, kw_only=True):
    """What a variant's test messages did (from the attribution report)."""

    delivered: int
    unique_clicks: int = 0
    conversions: int = 0
    revenue: int = 0  # minor units, sum over the delivered messages
    revenue_sq: float = 0.0  # sum of each message's revenue squared (for the variance)


class Estimate(msgspec.Struct, frozen=True, kw_only=True):
    variant: str
    n: int
    value: float
    low: float
    high: float
    p_value: float | None  # against the leader; None for the leader itself


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    status: Literal["pending", "winner", "no_winner"]
    winner: str | None  # who the rest get (the winner, or the fallback's pick)
    estimates: tuple[Estimate, ...]
    reason: str


def _check(name: str, r: VariantResult) -> None:
    if min(r.delivered, r.unique_clicks, r.conversions, r.revenue, r.revenue_sq) < 0:
        raise InvalidInput(f"{name}: counts cannot be negative", code="inconsistent_results", field=name)
    if r.unique_clicks > r.delivered or r.conversions > r.delivered:
        raise InvalidInput(f"{name}: more clicks or conversions than delivered messages",
                           code="inconsistent_results", field=name)


def _sample(metric: Metric, r: VariantResult) -> tuple[int, int] | Moments:
    if metric == "ctr":
        return (r.unique_clicks, r.delivered)
    if metric == "conversion":
        return (r.conversions, r.delivered)
    return Moments(n=r.delivered, total=float(r.revenue), total_sq=r.revenue_sq)


def _point(s: tuple[int, int] | Moments) -> float:
    if isinstance(s, Moments):
        return s.mean()
    return s[0] / s[1] if s[1] else 0.0


def _p(a: tuple[int, int] | Moments, b: tuple[int, int] | Moments) -> float:
    if isinstance(a, Moments) and isinstance(b, Moments):
        return welch_t(a, b)
    assert isinstance(a, tuple) and isinstance(b, tuple)
    return z_test(a[0], a[1], b[0], b[1])


def _interval(s: tuple[int, int] | Moments, alpha: float) -> tuple[float, float]:
    return _mean_interval(s, alpha) if isinstance(s, Moments) else wilson(s[0], s[1], alpha)


def decide(test: AbTest, results: Mapping[str, VariantResult], now: float) -> Decision:
    """Whether a variant has won at ``now``; pure, so a test can replay it on virtual time."""
    names = [v.name for v in test.variants]
    for name, r in results.items():
        _check(name, r)
    samples = {n: _sample(test.metric, results.get(n, VariantResult(delivered=0))) for n in names}
    # Best point estimate; ties go to the earlier variant (the control first).
    leader = max(names, key=lambda n: (_point(samples[n]), -names.index(n)))
    ps = {n: _p(samples[leader], samples[n]) for n in names if n != leader}
    estimates = tuple(
        Estimate(variant=n, n=_n(samples[n]), value=_point(samples[n]),
                 low=_interval(samples[n], test.alpha)[0], high=_interval(samples[n], test.alpha)[1],
                 p_value=ps.get(n))
        for n in names
    )  # fmt: skip
    if now < test.decide_at:
        return Decision(status="pending", winner=None, estimates=estimates, reason="the test period is running")
    small = [n for n in names if _n(samples[n]) < test.min_per_variant]
    threshold = test.alpha / (len(names) - 1)
    if small:
        reason = f"too few delivered messages in {', '.join(small)} (minimum {test.min_per_variant})"
    elif all(p < threshold for p in ps.values()):
        return Decision(status="winner", winner=leader, estimates=estimates,
                        reason=f"{leader} beats every other variant at p < {threshold:.4g}")
    else:
        reason = f"no variant is significantly best (p >= {threshold:.4g} against {leader})"
    pick = {"control": names[0], "best": leader, "none": None}[test.fallback]
    return Decision(status="no_winner", winner=pick, estimates=estimates, reason=reason)


def _n(s: tuple[int, int] | Moments) -> int:
    return s.n if isinstance(s, Moments) else s[1]


def results_from_revenues(revenues: Sequence[int], clicks: int = 0, conversions: int = 0) -> VariantResult:
    """A VariantResult from each delivered message's attributed revenue (0 for most)."""
    return VariantResult(delivered=len(revenues), unique_clicks=clicks, conversions=conversions,
                         revenue=sum(revenues), revenue_sq=float(sum(r * r for r in revenues)))

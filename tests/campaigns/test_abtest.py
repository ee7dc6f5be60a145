"""A/B tests (campaigns/core/abtest.py): deterministic assignment with the asked shares, the statistics
checked against known values, and the winner decision replayed on virtual time: pending before the
period ends, a clear winner found, no winner when the difference is noise (then the fallback)."""

from __future__ import annotations

import math
import random
from collections import Counter

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core.abtest import (
    AbTest,
    Moments,
    Variant,
    VariantResult,
    assign,
    decide,
    results_from_revenues,
    student_t_sf,
    welch_t,
    wilson,
    z_test,
)
from campaigns.errors import InvalidInput

T0 = 1_780_000_000.0


def ab(**kw: object) -> AbTest:
    base = {"campaign": "spring", "variants": (Variant(name="A"), Variant(name="B")), "decide_at": T0 + 4 * 3600}
    return AbTest(**{**base, **kw})  # type: ignore[arg-type]


def test_assignment_is_deterministic_and_follows_share_and_weights() -> None:
    t = ab(test_share=0.3, variants=(Variant(name="A", weight=1), Variant(name="B", weight=2)))
    got = Counter(assign(t, s) for s in range(60_000))
    assert [assign(t, s) for s in range(100)] == [assign(t, s) for s in range(100)]
    assert got[None] / 60_000 == pytest.approx(0.7, abs=0.01)
    assert got["A"] / 60_000 == pytest.approx(0.1, abs=0.01)
    assert got["B"] / 60_000 == pytest.approx(0.2, abs=0.01)
    # Another campaign reshuffles who is in the test.
    other = ab(campaign="summer", test_share=0.3)
    assert [assign(t, s) is None for s in range(200)] != [assign(other, s) is None for s in range(200)]


@given(st.integers(0, 10**12), st.floats(0.01, 1.0))
def test_a_subscriber_in_a_smaller_test_stays_in_a_larger_one(subscriber: int, share: float) -> None:
    small, full = ab(test_share=share), ab(test_share=1.0)
    if assign(small, subscriber) is not None:
        assert assign(full, subscriber) is not None
    assert assign(full, subscriber) in {"A", "B"}


def test_invalid_tests_are_refused() -> None:
    with pytest.raises(InvalidInput) as err:
        ab(variants=(Variant(name="A"),))
    assert err.value.code == "too_few_variants"
    with pytest.raises(InvalidInput):
        ab(variants=(Variant(name="A"), Variant(name="A")))
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"campaign": "c", "variants": [{"name": "A"}, {"name": "B"}], "decide_at": 1, "test_share": 0}, AbTest)


# ---- statistics against known values ----------------------------------------------------------


def test_wilson_interval_known_values() -> None:
    low, high = wilson(81, 263)  # Wilson (1927) / Newcombe (1998) example: 0.2553 - 0.3662
    assert low == pytest.approx(0.2553, abs=1e-4) and high == pytest.approx(0.3662, abs=1e-4)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert wilson(0, 0) == (0.0, 1.0)


def test_z_test_known_value() -> None:
    # 120/1000 vs 90/1000: z = 2.19, two-sided p = 0.0285.
    assert z_test(120, 1000, 90, 1000) == pytest.approx(0.0285, abs=5e-4)
    assert z_test(0, 100, 0, 100) == 1.0


@pytest.mark.parametrize(("t", "df", "sf"), [(2.228, 10, 0.025), (1.96, 1e6, 0.025), (12.706, 1, 0.025), (0.0, 5, 0.5), (-2.228, 10, 0.975)])
def test_student_t_tail_known_values(t: float, df: float, sf: float) -> None:
    assert student_t_sf(t, df) == pytest.approx(sf, abs=2e-4)


def test_welch_matches_a_direct_computation() -> None:
    rnd = random.Random(7)
    xs = [rnd.gauss(10, 2) for _ in range(40)]
    ys = [rnd.gauss(11, 4) for _ in range(25)]
    mx = Moments(n=len(xs), total=sum(xs), total_sq=sum(x * x for x in xs))
    my = Moments(n=len(ys), total=sum(ys), total_sq=sum(y * y for y in ys))
    from statistics import mean, variance

    se = math.sqrt(variance(xs) / 40 + variance(ys) / 25)
    t = (mean(xs) - mean(ys)) / se
    df = se**4 / ((variance(xs) / 40) ** 2 / 39 + (variance(ys) / 25) ** 2 / 24)
    assert welch_t(mx, my) == pytest.approx(2 * student_t_sf(abs(t), df), rel=1e-9)
    assert 0 < welch_t(mx, my) < 1


# ---- the decision on virtual time -------------------------------------------------------------


def test_pending_until_the_period_ends_then_a_clear_winner() -> None:
    t = ab(metric="ctr")
    results = {"A": VariantResult(delivered=2000, unique_clicks=200), "B": VariantResult(delivered=2000, unique_clicks=320)}
    assert decide(t, results, now=T0 + 4 * 3600 - 0.001).status == "pending"
    d = decide(t, results, now=T0 + 4 * 3600)
    assert (d.status, d.winner) == ("winner", "B")
    a_est, b_est = d.estimates
    assert a_est.low < 0.1 < a_est.high and b_est.low < 0.16 < b_est.high
    assert b_est.p_value is None and a_est.p_value is not None and a_est.p_value < 0.001


@pytest.mark.parametrize(("fallback", "pick"), [("control", "A"), ("best", "B"), ("none", None)])
def test_no_winner_when_the_difference_is_noise(fallback: str, pick: str | None) -> None:
    t = ab(metric="conversion", fallback=fallback)
    results = {"A": VariantResult(delivered=1000, conversions=50), "B": VariantResult(delivered=1000, conversions=56)}
    d = decide(t, results, now=T0 + 10**6)
    assert (d.status, d.winner) == ("no_winner", pick)


def test_too_few_messages_is_no_winner_even_with_a_big_gap() -> None:
    t = ab(min_per_variant=500)
    results = {"A": VariantResult(delivered=400, unique_clicks=10), "B": VariantResult(delivered=400, unique_clicks=200)}
    d = decide(t, results, now=T0 + 10**6)
    assert d.status == "no_winner" and "too few" in d.reason


def test_three_variants_need_to_beat_each_other_with_bonferroni() -> None:
    t = ab(variants=(Variant(name="A"), Variant(name="B"), Variant(name="C")), metric="ctr")
    # B beats A clearly but C only at p ~ 0.04 > 0.025.
    res = {
        "A": VariantResult(delivered=2000, unique_clicks=200),
        "B": VariantResult(delivered=2000, unique_clicks=300),
        "C": VariantResult(delivered=2000, unique_clicks=254),
    }
    p_bc = z_test(300, 2000, 254, 2000)
    assert 0.025 < p_bc < 0.05
    assert decide(t, res, now=T0 + 10**6).status == "no_winner"
    # Without C, the same B wins.
    two = ab(metric="ctr")
    assert decide(two, {"A": res["A"], "B": res["B"]}, now=T0 + 10**6).winner == "B"


def test_revenue_per_message_winner_with_welch() -> None:
    rnd = random.Random(3)
    # Most messages earn nothing; B's buyers spend more.
    a = [rnd.choice([0] * 9 + [4000]) for _ in range(3000)]
    b = [rnd.choice([0] * 9 + [6000]) for _ in range(3000)]
    t = ab(metric="revenue_per_message")
    d = decide(t, {"A": results_from_revenues(a), "B": results_from_revenues(b)}, now=T0 + 10**6)
    assert (d.status, d.winner) == ("winner", "B")
    b_est = d.estimates[1]
    assert b_est.low < sum(b) / len(b) < b_est.high
    same = decide(t, {"A": results_from_revenues(a), "B": results_from_revenues(a[::-1])}, now=T0 + 10**6)
    assert same.status == "no_winner"


def test_a_doubled_rate_is_found_with_high_power() -> None:
    """Simulated arms decided at the end of the period (virtual time): a doubled rate with 3000 per
    arm (rates 2 % to 30 %) is found in at least 99 % of 400 simulated tests, and every interval
    holds its point estimate. (Not "always": at a 2 % rate a draw 3.5 sigma off the mean is a tie,
    and a property test searching seeds finds one, so the power is what is checked, over fixed
    seeds, as the A/A test below checks the false-winner rate.)"""
    rnd = random.Random(2026)
    n, runs, found = 3000, 400, 0
    draw = lambda q: sum(rnd.random() < q for _ in range(n))  # noqa: E731
    for i in range(runs):
        metric = ("ctr", "conversion")[i % 2]
        p = 0.02 + 0.28 * (i // 2) / (runs // 2 - 1)
        field = "unique_clicks" if metric == "ctr" else "conversions"
        t = ab(metric=metric)
        lift = {"A": VariantResult(delivered=n, **{field: draw(p)}), "B": VariantResult(delivered=n, **{field: draw(min(1.0, 2 * p))})}
        d = decide(t, lift, now=t.decide_at)
        found += (d.status, d.winner) == ("winner", "B")
        for e in d.estimates:
            assert 0 <= e.low <= e.value <= e.high <= 1
    assert found / runs >= 0.99, found


def test_aa_false_winner_rate_is_near_alpha() -> None:
    rnd = random.Random(12345)
    t = ab(metric="ctr")
    wins = 0
    runs = 400
    for _ in range(runs):
        a = sum(rnd.random() < 0.1 for _ in range(1000))
        b = sum(rnd.random() < 0.1 for _ in range(1000))
        d = decide(t, {"A": VariantResult(delivered=1000, unique_clicks=a), "B": VariantResult(delivered=1000, unique_clicks=b)}, now=t.decide_at)
        wins += d.status == "winner"
    assert wins / runs <= 0.09  # alpha = 0.05, with sampling slack


arm = st.integers(0, 3000).flatmap(lambda n: st.builds(lambda s: VariantResult(delivered=n, unique_clicks=s, conversions=s), st.integers(0, n)))


@settings(max_examples=150, deadline=None)
@given(st.lists(arm, min_size=2, max_size=4), st.floats(0.001, 1e6), st.floats(0, 1e6), st.sampled_from(["ctr", "conversion"]))
def test_decision_is_a_pure_function_of_time_past_the_period(arms: list[VariantResult], before: float, after: float, metric: str) -> None:
    """On virtual time: pending strictly before decide_at, then one fixed verdict for every later
    instant; a winner is never worse than any arm and beats each at the corrected level."""
    names = [f"V{i}" for i in range(len(arms))]
    t = ab(variants=tuple(Variant(name=n) for n in names), metric=metric)
    results = dict(zip(names, arms))
    assert decide(t, results, now=t.decide_at - before).status == "pending"
    d0 = decide(t, results, now=t.decide_at)
    assert decide(t, results, now=t.decide_at + after) == d0
    if d0.status == "winner":
        best = next(e for e in d0.estimates if e.variant == d0.winner)
        assert all(best.value >= e.value for e in d0.estimates)
        assert all(e.p_value is not None and e.p_value < t.alpha / (len(names) - 1) for e in d0.estimates if e.variant != d0.winner)
    else:
        assert d0.winner == names[0]  # fallback "control"


@pytest.mark.parametrize(
    "bad",
    [VariantResult(delivered=10, unique_clicks=11), VariantResult(delivered=10, conversions=12), VariantResult(delivered=-1)],
)
def test_inconsistent_results_are_refused_not_crashed_on(bad: VariantResult) -> None:
    with pytest.raises(InvalidInput) as err:
        decide(ab(), {"A": bad, "B": VariantResult(delivered=10)}, now=T0 + 10**6)
    assert err.value.code == "inconsistent_results"

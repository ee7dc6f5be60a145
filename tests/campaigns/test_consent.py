"""The consent rules (campaigns/core/consent.py), checked against an independent statement of the rule,
on random ledgers; the store keeps the subscriber's state equal to the fold of its ledger; the proof
export carries every entry and re-checks each disclosure's SHA-256."""

from __future__ import annotations

import csv
import hashlib
import io
import random

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaigns.core import consent, proof
from campaigns.core.consent import ACTIONS, Evidence
from campaigns.core.events import canonical_phone
from campaigns.errors import CallerError, InvalidInput
from campaigns.store import open_store
from campaigns.store.base import NewConsent

entries_st = st.lists(st.tuples(st.integers(0, 20).map(float), st.sampled_from(ACTIONS)), max_size=14)


def oracle(actions: list[str]) -> bool:
    """Marketable iff, after the last opt-out, an opt-in was followed by a confirmation."""
    last_out = max((i for i, a in enumerate(actions) if a == "opt_out"), default=-1)
    opted = False
    for a in actions[last_out + 1:]:
        if a in ("opt_in", "re_opt_in"):
            opted = True
        elif a == "confirm" and opted:
            return True
    return False


@given(entries_st)
def test_fold_matches_the_rule(raw: list[tuple[float, str]]) -> None:
    entries = [(at, seq, a) for seq, (at, a) in enumerate(raw)]
    state, _ = consent.fold(entries)  # type: ignore[arg-type]
    ordered = [a for _, _, a in sorted(entries)]
    assert consent.marketable(state) == oracle(ordered)


@given(entries_st, st.randoms(use_true_random=False))
def test_fold_ignores_arrival_order(raw: list[tuple[float, str]], rnd: random.Random) -> None:
    entries = [(at, seq, a) for seq, (at, a) in enumerate(raw)]
    shuffled = entries[:]
    rnd.shuffle(shuffled)
    assert consent.fold(entries) == consent.fold(shuffled)  # type: ignore[arg-type]


@given(entries_st, st.floats(0, 25))
def test_entries_after_now_do_not_count(raw: list[tuple[float, str]], now: float) -> None:
    entries = [(at, seq, a) for seq, (at, a) in enumerate(raw)]
    assert consent.fold(entries, now) == consent.fold([e for e in entries if e[0] <= now])  # type: ignore[arg-type]


@given(entries_st)
def test_an_opt_out_always_ends_marketing(raw: list[tuple[float, str]]) -> None:
    entries = [(at, seq, a) for seq, (at, a) in enumerate(raw)] + [(21.0, 99, "opt_out")]
    assert consent.fold(entries)[0] == "revoked"  # type: ignore[arg-type]


@given(st.text(max_size=300))
def test_disclosure_hash_is_sha256_of_utf8(text: str) -> None:
    assert consent.disclosure_sha256(text) == hashlib.sha256(text.encode()).hexdigest()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10).map(float), st.sampled_from(ACTIONS),
                          st.sampled_from(["keyword", "reply", "api", "import", "gateway"])), max_size=10))  # fmt: skip
def test_store_state_is_the_fold_of_its_ledger(steps: list[tuple[float, str, str]]) -> None:
    """Whatever is appended (out-of-order steps are refused with a code and store nothing), the
    subscriber's stored state is the fold of its stored ledger."""
    store = open_store("sqlite:///:memory:")
    phone = "+14155550100"
    stored = 0
    for at, action, source in steps:
        try:
            store.record_consent("acme", NewConsent(phone=phone, action=action, source=source, at=at), now=at)  # type: ignore[arg-type]
            stored += 1
        except CallerError as exc:
            assert exc.code == "consent_out_of_order"
    sub = store.subscriber_by_phone("acme", phone)
    if sub is None:
        assert stored == 0
        return
    ledger = store.ledger("acme", sub.id)
    assert len(ledger) == stored
    assert sub.consent == consent.fold((e.at, e.id, e.action) for e in ledger)[0]
    assert consent.marketable(sub.consent) == oracle([e.action for e in ledger])
    store.close()


def test_proof_export_json_and_csv() -> None:
    store = open_store("sqlite:///:memory:")
    text = "Oui, envoyez-moi des offres 🎉. Répondez STOP pour arrêter."
    store.record_consent("acme", NewConsent(phone="+33612345678", action="opt_in", source="popup", at=100.0,
                                            disclosure_text=text, disclosure_version="v2",
                                            evidence=Evidence(ip="198.51.100.7", page_url="https://s/p", form_id="pop")),
                         now=100.0)  # fmt: skip
    store.record_consent("acme", NewConsent(phone="+33612345678", action="confirm", source="reply", at=160.0,
                                            evidence=Evidence(mo_id="mo-9")), now=160.0)  # fmt: skip
    sub = store.subscriber_by_phone("acme", "+33612345678")
    assert sub is not None
    p = proof.build(sub, store.ledger("acme", sub.id), now=200.0)
    assert p.marketable and p.state == "confirmed" and [e.disclosure_verified for e in p.entries] == [True, None]
    doc = msgspec.json.decode(proof.to_json(p))
    assert doc["entries"][0]["entry"]["disclosure_text"] == text
    assert doc["entries"][0]["entry"]["evidence"] == {"ip": "198.51.100.7", "page_url": "https://s/p", "form_id": "pop"}
    rows = list(csv.DictReader(io.StringIO(proof.to_csv(p))))
    assert [r["action"] for r in rows] == ["opt_in", "confirm"]
    assert rows[0]["disclosure_text"] == text and rows[0]["disclosure_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    assert rows[0]["disclosure_verified"] == "true" and rows[1]["mo_id"] == "mo-9" and rows[0]["at_utc"].endswith("Z")
    # A tampered text no longer verifies.
    tampered = msgspec.structs.replace(p.entries[0].entry, disclosure_text=text + " ")
    assert proof.build(sub, [tampered], now=200.0).entries[0].disclosure_verified is False


@pytest.mark.parametrize("raw,region,want", [
    ("+33 6 12 34 56 78", None, "+33612345678"),
    ("06 12 34 56 78", "FR", "+33612345678"),
    ("(415) 555-0100", "US", "+14155550100"),
    ("+1 415 555 0100", "FR", "+14155550100"),
])  # fmt: skip
def test_canonical_phone(raw: str, region: str | None, want: str) -> None:
    assert canonical_phone(raw, region=region) == want


@pytest.mark.parametrize("raw", ["", "hello", "+33 6", "0612345678", "+999123456789", "+1415555010000000"])
def test_invalid_phone_names_the_field(raw: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        canonical_phone(raw, field="profile.phone")
    assert exc.value.code == "invalid_phone" and exc.value.field == "profile.phone"

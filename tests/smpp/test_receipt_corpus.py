"""The receipt corpus (tests/data/receipt_corpus.toml): every variant through the parser, the
reconciler (with other messages waiting whose ids a wrong base would name), and the connector
over SMPP with the simulator sending it."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import anyio
import msgspec
import pytest
import trio.testing

from carriers.base import ReceiptMatched, ReceiptProgress
from carriers.smpp.connector import SmppSettings
from carriers.smpp.receipts import parse_receipt
from carriers.smpp.simulator import ReceiptVariant, SimSettings
from gateway.core.model import FinalState
from gateway.core.receipts import Progressed, ReceiptState, Receipted, Reconciler

CORPUS = Path(__file__).parent.parent / "data" / "receipt_corpus.toml"


class Case(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    name: str
    parsed: str
    expect: str
    error_code: int | None = None
    submit_id: str = "{dec}"
    id_format: str = "dec"
    formats: tuple[str, ...] | None = None
    legacy: str | None = None
    # the receipt itself (ReceiptVariant's fields)
    text: str = ""
    tlv_id: str | None = None
    tlv_state: int | None = None
    tlv_neterr: int | None = None
    esm_class: int = 0x04
    pdu: str = "deliver_sm"
    payload: bool = False

    def variant(self) -> ReceiptVariant:
        fields = {f: getattr(self, f) for f in ReceiptVariant.__struct_fields__}
        return ReceiptVariant(**fields)

    def settings(self, **kw) -> SmppSettings:
        return SmppSettings(name="c", id_format=self.id_format, receipt_id_formats=self.formats,  # type: ignore[arg-type]
                            receipt_id_format=self.legacy, **kw)  # type: ignore[arg-type]  # fmt: skip

    def submitted_id(self, n: int) -> str:
        return self.submit_id.format(dec=n, hex="%x" % n, HEX="%X" % n)


def load() -> list[Case]:
    with CORPUS.open("rb") as f:
        return msgspec.convert(tomllib.load(f)["receipt"], list[Case])


CASES = load()
N = 47  # hex 2f
DISTRACTORS = (71, 2)  # 71: "47" read as hex


def test_the_corpus_covers_what_carriers_send() -> None:
    assert len(CASES) >= 50
    assert len({c.name for c in CASES}) == len(CASES)
    texts = " ".join(c.text.upper() for c in CASES)
    for word in ("DELIVRD", "UNDELIV", "EXPIRED", "DELETED", "REJECTD", "UNKNOWN", "ACCEPTD", "ENROUTE"):
        assert f"STAT:{word}" in texts
    assert "DATE:2401311259 " in texts and "DATE:240131125959 " in texts  # 10- and 12-digit dates
    assert any(c.tlv_state is not None and not c.text for c in CASES)  # TLV only
    assert any(c.pdu == "data_sm" for c in CASES)
    assert {c.parsed for c in CASES} >= {"none", "unparsable", *[s.value for s in ReceiptState]}
    assert {c.expect for c in CASES} >= {"accepted", "submitted", "delivered", "undelivered", "expired", "rejected",
                                         "unknown"}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_parser(case: Case) -> None:
    r = parse_receipt(case.variant().render(N))
    if case.parsed == "unparsable":
        assert r is None
        return
    assert r is not None
    assert r.state == (None if case.parsed == "none" else ReceiptState(case.parsed))
    assert r.error_code == case.error_code


@pytest.mark.parametrize("case", [c for c in CASES if c.parsed != "unparsable"],
                         ids=[c.name for c in CASES if c.parsed != "unparsable"])  # fmt: skip
def test_reconciler(case: Case) -> None:
    """As the connector does it (carriers/smpp/connector.py, ``_on_deliver``)."""
    s = case.settings()
    rc = Reconciler(hold_unmatched_s=10, horizon_s=1000, id_formats={"c": (s.id_format, s.receipt_formats())})
    for n in (N, *DISTRACTORS):
        rc.submitted(n, "c", [case.submitted_id(n)], 1, now=0.0)
    r = parse_receipt(case.variant().render(N))
    assert r is not None
    out = rc.receipt("c", r.ids, r.state, r.error_code, 1.0, word=r.word, tlv_first=r.id_from_tlv and s.tlv_in_submit_format)
    assert len(out) == 1, out
    (result,) = out
    assert result.ref == N  # type: ignore[union-attr]
    if case.expect == "accepted":
        assert isinstance(result, Progressed)
    else:
        assert isinstance(result, Receipted) and result.state == FinalState(case.expect)
    assert result.error_code == case.error_code  # type: ignore[union-attr]
    assert rc.statistics().held == 0  # and the distractors still wait (with it, if it is only accepted)
    assert rc.statistics().pending == (3 if case.expect == "accepted" else 2)


# -- over SMPP: the simulator sends each variant, the connector reports it -------------------------


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": True}), id="asyncio+uvloop"),
        pytest.param("trio-virtual", id="trio+MockClock"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict]:
    if request.param == "trio-virtual":
        return ("trio", {"clock": trio.testing.MockClock(autojump_threshold=0)})
    return request.param


def _groups() -> dict[tuple, list[Case]]:
    """The cases the simulator can play (its submit ids are decimal or lower-case hex), by the
    carrier settings they need."""
    out: dict[tuple, list[Case]] = {}
    for c in CASES:
        if (c.submit_id, c.id_format) in (("{dec}", "dec"), ("{hex}", "hex")):
            out.setdefault((c.id_format, c.formats, c.legacy), []).append(c)
    return out


GROUPS = _groups()


@pytest.mark.anyio
@pytest.mark.parametrize("key", list(GROUPS), ids=[f"{k[0]}-{k[1]}-{k[2]}" for k in GROUPS])
async def test_the_simulator_sends_the_corpus_over_smpp(harness, make_dispatch, key, caplog) -> None:
    caplog.set_level("INFO", logger="carriers.smpp.connector")
    cases = GROUPS[key]
    sim = SimSettings(dlr_delay=0.01, response_timeout=0.5, enquire_link_interval=None, seed=1,
                      id_format=key[0], receipt_script=tuple((c.variant(),) for c in cases))  # fmt: skip
    conn = cases[0].settings(system_id="sluice", window=10, response_timeout=0.5, enquire_link_interval=1.0,
                             reconnect_initial=0.02, tick_interval=0.05, hold_unmatched_s=1.0,
                             receipt_horizon_s=60.0, connect_timeout=0.5)  # fmt: skip
    conn = msgspec.structs.replace(conn, name="sim")
    heard = [c for c in cases if c.expect != "submitted"]
    async with harness(sim, conn) as h:
        # one at a time: the simulator numbers submits in arrival order, message k gets variant k
        for k in range(len(cases)):
            await h.connector.submit([make_dispatch(k)])
            await h.until(lambda ev, k=k: any(getattr(e, "ref", None) == k for e in ev))
        await h.until(lambda ev: sum(isinstance(e, (ReceiptMatched, ReceiptProgress)) for e in ev) >= len(heard))
        with anyio.fail_after(10):  # every receipt answered, the unparsable ones too
            while h.sim.counters()["receipts_acked"] < len(cases):
                await anyio.sleep(0.01)
        got = {e.message_id: e for e in h.of(ReceiptMatched) + h.of(ReceiptProgress)}
        for k, c in enumerate(cases):
            e = got.get(k)
            if c.expect == "submitted":
                assert e is None, c.name
                continue
            assert e is not None, c.name
            assert (str(e.state), e.error_code) == (c.expect, c.error_code), c.name
        counts = h.connector.statistics().receipts
        assert counts.unparsable == sum(c.parsed == "unparsable" for c in cases)
        assert counts.intermediate == sum(c.expect == "accepted" for c in cases)
        assert counts.matched == sum(c.expect not in ("accepted", "submitted") for c in cases)
        assert counts.duplicate == counts.unmatched == 0
        # the operator sees what came: each unparsable receipt's text, each stateless one's id too
        logged = [r.getMessage() for r in caplog.records]
        for c in cases:
            if c.parsed == "unparsable" and c.text:
                assert any("receipt.unparsable" in m and c.text[:30] in m for m in logged), c.name
            if c.parsed == "none":
                assert any("receipt.without_state" in m for m in logged), c.name


@pytest.mark.anyio
@pytest.mark.parametrize(("steps", "events"), [
    (("ENROUTE", "DELIVRD"), [("accepted", 0), ("delivered", 0)]),
    (("ACCEPTD", "ENROUTE", "UNDELIV"), [("accepted", 0), ("undelivered", 0)]),
    (("DELIVRD", "ENROUTE"), [("delivered", 0)]),  # late: never backwards
], ids=["enroute-delivrd", "acceptd-enroute-undeliv", "delivrd-then-late-enroute"])  # fmt: skip
async def test_intermediate_then_final_over_smpp(harness, make_dispatch, steps, events) -> None:
    script = ((tuple(ReceiptVariant(text=f"id:{{dec}} stat:{w} err:000") for w in steps)),)
    sim = SimSettings(dlr_delay=0.01, response_timeout=0.5, enquire_link_interval=None, receipt_script=script)
    conn = SmppSettings(name="sim", system_id="sluice", id_format="dec", tick_interval=0.05, connect_timeout=0.5,
                        response_timeout=0.5)  # fmt: skip
    async with harness(sim, conn) as h:
        await h.connector.submit([make_dispatch(0)])
        with anyio.fail_after(10):
            while h.sim.counters()["receipts_acked"] < len(steps):
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)
        while True:
            try:
                h.seen.append(h.events.receive_nowait())
            except anyio.WouldBlock:
                break
        said = [(str(e.state), e.error_code) for e in h.seen if isinstance(e, (ReceiptMatched, ReceiptProgress))]
        assert said == events

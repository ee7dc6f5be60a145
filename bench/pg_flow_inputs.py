"""`python -m bench.pg_flow_inputs`: PostgreSQL's two-statement event batch (``event_batch_pg``), the CPU
of this process per event (``time.process_time``), for what a shop with flows sends most: N abandoned
checkouts, then N orders each completing its own subscriber's checkout (3 flow inputs an order:
``order_placed``, ``order_paid``, ``checkout_completed``), then N custom events with properties (a
shop without flows: the activities' JSON). Batches of 2,000 through ``apply_events``; a throwaway
PostgreSQL server. Prints one JSON line. Compare trees in the same sitting, alternated."""

from __future__ import annotations

import json
import time

import click

from bench.audience import throwaway_postgres
from campaigns.core.events import CheckoutEvent, CustomEvent, OrderEvent
from campaigns.store import open_store

NOW = 1_767_000_000.0
PROPS = {"q": 'say "hi" \\ é ✓', "n": [1, 2.5, None], "d": {"x": True}}


def _phone(i: int) -> str:
    return f"+4479{i:08d}"


@click.command()
@click.option("--events", "n", default=16_000, show_default=True, help="Events of each kind.")
@click.option("--batch", default=2000, show_default=True)
def main(n: int, batch: int) -> None:
    kinds = {
        "checkout": ("t", [(CheckoutEvent(id=f"k{i}", at=NOW, checkout_id=f"c{i}", phone=_phone(i), status="abandoned",
                                          value=100), _phone(i)) for i in range(n)]),
        "order": ("t", [(OrderEvent(id=f"o{i}", at=NOW + 5, order_id=f"o{i}", phone=_phone(i), total=100, currency="USD",
                                    payment_status="paid", checkout_id=f"c{i}"), _phone(i)) for i in range(n)]),
        "custom": ("u", [(CustomEvent(id=f"u{i}", at=NOW, phone=_phone(i % 4000), name="quiz.answered", properties=PROPS),
                          _phone(i % 4000)) for i in range(n)]),
    }  # fmt: skip
    out: dict[str, float] = {}
    with throwaway_postgres() as url:
        store = open_store(url)
        store.put_flow_version("t", "f", "F", {"id": "f", "name": "F"}, now=NOW, new=True)  # tenant t has flows
        for kind, (tenant, events) in kinds.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for a in range(0, n, batch):
                store.apply_events(tenant, events[a:a + batch], now=NOW + 10)
            out[f"{kind}_cpu_us"] = (time.process_time() - c0) / n * 1e6
            out[f"{kind}_wall_us"] = (time.perf_counter() - t0) / n * 1e6
        with store._tx() as tx:  # type: ignore[attr-defined]
            row = tx.one("SELECT count(*) FROM flow_inputs WHERE tenant = 't'")
        out["flow_inputs"] = row[0] if row else 0
        store.close()
    click.echo(json.dumps({k: round(v, 1) for k, v in out.items()}))


if __name__ == "__main__":
    main()

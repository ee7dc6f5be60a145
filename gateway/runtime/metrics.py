"""`GET /metrics`: Prometheus text, read from the live objects at scrape time.

Nothing on the hot path touches prometheus-client: the dispatcher keeps plain integer counters
and a fixed-bucket receipt-latency histogram (one ``bisect`` per receipt); the collector below
turns them, the core's statistics and each connector's statistics into metric families only when
Prometheus asks.
"""

from __future__ import annotations

import gc
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping

import msgspec
import prometheus_client as prom
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from carriers.base import Connector
from gateway.core.scheduler import Scheduler

__all__ = ["LatencyHistogram", "Metrics"]

#: Receipt latency buckets (seconds from the carrier accepting a message to its final receipt).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 86400.0)


class LatencyHistogram:
    """A cumulative-on-export histogram with fixed buckets; ``observe`` is one bisect."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts):
            running += n
            out.append((repr(bound), running))
        out.append(("+Inf", running + self.counts[-1]))
        return out


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._m = metrics

    def collect(self) -> Iterator[prom.Metric]:
        m = self._m
        stats = m.core.statistics(m.clock())
        ready = GaugeMetricFamily("sluice_queue_ready", "Messages ready to send, by carrier", labels=["carrier"])
        for carrier, n in stats.ready.items():
            ready.add_metric([carrier], n)
        yield ready
        depth = GaugeMetricFamily("sluice_queue_depth", "Messages in the core by shard and state",
                                  labels=["shard", "state"])  # fmt: skip
        for i, by_state in enumerate(stats.shards):
            for state, n in by_state.items():
                depth.add_metric([str(i), state], n)
        yield depth
        rate = GaugeMetricFamily("sluice_carrier_rate", "Current adaptive rate, segments/s", labels=["carrier"])
        tokens = GaugeMetricFamily("sluice_carrier_tokens", "Tokens in the carrier's bucket", labels=["carrier"])
        for carrier, b in stats.buckets.items():
            rate.add_metric([carrier], b.rate)
            tokens.add_metric([carrier], b.tokens)
        yield rate
        yield tokens
        d = m.dispatcher_stats()
        if d is not None:
            events = CounterMetricFamily("sluice_messages", "Dispatcher events by kind", labels=["event"])
            for what in ("dispatched", "submitted", "failed", "requeued", "receipts", "throttles", "changes_written",
                         "rows_written", "writes"):  # fmt: skip
                events.add_metric([what], getattr(d, what))
            yield events
            waits = CounterMetricFamily("sluice_dispatcher_seconds", "Where the dispatcher's time went: pumps waiting "
                                        "for the unconfirmed window (window_wait) or the connectors' windows "
                                        "(wire_wait), the store's writes (write), the event loop's CPU in the "
                                        "writes it ran itself (record_cpu)", labels=["what"])  # fmt: skip
            for what in ("window_wait", "wire_wait", "write", "record_cpu"):
                waits.add_metric([what], getattr(d, f"{what}_s"))
            yield waits
            slot_s = CounterMetricFamily("sluice_window_slot_seconds", "A window slot's cycle summed over messages: "
                                         "hand-over to answer (answer), to the write's start (to_write), in the write "
                                         "(write), from its end to the next hand-over (refill)", labels=["part"])  # fmt: skip
            slots = CounterMetricFamily("sluice_window_slots", "Messages counted in each part of "
                                        "sluice_window_slot_seconds", labels=["part"])  # fmt: skip
            for part, seconds, n in (("answer", d.answer_s, d.answered), ("to_write", d.to_write_s, d.confirmed),
                                     ("write", d.slot_write_s, d.confirmed), ("refill", d.refill_s, d.refilled)):  # fmt: skip
                slot_s.add_metric([part], seconds)
                slots.add_metric([part], n)
            yield slot_s
            yield slots
        bound = GaugeMetricFamily("sluice_binds_up", "SMPP binds (or links) up", labels=["carrier"])
        window = GaugeMetricFamily("sluice_window_in_use", "Submits awaiting a response", labels=["carrier"])
        errors = CounterMetricFamily("sluice_carrier_errors", "Carrier errors by code name", labels=["carrier", "code"])
        receipts = CounterMetricFamily(
            "sluice_receipts", "Receipts by carrier and what became of each: matched, intermediate, duplicate, "
            "unmatched, unparsable (and stateless: of those, the ones that stated no state we know)",
            labels=["carrier", "outcome"])  # fmt: skip
        held = GaugeMetricFamily("sluice_receipts_awaited", "Messages taken by the carrier awaiting their receipts",
                                 labels=["carrier"])  # fmt: skip
        for name, conn in m.connectors.items():
            s = conn.statistics()
            bound.add_metric([name], s.bound)
            window.add_metric([name], s.in_flight)
            for code, n in s.errors.items():
                errors.add_metric([name, code], n)
            for outcome, n in msgspec.structs.asdict(s.receipts).items():
                receipts.add_metric([name, outcome], n)
            held.add_metric([name], s.receipts_pending)
        yield bound
        yield window
        yield errors
        yield receipts
        yield held
        if m.webhooks is not None:
            hooks = CounterMetricFamily("sluice_webhooks", "Webhook requests, and events delivered/retried/dead",
                                        labels=["what"])  # fmt: skip
            for what, n in msgspec.structs.asdict(m.webhooks()).items():
                hooks.add_metric([what], n)
            yield hooks
        if m.gc_times is not None:
            gcn = CounterMetricFamily("sluice_gc_collections", "Cyclic GC collections by generation",
                                      labels=["generation"])  # fmt: skip
            gcs = CounterMetricFamily("sluice_gc_seconds", "CPU seconds in cyclic GC collections by generation",
                                      labels=["generation"])  # fmt: skip
            for g in range(3):
                gcn.add_metric([str(g)], m.gc_times.collections[g])
                gcs.add_metric([str(g)], m.gc_times.seconds[g])
            yield gcn
            yield gcs
        h = m.receipt_latency
        hist = HistogramMetricFamily("sluice_receipt_latency_seconds", "From carrier acceptance to final receipt")
        hist.add_metric([], h.buckets(), sum_value=h.total)
        yield hist


class GcTimes:
    """The cyclic garbage collector's collections and the CPU seconds they took (the collecting
    thread's clock), by generation (``gc.callbacks``: two clock reads a collection, nothing per
    object): whether a slow run of ``sluice bench e2e`` is the collector's (a full collection
    walks every live object)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self._began = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._began = time.thread_time()
        else:
            g = info["generation"]
            self.collections[g] += 1
            self.seconds[g] += time.thread_time() - self._began

    def __enter__(self) -> GcTimes:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


class Metrics:
    """The registry served at ``/metrics``."""

    def __init__(self, core: Scheduler, connectors: Mapping[str, Connector], clock: Callable[[], float],
                 dispatcher_stats: Callable[[], object | None] = lambda: None,
                 receipt_latency: LatencyHistogram | None = None,
                 webhooks: Callable[[], msgspec.Struct] | None = None,
                 gc_times: GcTimes | None = None) -> None:  # fmt: skip
        self.gc_times = gc_times
        self.core = core
        self.connectors = connectors
        self.clock = clock
        self.dispatcher_stats = dispatcher_stats
        self.receipt_latency = receipt_latency or LatencyHistogram()
        self.webhooks = webhooks
        self.registry = prom.CollectorRegistry()
        self.registry.register(_Collector(self))

    def render(self) -> tuple[bytes, str]:
        return prom.generate_latest(self.registry), prom.CONTENT_TYPE_LATEST

"""`sluice bench report DIR`: a Markdown report with PNG charts from the JSON the scenarios wrote.

Every scenario writes ``DIR/<scenario>.json`` when run with ``--out DIR``. The report reads what
is there (any subset), draws the charts an operator looks at first, and writes ``DIR/REPORT.md``
with the figures, the machine and the commands. Charts (matplotlib, Agg backend, no display):

- ``throttle.png``  accepted per second per carrier, with the limit the carrier enforced drawn;
- ``soak.png``      RSS and rate over time (memory flat?);
- ``e2e.png`` / ``soak`` queue depth over time, when the scenario recorded it;
- ``priority.png``  OTP queue-wait percentiles per run;
- ``scaling.png``   messages/s against window, one line per bind count, and against message size.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

__all__ = ["render"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _load(directory: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and "scenario" in data:
            found[data["scenario"]] = data
    return found


def _throttle_chart(data: dict[str, Any], out: Path) -> str:
    plt = _plt()
    run = data["per_run"][0]
    fig, axes = plt.subplots(len(run), 1, figsize=(9, 3.2 * len(run)), sharex=True, squeeze=False)
    for ax, (name, c) in zip(axes[:, 0], run.items()):
        xs = list(range(len(c["accepted_per_s"])))
        ax.plot(xs, c["accepted_per_s"], marker=".", label=f"{name}: accepted/s")
        ax.step(xs, c["allowed_per_s"], where="post", color="red", linestyle="--", label="carrier's limit")
        ax.set_ylabel("messages/s")
        ax.set_ylim(bottom=0)
        ax.legend(loc="lower right")
        ax.set_title(f"{name}: utilisation {c['utilisation']:.1%}, max {c['max_submits_1s']} submits in 1 s")
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out / "throttle.png", dpi=100)
    plt.close(fig)
    return "throttle.png"


def _soak_chart(data: dict[str, Any], out: Path) -> str:
    plt = _plt()
    series = data["series"]
    t = [p["t"] for p in series]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    axes[0].plot(t, [p["rss_mb"] for p in series])
    axes[0].set_ylabel("RSS (MB)")
    axes[0].set_ylim(bottom=0)
    axes[1].plot(t, [p["rate"] for p in series], label="accepted by the carrier/s")
    if data.get("rate"):
        axes[1].axhline(data["rate"], color="red", linestyle="--", label="offered rate")
    axes[1].set_ylabel("messages/s")
    axes[1].legend(loc="lower right")
    axes[2].plot(t, [p.get("queued", 0) for p in series])
    axes[2].set_ylabel("queued in the core")
    axes[2].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(out / "soak.png", dpi=100)
    plt.close(fig)
    return "soak.png"


def _priority_chart(data: dict[str, Any], out: Path) -> str:
    plt = _plt()
    runs = data["per_run"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.25
    for k, key in enumerate(("otp_wait_ms_p50", "otp_wait_ms_p99", "otp_wait_ms_max")):
        ax.bar([i + k * width for i in range(len(runs))], [r[key] for r in runs], width, label=key[13:])
    ax.axhline(20, color="red", linestyle="--", label="goal p99")
    ax.set_xticks([i + width for i in range(len(runs))], [f"run {i + 1}" for i in range(len(runs))])
    ax.set_ylabel("OTP queue wait (ms)")
    ax.legend()
    ax.set_title(f"OTPs behind {data['backlog']:,} queued marketing messages")
    fig.tight_layout()
    fig.savefig(out / "priority.png", dpi=100)
    plt.close(fig)
    return "priority.png"


def _scaling_chart(data: dict[str, Any], out: Path) -> str:
    plt = _plt()
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for binds in sorted({x["binds"] for x in data["grid"]}):
        rows = sorted((x for x in data["grid"] if x["binds"] == binds), key=lambda x: x["window"])
        a.plot([x["window"] for x in rows], [x["submits_per_s"] for x in rows], marker="o", label=f"{binds} bind(s)")
    a.set_xscale("log")
    a.set_xlabel("window (submits in flight per bind)")
    a.set_ylabel("messages/s with receipts")
    a.legend()
    sizes = data["by_size"]
    b.bar([str(x["segments"]) for x in sizes], [x["segments_per_s"] for x in sizes], label="segments/s")
    b.plot([str(x["segments"]) for x in sizes], [x["submits_per_s"] for x in sizes], color="black", marker="o",
           label="messages/s")  # fmt: skip
    b.set_xlabel("segments per message")
    b.legend()
    fig.tight_layout()
    fig.savefig(out / "scaling.png", dpi=100)
    plt.close(fig)
    return "scaling.png"


_CHARTS = {"throttle": _throttle_chart, "soak": _soak_chart, "priority": _priority_chart, "scaling": _scaling_chart}

# The headline figures of each scenario: (key, label, format).
_FIGURES: dict[str, list[tuple[str, str, str]]] = {
    "core": [("decisions_per_s", "decisions/s", ",.0f"), ("ratio", "ratio to heapq (goal >= 0.35)", ".2f"),
             ("bytes_per_message", "bytes per queued message (goal <= 128)", ".0f")],
    "smpp": [("submits_per_s", "submits/s with receipts (goal >= 25,000)", ",.0f"),
             ("codec_speedup_vs_smpplib", "codec speed-up vs smpplib (goal >= 20x)", ".1f")],
    "priority": [("otp_wait_ms_p50", "OTP wait p50 (ms)", ".2f"), ("otp_wait_ms_p99", "OTP wait p99 (ms, goal <= 20)", ".2f")],
    "quiet-hours": [("dispatched_out_of_window", "dispatched out of window (goal 0)", ","),
                    ("held_for_quiet_hours", "held for quiet hours", ","), ("held_then_sent", "held, then sent", ","),
                    ("release_span_s_max", "longest release spread (s)", ",.0f")],
    "soak": [("rss_growth", "RSS growth, second half vs first (goal <= 10 %)", ".1%"),
             ("messages_per_s", "messages/s", ",.0f")],
    "ingest": [("job_seconds", "1M-recipient job accepted durably (s, goal <= 5)", ".2f"),
               ("single_posts_per_s", "single-message POSTs/s", ",.0f")],
    "e2e": [("messages_per_s", "messages/s, API to receipts (goal >= 25,000)", ",.0f")],
}  # fmt: skip


def render(directory: Path) -> Path:
    data = _load(directory)
    lines = ["# Sluice benchmark report", ""]
    machine = next((d["machine"] for d in data.values() if "machine" in d), None)
    if machine:
        lines += [f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('implementation')} "
                  f"{machine.get('python')}, {machine.get('system')}; event loop {machine.get('event_loop', 'asyncio+uvloop')};"
                  f" Sluice {machine.get('sluice')}.", ""]  # fmt: skip
    if not data:
        lines.append(f"No scenario results in {directory} (run `sluice bench <scenario> --out {directory}`).")
    for name, d in data.items():
        lines += [f"## {name}", ""]
        if "command" in d:
            lines += ["```", d["command"], "```", ""]
        rows = _FIGURES.get(name, [])
        if name == "throttle":
            for carrier, c in d["carriers"].items():
                lines.append(f"- {carrier}: utilisation {c['utilisation']:.1%} (goal >= 95 %); max submits in any"
                             f" 1 s {c['max_submits_1s']:.0f} against limit + burst {c['limit_plus_burst']:.0f}")  # fmt: skip
        if name == "scaling":
            best = max(d["grid"], key=lambda x: x["submits_per_s"])
            lines.append(f"- best: {best['submits_per_s']:,.0f} messages/s with receipts at {best['binds']} bind(s),"
                         f" window {best['window']}")  # fmt: skip
            for x in d["by_size"]:
                lines.append(f"- {x['segments']} segment(s): {x['submits_per_s']:,.0f} messages/s,"
                             f" {x['segments_per_s']:,.0f} segments/s")  # fmt: skip
        for key, label, fmt in rows:
            if d.get(key) is not None:
                lines.append(f"- {label}: {format(d[key], fmt)}")
        chart = _CHARTS.get(name)
        if chart is not None:
            try:
                png = chart(d, directory)
            except (KeyError, IndexError, TypeError, ValueError) as exc:
                lines.append(f"- (no chart: the results lack {exc})")
            else:
                lines += ["", f"![{name}]({png})"]
        lines.append("")
    report = directory / "REPORT.md"
    report.write_text("\n".join(lines))
    return report


@click.command("report")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
def bench_report(directory: str) -> None:
    """Write DIRECTORY/REPORT.md and PNG charts from the scenarios' JSON results."""
    report = render(Path(directory))
    click.echo(f"wrote {report}")

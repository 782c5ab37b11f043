"""The report: tables of per-rate figures, the issue's ratios, the headline first-token times and
the soak, as rich tables (plain text where rich is missing). Pure apart from printing."""

from __future__ import annotations

import statistics
from typing import Optional

COLUMNS = ("contender", "load", "rate/s", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "tok/s", "hit rate",
           "ok/failed")


def _ms(value: float) -> str:
    return "-" if value != value else f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def row(contender: str, load: str, rate: float, summary: dict) -> list[str]:
    hit = summary.get("prefix_hit_rate")
    return [contender, load, f"{rate:.3f}", _ms(summary["ttft_p50_ms"]), _ms(summary["ttft_p99_ms"]),
            _ms(summary["itl_p50_ms"]), _ms(summary["itl_p99_ms"]), f"{summary['tokens_per_s']:.1f}",
            "n/a" if hit is None else f"{hit:.2f}", f"{summary['completed']}/{summary['failed']}"]


def spread(values: list[float]) -> str:
    """Median and range, in ms."""
    ms = [v * 1e3 for v in values if v is not None]
    if not ms:
        return "-"
    return f"{statistics.median(ms):.0f} ms ({min(ms):.0f}-{max(ms):.0f}, n={len(ms)})"


def ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def print_table(title: str, rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(title)
        for line in [list(COLUMNS)] + rows:
            print("  ".join(f"{cell:>10}" for cell in line))
        return
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("contender", "load") else "right")
    for line in rows:
        table.add_row(*line)
    Console(width=140).print(table)


def comparison_lines(results: dict) -> list[str]:
    """The issue's Done-when figures for one model's results ({contender: {...}})."""
    lines = []
    capacities = {name: r["capacity"] for name, r in results.items() if "capacity" in r}  # absent: not searched
    if capacities:
        lines.append("capacity (highest rate with TTFT p99 < 5 s; new conversations/s): " + ", ".join(
            f"{name} {'below the lowest rate tried' if cap is None else f'{cap:.3f}'}"
            for name, cap in capacities.items()))
    if "genai" in capacities and "daemon-cache" in capacities:
        lines.append(f"capacity daemon-cache / genai: {ratio(capacities['daemon-cache'], capacities['genai'])} "
                     "(Done when: >= 1.3x)")
        ours, theirs = (results[n].get("at_genai_80") for n in ("daemon-cache", "genai"))
        if ours and theirs:
            lines.append(f"at 80% of genai's capacity, TTFT p50 daemon-cache / genai: "
                         f"{ratio(ours['ttft_p50_ms'], theirs['ttft_p50_ms'])} (Done when: <= 0.33x)")
    lines += [headline_line(name, r["headline"]) for name, r in results.items() if r.get("headline")]
    heads = {n: results[n].get("headline") for n in ("daemon-cache", "openvino") if results.get(n, {}).get("headline")}
    if len(heads) == 2:
        ours, theirs = heads["daemon-cache"], heads["openvino"]
        lines.append(f"seen prefix, daemon-cache / openvino: "
                     f"{ratio(statistics.median(ours['seen_s']), statistics.median(theirs['seen_s']))} "
                     "(Done when: <= 1x); cold prefill daemon-cache / openvino: "
                     f"{ratio(statistics.median(ours['unseen_s']), statistics.median(theirs['unseen_s']))}")
    for r in results.values():
        lines += soak_lines(r["soak"]) if "soak" in r else []
    return lines


def headline_line(name: str, head: dict) -> str:
    return (f"{name}: first token after a seen ~1,000-token prefix {spread(head['seen_s'])}, after an unseen "
            f"one {spread(head['unseen_s'])}: seen/unseen "
            f"{ratio(statistics.median(head['seen_s']), statistics.median(head['unseen_s']))} "
            "(Done when: <= 0.25x, aim 0.05x)")


def soak_lines(figures: dict) -> list[str]:
    mb = 2**20
    b = figures["budget"]
    return [f"soak: {figures['requests']} requests (half behind the cached prefix), {figures['failed']} failed, "
            f"{figures['seconds']:.0f} s; RSS start {figures['rss_start'] / mb:.0f} MB, peak "
            f"{figures['rss_peak'] / mb:.0f} MB, end {figures['rss_end'] / mb:.0f} MB",
            f"budget {b['total'] / mb:.0f} MB = weights {b['weights'] / mb:.0f} + KV {b['kv'] / mb:.0f} + prefix cache "
            f"{b['prefix_cache'] / mb:.0f} + 400; peak / budget {figures['rss_peak'] / b['total']:.2f} "
            "(Done when: <= 1)"]

"""The results as a Markdown table, a JSON file and a PNG of tokens per second against the limit."""

from __future__ import annotations

import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .harness import RunRecord
from .metrics import Figures, figures
from .scenarios import SCENARIOS

__all__ = ["COLUMNS", "markdown_table", "plot", "write_json"]

COLUMNS = (
    "scenario",
    "clock",
    "contender",
    "binding limit used",
    "other limit used",
    "429/1k",
    "429/1k after 20",
    "failed",
    "drain s",
    "ideal s",
    "drain/ideal",
    "req/s",
    "p50 s",
    "p99 s",
    "CPU s/1k",
    "peak MB",
)


# One colour per contender in every panel.
_COLOURS = {
    "vsched": "tab:blue",
    "vsched-prepare": "tab:brown",
    "vsched-metrics": "tab:gray",
    "vsched-settle-actual": "tab:cyan",
    "vsched-settle-none": "tab:green",
    "sdk-semaphore": "tab:red",
    "sdk-aiolimiter": "tab:orange",
    "sdk-pyrate": "tab:purple",
    "cookbook": "tab:olive",
}


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _used(kind: str, value: float | None) -> str:
    return f"{kind} {_pct(value)}"


def _row(f: Figures, requests: int) -> list[str]:
    if f.skipped is not None:
        blank = ["—"] * (len(COLUMNS) - 4)
        return [f.scenario, f.mode, f.contender, f"n/a: {f.skipped}", *blank]
    rate = requests / f.drain if f.drain > 0 else None
    trusted_cpu = f.mode == "loopback"
    limited = SCENARIOS[f.scenario].limited
    tokens_counted = SCENARIOS[f.scenario].count_tokens
    other = (
        _used(f.other, f.other_used) if f.other == "RPM" or tokens_counted else "TPM not counted"
    )
    return [
        f.scenario,
        f.mode,
        f.contender,
        _used(f.binding, f.binding_used) if limited else "—",
        other if limited else "—",
        _num(f.per_1000_429, 1),
        _num(f.per_1000_429_late, 1),
        str(f.failed),
        _num(f.drain, 1),
        _num(f.ideal, 1) if limited else "—",
        _num(f.drain / f.ideal) if limited and f.ideal > 0 else "—",
        _num(rate, 1),
        _num(f.p50),
        _num(f.p99),
        _num(f.cpu_per_1000) if trusted_cpu else "—",
        _num(f.peak_mb, 0) if trusted_cpu else "—",
    ]


def markdown_table(records: Sequence[RunRecord]) -> str:
    """One row per run, in run order; CPU and memory only for loopback runs (see the README)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines.extend(
        "| " + " | ".join(_row(figures(record), record.requests)) + " |" for record in records
    )
    return "\n".join(lines)


def write_json(records: Sequence[RunRecord], path: Path, *, meta: dict[str, Any]) -> None:
    """Every record and its figures, with the run's metadata (machine, load, size)."""
    data = {
        "meta": {**meta, "python": platform.python_version(), "platform": platform.platform()},
        "runs": [{"figures": figures(r).to_json(), "record": r.to_json()} for r in records],
    }
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def plot(records: Sequence[RunRecord], path: Path) -> bool:
    """Tokens per second the server charged over time, one panel per scenario and clock (runs that
    did not happen left out); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        if record.skipped is not None or not record.count_tokens:
            continue
        panels.setdefault((record.mode, record.scenario), []).append(record)
    count = len(panels)
    if count == 0:
        return False
    columns = 2 if count > 1 else 1
    rows = (count + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(7 * columns, 3.6 * rows), squeeze=False)
    for ax, ((mode, scenario), runs) in zip(axes.flat, panels.items(), strict=False):
        limit = runs[0].tpm / 60.0
        for run in runs:
            seconds = list(range(len(run.series)))
            ours = run.contender == "vsched"
            ax.plot(
                seconds,
                _smooth(run.series, max(3, len(run.series) // 100)),
                label=run.contender,
                linewidth=1.6 if ours else 1.0,
                zorder=3 if ours else 2,
                color=_COLOURS.get(run.contender),
            )
        ax.axhline(limit, color="black", linestyle="--", linewidth=1, label="server limit")
        if runs[0].told_tpm != runs[0].tpm:
            ax.axhline(
                runs[0].told_tpm / 60.0, color="grey", linestyle=":", label="limit told to client"
            )
        ax.set_title(f"{scenario} ({mode} clock)")
        ax.set_xlabel("seconds since the first request")
        ax.set_ylabel("tokens charged at admission / s")
        ax.set_ylim(0, max(limit * 1.6, runs[0].told_tpm / 60.0 * 1.15))
        ax.legend(fontsize="small", loc="lower center", ncols=3)
    for ax in list(axes.flat)[count:]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def _smooth(series: Sequence[int], width: int) -> list[float]:
    """A trailing moving average, so per-second quantisation does not hide the trend."""
    out: list[float] = []
    running = 0
    for index, value in enumerate(series):
        running += value
        if index >= width:
            running -= series[index - width]
        out.append(running / min(index + 1, width))
    return out

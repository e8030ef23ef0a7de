"""An image drain of large PNGs at 600k TPM, image preparation off and on, over loopback HTTP.

``python -m benchmarks.bench_prepare_drain [--requests N] [--threads T] [--json]`` runs the
``large-pngs`` scenario (``benchmarks/scenarios.py``: 3.8 MB photo-like PNGs at ``high``, 600k
TPM enforced per second by the simulator, served by uvicorn in its own process) twice in a row:
vsched with preparation off (``vsched``: every image sent as it is) and on (``vsched-prepare``:
decoded and shrunk to 1024x768 on its threads, the same 765 tokens). Preparation CPU is real,
so the run is in real time. For each it prints the limit used as the server saw it (the
simulator's charged tokens per second over its limit, in the steady window), 429s per 1,000,
CPU seconds per 1,000 jobs, the drain time and the images vsched sent unprepared; then the ratio
of the two limits used. Issue 17's bar: on within 1% of off, and >= 98% of the limit, on 2 cores.
``--threads`` sets ``images.prepare_threads`` (0: the default, from the CPU count).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .harness import run_loopback
from .metrics import figures
from .scenarios import SCENARIOS

CONTENDERS = {"off": "vsched", "on": "vsched-prepare"}


def run(requests: int) -> dict[str, Any]:
    """Both runs of the drain and their figures, as plain data."""
    spec = dataclasses.replace(
        SCENARIOS["large-pngs"].spec("loopback", quick=False), requests=requests
    )
    out: dict[str, Any] = {"requests": requests, "tpm": spec.size.tpm, "cpus": os.cpu_count()}
    for label, contender in CONTENDERS.items():
        record = run_loopback(spec, contender)
        figure = figures(record)
        out[label] = {
            "limit_used": None if figure.tpm_used is None else round(figure.tpm_used, 4),
            "429_per_1k": round(figure.per_1000_429, 1),
            "failed": figure.failed,
            "cpu_per_1k": round(figure.cpu_per_1000, 1),
            "drain_s": round(figure.drain, 1),
            "ideal_s": round(figure.ideal, 1),
            "images_sent_unprepared": record.client_stats.get("images_sent_unprepared"),
        }
    on, off = out["on"]["limit_used"], out["off"]["limit_used"]
    out["ratio"] = None if not on or not off else round(on / off, 4)
    out["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Parse flags, run the pair, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000, help="jobs per run (default 1000)")
    parser.add_argument(
        "--threads", type=int, default=0, help="images.prepare_threads (0: default)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--out", type=Path, help="also write the figures to DIR/prepare_drain.json")
    args = parser.parse_args(argv)
    if args.threads:
        os.environ["VSCHED_IMAGES_PREPARE_THREADS"] = str(args.threads)
    logging.getLogger("scheduler").setLevel(logging.ERROR)
    figures_ = run(args.requests)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "prepare_drain.json").write_text(json.dumps(figures_, indent=2) + "\n")
    if args.json:
        print(json.dumps(figures_))
        return
    print(
        f"large-PNG drain: {figures_['requests']} jobs at {figures_['tpm']:,} TPM over loopback,"
        f" {figures_['cpus']} CPUs"
    )
    for label in CONTENDERS:
        row = figures_[label]
        used = "n/a (run too short)" if row["limit_used"] is None else f"{row['limit_used']:.1%}"
        print(
            f"  preparation {label:>3}: limit used {used}, 429s/1k {row['429_per_1k']},"
            f" failed {row['failed']}, CPU s/1k {row['cpu_per_1k']},"
            f" drain {row['drain_s']} s (ideal {row['ideal_s']} s),"
            f" sent unprepared {row['images_sent_unprepared']}"
        )
    ratio = figures_["ratio"]
    print(f"  on / off: {'n/a' if ratio is None else f'{ratio:.1%}'}")
    print(f"  load average after: {figures_['load_average']}")


if __name__ == "__main__":
    main()

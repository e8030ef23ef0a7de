"""``python -m benchmarks``: every scenario, every contender, both clocks; a table, JSON and a plot.

``--quick`` runs every scenario in virtual time with fewer requests and only the steady and
overhead scenarios over loopback HTTP. Results go to a fresh ``benchmarks/out/<UTC time>/``
(ignored by git) unless ``--update-results`` writes the committed ``benchmarks/results/``, or
``--out`` names a folder. The Markdown table is printed to stdout either way.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .harness import RunRecord, run_loopback, run_virtual_time
from .report import markdown_table, plot, write_json
from .scenarios import SCENARIOS, Mode

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"  # the committed figures (--update-results)
SCRATCH = HERE / "out"  # one fresh folder per run otherwise


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests (under two minutes)")
    parser.add_argument(
        "--clock",
        choices=("virtual", "loopback", "both"),
        default="both",
        help="virtual time in-process, real loopback HTTP, or both (default)",
    )
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="repeatable; default all"
    )
    parser.add_argument("--contender", action="append", help="repeatable; default all")
    parser.add_argument("--requests", type=int, help="override the number of requests")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, help="where results go (default benchmarks/out/<UTC>/)")
    where.add_argument(
        "--update-results", action="store_true", help="write the committed benchmarks/results/"
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected benchmarks and write the table, the JSON and the plot."""
    args = parse_args(argv)
    # vsched logs every retried 429 as a warning; the table counts them.
    log = logging.getLogger("scheduler")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return _run(args)
    finally:
        log.setLevel(level)


def _run(args: argparse.Namespace) -> int:
    """The benchmarks the parsed command line selects."""
    out = _out_folder(args)
    names = args.scenario or list(SCENARIOS)
    clocks: list[Mode] = ["virtual", "loopback"] if args.clock == "both" else [args.clock]
    records: list[RunRecord] = []
    load_before = os.getloadavg()
    started = time.monotonic()
    for clock in clocks:
        for name in names:
            scenario = SCENARIOS[name]
            if clock not in scenario.clocks:
                continue
            if clock == "loopback" and args.quick and not scenario.quick_loopback:
                continue
            spec = scenario.spec(clock, quick=args.quick)
            if args.requests is not None:
                spec = dataclasses.replace(spec, requests=args.requests)
            for contender in args.contender or scenario.contenders:
                if contender not in scenario.contenders and not args.contender:
                    continue
                began = time.monotonic()
                if clock == "virtual":
                    record = run_virtual_time(spec, contender)
                else:
                    record = run_loopback(spec, contender)
                records.append(record)
                took = "n/a" if record.skipped else f"{time.monotonic() - began:6.1f} s wall"
                print(f"{clock:8} {name:26} {contender:20} {took}", file=sys.stderr)
    table = markdown_table(records)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    (out / "results.md").write_text(table + "\n", encoding="utf-8")
    write_json(records, out / "results.json", meta=meta)
    if not args.no_plot:
        limited = [r for r in records if SCENARIOS[r.scenario].limited]
        if plot(limited, out / "tokens_per_second.png"):
            print(f"plot: {out / 'tokens_per_second.png'}", file=sys.stderr)
        else:
            print("plot skipped: nothing to plot, or no matplotlib (bench extra)", file=sys.stderr)
    print(f"wrote {out}/results.json and results.md", file=sys.stderr)
    return 0


def _out_folder(args: argparse.Namespace) -> Path:
    """Where this run's files go: ``--out``, the committed results, or a fresh scratch folder."""
    if args.out is not None:
        return Path(args.out)
    if args.update_results:
        return RESULTS
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = SCRATCH / stamp
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = SCRATCH / f"{stamp}-{suffix}"
    return folder


if __name__ == "__main__":
    sys.exit(main())

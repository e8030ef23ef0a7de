"""``vsched calibrate RESULTS --jobs INPUT``: the image table against what the server billed.

A drain's results file (Batch API output lines) holds each answer's ``usage`` but not the
request, so the requests are read from the drain's input (``--jobs``: the JSONL file, or the
folder with the same ``--prompt`` / ``--model`` / ``--detail``) and priced again with the
current table, joined on ``custom_id``. Pricing again rather than trusting a stored estimate
is the point: the report says how the table *now* compares with billing.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._errors import InputError, VschedError
from ..cost._calibrate import (
    STALE_TOLERANCE,
    CalibrationReport,
    billed_prompt_tokens,
    calibrate,
)
from ..cost._model import CostModel, RequestCost
from ..images._probe import ImageProber
from ..sources._jobs import iter_jobs
from ._exit import EXIT_OK
from .drain import folder_prompt
from .flags import add_config_flag, config_from_args

__all__ = ["read_billed", "register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``calibrate`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "calibrate",
        help="compare the image table with billed usage: factor and override per model/detail",
        description=(
            "Read a drain's results file (RESULTS.jsonl, Batch API output lines with usage), "
            "price the requests of its input (--jobs) again with the current model table, and "
            "print per model and detail the predicted and billed image tokens, their ratio, and "
            "the [models.<name>] override that would fit. Rows billed more than --tolerance "
            "away from the table are flagged stale."
        ),
    )
    parser.add_argument("results", metavar="RESULTS", help="results file written by the drain")
    parser.add_argument(
        "--jobs",
        metavar="INPUT",
        required=True,
        help="the drain's input: a JSONL job file, or a folder of images with --prompt",
    )
    parser.add_argument("--prompt", help="for a folder: the prompt the drain sent [drain.prompt]")
    parser.add_argument("--model", help="for a folder: the model [drain.model]")
    parser.add_argument(
        "--detail", choices=("low", "high", "auto", "original"), help="for a folder [drain.detail]"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        default=STALE_TOLERANCE,
        help=f"share of billing off the table that flags a row stale ({STALE_TOLERANCE:g})",
    )
    parser.add_argument(
        "--no-fetch", action="store_true", help="do not read http(s) image headers (skips them)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_flag(parser)
    parser.set_defaults(run=run)


def read_billed(path: Path) -> dict[str, int | None]:
    """``custom_id`` -> billed prompt tokens of each answered line (None: no usage)."""
    billed: dict[str, int | None] = {}
    try:
        with path.open(encoding="utf-8") as fh:
            for number, raw in enumerate(fh, start=1):
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise InputError(f"{path}:{number}: not JSON ({exc.msg})") from None
                response = line.get("response") if isinstance(line, dict) else None
                if not isinstance(response, dict) or response.get("status_code") != 200:
                    continue  # failed jobs were not billed for an answer
                body = response.get("body")
                usage = body.get("usage") if isinstance(body, dict) else None
                billed[str(line.get("custom_id"))] = billed_prompt_tokens(usage)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from None
    return billed


def run(args: argparse.Namespace) -> int:
    """Print the calibration report."""
    overrides = {
        "drain.prompt": args.prompt,
        "drain.model": args.model,
        "drain.detail": args.detail,
    }
    config = config_from_args(args, overrides)
    if not 0 < args.tolerance < 1:
        raise InputError(f"--tolerance: expected a share between 0 and 1, got {args.tolerance}")
    billed = read_billed(Path(args.results))
    skipped: dict[str, int] = {}
    with ImageProber(config.images, fetch=not args.no_fetch) as probe:
        model = CostModel(config, probe=probe)

        def pairs() -> Iterator[tuple[RequestCost, int | None]]:
            for job in iter_jobs(args.jobs, folder=folder_prompt(config)):
                if job.id not in billed or job.body is None:
                    continue
                tokens = billed.pop(job.id)
                try:
                    cost = model.estimate(job.body, endpoint=job.endpoint)
                except VschedError:
                    skipped["cannot be priced"] = skipped.get("cannot be priced", 0) + 1
                    continue
                yield cost, tokens

        report = calibrate(pairs(), model.profiles, tolerance=args.tolerance)
    for reason, n in report.skipped.items():
        skipped[reason] = skipped.get(reason, 0) + n
    if billed:
        skipped["no job with that custom_id"] = len(billed)
    report = CalibrationReport(rows=report.rows, skipped=skipped)
    if args.json:
        print(json.dumps({"results": args.results, "jobs": args.jobs, **report.to_dict()}))
    else:
        print(_text(args.results, report, counter=model.counter.name, tolerance=args.tolerance))
    return EXIT_OK


def _text(path: str, report: CalibrationReport, *, counter: str, tolerance: float) -> str:
    lines = [f"{path}: billed image tokens against the table (text counted with {counter})"]
    if not report.rows:
        lines.append("No answered request with images of known size to compare.")
    header = ("MODEL", "DETAIL", "REQUESTS", "IMAGES", "PREDICTED", "BILLED", "FACTOR", "SOURCE")
    rows = [header]
    rows.extend(
        (
            row.model,
            row.detail,
            f"{row.requests:,}",
            f"{row.images:,}",
            f"{row.predicted_image_tokens:,}",
            f"{row.billed_image_tokens:,}",
            f"{row.factor:.3f}" + (" stale" if row.stale else ""),
            row.source_date or "-",
        )
        for row in report.rows
    )
    if report.rows:
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines.extend(
            "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
            for r in rows
        )
    stale = report.stale
    if stale:
        lines.append(
            f"The table looks stale for {len(stale)} row(s): billing is more than "
            f"{tolerance:.0%} away from it. Overrides that would fit (config file):"
        )
        lines.extend(row.override_toml() for row in stale)
    elif report.rows:
        lines.append(f"Every row is within {tolerance:.0%} of billing: the table fits.")
    if report.skipped:
        reasons = ", ".join(f"{n:,} {reason}" for reason, n in sorted(report.skipped.items()))
        lines.append(f"Skipped: {reasons}")
    return "\n".join(lines)

"""``vsched estimate FILE``: tokens, price and the shortest drain time of a JSONL job file."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

import anyio

from ..batch._auto import lane_jobs, plan_for, plan_text
from ..cost._estimate import EstimateReport, estimate_jobs
from ..cost._model import CostModel
from ..cost._prices import PriceTable
from ..drain._progress import format_seconds
from ..images._probe import ImageProber
from ..limits._headers import parse_duration
from ..prepare._image import PrepareStats
from ..prepare._preparer import prepare_bodies
from ..sources._jobs import iter_jobs
from ._exit import EXIT_FAILED, EXIT_OK
from .flags import add_config_flag, config_from_args

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``estimate`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "estimate",
        help="price a JSONL job file: tokens, images, price, minimum drain time",
        description=(
            "Read a JSONL file (one request body per line, or OpenAI Batch API lines) and print "
            "its requests, images, text / image / completion-reserve tokens, an estimated price "
            "and the shortest time it can drain at the given limits. Exit 1 if any line failed."
        ),
    )
    parser.add_argument("file", metavar="FILE", help="JSONL file of requests")
    parser.add_argument("--tpm", type=int, help="tokens per minute (default: limits.tpm)")
    parser.add_argument("--rpm", type=int, help="requests per minute (default: limits.rpm)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--deadline",
        type=_duration,
        metavar="DURATION",
        help="also plan the cheapest realtime + Batch API mix that is done within it (6h, 90m)",
    )
    parser.add_argument(
        "--no-fetch",
        action="store_true",
        help="do not read http(s) image headers; charge such images their detail's maximum",
    )
    parser.add_argument(
        "--prepare",
        action="store_true",
        help="also prepare local and inline images as dispatch would (decodes them: slower) and "
        "show image tokens and upload bytes before and after",
    )
    add_config_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Estimate the file and print the report; 1 when any line could not be priced."""
    config = config_from_args(args, {"limits.tpm": args.tpm, "limits.rpm": args.rpm})
    tpm, rpm = config.limits.tpm, config.limits.rpm
    with ImageProber(config.images, fetch=not args.no_fetch) as probe:
        model = CostModel(config, probe=probe, check_base64=True)
        report = estimate_jobs(iter_jobs(args.file), model, PriceTable.from_config(config), tpm=tpm)
    plans = None
    if args.deadline:
        bodies = ((j.body, j.endpoint) for j in iter_jobs(args.file) if j.body is not None)
        with ImageProber(config.images, fetch=not args.no_fetch) as probe:
            priced = lane_jobs(
                bodies, CostModel(config, probe=probe), PriceTable.from_config(config)
            )
            plans = plan_for(priced, config, deadline=args.deadline)
    prepared = None
    if args.prepare:
        prepared = anyio.run(prepare_bodies, iter_jobs(args.file), config)
    if args.json:
        extra: dict[str, Any] = {}
        if prepared is not None:
            extra["preparation"] = prepared.to_dict()
        if plans is not None:
            extra["plan"] = {
                model: {**dataclasses.asdict(plan), "price": plan.price, "saving": plan.saving}
                for model, plan in plans.items()
            }
        print(json.dumps({"file": args.file, **report.to_dict(tpm=tpm, rpm=rpm), **extra}))
    else:
        print(_text(args.file, report, tpm=tpm, rpm=rpm, counter=model.counter.name))
        if prepared is not None:
            print(_preparation_text(prepared))
        if plans is not None:
            print(plan_text(plans))
    return EXIT_FAILED if report.failed else EXIT_OK


def _duration(text: str) -> float:
    seconds = parse_duration(text)
    if seconds is None or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a duration such as 6h or 90m, got {text!r}")
    return seconds


def _preparation_text(stats: PrepareStats) -> str:
    failed = f", {stats.failed:,} failed" if stats.failed else ""
    return (
        f"Preparation: {stats.images:,} local/inline images ({stats.reencoded:,} re-encoded"
        f"{failed}): image tokens {stats.tokens_in:,} -> {stats.tokens_out:,},"
        f" upload {stats.bytes_in:,} -> {stats.bytes_out:,} bytes"
    )


def _text(path: str, report: EstimateReport, *, tpm: int, rpm: int, counter: str) -> str:
    lines = [f"{path}: {report.requests:,} requests, {len(report.failed):,} failed lines"]
    images = f"Images: {report.images:,}"
    if report.unsized_images:
        images += f" ({report.unsized_images:,} of unknown size, charged their detail's maximum)"
    lines.append(images)
    lines.append(
        f"Tokens: text {report.text_tokens:,} ({counter}) + images {report.image_tokens:,}"
        f" + completion reserve {report.completion_tokens:,} = {report.total_tokens:,}"
    )
    price = f"Price: ~${report.price_usd:,.4f} (prompt at input price, reserve at output price)"
    if report.unpriced_models:
        price += f"; no price for {', '.join(sorted(report.unpriced_models))} (add [prices.*])"
    lines.append(price)
    drain = format_seconds(report.drain_seconds(tpm=tpm, rpm=rpm))
    lines.append(f"Minimum drain time at {tpm:,} TPM / {rpm:,} RPM: {drain}")
    if report.failed:
        lines.append(f"Failed lines ({len(report.failed):,}):")
        lines.extend(
            f"  {failed.reason}"
            if failed.id == str(failed.line)
            else f"  {failed.id}: {failed.reason}"
            for failed in report.failed
        )
    return "\n".join(lines)

"""``vsched models``: the model profiles the cost model prices images with, and their sources."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from ..cost._profiles import ModelProfile, ProfileTable
from ._exit import EXIT_OK, EXIT_USAGE
from .flags import add_config_flag, config_from_args

__all__ = ["describe_budget", "profile_row", "register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``models`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "models",
        help="list the model profiles: image budgets, auto meaning, multiplier, encoding, source",
        description=(
            "List the built-in model profiles (scheduler/cost/models.toml) with the config "
            "file's [models.<name>] overrides and additions applied: kind, image budgets, what "
            "detail auto means, multiplier, text encoding and the date of each row's source."
        ),
    )
    parser.add_argument(
        "names", nargs="*", metavar="MODEL", help="only these models (snapshots resolve)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_config_flag(parser)
    parser.set_defaults(run=run)


def describe_budget(profile: ModelProfile) -> str:
    """The image rule in one short phrase: tiles or patch budgets per detail."""
    if profile.kind == "tile":
        return f"{profile.base}+{profile.per_tile}/tile"
    parts = [f"high {_budget(profile.patch_budget, profile.max_side)}"]
    if "original" in profile.details:
        if profile.original_resize:
            budget = profile.original_patch_budget or profile.patch_budget
            parts.append(f"original {_budget(budget, profile.original_max_side)}")
        else:
            parts.append("original no resize")
    return ", ".join(parts)


def _budget(patches: int, side: int) -> str:
    return f"{patches:,}" + (f"/{side}px" if side else "")


def profile_row(profile: ModelProfile) -> dict[str, Any]:
    """One profile as JSON-ready data: every field, plus the resolved ``auto`` meaning."""
    row = dataclasses.asdict(profile)
    row["details"] = list(profile.details)
    row["auto_meaning"] = profile.auto_meaning
    row["budget"] = describe_budget(profile)
    return row


def run(args: argparse.Namespace) -> int:
    """Print the profile table (or the named models); 2 for a model without a profile."""
    table = ProfileTable.from_config(config_from_args(args, {}))
    profiles = table.profiles
    if args.names:
        found = [(name, table.find(name)) for name in args.names]
        missing = [name for name, profile in found if profile is None]
        if missing:
            print(f"vsched: no profile for {', '.join(missing)} (add [models.<name>])")
            return EXIT_USAGE
        profiles = tuple(profile for _, profile in found if profile is not None)
    if args.json:
        fallback = table.fallback.name if table.fallback else None
        print(json.dumps({"models": [profile_row(p) for p in profiles], "fallback": fallback}))
        return EXIT_OK
    print(_text(profiles))
    return EXIT_OK


def _text(profiles: tuple[ModelProfile, ...]) -> str:
    header = ("MODEL", "KIND", "IMAGE TOKENS", "AUTO", "MULT", "ENCODING", "SOURCE DATE")
    rows = [header]
    notes: list[str] = []
    for p in profiles:
        name = p.name
        if p.note:
            notes.append(f"  [{len(notes) + 1}] {p.name}: {p.note}")
            name += f" [{len(notes)}]"
        multiplier = f"{p.multiplier:g}" if p.kind == "patch" else "-"
        auto = p.auto_meaning if p.kind == "patch" else "high"
        date = p.source_date or "-"
        rows.append((name, p.kind, describe_budget(p), auto, multiplier, p.encoding, date))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]  # fmt: skip
    if notes:
        lines.append("Notes (where sources disagree the larger charge is taken):")
        lines.extend(notes)
    lines.append("Sources: vsched models --json (source, source_date, note per row).")
    return "\n".join(lines)

"""The dated model table: every documented example and disputed case as a row with its source."""

from __future__ import annotations

import json
import math
from importlib import resources

import pytest

from scheduler import ConfigError
from scheduler._config import Config
from scheduler.cli import EXIT_OK, EXIT_USAGE, main
from scheduler.cost import ProfileTable, image_tokens, working_size
from scheduler.cost._profiles import builtin_profiles, parse_profiles
from scheduler.cost._tokens import patch_mode

TABLE = ProfileTable.builtin()
GUIDE = "OpenAI images-vision guide, late 2026 (DESIGN.md)"
NOTES = "OpenAI model sizing notes, late 2026 (DESIGN.md)"
MEASURED = "community measurements: x1.2 for gpt-5.2 and later (DESIGN.md)"


@pytest.mark.parametrize(
    ("model", "width", "height", "detail", "size", "patches", "tokens", "source"),
    [
        # Tile models: the documented examples.
        ("gpt-4o", 1024, 1024, "high", (768, 768), None, 765, GUIDE),
        ("gpt-4o", 2048, 4096, "high", (768, 1536), None, 1105, GUIDE),
        ("gpt-4o", 4000, 3000, "high", (1024, 768), None, 765, GUIDE),  # "765 on gpt-4o high"
        ("gpt-4o", 1800, 2400, "high", (768, 1024), None, 765, GUIDE),
        # Patch models with 1,536 patches: the documented example, newest multipliers.
        ("gpt-4.1-mini", 1800, 2400, "high", (1056, 1408), 1452, 2353, GUIDE),
        ("gpt-5-mini", 1800, 2400, "high", (1056, 1408), 1452, 2353, GUIDE + "; was 1.2"),
        ("gpt-5-nano", 1800, 2400, "high", (1056, 1408), 1452, 3572, GUIDE + "; was 1.5"),
        ("gpt-5.4-mini", 1800, 2400, "high", (1056, 1408), 1452, 2353, GUIDE),
        ("gpt-5.2", 4000, 3000, "high", (1408, 1056), 1452, 1743, MEASURED),
        # gpt-5.4: high (and auto) is 2,500 patches within 2048 px; the guide's ~2,451.
        ("gpt-5.4", 4000, 3000, "high", (1824, 1368), 2451, 2942, NOTES + "; " + MEASURED),
        ("gpt-5.4", 4000, 3000, "auto", (1824, 1368), 2451, 2942, NOTES),
        ("gpt-5.4", 1800, 2400, "high", (1368, 1824), 2451, 2942, NOTES),
        ("gpt-5.4", 4000, 3000, "original", (3669, 2752), 9890, 11868, NOTES),
        # gpt-5.5: auto is original, 10,000 patches within 6000 px; the guide's ~9,890.
        ("gpt-5.5", 4000, 3000, "auto", (3669, 2752), 9890, 11868, NOTES + "; " + MEASURED),
        ("gpt-5.5", 4000, 3000, "original", (3669, 2752), 9890, 11868, NOTES),
        ("gpt-5.5", 4000, 3000, "high", (1824, 1368), 2451, 2942, NOTES),
        ("gpt-5.5", 1800, 2400, "auto", (1800, 2400), 4275, 5130, NOTES),  # under the budget
        ("gpt-5.5", 1800, 2400, "original", (1800, 2400), 4275, 5130, NOTES),
        # gpt-5.6: original and auto do not resize at all.
        ("gpt-5.6", 4000, 3000, "original", (4000, 3000), 11750, 14100, NOTES + "; " + MEASURED),
        ("gpt-5.6", 4000, 3000, "auto", (4000, 3000), 11750, 14100, NOTES),
        ("gpt-5.6", 1800, 2400, "original", (1800, 2400), 4275, 5130, NOTES),
        ("gpt-5.6", 4000, 3000, "high", (1824, 1368), 2451, 2942, NOTES + " (high assumed)"),
    ],
)
def test_documented_and_disputed_cases(
    model: str,
    width: int,
    height: int,
    detail: str,
    size: tuple[int, int],
    patches: int | None,
    tokens: int,
    source: str,
) -> None:
    """Each case gives the working size, patch count and tokens the table's rules imply."""
    profile = TABLE.resolve(model)
    assert working_size(width, height, detail=detail, profile=profile) == size
    if patches is not None:
        assert math.ceil(size[0] / 32) * math.ceil(size[1] / 32) == patches
    assert image_tokens(width, height, detail=detail, model=model) == tokens, source


@pytest.mark.parametrize(
    ("model", "auto"),
    [("gpt-5.4", "high"), ("gpt-5.5", "original"), ("gpt-5.6", "none"), ("gpt-5-mini", "high")],
)
def test_what_auto_means_is_per_model(model: str, auto: str) -> None:
    """auto (and an omitted detail) is high on gpt-5.4, original on gpt-5.5, unresized on 5.6."""
    profile = TABLE.resolve(model)
    assert profile.auto_meaning == auto
    assert patch_mode(profile, "auto") == auto


def test_every_row_is_dated_and_disputes_say_so() -> None:
    """Each built-in row names its source and date; the disputed ones carry a note."""
    for profile in builtin_profiles():
        assert profile.source and profile.source_date, profile.name
    for name in ("gpt-5-mini", "gpt-5-nano", "gpt-5.2", "gpt-5.4", "gpt-5.5"):
        assert "disputed" in TABLE.resolve(name).note and "larger" in TABLE.resolve(name).note


def test_the_table_ships_inside_the_package() -> None:
    """models.toml is package data (hatchling puts it in the wheel) and is read once."""
    assert resources.files("scheduler.cost").joinpath("models.toml").is_file()
    assert builtin_profiles() is builtin_profiles()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('[models.x]\nkind = "tile"\nbase = 1\nper_tile = 1\n', r"t\.toml: models\.x\.source: req"),
        (
            '[models.x]\nkind = "tile"\nbase = 1\nper_tile = 1\nsource = "s"\nsource_date = "2026"',
            r"t\.toml: models\.x\.source_date: expected YYYY-MM",
        ),
        (
            '[models.x]\nkind = "tile"\nbase = 1\nper_tile = 1\nsource = "s"\n'
            'source_date = "2026-1"',
            r"t\.toml: models\.x\.source_date",
        ),
        (
            '[models.x]\nkind = "tile"\nbase = -1\nper_tile = 1\nsource = "s"\n'
            'source_date = "2026-11"',
            r"t\.toml: models\.x\.base: expected an integer",
        ),
        (
            '[models.x]\nkind = "patch"\npatch_budget = 9\nauto = "big"\nsource = "s"\n'
            'source_date = "2026-11"',
            r"models\.x\.auto: expected one of high, original, none",
        ),
        ("[other]\n", r"t\.toml: expected only \[models"),
        ("[models\n", r"t\.toml: not valid TOML"),
    ],
)
def test_table_errors_name_the_row(text: str, needle: str) -> None:
    """A bad row in a table file is a ConfigError naming the file, the row and the key."""
    with pytest.raises(ConfigError, match=needle):
        parse_profiles(text, origin="t.toml")


def test_config_overrides_and_adds_rows() -> None:
    """[models.<name>] changes a built-in row (now sourced from the config) or adds one."""
    config = Config(
        models={
            "gpt-5.5": {"auto": "high", "multiplier": 1.0},
            "my-vlm": {"kind": "patch", "patch_budget": 100, "original_resize": False,
                       "details": ["high", "auto", "original"], "encoding": "cl100k_base"},
        }
    )  # fmt: skip
    table = ProfileTable.from_config(config)
    assert image_tokens(4000, 3000, detail="auto", model="gpt-5.5", profiles=table) == 2451
    assert table.resolve("gpt-5.5").source == "config file"
    vlm = table.resolve("my-vlm")
    assert (vlm.auto_meaning, table.encoding("my-vlm")) == ("high", "cl100k_base")
    assert image_tokens(64, 64, detail="original", model="my-vlm", profiles=table) == 4


def test_models_command_lists_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    """vsched models shows kind, budgets, auto meaning, multiplier, encoding and source date."""
    assert main(["models"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "MODEL" in out and "SOURCE DATE" in out
    line = next(x for x in out.splitlines() if x.startswith("gpt-5.5"))
    assert line.split()[-4:] == ["original", "1.2", "o200k_base", "2026-11"]
    assert "high 2,500/2048px, original 10,000/6000px" in line
    assert main(["models", "gpt-4-turbo-2024-04-09", "--json"]) == EXIT_OK
    (row,) = json.loads(capsys.readouterr().out)["models"]
    assert (row["name"], row["encoding"], row["source_date"]) == (
        "gpt-4-turbo",
        "cl100k_base",
        "2026-11",
    )
    assert main(["models", "llava"]) == EXIT_USAGE

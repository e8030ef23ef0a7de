"""The simulator's own price list: the documented image rules, per model, with no client code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scheduler.sim.pricing import (
    RULES,
    ImageCharge,
    PatchRule,
    TileRule,
    find_rule,
    image_tokens,
    working_size,
)

GPT_4O = RULES["gpt-4o"]
BUDGET_1536 = PatchRule(multiplier=1.0)


@pytest.mark.parametrize(
    ("width", "height", "detail", "model", "tokens"),
    [
        (1024, 1024, "high", "gpt-4o", 765),  # documented
        (2048, 4096, "high", "gpt-4o", 1105),  # documented
        (4096, 8192, "low", "gpt-4o", 85),  # documented
        (1024, 1024, "auto", "gpt-4o", 765),  # auto is high on tile models
        (512, 512, "high", "gpt-4o", 255),
        (100, 100, "high", "gpt-4o", 255),  # never enlarged: one tile
        (1024, 1024, "high", "gpt-4o-mini", 2833 + 4 * 5667),
        (1024, 1024, "low", "gpt-4o-mini", 2833),
        (1024, 1024, "high", "o1", 75 + 4 * 150),
        (1024, 1024, "high", "gpt-5", 70 + 4 * 140),
        (1024, 1024, "high", "computer-use-preview", 65 + 4 * 129),
        (1024, 1024, "high", "gpt-4.1-mini", 1659),  # 1024 patches * 1.62, rounded up
        (1024, 1024, "low", "gpt-4.1-mini", 1659),  # low is priced like high on patch models
        (1024, 1024, "high", "gpt-4.1-nano", 2520),  # * 2.46 (2519.04)
        (1024, 1024, "high", "o4-mini", 1762),  # * 1.72 (1761.28)
        (4000, 3000, "high", "gpt-4o", 765),  # DESIGN.md: a 4000x3000 photo
        (4000, 3000, "high", "gpt-5.4", 2451),
        (4000, 3000, "auto", "gpt-5.5", 9890),  # auto is original on gpt-5.5
    ],
)
def test_image_tokens_follow_the_documented_rules(
    width: int, height: int, detail: str, model: str, tokens: int
) -> None:
    """Each row is a documented figure, or one derived from DESIGN.md's rules and table."""
    rule = find_rule(model)
    assert rule is not None
    assert image_tokens(width, height, detail, rule) == tokens


@pytest.mark.parametrize(
    ("width", "height", "size"),
    [
        (1024, 1024, (768, 768)),
        (2048, 4096, (768, 1536)),  # fit 1024x2048, then shortest side to 768
        (4096, 1000, (2048, 500)),  # the 2048 fit floors: 1000 * 2048 / 4096 = 500
        (3000, 1001, (2048, 683)),  # 683.35 floored
        (1000, 3001, (682, 2048)),  # fit: 682.44 floored; a shortest side <= 768 stays
        (5000, 2000, (1920, 768)),  # fit 2048x819 (819.2 floored), shortest 819 -> 768
    ],
)
def test_tile_steps_floor_both_sides(width: int, height: int, size: tuple[int, int]) -> None:
    """The 2048 fit and the 768 shortest-side step both floor the scaled side."""
    assert working_size(width, height, "high", GPT_4O) == size


@pytest.mark.parametrize(
    ("width", "height", "size", "patches"),
    [
        (1024, 1024, (1024, 1024), 1024),  # documented: under the budget, unchanged
        (1800, 2400, (1056, 1408), 1452),  # documented: budget 1536
        (32, 10_000, (32, 10_000), 313),  # a thin strip under budget
        (10, 100_000, (10, 49_152), 1536),  # under one patch wide: trimmed to the budget
    ],
)
def test_patch_budget_shrink(width: int, height: int, size: tuple[int, int], patches: int) -> None:
    """Over the budget the image shrinks by DESIGN.md's formula and fits in whole patches."""
    assert working_size(width, height, "high", BUDGET_1536) == size
    assert image_tokens(width, height, "high", BUDGET_1536) == patches


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o", "gpt-4o"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("o1-pro", "o1"),
        ("o3-2025-04-16", "o3"),
        ("gpt-5-nano-2025-08-07", "gpt-5-nano"),
        ("gpt-5.1-2025-11-13", "gpt-5.1"),
        ("computer-use-preview-2025-03-11", "computer-use-preview"),
    ],
)
def test_snapshots_match_their_family(model: str, family: str) -> None:
    """A dated snapshot is priced as the longest family name it starts with."""
    assert find_rule(model) is RULES[family]


@pytest.mark.parametrize("model", ["gpt-4o2", "my-llm", "gpt-3.5-turbo", "gpt-4"])
def test_unknown_models_have_no_rule(model: str) -> None:
    """A model outside the table (no family prefix followed by '-') has no price."""
    assert find_rule(model) is None


@pytest.mark.parametrize(
    ("rule", "detail"),
    [(GPT_4O, "original"), (BUDGET_1536, "original"), (GPT_4O, "ultra")],
)
def test_unaccepted_details_are_errors(rule: TileRule | PatchRule, detail: str) -> None:
    """A detail the model does not take is refused, never priced as something else."""
    with pytest.raises(ValueError):
        image_tokens(512, 512, detail, rule)


@pytest.mark.parametrize(
    ("spec", "formula", "charged"),
    [
        ("formula", 765, 765),
        ("843", 765, 843),
        ("843", 85, 843),  # flat whatever the size
        ("0", 765, 0),
        ("x0.7", 765, 536),  # 535.5 rounded up
        ("x1.5", 765, 1148),  # 1147.5 rounded up
        ("x2", 85, 170),
        (" X1.0 ", 101, 101),
    ],
)
def test_image_charge_specs(spec: str, formula: int, charged: int) -> None:
    """Each image-charge spec turns the formula's figure into its TPM charge."""
    assert ImageCharge.parse(spec).tokens(formula) == charged


@pytest.mark.parametrize("spec", ["", "flat", "lots", "-1", "x", "x0", "x-1", "xnan", "1.5"])
def test_bad_image_charge_specs(spec: str) -> None:
    """A spec that is not formula, N or xF is a ValueError naming the key."""
    with pytest.raises(ValueError, match="image_charge"):
        ImageCharge.parse(spec)


FORBIDDEN = {
    "scheduler.cost",
    "scheduler.images",
    "scheduler.image_headers",
    "scheduler.headers",
    "scheduler.profiles",
    "scheduler.text_tokens",
}


def _imports(path: Path) -> set[str]:
    """Every absolute module name a scheduler/sim file imports (relative ones resolved)."""
    package = ["scheduler", "sim"]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_simulator_imports_no_client_pricing_or_headers() -> None:
    """No module under scheduler/sim imports the client's cost, images, headers or profiles."""
    sim = Path(__file__).parent.parent / "scheduler" / "sim"
    files = sorted(sim.glob("*.py"))
    assert len(files) > 5
    for path in files:
        bad = {
            name
            for name in _imports(path)
            if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
        }
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_import_check_sees_relative_imports(tmp_path: Path) -> None:
    """The AST walk resolves ``from ..headers import x`` to scheduler.headers."""
    source = tmp_path / "x.py"
    source.write_text("from ..headers import x\nfrom . import pricing\nimport scheduler.cost\n")
    found = _imports(source)
    assert {"scheduler.headers", "scheduler.sim.pricing", "scheduler.cost"} <= found

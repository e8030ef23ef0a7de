"""Model profiles: the built-in table, snapshot resolution, config overrides and their errors."""

from pathlib import Path
from typing import Any

import pytest

from scheduler import ConfigError, UnknownModel
from scheduler._config import Config, CostConfig, load_config
from scheduler.cost import ModelProfile, ProfileTable, image_tokens


@pytest.mark.parametrize(
    ("model", "base", "per_tile"),
    [
        ("gpt-4-vision-preview", 85, 170),
        ("gpt-4-turbo", 85, 170),
        ("gpt-4o", 85, 170),
        ("gpt-4.1", 85, 170),
        ("gpt-4.5", 85, 170),
        ("gpt-4o-mini", 2833, 5667),
        ("o1", 75, 150),
        ("o1-pro", 75, 150),
        ("o3", 75, 150),
        ("gpt-5", 70, 140),
        ("gpt-5.1", 70, 140),
        ("gpt-5-chat-latest", 70, 140),
        ("computer-use-preview", 65, 129),
    ],
)
def test_builtin_tile_models(model: str, base: int, per_tile: int) -> None:
    """Every tile model named in DESIGN.md has its documented base and per-tile tokens."""
    profile = ProfileTable.builtin().resolve(model)
    assert (profile.kind, profile.base, profile.per_tile) == ("tile", base, per_tile)


@pytest.mark.parametrize(
    ("model", "multiplier"),
    [
        ("gpt-4.1-mini", 1.62),
        ("gpt-4.1-nano", 2.46),
        ("o4-mini", 1.72),
        ("gpt-5-mini", 1.62),  # newest guide; an older copy said 1.2
        ("gpt-5-nano", 2.46),  # newest guide; an older copy said 1.5
        ("gpt-5.2", 1.2),  # measurements; the guide lists none
        ("gpt-5.4-mini", 1.62),
        ("gpt-5.4-nano", 2.46),
        ("gpt-5-codex-mini", 1.62),
        ("gpt-5.1-codex-mini", 1.62),
    ],
)
def test_builtin_patch_models(model: str, multiplier: float) -> None:
    """Every 1536-patch model named in DESIGN.md has that budget and its multiplier."""
    profile = ProfileTable.builtin().resolve(model)
    assert (profile.kind, profile.patch_budget, profile.multiplier) == ("patch", 1536, multiplier)


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("gpt-4.1-2025-04-14", "gpt-4.1"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("gpt-5-2025-08-07", "gpt-5"),
        ("gpt-5.1-2025-11-13", "gpt-5.1"),
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("o1-pro-2025-03-19", "o1-pro"),
        ("o1-2024-12-17", "o1"),
        ("o4-mini-2025-04-16", "o4-mini"),
        ("gpt-4.5-preview-2025-02-27", "gpt-4.5-preview"),
        ("computer-use-preview-2025-03-11", "computer-use-preview"),
    ],
)
def test_snapshots_resolve_to_their_family(model: str, family: str) -> None:
    """A dated snapshot resolves to its own family, the longest one, never a shorter relative."""
    assert ProfileTable.builtin().resolve(model).name == family


@pytest.mark.parametrize(
    "model", ["llava-1.5", "gpt-4o-audio-preview", "gpt-4.1-minix", "gpt-4o-", "o1-mini-x"]
)
def test_unknown_model_is_a_clear_error(model: str) -> None:
    """A model with no profile and no snapshot suffix is UnknownModel naming it and the fixes."""
    with pytest.raises(UnknownModel, match=r"fallback_profile") as info:
        ProfileTable.builtin().resolve(model)
    assert repr(model) in str(info.value)


def test_fallback_profile_prices_unknown_models() -> None:
    """With cost.fallback_profile set, an unknown model is priced with that profile."""
    table = ProfileTable.from_config(Config(cost=CostConfig(fallback_profile="gpt-4o")))
    assert table.resolve("my-azure-deployment").name == "gpt-4o"
    assert table.resolve("gpt-4.1-mini").name == "gpt-4.1-mini"


def test_fallback_profile_must_exist() -> None:
    """A fallback naming no profile is a ConfigError naming cost.fallback_profile."""
    with pytest.raises(ConfigError, match=r"cost\.fallback_profile"):
        ProfileTable.from_config(Config(cost=CostConfig(fallback_profile="nope")))


def test_config_file_overrides_and_extends(tmp_path: Path) -> None:
    """[models.*] tables override a built-in profile's fields and add new models."""
    path = tmp_path / "vsched.toml"
    path.write_text(
        "[models.gpt-4o]\nper_tile = 200\n\n"
        "[models.my-vlm]\nkind = 'patch'\npatch_budget = 100\nmultiplier = 2\n"
        "details = ['low', 'high', 'auto', 'original']\noriginal_patch_budget = 400\n"
    )
    table = ProfileTable.from_config(load_config(path, env={}))
    assert image_tokens(1024, 1024, detail="high", profiles=table) == 85 + 4 * 200
    assert table.resolve("gpt-4o-2024-08-06").per_tile == 200
    assert image_tokens(3200, 3200, model="my-vlm", detail="high", profiles=table) == 200
    assert image_tokens(3200, 3200, model="my-vlm", detail="original", profiles=table) == 800
    assert table.resolve("gpt-4.1").per_tile == 170


@pytest.mark.parametrize(
    ("name", "values", "needle"),
    [
        ("foo", {"kind": "tile", "base": "x", "per_tile": 1}, r"models\.foo\.base: expected int"),
        ("foo", {"kind": "tile", "base": -1, "per_tile": 1}, r"models\.foo\.base: expected an int"),
        ("foo", {"kind": "tile", "bsae": 1}, r"models\.foo\.bsae: unknown key"),
        ("foo", {"base": 1, "per_tile": 1}, r"models\.foo\.kind: required"),
        ("foo", {"kind": "mosaic"}, r"models\.foo\.kind: expected tile or patch"),
        ("foo", {"kind": "tile", "base": 1}, r"models\.foo\.base: a tile profile needs"),
        ("foo", {"kind": "patch", "multiplier": 1.5}, r"models\.foo\.patch_budget: required"),
        ("foo", {"kind": "patch", "patch_budget": 9, "base": 1}, r"models\.foo\.base: not a key"),
        ("gpt-4o", {"multiplier": 2.0}, r"models\.gpt-4o\.multiplier: not a key of tile"),
        ("gpt-4o", {"details": ["low", "ultra"]}, r"models\.gpt-4o\.details: unknown detail"),
        ("gpt-4o", {"details": ["original"]}, r"models\.gpt-4o\.details: 'original' exists only"),
        ("gpt-4o", {"details": "high"}, r"models\.gpt-4o\.details: expected a list"),
        ("gpt-4o", {"details": []}, r"models\.gpt-4o\.details: expected at least one"),
        ("o4-mini", {"multiplier": 0}, r"models\.o4-mini\.multiplier: expected a positive"),
        ("o4-mini", {"multiplier": True}, r"models\.o4-mini\.multiplier: expected a number"),
        ("o4-mini", {"patch_budget": 0}, r"models\.o4-mini\.patch_budget: expected an int"),
    ],
)
def test_profile_config_errors_name_the_key(name: str, values: dict[str, Any], needle: str) -> None:
    """Each bad [models.*] entry is a ConfigError naming models.<name>.<key>."""
    with pytest.raises(ConfigError, match=needle):
        ProfileTable.from_config(Config(models={name: values}))


def test_a_kind_change_replaces_the_builtin_profile() -> None:
    """Overriding a built-in with another kind builds a fresh profile, not a mix of both."""
    table = ProfileTable.from_config(
        Config(models={"gpt-4o": {"kind": "patch", "patch_budget": 64, "multiplier": 1.0}})
    )
    profile = table.resolve("gpt-4o")
    assert profile == ModelProfile(
        name="gpt-4o", kind="patch", patch_budget=64, source="config file"
    )

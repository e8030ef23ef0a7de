"""Keep every public module's ``__all__`` honest (httpx's test_exported_members, anyio's)."""

import importlib
import pkgutil
from types import ModuleType

import pytest

import scheduler

#: The public modules: the package and its folders. Everything else is private (``_name``).
PUBLIC = (
    "scheduler",
    "scheduler.sources",
    "scheduler.images",
    "scheduler.cost",
    "scheduler.prepare",
    "scheduler.limits",
    "scheduler.dispatch",
    "scheduler.queues",
    "scheduler.drain",
    "scheduler.observe",
    "scheduler.cli",
    "scheduler.sim",
    "scheduler.batch",
)


def _isort_order(name: str) -> tuple[int, str]:
    """Ruff's RUF022 order: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


@pytest.mark.parametrize("name", PUBLIC)
def test_all_is_sorted_and_complete(name: str) -> None:
    """Every name in __all__ exists, the list is sorted, and no public name is left out."""
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert exported == sorted(exported, key=_isort_order)
    for item in exported:
        assert hasattr(module, item), item
    public = {
        item
        for item, value in vars(module).items()
        if not item.startswith("_")
        and not isinstance(value, ModuleType)
        and item != "annotations"  # from __future__ import annotations
    }
    assert public == set(exported)


def test_every_folder_is_listed_and_every_other_module_is_private() -> None:
    """A module not in PUBLIC is private: its own name or a folder's starts with an underscore."""
    found = {
        info.name
        for info in pkgutil.walk_packages(scheduler.__path__, "scheduler.")
        if not info.name.startswith("scheduler.cli.") and not info.name.startswith("scheduler.sim.")
    }
    for name in found - set(PUBLIC):
        assert name.rsplit(".", 1)[1].startswith("_"), f"{name} is public but not in PUBLIC"
    assert {n for n in found if n.count(".") == 1 and "._" not in n} <= set(PUBLIC)


def test_the_face_is_small() -> None:
    """About thirty names plus the error tree: the rest is reached through the folders."""
    errors = [n for n in scheduler.__all__ if isinstance(getattr(scheduler, n), type)]
    errors = [n for n in errors if issubclass(getattr(scheduler, n), Exception)]
    assert len(scheduler.__all__) - len(errors) <= 36
    assert all(issubclass(getattr(scheduler, n), scheduler.VschedError) for n in errors)

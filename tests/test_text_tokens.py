"""Text counting: the character estimate, and tiktoken only when it loads offline."""

import logging
from pathlib import Path

import pytest

from scheduler import ConfigError
from scheduler.cost._text import (
    CharCounter,
    Encoding,
    TiktokenCounter,
    load_text_counter,
    load_tiktoken_offline,
)


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2)])
def test_char_estimate(text: str, tokens: int) -> None:
    """The default estimate is ceil(characters / 4)."""
    assert CharCounter().count(text) == tokens


class FakeEncoding:
    def encode_ordinary(self, text: str) -> list[int]:
        return list(range(len(text.split())))


def fake_loader(name: str) -> Encoding:
    return FakeEncoding()


def missing(name: str) -> Encoding:
    raise ImportError("No module named 'tiktoken'")


def not_cached(name: str) -> Encoding:
    raise OSError(f"{name} is not in the tiktoken cache")


def test_tiktoken_is_used_when_it_loads() -> None:
    """auto and tiktoken modes count with the encoding when the loader succeeds."""
    for mode in ("auto", "tiktoken"):
        counter = load_text_counter(mode, loader=fake_loader)
        assert isinstance(counter, TiktokenCounter)
        assert (counter.name, counter.count("three word text"), counter.count("")) == (
            "tiktoken:o200k_base",
            3,
            0,
        )


def test_not_installed_falls_back_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """Without tiktoken, auto uses the documented character estimate and warns nothing."""
    with caplog.at_level(logging.WARNING):
        assert load_text_counter("auto", loader=missing).name == "chars"
    assert caplog.records == []


def test_unloadable_encoding_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """An installed tiktoken that cannot load offline logs a single warning, then chars."""
    with caplog.at_level(logging.WARNING):
        assert load_text_counter("auto", loader=not_cached).name == "chars"
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "offline" in caplog.records[0].getMessage()


@pytest.mark.parametrize("loader", [missing, not_cached])
def test_explicit_tiktoken_mode_fails_loudly(loader: object) -> None:
    """text_counter = tiktoken is a ConfigError when tiktoken cannot be loaded."""
    with pytest.raises(ConfigError, match=r"cost\.text_counter: tiktoken"):
        load_text_counter("tiktoken", loader=loader)  # type: ignore[arg-type]


def test_chars_mode_and_bad_modes() -> None:
    """chars never tries tiktoken; an unknown mode is a ConfigError."""
    assert load_text_counter("chars", loader=missing).name == "chars"
    with pytest.raises(ConfigError, match="text_counter"):
        load_text_counter("words")  # type: ignore[arg-type]


def test_offline_loader_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an empty cache, loading fails (ImportError or OSError) instead of downloading."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises((ImportError, OSError)):
        load_tiktoken_offline("o200k_base")


def test_default_counter_is_cached() -> None:
    """Without a loader the counter is built once per process (so a fallback warns once)."""
    assert load_text_counter("auto") is load_text_counter("auto")

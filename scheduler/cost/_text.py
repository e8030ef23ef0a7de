"""Counting the tokens of request text: tiktoken when it loads offline, else a character estimate.

The default estimate is ``ceil(len(text) / 4)``: OpenAI's rule of thumb of about four characters
per token of English text. It errs high on plain English prose and low on dense CJK text.

tiktoken is optional and never downloaded: it is used only when it is importable and the BPE
file of its encoding is already in tiktoken's cache (``TIKTOKEN_CACHE_DIR``, else
``DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``). In ``auto`` mode a tiktoken that is
installed but cannot load offline logs one warning and the character estimate is used.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal, Protocol

from .._errors import ConfigError

__all__ = [
    "DEFAULT_ENCODING",
    "CharCounter",
    "Encoding",
    "TextCounter",
    "TiktokenCounter",
    "load_text_counter",
]

logger = logging.getLogger(__name__)

#: The encoding of the gpt-4o, gpt-4.1, gpt-5 and o-series families.
DEFAULT_ENCODING = "o200k_base"
_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


class TextCounter(Protocol):
    """Anything that counts the tokens of a string."""

    @property
    def name(self) -> str:
        """What is counting: ``chars`` or ``tiktoken:<encoding>``."""
        ...

    def count(self, text: str) -> int:
        """The number of tokens in ``text``."""
        ...


class Encoding(Protocol):
    """The part of a ``tiktoken.Encoding`` the counter uses."""

    def encode_ordinary(self, text: str) -> list[int]: ...


class CharCounter:
    """About four characters per token, rounded up: fast and dependency-free."""

    __slots__ = ()

    @property
    def name(self) -> str:
        """Always ``chars``."""
        return "chars"

    def count(self, text: str) -> int:
        """``ceil(len(text) / 4)``."""
        return (len(text) + 3) // 4


class TiktokenCounter:
    """Exact counts from a loaded tiktoken encoding (special tokens counted as plain text)."""

    __slots__ = ("_encode", "_name")

    def __init__(self, encoding: Encoding, *, name: str = DEFAULT_ENCODING) -> None:
        self._encode = encoding.encode_ordinary
        self._name = f"tiktoken:{name}"

    @property
    def name(self) -> str:
        """``tiktoken:<encoding>``."""
        return self._name

    def count(self, text: str) -> int:
        """The length of the encoded text."""
        return len(self._encode(text)) if text else 0


def _tiktoken_cache_file(encoding: str) -> Path:
    """Where tiktoken keeps the BPE file it would otherwise download."""
    root = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    directory = Path(root) if root else Path(tempfile.gettempdir()) / "data-gym-cache"
    return directory / hashlib.sha1(_BLOB_URL.format(encoding).encode()).hexdigest()


def load_tiktoken_offline(encoding: str) -> Encoding:
    """Load a tiktoken encoding without touching the network.

    Raises ImportError when tiktoken is not installed and OSError when its file is not cached.
    """
    tiktoken = importlib.import_module("tiktoken")
    cached = _tiktoken_cache_file(encoding)
    if not cached.is_file():
        raise OSError(f"{encoding} is not in the tiktoken cache ({cached}); not downloading it")
    loaded: Encoding = tiktoken.get_encoding(encoding)
    return loaded


@functools.cache
def _cached_counter(mode: str, encoding: str) -> TextCounter:
    return _load(mode, encoding, load_tiktoken_offline)


def _load(mode: str, encoding: str, loader: Callable[[str], Encoding]) -> TextCounter:
    if mode == "chars":
        return CharCounter()
    try:
        return TiktokenCounter(loader(encoding), name=encoding)
    except ImportError as exc:
        if mode == "tiktoken":
            raise ConfigError(f"cost.text_counter: tiktoken is not installed ({exc})") from None
        logger.debug("tiktoken is not installed; counting text tokens as characters / 4")
        return CharCounter()
    except Exception as exc:
        if mode == "tiktoken":
            raise ConfigError(
                f"cost.text_counter: tiktoken cannot load {encoding}: {exc}"
            ) from None
        logger.warning(
            "tiktoken cannot load %s offline (%s); counting text tokens as characters / 4",
            encoding,
            exc,
        )
        return CharCounter()


def load_text_counter(
    mode: Literal["auto", "chars", "tiktoken"] = "auto",
    *,
    encoding: str = DEFAULT_ENCODING,
    loader: Callable[[str], Encoding] | None = None,
) -> TextCounter:
    """The counter for ``cost.text_counter``: ``chars``, ``tiktoken``, or ``auto`` (either).

    Without ``loader`` the result is cached per process, so the fallback warns only once.
    ``tiktoken`` mode raises ConfigError when tiktoken cannot be loaded offline.
    """
    if mode not in ("auto", "chars", "tiktoken"):
        raise ConfigError(f"cost.text_counter: expected auto, chars or tiktoken, got {mode!r}")
    if loader is None:
        return _cached_counter(mode, encoding)
    return _load(mode, encoding, loader)

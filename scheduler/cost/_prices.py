"""Dollar prices per model (built-in table, ``[prices.*]`` overrides)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .._config import Config
from .._errors import ConfigError
from ._model import RequestCost
from ._profiles import match_family

__all__ = ["Price", "PriceTable"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Price:
    """US dollars per million tokens."""

    input: float
    output: float

    def __post_init__(self) -> None:
        if self.input < 0 or self.output < 0:
            raise ValueError("prices must be >= 0")

    def of(self, cost: RequestCost) -> float:
        """Dollars for a request: prompt at the input price, the reserve at the output price."""
        return (cost.prompt_tokens * self.input + cost.completion_tokens * self.output) / 1e6


# List prices in USD per million tokens when this table was written; override with [prices].
_BUILTIN_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3": (2.00, 8.00),
    "o4-mini": (1.10, 4.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}


class PriceTable:
    """Model -> Price: the built-in list prices overridden by ``[prices.<model>]``."""

    __slots__ = ("_families", "_prices")

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)
        self._families = sorted(self._prices, key=len, reverse=True)

    @classmethod
    def from_config(cls, config: Config | None = None) -> PriceTable:
        """Built-in prices plus the config's ``[prices]`` tables (keys ``input``, ``output``)."""
        prices = {name: Price(input=i, output=o) for name, (i, o) in _BUILTIN_PRICES.items()}
        for name, values in (config.prices if config is not None else {}).items():
            fields: dict[str, float] = {}
            for key, value in values.items():
                if key not in ("input", "output"):
                    raise ConfigError(f"prices.{name}.{key}: unknown key (known: input, output)")
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    raise ConfigError(f"prices.{name}.{key}: expected a number >= 0, got {value!r}")
                fields[key] = float(value)
            old = prices.get(name)
            if old is None and len(fields) < 2:
                raise ConfigError(f"prices.{name}: a new model needs both input and output")
            merged = {"input": old.input, "output": old.output} if old is not None else {}
            prices[name] = Price(**(merged | fields))
        return cls(prices)

    def get(self, model: str) -> Price | None:
        """The price of ``model`` or of its family (dated snapshots), if known."""
        price = self._prices.get(model)
        if price is None:
            family = match_family(model, self._families)
            price = self._prices.get(family) if family is not None else None
        return price

"""What a request costs the simulator: the tokens it bills and the tokens TPM is charged.

The only place the simulator prices a request, with the client's own ``scheduler.cost.CostModel``
so both sides agree. Billed prompt tokens are the model's text plus image tokens by formula; the
TPM charge is the same estimate plus the completion reserve, with images by formula or at a flat
figure (``SimSettings.image_charge``). The simulator never fetches or opens an image: data URLs
are sized from their own bytes, http(s) URLs are taken to be ``SimSettings.url_image_size``, and
anything else (paths, ``file://``) is refused as a bad request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import ImageFetchError
from ..cost._model import CostModel, RequestCost
from ..images._probe import ImageInfo, probe_image, short_source
from .settings import SimSettings

__all__ = ["Charge", "Pricer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Charge:
    """One request priced: the client-side estimate, its TPM charge and completion allowance."""

    cost: RequestCost
    choices: int
    tokens: int  # what the TPM limit is charged at admission

    @property
    def model(self) -> str:
        """The model the body names (or the configured default)."""
        return self.cost.model

    @property
    def prompt_tokens(self) -> int:
        """Billed input: text plus images by formula."""
        return self.cost.prompt_tokens

    @property
    def max_tokens(self) -> int:
        """The completion allowance of one choice."""
        return self.cost.completion_tokens // self.choices

    @property
    def reserve(self) -> int:
        """The completion reserve included in the charge (max tokens times choices)."""
        return self.cost.completion_tokens


class Pricer:
    """Prices request bodies for one simulator run."""

    def __init__(self, settings: SimSettings) -> None:
        self._settings = settings
        self._model = CostModel(settings.config, probe=self._probe)

    def charge(self, body: Mapping[str, Any], *, endpoint: str) -> Charge:
        """Price a body; raises the cost model's ``InputError`` subclasses for what it cannot."""
        settings = self._settings
        cost = self._model.estimate(body, endpoint=endpoint)
        n = body.get("n")
        choices = n if isinstance(n, int) and n >= 1 else 1
        images = (
            cost.image_tokens
            if settings.image_charge == "formula"
            else settings.image_flat_tokens * len(cost.images)
        )
        return Charge(
            cost=cost, choices=choices, tokens=cost.text_tokens + images + cost.completion_tokens
        )

    def _probe(self, source: str) -> ImageInfo:
        scheme = source[:8].lower()
        if scheme.startswith("data:"):
            return probe_image(source, config=self._settings.config.images)
        if scheme.startswith(("http://", "https://")):
            width, height = self._settings.url_image_size
            return ImageInfo(width=width, height=height, format="png", byte_size=0)
        raise ImageFetchError(short_source(source), "expected a data: or http(s) image URL")

"""Cost: what a request costs in tokens (text, images by model profile, completion reserve)
and in dollars. Pure arithmetic; the only I/O is an injectable image probe."""

from ._estimate import EstimateReport, FailedLine, estimate_jobs
from ._model import CostModel, ImageChange, ImageCost, RequestCost, estimate_cost
from ._prices import Price, PriceTable
from ._profiles import DETAILS, ModelProfile, ProfileTable, match_family
from ._text import CharCounter, TextCounter, TiktokenCounter, load_text_counter
from ._tokens import image_tokens, max_image_tokens, profile_image_tokens, working_size

__all__ = [
    "DETAILS",
    "CharCounter",
    "CostModel",
    "EstimateReport",
    "FailedLine",
    "ImageChange",
    "ImageCost",
    "ModelProfile",
    "Price",
    "PriceTable",
    "ProfileTable",
    "RequestCost",
    "TextCounter",
    "TiktokenCounter",
    "estimate_cost",
    "estimate_jobs",
    "image_tokens",
    "load_text_counter",
    "match_family",
    "max_image_tokens",
    "profile_image_tokens",
    "working_size",
]

"""Preparation: images read, EXIF-oriented and shrunk to the size the model uses, then inlined
into the body to send as data URLs."""

from ._image import (
    API_IMAGE_BYTES,
    BUDGET_METADATA_KEY,
    DecodeBudget,
    DetailChoice,
    PreparedImage,
    PrepareStats,
    check_token_budget,
    choose_detail,
    job_token_budget,
    needs_preparation,
    prepare_image,
)
from ._inline import Inlined, PreparedUpload, PrepareHook, has_heavy_images, inline_local_images
from ._preparer import ImagePreparer, prepare_bodies

__all__ = [
    "API_IMAGE_BYTES",
    "BUDGET_METADATA_KEY",
    "DecodeBudget",
    "DetailChoice",
    "ImagePreparer",
    "Inlined",
    "PrepareHook",
    "PrepareStats",
    "PreparedImage",
    "PreparedUpload",
    "check_token_budget",
    "choose_detail",
    "has_heavy_images",
    "inline_local_images",
    "job_token_budget",
    "needs_preparation",
    "prepare_bodies",
    "prepare_image",
]

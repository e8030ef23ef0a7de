"""Job sources: the lines of OpenAI Batch API or plain JSONL files and folders of images, and
the one walker that reads a request body."""

from ._body import DETAILS, BodyParts, ImageRef, endpoint_kind, walk_body
from ._jobs import (
    ENDPOINTS,
    IMAGE_SUFFIXES,
    FolderPrompt,
    Job,
    detect_format,
    iter_folder_jobs,
    iter_jobs,
    iter_jsonl_jobs,
    parse_line,
)

__all__ = [
    "DETAILS",
    "ENDPOINTS",
    "IMAGE_SUFFIXES",
    "BodyParts",
    "FolderPrompt",
    "ImageRef",
    "Job",
    "detect_format",
    "endpoint_kind",
    "iter_folder_jobs",
    "iter_jobs",
    "iter_jsonl_jobs",
    "parse_line",
    "walk_body",
]

"""Job sources: the lines of OpenAI Batch API or plain JSONL files, and folders of images."""

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
    "ENDPOINTS",
    "IMAGE_SUFFIXES",
    "FolderPrompt",
    "Job",
    "detect_format",
    "iter_folder_jobs",
    "iter_jobs",
    "iter_jsonl_jobs",
    "parse_line",
]

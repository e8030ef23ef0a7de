"""Shared pieces of the Batch API lane tests: image jobs, a config, the simulator in process."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from scheduler import load_config
from scheduler._config import Config, ModelLimitsConfig
from scheduler.cost import CostModel
from scheduler.sim.app import SimApp, create_app
from scheduler.sim.settings import BatchSimSettings, SimSettings

MODEL = "gpt-4o"
SIZES = ((512, 512), (1024, 768), (2048, 1024), (300, 200))


def _data_url(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


IMAGES = [_data_url(w, h) for w, h in SIZES]


def image_body(i: int) -> dict[str, Any]:
    """A vision request: a short prompt and one image of one of four sizes, high detail."""
    content = [
        {"type": "text", "text": f"Describe image #{i}."},
        {"type": "image_url", "image_url": {"url": IMAGES[i % len(IMAGES)], "detail": "high"}},
    ]
    return {"model": MODEL, "max_tokens": 40, "messages": [{"role": "user", "content": content}]}


def write_jobs(path: Path, n: int) -> Path:
    """``n`` image jobs as Batch API input lines."""
    with path.open("w") as fh:
        for i in range(n):
            line = {"custom_id": f"job-{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(json.dumps({**line, "body": image_body(i)}) + "\n")
    return path


def input_tokens(n: int, config: Config | None = None) -> int:
    """The input tokens of the first ``n`` jobs, as the client's cost model prices them."""
    model = CostModel(config or Config())
    return sum(model.estimate(image_body(i)).prompt_tokens for i in range(n))


def lane_config(
    queue: Path, *, queue_tokens: int | None, extra: Mapping[str, Any] | None = None
) -> Config:
    """A config for the lane against the in-process simulator."""
    models = {MODEL: ModelLimitsConfig(batch_queue_tokens=queue_tokens)} if queue_tokens else {}
    return load_config(
        env={"OPENAI_API_KEY": "sk-test"},
        overrides={
            "api.base_url": "http://sim/v1",
            "queue.path": str(queue),
            "limits.models": models,
            "batch.poll_min": 30.0,
            "batch.poll_max": 600.0,
            **(extra or {}),
        },
    )


def sim_app(**batch: Any) -> SimApp:
    """The simulator with Batch API settings (limits high enough for realtime tests)."""
    return create_app(
        SimSettings(tpm=10_000_000, rpm=100_000, seed=7, batch=BatchSimSettings(**batch))
    )


def transport(app: SimApp) -> httpx.ASGITransport:
    """The simulator in process."""
    return httpx.ASGITransport(app=app)

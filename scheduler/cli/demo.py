"""``vsched demo``: the whole drain on this machine, with no API key and no network.

It draws a few hundred sample images of varied sizes, serves the simulator on loopback with a
modest TPM limit, drains the folder through the SQLite queue with the progress bar, and prints
the summary. The files stay in a temporary folder so ``vsched status`` can look at them after.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .._config import Secret
from ..drain._engine import DrainReport
from ..drain._progress import make_renderer
from ..drain._run import run_drain
from ..sources._jobs import FolderPrompt
from .drain import add_drain_flags, drain_overrides, exit_code, run_report
from .flags import config_from_args
from .queue_paths import default_output, default_queue

__all__ = ["SIZES", "make_images", "register", "run"]

# Photo, screenshot, scan and banner shapes: from one 512px tile to images the model shrinks.
SIZES: tuple[tuple[int, int], ...] = (
    (320, 240),
    (512, 512),
    (640, 480),
    (800, 600),
    (1024, 768),
    (1280, 720),
    (1080, 1920),
    (1920, 1080),
    (2048, 1536),
    (600, 2000),
    (3000, 1000),
)


def make_images(folder: Path, count: int, *, seed: int = 0) -> list[Path]:
    """Draw ``count`` sample images (PNG and JPEG, sizes from SIZES) into ``folder``."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(count):
        width, height = rng.choice(SIZES)
        image = Image.new("RGB", (width, height), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = rng.randrange(width), rng.randrange(height)
            w, h = rng.randrange(20, width // 2 + 21), rng.randrange(20, height // 2 + 21)
            box = (x, y, x + w, y + h)
            draw.rectangle(box, fill=tuple(rng.randrange(256) for _ in range(3)))
        suffix = "png" if width * height <= 640 * 480 else "jpg"
        path = folder / f"sample-{number:04d}.{suffix}"
        if suffix == "jpg":
            image.save(path, quality=70)
        else:
            image.save(path)
        paths.append(path)
    return paths


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="drain generated images through the local simulator (no key, no network)",
    )
    parser.add_argument("--images", type=int, default=250, help="images to generate (250)")
    parser.add_argument("--dir", metavar="PATH", help="where to put images, queue and results")
    parser.add_argument("--seed", type=int, default=0, help="seed of the images and the simulator")
    add_drain_flags(parser)
    parser.set_defaults(run=run, tpm=None)


def run(args: argparse.Namespace) -> int:
    """Generate images, serve the simulator on loopback, drain, print the summary."""
    from ..sim.server import running
    from ..sim.settings import SimSettings

    overrides = drain_overrides(args)
    if overrides["limits.tpm"] is None:
        overrides["limits.tpm"] = DEMO_TPM
    if overrides["limits.rpm"] is None:
        overrides["limits.rpm"] = DEMO_RPM
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="vsched-demo-"))
    images = work / "images"
    quiet = overrides["drain.progress"] == "quiet"
    if not quiet:
        print(f"vsched demo: drawing {args.images} sample images in {images}", file=sys.stderr)
    make_images(images, args.images, seed=args.seed)
    base = config_from_args(args, {**overrides, "drain.output": str(work / "results.jsonl")})
    settings = SimSettings(tpm=base.limits.tpm, rpm=base.limits.rpm, seed=args.seed, config=base)
    with running(settings) as sim:
        config = config_from_args(
            args,
            {
                **overrides,
                "drain.output": str(work / "results.jsonl"),
                "api.base_url": sim.base_url,
                "api.api_key": Secret("sk-vsched-demo"),
            },
        )
        output = default_output(images, config)
        queue = default_queue(output, config)
        if not quiet:
            print(
                f"vsched demo: simulator on {sim.base_url} at {config.limits.tpm:,} TPM,"
                f" {config.limits.rpm:,} RPM",
                file=sys.stderr,
            )
        prompt = FolderPrompt(
            prompt="Describe this image in one sentence.", model="gpt-4o", max_tokens=60
        )

        async def main() -> DrainReport:
            return await run_drain(
                config,
                images,
                output=output,
                queue_path=queue,
                folder=prompt,
                renderer=make_renderer(config.drain.progress, interval=config.drain.log_interval),
                handle_signals=True,
            )

        report = run_report(args, main)
    print(report.summary.render())
    print(f"Queue: {queue} (try `vsched status {queue}`)")
    return exit_code(report)


DEMO_TPM = 250_000
DEMO_RPM = 1_000

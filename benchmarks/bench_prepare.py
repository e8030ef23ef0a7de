"""Image preparation on a folder of phone photos: upload bytes before/after and images per second.

Generates (once) ``--count`` 4032x3024 JPEGs, about 3-4 MB each like a phone's, tagged with the
EXIF orientations a phone writes (1, 6, 8, 3), then prepares every one for ``--model`` at
``--detail``:

- ``sequential``: ``prepare_image`` in one thread, one after another (the per-image cost);
- ``preparer``: ``ImagePreparer`` with ``--threads`` worker threads under anyio (what dispatch
  uses), all images submitted at once;
- ``naive`` (with ``--naive``): a full-size decode, ``exif_transpose``, LANCZOS resize and JPEG
  save, without libjpeg's DCT scaling, for comparison.

Run: ``python benchmarks/bench_prepare.py --count 20 --repeat 3``. The load average is printed
before and after: on a shared machine the figures are only as good as it was idle. On Linux each
line also gives the process's peak resident memory over that line's runs (photos held included).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import anyio
from PIL import Image, ImageOps

from scheduler._config import Config, ImagesConfig
from scheduler.images import ImageInfo
from scheduler.prepare import ImagePreparer, PreparedImage, prepare_image

PHONE_SIZE = (4032, 3024)
ORIENTATIONS = (1, 6, 8, 3)


def make_photos(folder: Path, count: int) -> list[Path]:
    """Write ``count`` phone-sized JPEGs (reused if already there) and return their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"IMG_{index:04d}.jpg"
        if not path.exists():
            # A fractal for edges, smooth gradients for sky, sensor-like noise: phone-sized files.
            zoom = 1.0 + index * 0.37
            scene = Image.effect_mandelbrot(
                PHONE_SIZE, (-2 / zoom, -1.2 / zoom, 1 / zoom, 1.2 / zoom), 60
            )
            gradient = Image.linear_gradient("L").resize(PHONE_SIZE)
            colour = Image.merge(
                "RGB", (scene, gradient, gradient.transpose(Image.Transpose.ROTATE_180))
            )
            noise = Image.effect_noise(PHONE_SIZE, 18 + index % 5).convert("RGB")
            photo = Image.blend(colour, noise, 0.25)
            exif = Image.Exif()
            exif[0x0112] = ORIENTATIONS[index % len(ORIENTATIONS)]
            exif[0x010F] = "BenchPhone"
            photo.save(path, format="JPEG", quality=92, exif=exif)
        paths.append(path)
    return paths


def naive_prepare(data: bytes, size: tuple[int, int], quality: int) -> bytes:
    """The obvious way: decode everything, turn, resize, save."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    out = io.BytesIO()
    image.convert("RGB").resize(size, Image.Resampling.LANCZOS).save(out, "JPEG", quality=quality)
    return out.getvalue()


def timed(run: Callable[[], list[PreparedImage] | list[bytes]]) -> tuple[float, list[int]]:
    """Seconds taken by ``run`` and the output sizes."""
    start = time.perf_counter()
    outputs = run()
    elapsed = time.perf_counter() - start
    return elapsed, [len(o.data) if isinstance(o, PreparedImage) else len(o) for o in outputs]


def _reset_peak_rss() -> None:
    """Start the peak-RSS count afresh (Linux only)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float | None:
    """Peak resident memory since the reset (Linux ``VmHWM``), else None."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def main() -> None:
    """Parse flags, generate the folder, and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "vsched-photos")
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--model", default="gpt-4o")
    parser.add_argument("--detail", default="high")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quality", type=int, default=90)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--naive", action="store_true", help="also time a naive PIL pipeline")
    args = parser.parse_args()

    print(f"cpus={os.cpu_count()} load average before: {os.getloadavg()}")
    paths = make_photos(args.dir, args.count)
    photos = [p.read_bytes() for p in paths]
    config = Config(images=ImagesConfig(jpeg_quality=args.quality))
    first = prepare_image(photos[0], model=args.model, detail=args.detail, config=config.images)
    infos = [
        ImageInfo(
            width=PHONE_SIZE[0],
            height=PHONE_SIZE[1],
            format="jpeg",
            byte_size=len(d),
            animated=False,
        )
        for d in photos
    ]

    def sequential() -> list[PreparedImage]:
        return [
            prepare_image(d, model=args.model, detail=args.detail, config=config.images)
            for d in photos
        ]

    def threaded() -> list[PreparedImage]:
        preparer = ImagePreparer(config, threads=args.threads)
        results: list[PreparedImage] = []

        async def one(data: bytes, info: ImageInfo) -> None:
            results.append(await preparer(data, info, detail=args.detail, model=args.model))

        async def all_of_them() -> None:
            async with anyio.create_task_group() as tg:
                for data, info in zip(photos, infos, strict=True):
                    tg.start_soon(one, data, info)

        anyio.run(all_of_them)
        return results

    def naive() -> list[bytes]:
        return [naive_prepare(d, (first.width, first.height), args.quality) for d in photos]

    runs: dict[str, Callable[[], list[PreparedImage] | list[bytes]]] = {
        "sequential": sequential,
        f"preparer x{args.threads}": threaded,
    }
    if args.naive:
        runs["naive"] = naive

    before = sum(map(len, photos))
    print(
        f"{len(photos)} photos {PHONE_SIZE[0]}x{PHONE_SIZE[1]}, {before / len(photos) / 1e6:.2f} MB"
        f" each; {args.model} detail={args.detail} -> {first.width}x{first.height},"
        f" {first.tokens} tokens (unchanged: {first.original_tokens})"
    )
    for name, run in runs.items():
        rates = []
        after = 0
        _reset_peak_rss()
        for _ in range(args.repeat):
            elapsed, sizes = timed(run)
            rates.append(len(photos) / elapsed)
            after = sum(sizes)
        print(
            f"{name:>12}: {statistics.median(rates):6.1f} images/s median of {args.repeat}"
            f" (min {min(rates):.1f}, max {max(rates):.1f});"
            f" upload {before / 1e6:.1f} MB -> {after / 1e6:.2f} MB ({after / before:.1%})"
            + (f"; peak RSS {peak:.0f} MB" if (peak := _peak_rss_mb()) else "")
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()

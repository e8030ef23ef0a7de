"""``vsched sim``: serve the OpenAI-compatible simulator on loopback (uvicorn)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .._config import Config
from .._errors import ConfigError
from ._exit import EXIT_OK
from .flags import add_config_flag, config_from_args

if TYPE_CHECKING:  # the simulator needs the sim extra; import it only when the command runs
    from ..sim.settings import SimSettings

__all__ = ["register", "run", "settings_from_args"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``sim`` subcommand."""
    parser = subparsers.add_parser(
        "sim",
        help="serve an OpenAI-compatible simulator that enforces TPM/RPM",
        description="Serve an OpenAI-compatible simulator that enforces TPM and RPM limits "
        "like the real service, with seeded latency and fault injection.",
    )
    add_config_flag(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (0: any free)")
    parser.add_argument("--tpm", type=int, help="tokens per minute per model (limits.tpm)")
    parser.add_argument("--rpm", type=int, help="requests per minute per model (limits.rpm)")
    parser.add_argument(
        "--model-limit",
        action="append",
        default=[],
        metavar="MODEL=TPM:RPM[:CHARGE]",
        help="limits of one model, and optionally its image charge (repeatable)",
    )
    parser.add_argument(
        "--quantum", type=float, default=1.0, help="seconds the per-minute limit is enforced over"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of latency and faults")
    parser.add_argument("--latency-base", type=float, default=0.2, help="seconds per answer")
    parser.add_argument(
        "--latency-per-token", type=float, default=0.005, help="seconds per completion token"
    )
    parser.add_argument("--jitter", type=float, default=0.2, help="latency jitter, +/- fraction")
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND=RATE",
        help="fault rate; KIND is 500, 502, 503, timeout, drop or malformed (repeatable)",
    )
    parser.add_argument(
        "--hang", type=float, default=120.0, help="seconds a timeout fault waits before dropping"
    )
    parser.add_argument("--budget", type=int, help="billed tokens before insufficient_quota")
    parser.add_argument(
        "--correct-to-usage",
        action="store_true",
        help="give back the unused completion reserve once the answer is known",
    )
    parser.add_argument(
        "--no-count-rejected",
        dest="count_rejected",
        action="store_false",
        help="do not count 429'd requests against RPM",
    )
    parser.add_argument(
        "--image-charge",
        default="formula",
        metavar="formula|N|xF",
        help="TPM charge per image: the documented formula, N tokens flat, or the formula times F",
    )
    parser.add_argument(
        "--rpm-only",
        action="store_true",
        help="enforce only RPM and send no token headers, like a gateway",
    )
    parser.add_argument(
        "--header-lag",
        default="0",
        metavar="S[:S2]",
        help="seconds the remaining/reset headers lag the meters (drawn in S..S2 per answer)",
    )
    parser.add_argument(
        "--network-delay",
        default="0",
        metavar="S[:S2]",
        help="seconds each way between client and meters (drawn in S..S2 per request and way)",
    )
    parser.add_argument(
        "--bill-factor",
        type=float,
        default=1.0,
        metavar="F",
        help="billed image tokens = formula times F (admission unchanged)",
    )
    parser.add_argument(
        "--batch-queue-tokens",
        type=int,
        metavar="N",
        help="Batch API: enqueued input tokens per model (default: unlimited)",
    )
    parser.add_argument(
        "--batch-speed",
        type=float,
        default=5.0,
        metavar="LINES/S",
        help="Batch API: lines a second",
    )
    parser.add_argument(
        "--batch-min-seconds",
        type=float,
        default=60.0,
        metavar="S",
        help="Batch API: shortest run of a batch, after its validation",
    )
    parser.add_argument(
        "--batch-validation",
        type=float,
        default=30.0,
        metavar="S",
        help="Batch API: seconds a batch validates (then the enqueued-token check)",
    )
    parser.add_argument(
        "--batch-window",
        type=float,
        default=86_400.0,
        metavar="S",
        help="Batch API: seconds until a batch expires (the 24h window)",
    )
    parser.add_argument(
        "--batch-line-failure",
        type=float,
        default=0.0,
        metavar="P",
        help="Batch API: share of lines answered with a 500 in the error file",
    )
    parser.add_argument("--api-key", help="the only key accepted (default: any Bearer key)")
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    parser.set_defaults(run=run)


def settings_from_args(args: argparse.Namespace, config: Config) -> SimSettings:
    """Turn the flags (and the config's limits and cost profiles) into SimSettings."""
    from ..sim.settings import BatchSimSettings, FaultRates, LatencyModel, ModelLimits, SimSettings

    model_limits: dict[str, ModelLimits] = {}
    for item in args.model_limit:
        model, _, limits = item.partition("=")
        tpm, _, rest = limits.partition(":")
        rpm, _, charge = rest.partition(":")
        try:
            model_limits[model] = ModelLimits(
                tpm=int(tpm), rpm=int(rpm), image_charge=charge or None
            )
        except ValueError:
            raise ConfigError(f"--model-limit {item!r}: expected MODEL=TPM:RPM[:CHARGE]") from None
    rates: dict[str, float] = {}
    for item in args.fault:
        kind, _, rate = item.partition("=")
        try:
            rates[kind] = float(rate)
        except ValueError:
            raise ConfigError(f"--fault {item!r}: expected KIND=RATE") from None
    lag = _seconds_range("--header-lag", args.header_lag)
    low, high = _seconds_range("--network-delay", args.network_delay)
    network = (low, low if high is None else high)
    return SimSettings(
        tpm=config.limits.tpm,
        rpm=config.limits.rpm,
        quantum=args.quantum,
        seed=args.seed,
        model_limits=model_limits,
        latency=LatencyModel(
            base=args.latency_base, per_token=args.latency_per_token, jitter=args.jitter
        ),
        faults=FaultRates.from_kinds(rates),
        hang=args.hang,
        budget=args.budget,
        correct_to_usage=args.correct_to_usage,
        count_rejected=args.count_rejected,
        image_charge=args.image_charge,
        count_tokens=not args.rpm_only,
        header_lag=lag[0],
        header_lag_max=lag[1],
        network_delay=network,
        bill_factor=args.bill_factor,
        api_key=args.api_key,
        config=config,
        batch=BatchSimSettings(
            queue_tokens=args.batch_queue_tokens,
            lines_per_second=args.batch_speed,
            min_seconds=args.batch_min_seconds,
            validation_seconds=args.batch_validation,
            completion_window=args.batch_window,
            line_failure=args.batch_line_failure,
        ),
    )


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted, then print the run's counters as JSON."""
    try:
        from ..sim.server import bind, serve
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        message = f"the simulator needs the sim extra (pip install 'vsched[sim]'): {exc}"
        raise ConfigError(message) from exc
    config = config_from_args(args, {"limits.tpm": args.tpm, "limits.rpm": args.rpm})
    settings = settings_from_args(args, config)
    sock = bind(args.host, args.port)
    host, port = sock.getsockname()[:2]
    print(
        f"vsched sim: serving http://{host}:{port}/v1 TPM {settings.tpm} RPM {settings.rpm} "
        f"quantum {settings.quantum:g}s seed {settings.seed}",
        file=sys.stderr,
        flush=True,
    )
    app = serve(settings, sock, log_level=args.log_level)
    print(json.dumps({k: v for k, v in app.stats.snapshot().items() if k != "series"}))
    return EXIT_OK


def _seconds_range(flag: str, text: str) -> tuple[float, float | None]:
    """``S`` or ``S:S2`` seconds (None: no ``S2``); a ConfigError naming ``flag`` otherwise."""
    low, _, high = text.partition(":")
    try:
        return float(low), float(high) if high else None
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected S or S:S2") from None

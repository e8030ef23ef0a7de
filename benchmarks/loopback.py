"""The two child processes of a loopback run: ``serve`` (the simulator) and ``client``.

``python -m benchmarks.loopback serve SCENARIO --port N`` serves the scenario's simulator with
uvicorn on 127.0.0.1; ``python -m benchmarks.loopback client SCENARIO CONTENDER --base-url URL``
runs one contender against it and prints one line of JSON. The parent is ``harness.run_loopback``.
The server records the order of its answers (``harness.AnswerLog``, ``GET /bench/answers``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from .harness import AnswerLog, client_main
from .scenarios import SCENARIOS


def serve_logged(settings: Any, port: int) -> None:
    """Serve the simulator, wrapped in an ``AnswerLog``, on 127.0.0.1:``port`` until stopped."""
    import uvicorn

    from scheduler.sim import create_app
    from scheduler.sim.server import DropConnections

    app = DropConnections(AnswerLog(create_app(settings)))
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        http="h11",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=1,
    )
    uvicorn.Server(config).run()


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the simulator or run one client, as the parent asked."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loopback")
    sub = parser.add_subparsers(dest="role", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("scenario", choices=sorted(SCENARIOS))
    serve.add_argument("--port", type=int, required=True)
    client = sub.add_parser("client")
    client.add_argument("scenario", choices=sorted(SCENARIOS))
    client.add_argument("contender")
    client.add_argument("--base-url", required=True)
    client.add_argument("--requests", type=int, required=True)
    args = parser.parse_args(argv)

    if args.role == "serve":
        spec = SCENARIOS[args.scenario].spec("loopback", quick=True)
        serve_logged(spec.sim_settings(), args.port)
        return 0
    logging.getLogger("scheduler").setLevel(logging.ERROR)
    spec = dataclasses.replace(
        SCENARIOS[args.scenario].spec("loopback", quick=True), requests=args.requests
    )
    print(json.dumps(client_main(spec, args.contender, args.base_url)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

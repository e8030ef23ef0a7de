"""``vsched sim``: flags into settings, and the served process end to end."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import httpx
import pytest

from scheduler import ConfigError, load_config
from scheduler.cli import build_parser
from scheduler.cli.sim import settings_from_args
from scheduler.sim import FaultRates, ModelLimits
from scheduler.sim.pricing import ImageCharge


def test_flags_become_settings() -> None:
    """Every knob on the command line lands in SimSettings."""
    args = build_parser().parse_args(
        [
            "sim",
            "--quantum=2",
            "--seed=9",
            "--fault=503=0.1",
            "--fault=drop=0.05",
            "--model-limit=gpt-4o-mini=2000:20",
            "--image-charge=300",
            "--budget=5000",
            "--correct-to-usage",
            "--no-count-rejected",
            "--jitter=0",
        ]
    )
    settings = settings_from_args(args, load_config(env={}, overrides={"limits.tpm": 1234}))
    assert settings.tpm == 1234
    assert settings.quantum == 2.0
    assert settings.seed == 9
    assert settings.faults == FaultRates(unavailable=0.1, drop=0.05)
    assert settings.limits_for("gpt-4o-mini") == ModelLimits(tpm=2000, rpm=20)
    assert settings.image_charge_for("gpt-4o") == ImageCharge(flat=300)
    assert settings.budget == 5000
    assert settings.correct_to_usage
    assert not settings.count_rejected
    assert settings.latency.jitter == 0.0


@pytest.mark.parametrize(
    "flag",
    [
        "--fault=nope=0.1",
        "--fault=drop=x",
        "--model-limit=m=1",
        "--image-charge=lots",
        "--image-charge=x0",
        "--image-charge=-5",
        "--model-limit=m=100:10:xx",
        "--header-lag=1:x",
        "--header-lag=2:1",
        "--network-delay=x",
        "--network-delay=0.2:0.1",
        "--bill-factor=0",
    ],
)
def test_bad_flags_are_config_errors(flag: str) -> None:
    """A malformed flag is a ConfigError naming it, not a traceback."""
    args = build_parser().parse_args(["sim", flag])
    with pytest.raises(ConfigError):
        settings_from_args(args, load_config(env={}))


def test_referee_flags_become_settings() -> None:
    """--image-charge xF, --rpm-only, --header-lag S:S2, --network-delay S:S2, --bill-factor and a
    per-model charge."""
    args = build_parser().parse_args(
        [
            "sim",
            "--image-charge=x0.7",
            "--rpm-only",
            "--header-lag=0.5:2",
            "--network-delay=0.01:0.04",
            "--bill-factor=1.5",
            "--model-limit=gpt-4o-mini=2000:20:843",
        ]
    )
    settings = settings_from_args(args, load_config(env={}))
    assert settings.image_charge_for("gpt-4o") == ImageCharge(factor=0.7)
    assert settings.image_charge_for("gpt-4o-mini") == ImageCharge(flat=843)
    assert not settings.count_tokens
    assert (settings.header_lag, settings.header_lag_max) == (0.5, 2.0)
    assert settings.network_delay == (0.01, 0.04)
    assert settings.bill_factor == 1.5


def test_default_flags_keep_the_plain_referee() -> None:
    """Without the new flags the sim charges by formula, counts tokens, lags nothing."""
    settings = settings_from_args(build_parser().parse_args(["sim"]), load_config(env={}))
    assert settings.image_charge_for("gpt-4o") == ImageCharge()
    assert settings.count_tokens
    assert (settings.header_lag, settings.header_lag_max, settings.bill_factor) == (0, None, 1)
    assert settings.network_delay == (0, 0)


@pytest.mark.e2e
def test_vsched_sim_serves_until_interrupted() -> None:
    """The command serves on a free port, answers, and prints its counters on Ctrl-C."""
    command = [sys.executable, "-m", "scheduler", "sim", "--port=0", "--tpm=5000", "--rpm=50"]
    process = subprocess.Popen(
        [*command, "--latency-base=0", "--latency-per-token=0", "--log-level=warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        banner = process.stderr.readline()
        match = re.search(r"(http://\S+/v1)", banner)
        assert match, banner
        response = httpx.post(
            f"{match.group(1)}/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": "Bearer sk-test"},
            timeout=10,
        )
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit-tokens"] == "5000"
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    assert json.loads(out)["completed"] == 1

"""Job-file estimates: price tables, totals, drain time, and the ``vsched estimate`` command."""

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from scheduler import Config, ConfigError
from scheduler.cli import main
from scheduler.cost import EstimateReport, Price, PriceTable, RequestCost


def image_url(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat_body(url: str, *, model: str = "gpt-4o", detail: str = "high") -> dict[str, Any]:
    part = {"type": "image_url", "image_url": {"url": url, "detail": detail}}
    return {
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "abcd"}, part]}],
    }


def write_jsonl(path: Path, lines: list[Any]) -> Path:
    path.write_text("".join(x if isinstance(x, str) else json.dumps(x) + "\n" for x in lines))
    return path


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", Price(input=2.5, output=10.0)),
        ("gpt-4o-2024-08-06", Price(input=2.5, output=10.0)),
        ("gpt-4.1-mini-2025-04-14", Price(input=0.4, output=1.6)),
        ("my-model", None),
    ],
)
def test_builtin_prices_resolve_snapshots(model: str, expected: Price | None) -> None:
    """Prices are looked up by model, then by family for dated snapshots."""
    assert PriceTable.from_config().get(model) == expected


def test_config_prices_override_and_extend() -> None:
    """[prices.*] changes given keys of a known model and adds new models."""
    config = Config(prices={"gpt-4o": {"input": 1}, "my-model": {"input": 3, "output": 4}})
    table = PriceTable.from_config(config)
    assert table.get("gpt-4o") == Price(input=1.0, output=10.0)
    assert table.get("my-model") == Price(input=3.0, output=4.0)


@pytest.mark.parametrize(
    ("prices", "needle"),
    [
        ({"gpt-4o": {"inptu": 1}}, r"prices\.gpt-4o\.inptu: unknown key"),
        ({"gpt-4o": {"input": "cheap"}}, r"prices\.gpt-4o\.input: expected a number"),
        ({"gpt-4o": {"output": -1}}, r"prices\.gpt-4o\.output: expected a number >= 0"),
        ({"new": {"input": 1}}, r"prices\.new: a new model needs both"),
    ],
)
def test_price_config_errors(prices: dict[str, Any], needle: str) -> None:
    """A bad [prices.*] entry is a ConfigError naming the key."""
    with pytest.raises(ConfigError, match=needle):
        PriceTable.from_config(Config(prices=prices))


@pytest.mark.parametrize(
    ("tokens", "requests", "tpm", "rpm", "seconds"),
    [
        (30_000, 10, 30_000, 500, 60.0),  # token-bound
        (1_000, 1_000, 30_000, 500, 120.0),  # request-bound
        (0, 0, 1, 1, 0.0),
    ],
)
def test_drain_seconds(tokens: int, requests: int, tpm: int, rpm: int, seconds: float) -> None:
    """The minimum drain time is the slower of the token and the request limits."""
    report = EstimateReport(requests=requests, text_tokens=tokens)
    assert report.drain_seconds(tpm=tpm, rpm=rpm) == seconds


def test_price_of_a_request() -> None:
    """Prompt tokens are priced at the input rate and the reserve at the output rate."""
    cost = RequestCost(model="m", text_tokens=500_000, image_tokens=500_000, completion_tokens=10)
    assert Price(input=2.0, output=100_000.0).of(cost) == 3.0


def test_cli_plain_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A clean plain file prints every figure and exits 0."""
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_body(image_url(1024, 1024))] * 3)
    assert main(["estimate", str(path), "--tpm", "60000", "--rpm", "60"]) == 0
    out = capsys.readouterr().out
    assert "3 requests, 0 failed lines" in out
    assert "Images: 3\n" in out
    assert "images 2,295" in out  # 3 x 765
    assert "completion reserve 300" in out
    assert "Minimum drain time at 60,000 TPM / 60 RPM: 3.0s" in out


def test_cli_batch_file_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Batch API lines are read, --json is machine-readable, and a config sets the prices."""
    lines = [
        {"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        for i, body in enumerate(
            [chat_body(image_url(2048, 4096)), chat_body(image_url(64, 64), detail="low")]
        )
    ]
    path = write_jsonl(tmp_path / "batch.jsonl", lines)
    config = tmp_path / "vsched.toml"
    config.write_text(
        "[prices.gpt-4o]\ninput = 1.0\noutput = 2.0\n[cost]\ntext_counter = 'chars'\n"
    )
    assert main(["estimate", str(path), "--json", "--config", str(config)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["requests"] == 2
    assert report["image_tokens"] == 1105 + 85
    assert report["completion_tokens"] == 200
    text = report["text_tokens"]
    assert report["price_usd"] == pytest.approx(((text + 1190) * 1.0 + 200 * 2.0) / 1e6)
    assert report["failed_lines"] == []


def test_cli_bad_lines_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad lines are listed with their numbers, the rest is estimated, and the exit code is 1."""
    lines: list[Any] = [
        chat_body(image_url(512, 512)),
        "{not json\n",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
        chat_body("data:image/png;base64,@@@@"),
        chat_body("https://img.example/a.png"),
        chat_body(image_url(64, 64), model="no-such-model"),
    ]
    path = write_jsonl(tmp_path / "jobs.jsonl", lines)
    assert main(["estimate", str(path), "--no-fetch"]) == 1
    out = capsys.readouterr().out
    assert "2 requests, 4 failed lines" in out
    assert "(1 of unknown size, charged their detail's maximum)" in out
    for needle in ("line 2: not valid JSON", "line 3: ", "input_audio", "line 4: image data:"):
        assert needle in out
    assert "line 6: model 'no-such-model'" in out


def test_cli_request_over_the_tpm_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A request larger than --tpm can never be admitted, so it is a failed line."""
    path = write_jsonl(tmp_path / "jobs.jsonl", [chat_body(image_url(1024, 1024))])
    assert main(["estimate", str(path), "--tpm", "500", "--json"]) == 1
    (failed,) = json.loads(capsys.readouterr().out)["failed_lines"]
    assert failed["line"] == 1 and "more than the TPM limit (500)" in failed["reason"]


def test_cli_failed_batch_lines_name_their_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed Batch API line is listed with its custom_id as well as its line number."""
    line = {
        "custom_id": "invoice-17",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": chat_body("data:image/png;base64,@@@@"),
    }
    path = write_jsonl(tmp_path / "batch.jsonl", [line])
    assert main(["estimate", str(path)]) == 1
    assert "  invoice-17: line 1: image data:" in capsys.readouterr().out

"""A hostile but fair user's expectations (issue 15), each one row, through the CLI where met.

Most rows run ``vsched`` in-process against the simulator served on loopback; signals, broken
pipes and disk limits run it as a subprocess. A bad job fails alone with a stable code, an
operational fault stops cleanly with jobs intact, and no form of the key is ever written out.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import resource
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from scheduler import ConfigError, Request, Scheduler, load_config, run_batch
from scheduler.cli import (
    EXIT_FAILED,
    EXIT_FATAL,
    EXIT_OK,
    EXIT_STOPPED,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    main,
)
from scheduler.cost import CostModel
from scheduler.dispatch import ERROR_CODES
from scheduler.queues import SqliteQueue
from scheduler.sim.server import RunningSim, running
from scheduler.sim.settings import LatencyModel, SimSettings

KEY = "sk-hostile-0123456789abcdef"
FAST = LatencyModel(base=0.005, per_token=0.0, jitter=0.0)


# --- the simulator and the in-process CLI ----------------------------------------------------


@pytest.fixture(scope="module")
def sim() -> Iterator[RunningSim]:
    """A simulator on loopback that accepts only KEY, with limits a drain never reaches."""
    with running(SimSettings(tpm=10_000_000, rpm=100_000, latency=FAST, api_key=KEY)) as server:
        yield server


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No VSCHED_* or OPENAI_* from the developer's shell; the simulator's key."""
    for name in list(os.environ):
        if name.startswith(("VSCHED_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def vsched(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``vsched argv`` in-process: (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def drain_args(source: Path, sim: RunningSim, *extra: str) -> list[str]:
    """``vsched drain`` against the simulator, quietly, with generous limits."""
    return [
        "drain",
        str(source),
        "--base-url",
        sim.base_url,
        "--tpm",
        "10000000",
        "--rpm",
        "100000",
        "--progress",
        "log",
        *extra,
    ]


def chat(text: str = "hi", **extra: Any) -> dict[str, Any]:
    """A small valid chat body."""
    return {
        "model": "gpt-4o",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def with_image(url: Any, **part: Any) -> dict[str, Any]:
    """A chat body with one image part."""
    content = [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": url, **part}]
    return {"model": "gpt-4o", "max_tokens": 16, "messages": [{"role": "user", "content": content}]}


def write_lines(path: Path, lines: list[Any]) -> Path:
    """A JSONL file: objects are dumped, strings written as they are."""
    text = "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines)
    path.write_text(text)
    return path


def results(path: Path) -> dict[str, dict[str, Any]]:
    """The results file by custom_id."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return {row["custom_id"]: row for row in rows}


def counts(queue: Path) -> dict[str, int]:
    """Jobs per state in a queue file."""
    with SqliteQueue(queue, readonly=True) as q:
        return dict(q.counts())


def digest(path: Path) -> str:
    """The SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- 1. bad bodies: each fails alone, with a stable code, never sent -------------------------


def _png(path: Path, size: tuple[int, int] = (40, 30)) -> Path:
    Image.new("RGB", size, (10, 20, 30)).save(path)
    return path


# (id, the line's body, expected error.code or "ok", a word the message must hold)
BODIES: list[tuple[str, Any, str, str]] = [
    (
        "tool_calls_int",
        {**chat(), "messages": [{"role": "assistant", "tool_calls": 5}]},
        "unsupported_content",
        "tool_calls",
    ),
    ("stream_true", chat(stream=True), "unsupported_content", "streaming is not supported"),
    ("stream_text", chat(stream="yes"), "unsupported_content", "stream"),
    (
        "messages_dict",
        {"model": "gpt-4o", "messages": {"role": "user"}},
        "unsupported_content",
        "messages",
    ),
    ("message_int", {"model": "gpt-4o", "messages": [5]}, "unsupported_content", "messages[0]"),
    (
        "content_int",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": 5}]},
        "unsupported_content",
        "content",
    ),
    (
        "role_int",
        {"model": "gpt-4o", "messages": [{"role": 7, "content": "x"}]},
        "unsupported_content",
        "role",
    ),
    (
        "name_list",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "x", "name": []}]},
        "unsupported_content",
        "name",
    ),
    (
        "part_string",
        {"model": "gpt-4o", "messages": [{"role": "user", "content": ["x"]}]},
        "unsupported_content",
        "content part",
    ),
    (
        "part_audio",
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
        },
        "unsupported_content",
        "input_audio",
    ),
    (
        "text_part_int",
        {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}],
        },
        "unsupported_content",
        "text",
    ),
    ("image_url_int", with_image(5), "unsupported_content", "image_url"),
    (
        "image_detail_bad",
        with_image({"url": "https://example.invalid/a.png", "detail": "ultra"}),
        "unsupported_content",
        "detail",
    ),
    ("max_tokens_negative", chat(max_tokens=-1), "unsupported_content", "max_tokens"),
    ("max_tokens_text", chat(max_tokens="10"), "unsupported_content", "max_tokens"),
    ("max_tokens_bool", chat(max_tokens=True), "unsupported_content", "max_tokens"),
    (
        "max_completion_float",
        chat(max_completion_tokens=1.5),
        "unsupported_content",
        "max_completion_tokens",
    ),
    ("n_zero", chat(n=0), "unsupported_content", "n:"),
    ("n_text", chat(n="2"), "unsupported_content", "n:"),
    ("model_int", {**chat(), "model": 4}, "unsupported_content", "model"),
    ("model_unknown", "UNKNOWN_MODEL_IMAGE", "unknown_model", "mystery-model-9"),
    ("too_large", chat(max_tokens=50_000_000), "request_too_large", "per minute"),
    (
        "budget_text",
        {**chat(), "metadata": {"image_token_budget": "lots"}},
        "invalid_input",
        "image_token_budget",
    ),
    ("responses_input_int", {"model": "gpt-4o", "input": 5}, "unsupported_content", "input"),
    (
        "responses_item_kind",
        {"model": "gpt-4o", "input": [{"type": "weird"}]},
        "unsupported_content",
        "weird",
    ),
    (
        "responses_image_nothing",
        {"model": "gpt-4o", "input": [{"role": "user", "content": [{"type": "input_image"}]}]},
        "unsupported_content",
        "input_image",
    ),
    (
        "responses_instructions_int",
        {"model": "gpt-4o", "input": "x", "instructions": 1},
        "unsupported_content",
        "instructions",
    ),
    ("image_missing_file", "MISSING_IMAGE", "image_not_found", "missing.png"),
    ("image_corrupt", "CORRUPT_IMAGE", "corrupt_image", "corrupt.png"),
    ("image_text_file", "TEXT_IMAGE", "unsupported_image", "notes.png"),
    ("image_bad_base64", with_image("data:image/png;base64,@@@@"), "corrupt_image", "base64"),
    ("image_ftp", with_image("ftp://example.invalid/a.png"), "image_unreadable", "scheme"),
    ("image_http_404", "HTTP_404", "image_not_found", "404"),
    ("image_http_not_image", "HTTP_NOT_IMAGE", "unsupported_image", "sim/stats"),
    ("image_host_unreachable", with_image("http://127.0.0.1:9/none.png"), "ok", ""),
    ("ok_chat", chat("fine"), "ok", ""),
    ("ok_responses", {"model": "gpt-4o", "input": "fine", "max_output_tokens": 16}, "ok", ""),
    ("ok_local_image", "GOOD_IMAGE", "ok", ""),
    ("ok_unicode_metadata", {**chat("héllo ✓"), "metadata": {"who": "ünïcode ✓"}}, "ok", ""),
    ("ok_n_two", chat(n=2), "ok", ""),
    ("ok_stream_false", chat(stream=False), "ok", ""),
]


def _materialise(body: Any, folder: Path, sim: RunningSim) -> Any:
    root = sim.base_url.removesuffix("/v1")
    if body == "MISSING_IMAGE":
        return with_image({"url": str(folder / "missing.png")})
    if body == "CORRUPT_IMAGE":
        corrupt = folder / "corrupt.png"
        corrupt.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
        return with_image({"url": corrupt.as_uri()})
    if body == "TEXT_IMAGE":
        notes = folder / "notes.png"
        notes.write_text("these are notes, not an image\n" * 20)
        return with_image({"url": notes.as_uri()})
    if body == "HTTP_404":
        return with_image({"url": f"{root}/images/missing.png"})
    if body == "HTTP_NOT_IMAGE":
        return with_image({"url": f"{root}/sim/stats"})
    if body == "UNKNOWN_MODEL_IMAGE":
        image = with_image({"url": _png(folder / "good.png").as_uri()})
        return {**image, "model": "mystery-model-9"}
    if body == "GOOD_IMAGE":
        return with_image({"url": _png(folder / "good.png").as_uri()})
    return body


@pytest.fixture(scope="module")
def corpus(
    sim: RunningSim, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, str, dict[str, dict[str, Any]], Path]:
    """One drain of a plain file holding every BODIES row (line i+1 is row i)."""
    folder = tmp_path_factory.mktemp("corpus")
    lines = [_materialise(body, folder, sim) for _, body, _, _ in BODIES]
    source = write_lines(folder / "corpus.jsonl", lines)
    with pytest.MonkeyPatch.context() as mp:
        for name in list(os.environ):
            if name.startswith(("VSCHED_", "OPENAI_")):
                mp.delenv(name)
        mp.setenv("OPENAI_API_KEY", KEY)
        code = main(drain_args(source, sim, "--tpm", "200000"))
    return code, "", results(folder / "corpus.results.jsonl"), folder


@pytest.mark.parametrize(
    ("row", "expected", "word"),
    [(i, code, word) for i, (_, _, code, word) in enumerate(BODIES)],
    ids=[name for name, *_ in BODIES],
)
def test_each_bad_body_fails_alone_with_its_code(
    corpus: tuple[int, str, dict[str, dict[str, Any]], Path], row: int, expected: str, word: str
) -> None:
    """Each hostile body fails alone, before sending, with a stable code; good ones are done."""
    code, _, by_id, _ = corpus
    assert code == EXIT_FAILED
    result = by_id[str(row + 1)]
    if expected == "ok":
        assert result["error"] is None, result["error"]
        assert result["response"]["status_code"] == 200
        return
    error = result["error"]
    assert error["code"] == expected, error
    assert error["code"] in ERROR_CODES
    assert error["line"] == row + 1
    assert error["message"].startswith(f"line {row + 1}: ")
    assert word in error["message"], error["message"]
    if expected not in ("bad_request",):
        assert result["attempts"] == 0, "refused before sending: never billed"
        assert result["response"] is None


def test_corpus_keeps_the_metadata_and_every_line_once(
    corpus: tuple[int, str, dict[str, dict[str, Any]], Path],
) -> None:
    """Every line appears exactly once, unicode metadata intact."""
    _, _, by_id, _ = corpus
    assert len(by_id) == len(BODIES)
    row = next(i for i, (name, *_) in enumerate(BODIES) if name == "ok_unicode_metadata")
    assert by_id[str(row + 1)]["metadata"] == {"who": "ünïcode ✓"}


def test_tool_calls_int_then_resume_finishes(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`"tool_calls": 5` fails that job; the others are done; a resume exits 1 and sends nothing."""
    bad = {**chat(), "messages": [{"role": "assistant", "content": "x", "tool_calls": 5}]}
    source = write_lines(tmp_path / "jobs.jsonl", [chat("a"), bad, chat("c")])
    code, _, err = vsched(capsys, *drain_args(source, sim))
    assert code == EXIT_FAILED, err
    by_id = results(tmp_path / "jobs.results.jsonl")
    assert [by_id[i]["error"] is None for i in "123"] == [True, False, True]
    assert by_id["2"]["error"]["code"] == "unsupported_content"
    before = sim.app.stats.requests
    code, _, err = vsched(capsys, *drain_args(source, sim))
    assert code == EXIT_FAILED
    assert "resuming" in err
    assert sim.app.stats.requests == before
    assert len(results(tmp_path / "jobs.results.jsonl")) == 3


# --- 2. batch-format lines: ids that cannot collide --------------------------------------------


def _batch(custom_id: Any, body: Any = None, **extra: Any) -> dict[str, Any]:
    line = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
    return {**line, "body": chat() if body is None else body, **extra}


BATCH_LINES: list[tuple[str, Any, str | None]] = [
    ("1", _batch("job-a"), None),
    ("2", "{not json", "line-2"),
    ("3", _batch(5), "line-3"),
    ("4", _batch(""), "line-4"),
    ("5", _batch("job-e", method="GET"), "job-e"),
    ("6", _batch("job-f", url="/v1/embeddings"), "job-f"),
    ("7", _batch("job-g", body=[1]), "job-g"),
    ("8", _batch("job-a"), "job-a@line8"),
    ("9", _batch("2"), None),
    ("10", "[1, 2]", "line-10"),
    ("11", _batch("line-x"), None),
]


@pytest.fixture(scope="module")
def batch_corpus(
    sim: RunningSim, tmp_path_factory: pytest.TempPathFactory
) -> tuple[int, list[dict[str, Any]]]:
    """One drain of a Batch API file with malformed, duplicate and colliding lines."""
    folder = tmp_path_factory.mktemp("batch")
    source = write_lines(folder / "batch.jsonl", [line for _, line, _ in BATCH_LINES])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", KEY)
        code = main(drain_args(source, sim))
    rows = [json.loads(x) for x in (folder / "batch.results.jsonl").read_text().splitlines()]
    return code, rows


@pytest.mark.parametrize(("line", "failed_key"), [(n, k) for n, _, k in BATCH_LINES])
def test_batch_lines_fail_alone_and_never_take_another_jobs_id(
    batch_corpus: tuple[int, list[dict[str, Any]]], line: str, failed_key: str | None
) -> None:
    """A malformed line gets `line-N`, so a valid job with id "2" still runs; duplicates fail."""
    code, rows = batch_corpus
    assert code == EXIT_FAILED
    assert len(rows) == len(BATCH_LINES)
    mine = [r for r in rows if (r["error"] or {}).get("line") == int(line)]
    if failed_key is None:
        assert not mine
        return
    assert len(mine) == 1
    assert mine[0]["custom_id"] == failed_key.split("@")[0]
    assert mine[0]["error"]["code"] == "invalid_request"
    assert mine[0]["attempts"] == 0


def test_valid_id_equal_to_a_malformed_line_number_is_done(
    batch_corpus: tuple[int, list[dict[str, Any]]],
) -> None:
    """custom_id "2" (line 9) is done although line 2 is malformed."""
    _, rows = batch_corpus
    two = [r for r in rows if r["custom_id"] == "2"]
    assert len(two) == 1 and two[0]["error"] is None


# --- 3. usage errors: exit 2 before anything is sent ------------------------------------------


def _sent(sim: RunningSim) -> int:
    return int(sim.app.stats.requests)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("output_is_input", "is the input"),
        ("output_is_queue", "is the queue file"),
        ("queue_is_input", "is the input"),
        ("output_parent_is_a_file", "cannot write"),
        ("output_is_a_folder", "is a folder"),
        ("missing_input", "no such file"),
        ("foreign_queue", "not a vsched queue"),
        ("text_file_queue", "not a vsched queue"),
        ("other_input_same_queue", "holds the jobs of"),
        ("folder_without_prompt", "--prompt"),
        ("bad_base_url", "api.base_url"),
        ("burst_below_margin", "limits.margin_seconds"),
        ("tpm_zero", "limits.tpm"),
        ("key_with_inner_space", "OPENAI_API_KEY"),
        ("key_in_config_file", "OPENAI_API_KEY"),
        ("unknown_config_key", "unknown key"),
        ("config_missing", "does not exist"),
    ],
)
def test_usage_errors_exit_2_before_sending(
    sim: RunningSim,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: str,
    message: str,
) -> None:
    """Each wrong invocation exits 2 with a one-line message, sends nothing, destroys nothing."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat("a"), chat("b")])
    original = digest(source)
    extra: list[str] = []
    target = source
    config = tmp_path / "vsched.toml"
    if case == "output_is_input":
        extra = ["-o", str(source)]
    elif case == "output_is_queue":
        extra = ["-o", str(tmp_path / "q.sqlite"), "--queue", str(tmp_path / "q.sqlite")]
    elif case == "queue_is_input":
        extra = ["--queue", str(source)]
    elif case == "output_parent_is_a_file":
        (tmp_path / "afile").write_text("x")
        extra = ["-o", str(tmp_path / "afile" / "out.jsonl")]
    elif case == "output_is_a_folder":
        (tmp_path / "outdir").mkdir()
        extra = ["-o", str(tmp_path / "outdir")]
    elif case == "missing_input":
        target = tmp_path / "nope.jsonl"
    elif case in ("foreign_queue", "text_file_queue"):
        foreign = tmp_path / "app.db"
        if case == "foreign_queue":
            with sqlite3.connect(foreign) as db:
                db.execute("CREATE TABLE users (name TEXT)")
                db.execute("INSERT INTO users VALUES ('ada')")
        else:
            foreign.write_text("SQLite format 3 is what this file pretends to be" * 100)
        extra = ["--queue", str(foreign)]
    elif case == "other_input_same_queue":
        other = write_lines(tmp_path / "other.jsonl", [chat("z")])
        assert main(drain_args(other, sim, "--queue", str(tmp_path / "q.sqlite"))) == EXIT_OK
        capsys.readouterr()
        extra = ["--queue", str(tmp_path / "q.sqlite")]
    elif case == "folder_without_prompt":
        (tmp_path / "pics").mkdir()
        _png(tmp_path / "pics" / "a.png")
        target = tmp_path / "pics"
    elif case == "bad_base_url":
        extra = ["--base-url", "ftp://example.invalid"]
    elif case == "burst_below_margin":
        config.write_text("[limits]\nburst_seconds = 0.01\nmargin_seconds = 0.05\n")
        extra = ["--config", str(config)]
    elif case == "tpm_zero":
        extra = ["--tpm", "0"]
    elif case == "key_with_inner_space":
        monkeypatch.setenv("OPENAI_API_KEY", "sk-abc def")
    elif case == "key_in_config_file":
        config.write_text('[api]\napi_key = "sk-in-a-file"\n')
        extra = ["--config", str(config)]
    elif case == "unknown_config_key":
        config.write_text("[limits]\ntmp = 5\n")
        extra = ["--config", str(config)]
    elif case == "config_missing":
        extra = ["--config", str(tmp_path / "missing.toml")]
    before = _sent(sim)
    foreign_before = digest(tmp_path / "app.db") if (tmp_path / "app.db").exists() else None
    code, out, err = vsched(capsys, *drain_args(target, sim), *extra)
    assert code == EXIT_USAGE, (out, err)
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, "one line, no traceback"
    assert "Traceback" not in err
    assert _sent(sim) == before, "nothing was sent"
    assert digest(source) == original, "the input is never touched"
    if foreign_before is not None:
        assert digest(tmp_path / "app.db") == foreign_before, "a foreign file is never modified"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("app.db")) == [
            "app.db"
        ]


def test_missing_output_and_queue_folders_are_created(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """-o and --queue in folders that do not exist yet: made, and the drain succeeds."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat("a")])
    out = tmp_path / "new" / "deeper" / "out.jsonl"
    queue = tmp_path / "other" / "q.sqlite"
    code, _, err = vsched(capsys, *drain_args(source, sim, "-o", str(out), "--queue", str(queue)))
    assert code == EXIT_OK, err
    assert len(results(out)) == 1
    assert counts(queue)["done"] == 1


def test_an_empty_file_is_accepted_as_a_new_queue(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An empty --queue file (touch q.sqlite) becomes the queue."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat("a")])
    queue = tmp_path / "q.sqlite"
    queue.touch()
    code, _, err = vsched(capsys, *drain_args(source, sim, "--queue", str(queue)))
    assert code == EXIT_OK, err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_read_only_output_folder_is_refused_before_sending(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A read-only output folder exits 2 before a single request is sent."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat("a")])
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        before = _sent(sim)
        code, _, err = vsched(capsys, *drain_args(source, sim, "-o", str(locked / "out.jsonl")))
        assert code == EXIT_USAGE
        assert "cannot write" in err
        assert _sent(sim) == before
    finally:
        locked.chmod(0o700)


# --- 4. status, export, retry-failed never damage anything ------------------------------------


@pytest.fixture
def drained(sim: RunningSim, tmp_path: Path) -> tuple[Path, Path]:
    """A finished drain: (input, queue)."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat("a"), chat(max_tokens=-1), chat("c")])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_API_KEY", KEY)
        assert main(drain_args(source, sim)) == EXIT_FAILED
    return source, tmp_path / "jobs.queue.sqlite"


@pytest.mark.parametrize("command", ["status", "status --json", "export"])
def test_reading_commands_never_write_the_queue(
    drained: tuple[Path, Path], capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """status and export open the queue read-only: its bytes are unchanged."""
    _, queue = drained
    before = digest(queue)
    capsys.readouterr()
    code, out, _ = vsched(capsys, *command.split(), str(queue))
    assert code == EXIT_OK
    assert digest(queue) == before
    if command == "status --json":
        assert json.loads(out)["counts"]["failed"] == 1


@pytest.mark.parametrize("command", ["status", "export", "retry-failed"])
def test_queue_commands_refuse_a_foreign_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Pointed at another program's SQLite file, they exit 2 and leave it as it was."""
    foreign = tmp_path / "app.sqlite"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE orders (id INTEGER)")
    before = digest(foreign)
    code, _, err = vsched(capsys, command, str(foreign))
    assert code == EXIT_USAGE
    assert "not a vsched queue" in err
    assert digest(foreign) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.sqlite"]


@pytest.mark.parametrize("damage", ["garbage_pages", "truncated"])
def test_a_damaged_queue_is_a_one_line_error(
    drained: tuple[Path, Path], capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """Corrupt pages or a cut file: one line naming the queue, exit 2, no traceback."""
    _, queue = drained
    data = bytearray(queue.read_bytes())
    if damage == "garbage_pages":
        data[100:] = os.urandom(len(data) - 100)
    else:
        data = data[: len(data) // 3]
    for side in (".sqlite-wal", ".sqlite-shm"):
        Path(str(queue).removesuffix(".sqlite") + side).unlink(missing_ok=True)
    queue.write_bytes(bytes(data))
    capsys.readouterr()
    code, _, err = vsched(capsys, "status", str(queue))
    assert code == EXIT_USAGE, err
    assert str(queue) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# --- 5. edited lines ---------------------------------------------------------------------------


def test_an_edited_failed_line_is_reloaded_and_sent(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed job whose line is fixed is reloaded (and said so) and sent on the next drain."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat("a"), chat(max_tokens=-1)])
    assert vsched(capsys, *drain_args(source, sim))[0] == EXIT_FAILED
    write_lines(source, [chat("a"), chat("fixed", metadata={"v": 2})])
    code, _, err = vsched(capsys, *drain_args(source, sim))
    assert code == EXIT_OK, err
    assert "reloaded 1 jobs" in err
    row = results(tmp_path / "jobs.results.jsonl")["2"]
    assert row["error"] is None and row["metadata"] == {"v": 2}


def test_an_edited_done_line_is_reported_not_resent(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A done job whose line changed keeps its result, and the drain says so."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat("a"), chat("b")])
    assert vsched(capsys, *drain_args(source, sim))[0] == EXIT_OK
    before = _sent(sim)
    write_lines(source, [chat("a"), chat("b changed")])
    code, _, err = vsched(capsys, *drain_args(source, sim))
    assert code == EXIT_OK
    assert "1 done jobs have a changed line (2)" in err
    assert _sent(sim) == before


def test_an_edited_pending_line_is_sent_as_edited(
    tmp_path: Path, sim: RunningSim, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """Jobs left pending (a 401 stop) whose line is edited are sent from the new line."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat("a", metadata={"v": 1})])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-key-000000")
    assert vsched(capsys, *drain_args(source, sim))[0] == EXIT_FATAL
    assert counts(tmp_path / "jobs.queue.sqlite")["pending"] == 1
    write_lines(source, [chat("a", metadata={"v": 2})])
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    code, _, err = vsched(capsys, *drain_args(source, sim))
    assert code == EXIT_OK, err
    assert results(tmp_path / "jobs.results.jsonl")["1"]["metadata"] == {"v": 2}


def test_retry_failed_sends_the_current_line(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """retry-failed then drain sends the line as it is now, not as it was first loaded."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat(max_tokens=50_000_000)])
    assert vsched(capsys, *drain_args(source, sim, "--tpm", "100000"))[0] == EXIT_FAILED
    write_lines(source, [chat("small now", metadata={"fixed": True})])
    assert vsched(capsys, "retry-failed", str(source))[0] == EXIT_OK
    code, _, err = vsched(capsys, *drain_args(source, sim, "--tpm", "100000"))
    assert code == EXIT_OK, err
    assert results(tmp_path / "jobs.results.jsonl")["1"]["metadata"] == {"fixed": True}


# --- 6. the server's answers ---------------------------------------------------------------


def test_a_4xx_answer_body_is_kept_with_a_stable_code(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 400 keeps the server's body in response.body and says bad_request plus the API code."""
    body = {"model": "gpt-4o", "messages": [], "max_tokens": 5}  # the server wants a message
    source = write_lines(tmp_path / "jobs.jsonl", [body])
    code, _, _ = vsched(capsys, *drain_args(source, sim))
    assert code == EXIT_FAILED
    row = results(tmp_path / "jobs.results.jsonl")["1"]
    assert row["response"]["status_code"] == 400
    assert "non-empty array" in row["response"]["body"]["error"]["message"]
    assert row["error"]["code"] == "bad_request"
    assert row["error"]["api_code"] == row["response"]["body"]["error"]["code"] == "invalid_value"
    assert row["attempts"] == 1, "a 400 is not retried"


def test_every_error_code_is_documented() -> None:
    """docs/drain.md lists every stable error code."""
    text = (Path(__file__).parent.parent / "docs" / "drain.md").read_text()
    missing = [code for code in ERROR_CODES if f"`{code}`" not in text]
    assert not missing


# --- 7. operational faults -----------------------------------------------------------------


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("jobs", [1, 40])
def test_an_unreachable_endpoint_stops_with_exit_4_and_jobs_pending(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str], jobs: int
) -> None:
    """No answer ever: exit 4, one line, every job pending; the same queue resumes later."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat(f"{i}") for i in range(jobs)])
    config = tmp_path / "c.toml"
    config.write_text("[retry]\ninitial_backoff = 0.01\nmax_backoff = 0.02\n")
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    started = time.monotonic()
    code, out, err = vsched(
        capsys, "drain", str(source), "--base-url", url, "--quiet", "--config", str(config)
    )
    assert code == EXIT_UNAVAILABLE, (out, err)
    assert time.monotonic() - started < 20
    assert "no answer from" in out + err
    assert counts(tmp_path / "jobs.queue.sqlite") == {
        "pending": jobs,
        "in_flight": 0,
        "done": 0,
        "failed": 0,
    }
    code, _, err = vsched(capsys, *drain_args(source, sim))
    assert code == EXIT_OK, err
    assert len(results(tmp_path / "jobs.results.jsonl")) == jobs


def test_a_wrong_key_stops_with_exit_3_and_jobs_pending(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """A 401 stops the run (exit 3): nothing failed, everything pending."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat(f"{i}") for i in range(5)])
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-the-right-one-1234")
    code, out, err = vsched(capsys, *drain_args(source, sim))
    assert code == EXIT_FATAL
    assert counts(tmp_path / "jobs.queue.sqlite")["pending"] == 5
    assert "sk-not-the-right-one-1234" not in out + err


@pytest.mark.parametrize("flag", [[], ["--no-fetch"]])
def test_an_unreachable_image_host_is_charged_the_maximum_and_sent(
    sim: RunningSim, tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: list[str]
) -> None:
    """An image URL this machine cannot reach is sent (the server fetches it), at the maximum."""
    url = f"http://127.0.0.1:{_closed_port()}/photo.png"
    source = write_lines(tmp_path / "jobs.jsonl", [with_image({"url": url, "detail": "high"})])
    code, _, err = vsched(capsys, *drain_args(source, sim, *flag))
    assert code == EXIT_OK, err
    assert results(tmp_path / "jobs.results.jsonl")["1"]["attempts"] == 1


def test_images_fetch_false_in_the_config(tmp_path: Path) -> None:
    """images.fetch is a config key (false: http images are never read)."""
    config = tmp_path / "c.toml"
    config.write_text("[images]\nfetch = false\n")
    assert load_config(config, env={}).images.fetch is False


def _env(key: str = KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSCHED_", "OPENAI_"))}
    return {**env, "OPENAI_API_KEY": key}


def _limit_file_size(limit: int) -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


@pytest.mark.e2e
def test_a_full_disk_stops_with_one_line_and_resumes(sim: RunningSim, tmp_path: Path) -> None:
    """Writes refused by the disk (a file size limit): exit 4, one line naming the path; a
    re-run with room finishes every job exactly once."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat("x" * 2000) for _ in range(300)])
    args = [sys.executable, "-m", "scheduler", *drain_args(source, sim)]
    full = subprocess.run(
        args,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: _limit_file_size(400_000),
    )
    assert full.returncode == EXIT_UNAVAILABLE, full.stderr
    assert "Traceback" not in full.stderr
    assert str(tmp_path) in full.stderr
    again = subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=60)
    assert again.returncode == EXIT_OK, again.stderr
    assert len(results(tmp_path / "jobs.results.jsonl")) == 300


# --- 8. secrets -------------------------------------------------------------------------------


def _forms(secret: str) -> list[str]:
    return [
        secret,
        json.dumps(secret)[1:-1],
        repr(secret)[1:-1],
        urllib.parse.quote(secret, safe=""),
        base64.b64encode(secret.encode()).decode(),
    ]


@pytest.mark.e2e
@pytest.mark.parametrize("ending", ["\r\n", "\n", "\r", "  ", "\t"])
def test_a_key_with_a_line_ending_authenticates_and_never_leaks(
    sim: RunningSim, tmp_path: Path, ending: str
) -> None:
    """A key with trailing whitespace is stripped: requests authenticate, and no form of the
    key is found in stdout, stderr (logs at -vv), the results or the queue file."""
    source = write_lines(tmp_path / "jobs.jsonl", [chat("a"), chat(max_tokens=-1), chat("c")])
    args = [sys.executable, "-m", "scheduler", "-vv", *drain_args(source, sim)]
    done = subprocess.run(args, env=_env(KEY + ending), capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_FAILED, done.stderr
    by_id = results(tmp_path / "jobs.results.jsonl")
    assert by_id["1"]["error"] is None and by_id["1"]["attempts"] == 1
    haystack = [
        done.stdout,
        done.stderr,
        (tmp_path / "jobs.results.jsonl").read_text(),
        (tmp_path / "jobs.queue.sqlite").read_bytes().decode("latin-1"),
    ]
    for form in _forms(KEY):
        assert not any(form in text for text in haystack), form


def test_a_key_echoed_by_the_server_is_masked_in_results() -> None:
    """A server that echoes the key in its 4xx body: masked in the message and the body."""
    secret = "sk-echo-abcdef0123456789"

    def answer(request: httpx.Request) -> httpx.Response:
        text = f"bad request from {secret} ({json.dumps(secret)}) {urllib.parse.quote(secret)}"
        return httpx.Response(400, json={"error": {"message": text, "code": "echo"}})

    config = load_config(env={"OPENAI_API_KEY": secret})
    [result] = run_batch([chat()], config, transport=httpx.MockTransport(answer))
    assert result.error is not None
    text = json.dumps({"body": result.body, "error": result.error.message})
    for form in _forms(secret)[:4]:
        assert form not in text
    assert result.error.reason == "bad_request"
    assert result.body is not None and "***" in result.body["error"]["message"]


def test_a_redis_password_is_masked_in_connection_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unreachable Redis: the message never shows the URL's password."""
    monkeypatch.setenv("VSCHED_REDIS_GIVE_UP_AFTER", "1")  # the message, not the wait, is checked
    url = f"redis://:hunter2secret@127.0.0.1:{_closed_port()}/0"
    code, out, err = vsched(capsys, "status", "--redis", url)
    assert code != EXIT_OK
    assert "hunter2secret" not in out + err
    assert "Traceback" not in err


# --- 9. crashes inside one job ------------------------------------------------------------


class _Exploding(CostModel):
    """A cost model with a bug for one body."""

    def price(self, parts: Any) -> Any:
        if parts.texts and "boom" in parts.texts[-1]:
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")
        return super().price(parts)


def _ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(
        200, json={"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    )


def test_run_batch_keeps_every_result_when_one_job_hits_a_bug() -> None:
    """An unexpected exception in one job fails that job (type and message); others are done."""
    config = load_config(env={"OPENAI_API_KEY": KEY})
    bodies = [chat("a"), chat("boom"), chat("c")]
    out = run_batch(
        bodies, config, transport=httpx.MockTransport(_ok), cost_model=_Exploding(config)
    )
    assert [r.ok for r in out] == [True, False, True]
    error = out[1].error
    assert error is not None
    assert error.type == "TypeError" and error.reason == "internal_error"
    assert "unsupported operand" in error.message


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "many", "completion_tokens": None},
        {"prompt_tokens": 1.5, "completion_tokens": [1]},
        "not an object",
        {"input_tokens": -4},
    ],
)
def test_a_drain_survives_an_odd_usage_object(tmp_path: Path, usage: Any) -> None:
    """A server's usage with odd types never stops the drain: the job is recorded."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [], "usage": usage})

    from scheduler.drain import run_drain

    source = write_lines(tmp_path / "jobs.jsonl", [chat("a"), chat("b")])
    config = load_config(env={"OPENAI_API_KEY": KEY}, overrides={"drain.progress": "quiet"})
    report = anyio.run(
        lambda: run_drain(
            config,
            source,
            output=tmp_path / "out.jsonl",
            queue_path=tmp_path / "q.sqlite",
            transport=httpx.MockTransport(answer),
        )
    )
    assert report.summary.counts["done"] + report.summary.counts["failed"] == 2
    assert len(results(tmp_path / "out.jsonl")) == 2


# --- 10. signals and pipes --------------------------------------------------------------------


@pytest.mark.e2e
def test_ctrl_c_sends_nothing_more_than_what_is_on_the_wire(tmp_path: Path) -> None:
    """After SIGINT only requests already on the wire finish: jobs waiting for the limiter are
    not sent; exit 130 with the rest pending."""
    slow = LatencyModel(base=1.0, per_token=0.0, jitter=0.0)
    with running(SimSettings(tpm=10_000_000, rpm=100_000, latency=slow)) as server:
        source = write_lines(tmp_path / "jobs.jsonl", [chat(f"{i}") for i in range(60)])
        args = [sys.executable, "-m", "scheduler", *drain_args(source, server)]
        args[args.index("--rpm") + 1] = "120"  # 2 per second: most jobs wait for the limiter
        proc = subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while server.app.stats.requests < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        at_signal = server.app.stats.requests
        _, err = proc.communicate(timeout=40)
        assert proc.returncode == EXIT_STOPPED, err
        assert server.app.stats.requests <= at_signal + 1
    state = counts(tmp_path / "jobs.queue.sqlite")
    assert state["in_flight"] == 0 and state["pending"] >= 50


def test_stop_sending_lets_the_wire_finish_and_sends_nothing_else() -> None:
    """Scheduler.stop_sending: the request on the wire completes, queued ones are never sent."""
    sent: list[int] = []

    async def main_() -> list[Any]:
        async def answer(request: httpx.Request) -> httpx.Response:
            sent.append(1)
            await anyio.sleep(1.0)
            return _ok(request)

        config = load_config(
            env={"OPENAI_API_KEY": KEY}, overrides={"limits.rpm": 60, "limits.burst_seconds": 1.0}
        )
        got: list[Any] = []
        async with (
            Scheduler(config, transport=httpx.MockTransport(answer)) as scheduler,
            scheduler.map([Request(body=chat(f"{i}")) for i in range(10)]) as stream,
            anyio.create_task_group() as tg,
        ):

            async def stop_later() -> None:
                await anyio.sleep(0.5)
                scheduler.stop_sending()

            tg.start_soon(stop_later)
            got.extend([result async for result in stream])
        return got

    got = anyio.run(main_, backend="trio", backend_options={"clock": _mock_clock()})
    assert len(sent) == 1
    assert len(got) == 1 and got[0].ok


def _mock_clock() -> Any:
    from trio.testing import MockClock

    return MockClock(autojump_threshold=0)


@pytest.mark.e2e
def test_status_into_a_closed_pipe_has_no_traceback(drained: tuple[Path, Path]) -> None:
    """`vsched status | head -c1`: no BrokenPipeError traceback."""
    _, queue = drained
    shell = f"{sys.executable} -m scheduler status {queue} --failures 500 | head -c 1"
    done = subprocess.run(shell, shell=True, capture_output=True, text=True, timeout=30, env=_env())
    assert "Traceback" not in done.stderr
    assert "BrokenPipe" not in done.stderr


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`vsched --version` prints the version."""
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("vsched 0.")


# --- 11. config validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limits", "ok"),
    [
        ({"burst_seconds": 0.01, "margin_seconds": 0.05}, False),
        ({"burst_seconds": 0.05, "margin_seconds": 0.05}, True),
        ({"burst_seconds": 1.0, "margin_seconds": 2.0}, False),
        ({"burst_seconds": 1.0, "margin_seconds": 0.0}, True),
    ],
)
def test_burst_must_hold_the_margin(limits: dict[str, float], ok: bool) -> None:
    """limits.burst_seconds < limits.margin_seconds is a ConfigError naming both keys."""
    overrides = {f"limits.{k}": v for k, v in limits.items()}
    if ok:
        load_config(env={}, overrides=overrides)
        return
    with pytest.raises(ConfigError, match=r"burst_seconds.*margin_seconds"):
        load_config(env={}, overrides=overrides)


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        (f"{KEY}\r\n", KEY),
        (f"  {KEY}\n", KEY),
        (f"\t{KEY}", KEY),
        (KEY, KEY),
    ],
)
def test_the_key_is_stripped_when_read(raw: str, stored: str) -> None:
    """OPENAI_API_KEY loses surrounding whitespace (a CRLF .env file)."""
    key = load_config(env={"OPENAI_API_KEY": raw}).api.api_key
    assert key is not None and key.reveal() == stored


@pytest.mark.parametrize("raw", ["sk-a b", "sk-a\x00b", "sk-a\rb"])
def test_a_key_with_inner_whitespace_is_refused(raw: str) -> None:
    """A key with whitespace or control characters inside is a ConfigError that hides it."""
    with pytest.raises(ConfigError) as error:
        load_config(env={"OPENAI_API_KEY": raw})
    assert raw not in str(error.value)

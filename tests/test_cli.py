"""The eventstore command line: exit codes, --json, one-line errors, and a real subprocess."""

from __future__ import annotations

import io
import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from eventstore import SignalPushed, SignalRejected, open_store, signal_store
from eventstore.cli import main
from tests.test_backup import populate

DETECTED = {
    "stream": "company:domain:acme.ai",
    "type": "SignalDetected",
    "data": {"signal_type": "github_spike", "source_api": "github", "canonical_key": "domain:acme.ai",
             "company_name": "Acme Inc", "confidence": 0.8, "raw_data": {"repo": "acme/rocket"},
             "detected_at": "2026-01-06T09:30:00Z"},
    "metadata": {"actor": "cli-test"},
}  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "events.db")
    anyio.run(populate, path)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def feed_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


@pytest.mark.parametrize(
    "argv", [[], ["bogus", "x.db"], ["status"], ["audit", "x.db"], ["tail", "x.db", "-n", "many"],
             ["rebuild", "x.db", "--projection", "nope"], ["audit", "x.db", "events", "--since", "yesterday"],
             ["status", "x.db", "--max-sync-age", "soon"]],
)  # fmt: skip
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert "usage:" in err


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "verify", "--help")
    assert code == 0 and "usage: eventstore verify" in out and "hash chain" in out


def test_a_missing_store_is_one_line_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = str(tmp_path / "nope.db")
    for command in ("status", "verify", "tail", "read", "stats"):
        code, out, err = run(capsys, command, missing)
        assert (code, out) == (1, "")
        assert err.count("\n") == 1 and err.startswith(f"eventstore: error: no store at {missing}")
    assert not os.path.exists(missing)


@pytest.mark.postgres
def test_a_postgres_schema_without_a_store_is_missing_too(
    postgres_store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped ?schema= is an error, not a new empty store that verifies OK."""
    for argv in (["verify", postgres_store_url], ["audit", postgres_store_url, "events"]):
        code, out, err = run(capsys, *argv)
        assert (code, out) == (1, "")
        assert err.count("\n") == 1 and "no store at" in err and "holds no event log" in err
    assert run(capsys, "init", postgres_store_url)[0] == 0
    assert run(capsys, "verify", postgres_store_url)[0] == 0


def test_a_password_in_the_url_query_is_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    for url in ("postgresql://postgres@127.0.0.1:1/test?password=s3cret", "postgresql://127.0.0.1:1/t?password=s3cret"):
        code, out, err = run(capsys, "status", url)
        assert code == 1 and "s3cret" not in out + err and "password=***" in err


@pytest.mark.parametrize(
    ("argv", "expected_code", "expected"),
    [
        (["audit", "{db}", "events", "--since", "0001-01-01T00:00:00", "--json"], 0, "every event"),
        (["read", "{db}", "--from", "99999999999999999999", "--json"], 0, ""),
        (["audit", "{db}", "signal", "99999999999999999999"], 1, "no signal with id 99999999999999999999"),
        (["status", "{db}", "--max-sync-age", "99999999999w"], 2, "is too long"),
    ],
)
def test_out_of_range_numbers_and_times_get_an_answer_or_one_line_not_a_traceback(
    db: str, capsys: pytest.CaptureFixture[str], argv: list[str], expected_code: int, expected: str
) -> None:
    code, out, err = run(capsys, *(arg.replace("{db}", db) for arg in argv))
    assert code == expected_code, err
    if expected == "every event":
        assert len(json_lines(out)) == 15
    elif expected:
        assert expected in err and "Traceback" not in err
    else:
        assert (out, err) == ("", "")


def test_init_then_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "new.db")
    assert run_json(capsys, "init", path)["projections"] == ["processing", "search", "signals", "suppression"]
    status = run_json(capsys, "status", path)
    assert status["head_position"] == 0 and status["pending"] == 0
    assert {p["name"]: p["lag"] for p in status["projections"]} == {
        "processing": 0, "search": 0, "signals": 0, "suppression": 0,
    }  # fmt: skip
    code, out, _ = run(capsys, "status", path)
    assert code == 0 and "head position: 0" in out and "processing" in out


def test_append_validates_every_line_then_writes_all(
    db: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = dict(DETECTED, data=dict(DETECTED["data"], confidence=3))  # type: ignore[arg-type]
    feed_stdin(monkeypatch, (json.dumps(DETECTED) + "\n" + json.dumps(bad) + "\n").encode())
    code, _, err = run(capsys, "append", db)
    assert code == 1 and "stdin line 2" in err and "confidence" in err
    feed_stdin(monkeypatch, b'{"stream": "s", "type": "Nope"}\n')
    code, _, err = run(capsys, "append", db)
    assert code == 1 and "unknown event type 'Nope'" in err
    assert run_json(capsys, "status", db)["head_position"] == 15
    feed_stdin(monkeypatch, (json.dumps(DETECTED) + "\n").encode())
    assert run_json(capsys, "append", db) == {"appended": 1, "positions": [16]}
    assert run_json(capsys, "search", db, "acme")[0]["id"] == 16  # projections were kept current


def test_read_and_tail(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "read", db, "--from", "10", "--limit", "3", "--json")
    assert code == 0 and [e["position"] for e in json_lines(out)] == [10, 11, 12]
    code, out, _ = run(capsys, "read", db, "--type", "SignalPushed", "--json")
    assert [e["type"] for e in json_lines(out)] == ["SignalPushed"]
    code, out, _ = run(capsys, "tail", db, "-n", "3", "--json")
    assert [e["position"] for e in json_lines(out)] == [13, 14, 15]
    code, out, _ = run(capsys, "tail", db)
    assert code == 0 and "last 15 events" in out and "SignalRejected" in out


def test_status_check_reports_one_line_per_breach(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "status", db, "--check", "--max-pending", "3", "--max-sync-age", "1h", "--max-lag", "0")
    assert code == 1
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0] == "CHECK FAILED: pending signals: 10 > max 3"
    assert lines[1].startswith("CHECK FAILED: suppression sync age:")
    code, out, _ = run(capsys, "status", db, "--check", "--max-pending", "10", "--max-sync-age", "10000d")
    assert (code, out) == (0, "OK\n")
    code, out, _ = run(capsys, "status", db, "--check", "--max-pending", "3", "--json")
    assert code == 1 and json.loads(out)["breaches"] == ["pending signals: 10 > max 3"]


def test_audit_subcommands(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    history = run_json(capsys, "audit", db, "company", "domain:c1.ai")
    assert [e["type"] for e in history] == [*["SignalDetected"] * 3, "SuppressionSynced", "SignalRejected"]
    story = run_json(capsys, "audit", db, "signal", "1")
    assert story["signal"]["status"] == "pushed" and any("Pushed by seed" in line for line in story["story"])
    code, out, _ = run(capsys, "audit", db, "signal", "1")
    assert code == 0 and out.startswith("Signal 1: github_spike for domain:c0.ai")
    past = run_json(capsys, "audit", db, "signal", "1", "--as-of", "2026-01-06T12:00:30Z")
    assert past["signal"]["status"] == "pending" and past["position"] == 1
    code, _, err = run(capsys, "audit", db, "signal", "1", "--as-of", "2026-01-06T12:00:29")
    assert code == 1 and "did not exist as of" in err
    company = run_json(capsys, "audit", db, "company", "domain:c1.ai", "--as-of", "2030-01-01T00:00:00Z")
    assert [s["status"] for s in company["signals"]] == ["rejected", "pending", "pending"]
    code, out, _ = run(capsys, "audit", db, "events", "--type", "SignalDetected", "--since", "2026-01-06T12:01:00Z",
                       "--until", "2026-01-06T12:02:00Z", "--json")  # fmt: skip
    assert [e["position"] for e in json_lines(out)] == [2, 3, 4]
    code, out, _ = run(capsys, "audit", db, "events", "--actor", "seed", "--limit", "2", "--json")
    assert len(json_lines(out)) == 2
    code, out, err = run(capsys, "audit", db, "company", "domain:nobody")
    assert (code, out) == (1, "") and "no events for company 'domain:nobody'" in err


def test_export_import_round_trip(db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, dump, _ = run(capsys, "export", db, "-")
    assert code == 0 and json.loads(dump.splitlines()[0])["event_count"] == 15
    backup = tmp_path / "backup.jsonl"
    code, _, _ = run(capsys, "export", db, str(backup))
    assert code == 0 and backup.read_text() == dump
    target = str(tmp_path / "restored.db")
    assert run_json(capsys, "import", target, str(backup)) == {"events": 15, "head_position": 15}
    assert run_json(capsys, "verify", target)["ok"] is True
    assert run_json(capsys, "stats", target)["processing"] == run_json(capsys, "stats", db)["processing"]
    code, _, err = run(capsys, "import", target, str(backup))
    assert code == 1 and "already holds events" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(dump.splitlines()[:-1]) + "\n")
    code, _, err = run(capsys, "import", str(tmp_path / "other.db"), str(broken))
    assert code == 1 and "line 16" in err and "truncated" in err and err.count("\n") == 1


def test_maintenance_commands(db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_json(capsys, "cleanup", db) == {"removed": 1}  # the seeded entry has expired by now
    assert run_json(capsys, "optimize", db, "--vacuum")["vacuum"] is True
    rebuilt = run_json(capsys, "rebuild", db, "--projection", "signals")
    assert rebuilt["rebuilt"] == ["signals"]
    assert {p["name"]: p["generation"] for p in rebuilt["projections"]}["signals"] == 2
    assert run_json(capsys, "rebuild", db)["rebuilt"] == ["signals", "processing", "suppression", "search"]
    assert run_json(capsys, "project", db)["applied"] == 0
    stats = run_json(capsys, "stats", db)
    assert stats["events"] == 15 and stats["signals"] == 12
    assert [s["id"] for s in run_json(capsys, "search", db, "c3/rocket")] == [4]


def test_python_dash_m_eventstore_runs_as_a_process(db: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "eventstore", "verify", db, "--json"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["events_checked"] == 15
    result = subprocess.run([sys.executable, "-m", "eventstore", "status"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_tail_follow_prints_new_events_live(db: str) -> None:
    argv = [sys.executable, "-m", "eventstore", "tail", db, "-n", "0", "--follow", "--json"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as process:
        try:
            time.sleep(1.0)

            async def append() -> None:
                async with signal_store(db, background=False, cleanup_interval=None) as store:
                    await store.save_signal("t", "s", "domain:live.io", "Live", 0.5)

            anyio.run(append)
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], 20)
            assert ready, "no event printed within 20s"
            event = json.loads(process.stdout.readline())
            assert (event["position"], event["stream"]) == (16, "company:domain:live.io")
        finally:
            process.terminate()
            process.wait(timeout=10)


def test_read_a_stream_applies_from_and_type_before_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "read.db")

    async def fill() -> None:
        async with open_store(db) as log:
            await log.append("company:x", [SignalRejected(signal_id=1, reason="r")] * 5)
            await log.append("company:x", [SignalPushed(signal_id=1, notion_page_id="p")] * 5)

    anyio.run(fill)
    assert (
        main(["read", db, "--stream", "company:x", "--from", "3", "--type", "SignalPushed", "--limit", "2", "--json"])
        == 0
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["position"], e["type"]) for e in lines] == [(6, "SignalPushed"), (7, "SignalPushed")]

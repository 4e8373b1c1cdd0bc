"""What a person sees: `raydm2 demo` from a fresh folder is a screenful of raydm2's own lines, `--json` is one JSON
document on stdout, `--quiet` prints nothing but errors."""

from __future__ import annotations

import io
import json
import re
import time

import pytest

from helpers import run_cli, run_cli_on_terminal
from raydm2 import __version__


@pytest.mark.ray
def test_demo_is_a_screenful_then_json_and_quiet_behave(tmp_path):
    demo = run_cli("demo", "--workdir", "demo_project", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr[-3000:]
    lines = (demo.stdout + demo.stderr).splitlines()
    assert len(lines) <= 60, "\n".join(lines)
    text = "\n".join(lines)
    for noise in (" INFO ", "core_worker.cc", "Execution plan", "Starting execution", "(pid=", "Running:",
                  "Progress bars", "Token authentication", "Traceback"):
        assert noise not in text, noise
    stages = [line.split()[0:2] for line in lines if re.match(r"  \S.* [\d,]+ images +[\d.]+ s", line)]
    assert [" ".join(s) for s in stages][:2] == ["embed 2,900", "build index"] and ["mix", "+"] in stages
    epochs = [line for line in lines if line.startswith("  epoch ")]
    assert [e.split(":")[0] for e in epochs] == [f"  epoch {k}/10" for k in range(1, 11)] and "train loss" in epochs[0]
    assert any(line.startswith("trained on 100 labels, 10 epochs") for line in lines)
    assert "Next, try:" in text and lines[-1].strip().endswith("# does DM2 beat random here?")

    project = str(tmp_path / "demo_project" / "project")
    quiet = run_cli("label", "--project", project, "--oracle", "--quiet", cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    # A person at a terminal: stderr (where --json sends raydm2's lines) is one; stdout is a pipe to a script.
    code, stdout, terminal = run_cli_on_terminal("requery", "--project", project, "--json", cwd=tmp_path)
    assert code == 0, terminal[-3000:]
    document = json.loads(stdout)  # the whole of stdout is one document
    assert document["ranked"] == 50 and len(set(document["ids"])) == 50
    # The progress lines went to the terminal; the summary line is the document itself.
    assert "requeries" in document["where"] and "{" not in terminal
    # Each stage the actors count was a live line (count, rows/s, ETA) redrawn in place, then its summary line.
    for stage in ("search neighbours", "mix + score"):
        redraws = re.findall(rf"\r  {re.escape(stage)} +\d+% \|[^|]*\| ([\d,]+)/2,850 images  \S+/s  ETA", terminal)
        assert redraws and redraws[-1] != "0", (stage, terminal)
        assert re.search(rf"[\r\n]  {re.escape(stage)} +2,850 images +[\d.]+ s", terminal), terminal
    status = json.loads(run_cli("status", "--project", project, "--json", cwd=tmp_path).stdout)
    assert [r["state"] for r in status["rounds"]] == ["trained", "labeled"] and status["labels"] == 150
    refused = run_cli("status", "--project", str(tmp_path / "nowhere"), "--json", "--quiet", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == "" and len(refused.stderr.splitlines()) == 1


def test_version_and_flags_anywhere(tmp_path):
    run = run_cli("--version", cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == f"raydm2 {__version__}"
    for args in (("--quiet", "status", "--project", "x"), ("status", "--project", "x", "-q")):
        run = run_cli(*args, cwd=tmp_path)
        assert run.returncode == 2 and run.stdout == "" and "no project at" in run.stderr


def test_stage_lines_are_readable():
    from raydm2 import progress
    from raydm2.service import console

    seen = []
    console.setup()
    progress.listen(type("L", (), {"stage_done": lambda self, *a: seen.append(a), "note": lambda self, t: None})())
    try:
        with progress.notes_only():
            progress.stage_done("embed_s", 1.0, 10)
        progress.stage_done("mix_score_s", 2.0, 100)
    finally:
        progress.listen(None)
    assert seen == [("mix_score_s", 2.0, 100)]
    assert progress.readable("mix_score_s") == "mix + score" and progress.readable("odd_stage_s") == "odd stage"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_line_on_a_terminal_only(monkeypatch):
    """On a terminal a running stage is one line redrawn in place (rows, rows/s, ETA), replaced by its summary line;
    elsewhere (a log) only the summary line is written, and nothing is counted."""
    from raydm2 import progress
    from raydm2.service import console

    done = [0]

    def stage() -> None:
        with progress.counting("embed_s", 400, lambda: done[0], every_s=0.05):
            for _ in range(4):
                done[0] += 100
                time.sleep(0.15)
        progress.stage_done("embed_s", 0.6, 400)

    for stream, live in ((_Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr("sys.stdout", stream)
        console.setup()
        try:
            assert progress.wants_counts() is live
            stage()
        finally:
            progress.listen(None)
        out = stream.getvalue()
        summary = "  embed" + " " * 19 + "400 images     0.6 s  667/s\n"
        assert out.endswith(summary), out
        if live:
            redraws = [part for part in out.split("\r") if "embed" in part and "ETA" in part]
            assert len(redraws) >= 2 and "/400 images" in out, out
            assert re.search(r"\d+/400 images  [\d.]+k?/s  ETA \d\d:\d\d", out), out
        else:
            assert out == summary


def test_a_stage_shorter_than_a_poll_still_shows_its_count(monkeypatch):
    """Actors that start slowly and then score every row between two polls: the line shows the rows done when the
    stage ends, not the 0 it started at."""
    from raydm2 import progress
    from raydm2.service import console

    stream = _Terminal()
    monkeypatch.setattr("sys.stdout", stream)
    console.setup()
    done = [0]
    try:
        with progress.counting("mix_score_s", 300, lambda: done[0], every_s=60):
            done[0] = 300
    finally:
        progress.listen(None)
    counts = re.findall(r"\r  mix \+ score +\d+% \|[^|]*\| ([\d,]+)/300 images", stream.getvalue())
    assert counts and counts[-1] == "300", stream.getvalue()

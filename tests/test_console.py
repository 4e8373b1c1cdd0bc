"""What a person sees: `raydm2 demo` from a fresh folder is a screenful of raydm2's own lines, `--json` is one JSON
document on stdout, `--quiet` prints nothing but errors."""

from __future__ import annotations

import json
import re

import pytest

from helpers import run_cli
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
    requery = run_cli("requery", "--project", project, "--json", cwd=tmp_path)
    assert requery.returncode == 0, requery.stderr[-3000:]
    document = json.loads(requery.stdout)  # the whole of stdout is one document
    assert document["ranked"] == 50 and len(set(document["ids"])) == 50
    # The progress lines went to stderr; the summary line is the document itself.
    assert "requeries" in document["where"] and "  mix + score" in requery.stderr and "{" not in requery.stderr
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

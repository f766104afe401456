"""The benchmark scripts' own contracts (their numbers land in BENCHMARKS.md, not in tests): a run stopped part-way
goes on with ``--resume`` and measures nothing twice."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "UNLEARNABLE_NO_PROGRESS": "1"}
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, env=env,
                          cwd=BENCH)


def test_attack_benchmark_resumes_where_it_stopped(tmp_path):
    """With ``--resume`` the runs already in ``--json`` (the clean victim, a budget) are skipped and said so; the
    missing budget is measured; without it everything runs again. Rows of other settings do not count."""
    out = tmp_path / "rows.jsonl"
    common = ["--attack", "random-noise", "--train-subset", "200", "--victim-epochs", "1", "--json", str(out)]
    first = bench("bench_attacks.py", *common, "--eps", "8")
    assert first.returncode == 0, first.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["attack"], r["eps"]) for r in rows] == [("clean", 0), ("random-noise", 8)]
    out.write_text(out.read_text() + '{"attack": "random-noise", "eps": 16, "data"')  # a line cut by a crash
    again = bench("bench_attacks.py", *common, "--eps", "8,16", "--resume")
    assert again.returncode == 0, again.stderr
    assert "--resume: the clean victim was measured on" in again.stderr
    assert "--resume: random-noise at 8/255 was measured on" in again.stderr
    lines = out.read_text().splitlines()
    new = json.loads(lines[-1])
    assert len(lines) == 4 and (new["attack"], new["eps"]) == ("random-noise", 16)  # only the missing budget
    assert f"{rows[1]['final']:.2%}" in again.stdout  # the skipped rows still make the summary table
    other = bench("bench_attacks.py", *common[:-4], "--victim-epochs", "2", "--json", str(out), "--eps", "8",
                  "--resume", "--no-clean")
    assert other.returncode == 0 and "--resume" not in other.stderr, other.stderr  # another victim: measured
    assert len(out.read_text().splitlines()) == 5

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


def test_dvae_trace_reads_a_perfect_and_a_blind_purifier_apart():
    """``dvae_trace.trace`` against two stand-ins with known answers: one whose ``p_hat`` is exactly the poison and
    whose output is the clean image (p 1 / 1, output 0 / 0), one that passes every image through unchanged with
    ``p_hat = 0`` (p 0 / 0, reconstruction and output 1 / 1); and stage 1's change as a ``p_clip`` fit makes it."""
    import numpy as np

    sys.path.insert(0, str(BENCH))
    try:
        from dvae_trace import trace
    finally:
        sys.path.remove(str(BENCH))
    rng = np.random.default_rng(0)
    clean = rng.integers(20, 236, (8, 1, 6, 6), dtype=np.uint8)
    poisoned = (clean.astype(int) + rng.choice([-8, 8], clean.shape)).astype(np.uint8)
    y = np.zeros(8, dtype=np.int64)

    def f(a):
        return a.astype(np.float32) / 255

    class Perfect:
        def decompose(self, x, y, stage):
            return f(clean), f(x) - f(clean)

        def purify(self, x, y):
            return clean

    class Blind:
        def decompose(self, x, y, stage):
            return f(x), np.zeros(x.shape, np.float32)

        def purify(self, x, y):
            return x

    perfect, blind = trace(Perfect(), poisoned, clean, y), trace(Blind(), poisoned, clean, y)
    assert (perfect["p_cos"], perfect["p_rms"], perfect["out_cos"], perfect["out_rms"]) == (1, 1, 0, 0)
    assert perfect["s1_added_rms"] == perfect["d_rms"] == round(8 / 255, 5)
    assert (blind["p_cos"], blind["p_rms"], blind["xhat_cos"], blind["xhat_rms"]) == (0, 0, 1, 1)
    assert (blind["out_cos"], blind["out_rms"], blind["s1_added_rms"]) == (1, 1, 0)

    class Hidden(Blind):  # p_hat all below a black x_hat: the loss never sees it, and p_clip subtracts nothing
        p_clip = True

        def decompose(self, x, y, stage):
            return np.zeros(x.shape, np.float32), np.full(x.shape, -0.5, np.float32)

    assert trace(Hidden(), poisoned, clean, y)["s1_added_rms"] == 0
    Hidden.p_clip = False  # the official subtraction lightens every pixel by 0.5 (up to white)
    assert trace(Hidden(), poisoned, clean, y)["s1_added_rms"] > 0.3


def test_deepconfuse_sweep_resumes_from_the_next_budget(small_train, tmp_path):
    """``eps-sweep --resume`` takes the budgets (and the plot's clean victim) ``--json`` holds from their rows and
    fits only the missing generator; a line a crash cut short is passed over."""
    import numpy as np

    part = small_train.take(300, seed=1)
    np.savez(tmp_path / "d.npz", x=part.x, y=part.y)
    out = tmp_path / "rows.jsonl"
    common = ["eps-sweep", "--data", f"npz:{tmp_path / 'd.npz'}", "--set", "preset=smoke", "--epochs", "1",
              "--json", str(out)]
    first = bench("bench_deepconfuse.py", *common, "--eps", "0.2")
    assert first.returncode == 0, first.stderr
    out.write_text(out.read_text() + '{"experiment": "eps-sweep", "eps": 0.3, "da')  # cut by a crash
    plot = tmp_path / "sweep.png"
    again = bench("bench_deepconfuse.py", *common, "--eps", "0.2,0.3", "--resume", "--plot", str(plot))
    assert again.returncode == 0, again.stderr
    assert "--resume: eps 0.2 was measured on" in again.stderr and "eps 0.3 was" not in again.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.endswith("}")]
    assert [(r["eps"], "acc" in r, "clean" in r) for r in rows] == [(0.2, 1, 0), (0.3, 1, 0), (None, 0, 1)]
    assert plot.is_file()
    last = bench("bench_deepconfuse.py", *common, "--eps", "0.2,0.3", "--resume", "--plot", str(plot))
    assert last.returncode == 0 and "the clean victim was measured on" in last.stderr, last.stderr
    assert len(out.read_text().splitlines()) == 4  # nothing measured twice

"""Where a fitted D-VAE sends the poison: through its perturbation decoder (the paper's intent) or its image decoder.

For a poisoned saved set and D-VAEs fitted on it (saved sets that ``unlearnable purify --defense dvae`` wrote, each
holding its ``purifier.safetensors``), on a seeded sample of the poisoned images ``x_p = x_c + d`` and of their clean
counterparts ``x_c`` (the set's source, reloaded):

* ``p_cos`` / ``p_rms``: how the stage-1 perturbation estimate answers the poison: ``p_hat(x_p) - p_hat(x_c)``
  against ``d``, as the mean per-image cosine and the ratio of RMS. The paper's design wants ``p_cos`` near 1: the
  perturbation decoder catches the poison and stage 1 subtracts it.
* ``xhat_cos`` / ``xhat_rms``: the same for the stage-1 reconstruction ``x_hat``: the share of the poison the image
  decoder passes on.
* ``out_cos`` / ``out_rms``: the same for the whole purification (``purify(x_p) - purify(x_c)``): what of the poison
  the purified set still carries.
* ``p_rms_abs`` and ``s1_added_rms``: the RMS of ``p_hat(x_p)`` and of what stage 1's subtraction changes in the
  images (``clamp(x_p - p_hat) - x_p``; for a ``p_clip`` fit, ``p_hat`` there is ``clamp(x_hat + p_hat) - x_hat``),
  beside ``d_rms``, the poison's own RMS.

    python benchmarks/dvae_trace.py POISONED PURIFIED [PURIFIED ...] [--sample 6000] [--json F]

It trains nothing: inference of the saved weights on ``2 x sample`` images, ~15 s a D-VAE for 6,000 28 x 28 images
on two cores. Findings: BENCHMARKS.md, D-VAE, session 62.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from _common import emit, run_meta, run_script


def _cos_rms(a: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """Mean per-image cosine of ``a`` with ``d`` and ``rms(a) / rms(d)``."""
    a, d = a.reshape(len(a), -1).astype(np.float64), d.reshape(len(d), -1).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(d, axis=1)
    cos = np.divide((a * d).sum(1), norms, out=np.zeros(len(a)), where=norms > 0)
    return round(float(cos.mean()), 4), round(float(np.sqrt((a ** 2).mean() / (d ** 2).mean())), 4)


def trace(purifier, x_p: np.ndarray, x_c: np.ndarray, y: np.ndarray) -> dict:
    """The fields the module docstring lists, for one fitted ``dvae`` on uint8 images ``x_p`` / ``x_c``."""
    d = (x_p.astype(np.float32) - x_c.astype(np.float32)) / 255
    xh_p, p_p = purifier.decompose(x_p, y, 1)
    xh_c, p_c = purifier.decompose(x_c, y, 1)
    from unlearnable.defenses.dvae import visible_perturbation

    # what stage 1 subtracts: p_hat as decoded, or with ``p_clip`` only the part its loss sees (DVAE._subtracted)
    sub = visible_perturbation(xh_p, p_p) if getattr(purifier, "p_clip", False) else p_p
    x1 = np.clip(x_p.astype(np.float32) / 255 - sub, 0, 1)
    out = (purifier.purify(x_p, y).astype(np.float32) - purifier.purify(x_c, y).astype(np.float32)) / 255
    row = {}
    for name, diff in (("p", p_p - p_c), ("xhat", xh_p - xh_c), ("out", out)):
        row[f"{name}_cos"], row[f"{name}_rms"] = _cos_rms(diff, d)
    return {**row, "d_rms": _rms(d), "p_rms_abs": _rms(p_p), "s1_added_rms": _rms(x1 - x_p.astype(np.float32) / 255)}


def _rms(a: np.ndarray) -> float:
    return round(float(np.sqrt(np.mean(np.square(a, dtype=np.float64)))), 5)


def main() -> None:
    from unlearnable.data import clean_counterpart, load_set
    from unlearnable.defenses import load_purifier
    from unlearnable.defenses.base import PURIFIER_FILE
    from unlearnable.errors import UnlearnableError

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("poisoned", help="the poisoned saved set the D-VAEs were fitted on")
    ap.add_argument("purified", nargs="+", help="saved sets `unlearnable purify --defense dvae` wrote from it (or "
                    "their purifier.safetensors files)")
    ap.add_argument("--sample", type=int, default=6000, help="images traced (a seeded sample)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample")
    ap.add_argument("--json", default="benchmarks/results/dvae_trace.jsonl", help="append one JSON line per D-VAE")
    args = ap.parse_args()
    if args.sample < 1:
        raise UnlearnableError(f"--sample must be at least 1, got {args.sample}")
    poisoned = load_set(args.poisoned)
    # every file read before the first trace; a set folder stands for the weights it holds
    purifiers = [load_purifier(Path(p) / PURIFIER_FILE if Path(p).is_dir() else p) for p in args.purified]
    for path, purifier in zip(args.purified, purifiers):
        if purifier.name != "dvae" or not hasattr(purifier, "stage1_"):
            raise UnlearnableError(f"{path} holds a {purifier.name} with no stage-1 D-VAE: nothing to trace")
    clean = clean_counterpart(poisoned)
    n = len(poisoned)
    idx = np.sort(np.random.default_rng(args.seed).choice(n, min(args.sample, n), replace=False))
    x_p, x_c, y = poisoned.x[idx], clean.x[idx], poisoned.y[idx]
    if not (x_p != x_c).any():
        raise UnlearnableError(f"{args.poisoned}: the sample holds no poisoned image (the set equals its source)")
    meta = run_meta(poisoned=args.poisoned, method=poisoned.provenance.get("method"), sample=len(idx),
                    seed=args.seed)
    for path, purifier in zip(args.purified, purifiers):
        emit({**meta, "purified": path, "dvae_seed": purifier.seed, **trace(purifier, x_p, x_c, y)}, args.json)


if __name__ == "__main__":
    run_script(main)

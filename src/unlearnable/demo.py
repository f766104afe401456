"""``unlearnable demo``: the embedded end-to-end run on Fashion-MNIST.

Clean victim -> attack -> victim on the poisoned set -> purifier -> victim on the purified set; a table and an image
grid (clean / poisoned / each purifier's output / the perturbation magnified, its scale in its label) land in
``--out``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from .attacks import create_attack
from .data import load, save_set
from .data.store import atomic_dir, between_levels, budget_levels, check_out_dir, json_text
from .defenses import create_defense
from .report import image_grid, magnify, markdown_table, subset_for_grid
from .training import TrainConfig, train

log = logging.getLogger(__name__)

DEMO_ATTACK = ("em", {"mode": "class"})  # class-wise EM: the landed attack that crafts fastest on a CPU
# 2 fast epochs are too few for 10k images; 4 instead of 6 saves ~155 s on a slow CPU for ~1 point (BENCHMARKS.md);
# min_steps=0: exactly those 4 (156 steps), where the preset's rule would train 12 (468 steps) and break 10 minutes
DEMO_DEFENSES = (("jpeg", {"quality": 10}), ("dvae", {"preset": "fast", "epochs": 4, "min_steps": 0}))
DEMO_SUBSET = 10000  # training images (of 60,000) so the whole demo stays within minutes on 2 cores
# The package's cnn at half its width: a victim in ~35 s instead of ~90 s on a slow 2-core CPU, as accurate on 10k
# clean images (87.3 vs 87.6%; BENCHMARKS.md, "unlearnable demo"); the tests' effect proofs use the same width.
DEMO_VICTIM = ("cnn", {"width": 16})
DEMO_EPS = 32 / 255  # on grey Fashion-MNIST 8/255 is weak (BENCHMARKS.md); the papers' 8/255 is for colour data


def _say(msg: str) -> None:
    import typer

    typer.echo(msg, err=True)


def _options(options: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items())


MARK = ".unlearnable-demo"  # in a folder the demo wrote: a later run may replace what it holds


def check_demo_out(out: Path, overwrite: bool = False) -> None:
    """Refuse an ``out`` that holds anything but an earlier demo's results (unless ``overwrite``), or the current
    folder: the demo replaces its sets, table and grid there."""
    out = Path(out)
    earlier = (out / MARK).is_file() or (  # or one written before the mark existed (2026-12-06)
        (out / "results.md").is_file() and (out / "poisoned" / "manifest.json").is_file())
    check_out_dir(out, overwrite or earlier)


def run_demo(out: Path = Path("runs/demo"), eps: float = DEMO_EPS, subset: int | None = DEMO_SUBSET,
             data: str = "fashion-mnist", cfg: TrainConfig | None = None, overwrite: bool = False) -> list[dict]:
    t_start = time.perf_counter()
    cfg = cfg or TrainConfig(epochs=6)  # 10k images: more passes than the 60k recipe
    out = Path(out)
    check_demo_out(out, overwrite)
    name, opts = DEMO_ATTACK
    attack = create_attack(name, eps=eps, **opts)  # bad settings fail here, not after the first victim
    defenses = [(dname, create_defense(dname, **dopts)) for dname, dopts in DEMO_DEFENSES]
    clean, test = load(data)
    if subset and subset >= len(clean):
        _say(f"[demo] --subset {subset}: {data} has {len(clean)} training images, all used")
    elif subset:
        clean = clean.take(subset)
    levels = budget_levels(eps)  # what the attack can move a pixel by: the whole 8-bit levels within eps
    budget = f"{levels}/255"
    between = f" ({eps * 255:.2f} levels: the whole ones below)" if between_levels(eps) else ""
    _say(f"[demo] {data}: {len(clean)} training images, {len(test)} clean test images; budget L-inf {budget}{between}")
    rows = []
    model, kwargs = DEMO_VICTIM

    def victim(label: str, trainset) -> float:
        _say(f"[demo] training the victim ({cfg.epochs} epochs of {model}, {_options(kwargs)}) on {label} ...")
        r = train(trainset, test, model, cfg, description=f"victim on {label}", **kwargs)
        rows.append({"training data": label, "test_acc": round(r.test_acc, 4),
                     "peak_test_acc": round(r.peak_test_acc, 4), "train_seconds": round(r.seconds, 1)})
        _say(f"[demo]   clean test accuracy {r.test_acc:.2%} (peak {r.peak_test_acc:.2%})")
        return r.test_acc

    with atomic_dir(out) as tmp:  # all or nothing: an error or Ctrl-C leaves the earlier result, or none
        (tmp / MARK).touch()
        victim("clean", clean)
        _say(f"[demo] crafting {name} at eps {budget} ...")
        poisoned = attack.poison(clean)
        save_set(poisoned, tmp / "poisoned", clean=clean)
        victim(f"{name} ({budget})", poisoned)
        idx = subset_for_grid(clean)
        rows_shown = [("clean", clean.x[idx]), (f"poisoned\n({name})", poisoned.x[idx])]
        for dname, defense in defenses:
            _say(f"[demo] purifying with {dname} ...")
            purified = defense.fit_transform(poisoned)
            save_set(purified, tmp / f"purified-{dname}")
            victim(f"{name} + {dname}", purified)
            rows_shown.append((f"purified\n({dname})", purified.x[idx]))

        delta = poisoned.x[idx].astype(np.int16) - clean.x[idx]
        rows_shown.append((f"perturbation\n(+-{levels} levels)", magnify(delta, levels)))
        image_grid(rows_shown, tmp / "grid.png", clean.classes, clean.y[idx])
        table = markdown_table(["training data", "clean test acc", "peak", "train s"],
                               [(r["training data"], f"{r['test_acc']:.2%}", f"{r['peak_test_acc']:.2%}",
                                 r["train_seconds"]) for r in rows])
        purifiers = ", ".join(f"{dname} ({_options(dopts) or 'defaults'})" for dname, dopts in DEMO_DEFENSES)
        setting = (f"{len(clean)} training images ({data}); attack {name} ({_options(opts)}) at L-inf {budget}; "
                   f"purifiers {purifiers}; victim {model} ({_options(kwargs)}), {cfg.epochs} epochs; accuracy on "
                   f"{len(test)} clean test images")
        (tmp / "results.md").write_text(setting + "\n\n" + table + "\n")
        (tmp / "results.json").write_text(json_text(rows, indent=1))
    print(table)
    _say(f"[demo] done in {time.perf_counter() - t_start:.0f} s; table {out / 'results.md'}, images {out / 'grid.png'}")
    return rows

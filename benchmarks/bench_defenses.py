"""Defense benchmark: purify saved poisoned sets, train the default victim on the result, report clean test accuracy.

    python benchmarks/bench_defenses.py --defense dvae --set preset=fast SET_DIR [SET_DIR ...] [--clean]

Each SET_DIR is a saved poisoned training split (``unlearnable poison --out``, or ``bench_attacks.py --save``).
For each: the victim on the poisoned set (before), the purifier's seconds, the victim on the purified set (after)
and, with ``--clean``, the same purifier applied to the clean training split (what purification costs when there
is nothing to remove). With ``--detect`` the D-VAE detector also scores the set and reports accuracy / precision /
recall / F1 against the manifest's changed indices. With ``--table1`` (dvae) a victim also trains on the clean
images plus the fitted stage 1's ``p_hat`` (the seed's Table 1: a low accuracy means the decoder caught the poison).
A D-VAE row also has its ``label_sensitivity`` (``DVAE.label_sensitivity``).
With ``--flagged-only`` the contrast detector (trusted images: the clean test split) flags samples, the fitted
purifier purifies only those (``detect.purify_flagged``) and a third victim trains on the result; a fourth trains on
the set without the flagged samples (``detect.drop_flagged``); those two victims train once, at ``--seed``.
With ``--unseen`` a learned purifier is fitted on a seeded half of each set instead, saved, reloaded
(``defenses.load_purifier``, as ``unlearnable purify --purifier`` does) and applied unfitted to both halves: victims
train on each half before and after, so the half it never saw shows what reusing its weights on new images costs.
``--ratios 0.2,0.4`` also runs each set partially poisoned (``data.partial``: the noise kept on a seeded fraction,
the rest of the images clean). ``--victim-seeds 0,1,2,3,4`` trains the before / after victims once per seed and
reports their means, with the runs and their standard deviation beside them. One JSON line per result goes to
``--json``; ``--resume`` skips the sets whose row (same defense, options, flags and seeds) is in it already, so a
run stopped part-way goes on where it stopped.
"""
from __future__ import annotations

import argparse
import logging
import time

from _common import (emit, job_key, measured_before, poisoned_share, run_meta, run_script, seed_list, set_jobs,
                     skip_note, summary, victim_runs)
from unlearnable.data import reload_source
from unlearnable.defenses import create_defense
from unlearnable.params import parse_sets
from unlearnable.training import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="*", help="saved poisoned sets")
    ap.add_argument("--defense", default="dvae")
    ap.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--clean", action="store_true", help="also purify the clean split of the first set's source")
    ap.add_argument("--data", default="", help="dataset spec for --clean when no set is given")
    ap.add_argument("--detect", action="store_true", help="also run D-VAE detection on each set")
    ap.add_argument("--flagged-only", action="store_true",
                    help="also purify only the samples the contrast detector flags, and train a victim on that "
                         "(and one on the set without them)")
    ap.add_argument("--table1", action="store_true",
                    help="dvae only: also train a victim on the clean images + the fitted stage 1's p_hat")
    ap.add_argument("--unseen", action="store_true",
                    help="fit on a seeded half of each set, reload the saved weights and purify both halves: the "
                         "victims on the half it never saw against those on the half it was fitted on")
    ap.add_argument("--ratios", default="", help="comma-separated poisoning ratios to run each set at (default: as saved)")
    ap.add_argument("--victim-epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--seed", type=int, default=0, help="seeds the victims, and the method unless --set seed=N")
    ap.add_argument("--victim-seeds", default="", help="comma-separated victim seeds for before / after "
                                                         "(default: --seed); the rows give their means")
    ap.add_argument("--json", default="benchmarks/results/defenses.jsonl")
    ap.add_argument("--resume", action="store_true", help="skip the sets --json has a row for (same defense, "
                    "options, flags and seeds)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    options = parse_sets(args.options)
    cfg = TrainConfig(epochs=args.victim_epochs, seed=args.seed)
    seeds = seed_list(args.victim_seeds, args.seed)
    flags = [f for f in ("detect", "flagged_only", "table1", "unseen") if getattr(args, f)]
    meta = run_meta(defense=args.defense, options=options, victim_epochs=args.victim_epochs, victim_seeds=seeds,
                    seed=args.seed, flags=flags)
    create_defense(args.defense, **{"seed": args.seed, **options})  # a bad name or option: now, not after victims

    for name, data in set_jobs(args.sets, args.ratios, args.clean, args.data, seed=args.seed):
        done = measured_before(args.json, job_key(meta, set=name)) if args.resume else None
        if done is not None:
            skip_note(name, done, args.json)
            continue
        _, test = reload_source(data)  # a saved set's own clean test split, checked against its record
        if args.unseen:
            emit({**meta, **unseen_row(name, data, test, args, options, cfg, seeds)}, args.json)
            continue
        before = [r.test_acc for r in victim_runs(data, test, "cnn", cfg, seeds)]
        defense = create_defense(args.defense, **{"seed": args.seed, **options})
        t0 = time.perf_counter()
        purified = defense.fit_transform(data)
        seconds = time.perf_counter() - t0
        after = victim_runs(purified, test, "cnn", cfg, seeds)
        row = {**set_fields(name, data), **summary("before", before), **summary("after", [r.test_acc for r in after]),
               **summary("after_peak", [r.peak_test_acc for r in after]), "purify_s": round(seconds, 1)}
        if hasattr(defense, "label_sensitivity"):  # the D-VAE: how much of the labels it writes (a measurement)
            row["label_sensitivity"] = defense.label_sensitivity(data.x, data.y)
        if args.detect and "changed" in data.provenance:
            from unlearnable.detect import detect

            found = detect(data, method="dvae", dvae=defense if args.defense == "dvae" else None)
            row["detection"] = found.metrics(data.provenance["changed"])
        if args.flagged_only:
            from unlearnable.detect import detect, drop_flagged, purify_flagged

            found = detect(data, method="contrast", reference=test)
            row["flagged_only"] = {"after": train(purify_flagged(data, found, defense, fit=False), test, "cnn",
                                                  cfg).test_acc,
                                   "dropped": train(drop_flagged(data, found), test, "cnn", cfg).test_acc
                                   if len(found.flagged) < len(data) else None,  # every sample flagged: none left
                                   **found.metrics(data.provenance.get("changed", []))}
        if args.table1 and args.defense == "dvae" and name != "clean":
            from unlearnable.defenses.dvae import dvae_check

            check = dvae_check(data, test, dvae=defense, model="cnn", train_cfg=cfg)
            row["table1"] = {k: check[k] for k in ("test_acc", "p_rms", "p_linf_mean")}
        emit({**meta, **row}, args.json)


def set_fields(name: str, data) -> dict:
    """The columns that name a row's set: its name, attack, budget in levels, size and poisoned share."""
    return {"set": name, "attack": data.provenance.get("method", "clean"),
            "eps": round(data.provenance.get("budget", {}).get("eps", 0) * 255, 2), "train": len(data),
            "ratio": poisoned_share(name, data)}


def unseen_row(name: str, data, test, args, options: dict, cfg, seeds: list[int]) -> dict:
    """``--unseen``: fitted on one seeded half, the purifier's saved weights purify both halves."""
    import tempfile
    from pathlib import Path

    import numpy as np

    from unlearnable.defenses import load_purifier

    order = np.random.default_rng(args.seed).permutation(len(data))
    half = len(data) // 2
    halves = {"seen": data.subset(np.sort(order[:half])), "unseen": data.subset(np.sort(order[half:]))}
    defense = create_defense(args.defense, **{"seed": args.seed, **options})
    if not hasattr(defense, "save"):
        raise SystemExit(f"--unseen: {args.defense} is a fixed transform, with no weights to reuse")
    t0 = time.perf_counter()
    defense.fit(halves["seen"])
    fit_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:  # the weights through their file, as `purify --purifier` reads them
        reloaded = load_purifier(defense.save(Path(tmp) / "purifier.safetensors"))
    row = {**set_fields(name, data), "fit_half_s": round(fit_s, 1)}
    for key, half in halves.items():
        row[f"{key}_images"] = len(half)
        row.update(summary(f"{key}_before", [r.test_acc for r in victim_runs(half, test, "cnn", cfg, seeds)]))
        purified = reloaded.transform(half)
        row.update(summary(f"{key}_after", [r.test_acc for r in victim_runs(purified, test, "cnn", cfg, seeds)]))
    return row


if __name__ == "__main__":
    run_script(main, resumable=True)

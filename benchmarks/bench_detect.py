"""Detection benchmark without purification: is the set poisoned at all, and which samples are.

    python benchmarks/bench_detect.py SET_DIR [SET_DIR ...] [--ratios 0.2,0.4,0.8] [--clean] [--seeds 0,1,2]
                                      [--subset N] [--per-sample] [--contrast [--contrast-set KEY=VALUE ...]]

For each saved set (and, with ``--ratios``, each set partially poisoned through ``data.partial``; with ``--clean``,
the clean training split of the first set's source, or ``--data``): the set check of
:func:`unlearnable.detect.check_set` (a linear model's held-out accuracy on the set against its accuracy on the
clean test split; Zhu, Yu & Gao, AAAI 2024, Algorithm 1) at each seed of ``--seeds`` (the split and the model's
initialisation), and with ``--per-sample`` the simple-network detector's accuracy / precision / recall / F1 / ROC AUC
against the manifest's changed indices (not with ``--subset``); with ``--contrast`` the same for the contrast
detector (:func:`unlearnable.detect.contrast_detect`, trusted images: the clean test split), with its seconds, its
set-level verdict (flagged share against its false-alarm rate), the ROC AUC of each of its parts, and on a clean
set how many it flags; ``--contrast-set network=false`` passes an option (the linear part alone). ``--subset
N`` checks a seeded, class-balanced N-image subset of each set.
Seconds per check, no victims: the whole grid over two sets takes about a minute on two cores.
"""
from __future__ import annotations

import argparse
import logging
import time

from _common import emit, number_list, poisoned_share, run_meta, run_script, set_jobs
from unlearnable.data import reload_source
from unlearnable.detect import check_set, detect, detection_metrics
from unlearnable.params import parse_sets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="*", help="saved poisoned sets")
    ap.add_argument("--ratios", default="", help="comma-separated poisoning ratios to run each set at (default: as "
                                                 "saved)")
    ap.add_argument("--clean", action="store_true", help="also check the clean split of the first set's source")
    ap.add_argument("--data", default="", help="dataset spec for --clean when no set is given")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds of the set check")
    ap.add_argument("--subset", type=int, default=0, help="check a seeded subset of this many images of each set")
    ap.add_argument("--model", default="linear", help="the set check's simple network (a models registry name)")
    ap.add_argument("--epochs", type=int, default=8, help="its epochs")
    ap.add_argument("--lr", type=float, default=0.2, help="its peak learning rate")
    ap.add_argument("--per-sample", action="store_true", help="also run the simple-network per-sample detector")
    ap.add_argument("--contrast", action="store_true", help="also run the contrast per-sample detector")
    ap.add_argument("--contrast-set", action="append", default=[], help="contrast detector option key=value")
    ap.add_argument("--json", default="benchmarks/results/detect.jsonl")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    contrast_options = parse_sets(args.contrast_set)
    seeds = number_list(args.seeds, int, "--seeds")
    meta = run_meta(subset=args.subset, model=args.model, epochs=args.epochs, lr=args.lr,
                    **({"contrast_options": contrast_options} if contrast_options else {}))

    for name, data in set_jobs(args.sets, args.ratios, args.clean, args.data):
        _, test = reload_source(data)  # a saved set's own clean test split, checked against its record
        if args.subset:
            data = data.take(args.subset)
        for seed in seeds:  # the per-sample detectors run once, with the first seed's row
            t0 = time.perf_counter()
            row = {"set": name, "attack": data.provenance.get("method", "clean"), "train": len(data), "seed": seed,
                   "ratio": poisoned_share(name, data),
                   "set_check": check_set(data, test, args.model, args.epochs, args.lr, seed=seed), "check_s": 0.0}
            row["check_s"] = round(time.perf_counter() - t0, 1)
            if args.per_sample and not args.subset and "changed" in data.provenance and seed == seeds[0]:
                row["simple"] = detect(data, "simple").metrics(data.provenance["changed"])
            if args.contrast and not args.subset and seed == seeds[0]:
                t0 = time.perf_counter()
                found = detect(data, "contrast", reference=test, **contrast_options)
                changed = data.provenance.get("changed", [])
                row["contrast"] = {**found.metrics(changed), "verdict": found.verdict}
                if 0 < len(changed) < len(data):  # AUC needs poisoned and clean samples both
                    row["contrast"]["part_auc"] = {k: detection_metrics([], changed, len(data), v)["auc"]
                                                   for k, v in found.parts.items()}
                row["contrast_s"] = round(time.perf_counter() - t0, 1)
            emit({**meta, **row}, args.json)


if __name__ == "__main__":
    run_script(main)

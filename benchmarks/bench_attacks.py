"""Attack benchmark: crafting seconds and the clean test accuracy of a victim trained on the poisoned set.

For each budget: poison the training split with a registered attack (any ``--set key=value`` option), train the
victim (default: the package's default victim and recipe) on it, report final and peak clean test accuracy next
to the same victim trained on clean data. One JSON line per run is appended to ``--json``.

    python benchmarks/bench_attacks.py --attack em --set mode=class --eps 8,16,32
    python benchmarks/bench_attacks.py --data folder:/tmp/cifar10-jpeg75-dev --attack tap --set preset=fast --eps 8

``--train-subset N`` takes a stratified seeded subset of the training split (the full split by default).
``--resume`` skips the runs whose row (same data, victim, attack, options and budget) is in ``--json`` already.
"""
from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from _common import budget_list, emit, job_key, measured_before, run_meta, run_script, skip_note
from unlearnable.attacks import create_attack
from unlearnable.data import load
from unlearnable.errors import UnlearnableError
from unlearnable.models import create_model
from unlearnable.params import parse_sets
from unlearnable.training import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--attack", required=True)
    ap.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--eps", default="8", help="comma-separated budgets: 8-bit levels (8), 8/255, or fractions of "
                    "the pixel range below 1 (0.3)")
    ap.add_argument("--train-subset", type=int, default=0)
    ap.add_argument("--victim", default="cnn")
    ap.add_argument("--victim-epochs", type=int, default=TrainConfig.epochs)
    ap.add_argument("--seed", type=int, default=0, help="seeds the victims, and the method unless --set seed=N")
    ap.add_argument("--no-clean", action="store_true", help="skip the clean reference run")
    ap.add_argument("--json", default="benchmarks/results/attacks.jsonl")
    ap.add_argument("--save", default="", help="directory to keep each poisoned set in (for defense benchmarks)")
    ap.add_argument("--overwrite", action="store_true", help="replace sets of the same name in --save")
    ap.add_argument("--resume", action="store_true", help="skip the runs --json has a row for (same data, victim, "
                    "attack, options and budget)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    train_set, test_set = load(args.data)
    if args.train_subset:
        train_set = train_set.take(args.train_subset, seed=args.seed)
    cfg = TrainConfig(epochs=args.victim_epochs, seed=args.seed)
    options = parse_sets(args.options)
    meta = run_meta(data=args.data, train=len(train_set), test=len(test_set), victim=args.victim,
                    victim_epochs=args.victim_epochs, seed=args.seed)
    budgets = budget_list(args.eps)
    for eps in budgets:  # bad options fail now, not after the clean victim's minutes
        create_attack(args.attack, eps=eps, **{"seed": args.seed, **options})
    create_model(args.victim, train_set.channels, train_set.num_classes, train_set.image_size)

    def saved(eps: float) -> Path:
        tag = "-".join([args.attack, *(f"{k}{v}" for k, v in options.items()), f"eps{eps * 255:g}"])
        return Path(args.save) / tag.replace("/", "_")

    def done(**job) -> dict | None:
        return measured_before(args.json, job_key(meta, **job)) if args.resume else None

    def poisoned_job(eps: float) -> dict:
        return {"attack": args.attack, "options": options, "eps": round(eps * 255, 2)}

    for eps in budgets if args.save and not args.overwrite else ():  # another run's set is not replaced unasked
        if saved(eps).exists() and done(**poisoned_job(eps)) is None:
            raise UnlearnableError(f"{saved(eps)} exists (another run's set?); pass --overwrite to replace it")
    rows = []
    if not args.no_clean and (row := done(attack="clean", eps=0)) is not None:
        skip_note("the clean victim", row, args.json)
        rows.append(row)
    elif not args.no_clean:
        r = train(train_set, test_set, args.victim, cfg, description="clean victim")
        rows.append({**meta, "attack": "clean", "eps": 0, "final": r.test_acc, "peak": r.peak_test_acc,
                     "craft_s": 0.0})
        emit(rows[-1], args.json)
    for eps in budgets:
        if (row := done(**poisoned_job(eps))) is not None:
            skip_note(f"{args.attack} at {eps * 255:g}/255", row, args.json)
            rows.append(row)
            continue
        attack = create_attack(args.attack, eps=eps, **{"seed": args.seed, **options})
        t0 = time.perf_counter()
        poisoned = attack.poison(train_set)
        craft = time.perf_counter() - t0
        if args.save:
            from unlearnable.data import save_set

            save_set(poisoned, saved(eps), clean=train_set, overwrite=True)
        r = train(poisoned, test_set, args.victim, cfg, description="poisoned victim")
        extra = {k: getattr(attack, k) for k in ("rounds_", "final_error_") if hasattr(attack, k)}
        rows.append({**meta, **poisoned_job(eps), "final": r.test_acc, "peak": r.peak_test_acc,
                     "craft_s": round(craft, 1), **extra})
        emit(rows[-1], args.json)
    print("\n| attack | options | eps (/255) | crafting s | victim final | victim peak |\n|---|---|---|---|---|---|")
    for row in rows:
        opts = " ".join(f"{k}={v}" for k, v in row.get("options", {}).items())
        print(f"| {row['attack']} | {opts} | {row['eps']} | {row['craft_s']} | {row['final']:.2%} | "
              f"{row['peak']:.2%} |")


if __name__ == "__main__":
    run_script(main, resumable=True)

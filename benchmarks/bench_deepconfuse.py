"""DeepConfuse experiments of the paper (Feng, Cai & Zhou, NeurIPS 2019), on a dataset spec.

    python benchmarks/bench_deepconfuse.py train --eps 0.3 --out G.safetensors [--set preset=fast ...]
    python benchmarks/bench_deepconfuse.py victims --generator G.safetensors [--victims cnn,convnet,svm-linear,...]
    python benchmarks/bench_deepconfuse.py partial --generator G.safetensors [--ratios 0.2,0.6,1.0] [--plot P.png]
    python benchmarks/bench_deepconfuse.py svm-weights --generator G.safetensors --png weights.png
    python benchmarks/bench_deepconfuse.py eps-sweep --eps 0.1,0.15,0.2,0.25,0.3 [--set preset=fast] [--plot P.png]
    python benchmarks/bench_deepconfuse.py speed --generator G.safetensors [--batch-sizes 256,1024]

``victims`` is the transfer experiment (Fig. 6/7: each victim trained on clean vs protected data, clean test
accuracy); ``partial`` protects a seeded fraction of the training set and compares with flipping the labels of
the same fraction at random (Fig. 5); ``svm-weights`` writes the per-class weight images of a linear SVM trained on
clean data (top row) and on protected data (bottom row) (Fig. 10), and their weights beside the PNG
(``P.clean.npy``, ``P.deepconfuse.npy``) for re-plotting; ``eps-sweep`` trains one generator per budget
and reports the default victim (Fig. 4); ``speed`` times ``protect`` over the training split on the default device
(best of ``--repeats`` runs per batch size, after a warm-up batch). Neural victims use the package recipe
(``--epochs``, exactly), or ``--recipe deepconfuse-paper``, the paper's MNIST test protocol (Adam, 2 epochs of
batch 64, no augmentation; with ``--victims lenet``, its network); ``--subset N`` trains every victim on a seeded
stratified subset (resnet18 is ~60 images/s on a 2-core CPU; it trains on 2,000 images with ``--batch-size 64 --lr
0.05``, BENCHMARKS.md). ``--victim-seeds 0,1,2`` trains each ``victims`` victim once per seed and reports the
means, with the runs and their standard deviation beside them. ``--plot`` draws ``partial`` and ``eps-sweep`` as
curves (PNG) with the clean victim as a dashed line, after training that victim too. One JSON line per result goes
to ``--json``; with ``--resume``, ``train``, ``eps-sweep``, ``victims`` and ``partial`` skip what a row there already
holds (same data, options, victim settings and budget, victim or ratio; the plot's clean victim too), so a sweep
stopped after some budgets goes on from the next one (each is a generator: minutes to a quarter of an hour).

The official pretrained generators (``kingfengji/DeepConfuse``, e.g. ``MNIST/pretrained/atkmnist_best.pt``) run
through ``victims`` once imported: ``unlearnable import-generator FILE --arch ae-official --eps 0.3 [--targeted]
--out G.safetensors``; a targeted generator's rows add ``target_rate``, the share of clean test images each victim
puts in eta(y) = (y + 1) mod C.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from _common import (budget_list, emit, job_key, measured_before, number_list, run_meta, run_script, seed_list,
                     skip_note, summary, victim_runs)
from unlearnable.attacks import create_attack
from unlearnable.attacks.deepconfuse import load_generator, protect, protect_set, target_rate
from unlearnable.data import load
from unlearnable.params import parse_sets
from unlearnable.report import curve_plot
from unlearnable.training import RECIPES, TrainConfig, resolve_device, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=["train", "victims", "partial", "svm-weights", "eps-sweep", "speed"])
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--generator", help="a generator saved by `train` or `unlearnable poison --attack deepconfuse`")
    ap.add_argument("--eps", default="0.3", help="budget(s) for train / eps-sweep: fractions of the pixel range "
                    "below 1 (0.3), 8/255, or 8-bit levels (8)")
    ap.add_argument("--set", dest="options", action="append", default=[], metavar="KEY=VALUE",
                    help="DeepConfuse options for train / eps-sweep")
    ap.add_argument("--out", help="where `train` writes the generator")
    ap.add_argument("--victims", default="cnn,convnet,svm-linear,svm-rbf,random-forest")
    ap.add_argument("--ratios", default="0.2,0.4,0.6,0.8,1.0")
    ap.add_argument("--recipe", default="default", help="neural victims' recipe (`unlearnable list recipes`), e.g. "
                    "deepconfuse-paper, the paper's MNIST test protocol, with --victims lenet")
    ap.add_argument("--epochs", type=int, help=f"neural victims' epochs (default: {TrainConfig.epochs}, exactly, "
                    "with the default recipe; another recipe's own)")
    ap.add_argument("--batch-size", type=int, help="neural victims' batch (default: the recipe's; a small subset "
                    "needs a smaller one to take enough steps)")
    ap.add_argument("--lr", type=float, help="neural victims' peak learning rate (default: the recipe's)")
    ap.add_argument("--subset", type=int, default=0, help="train victims on a seeded subset of N images")
    ap.add_argument("--seed", type=int, default=0, help="seeds the victims, and the method unless --set seed=N")
    ap.add_argument("--victim-seeds", default="", help="`victims`: comma-separated victim seeds (default: --seed); "
                                                         "the rows give their means")
    ap.add_argument("--batch-sizes", default="256,1024", help="`speed`: protect batch sizes")
    ap.add_argument("--repeats", type=int, default=3, help="`speed`: timed runs per batch size (the best counts)")
    ap.add_argument("--png", default="deepconfuse-svm-weights.png")
    ap.add_argument("--plot", help="`partial` / `eps-sweep`: also train the clean victim and draw the curves here")
    ap.add_argument("--json", default="benchmarks/results/deepconfuse.jsonl")
    ap.add_argument("--resume", action="store_true", help="skip the budgets, victims and ratios --json has a row for "
                    "(train, eps-sweep, victims, partial)")
    args = ap.parse_args()
    seeds = seed_list(args.victim_seeds, args.seed)
    batch_sizes = number_list(args.batch_sizes, int, "--batch-sizes")
    ratios = number_list(args.ratios, float, "--ratios")
    budgets = budget_list(args.eps)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.experiment == "train" and args.out and len(budgets) > 1:  # each would overwrite the one before
        ap.error("train writes one generator to --out: give one --eps (eps-sweep names a file per budget)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    train_set, test_set = load(args.data)
    options = parse_sets(args.options)
    given = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    given = {k: v for k, v in given.items() if v is not None}
    if args.recipe == "default" or "epochs" in given:  # exactly --epochs (the trainer's 3), also on a --subset
        given["min_steps"] = 0
    cfg = RECIPES.create(args.recipe, seed=args.seed, **given)
    base = run_meta(data=args.data, seed=args.seed, victim_recipe=args.recipe, victim_epochs=cfg.epochs,
                    victim_batch_size=cfg.batch_size, victim_lr=cfg.lr, subset=args.subset or None,
                    generator=args.generator if args.experiment not in ("train", "eps-sweep") else None)

    def victim_set(data):
        return data.take(args.subset, seed=args.seed) if args.subset else data

    def record(row: dict) -> dict:
        return emit({**base, **row}, args.json)

    def done(what: str, **job) -> dict | None:
        """With ``--resume``, the row of ``job`` measured before (and a line saying so), else None."""
        key = job_key(base, experiment=args.experiment, **job)
        if args.experiment in ("train", "eps-sweep"):
            del key["generator"]  # a budget's row names the file it wrote (--out), not the generator it used
        row = measured_before(args.json, key) if args.resume else None
        if row is not None:
            skip_note(what, row, args.json)
        return row

    def clean_victim() -> float:
        """The default victim on the clean training split: the dashed line of a ``--plot``."""
        row = done("the clean victim", victim="cnn", eps=None)  # eps None: no budget, no generator
        if row is None:
            acc = train(victim_set(train_set), test_set, "cnn", cfg).test_acc
            row = record({"experiment": args.experiment, "victim": "cnn", "eps": None, "clean": acc})
        return row["clean"]

    if args.experiment in ("train", "eps-sweep"):
        rows = []
        for eps in budgets:
            row = done(f"eps {eps:g}", eps=eps, options=options)
            if row is not None:
                rows.append(row)
                continue
            attack = create_attack("deepconfuse", eps=eps, **{"seed": args.seed, **options})
            t0 = time.perf_counter()
            attack.fit(train_set)
            seconds = time.perf_counter() - t0
            if args.out:
                out = Path(args.out if args.experiment == "train" else f"{args.out}-eps{eps:g}.safetensors")
                attack.save_generator(out)
            protected = protect_set(attack.generator_, train_set)
            result = train(victim_set(protected), test_set, "cnn", cfg)
            row = {"experiment": args.experiment, "generator": str(out) if args.out else None, "eps": eps,
                   "options": options, "train_s": round(seconds, 1),
                   "trials": len(attack.history_), "victim": "cnn", "acc": result.test_acc,
                   "peak": result.peak_test_acc}
            if attack.targeted:  # the paper's label-specific success: clean test images the victim puts in eta(y)
                row["target_rate"] = target_rate(result.model, test_set)
            rows.append(record(row))
        if args.plot and args.experiment == "eps-sweep":
            plot = curve_plot({"DeepConfuse": ([r["eps"] for r in rows], [r["acc"] for r in rows])}, args.plot,
                              "eps (L-inf budget, fraction of the pixel range)", "victim clean test accuracy",
                              f"{args.data}: victim `cnn` {cfg.epochs} epochs on protected data (Fig. 4)",
                              {"clean training": clean_victim()})
            print(f"plot: {plot}")
        return

    if not args.generator:
        ap.error(f"{args.experiment} needs --generator")
    if args.experiment == "speed":
        device = resolve_device()
        generator = load_generator(args.generator, device)
        for bs in batch_sizes:
            protect(generator, train_set.x[:bs], bs)  # warm-up: oneDNN / cuDNN pick their kernels
            seconds = []
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                protect(generator, train_set.x, bs)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds.append(time.perf_counter() - t0)
            record({"experiment": "speed", "device": str(device), "threads": torch.get_num_threads(), "batch": bs,
                    "images": len(train_set), "image_shape": list(train_set.x.shape[1:]),
                    "s": [round(s, 3) for s in seconds], "images_per_s": round(len(train_set) / min(seconds))})
        return
    generator = load_generator(args.generator)
    t0 = time.perf_counter()
    protected = protect_set(generator, train_set)
    protect_s = time.perf_counter() - t0
    eps = generator.config["eps"]

    if args.experiment == "victims":
        cfg = dataclasses.replace(cfg, eval_every=cfg.epochs)  # only the final accuracy is reported
        targeted = generator.config.get("targeted", False)
        for name in args.victims.split(","):
            if done(f"victim {name}", victim=name, victim_seeds=seeds):
                continue
            clean = victim_runs(victim_set(train_set), test_set, name, cfg, seeds)
            bad = victim_runs(victim_set(protected), test_set, name, cfg, seeds)
            rates = [target_rate(r.model, test_set) for r in bad] if targeted else []
            record({"experiment": "victims", "eps": eps, "victim": name, "victim_seeds": seeds,
                    **summary("clean", [r.test_acc for r in clean]), **summary("acc", [r.test_acc for r in bad]),
                    **(summary("target_rate", rates) if rates else {}),
                    "train": len(victim_set(train_set)), "fit_s": round(bad[0].seconds, 1)})
    elif args.experiment == "partial":
        rows = []
        for ratio in ratios:
            row = done(f"ratio {ratio:g}", ratio=ratio)
            if row is not None:
                rows.append(row)
                continue
            index = create_attack("label-flip", ratio=ratio, seed=args.seed).select(len(train_set))
            x = train_set.x.copy()
            x[index] = protected.x[index]
            mixed = train_set.replace(x=x)
            flipped = create_attack("label-flip", ratio=ratio, seed=args.seed).poison(train_set)
            rows.append(record({"experiment": "partial", "eps": eps, "ratio": ratio,
                                "deepconfuse": train(victim_set(mixed), test_set, "cnn", cfg).test_acc,
                                "label_flip": train(victim_set(flipped), test_set, "cnn", cfg).test_acc}))
        if args.plot:
            ratios = [r["ratio"] for r in rows]
            plot = curve_plot({f"DeepConfuse, eps {eps:g}": (ratios, [r["deepconfuse"] for r in rows]),
                               "random label flip": (ratios, [r["label_flip"] for r in rows])}, args.plot,
                              "fraction of the training set changed", "victim clean test accuracy",
                              f"{args.data}: victim `cnn` {cfg.epochs} epochs (Fig. 5)",
                              {"clean training": clean_victim()})
            print(f"plot: {plot}")
    elif args.experiment == "svm-weights":
        from unlearnable.report import image_grid

        rows, accs = [], {}
        for title, data in (("clean", train_set), ("DeepConfuse", protected)):
            result = train(victim_set(data), test_set, "svm-linear", cfg)
            w = result.model.weight_images(data.x.shape[1:])
            # per class, +-(99th percentile of |w|) -> white/black: a few rarely-lit border pixels get huge
            # weights and would grey out everything else under max scaling
            top = np.percentile(np.abs(w).reshape(len(w), -1), 99, axis=1).reshape(-1, 1, 1, 1)
            scaled = 127.5 + 127.5 * w / np.maximum(top, 1e-12)
            np.save(Path(args.png).with_suffix(f".{title.lower()}.npy"), w)
            rows.append((f"{title}\n{result.test_acc:.1%}", scaled.clip(0, 255).astype(np.uint8)))
            accs[title] = result.test_acc
        path = image_grid(rows, args.png, classes=train_set.classes, labels=np.arange(train_set.num_classes))
        record({"experiment": "svm-weights", "eps": eps, "png": str(path), **accs})
    print(f"protect: {len(train_set)} images in {protect_s:.1f} s ({len(train_set) / protect_s:.0f} images/s)")


if __name__ == "__main__":
    run_script(main, resumable=True)

"""Default victim on full Fashion-MNIST: our trainer vs a plain PyTorch loop on the same model, same run.

Reports seconds to reach 90% clean test accuracy, seconds to finish, final and peak accuracy for each, and the
speed-up to 90%. Evaluation time is excluded from the seconds (both loops are evaluated after every epoch).

    python benchmarks/bench_trainer.py [--epochs 3] [--plain-epochs 6] [--json out.json]
    python benchmarks/bench_trainer.py --data npz:small.npz --subset 2000 --epochs 1 --plain-epochs 1   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import run_script
from unlearnable.data import load
from unlearnable.data.store import check_out_file, write_atomic
from unlearnable.models import create_model
from unlearnable.training import TrainConfig, evaluate, resolve_device, train


def plain_loop(trainset, testset, epochs: int, seed: int = 0) -> dict:
    """The loop a tutorial would write: torchvision-style Dataset + DataLoader, per-sample ToTensor and flip,
    SGD(0.01, momentum 0.9), fp32, NCHW, evaluation after each epoch."""
    from torch.utils.data import DataLoader, Dataset
    import torchvision.transforms.v2 as T

    class DS(Dataset):
        def __init__(self, data):
            self.x, self.y = data.x, data.y
            self.t = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.RandomHorizontalFlip()])

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            return self.t(self.x[i].transpose(1, 2, 0).copy()), int(self.y[i])  # (the set's arrays are read-only)

    torch.manual_seed(seed)
    device = resolve_device()  # where the package trainer runs too: the speed-up compares like with like
    model = create_model("cnn", trainset.channels, trainset.num_classes, trainset.image_size[0]).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = DataLoader(DS(trainset), batch_size=128, shuffle=True, num_workers=0)
    hist, seconds = [], 0.0
    for epoch in range(epochs):
        model.train()
        t0 = time.perf_counter()
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        seconds += time.perf_counter() - t0
        hist.append({"epoch": epoch + 1, "seconds": seconds, "test_acc": evaluate(model, testset, amp=False)})
    return summarise(hist)


def summarise(hist: list[dict]) -> dict:
    to90 = next((h["seconds"] for h in hist if h["test_acc"] >= 0.90), None)
    return {"seconds_to_90": to90, "seconds": hist[-1]["seconds"], "final": hist[-1]["test_acc"],
            "peak": max(h["test_acc"] for h in hist), "history": hist}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist", help="dataset spec (default: the full Fashion-MNIST)")
    ap.add_argument("--subset", type=int, default=0, help="train on a seeded stratified subset of N images")
    ap.add_argument("--epochs", type=int, default=TrainConfig().epochs, help="our trainer's epochs")
    ap.add_argument("--plain-epochs", type=int, default=6, help="the plain loop's epochs")
    ap.add_argument("--json", help="write the result here (replaced if it exists)")
    args = ap.parse_args()
    if min(args.epochs, args.plain_epochs) < 1 or args.subset < 0:
        ap.error("--epochs and --plain-epochs must be >= 1, --subset >= 0")
    if args.json:  # an unwritable place fails now, not after minutes of training
        check_out_file(args.json, overwrite=True)
    trainset, testset = load(args.data)
    if args.subset:
        trainset = trainset.take(args.subset, seed=0)
    r = train(trainset, testset, "cnn", TrainConfig(epochs=args.epochs))
    ours = summarise(r.history)
    plain = plain_loop(trainset, testset, args.plain_epochs)
    out = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "data": args.data,
           "train": len(trainset), "ours": ours, "plain": plain}
    if ours["seconds_to_90"] and plain["seconds_to_90"]:
        out["speedup_to_90"] = plain["seconds_to_90"] / ours["seconds_to_90"]
    for name in ("ours", "plain"):
        s = out[name]
        to90 = "not reached" if s["seconds_to_90"] is None else f"{s['seconds_to_90']:.1f} s"
        print(f"{name:6s} to 90%: {to90}  total {s['seconds']:.1f} s  final {s['final']:.2%}  peak {s['peak']:.2%}")
    speedup = out.get("speedup_to_90")
    print(f"speed-up to 90%: {f'{speedup:.2f}x' if speedup else 'n/a (90% not reached by both)'}")
    if args.json:
        write_atomic(Path(args.json), lambda tmp: tmp.write_text(json.dumps(out, indent=1)))


if __name__ == "__main__":
    run_script(main)

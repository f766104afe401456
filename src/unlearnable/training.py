"""The one training loop of the package, and ``evaluate``.

Data lives as one uint8 tensor on the device and batches are index slices of a seeded permutation; augmentation
(random crop with zero padding, horizontal flip) is a batched tensor op, as in KellerJordan/cifar10-airbench. The
optimiser is SGD with Nesterov momentum under a one-cycle (or cosine) schedule with label smoothing (Adam where a
paper's victim recipe in :data:`RECIPES` uses it). On CUDA the loop uses channels_last memory format and bf16
autocast; on a CPU with native bf16 (AVX512-BF16/AMX) both pay off too (a 2.5x speed-up for the default victim,
BENCHMARKS.md), so both default to on wherever they are fast; on a CPU that only emulates bf16 (AVX-512 without
AVX512-BF16) autocast halves the speed and stays off.

Attacks that interleave training with perturbation updates (EM, DeepConfuse...) drive the same loop through
:class:`Trainer.step`, so there is exactly one optimiser/augmentation/schedule implementation.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import progress
from .data.imageset import ImageSet, require_alike, require_set
from .data.store import torch_save_atomic
from .errors import UnlearnableError
from .models import CLASSICAL, create_model
from .models.classical import PixelClassifier
from .recipes import RECIPES  # noqa: F401  (its factories are below; the registry imports no torch)
from .resume import read_state, rng_state, set_rng_state

log = logging.getLogger(__name__)

NO_FLIP_SOURCES = ("mnist", "svhn")  # digits: a mirrored 2 is not a 2


@dataclass
class TrainConfig:
    """Victim training hyperparameters (defaults: the fast CPU recipe measured in BENCHMARKS.md)."""

    epochs: int = 3  # passes over the training set (the CPU recipe: 92% on Fashion-MNIST in ~30 s)
    batch_size: int = 256  # samples per SGD step
    lr: float = 0.2  # peak learning rate of the schedule
    optimizer: str = "sgd"  # "sgd" (with Nesterov momentum) or "adam" (PyTorch's defaults; momentum unused)
    momentum: float = 0.9  # Nesterov momentum (sgd)
    weight_decay: float = 5e-4  # L2 penalty on all weights
    label_smoothing: float = 0.1  # cross-entropy label smoothing
    schedule: str = "onecycle"  # "onecycle" (linear warm-up then cosine), "cosine" or "constant"
    warmup: float = 0.15  # fraction of the steps spent warming up (onecycle)
    augment: bool = True  # random crop + (where sensible) horizontal flip
    crop_pad: int | None = None  # zero padding for the random crop; None: 0 for <= 28 px (a short run loses more
    #   accuracy to it than it gains, BENCHMARKS.md), else 4
    flip: bool | None = None  # horizontal flip; None: on except for digit data (mnist, svhn)
    amp: bool | None = None  # bf16 autocast; None: on for CUDA and for CPUs with native bf16
    channels_last: bool | None = None  # channels_last memory format; None: on
    grad_clip: float | None = None  # clip the gradient norm (the EM surrogate's 5.0); None: off
    eval_every: int = 1  # evaluate on the test split every N epochs (and after the last)
    min_steps: int = 0  # at least this many SGD steps: a small set trains more epochs (0: exactly ``epochs``;
    #   the CLI's train and dvae-check ask for RECIPE_STEPS unless --epochs is given)
    seed: int = 0  # initialisation, batch order and augmentation
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"...

    def __post_init__(self) -> None:
        from .params import check, check_types

        check_types(self)
        check(self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}")
        check(self.batch_size >= 1, f"batch_size must be at least 1, got {self.batch_size}")
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.eval_every >= 1, f"eval_every must be at least 1, got {self.eval_every}")
        check(self.min_steps >= 0, f"min_steps must not be negative, got {self.min_steps}")
        check(0 <= self.momentum < 1 and self.weight_decay >= 0,
              f"momentum must lie in [0, 1) and weight_decay be >= 0, got {self.momentum}, {self.weight_decay}")
        check(0 <= self.label_smoothing < 1 and 0 <= self.warmup < 1, "label_smoothing and warmup must lie in "
              f"[0, 1), got {self.label_smoothing}, {self.warmup}")
        check(self.crop_pad is None or self.crop_pad >= 0, f"crop_pad must not be negative, got {self.crop_pad}")
        check(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive, got {self.grad_clip}")
        check(self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        check(self.optimizer in OPTIMIZERS,
              f"unknown optimizer {self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def epochs_for(self, n: int) -> int:
        """The epochs :func:`train` runs on ``n`` images: ``epochs``, or more where those would make fewer than
        ``min_steps`` steps."""
        return epochs_with_steps(self.epochs, self.min_steps, len(batch_starts(n, self.batch_size)))


def epochs_with_steps(epochs: int, min_steps: int, steps_per_epoch: int) -> int:
    """``epochs``, or the fewest epochs of ``steps_per_epoch`` that make ``min_steps`` when those make fewer: the
    rule of the victims' and the D-VAE's ``min_steps``."""
    return max(epochs, -(-min_steps // max(1, steps_per_epoch)))


#: The default recipe's SGD steps on full Fashion-MNIST (3 epochs of 235 batches of 256): what the CLI's victims
#: train at least. Its 3 epochs of a 2,000-image set are 24 steps, after which a victim on CLEAN images scored
#: 18-26% where 15 epochs reached 78-80% (BENCHMARKS.md, "Default victim", session 54).
RECIPE_STEPS = 705

def default_recipe(**changes: Any) -> TrainConfig:
    """The package's victim: SGD with Nesterov momentum, one-cycle, label smoothing, crop/flip, >= 705 steps."""
    return TrainConfig(**{"min_steps": RECIPE_STEPS, **changes})


def deepconfuse_paper_recipe(**changes: Any) -> TrainConfig:
    """DeepConfuse's MNIST test protocol: Adam 0.01, batch 64, 2 epochs, no augmentation (pair with lenet).

    From kingfengji/DeepConfuse ``MNIST/test_model.py`` (Feng, Cai & Zhou, NeurIPS 2019): ``optim.Adam(lr=0.01)``
    with PyTorch's other defaults (no weight decay), a constant rate, plain cross-entropy, ``--batch-size 64``,
    ``--epochs 2`` of shuffled batches, unaugmented float32 images; its network is ``create_net``, our ``lenet``.
    A small set trains at least the 1,876 steps those 2 epochs make on 60,000 images.
    """
    recipe = dict(optimizer="adam", lr=0.01, batch_size=64, epochs=2, min_steps=1876, schedule="constant",
                  label_smoothing=0.0, weight_decay=0.0, augment=False, amp=False)
    return TrainConfig(**{**recipe, **changes})


def batch_starts(n: int, batch_size: int) -> list[int]:
    """The first index of each batch of an epoch over ``n`` images; a last batch of one image joins the one before
    (it would break batch norm: lenet's BatchNorm1d)."""
    starts = list(range(0, n, batch_size))
    if batch_size > 1 and len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return starts


SCHEDULES = ("onecycle", "cosine", "constant")
OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainResult:
    """What a training run produced: the model, per-epoch history and the headline accuracies."""

    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0  # training time, evaluation excluded

    @property
    def test_acc(self) -> float:
        evals = [h["test_acc"] for h in self.history if "test_acc" in h]
        return evals[-1] if evals else float("nan")

    @property
    def peak_test_acc(self) -> float:
        evals = [h["test_acc"] for h in self.history if "test_acc" in h]
        return max(evals) if evals else float("nan")

    @property
    def train_acc(self) -> float:
        return self.history[-1]["train_acc"] if self.history else float("nan")

    def summary(self) -> dict[str, Any]:
        return {"test_acc": self.test_acc, "peak_test_acc": self.peak_test_acc, "train_acc": self.train_acc,
                "seconds": round(self.seconds, 2), "epochs": len(self.history), "history": self.history}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` (CUDA when torch sees it, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``: the devices the package
    is written and tested for; anything else is a one-line error rather than a failure deep inside a method."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UnlearnableError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise UnlearnableError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UnlearnableError(f"device {device!r} asked for but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UnlearnableError(f"device {device!r}: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return dev


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat subnormal floats (below 1.2e-38 in magnitude) as zero on the CPU while the block runs.

    Intel CPUs compute on subnormals up to ~100x slower, and some training produces them in its backward pass:
    a D-VAE stage-1 epoch on 15,000 poisoned Fashion-MNIST images took 185 s instead of 28 s on this project's
    Xeon, with the same losses to the printed digits (BENCHMARKS.md, D-VAE session 10). No effect on CUDA.
    torch has no getter for the mode: a subnormal times one tells whether it was on, and it is left as it was.
    """
    was_on = bool((torch.tensor([1e-39]) * torch.tensor([1.0])).item() == 0)
    on = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if on and not was_on:
            torch.set_flush_denormal(False)


@functools.cache
def keep_freed_heap() -> bool:
    """Let glibc's malloc keep up to 128 MB of freed memory for reuse; once per process, True where it applied.

    An inference loop allocates and frees the same activations every batch. Under glibc's default policy blocks of
    a few MB come from fresh ``mmap`` pages or are trimmed back to the OS on free, so each batch pays page faults
    for memory it just gave away: ``protect`` with a 28x28 generator ran at ~3,500 images/s on the Zen 1 and at
    ~4,300 with these settings (BENCHMARKS.md, DeepConfuse session 15), at the same peak RSS. The settings are the
    mmap threshold at 32 MB (the ceiling of glibc's own adaptive threshold) and a 128 MB trim threshold; they are
    process-wide and stay. Training did not change (2 epochs of ``cnn`` on 8,000 images: 8.6 vs 8.3 s), so only
    inference loops call this. Elsewhere (no glibc) it does nothing.
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 128 << 20))


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast speeds this device up (CUDA, or a CPU with native bf16 instructions)."""
    if device.type == "cuda":  # bf16 units from Ampere (compute capability 8) on; older GPUs emulate it
        try:
            return torch.cuda.get_device_capability(device)[0] >= 8
        except (RuntimeError, AssertionError, ValueError):
            return True
    # oneDNN reports bf16 "supported" on any AVX-512 CPU, but without AVX512-BF16 or AMX it emulates it: measured
    # on such a Xeon (2026-11-23), a `cnn` training step ran at 946 images/s in bf16 against 1,830 in float32.
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global generator (model initialisation; kornia draws its augmentations from it) and return a
    CPU generator of the same seed for the package's own draws. Callers run under :func:`keeps_global_rng`, so the
    user's global state is back as it was afterwards. numpy's global generator is not touched (nothing here draws
    from it)."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


_OUTERMOST = threading.local()


def keeps_global_rng(fn: Callable) -> Callable:
    """Run ``fn`` with torch's global random state saved and restored (``torch.random.fork_rng``): a notebook that
    seeds its own draws gets the same ones whatever library call ran in between (each call seeded the global
    generator with its own seed, so later draws were the same for every seed the user set). Only the outermost
    call forks: inside the package the random streams stay as they were (a victim trained within an attack
    reseeds the global generator for what follows it), so results are those of earlier versions bit for bit.
    The CUDA generators are kept too wherever CUDA is available (a seed queued before CUDA started would otherwise
    be replaced). torch's generator is one per process: calls from several threads at once restore each other's
    states, so keep library calls that train or craft to one thread."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if getattr(_OUTERMOST, "active", False):
            return fn(*args, **kwargs)
        cuda = torch.cuda.is_available()
        _OUTERMOST.active = True
        try:
            with torch.random.fork_rng(devices=list(range(torch.cuda.device_count())) if cuda else []):
                return fn(*args, **kwargs)
        finally:
            _OUTERMOST.active = False

    return wrapper


def random_crop(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Batched random crop: zero-pad by ``pad`` and cut each sample at its own random offset."""
    b, _, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (2, b), generator=gen).to(x.device)
    rows = (off[0, :, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (off[1, :, None] + torch.arange(w, device=x.device))[:, None, None, :]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return xp[torch.arange(b, device=x.device)[:, None, None, None], chans, rows, cols]


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    mask = (torch.rand(x.shape[0], generator=gen) < 0.5).to(x.device)
    return torch.where(mask[:, None, None, None], x.flip(3), x)


class Trainer:
    """One optimiser, schedule and augmentation policy for a model; :meth:`step` does one optimiser step.

    ``x`` passed to :meth:`step` are float images in [0, 1] (possibly carrying an attack's perturbation).
    """

    def __init__(self, model: nn.Module, cfg: TrainConfig, total_steps: int, image_size: int,
                 flip: bool = True, device: torch.device | None = None, gen: torch.Generator | None = None,
                 lr_lambda: Callable[[int], float] | None = None):
        self.cfg, self.model = cfg, model
        self.device = device or resolve_device(cfg.device)
        self.amp = cfg.amp if cfg.amp is not None else fast_bf16(self.device)
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else True
        self.model.to(self.device, memory_format=torch.channels_last if self.channels_last else torch.preserve_format)
        self.crop_pad = cfg.crop_pad if cfg.crop_pad is not None else default_crop_pad(image_size)
        self.flip = flip if cfg.flip is None else cfg.flip
        self.gen = gen or torch.Generator().manual_seed(cfg.seed)
        if cfg.optimizer == "adam":
            self.opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            self.opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                       nesterov=cfg.momentum > 0, weight_decay=cfg.weight_decay)
        # lr_lambda: a method's own schedule (step -> factor of cfg.lr), e.g. REM's step decay
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda or _schedule(cfg, max(total_steps, 1)))

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cfg.augment:
            return x
        if self.crop_pad:
            x = random_crop(x, self.crop_pad, self.gen)
        return random_flip(x, self.gen) if self.flip else x

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, int]:
        """One optimiser step on an (augmented) batch; returns the summed loss and the number correct."""
        self.model.train()
        x = self.augment(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            try:
                out = self.model(x)
            except ValueError as e:  # batch norm over one value per channel (one image, a 1 x 1 map)
                if "Expected more than 1 value per channel" not in str(e):
                    raise
                raise UnlearnableError(f"a batch of {len(x)} image(s) cannot train {type(self.model).__name__}: its "
                                       "batch normalisation needs two or more values per channel; raise the batch "
                                       "size or give it more images") from None
            loss = F.cross_entropy(out.float(), y, label_smoothing=self.cfg.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.opt.step()
        self.sched.step()
        return loss.item() * len(y), int((out.argmax(1) == y).sum())


def _schedule(cfg: TrainConfig, total: int) -> Callable[[int], float]:
    warm = max(1, int(cfg.warmup * total)) if cfg.warmup > 0 else 0  # warmup=0: the full rate from the first step

    def onecycle(step: int) -> float:
        if step < warm:
            return 0.1 + 0.9 * step / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.5 * (1 + math.cos(math.pi * t))

    if cfg.schedule == "onecycle":
        return onecycle
    if cfg.schedule == "cosine":
        return lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))
    if cfg.schedule == "constant":
        return lambda step: 1.0
    raise UnlearnableError(f"unknown schedule {cfg.schedule!r}; known: {', '.join(SCHEDULES)}")


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 1024, amp: bool | None = None) -> torch.Tensor:
    """The outputs of a torch ``model`` for float (or uint8) images, in eval mode (bf16 autocast where it is fast);
    they stay on the model's device."""
    model.eval()
    dev = next(model.parameters()).device
    amp = fast_bf16(dev) if amp is None else amp
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        xb = xb.float().div(255) if xb.dtype == torch.uint8 else xb
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out.append(model(xb).float())  # float32 whatever autocast computed in: callers' .numpy() works
    return torch.cat(out) if out else torch.empty(0)


def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024, amp: bool | None = None) -> torch.Tensor:
    """Predicted labels for float (or uint8) images (:func:`predict_logits`' argmax for torch models).

    The labels stay on the model's device (the CPU for scikit-learn victims): call ``.cpu()`` before ``.numpy()``.
    """
    if isinstance(model, PixelClassifier):
        return torch.from_numpy(np.asarray(model.predict(x), dtype=np.int64))
    logits = predict_logits(model, x, batch_size, amp)
    return logits.argmax(1) if len(logits) else torch.empty(0, dtype=torch.long)


def evaluate(model: nn.Module, data: ImageSet | tuple[torch.Tensor, torch.Tensor], batch_size: int = 1024,
             amp: bool | None = None) -> float:
    """Accuracy (0..1) of ``model`` on an ImageSet or on ``(images, labels)`` tensors (``amp``: as in
    :func:`predict_logits`)."""
    if isinstance(data, ImageSet):
        x, y = torch.from_numpy(np.array(data.x)), torch.from_numpy(data.y)
    else:
        x, y = data
    pred = predict(model, x, batch_size, amp)
    return float((pred.cpu() == y.cpu()).float().mean()) if len(y) else float("nan")


def default_crop_pad(image_size: int) -> int:
    """The victim's random-crop padding: none for <= 28 px (BENCHMARKS.md), 4 above (the CIFAR recipe)."""
    return 0 if image_size <= 28 else 4


def default_flip(source: str) -> bool:
    return not any(source.startswith(s) for s in NO_FLIP_SOURCES)


@keeps_global_rng
def train(trainset: ImageSet, testset: ImageSet | None = None, model: str | nn.Module = "cnn",
          cfg: TrainConfig | None = None, description: str = "training",
          on_epoch: Callable[[int, nn.Module], None] | None = None, state_path: str | Path | None = None,
          **model_kwargs: Any) -> TrainResult:
    """Train ``model`` (a registry name or a module) on ``trainset``; evaluate on the clean ``testset``.

    ``on_epoch(epoch, model)`` is called after each epoch (1-based), e.g. to keep checkpoints (SEP).
    ``state_path``: after each epoch (and its ``on_epoch``) the model, optimiser, schedule, history and random
    state are written there; a run with the same recipe that finds the file continues after the last finished
    epoch, with the result of a run never interrupted, and the file is removed when training ends.
    """
    require_set(trainset, "the training set")
    if testset is not None:
        require_set(testset, "the test set")
    if cfg is not None and not isinstance(cfg, TrainConfig):
        raise UnlearnableError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    cfg = cfg or TrainConfig()
    if len(trainset) == 0:
        raise UnlearnableError("the training set is empty")
    if testset is not None:
        require_alike(testset, trainset, "test")
        if len(testset) == 0:
            raise UnlearnableError("the test set is empty (a seeded 20% test split needs 3 or more images a class; "
                                   "or give a folder train/ and test/, an npz x_test and y_test)")
    gen = seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    model_name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        if model in CLASSICAL:
            model_kwargs.setdefault("seed", cfg.seed)
        model = create_model(model, trainset.channels, trainset.num_classes, trainset.image_size, **model_kwargs)
    if isinstance(model, PixelClassifier):
        return _fit_classical(model, trainset, testset, description)
    if (min(cfg.batch_size, len(trainset)) == 1
            and any(isinstance(m, nn.BatchNorm1d) for m in model.modules())):
        raise UnlearnableError(f"batches of one image cannot train {model_name} (its batch normalisation "
                               "of features needs two or more): raise the batch size or give it more images")
    x = torch.from_numpy(np.array(trainset.x)).to(device)  # a copy: saved sets are read-only memory maps
    y = torch.from_numpy(trainset.y).to(device)
    starts = batch_starts(len(y), cfg.batch_size)
    ends = starts[1:] + [len(y)]
    steps_per_epoch = len(starts)
    epochs = cfg.epochs_for(len(y))
    # tested as often, in steps, as the epochs asked for would have been: not 89 times in 89 short epochs
    eval_every = cfg.eval_every * max(1, epochs // cfg.epochs)
    if epochs > cfg.epochs:
        log.info("training %d epochs of %d steps, so that it makes min_steps=%d (epochs=%d would make %d)",
                 epochs, steps_per_epoch, cfg.min_steps, cfg.epochs, cfg.epochs * steps_per_epoch)
    trainer = Trainer(model, cfg, epochs * steps_per_epoch, trainset.image_size[0],
                      flip=default_flip(trainset.source), device=device, gen=gen)
    test = None
    if testset is not None:
        test = (torch.from_numpy(np.array(testset.x)).to(device), torch.from_numpy(testset.y).to(device))
    result, first = TrainResult(model), 0
    key = None
    if state_path is not None:  # what a saved state must match: the recipe, the data and the network's shapes
        shapes = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
        key = {"cfg": dataclasses.asdict(cfg), "data": trainset.fingerprint(), "model": [model_name, shapes]}
        if Path(state_path).is_file():
            first = _resume(Path(state_path), key, trainer, result)
    with progress.task(description, total=epochs * steps_per_epoch) as advance:
        advance(first * steps_per_epoch)
        for epoch in range(first, epochs):
            t0 = time.perf_counter()
            loss_sum, correct = 0.0, 0
            perm = torch.randperm(len(y), generator=gen).to(device)
            for start, end in zip(starts, ends):
                idx = perm[start:end]
                l, c = trainer.step(x[idx].float().div_(255), y[idx])
                loss_sum, correct = loss_sum + l, correct + c
                advance(1)
            result.seconds += time.perf_counter() - t0
            row = {"epoch": epoch + 1, "train_loss": loss_sum / len(y), "train_acc": correct / len(y),
                   "seconds": round(result.seconds, 3)}
            if test is not None and ((epoch + 1) % eval_every == 0 or epoch + 1 == epochs):
                row["test_acc"] = evaluate(model, test, amp=trainer.amp)  # tested as trained
                advance(0, status=f"test {row['test_acc']:.1%}")
            result.history.append(row)
            log.info("epoch %d: %s", epoch + 1, row)
            if on_epoch is not None:
                on_epoch(epoch + 1, model)
            if state_path is not None and epoch + 1 < epochs:  # after the last epoch it would be removed
                torch_save_atomic({"key": key, "epoch": epoch + 1, "model": model.state_dict(),
                                   "opt": trainer.opt.state_dict(), "sched": trainer.sched.state_dict(),
                                   "rng": rng_state(gen, device), "history": result.history, "seconds": result.seconds},
                                  state_path)
    if state_path is not None:
        Path(state_path).unlink(missing_ok=True)
    return result


def _resume(path: Path, key: dict[str, Any], trainer: Trainer, result: TrainResult) -> int:
    """Load an interrupted run's state into ``trainer`` and ``result``; the number of finished epochs (0: none).
    The random state includes the global generators (dropout draws from them), so the run continues as if never
    stopped."""
    state = read_state(path)
    if state is None:
        return 0
    if state.get("key") != key:
        log.warning("ignoring %s (saved by a run with another recipe, data or network)", path)
        return 0
    trainer.model.load_state_dict(state["model"])
    trainer.opt.load_state_dict(state["opt"])
    trainer.sched.load_state_dict(state["sched"])
    set_rng_state(state["rng"], trainer.gen)
    result.history, result.seconds = state["history"], state["seconds"]
    log.info("training: resuming after epoch %d from %s", state["epoch"], path)
    return state["epoch"]


def _fit_classical(model: PixelClassifier, trainset: ImageSet, testset: ImageSet | None,
                   description: str) -> TrainResult:
    """One scikit-learn fit on the flattened training pixels (one 'epoch' in the history)."""
    result = TrainResult(model)
    with progress.task(f"{description} (scikit-learn)", total=1) as advance:
        t0 = time.perf_counter()
        model.fit(trainset.x, trainset.y)
        result.seconds = time.perf_counter() - t0
        advance(1)
    sample = np.random.default_rng(0).permutation(len(trainset))[:5000]  # kernel SVMs predict slowly
    train_acc = float((model.predict(trainset.x[np.sort(sample)]) == trainset.y[np.sort(sample)]).mean())
    row = {"epoch": 1, "train_loss": float("nan"), "train_acc": train_acc, "seconds": round(result.seconds, 3)}
    if testset is not None:
        row["test_acc"] = float((model.predict(testset.x) == testset.y).mean())
    result.history.append(row)
    log.info("%s: %s", description, row)
    return result

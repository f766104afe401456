"""TAP: targeted adversarial poisoning - adversarial examples of a clean model as poisons."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from .. import progress
from ..data import ImageSet
from ..params import check
from ..pgd import PGD, cross_entropy_loss, differentiable_augment
from ..training import default_flip, resolve_device, seed_everything
from .base import Attack
from .surrogate import check_surrogate, clean_surrogate


@dataclass
class TAP(Attack):
    """Targeted adversarial poisoning: Fowl, Goldblum, Chiang, Geiping, Czaja & Goldstein, "Adversarial Examples
    Make Strong Poisons", NeurIPS 2021 (https://arxiv.org/abs/2106.10807; official code lhfowl/adversarial_poisons).

    A surrogate is trained on the CLEAN training set (cached by data + architecture + seed); each poisoned image is
    then a targeted adversarial example of it toward the class ``(y + shift) mod C``: PGD minimises the
    cross-entropy to the target label through a differentiable random crop + flip (kornia), restarted ``restarts``
    times, keeping for each image the restart with the lowest final target loss.

    Defaults (official ``village/options.py``, ``forgemaster_base.py``, ``forgemaster_targeted.py``): shift 1; eps
    8/255; 250 steps of 0.05*eps (0.4/255 at 8/255); random start; differentiable augmentation on; 8 restarts
    (the official keeps the best restart for the whole set; we keep it per image, which can only lower the loss;
    its start is Gaussian noise times eps clipped to the ball, ours uniform in it, the package PGD's; its
    augmentation a bilinear sub-pixel shift of up to 4 px on 32-px images and 2 px on 28-px ones plus a flip, ours
    the package's integer crop with padding 4 at every size plus a flip; its restarts are scored by their last
    augmented losses, ours without augmentation);
    batch 512. The official surrogate is a ResNet-18 trained 40 epochs; ours defaults to the package's ``cnn``
    trained ``surrogate_epochs`` epochs with the package recipe (``model=resnet18`` for the paper's).
    ``preset=fast``: 20 steps of eps/8, 1 restart (BENCHMARKS.md compares its effect with the default's).

    >>> poisoned = TAP(eps=8/255, preset="fast").poison(train)
    """

    model: str = "cnn"  # surrogate architecture, trained on clean data
    model_width: int | None = None  # surrogate width (cnn, convnet); None: the architecture's default
    surrogate_epochs: int = 10  # its training epochs
    steps: int = 250  # PGD steps
    step_size: float | None = None  # None: 0.05 * eps (official tau = 0.05)
    restarts: int = 8  # independent random starts; the best per image is kept
    shift: int = 1  # target class = (y + shift) mod C
    augment: bool = True  # differentiable crop + flip while crafting
    batch_size: int = 512

    name = "tap"
    presets = {"fast": {"steps": 20, "step_size": None, "restarts": 1}, "paper": {"model": "resnet18",
                                                                                 "surrogate_epochs": 40}}

    def validate(self) -> None:
        check_surrogate(self.model, self.model_width)
        check(self.steps >= 1 and self.restarts >= 1 and self.surrogate_epochs >= 1 and self.batch_size >= 1,
              "steps, restarts, surrogate_epochs and batch_size must be >= 1")
        check(self.step_size is None or self.step_size > 0, "step_size must be positive")
        check(self.shift != 0, "shift 0 targets each image's own class; give a shift of 1 or more")

    def _step_size(self) -> float:
        if self.step_size is not None:
            return self.step_size
        return self.eps / 8 if self.preset == "fast" else 0.05 * self.eps

    def craft(self, data: ImageSet, index: np.ndarray):
        check_shift(self.shift, data.num_classes)
        device = resolve_device(self.device)
        gen = seed_everything(self.seed)
        (model,) = clean_surrogate(data, self.model, self.surrogate_epochs, self.seed, device, width=self.model_width)
        aug = differentiable_augment(data.image_size, default_flip(data.source)) if self.augment else None
        pgd = PGD(eps=self.eps, step_size=self._step_size(), steps=self.steps, random_start=True)
        return targeted_pgd(self, pgd, [model], data, index, self.shift, self.restarts, self.batch_size, aug, gen,
                            device, f"tap ({self.steps} steps)"), data.y[index]


def check_shift(shift: int, num_classes: int) -> None:
    """A one-line error for a ``shift`` that makes every target class the true one (error-minimising, not targeted)."""
    check(num_classes >= 2, f"a targeted attack needs two or more classes; this set has {num_classes}")
    check(shift % num_classes != 0, f"shift {shift} maps each of the {num_classes} classes to itself; "
          f"give a shift that is not a multiple of {num_classes}")


def targeted_pgd(attack: Attack, pgd: PGD, models: list, data: ImageSet, index: np.ndarray, shift: int,
                 restarts: int, batch_size: int, augment, gen: torch.Generator, device, description: str
                 ) -> torch.Tensor:
    """Perturbed images ``data[index]`` driven toward ``(y + shift) mod C`` by ``pgd`` against the mean
    cross-entropy of ``models`` (shared by TAP and SEP); the restart with the lowest loss per image wins.

    The pass is resumable: every ``attack.save_every_s`` seconds the finished images and the random state go to
    ``attack``'s checkpoint, and a run with the same parameters continues after the last finished batch, with the
    result of a run never interrupted (the surrogates are cached, and resumed, epoch by epoch)."""
    x_all, y_all = data.tensors(device)
    idx_all = torch.as_tensor(index, device=device)
    out = x_all[idx_all].clone()
    ce = torch.nn.CrossEntropyLoss(reduction="none")
    start, state = 0, attack.load_state()
    if state is not None:
        with attack.restoring():
            start = state["done"]
            out[:start] = state["out"].to(device)
            gen.set_state(state["gen"])
            torch.set_rng_state(state["torch_rng"])  # kornia draws its crops and flips from the global generator
    saved = time.monotonic()
    with progress.task(description, total=restarts * len(index)) as advance:
        advance(restarts * start)
        for b in range(start, len(index), batch_size):
            idx = idx_all[b:b + batch_size]
            x, target = x_all[idx], (y_all[idx] + shift) % data.num_classes
            losses = [cross_entropy_loss(m, target, augment) for m in models]
            best, best_loss = x.clone(), torch.full((len(idx),), float("inf"), device=device)
            for _ in range(restarts):
                delta = pgd.run(lambda z: sum(f(z) for f in losses) / len(losses), x, generator=gen)
                x_adv = (x + delta).clamp(0, 1)
                with torch.no_grad():
                    loss = sum(ce(m(x_adv), target) for m in models) / len(models)
                better = loss < best_loss
                best[better], best_loss[better] = x_adv[better], loss[better]
                advance(len(idx))
            out[b:b + len(idx)] = best
            if time.monotonic() - saved > attack.save_every_s:
                done = b + len(idx)
                attack.save_state({"done": done, "out": out[:done].cpu(), "gen": gen.get_state(),
                                   "torch_rng": torch.get_rng_state()})
                saved = time.monotonic()
    attack.finish_state()
    return out

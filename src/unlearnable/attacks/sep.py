"""SEP: self-ensemble protection - targeted PGD against checkpoints of one training run."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..data import ImageSet
from ..params import check
from ..pgd import PGD
from ..training import resolve_device, seed_everything
from .base import Attack
from .surrogate import check_surrogate, clean_surrogate
from .tap import check_shift, targeted_pgd

log = logging.getLogger(__name__)


@dataclass
class SEP(Attack):
    """Self-ensemble protection: Chen, Yuan, Cheng, Gong, Qin, Wang & Huang, "Self-Ensemble Protection:
    Training Checkpoints Are Good Data Protectors", ICLR 2023 (https://arxiv.org/abs/2211.12005; official code
    Sizhe-Chen/SEP, ``ens.py``).

    One surrogate is trained on clean data; ``checkpoints`` of its run, evenly spaced over its epochs and ending
    with the final model, form the ensemble. Each poisoned image takes ``steps`` signed PGD steps (no random start,
    no augmentation) down the cross-entropy toward ``(y + shift) mod C`` averaged over the checkpoints (the
    official averages the checkpoints' input gradients, which is the gradient of the mean loss).

    Defaults (official ``ens.py`` and README; METHODS.md): shift 5; 30 steps of 1/255 (the official ``alpha`` is
    1/255 at every eps; ours grows to eps/8 above 8/255, and to 2*eps/steps when fewer steps must still cross the
    ball); 30 checkpoints (at most one an epoch); eps 8/255 (the setting the seed paper evaluates; the SEP paper's
    headline uses 2/255). The official surrogate is a
    ResNet-18 trained 120 epochs with checkpoints at improving epochs; ours is the package's ``cnn`` trained
    ``surrogate_epochs`` epochs (``model=resnet18`` for the paper's) with evenly spaced epoch checkpoints.
    ``preset=fast``: 5 checkpoints of a 10-epoch run, 10 steps of eps/5 (a step rule that keeps 1/255 for the
    default 30 steps at 8/255 but lets fewer steps still cross the ball twice).

    >>> poisoned = SEP(eps=8/255, preset="fast").poison(train)
    """

    model: str = "cnn"  # surrogate architecture
    model_width: int | None = None  # surrogate width (cnn, convnet); None: the architecture's default
    surrogate_epochs: int = 30  # epochs of the one training run
    checkpoints: int = 30  # ensemble size, evenly spaced over the run
    steps: int = 30  # PGD iterations
    step_size: float | None = None  # None: max(1/255, eps/8, 2*eps/steps) - the official 1/255 up to 8/255
    shift: int = 5  # target class = (y + shift) mod C
    batch_size: int = 512

    name = "sep"
    presets = {"fast": {"surrogate_epochs": 10, "checkpoints": 5, "steps": 10},
               "paper": {"model": "resnet18", "surrogate_epochs": 120}}

    def validate(self) -> None:
        check_surrogate(self.model, self.model_width)
        check(self.steps >= 1 and self.checkpoints >= 1 and self.surrogate_epochs >= 1 and self.batch_size >= 1,
              "steps, checkpoints, surrogate_epochs and batch_size must be >= 1")
        check(self.step_size is None or self.step_size > 0, "step_size must be positive")
        check(self.shift != 0, "shift 0 targets each image's own class; give a shift of 1 or more")
        if self.checkpoints > self.surrogate_epochs:
            log.warning("sep: %d checkpoints from a %d-epoch run: the ensemble has %d (one an epoch)",
                        self.checkpoints, self.surrogate_epochs, self.surrogate_epochs)

    def _step_size(self) -> float:
        """The PGD step: ``step_size``, else max(1/255, eps/8, 2*eps/steps) (the official 1/255 up to 8/255)."""
        return self.step_size or max(1 / 255, self.eps / 8, 2 * self.eps / self.steps)

    def craft(self, data: ImageSet, index: np.ndarray):
        check_shift(self.shift, data.num_classes)
        device = resolve_device(self.device)
        gen = seed_everything(self.seed)
        models = clean_surrogate(data, self.model, self.surrogate_epochs, self.seed, device,
                                 keep=self.checkpoints, width=self.model_width)
        pgd = PGD(eps=self.eps, step_size=self._step_size(), steps=self.steps)
        return targeted_pgd(self, pgd, models, data, index, self.shift, 1, self.batch_size, None, gen, device,
                            f"sep ({len(models)} checkpoints)"), data.y[index]

"""Random label flips: DeepConfuse's "random flip" baseline for partial poisoning."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data import ImageSet
from ..params import check
from .base import Attack


@dataclass
class LabelFlip(Attack):
    """Replace the labels of the poisoned fraction by other, uniformly drawn classes; images stay untouched.

    Feng, Cai & Zhou, "Learning to Confuse" (NeurIPS 2019), Sec. 4 compares DeepConfuse at a given poisoning
    ratio with flipping the same fraction of labels at random ("one randomly flip[s] the labels in the training
    data"); drawing the new label from the other classes only is our reading (a draw over all C classes would leave
    1/C of the chosen labels as they were). ``eps`` plays no part (it is still checked like
any attack's, so the L-inf default stands).

    >>> flipped = LabelFlip(ratio=0.6, seed=0).poison(train)
    """

    name = "label-flip"
    changes_images = False

    def craft(self, data: ImageSet, index: np.ndarray):
        check(data.num_classes >= 2, f"label-flip needs at least 2 classes, got {data.num_classes}")
        rng = np.random.default_rng(self.seed)
        shift = rng.integers(1, data.num_classes, len(index))  # never the true class
        return None, (data.y[index] + shift) % data.num_classes

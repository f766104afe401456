"""The purifier interface, in scikit-learn's shape: ``fit(ImageSet)`` returns self, ``transform(ImageSet)`` returns
a new ImageSet. Parameters are dataclass fields (set in ``__init__`` only); learned state ends with ``_``."""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..data import ImageSet, require_set
from ..errors import UnlearnableError
from ..params import GivenFields, prepare
from ..resume import Resumable

log = logging.getLogger(__name__)


@dataclass
class Purifier(GivenFields, Resumable):
    """Base of all purification defenses (those that change the training data before a victim trains).

    Purifiers that learn for long (D-VAE) save their training state to :attr:`checkpoint` when a caller sets it
    (:class:`~unlearnable.resume.Resumable`); it stays there after :meth:`fit`, so that a run interrupted while
    purifying does not train again, until :meth:`clear_state` (the CLI calls it once the purified set is saved)."""

    seed: int = 0
    device: str = "auto"
    preset: str | None = None

    name: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        prepare(self)
        self.validate()

    def validate(self) -> None:
        """Check parameters; raise ``UnlearnableError`` when bad."""

    def fit(self, data: ImageSet) -> "Purifier":
        """Learn from the (possibly poisoned) training set; a no-op for fixed transforms."""
        require_set(data, "the set to fit on")
        return self

    def purify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """uint8 ``N x C x H x W`` images (and their labels) -> purified uint8 images of the same shape."""
        raise NotImplementedError

    def transform(self, data: ImageSet, only: np.ndarray | None = None, **note: Any) -> ImageSet:
        """The purified set; ``only`` (indices): purify those samples and keep the others' pixels. ``note`` goes
        into the ``purified_by`` provenance record."""
        require_set(data, "the set to purify")
        t0 = time.perf_counter()
        if only is None:
            x = self.purify(np.asarray(data.x), data.y)
        else:
            x = np.array(data.x)
            if len(only):
                x[only] = self.purify(x[only], data.y[only])
        done, given = (x, data.x) if only is None else (x[only], np.asarray(data.x)[only])
        learned = type(self).fit is not Purifier.fit  # a fixed transform (bdr of dark images) may well be flat
        if learned and done.size and done.min() == done.max() and given.min() != given.max():
            # a collapsed fit (a learning rate far too high) gave finite losses and one flat image for all
            raise UnlearnableError(f"{self.name} turned every image into one flat value ({done.flat[0]}/255): its "
                                   "fit collapsed; lower its learning rate (lr) or give it more epochs")
        if learned and done.size and (r := _likeness(done, given)) < MIN_LIKENESS:
            # a fit of a few optimiser steps (the fast preset's 2 epochs of a 1,000-image set: 8) gave noise; a
            # warning, not an error: the test suite's contract checks fit for a handful of steps on purpose
            log.warning("%s gave images nearly unrelated to its input (mean correlation %.2f; a working fit scores "
                        "~0.9 on Fashion-MNIST): its fit has most likely learned too little and the set is destroyed "
                        "rather than purified; give it more epochs (its option epochs=N: a small set makes few steps "
                        "an epoch) and train a victim on the result before trusting it", self.name, r)
        seconds = {"seconds": round(time.perf_counter() - t0, 2)}  # this transform's
        if hasattr(self, "fit_seconds_"):  # a learned purifier fitted in this process (not loaded from a file)
            seconds["fit_seconds"] = round(self.fit_seconds_, 2)
        provenance = {**data.provenance, "purified_by": {"method": self.name, "params": self.params(), **note,
                                                         **seconds}}
        if "purified_by" in data.provenance:  # purified again: the earlier purifiers stay on record, oldest first
            provenance["purified_before"] = [*data.provenance.get("purified_before", []),
                                             data.provenance["purified_by"]]
        return data.replace(x=x, provenance=provenance)

    def fit_transform(self, data: ImageSet) -> ImageSet:
        return self.fit(data).transform(data)

    def artifacts(self) -> dict[str, bytes]:
        """Files a fitted purifier leaves for reuse next to the set it purified: ``{file name: bytes}``. A learned
        one (VAE, D-VAE): its weights as :data:`PURIFIER_FILE`, which ``unlearnable purify --purifier`` applies to
        new images without fitting again. Fixed transforms: none."""
        return {}

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: The file name of a fitted purifier's weights inside the set it purified (``unlearnable purify``).
PURIFIER_FILE = "purifier.safetensors"

#: A learned purifier's output must resemble its input at least this much (mean per-image Pearson correlation):
#: the D-VAE's on 10,000 EM-poisoned Fashion-MNIST images scored 0.89 (1% of images under 0.62), a fit of 8 steps
#: that gave noise -0.06.
MIN_LIKENESS = 0.25


def _likeness(out: np.ndarray, given: np.ndarray, chunk: int = 4096) -> float:
    """Mean Pearson correlation between each output image and its input, over the inputs that are not flat (a flat
    output of such an input counts as 0: nothing of the image is left)."""
    total, count = 0.0, 0
    for i in range(0, len(out), chunk):
        a, b = (v[i:i + chunk].astype(np.float32) for v in (out, given))
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
        a -= a.mean(1, keepdims=True)
        b -= b.mean(1, keepdims=True)
        den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
        ok = (b * b).sum(1) > 0
        total += float(((a * b).sum(1)[ok] / np.maximum(den[ok], 1e-12)).sum())
        count += int(ok.sum())
    return total / count if count else 1.0

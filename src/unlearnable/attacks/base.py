"""The attack interface: a clean :class:`ImageSet` in, a poisoned one out.

Every attack is a dataclass whose fields are its parameters (``eps``, ``norm``, ``ratio``, ``seed`` and its own),
created through the registry (``ATTACKS``) and called as ``attack.poison(clean_train)``. The base class chooses the
poisoned indices (a seeded subset of size ``ratio * N``), calls :meth:`Attack.craft` for them, rounds the result to
8 bits and projects it back into the budget so that it holds exactly after quantisation, and records provenance.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..data import ImageSet, require_set, seeded_fraction
from ..data.imageset import images_differ
from ..data.store import budget_levels
from ..errors import UnlearnableError
from ..params import GivenFields, check, check_choice, prepare
from ..resume import Resumable
from ..training import keeps_global_rng

log = logging.getLogger(__name__)


def require_unperturbed(data: ImageSet, name: str = "the set") -> None:
    """Refuse to perturb a set that an attack or a purifier already changed: its record would name the clean images
    of its source, which the new perturbation's budget would not hold against (the earlier one adds to it), and the
    earlier step would vanish from the record or read as coming after."""
    method, source = data.provenance.get("method"), f" ({data.source})" if data.source else ""
    if method:
        raise UnlearnableError(f"{name} is already poisoned ({method}): start from its clean source{source}, "
                               "or export it as a folder to treat its images as new ones")
    record = data.provenance.get("purified_by") or {}
    if record.get("method") and record.get("flagged") != []:  # purify_flagged with nothing flagged changed nothing
        raise UnlearnableError(f"{name} is a purified set ({record['method']}): its images are not its source's "
                               f"clean ones, so no budget against those could hold; start from the source{source}, "
                               "or export it as a folder to treat its images as new ones")


@dataclass
class Attack(GivenFields, Resumable):
    """Base of all attacks. Subclasses set ``name``, ``norms`` and implement :meth:`craft`. Long attacks save their
    state to :attr:`checkpoint` when a caller sets it (:class:`~unlearnable.resume.Resumable`)."""

    eps: float = 8 / 255  # perturbation radius on the [0, 1] scale (L0: number of pixels)
    norm: str = "linf"  # "linf", "l2" or "l0"
    ratio: float = 1.0  # fraction of training samples poisoned (a seeded, fixed index set)
    seed: int = 0  # every random choice of the attack
    device: str = "auto"  # where crafting runs
    preset: str | None = None  # a named set of defaults (``presets``), e.g. "fast"

    name: ClassVar[str] = ""
    norms: ClassVar[tuple[str, ...]] = ("linf",)  # norms the attack supports
    changes_images: ClassVar[bool] = True  # False for label-only attacks (no budget to check)
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        prepare(self)
        check_choice("norm", self.norm, self.norms)
        check(0 < self.ratio <= 1, f"ratio must lie in (0, 1], got {self.ratio}")
        if self.norm == "l0":
            check(self.eps >= 1 and float(self.eps).is_integer(), f"an L0 budget is a whole number of pixels, got {self.eps}")
        else:
            check(0 < self.eps <= 1, f"eps must lie in (0, 1], got {self.eps}")
            if self.norm == "linf":
                check(budget_levels(self.eps) >= 1, f"eps {self.eps:.5f} is below one 8-bit level (1/255)")
        self.validate()

    def validate(self) -> None:
        """Check the attack's own parameters; raise ``UnlearnableError`` (via ``params.check``) when bad."""

    # ------------------------------------------------------------------------------------------------ the contract
    def craft(self, data: ImageSet, index: np.ndarray) -> tuple[Any, np.ndarray]:
        """Return ``(images, labels)`` for the samples ``data[index]``: float images in [0, 1] (array or tensor,
        ``len(index) x C x H x W``) and int64 labels. ``data`` is the whole clean training set."""
        raise NotImplementedError

    def select(self, n: int) -> np.ndarray:
        """The poisoned indices: all of them, or a seeded random ``ratio`` of them, sorted."""
        return seeded_fraction(n, self.ratio, self.seed)

    @keeps_global_rng
    def poison(self, data: ImageSet) -> ImageSet:
        """Poison the clean training set ``data``; the result records how in its ``provenance``."""
        require_set(data, "the set to poison")
        require_unperturbed(data, "the set to poison")
        if len(data) == 0:
            raise UnlearnableError("cannot poison an empty set")
        index = self.select(len(data))
        self.bind_state(data)
        t0 = time.perf_counter()
        images, labels = self.craft(data, index)
        seconds = time.perf_counter() - t0 + self.resumed_seconds  # and the interrupted runs' (up to their state)
        x, y = data.x.copy(), data.y.copy()
        if self.changes_images:
            x[index] = self.quantise(data.x[index], images)
        y[index] = np.asarray(labels, dtype=np.int64)
        # what the attack really changed: a perturbation that rounds to nothing poisons nothing (detection metrics
        # and partial poisoning read this record)
        moved = images_differ(x[index], data.x[index]) | (y[index] != data.y[index])
        if not moved.all():
            log.warning("%s: %d of the %d samples chosen came out unchanged (their perturbation rounds to zero at "
                        "8 bits); the record lists the %d changed", self.name, int((~moved).sum()), len(index),
                        int(moved.sum()))
        provenance = {**data.provenance, "method": self.name, "params": self.params(), "seed": self.seed,
                      "changed": index[moved].tolist(), "crafting_seconds": round(seconds, 2)}
        if self.resumed_seconds:
            provenance["resumed_after_seconds"] = round(self.resumed_seconds, 2)
        outcome = self.outcome()
        if outcome:
            provenance["outcome"] = outcome
        artifacts = {name: meta for name, (_, meta) in self.artifacts().items()}
        if artifacts:
            provenance["artifacts"] = artifacts
        if self.changes_images:
            provenance["budget"] = {"norm": self.norm, "eps": self.eps}
        log.info("%s: poisoned %d of %d samples in %.1f s", self.name, len(index), len(data), seconds)
        return data.replace(x=x, y=y, provenance=provenance)

    def params(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def outcome(self) -> dict[str, Any]:
        """What crafting measured that the parameters do not say, kept in the manifest as ``outcome`` and shown by
        ``unlearnable info`` (EM: its rounds and the surrogate's final error; DeepConfuse: its trials). Read after
        :meth:`craft`; most attacks: nothing."""
        return {}

    def artifacts(self) -> dict[str, tuple[bytes, dict[str, Any]]]:
        """Files a trained attack leaves for reuse, saved next to the poisoned set: ``{file name: (bytes, config)}``
        (the config goes into the manifest). DeepConfuse: its generator. Most attacks: none."""
        return {}

    # ------------------------------------------------------------------------------------------------ quantisation
    def quantise(self, clean: np.ndarray, images: Any) -> np.ndarray:
        """Round float images to 8 bits and project the change back into the budget, in 8-bit levels."""
        arr = images.detach().cpu().float().numpy() if hasattr(images, "detach") else np.asarray(images, np.float32)
        if arr.shape != clean.shape:
            raise RuntimeError(f"{self.name} crafted images of shape {arr.shape}, expected {clean.shape}")
        if not np.isfinite(arr).all():  # NaN would round to an arbitrary in-budget change
            raise UnlearnableError(f"{self.name} crafted non-finite images (its optimisation diverged): lower its "
                                   "learning rate or step size")
        d = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.int16) - clean.astype(np.int16)
        if self.norm == "linf":
            lv = budget_levels(self.eps)
            d = np.clip(d, -lv, lv)
        elif self.norm == "l2":
            flat = d.reshape(len(d), -1).astype(np.float64)
            n = np.sqrt((flat ** 2).sum(1)) / 255.0
            scale = np.where(n > self.eps, self.eps / np.maximum(n, 1e-12), 1.0)
            d = np.trunc(flat * scale[:, None]).astype(np.int16).reshape(d.shape)  # toward zero: never grows
        elif self.norm == "l0":
            moved = (d != 0).any(1).reshape(len(d), -1)
            if moved.sum(1).max(initial=0) > self.eps:
                raise RuntimeError(f"{self.name} changed more than {self.eps:.0f} pixels in a sample")
        return (clean.astype(np.int16) + d).clip(0, 255).astype(np.uint8)

"""The in-memory image set every part of the package passes around."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import UnlearnableError


def whole_labels(y: np.ndarray) -> bool:
    """Integer labels, or floats / booleans that are whole numbers (``[0., 1.]``, not ``[0.9, 1.5]``)."""
    return y.dtype.kind in "iu" or (y.dtype.kind in "fb" and np.array_equal(y, np.round(y)))


def shape_text(x: np.ndarray) -> str:
    """``3x32x32`` (channels x height x width) for an N x C x H x W array: for messages."""
    return "x".join(map(str, x.shape[1:]))


def images_differ(x: np.ndarray, other: np.ndarray) -> np.ndarray:
    """One bool per image: does ``x[i]`` differ from ``other[i]`` in any pixel (arrays ``N x C x H x W``)."""
    return (np.asarray(x) != np.asarray(other)).reshape(len(x), -1).any(1)


def require_set(obj: Any, what: str = "data") -> None:
    """A one-line error when the API is handed something other than an :class:`ImageSet` (an array, a tuple from
    ``load``...), instead of an AttributeError deep inside a method."""
    if not isinstance(obj, ImageSet):
        hint = " (load() returns a (train, test) pair)" if isinstance(obj, tuple) else ""
        raise UnlearnableError(f"{what} must be an ImageSet, got {type(obj).__name__}{hint}; make one with "
                               "unlearnable.data.load(spec) or ImageSet(x, y, classes)")


def require_alike(other: "ImageSet", data: "ImageSet", what: str) -> None:
    """A one-line error unless ``other`` (``what``: test images, a reference) has ``data``'s image shape and class
    list: a victim, or a check, measured against other images would give a number that means nothing."""
    def names(c: list[str]) -> str:
        return ", ".join(c[:5]) + (f" and {len(c) - 5} more" if len(c) > 5 else "")

    if other.x.shape[1:] != data.x.shape[1:]:
        raise UnlearnableError(f"{what} images are {shape_text(other.x)}, the set's {shape_text(data.x)}: they must "
                               "have the same shape")
    if list(other.classes) != list(data.classes):
        raise UnlearnableError(f"{what} classes ({names(other.classes)}) are not the set's ({names(data.classes)}): "
                               "they must be the same, in the same order")


@dataclass
class ImageSet:
    """Images as one uint8 array ``N x C x H x W``, int64 labels, class names, and where they came from.

    ``source`` is the dataset spec the images were loaded from (``fashion-mnist``, ``folder:PATH``...) and
    ``split`` is ``train`` or ``test``. ``provenance`` accumulates what was done to the set (attack, purifier,
    their parameters, which indices were changed); it becomes the saved set's manifest.
    """

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    source: str = ""
    split: str = "train"
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.x = np.asarray(self.x)
        y = np.asarray(self.y)
        if y.ndim != 1:
            raise UnlearnableError(f"labels must be one class index per image (shape N), got shape {y.shape}")
        if isinstance(self.classes, (str, bytes)) or not isinstance(self.classes, (list, tuple, np.ndarray)):
            raise UnlearnableError(f"classes must be a list of class names, got {type(self.classes).__name__} "
                                   f"{self.classes!r:.40}")
        self.classes = [str(c) for c in self.classes]
        if not whole_labels(y):
            raise UnlearnableError(f"labels must be whole class indices, got {y.dtype} values that are not")
        self.y = y.astype(np.int64, copy=False)
        if self.x.dtype != np.uint8 or self.x.ndim != 4:
            raise UnlearnableError(f"images must be uint8 N x C x H x W, got {self.x.dtype} {self.x.shape}")
        if len(self.x) != len(self.y):
            raise UnlearnableError(f"{len(self.x)} images but {len(self.y)} labels")
        if self.x.shape[1] not in (1, 3):
            hint = " (N x H x W x C? use x.transpose(0, 3, 1, 2))" if self.x.shape[3] in (1, 3) else ""
            raise UnlearnableError(f"images must have 1 or 3 channels, got {self.x.shape[1]}{hint}")
        if not isinstance(self.provenance, dict):
            raise UnlearnableError(f"provenance must be a dict, got {type(self.provenance).__name__}")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= len(self.classes)):
            raise UnlearnableError(f"labels must lie in 0..{len(self.classes) - 1}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.x.shape[2]), int(self.x.shape[3])

    def replace(self, **changes: Any) -> "ImageSet":
        """A new ImageSet with some fields changed (provenance is copied, not shared)."""
        changes.setdefault("provenance", dict(self.provenance))
        return dataclasses.replace(self, **changes)

    def subset(self, index: np.ndarray) -> "ImageSet":
        """The samples at ``index``; ``provenance["source_index"]`` keeps their positions in the source split (and
        ``provenance["file_names"]``, for folder data, their files). The per-sample records follow: ``changed``,
        ``label_changed`` and a purifier's ``flagged`` (positions) are renumbered to the subset's, ``norms`` (one value
        per sample) are sliced."""
        index = as_indices(index, len(self))
        base = np.asarray(self.provenance.get("source_index", np.arange(len(self))))
        provenance = {**self.provenance, "source_index": base[index].tolist()}
        if "file_names" in provenance:
            provenance["file_names"] = [provenance["file_names"][i] for i in index.tolist()]

        def renumber(positions: list[int]) -> list[int]:  # positions in this set -> positions in the subset
            return np.flatnonzero(np.isin(index, np.asarray(positions, np.int64))).tolist()

        def flags_renumbered(record: Any) -> Any:  # a purifier given only the flagged samples lists them
            return {**record, "flagged": renumber(record["flagged"])} if "flagged" in record else record

        for key in ("changed", "label_changed"):
            if key in provenance:
                provenance[key] = renumber(provenance[key])
        if isinstance(provenance.get("purified_by"), dict):
            provenance["purified_by"] = flags_renumbered(provenance["purified_by"])
        if isinstance(provenance.get("purified_before"), list):
            provenance["purified_before"] = [flags_renumbered(r) if isinstance(r, dict) else r
                                             for r in provenance["purified_before"]]
        if isinstance(provenance.get("norms"), dict):
            provenance["norms"] = {k: np.asarray(v)[index].tolist() for k, v in provenance["norms"].items()}
        return self.replace(x=np.ascontiguousarray(self.x[index]), y=self.y[index].copy(), provenance=provenance)

    def take(self, n: int, seed: int = 0, stratified: bool = True) -> "ImageSet":
        """A seeded random subset of ``n`` samples (class-balanced when ``stratified``: equal shares, and what a
        small class cannot fill is shared among the others)."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:  # take(2.5) gave 3, take(-1) none
            raise UnlearnableError(f"take needs a whole number of samples >= 0, got {n!r}")
        if n >= len(self):
            return self
        if not stratified:
            return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))
        return self.subset(stratified_indices(self.y, n, seed))

    def fingerprint(self) -> str:
        """A short digest of the pixels and labels: what caches and resumable jobs key their files by."""
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.x))  # the buffer itself: no copy of a 60,000-image array
        h.update(np.ascontiguousarray(self.y))
        return h.hexdigest()[:16]

    def tensors(self, device: Any = "cpu"):
        """Images as float32 in [0, 1] and labels as int64, both torch tensors on ``device``."""
        import torch

        x = torch.from_numpy(np.require(self.x, requirements=["C", "W"])).to(device)  # copies read-only maps
        return x.float().div_(255), torch.from_numpy(np.require(self.y, requirements=["C", "W"])).to(device)

    def with_float_images(self, x_float, **changes: Any) -> "ImageSet":
        """A new ImageSet from float images in [0, 1] (a tensor or array), rounded to 8 bits."""
        arr = x_float.detach().cpu().numpy() if hasattr(x_float, "detach") else np.asarray(x_float)
        return self.replace(x=to_uint8(arr), **changes)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> uint8 levels, rounding to nearest."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def stratified_indices(y: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted indices of a seeded class-balanced subset of ``n`` of the labels ``y``: equal shares, and what a small
    class cannot fill is shared among the classes with samples left (any ``n`` up to ``len(y)``, any class sizes)."""
    y = np.asarray(y)
    rng, n = np.random.default_rng(seed), min(n, len(y))
    sizes = np.bincount(y)
    quota = np.zeros(len(sizes), dtype=np.int64)
    while quota.sum() < n:
        open_ = np.flatnonzero(quota < sizes)
        for c, chunk in zip(open_, np.array_split(np.arange(n - quota.sum()), len(open_))):
            quota[c] += min(len(chunk), sizes[c] - quota[c])
    idx = [rng.choice(np.flatnonzero(y == c), quota[c], replace=False) for c in range(len(sizes))]
    return np.sort(np.concatenate(idx)) if idx else np.zeros(0, dtype=np.int64)


def as_indices(index: Any, n: int, what: str = "index") -> np.ndarray:
    """Sample positions among ``n`` as int64: a boolean mask of length ``n`` (``data.y == 0``) becomes the positions
    it marks (cast to integers it meant samples 0 and 1); positions outside ``[0, n)`` are a one-line error (a
    negative one counted from the end)."""
    arr = np.asarray(index)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise UnlearnableError(f"a boolean {what} mask must have one entry per sample ({n}), got {arr.shape}")
        return np.flatnonzero(arr)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise UnlearnableError(f"{what} must hold sample positions (integers) or a boolean mask, got {arr.dtype}")
    arr = arr.astype(np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        raise UnlearnableError(f"{what} names sample {arr.min() if arr.min() < 0 else arr.max()}, outside the "
                               f"{n} samples")
    return arr

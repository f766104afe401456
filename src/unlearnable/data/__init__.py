"""Datasets by name, the in-memory :class:`ImageSet`, and saved sets."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UnlearnableError
from .imageset import ImageSet, require_set, to_uint8
from .sources import DATASETS, cache_dir, load_dataset, spec_path
from .store import export_png, is_saved_set, load_set, read_manifest, save_set

__all__ = ["ImageSet", "DATASETS", "load_dataset", "load", "load_set", "save_set", "export_png",
           "is_saved_set", "read_manifest", "cache_dir", "to_uint8", "clean_counterpart", "partial",
           "seeded_fraction", "require_set", "reload_source"]


def load(spec: str) -> tuple[ImageSet, ImageSet]:
    """``(train, test)`` for a dataset spec or a saved set directory.

    For a saved set the training split is the saved (poisoned or purified) one and the test split is the CLEAN
    test split of the source it was made from: released sets never carry clean images.
    """
    if is_saved_set(spec):
        train = load_set(spec)
        _, test = reload_source(train)
        return train, test
    if ":" not in spec:
        if Path(spec).is_dir():
            raise UnlearnableError(f"{spec} is a directory without manifest.json; for an image tree use "
                                   f"folder:{spec}")
        if spec not in DATASETS and ("/" in spec or spec.startswith((".", "~"))):  # a path, not a dataset name
            raise UnlearnableError(f"no saved set at {spec} (no such directory); a dataset is one of: "
                                   f"{', '.join(DATASETS.names())}")
    return load_dataset(spec)


def _source(data: ImageSet) -> str:
    if not data.source:
        raise UnlearnableError("the set names no source dataset (saved from Python with an ImageSet whose source is "
                               "empty), so its clean images are unknown; give the ImageSet a source spec")
    path = spec_path(data.source)
    if path is not None and not path.is_absolute() and not path.exists():  # manifests before 2026-12-06
        raise UnlearnableError(f"this set's source {data.source} is a relative path that does not exist from "
                               f"{Path.cwd()}: run from the folder the set was made in")
    return data.source


def reload_source(data: ImageSet) -> tuple[ImageSet, ImageSet]:
    """The clean ``(train, test)`` splits of the source a set was made from, checked against what the set recorded
    of them (their digests; for older sets made from a folder, the training files' names): a source changed since
    would give a test split that may hold the set's own training images, and wrong clean images."""
    train, test = load_dataset(_source(data))
    recorded = data.provenance.get("source_digest")
    if isinstance(recorded, dict):
        fresh = train.provenance["source_digest"]
        moved = [k for k in ("train", "test") if k in recorded and recorded[k] != fresh[k]]
    else:
        names, index = data.provenance.get("file_names"), data.provenance.get("source_index", range(len(data)))
        now = train.provenance.get("file_names")
        moved = ["train"] if names is not None and (now is None or max(index, default=-1) >= len(now)
                                                    or [now[i] for i in index] != list(names)) else []
    if moved:
        decoded = " (or this version decodes its images differently)" if data.source.startswith("folder:") else ""
        raise UnlearnableError(f"{data.source} has changed since this set was made{decoded}: its "
                               f"{' and '.join(moved)} images differ, so its clean images and test split are no "
                               "longer the set's; restore the source or make the set again")
    return train, test


def clean_counterpart(data: ImageSet) -> ImageSet:
    """The clean training split a saved set was made from (same order), reloaded from its source."""
    require_set(data, "the set")
    train, _ = reload_source(data)
    if "source_index" in data.provenance:
        index = np.asarray(data.provenance["source_index"], dtype=np.int64)
        if len(index) and index.max() >= len(train):
            raise UnlearnableError(f"this set's source_index names image {index.max()} but {data.source} has "
                                   f"{len(train)} training images")
        train = train.subset(index)
    if train.x.shape != data.x.shape:
        raise UnlearnableError(f"the clean training split of {data.source} no longer matches this set's shape")
    return train


def partial(poisoned: ImageSet, ratio: float, seed: int = 0, clean: ImageSet | None = None) -> ImageSet:
    """A partially poisoned copy of ``poisoned``: a seeded ``ratio`` of its changed samples keep their poison, the
    others get their clean image and label back (``clean``: same order; None: reloaded from the source).

    This is how the papers run partial poisoning (EM's and D-VAE's official code craft the noise for the whole set
    and apply it to a random fraction). ``provenance["changed"]`` lists the samples still poisoned, so detection
    can be scored against it.
    """
    require_set(poisoned, "the poisoned set")
    if not 0 < ratio <= 1:
        raise UnlearnableError(f"ratio must lie in (0, 1], got {ratio}")
    changed = np.asarray(poisoned.provenance.get("changed", np.arange(len(poisoned))), dtype=np.int64)
    clean = clean_counterpart(poisoned) if clean is None else clean
    if clean.x.shape != poisoned.x.shape:
        raise UnlearnableError("partial: the clean set must match the poisoned one (same shape and order)")
    keep = seeded_fraction(changed, ratio, seed)
    x, y = clean.x.copy(), clean.y.copy()
    x[keep], y[keep] = poisoned.x[keep], poisoned.y[keep]
    provenance = {**poisoned.provenance, "changed": keep.tolist(), "partial": {"ratio": ratio, "seed": seed}}
    provenance.pop("norms", None)  # per-sample records of the whole poison: save_set(clean=...) measures them again
    if "label_changed" in provenance:
        provenance["label_changed"] = np.flatnonzero(y != clean.y).tolist()
    return poisoned.replace(x=x, y=y, provenance=provenance)


def seeded_fraction(pool: np.ndarray | int, ratio: float, seed: int) -> np.ndarray:
    """A seeded random ``ratio`` of ``pool`` (indices, or ``range(pool)`` for an int), at least one, sorted; all of
    it when ``ratio >= 1``. Attacks pick their poisoned samples with it, :func:`partial` the ones that stay poisoned."""
    pool = np.arange(pool) if isinstance(pool, (int, np.integer)) else np.asarray(pool, dtype=np.int64)
    if ratio >= 1 or not len(pool):
        return np.sort(pool)
    k = max(1, int(round(ratio * len(pool))))
    return np.sort(np.random.default_rng(seed).choice(pool, k, replace=False))

"""Classical victims: scikit-learn classifiers trained on flattened pixels in [0, 1].

DeepConfuse (Feng, Cai & Zhou, NeurIPS 2019, Fig. 6 and Fig. 10) shows its noise transfers to models that share
nothing with the network it was learned against; these entries of the model registry make that check one
``unlearnable train --model svm-rbf`` away. They are not ``torch.nn.Module``s: :func:`unlearnable.training.train`
fits them in one call and :func:`unlearnable.training.predict` asks them for labels.

Hyper-parameters from the official ``MNIST/test_rf_svm.py`` (kingfengji/DeepConfuse): ``SVC(C=200, kernel="rbf",
gamma=0.01)`` and ``RandomForestClassifier(n_estimators=100, n_jobs=-1)`` (the paper's text says 300 trees; the code
uses 100). The linear SVM (the paper's Fig. 10 weight picture, which has no official code) is scikit-learn's
``LinearSVC`` with its defaults (C=1, squared hinge, one-vs-rest).
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


class PixelClassifier:
    """A scikit-learn estimator behind the package's model interface: images (uint8 or float, N x C x H x W) in,
    labels out. ``max_samples`` caps the training set (a seeded stratified subset) for estimators whose cost grows
    faster than linearly with it (RBF SVM)."""

    def __init__(self, estimator: Any, max_samples: int | None = None, seed: int = 0) -> None:
        self.estimator, self.max_samples, self.seed = estimator, max_samples, seed

    @staticmethod
    def features(x: Any) -> np.ndarray:
        arr = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        arr = arr.reshape(len(arr), -1)
        return arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)

    def fit(self, x: Any, y: np.ndarray) -> "PixelClassifier":
        from ..data.imageset import stratified_indices
        from ..errors import UnlearnableError

        y = np.asarray(y)
        if len(np.unique(y)) < 2:
            raise UnlearnableError(f"{type(self.estimator).__name__} needs two or more classes in the training set, "
                                   f"got {len(np.unique(y))}")
        idx = np.arange(len(y))
        if self.max_samples and len(y) > self.max_samples:  # the package's sampler: any class sizes, any n
            idx = stratified_indices(y, self.max_samples, self.seed)
        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings(record=True) as caught:  # scikit-learn's own two lines name its source file
            warnings.simplefilter("always", ConvergenceWarning)
            self.estimator.fit(self.features(np.asarray(x)[idx]), y[idx])
        for w in caught:
            if issubclass(w.category, ConvergenceWarning):
                log.warning("%s did not converge in its iteration limit (scikit-learn's default): its fit is "
                            "approximate", type(self.estimator).__name__)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return self

    def predict(self, x: Any) -> np.ndarray:
        return self.estimator.predict(self.features(x))

    def weight_images(self, shape: tuple[int, ...]) -> np.ndarray:
        """Per-class weight images of a linear model (``coef_`` reshaped to ``shape``), for pictures."""
        coef = getattr(self.estimator, "coef_", None)
        if coef is None:
            raise AttributeError(f"{type(self.estimator).__name__} has no linear weights")
        return np.asarray(coef).reshape(len(coef), *shape)


def svm_linear(in_channels: int, num_classes: int, image_size: int, C: float = 1.0, seed: int = 0) -> PixelClassifier:
    from sklearn.svm import LinearSVC

    return PixelClassifier(LinearSVC(C=C, random_state=seed), seed=seed)


def svm_rbf(in_channels: int, num_classes: int, image_size: int, C: float = 200.0, gamma: float = 0.01,
            max_samples: int | None = 10_000, seed: int = 0) -> PixelClassifier:
    """The official RBF SVM. Kernel SVMs cost O(n^2) memory and more in time, so by default it trains on a seeded
    stratified 10,000-image subset (the official trains on all 60,000: ``max_samples=None``)."""
    from sklearn.svm import SVC

    return PixelClassifier(SVC(C=C, kernel="rbf", gamma=gamma, random_state=seed), max_samples, seed)


def random_forest(in_channels: int, num_classes: int, image_size: int, n_estimators: int = 100,
                  seed: int = 0) -> PixelClassifier:
    from sklearn.ensemble import RandomForestClassifier

    return PixelClassifier(RandomForestClassifier(n_estimators=n_estimators, n_jobs=-1, random_state=seed),
                           seed=seed)

"""Which training samples are poisoned: scores, a threshold rule and metrics.

Three detectors. Two share one shape: ``scores = *_scores(data, ...)`` (higher = more likely poisoned), then
``flag(scores)`` splits them with Otsu's rule; the third calibrates its threshold on trusted clean images. Then
``detection_metrics(flagged, changed)`` compares the flags with the true poisoned indices (an attack's
``provenance["changed"]``). :func:`unlearnable.report.detection_csv` lists
every sample's score and flag, :func:`unlearnable.report.score_histogram` draws the scores and the threshold
(``unlearnable detect --scores F.csv --plot F.png``).

* ``dvae``: the D-VAE of Yu et al. (ICML 2024, "Purify Unlearnable Examples via Rate-Constrained Variational
  Autoencoders", Table 8) learns a per-sample perturbation estimate ``p_hat``. Its L2 norm per sample would be
  the natural score, but the released code has no detection script and we measured that
  score at chance on half-poisoned data; the default score is the per-sample residual the D-VAE cannot explain,
  ``||x - clamp(x_hat + p_hat)||`` (see :func:`dvae_scores`). Only stage 1 is trained. Both need ``p_hat`` to be
  the poison; on Fashion-MNIST at 8/255 it is not (BENCHMARKS.md, session 7) and every score built on it is at
  chance there.
* ``simple``: Zhu, Yu & Gao, "Detection and Defense of Unlearnable Examples" (AAAI 2024): unlearnable examples are
  (nearly) linearly separable, so a tiny model fits them much faster than clean data. We train the registry's
  ``linear`` model for one short run with the package's trainer (no augmentation) and score each sample by its
  negative log training loss: samples the simple model fits abnormally well are flagged.
* ``contrast`` (ours): a class-balanced linear classifier and a small conv net on the images' high-pass texture
  tell the suspect images from trusted clean images (the clean test split); the suspect samples either places
  beyond what clean held-out images reach are flagged (see :func:`contrast_detect`). It needs the trusted images
  and flags anything unlike them, not only poisons; on Fashion-MNIST at 8/255 it is the only one of the three that
  finds EM's samples (F1 0.92-0.98 at 20% poisoned; in colour 0.93 class-wise, 0.98 sample-wise).

Before asking which samples, :func:`check_set` asks whether the set is poisoned at all (the same paper's
Algorithm 1, at the level of the whole set): Otsu's rule always splits the scores in two, even on a clean set,
so the per-sample flags mean something only once the set check says yes.

After detection, :func:`purify_flagged` purifies only the flagged samples and :func:`drop_flagged` leaves them out
(``unlearnable detect --purify DEFENSE`` / ``--drop``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .data import ImageSet, require_set
from .data.imageset import as_indices, require_alike
from .errors import UnlearnableError
from .params import typed_kwargs

log = logging.getLogger(__name__)

DETECTORS = ("dvae", "simple", "contrast")
# The contrast detector's network trains at least this many steps: 4 epochs are 940 steps on full Fashion-MNIST and
# 312 on the colour CIFAR-10 subset, but 31 on 2,000 images, where it did not learn (sample-wise EM 32/255 at 40%:
# AUC 0.68; 78 steps: 0.99; BENCHMARKS.md, D-VAE, session 33)
NETWORK_MIN_STEPS = 100


@dataclass
class Detection:
    """Per-sample scores (higher = more suspicious), the threshold used and the flagged indices."""

    scores: np.ndarray
    threshold: float
    flagged: np.ndarray  # sorted indices with score > threshold
    method: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] | None = None  # a set-level answer, where the detector has one (``contrast``)
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # scores of the parts of a combined detector

    def metrics(self, changed: np.ndarray | list[int]) -> dict[str, float | None]:
        return detection_metrics(self.flagged, changed, len(self.scores), self.scores)

    def summary(self, changed: np.ndarray | list[int] | None = None) -> dict[str, Any]:
        """A JSON-ready record: method, threshold, how many flagged, and the metrics when ``changed`` is known."""
        out: dict[str, Any] = {"method": self.method, "params": self.params, "threshold": self.threshold,
                               "flagged": len(self.flagged), "samples": len(self.scores)}
        if self.verdict is not None:
            out["verdict"] = self.verdict
        if changed is not None:
            out["metrics"] = self.metrics(changed)
        return out


DVAE_SCORES = ("residual", "p_norm")


def _check_score(score: str) -> None:
    if score not in DVAE_SCORES:
        raise UnlearnableError(f"unknown D-VAE score {score!r}; known: {', '.join(DVAE_SCORES)}")


def dvae_scores(data: ImageSet, dvae: Any = None, score: str = "residual", checkpoint: str | None = None,
                keep_state: bool = False, **options: Any) -> np.ndarray:
    """Per-sample scores from the stage-1 D-VAE (higher = more likely poisoned).

    ``score="residual"`` (default): ``||x - clamp(x_hat + p_hat)||_2``, the part of a sample that neither the
    rate-limited reconstruction nor the perturbation decoder explains, i.e. the D-VAE's own second loss term per
    sample. ``score="p_norm"``: ``||p_hat||_2``. On half-poisoned Fashion-MNIST (class-wise noise, 64/255) the
    residual separated poisoned from clean samples (ROC AUC 0.86 after 6 epochs at width 8 on 2,000 images, 0.94 after
    15) while
    ``p_norm`` stayed at chance (AUC 0.49): with half of a class clean, ``p_hat`` stays class-wise (``u_y``) and
    does not single out the poisoned half. Norms are on the [0, 1] scale.

    ``dvae``: an already fitted :class:`~unlearnable.defenses.dvae.DVAE`; otherwise one is fitted on ``data`` with
    ``options`` (e.g. ``preset="fast"``; ``skip="s2"`` by default since only stage 1 is needed). ``checkpoint``: a
    file where that fit keeps its training state, so an interrupted run continues (removed once the scores exist,
    unless ``keep_state``: then the caller removes it once it has saved what it makes of them).
    """
    from .defenses.dvae import fit_stage1

    _check_score(score)
    if dvae is None:
        dvae = fit_stage1(data, checkpoint, **options)
    x_hat, p = dvae.decompose(data.x, data.y)
    if checkpoint and not keep_state:
        dvae.clear_state()
    if score == "residual":
        p = data.x.astype(np.float32) / 255 - np.clip(x_hat + p, 0, 1)
    return np.sqrt((p.reshape(len(p), -1).astype(np.float64) ** 2).sum(1))


def _simple_network(data: ImageSet, model: str, epochs: int, lr: float, batch_size: int, seed: int, device: str,
                    description: str) -> torch.nn.Module:
    """The simple network of Zhu et al. trained on ``data``: the package's trainer, no augmentation, no label
    smoothing, no weight decay; returned in eval mode."""
    from .models import CLASSICAL
    from .training import TrainConfig, train

    if model in CLASSICAL:  # was an AttributeError ('PixelClassifier' object has no attribute 'eval')
        raise UnlearnableError(f"the simple network must be a torch model (e.g. linear or cnn), not the scikit-learn "
                               f"victim {model}")
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, label_smoothing=0.0, augment=False,
                      weight_decay=0.0, amp=False, seed=seed, device=device, eval_every=10**6)
    return train(data, None, model, cfg, description=description).model.eval()


def simple_scores(data: ImageSet, model: str = "linear", epochs: int = 8, lr: float = 0.2, batch_size: int = 128,
                  seed: int = 0, device: str = "auto") -> np.ndarray:
    """``-log`` of each sample's cross-entropy under a tiny model briefly trained on ``data`` (Zhu, Yu & Gao,
    AAAI 2024): samples it fits abnormally well score high.

    Defaults are ours (the paper's idea, tuned on 2,000 half-poisoned Fashion-MNIST images, class-wise noise):
    the registry's ``linear`` model, 8 epochs, SGD lr 0.2, no augmentation, no label smoothing, no weight decay,
    through :func:`unlearnable.training.train` (well under a second). The log makes the scores two-humped, which
    Otsu's rule needs: on raw losses it split off the clean samples' long tail and flagged ~95% of the set
    (accuracy 0.53); on log-losses accuracy 0.85 and F1 0.85 at 64/255 (0.70 / 0.67 at 32/255), ROC AUC 0.92 / 0.78.
    """
    from .training import resolve_device

    net = _simple_network(data, model, epochs, lr, batch_size, seed, device, "simple-network detector")
    dev = resolve_device(device)
    x, y = data.tensors(dev)
    losses = []
    with torch.no_grad():
        for i in range(0, len(y), 1024):
            losses.append(F.cross_entropy(net(x[i:i + 1024]).float(), y[i:i + 1024], reduction="none").cpu())
    return -np.log(torch.cat(losses).double().numpy() + 1e-12)


def check_set(data: ImageSet, test: ImageSet, model: str = "linear", epochs: int = 8, lr: float = 0.2,
              batch_size: int = 128, holdout: float = 0.2, margin: float = 0.02, z: float = 3.0, seed: int = 0,
              device: str = "auto") -> dict[str, Any]:
    """Is the SET poisoned at all? Zhu, Yu & Gao (AAAI 2024), Algorithm 1, "simple networks detection": train a
    simple network on part of the suspect set and test it on the rest. Unlearnable perturbations are (nearly)
    linearly separable shortcuts, so on a poisoned set the simple network scores far higher on the set's own
    held-out samples than it can on clean data.

    The paper splits the set 40,000 / 10,000 (``holdout=0.2``, as here) and calls it poisoned when the held-out
    accuracy exceeds a fixed bound B = 0.7, which suits CIFAR (a linear model reaches ~40% on clean CIFAR-10) but
    not Fashion-MNIST, where it reaches ~85% on clean images. So the rule here is ours: compare the held-out
    accuracy with the same network's accuracy on the clean ``test`` split and call the set poisoned when the gap
    exceeds both ``margin`` and ``z`` standard errors of the difference of the two accuracies. Both accuracies are
    class-balanced (the mean of the per-class ones), so a set whose class mix differs from the test split's opens
    no gap of its own; on the balanced sets measured below they equal the plain ones within noise. On Fashion-MNIST
    (BENCHMARKS.md, D-VAE section, session 30; ``linear``, 8 epochs, the per-sample detector's recipe) clean sets
    gave gaps of 1.2-1.3 points at five split seeds (the test split is a little harder than the training split) and
    0.5-2.2 on 2,000-image subsets, while EM at 8/255 gave 21.8 (class-wise) and 16.3 (sample-wise) points, and
    with 20 / 40 / 80% of the samples poisoned 2.8 / 5.8 / 12.9 (class-wise) and 1.8 / 3.1 / 8.3 (sample-wise).
    DeepConfuse at eps 0.3: 58.2; class-wise random noise 20.4 (a shortcut too); harmless sample-wise random noise
    and JPEG-compressed clean images 1.2-1.4. What it misses: TAP at 8/255 (adversarial poisons, features a linear
    model does not use: 1.5); ``model="cnn", epochs=1, lr=0.1`` (~25 s instead of ~2 s on the full set) finds it,
    narrowly (2.9 against 2.0; clean 1.2), and neither model finds 40% DeepConfuse or TAP. The per-sample
    :func:`contrast_detect`, which compares pixels with the same test split, finds all of these, and its flagged
    share against its ~1% false alarms (:func:`excess_flags`, its ``verdict``) is a second answer to the same
    question.

    ``test`` must be clean and independent of ``data`` (a test split carved out of the suspect images cannot tell).
    Returns the (class-balanced) accuracies, the gap, the threshold it was held against and ``poisoned``.
    """

    require_set(data, "the set to check")
    require_set(test, "the test set")
    require_alike(test, data, "the clean test")  # a class the set lacks would open a gap of its own
    if not 0 < holdout < 1:
        raise UnlearnableError(f"holdout must lie in (0, 1), got {holdout}")
    n_val = int(round(len(data) * holdout))
    if n_val < 1 or n_val >= len(data) or len(test) == 0:
        raise UnlearnableError(f"the set check needs samples on both sides of the split and a test split "
                               f"({len(data)} samples, holdout {holdout}, {len(test)} test samples)")
    perm = np.random.default_rng(seed).permutation(len(data))
    fit_part, val_part = data.subset(np.sort(perm[n_val:])), data.subset(np.sort(perm[:n_val]))
    net = _simple_network(fit_part, model, epochs, lr, batch_size, seed, device, "simple-network set check")
    held, clean, se = _balanced_gap(net, val_part, test)
    threshold = max(margin, z * se)
    return {"model": model, "epochs": epochs, "heldout_acc": held, "test_acc": clean, "gap": held - clean,
            "threshold": threshold, "margin": margin, "heldout": len(val_part), "test": len(test),
            "poisoned": held - clean > threshold}


def _balanced_gap(net: Any, held: ImageSet, test: ImageSet) -> tuple[float, float, float]:
    """``net``'s class-balanced accuracies (the mean of the per-class ones, over the classes both sets have) on
    ``held`` and ``test``, and the standard error of their difference when each class's accuracy is the same on both
    sides (pooled per class, as a two-proportion test). Plain accuracies of a set and a test split with other class
    mixes differ with no poison at all (a clean set ten times richer in three easy classes: 16 points), and a
    class's accuracy estimated from a handful of held-out samples (5 of 5 right) says little about its variance."""
    from .training import predict

    hits = [predict(net, torch.from_numpy(np.array(s.x))).cpu().numpy() == s.y for s in (held, test)]
    classes = sorted(set(np.unique(held.y).tolist()) & set(np.unique(test.y).tolist()))
    if not classes:
        raise UnlearnableError("the set check's held-out part and the test split share no class: nothing to compare")
    right = np.array([[h[s.y == c].sum() for c in classes] for s, h in zip((held, test), hits)], np.float64)
    count = np.array([[(s.y == c).sum() for c in classes] for s in (held, test)], np.float64)
    acc = right / count
    pooled = right.sum(0) / count.sum(0)
    se = np.sqrt((pooled * (1 - pooled) * (1 / count[0] + 1 / count[1])).sum()) / len(classes)
    return float(acc[0].mean()), float(acc[1].mean()), float(se)


def contrast_detect(data: ImageSet, reference: ImageSet, c: float = 0.1, folds: int = 2,
                    false_alarm: float = 0.01, highpass: bool = True, network: bool = True, network_epochs: int = 4,
                    seed: int = 0, device: str = "auto") -> Detection:
    """Flag the samples of ``data`` that classifiers tell from the trusted clean images of ``reference``.

    Our detector (not from a paper; BENCHMARKS.md, D-VAE, sessions 31-33). It rests on two published facts:
    availability perturbations, class-wise or sample-wise, are (nearly) linearly separable shortcuts (Yu et al.,
    "Availability Attacks Create Shortcuts", KDD 2022; Zhu, Yu & Gao, AAAI 2024), and a classifier trained to tell a
    mixed set ("unlabelled") from a clean one ranks the mixed set's odd members first (positive-unlabelled learning,
    Elkan & Noto, KDD 2008). Two classifiers do it, each cross-fitted in ``folds`` folds drawn within each class on
    both sides, so that every suspect sample and every reference image is scored by classifiers that never saw it:

    * linear: one L2-regularised logistic regression (scikit-learn, ``C=c``) on features standardised by
      ``reference`` (the pixels and, with ``highpass``, each image minus its Gaussian blur, sigma 1 pixel). Sample
      weights give every (side, class) cell the same total weight, so the class mix of the two sets carries no
      signal (a clean Fashion-MNIST set with one class ten times as frequent as each other: 3.9% of it flagged
      unweighted, 1.1% weighted). It finds fixed patterns: class-wise perturbations, and on Fashion-MNIST the
      sample-wise ones too;
    * ``network``: the registry's ``cnn`` trained ``network_epochs`` epochs (package recipe; at least
      :data:`NETWORK_MIN_STEPS` steps on small sets) on the high-pass residual alone, magnified 4x, the
      reference side resampled to the suspect side's class counts. Its convolutions find per-sample textures
      wherever they sit, which a linear model of pixels cannot: colour sample-wise EM. Its score is the suspect
      logit minus the reference logit.

    Each part's scores are rescaled so that its held-out reference scores have median 0 and ``1 - false_alarm``
    quantile 1, and a sample's score is the larger of the two (:attr:`Detection.parts` keeps both). The held-out
    reference scores are the scores of clean images, so the threshold is the ``1 - false_alarm`` quantile of theirs:
    on a clean set about ``false_alarm`` of the samples are flagged, whatever the poison. The result's ``verdict``
    (:func:`excess_flags`) says whether the set as a whole has more flags than that.

    Defaults are ours, measured with 20% / 40% of the samples poisoned by EM at 8/255 (the issue's detection target
    is 40%). Linear part alone (``network=False``, session 32): full Fashion-MNIST F1 0.985 class-wise, 0.973
    sample-wise at 40% (13-16 s on two cores), 1.00% of the clean split flagged; the 20,000-image colour CIFAR-10
    subset 0.961 / 0.982 class-wise but only 0.51 / 0.61 sample-wise (~65 s, 2.7 GB), 0.97% of its clean images
    flagged. With the network (the default since session 33), at 20%: Fashion-MNIST class-wise 0.923, sample-wise
    0.979; colour class-wise 0.926, sample-wise **0.982** (linear alone: 0.938 / 0.948 / 0.961 / 0.514); 1.06% of
    the clean Fashion-MNIST split flagged; about 2 minutes for either set on two cores, most of it the network
    (colour sample-wise at seeds 1 / 2: 0.981 / 0.979; with ``network_epochs=2`` the net missed it: 0.48).
    ``highpass=False`` (pixels alone in the linear part): the same on Fashion-MNIST, colour sample-wise 0.29 at 40%.
    ``c=0.01`` suits Fashion-MNIST (0.991 / 0.978 on pixels) but not colour (0.915; 3,072 pixels want less
    regularisation). The network alone misses class-wise EM in colour (AUC 0.55-0.60 at 20%, with or without
    augmentation; Fashion-MNIST: 0.89 / 0.97 at 20 / 40%).

    What it cannot do: the reference must come from the same source and pipeline as the clean part of ``data`` (a
    JPEG-compressed or resized copy of clean images differs from the reference and is flagged); it must not share
    images with ``data`` and needs ``folds`` images of every class. Scores are on the scale above (1: a part's own
    threshold; higher = less like the reference; without the network, the linear decision values).
    """
    require_set(data, "the set to score")
    require_set(reference, "the reference")
    if not 0 < false_alarm < 1:
        raise UnlearnableError(f"false_alarm must lie in (0, 1), got {false_alarm}")
    if int(folds) != folds or folds < 2:
        raise UnlearnableError(f"folds must be an integer >= 2, got {folds}")
    if not 0 < c < math.inf:
        raise UnlearnableError(f"c (the inverse regularisation strength) must be positive and finite, got {c}")
    if int(network_epochs) != network_epochs or network_epochs < 1:
        raise UnlearnableError(f"network_epochs must be an integer >= 1, got {network_epochs}")
    folds, network_epochs = int(folds), int(network_epochs)  # 2.0 is 2 (the trainer takes whole epochs only)
    if reference.x.shape[1:] != data.x.shape[1:]:
        raise UnlearnableError(f"the reference images are {reference.x.shape[1:]}, the suspect ones "
                               f"{data.x.shape[1:]}: they must have the same shape")
    if reference.num_classes != data.num_classes:
        raise UnlearnableError(f"the reference has {reference.num_classes} classes, the suspect set "
                               f"{data.num_classes}")
    if network:  # before any work; the registry's own message would say "use another model", not an option here
        from .models import create_model

        try:
            create_model("cnn", data.channels, 2, data.image_size)
        except UnlearnableError:
            raise UnlearnableError(f"the contrast detector's network (cnn) cannot take {data.image_size[0]} x "
                                   f"{data.image_size[1]} images: set network=false (--set network=false) to "
                                   "use its linear part alone") from None

    classes = np.unique(data.y)
    for k in classes:
        n, n_ref = int((data.y == k).sum()), int((reference.y == k).sum())
        if min(n, n_ref) < folds:
            raise UnlearnableError(f"class {data.classes[k]!r} has {n} suspect and {n_ref} reference images; the "
                                   f"contrast detector needs at least {folds} of each")

    def class_folds(y: np.ndarray) -> np.ndarray:
        fold = np.empty(len(y), int)
        for k in classes:
            idx = np.flatnonzero(y == k)
            fold[idx] = rng.permutation(len(idx)) % folds
        return fold

    rng = np.random.default_rng(seed)
    ref_in = np.isin(reference.y, classes)  # reference classes the suspect set lacks would be a signal of their own
    reference = reference.subset(np.flatnonzero(ref_in)) if not ref_in.all() else reference
    fold, ref_fold = class_folds(data.y), class_folds(reference.y)
    residual = (_highpass(data.x), _highpass(reference.x)) if highpass or network else None
    scores, null = _linear_contrast(data, reference, residual if highpass else None, fold, ref_fold, c)
    parts = {}
    if network:
        net_scores, net_null = _network_contrast(data, reference, residual, fold, ref_fold, network_epochs, seed,
                                                 device, rng)
        # each part's scores on the scale of its own held-out clean scores; a sample counts by the part that
        # finds it more unusual, and the threshold is that same maximum's quantile over the held-out reference
        # images, so the false-alarm rate stays ``false_alarm`` for the pair
        (scores, null), (net_scores, net_null) = (_standardise(scores, null, false_alarm),
                                                  _standardise(net_scores, net_null, false_alarm))
        parts = {"linear": scores, "network": net_scores}
        scores, null = np.maximum(scores, net_scores), np.maximum(null, net_null)
    result = flag(scores, float(np.quantile(null, 1 - false_alarm)))
    result.parts = parts
    result.method = "contrast"
    result.params = {"c": c, "folds": folds, "false_alarm": false_alarm, "highpass": highpass, "network": network,
                     "network_epochs": network_epochs, "seed": seed, "reference": len(reference)}
    result.verdict = excess_flags(len(result.flagged), len(data), false_alarm, len(null))
    return result


def _highpass(x: np.ndarray) -> np.ndarray:
    """Each image minus its Gaussian blur (sigma 1 pixel), float32 on the [0, 1] scale: the fine texture where
    per-sample perturbations live."""
    from scipy.ndimage import gaussian_filter

    x = np.asarray(x, dtype=np.float32) / 255
    return x - gaussian_filter(x, sigma=(0, 0, 1, 1))


def _standardise(scores: np.ndarray, null: np.ndarray, false_alarm: float) -> tuple[np.ndarray, np.ndarray]:
    """Scores rescaled so that the median of the held-out clean ones (``null``) is 0 and their ``1 - false_alarm``
    quantile is 1: each part's own threshold lands at 1, whatever the shape of its tail. (Standard units put the
    network's heavier tail over the linear part's threshold: class-wise EM at 20%, F1 0.80 against 0.92.)"""
    mid, top = np.median(null), np.quantile(null, 1 - false_alarm)
    scale = top - mid if top > mid else 1.0
    return (scores - mid) / scale, (null - mid) / scale


def _linear_contrast(data: ImageSet, reference: ImageSet, residual: tuple[np.ndarray, np.ndarray] | None,
                     fold: np.ndarray, ref_fold: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted logistic-regression scores of the suspect images and of the held-out reference images (in
    fold order) on standardised pixels (and high-pass residuals), every (side, class) cell of equal weight."""
    from sklearn.linear_model import LogisticRegression

    def features(s: ImageSet, res: np.ndarray | None) -> np.ndarray:
        x = np.asarray(s.x, dtype=np.float32).reshape(len(s), -1) / 255
        return x if res is None else np.concatenate([x, res.reshape(len(s), -1)], axis=1)

    ref = features(reference, None if residual is None else residual[1])
    mean, std = ref.mean(0), ref.std(0)
    std[std < 1e-6] = 1.0
    x, ref = (features(data, None if residual is None else residual[0]) - mean) / std, (ref - mean) / std
    classes = np.unique(data.y)
    scores, null = np.zeros(len(data)), []
    for f in range(int(fold.max()) + 1):
        fit_x = np.concatenate([x[fold != f], ref[ref_fold != f]])
        side = np.r_[np.ones((fold != f).sum()), np.zeros((ref_fold != f).sum())]
        label = np.r_[data.y[fold != f], reference.y[ref_fold != f]]
        weight = np.empty(len(side))
        for s in (0, 1):
            for k in classes:
                cell = (side == s) & (label == k)
                weight[cell] = len(side) / (2 * len(classes) * cell.sum())
        clf = LogisticRegression(C=c, max_iter=3000).fit(fit_x, side, sample_weight=weight)
        scores[fold == f] = clf.decision_function(x[fold == f])
        null.append(clf.decision_function(ref[ref_fold == f]))
    return scores, np.concatenate(null)


def _network_contrast(data: ImageSet, reference: ImageSet, residual: tuple[np.ndarray, np.ndarray],
                      fold: np.ndarray, ref_fold: np.ndarray, epochs: int, seed: int, device: str,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Cross-fitted scores of the registry's ``cnn`` trained (package recipe, ``epochs`` but at least
    :data:`NETWORK_MIN_STEPS` steps) to tell suspect from reference images by their high-pass residual, magnified 4x
    around mid-grey; the reference side is resampled to the suspect side's class counts. Scores: the suspect logit
    minus the reference logit; the reference's held-out scores come back in fold order, as
    :func:`_linear_contrast`'s do."""
    from .training import TrainConfig, predict_logits, train

    def texture(res: np.ndarray) -> np.ndarray:
        return np.clip(res * (4 * 255) + 128, 0, 255).round().astype(np.uint8)

    def margin(net: torch.nn.Module, images: np.ndarray) -> np.ndarray:
        # float32 logits (the net still trains in bf16 where the CPU has it): bf16's 8-bit mantissa tied many
        # held-out scores at the quantile threshold, so fewer than false_alarm of clean images were flagged
        logits = predict_logits(net, torch.from_numpy(images), amp=False).float().cpu().numpy()
        return logits[:, 1] - logits[:, 0]

    x, ref = texture(residual[0]), texture(residual[1])
    scores, null = np.zeros(len(data)), []
    for f in range(int(fold.max()) + 1):
        fit, ref_fit = np.flatnonzero(fold != f), np.flatnonzero(ref_fold != f)
        drawn = [rng.choice(ref_fit[reference.y[ref_fit] == k], int((data.y[fit] == k).sum()))
                 for k in np.unique(data.y)]
        both = ImageSet(np.concatenate([x[fit], ref[np.concatenate(drawn)]]),
                        np.r_[np.ones(len(fit), np.int64), np.zeros(sum(map(len, drawn)), np.int64)],
                        ["reference", "suspect"], source=data.source)
        cfg = TrainConfig(seed=(seed + f) % 2**32, device=device, eval_every=10**6)
        cfg.epochs = max(epochs, math.ceil(NETWORK_MIN_STEPS / math.ceil(len(both) / cfg.batch_size)))
        net = train(both, None, "cnn", cfg, description=f"contrast network, fold {f + 1}").model
        scores[fold == f] = margin(net, x[fold == f])
        null.append(margin(net, ref[ref_fold == f]))
    return scores, np.concatenate(null)


def excess_flags(flagged: int, n: int, false_alarm: float, n_reference: int, margin: float = 0.01,
                 z: float = 3.0) -> dict[str, Any]:
    """The contrast detector's answer for the whole set: are more samples flagged than clean images would be?

    On a set like the trusted images about ``false_alarm`` of the samples are flagged. The flagged share is held
    against it with ``z`` standard errors of the difference (the binomial error of the share over ``n`` samples and
    that of the threshold, a quantile of ``n_reference`` held-out trusted scores) and at least ``margin`` (ours: one
    point; clean sets measured 0.9-1.1% at ``false_alarm=0.01``, BENCHMARKS.md D-VAE session 32). ``differs`` means
    the set is unlike the trusted images: poisoned, or from another source or pipeline.
    """
    share = flagged / n
    se = float(np.sqrt(false_alarm * (1 - false_alarm) * (1 / n + 1 / n_reference)))
    threshold = max(margin, z * se)
    return {"share": share, "expected": false_alarm, "threshold": threshold,
            "differs": share - false_alarm > threshold}


def otsu_threshold(scores: np.ndarray) -> float:
    """The split of 1-D ``scores`` into two groups with the least within-group variance (Otsu, 1979; the same as
    exact 1-D 2-means). Returns the midpoint between the highest low score and the lowest high score."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if len(s) < 2 or s[0] == s[-1]:
        return float(s[-1]) if len(s) else 0.0
    n = len(s)
    c1, c2 = np.cumsum(s), np.cumsum(s ** 2)
    k = np.arange(1, n)  # the low group is s[:k]
    m_lo, m_hi = c1[:-1] / k, (c1[-1] - c1[:-1]) / (n - k)
    within = (c2[:-1] - k * m_lo ** 2) + ((c2[-1] - c2[:-1]) - (n - k) * m_hi ** 2)
    within[s[1:] == s[:-1]] = np.inf  # never split between equal scores
    best = int(np.argmin(within)) + 1
    return float((s[best - 1] + s[best]) / 2)


def flag(scores: np.ndarray, threshold: float | None = None) -> Detection:
    """Flag every sample whose score exceeds ``threshold`` (None: Otsu's rule on the scores)."""
    scores = np.asarray(scores, dtype=np.float64)
    t = otsu_threshold(scores) if threshold is None else float(threshold)
    return Detection(scores, t, np.flatnonzero(scores > t))


def _threshold(threshold: Any) -> float | None:
    """A detection threshold: None, or a finite number (or its text, from ``--set``)."""
    if threshold is None:
        return None
    try:
        threshold = float(threshold)
    except (TypeError, ValueError):
        raise UnlearnableError(f"threshold must be a number, got {threshold!r}") from None
    if not math.isfinite(threshold):
        raise UnlearnableError(f"threshold must be a finite number, got {threshold}")
    return threshold


def check_options(method: str, options: dict[str, Any]) -> None:
    """Refuse an unknown detector or a bad option of it (``--set`` text included) before any data is loaded or
    scored: :func:`detect` would refuse them only after its set check."""
    if method not in DETECTORS:
        raise UnlearnableError(f"unknown detector {method!r}; known: {', '.join(DETECTORS)}")
    options = dict(options)
    _threshold(options.pop("threshold", None))
    clash = sorted({"method", "checkpoint", "keep_state", "dvae", "reference"} & set(options))
    if clash:
        raise UnlearnableError(f"{clash[0]} is not a detector option here (the command sets it)")
    if method == "contrast":
        typed_kwargs(contrast_detect, "the contrast detector", options)
    elif method == "simple":
        typed_kwargs(simple_scores, "the simple detector", options)
    else:
        from .params import build
        from .defenses.dvae import DVAE

        _check_score(options.pop("score", "residual"))
        build(DVAE, "defense 'dvae'", {"skip": "s2", **options})


def detect(data: ImageSet, method: str = "dvae", threshold: float | None = None, checkpoint: str | None = None,
           keep_state: bool = False, **options: Any) -> Detection:
    """Score and flag the samples of ``data``: ``method`` ``"dvae"`` (``options`` go to :class:`DVAE`, or
    ``dvae=`` a fitted one and ``score=``; its training resumes from ``checkpoint``, see :func:`dvae_scores`),
    ``"simple"`` (``options`` go to :func:`simple_scores`,
    which trains for seconds and keeps no state) or ``"contrast"`` (``options`` go to :func:`contrast_detect` and
    must include ``reference``, trusted clean images; its threshold is calibrated on them, not Otsu's)."""
    require_set(data, "the set to score")
    threshold = _threshold(threshold)
    if method not in DETECTORS:
        raise UnlearnableError(f"unknown detector {method!r}; known: {', '.join(DETECTORS)}")
    if len(data) == 0:
        raise UnlearnableError("cannot detect poisons in an empty set")
    if method == "contrast":
        if options.get("reference") is None:
            raise UnlearnableError("the contrast detector needs trusted clean images (reference=...)")
        result = contrast_detect(data, **typed_kwargs(contrast_detect, "the contrast detector", options,
                                                      passed=("reference",)))  # threshold calibrated on the reference
        if threshold is not None:  # the caller's own; the set-level answer (verdict) holds for the calibrated one only
            result = replace(flag(result.scores, threshold), method=method, params=result.params, parts=result.parts)
    elif method == "dvae":
        from .defenses.dvae import fit_stage1

        options = dict(options)
        score, dvae = options.pop("score", "residual"), options.pop("dvae", None)  # dvae: one fitted already
        _check_score(score)  # before the fit, not after it
        if dvae is not None and options:
            raise UnlearnableError(f"a fitted dvae takes no D-VAE options ({', '.join(options)})")
        if dvae is None:
            dvae = fit_stage1(data, checkpoint, **options)
        scores = dvae_scores(data, dvae, score, checkpoint=checkpoint, keep_state=keep_state)
        result = replace(flag(scores, threshold), method=method, params={"score": score, **dvae.params()})
    else:
        typed = typed_kwargs(simple_scores, "the simple detector", options)
        result = replace(flag(simple_scores(data, **typed), threshold), method=method, params=typed)
    log.info("%s detector: flagged %d of %d samples (threshold %.4g)", method, len(result.flagged), len(data),
             result.threshold)
    return result


def purify_flagged(data: ImageSet, detection: Detection, defense: Any, fit: bool = True, **note: Any) -> ImageSet:
    """Purify only the samples ``detection`` flagged; the others keep their original pixels.

    ``defense`` is a purifier (``create_defense(...)``); it is fitted on the whole set (a D-VAE needs the poisoned
    samples to learn what to remove, and the clean ones do it no harm) and applied to the flagged samples only,
    so clean samples are not blurred by a purifier they never needed. ``fit=False``: ``defense`` was already
    fitted, on ``data`` or on other images (``defenses.load_purifier``). ``note`` goes into the ``purified_by``
    provenance record (e.g. the weights file it came from).
    """
    _require_detection(data, detection)
    flagged = as_indices(detection.flagged, len(data), "flagged")
    if len(flagged) and fit:
        defense.fit(data)
    return defense.transform(data, only=flagged, only_flagged_by=detection.method, flagged=flagged.tolist(), **note)


def drop_flagged(data: ImageSet, detection: Detection) -> ImageSet:
    """The set without the samples ``detection`` flagged: the cheap alternative to :func:`purify_flagged` when the
    detector is precise and the set can spare them (a victim then learns from the unflagged images only).
    ``provenance["source_index"]`` keeps where each remaining sample came from; ``changed`` is renumbered, so
    what a detector missed stays known."""
    _require_detection(data, detection)
    keep = ~index_mask(detection.flagged, len(data))
    if not keep.any():
        raise UnlearnableError(f"every one of the {len(data)} samples was flagged: dropping them leaves nothing")
    kept = data.subset(np.flatnonzero(keep))
    kept.provenance["dropped"] = {"by": detection.method, "count": int((~keep).sum()), "of": len(data)}
    return kept


def _require_detection(data: ImageSet, detection: Any) -> None:
    """One-line errors for what is not a set and a :class:`Detection` (a list of indices was an AttributeError)."""
    require_set(data, "the set")
    if not isinstance(detection, Detection):
        raise UnlearnableError(f"detection must be a Detection (from detect() or flag()), got "
                               f"{type(detection).__name__}")


def index_mask(indices: np.ndarray | list[int], n: int) -> np.ndarray:
    """A boolean mask of length ``n``, True at ``indices`` (flagged or truly poisoned samples)."""
    mask = np.zeros(n, bool)
    mask[as_indices(indices, n, "indices")] = True
    return mask


def detection_metrics(flagged: np.ndarray | list[int], changed: np.ndarray | list[int], n: int,
                      scores: np.ndarray | None = None) -> dict[str, float | None]:
    """Accuracy, precision, recall and F1 of ``flagged`` against the truly ``changed`` indices among ``n``
    samples (the poisoned class is the positive one); plus ROC AUC when ``scores`` are given. What is 0 / 0 is None:
    precision when nothing is flagged, recall when nothing is poisoned, F1 when neither (a perfect answer on a clean
    set read as precision, recall and F1 of 0)."""
    truth, pred = index_mask(changed, n), index_mask(flagged, n)
    tp, fp = int((pred & truth).sum()), int((pred & ~truth).sum())
    fn = int((~pred & truth).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None
    out = {"accuracy": float((pred == truth).mean()) if n else float("nan"), "precision": precision,
           "recall": recall, "f1": f1, "flagged": int(pred.sum()), "poisoned": int(truth.sum())}
    if scores is not None and 0 < truth.sum() < n:
        from sklearn.metrics import roc_auc_score

        out["auc"] = float(roc_auc_score(truth, scores))
    return out

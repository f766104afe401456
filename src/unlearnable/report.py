"""Human-readable summaries: a saved set's ``info``, image grids and result tables."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .data import ImageSet, clean_counterpart, load_set
from .data.imageset import images_differ
from .data.store import read_manifest, write_atomic
from .errors import UnlearnableError

if TYPE_CHECKING:
    from .detect import Detection

SSIM_SAMPLES = 500  # SSIM is slow; it is averaged over a seeded sample of this many images


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-sample PSNR in dB between uint8 image batches (inf where identical)."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0 ** 2 / mse)


def mean_ssim(a: np.ndarray, b: np.ndarray, seed: int = 0) -> float:
    """Mean SSIM (scikit-image, 7 x 7 window; smaller images the largest odd window that fits; NaN under 3 px)."""
    from skimage.metrics import structural_similarity

    side = min(a.shape[2:])
    win = min(7, side if side % 2 else side - 1)
    if win < 3 or not len(a):
        return float("nan")
    idx = np.random.default_rng(seed).choice(len(a), min(len(a), SSIM_SAMPLES), replace=False)
    vals = [structural_similarity(a[i].transpose(1, 2, 0), b[i].transpose(1, 2, 0), channel_axis=2, data_range=255,
                                  win_size=win) for i in idx]
    return float(np.mean(vals))


def _brief(value) -> str:
    """A manifest value for one line: a long list as its ends and its length."""
    if isinstance(value, list) and len(value) > 8:
        return f"[{', '.join(map(str, value[:3]))}, ..., {', '.join(map(str, value[-3:]))}] ({len(value)})"
    return str(value)


def describe_set(path: str | Path, grid: str | Path | None = None) -> str:
    """A saved set's manifest, and its perturbation norms and PSNR / SSIM against the clean images; with ``grid``,
    also :func:`set_grid` written there (from the same loaded images)."""
    data = load_set(path)
    p = data.provenance
    lines = [f"set:        {path}", f"source:     {data.source} ({data.split}, {len(data)} images, "
             f"{data.channels}x{data.image_size[0]}x{data.image_size[1]}, {data.num_classes} classes)"]
    if "method" in p:
        lines.append(f"attack:     {p['method']}  " + ", ".join(f"{k}={v}" for k, v in p.get("params", {}).items()))
        before = p.get("resumed_after_seconds")
        lines.append(f"changed:    {len(p.get('changed', []))} samples; crafting {p.get('crafting_seconds')} s"
                     + (f" ({before} s of it before an interruption)" if before else ""))
        if p.get("outcome"):
            lines.append("outcome:    " + ", ".join(f"{k}={_brief(v)}" for k, v in p["outcome"].items()))
    for q in [*p.get("purified_before", []), *([p["purified_by"]] if "purified_by" in p else [])]:
        only = (f"; only the {len(q.get('flagged', []))} samples flagged by {q['only_flagged_by']}"
                if "only_flagged_by" in q else "")
        took = "; ".join(f"{what} {q[key]} s" for what, key in (("fit", "fit_seconds"), ("purifying", "seconds"))
                         if key in q)
        if "weights" in q:  # purify --purifier: fitted elsewhere
            took = f"the weights of {q['weights']}, fitted before; {took}"
        lines.append(f"purified:   {q['method']}  " + ", ".join(f"{k}={v}" for k, v in q["params"].items()) + only
                     + (f" ({took})" if took else ""))
    reusable = {"generator.safetensors": "protect --generator", "purifier.safetensors": "purify --purifier"}
    for name in read_manifest(path)["sha256"]:
        if name in reusable:
            lines.append(f"weights:    {name} ({reusable[name]} {path} applies it to new images)")
    if "dropped" in p:
        d = p["dropped"]
        lines.append(f"dropped:    {d.get('count')} of {d.get('of')} samples flagged by {d.get('by')}")
    if "budget" in p:
        b = p["budget"]
        after = " (the attack's; purification changed the images after it)" if "purified_by" in p else ""
        lines.append(f"budget:     {b['norm']} eps={b['eps']:.5f} ({b['eps'] * 255:.2f}/255){after}")
    try:
        clean = clean_counterpart(data)
    except UnlearnableError as e:
        if grid is not None:
            raise UnlearnableError(f"no grid without the clean images: {e}") from None
        lines.append(f"vs clean:   unavailable ({e})")
        return "\n".join(lines)
    x = np.asarray(data.x)
    differs = images_differ(x, clean.x)
    changed = np.flatnonzero(differs)
    lines.append(f"differs:    {len(changed)} images differ from the clean split; "
                 f"{int((data.y != clean.y).sum())} labels differ")
    if len(changed):
        d = (x[changed].astype(np.int16) - clean.x[changed]).reshape(len(changed), -1)
        linf, l2 = np.abs(d).max(1), np.sqrt((d.astype(np.float64) ** 2).sum(1)) / 255
        ps = psnr(x[changed], clean.x[changed])
        lines.append(f"L-inf:      max {linf.max()}/255, mean {linf.mean():.2f}/255")
        lines.append(f"L2:         max {l2.max():.3f}, mean {l2.mean():.3f} (pixels on the [0, 1] scale)")
        lines.append(f"PSNR:       mean {np.mean(ps[np.isfinite(ps)]):.2f} dB (changed images)")
        ssim = mean_ssim(x[changed], clean.x[changed])
        sampled = f"; a seeded sample of {SSIM_SAMPLES}" if len(changed) > SSIM_SAMPLES else ""
        lines.append(f"SSIM:       mean {ssim:.4f} (changed images{sampled})" if ssim == ssim
                     else "SSIM:       n/a (images under 3 pixels a side)")
    if grid is not None:
        lines.append(f"grid:       {set_grid(data, clean, differs, grid)}")
    return "\n".join(lines)


def _figure(rows: int = 1, cols: int = 1, **kwargs):
    """A matplotlib figure and its axes, outside pyplot: nothing needs a display, and the caller's pyplot backend
    (a notebook's inline one) is left as it was. ``kwargs`` go to ``Figure``."""
    from matplotlib.figure import Figure

    fig = Figure(**kwargs)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save_png(fig, path: str | Path) -> Path:
    """Lay out and write ``fig`` as a PNG via a temporary file and a rename."""
    fig.tight_layout()
    return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))


def image_grid(rows: Sequence[tuple[str, np.ndarray]], path: str | Path, classes: Sequence[str] | None = None,
               labels: np.ndarray | None = None, titles: Sequence[str] | None = None) -> Path:
    """Save a PNG grid: one row per ``(title, uint8 N x C x H x W images)``, the same N columns in each row, each
    column titled ``titles[c]`` or else its class, ``classes[labels[c]]``."""
    n = len(rows[0][1])
    if titles is None and classes is not None and labels is not None:
        titles = [classes[k] for k in labels]
    fig, axes = _figure(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)))
    for r, (title, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            img = np.asarray(imgs[c]).transpose(1, 2, 0)
            ax.imshow(img[..., 0] if img.shape[2] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([]), ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=8)
            if r == 0 and titles is not None:
                ax.set_title(titles[c], fontsize=7)
    return _save_png(fig, path)


def curve_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, xlabel: str,
               ylabel: str, title: str = "", hlines: dict[str, float] | None = None, percent: bool = True,
               markers: bool = True, xscale: str = "linear") -> Path:
    """Save a PNG line plot: one line per ``{label: (xs, ys)}`` (points marked if ``markers``), dashed horizontal
    references ``hlines`` (``{label: y}``, e.g. the clean victim); ``percent`` shows fractions in [0, 1] as
    percentages; ``xscale`` is matplotlib's (``"log"``, ``"symlog"``)."""
    from matplotlib.ticker import PercentFormatter

    fig, ((ax,),) = _figure(figsize=(6.4, 3.8))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if markers else None, label=label)
    for label, y in (hlines or {}).items():
        ax.axhline(y, color="gray", linestyle="--", linewidth=1, label=label)
    if percent:
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.set_ylim(0, 1)
    ax.set_xscale(xscale)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save_png(fig, path)


def set_grid(data: ImageSet, clean: ImageSet, changed: np.ndarray, png: str | Path, per_class: int = 1) -> Path:
    """A PNG of what a saved set did to its images: the clean image, the saved one and their difference magnified
    (mid-grey = unchanged; white / black = +- the attack's budget, or for a purified set, or one without a budget,
    the largest change shown), ``per_class`` columns per class (the set's labels), each a ``changed`` sample (boolean
    mask) or a relabelled one where the class has one; a relabelled column's title names its clean label too."""
    from .data.store import budget_levels

    relabelled = data.y != clean.y
    idx = subset_for_grid(data, per_class, prefer=changed | relabelled)
    titles = [data.classes[data.y[i]] + (f"\n(clean: {clean.classes[clean.y[i]]})" if relabelled[i] else "")
              for i in idx]
    x = np.asarray(data.x)
    delta = x[idx].astype(np.int16) - clean.x[idx]
    p = data.provenance
    eps = p.get("budget", {}).get("eps")
    levels = budget_levels(eps) if eps and "purified_by" not in p else int(np.abs(delta).max())
    name = p["purified_by"]["method"] if "purified_by" in p else p.get("method", "saved")
    role = "purified" if "purified_by" in p else "poisoned" if "method" in p else "saved"
    return image_grid([("clean", clean.x[idx]), (f"{role}\n({name})", x[idx]),
                       (f"difference\n(+-{levels} levels)", magnify(delta, levels))], png, titles=titles)


def magnify(perturbation: np.ndarray, eps_levels: float) -> np.ndarray:
    """A signed perturbation in 8-bit levels shown as an image: 0 -> mid-grey, +-eps -> white/black."""
    scale = 127.5 / max(eps_levels, 1)
    return np.clip(127.5 + perturbation.astype(np.float32) * scale, 0, 255).astype(np.uint8)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def subset_for_grid(data: ImageSet, per_class: int = 1, prefer: np.ndarray | None = None) -> np.ndarray:
    """Indices of the first ``per_class`` samples of each class (for picture rows); with ``prefer`` (a boolean
    mask), the preferred samples of a class come before its others."""
    order = np.arange(len(data)) if prefer is None else np.r_[np.flatnonzero(prefer), np.flatnonzero(~prefer)]
    return np.concatenate([order[data.y[order] == c][:per_class] for c in range(data.num_classes)])


def detection_csv(data: ImageSet, detection: Detection, path: str | Path) -> Path:
    """One row per sample of ``data``: index, file name (folder data), label, class, score, the scores of a combined
    detector's parts (``score_linear``, ``score_network``), flagged and, when the set's manifest knows which samples
    an attack changed, ``poisoned``."""
    import csv

    from .detect import index_mask

    flagged = index_mask(detection.flagged, len(data))
    changed = data.provenance.get("changed")
    poisoned = None if changed is None else index_mask(changed, len(data))
    names = data.provenance.get("file_names")
    parts = detection.parts

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", *(["file"] if names else []), "label", "class", "score",
                        *(f"score_{k}" for k in parts), "flagged", *(["poisoned"] if poisoned is not None else [])])
            for i in range(len(data)):
                y = int(data.y[i])
                w.writerow([i, *([names[i]] if names else []), y, data.classes[y], f"{detection.scores[i]:.6g}",
                            *(f"{v[i]:.6g}" for v in parts.values()), int(flagged[i]),
                            *([int(poisoned[i])] if poisoned is not None else [])])

    return write_atomic(path, write)


def score_histogram(detection: Detection, path: str | Path, changed: Sequence[int] | np.ndarray | None = None) -> Path:
    """A PNG histogram of the detection scores with the threshold as a line; when ``changed`` (the truly
    poisoned indices) is known, poisoned and clean samples are drawn in two colours."""
    s = np.asarray(detection.scores, dtype=np.float64)
    bins = np.histogram_bin_edges(s[np.isfinite(s)], bins=60)
    fig, ((ax,),) = _figure(figsize=(6.4, 3.6))
    if changed is None:
        ax.hist(s, bins=bins, color="tab:gray", label="all samples")
    else:
        from .detect import index_mask

        truth = index_mask(changed, len(s))
        ax.hist([s[~truth], s[truth]], bins=bins, stacked=True, color=["tab:blue", "tab:red"],
                label=[f"clean ({(~truth).sum()})", f"poisoned ({truth.sum()})"])
    ax.axvline(detection.threshold, color="black", linestyle="--",
               label=f"threshold {detection.threshold:.4g}: {len(detection.flagged)} flagged")
    ax.set_xlabel(f"{detection.method or 'detector'} score (higher = more suspicious)")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    return _save_png(fig, path)

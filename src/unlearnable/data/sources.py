"""Datasets by name. Every source gives a train and a clean test :class:`ImageSet`.

Specs: ``fashion-mnist`` (the embedded default), ``mnist``, ``cifar10``, ``cifar100``, ``svhn`` (torchvision,
downloaded to the cache), ``folder:PATH`` (an ImageFolder tree) and ``npz:PATH`` (arrays ``x``, ``y``).
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from pathlib import Path

import numpy as np

from ..errors import UnlearnableError
from ..registry import Registry
from .imageset import ImageSet, shape_text, to_uint8, whole_labels
from .store import write_atomic

log = logging.getLogger(__name__)

DATASETS: Registry = Registry("dataset")  # cheap loaders: registered directly

#: Where Debian's ``dataset-fashion-mnist`` package puts the IDX files.
SYSTEM_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
TEST_FRACTION = 0.2  # held out when a folder or npz has no test split of its own
SPLIT_SEED = 0
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                  ".pbm", ".pnm"}


def cache_dir() -> Path:
    """``$UNLEARNABLE_CACHE``, else ``~/.cache/unlearnable``."""
    root = os.environ.get("UNLEARNABLE_CACHE") or Path.home() / ".cache" / "unlearnable"
    return Path(root)


#: The sources whose spec names a path: ``folder:PATH``, ``npz:PATH``.
PATH_SOURCES = ("folder", "npz")


def spec_path(spec: str) -> Path | None:
    """The folder or file a ``folder:PATH`` / ``npz:PATH`` spec names; None for a named dataset."""
    name, _, arg = spec.partition(":")
    return Path(arg).expanduser() if name in PATH_SOURCES and arg else None


def absolute_spec(spec: str) -> str:
    """``folder:x`` -> ``folder:/abs/x`` (and ``npz:`` likewise; links resolved), other specs as they are: one
    spelling per data, for manifests and for comparing specs."""
    path = spec_path(spec)
    return f"{spec.partition(':')[0]}:{path.resolve()}" if path is not None else spec


def load_dataset(spec: str) -> tuple[ImageSet, ImageSet]:
    """``(train, test)`` for a dataset spec such as ``fashion-mnist`` or ``folder:/data/pets``."""
    name, _, arg = spec.partition(":")
    loader = DATASETS.get(name)
    takes_path = name in PATH_SOURCES
    if takes_path and not arg:
        raise UnlearnableError(f"dataset spec {spec!r} needs a path: {name}:PATH")
    if arg and not takes_path:
        raise UnlearnableError(f"dataset {name!r} takes no ':{arg}' (only folder:PATH and npz:PATH take a path; "
                               "for a subset use --subset N)")
    train, test = loader(arg) if takes_path else loader()
    # what a set made from these splits records, so that reloading a changed source (files added to or edited in a
    # folder) is noticed: its clean images and test split would no longer be the ones the set was made from
    digest = {"train": train.fingerprint(), "test": test.fingerprint()}
    for part in (train, test):
        part.source = spec
        part.provenance = {**part.provenance, "source_digest": dict(digest)}
    return train, test


# ----------------------------------------------------------------------------------------------- IDX (MNIST family)
def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, OSError, zlib.error) as e:  # a cut .gz is an EOFError, which click would report as Ctrl-C
        raise UnlearnableError(f"{path} is truncated or damaged ({type(e).__name__}: {e})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UnlearnableError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise UnlearnableError(f"{path} is truncated")
    return arr.reshape(dims)


def _find_idx_dir(candidates: list[Path]) -> Path | None:
    for d in candidates:
        if any((d / f"train-images-idx3-ubyte{ext}").exists() for ext in (".gz", "")):
            return d
    return None


def _idx_pair(d: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    def pick(stem: str) -> Path:
        gz = d / f"{stem}.gz"
        return gz if gz.exists() else d / stem

    x = _read_idx(pick(f"{prefix}-images-idx3-ubyte"))
    y = _read_idx(pick(f"{prefix}-labels-idx1-ubyte"))
    return x[:, None], y.astype(np.int64)


def _mnist_like(name: str, tv_class: str, classes: list[str], extra: list[Path]) -> tuple[ImageSet, ImageSet]:
    env = os.environ.get("UNLEARNABLE_DATA")
    # $UNLEARNABLE_DATA/<name> only: MNIST and Fashion-MNIST share their file names, so files at its top level
    # could be either (mnist loaded Fashion-MNIST from there)
    cands = extra + ([Path(env) / name] if env else []) + [
        cache_dir() / name, cache_dir() / tv_class / "raw"]
    d = _find_idx_dir(cands)
    if d is None:
        d = _download_torchvision(tv_class, name)
    log.info("%s: reading IDX files from %s", name, d)
    xtr, ytr = _idx_pair(d, "train")
    xte, yte = _idx_pair(d, "t10k")
    return (ImageSet(xtr, ytr, classes, split="train"), ImageSet(xte, yte, classes, split="test"))


def _download_torchvision(tv_class: str, name: str) -> Path:
    """Download an MNIST-family dataset with torchvision into the cache; return the raw IDX folder."""
    import torchvision.datasets as tvd

    root = cache_dir()
    try:
        getattr(tvd, tv_class)(root=str(root), train=True, download=True)
    except Exception as e:  # network errors come in many types
        raise UnlearnableError(
            f"{name} not found locally and the download failed ({type(e).__name__}); "
            f"put its IDX files in $UNLEARNABLE_DATA/{name}") from None
    return root / tv_class / "raw"


@DATASETS.register("fashion-mnist", help="Fashion-MNIST 28x28 grey, 10 classes (embedded default)")
def fashion_mnist() -> tuple[ImageSet, ImageSet]:
    return _mnist_like("fashion-mnist", "FashionMNIST", FASHION_CLASSES, [SYSTEM_FASHION_MNIST])


@DATASETS.register("mnist", help="MNIST digits 28x28 grey, 10 classes (torchvision download)")
def mnist() -> tuple[ImageSet, ImageSet]:
    return _mnist_like("mnist", "MNIST", [str(i) for i in range(10)], [])


# ------------------------------------------------------------------------------------------ torchvision colour sets
def _torchvision_split(tv_class: str, name: str, train: bool):
    import torchvision.datasets as tvd

    env = os.environ.get("UNLEARNABLE_DATA")
    roots = ([Path(env) / name, Path(env)] if env else []) + [cache_dir() / name]
    cls = getattr(tvd, tv_class)
    kw = {"split": "train" if train else "test"} if tv_class == "SVHN" else {"train": train}
    for root in roots:  # an existing copy first, without touching the network
        try:
            return cls(root=str(root), download=False, **kw)
        except (RuntimeError, FileNotFoundError, OSError):
            continue
    try:
        return cls(root=str(roots[-1]), download=True, **kw)
    except Exception as e:
        raise UnlearnableError(
            f"{name} not found locally and the download failed ({type(e).__name__}); "
            f"place torchvision's copy under $UNLEARNABLE_DATA/{name}") from None


def _colour(tv_class: str, name: str) -> tuple[ImageSet, ImageSet]:
    parts = []
    for train in (True, False):
        ds = _torchvision_split(tv_class, name, train)
        if tv_class == "SVHN":
            x, y, classes = ds.data, np.asarray(ds.labels), [str(i) for i in range(10)]
        else:
            x, y, classes = ds.data.transpose(0, 3, 1, 2), np.asarray(ds.targets), list(ds.classes)
        parts.append(ImageSet(np.ascontiguousarray(x), y, classes, split="train" if train else "test"))
    return parts[0], parts[1]


@DATASETS.register("cifar10", help="CIFAR-10 32x32 colour, 10 classes (torchvision download)")
def cifar10() -> tuple[ImageSet, ImageSet]:
    return _colour("CIFAR10", "cifar10")


@DATASETS.register("cifar100", help="CIFAR-100 32x32 colour, 100 classes (torchvision download)")
def cifar100() -> tuple[ImageSet, ImageSet]:
    return _colour("CIFAR100", "cifar100")


@DATASETS.register("svhn", help="SVHN house numbers 32x32 colour, 10 classes (torchvision download)")
def svhn() -> tuple[ImageSet, ImageSet]:
    return _colour("SVHN", "svhn")


# ------------------------------------------------------------------------------------------------- folder and npz
def split_train_test(x: np.ndarray, y: np.ndarray, classes: list[str],
                     names: list[str] | None = None) -> tuple[ImageSet, ImageSet]:
    """A seeded, stratified split: TEST_FRACTION of each class becomes the test set, marked
    ``provenance["carved"]``. ``names`` (one file name per sample) follow their samples into
    ``provenance["file_names"]``."""
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(len(y), dtype=bool)
    for c in range(len(classes)):
        members = np.flatnonzero(y == c)
        test[rng.permutation(members)[: int(round(len(members) * TEST_FRACTION))]] = True
    parts = ImageSet(x[~test], y[~test], classes, split="train"), ImageSet(x[test], y[test], classes, split="test")
    parts[1].provenance["carved"] = True  # drawn from the same images as the training split (detect's set check)
    if names is not None:
        for part, mask in zip(parts, (~test, test)):
            part.provenance["file_names"] = [n for n, m in zip(names, mask) if m]
    return parts


def unsplit(train: ImageSet, test: ImageSet) -> ImageSet:
    """The inverse of :func:`split_train_test` for a folder or an npz: both splits as one set again, in file-name
    (npz: row) order."""
    names = [*train.provenance["file_names"], *test.provenance["file_names"]]
    order = np.argsort(names, kind="stable")
    return train.replace(x=np.concatenate([train.x, test.x])[order], y=np.concatenate([train.y, test.y])[order],
                         provenance={"file_names": [names[i] for i in order]})


def _tree_files(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class folders of ``root`` and their image files with class indices, sorted. Linked folders are followed
    (once each); hidden files and folders are skipped (``.git``, macOS's ``._photo.jpg``)."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[Path, int]] = []
    others: list[str] = []  # files in class folders that are not images by their names
    for c, name in enumerate(classes):
        found, seen = [], set()
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a link back up the tree
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found += [Path(dirpath) / f for f in filenames
                      if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
            others += [f for f in filenames if not f.startswith(".") and Path(f).suffix.lower() not in IMAGE_SUFFIXES]
        files += [(f, c) for f in sorted(found)]
        if not found:
            log.warning("class folder %s has no images: the class is kept, with no samples", root / name)
    stray = [f.name for f in root.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
             and not f.name.startswith(".")]
    if stray:
        log.warning("%d image(s) directly in %s (e.g. %s) are in no class folder and are skipped", len(stray), root,
                    stray[0])
    if others:
        log.warning("%d file(s) in the class folders of %s (e.g. %s) are not images by their names (%s) and are "
                    "skipped", len(others), root, others[0], " ".join(sorted(IMAGE_SUFFIXES)))
    return classes, files


def _read_image_tree(root: Path, classes: list[str], files: list[tuple[Path, int]]
                     ) -> tuple[np.ndarray, np.ndarray, list[str], list[str], list[str]]:
    """Decode the ``files`` (with class indices) that :func:`_tree_files` found under ``root``; also the files
    whose transparency was dropped."""
    from .. import progress

    if not files:
        raise UnlearnableError(f"no images found under {root} (expected {root}/<class>/<image>)")
    arrays: list[np.ndarray] = []
    transparent: list[str] = []
    with progress.task(f"reading {root}", total=len(files)) as advance:
        for f, _ in files:
            first = arrays[0] if arrays else None
            arrays.append(_read_image(f, first, transparent))
            advance(1)
    if any(a.shape[0] == 3 for a in arrays):  # one colour image makes the folder colour: grey ones get 3 channels
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    y = np.array([c for _, c in files], dtype=np.int64)
    names = [str(f.relative_to(root)) for f, _ in files]
    return np.stack(arrays), y, classes, names, transparent


def _warn_transparent(root: Path, transparent: list[str]) -> None:
    if transparent:
        log.warning("%d image(s) under %s (e.g. %s) have transparency: it is dropped, as torchvision's loader "
                    "drops it (what transparent pixels hide shows, and --png writes them opaque)", len(transparent),
                    root, transparent[0])


def _read_image(f: Path, first: np.ndarray | None, transparent: list[str]) -> np.ndarray:
    """One image file as C x H x W uint8: 1 channel if the file is grey, else 3 (RGB); of ``first``'s size; turned
    as its EXIF orientation says (as viewers show it: a phone's portrait photo is stored landscape). A file with
    transparency is appended to ``transparent``."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            im.load()
            if im.getexif().get(0x0112, 1) != 1:  # EXIF Orientation
                im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
                alpha = im.getchannel("A") if im.mode in ("RGBA", "LA") else im.convert("RGBA").getchannel("A")
                if alpha.getextrema()[0] < 255:  # an opaque RGBA file (screenshots, plots) loses nothing
                    transparent.append(str(f))
            if im.mode.startswith("I;16"):  # 16-bit grey (PNG, TIFF): scaled to 8 bits; Pillow's convert clips
                im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257).round().astype(np.uint8), "L")
            mode = "L" if im.mode in ("L", "1", "I") else "RGB"
            if first is not None:
                if im.size != (first.shape[2], first.shape[1]):
                    raise UnlearnableError(f"{f} is {im.size[0]}x{im.size[1]} but the others are "
                                           f"{first.shape[2]}x{first.shape[1]}; resize the folder to one size first")
            arr = np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise UnlearnableError(f"cannot read image {f}: {e}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


#: Bumped whenever reading a folder changes what the same files decode to: older cached arrays are not reused.
_DECODER = 4  # 2: 16-bit grey scaled, a colour image makes the folder colour; 3: EXIF orientation (2026-12-06);
#               4: the cache keeps which files lost their transparency (older caches stayed silent about it)


def _cached_tree(root: Path):
    """Decoding thousands of JPEGs takes seconds: keep the decoded arrays in the cache, keyed by the files' stats
    (with the files whose transparency was dropped: said on every read, not only on the first)."""
    classes, files = _tree_files(root)
    stats = []
    for p, c in files:
        try:
            st = p.stat()
        except OSError as e:
            raise UnlearnableError(f"cannot read image {p}: {e.strerror} (a broken link?)") from None
        stats.append((str(p.relative_to(root)), c, st.st_size, st.st_mtime_ns))
    key = hashlib.sha256(repr((_DECODER, str(root.resolve()), classes, stats)).encode()).hexdigest()[:20]
    path = cache_dir() / "folders" / f"{key}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                cached = z["x"], z["y"], [str(c) for c in z["classes"]], [str(n) for n in z["names"]]
                _warn_transparent(root, [str(f) for f in z["transparent"]] if "transparent" in z.files else [])
                return cached
        except Exception as e:  # a damaged cache file: decode the folder again
            log.warning("ignoring the unreadable cache %s (%s)", path, e)
    x, y, classes, names, transparent = _read_image_tree(root, classes, files)
    _warn_transparent(root, transparent)
    try:
        write_atomic(path, lambda tmp: np.savez(tmp, x=x, y=y, classes=np.array(classes), names=np.array(names),
                                                transparent=np.array(transparent, dtype=str)))
    except OSError:
        log.warning("could not cache decoded images in %s", path.parent)
    return x, y, classes, names


@DATASETS.register("folder", help="folder:PATH - ImageFolder tree (PATH/train + PATH/test, or a seeded 80/20 split of PATH or PATH/train)")
def folder(path: str) -> tuple[ImageSet, ImageSet]:
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UnlearnableError(f"{root} is a file, not a folder" if root.exists() else f"folder {root} does not exist")
    if (root / "train").is_dir() and (root / "test").is_dir():
        xtr, ytr, classes, names = _cached_tree(root / "train")
        xte, yte, classes_te, names_te = _cached_tree(root / "test")
        if classes_te != classes:
            raise UnlearnableError(f"{root}/train and {root}/test have different class folders")
        if xte.shape[1] != xtr.shape[1]:  # a colour split makes the other colour too
            xtr, xte = (np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x for x in (xtr, xte))
        if xte.shape[1:] != xtr.shape[1:]:
            raise UnlearnableError(f"{root}/train images are {shape_text(xtr)} but {root}/test images are "
                                   f"{shape_text(xte)}; give both splits one size and one colour mode")
        parts = ImageSet(xtr, ytr, classes, split="train"), ImageSet(xte, yte, classes, split="test")
        parts[0].provenance["file_names"], parts[1].provenance["file_names"] = names, names_te
    else:
        subdirs = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
        tree = root / "train" if subdirs == ["train"] else root  # a train/ tree shipped without its test/ half
        x, y, classes, names = _cached_tree(tree)
        if len(classes) < 2:
            raise UnlearnableError(f"{root} has {len(classes)} class folder(s); at least 2 are needed")
        parts = split_train_test(x, y, classes, names)
    if len(classes) < 2:
        raise UnlearnableError(f"{root} has {len(classes)} class folder(s); at least 2 are needed")
    return parts


@DATASETS.register("npz", help="npz:PATH - arrays x (N,H,W[,C] or N,C,H,W; uint8 or floats in [0,1]) and y")
def npz(path: str) -> tuple[ImageSet, ImageSet]:
    p = Path(path).expanduser()
    if p.is_dir():
        raise UnlearnableError(f"{p} is a folder; npz:PATH names an .npz file (folder:PATH reads an image tree)")
    if not p.is_file():
        raise UnlearnableError(f"npz file {p} does not exist")
    try:
        z = np.load(p, allow_pickle=False)
    except ValueError as e:  # numpy takes anything that is not .npy / .npz for a pickle
        why = "it is not an .npz archive" if "pickled" in str(e) else str(e)
        raise UnlearnableError(f"cannot read {p} as npz: {why}") from None
    except Exception as e:
        raise UnlearnableError(f"cannot read {p} as npz: {e}") from None
    if not isinstance(z, np.lib.npyio.NpzFile):
        raise UnlearnableError(f"{p} holds one array; npz:PATH needs an .npz archive with arrays 'x' and 'y'")
    with z:
        if "x" not in z or "y" not in z:
            raise UnlearnableError(f"{p} must hold arrays 'x' and 'y' (found: {', '.join(z.files)})")
        if ("x_test" in z) != ("y_test" in z):
            raise UnlearnableError(f"{p} holds {'x_test' if 'x_test' in z else 'y_test'} without "
                                   f"{'y_test' if 'x_test' in z else 'x_test'}: give both, or neither for a seeded "
                                   "80/20 split")

        def array(key: str) -> np.ndarray:
            try:
                return z[key]
            except ValueError as e:
                if "allow_pickle" in str(e):  # numpy refuses object arrays without allow_pickle, which would run code
                    raise UnlearnableError(f"{p}: array {key!r} holds Python objects (dtype=object); save numbers, "
                                           "and class names as strings") from None
                raise UnlearnableError(f"{p}: array {key!r} is damaged ({e})") from None
            except MemoryError:  # a sound file too large for this machine: not "damaged"
                raise UnlearnableError(f"{p}: array {key!r} does not fit in this machine's memory") from None
            except Exception as e:  # noqa: BLE001 - a bad CRC (zipfile.BadZipFile), a truncated member (EOFError)
                raise UnlearnableError(f"{p}: array {key!r} is damaged ({type(e).__name__}: {e})") from None

        x = _images_from_array(array("x"), p)
        y = _labels(array("y"), len(x), p, "y")
        n_cls = int(y.max()) + 1 if len(y) else 0
        classes = _class_names(array("classes"), p) if "classes" in z else [str(i) for i in range(n_cls)]
        empty = sorted(set(range(n_cls)) - set(np.unique(y).tolist()))
        if empty and "classes" not in z:
            log.warning("%s: labels are class indices 0..%d, and %d of them have no image (e.g. %d): each is kept as "
                        "a class with no samples (labels 1..C or with gaps? give 0..C-1)", p, n_cls - 1, len(empty),
                        empty[0])
        if len(classes) < 2:
            raise UnlearnableError(f"{p}: labels name {len(classes)} class; at least 2 are needed")
        if n_cls > len(classes):
            raise UnlearnableError(f"{p}: y has label {n_cls - 1} but 'classes' names only {len(classes)}")
        if "x_test" in z:
            xte = _images_from_array(array("x_test"), p, "x_test")
            yte = _labels(array("y_test"), len(xte), p, "y_test")
            if xte.shape[1:] != x.shape[1:]:
                raise UnlearnableError(f"{p}: x images are {shape_text(x)} but x_test images are {shape_text(xte)}")
            if len(yte) and yte.max() >= len(classes):
                raise UnlearnableError(f"{p}: y_test has label {yte.max()}, beyond the {len(classes)} classes")
            parts = ImageSet(x, y, classes, split="train"), ImageSet(xte, yte, classes, split="test")
            for part in parts:
                part.provenance["file_names"] = row_names(len(part))
            return parts
    return split_train_test(x, y, classes, row_names(len(x)))


def row_names(n: int) -> list[str]:
    """An npz's samples named by their row (``000042``, as wide as the largest), so that an export or ``protect
    --png`` writes row 42 as ``<class>/000042.png`` whatever split it fell in, and :func:`unsplit` restores the
    rows' order."""
    width = max(6, len(str(n - 1)))
    return [f"{i:0{width}d}" for i in range(n)]


def _class_names(names: np.ndarray, path: Path) -> list[str]:
    """An npz's ``classes``: a 1-D array of names (bytes decoded as UTF-8, numbers as their text)."""
    if names.ndim != 1:
        raise UnlearnableError(f"{path}: classes must be a 1-D array of class names, got shape {names.shape}")
    return [c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in names.tolist()]


def _labels(y: np.ndarray, n: int, path: Path, name: str) -> np.ndarray:
    """Integer class labels as a flat int64 array of ``n`` (an N x 1 column too); a one-line error otherwise."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise UnlearnableError(f"{path}: {name} must hold one label per image, got shape {y.shape}")
    if len(y) != n:
        raise UnlearnableError(f"{path}: {name.replace('y', 'x')} has {n} images but {name} has {len(y)} labels")
    if not whole_labels(y):
        raise UnlearnableError(f"{path}: {name} must hold integer class labels, got {y.dtype}")
    if len(y) and y.min() < 0:
        raise UnlearnableError(f"{path}: {name} has the negative label {y.min()}")
    if len(y) and y.max() >= MAX_CLASSES:  # a label of 10**9 made a billion class names
        raise UnlearnableError(f"{path}: {name} has the label {y.max()}: labels are class indices 0..C-1, with at "
                               f"most {MAX_CLASSES:,} classes")
    return y.astype(np.int64)


#: More classes than any image dataset has (ImageNet-21k: ~21,800): a larger label is a mistake, not a class.
MAX_CLASSES = 100_000


def _images_from_array(x: np.ndarray, path: Path, name: str = "x") -> np.ndarray:
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise UnlearnableError(f"{path}: {name} must be N x H x W, N x H x W x C or N x C x H x W, got shape "
                               f"{x.shape}")
    if x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.shape[1] not in (1, 3):
        raise UnlearnableError(f"{path}: {name} images must have 1 or 3 channels (N x H x W x C or N x C x H x W), "
                               f"got shape {x.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.floating) or not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise UnlearnableError(f"{path}: {name} must be uint8, or floats in [0, 1]")
        x = to_uint8(x)
    return np.ascontiguousarray(x)

"""Saved sets: a directory of memory-mappable ``.npy`` arrays plus ``manifest.json``.

The manifest records the source spec, the method and every parameter, the seed, which indices were changed, the
per-sample perturbation norms, the SHA-256 of each array and the package version. Loading verifies the hashes.
Saving writes to a temporary directory and renames it into place, so an interrupted save leaves nothing behind.
"""
from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .. import __version__
from ..errors import UnlearnableError
from .imageset import ImageSet, require_set, shape_text

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
ARRAYS = ("x", "y")


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (RFC 8259) for what the package writes or prints: NaN and infinities, which ``json.dumps``
    writes as bare ``NaN`` / ``Infinity`` that other parsers refuse (a scikit-learn victim's training loss), become
    ``null``."""
    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return v if np.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), indent=indent, allow_nan=False)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_saved_set(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


def check_out_dir(out: str | Path, overwrite: bool) -> Path:
    """Refuse an existing non-empty output directory unless ``overwrite``, and a directory that holds the current
    one (``--out .``): checked before any long work."""
    out = Path(out)
    _check_replaceable(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UnlearnableError(f"{out} exists and is not empty; pass --overwrite to replace it")
    return out


def _check_replaceable(out: Path) -> None:
    target, here = out.resolve(), Path.cwd().resolve()
    if target == here or target in here.parents:
        raise UnlearnableError(f"{out} holds the current directory and would be replaced; give --out a new folder")
    _check_writable(out)


def _check_writable(out: Path) -> None:
    """Refuse, before any long work, an output whose folder cannot be written: the nearest existing folder above
    ``out`` (where its temporary sibling and any missing folders are made) must be a writable directory."""
    parent = out.resolve().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UnlearnableError(f"{parent} is a file, not a folder: {out} cannot be written inside it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UnlearnableError(f"cannot write in {parent} (permission denied): give {out.name} another place")
    try:  # what os.access cannot see: root in a read-only mount or a system folder such as /proc
        tempfile.TemporaryFile(dir=parent).close()
    except OSError as e:
        raise UnlearnableError(f"cannot write in {parent} ({e.strerror or e}): give {out.name} another place") from None


def check_out_file(path: str | Path, overwrite: bool, suffix: str | None = None) -> Path:
    """Refuse an output file that is a directory, or an existing file unless ``overwrite``, or one whose name does
    not end in ``suffix`` (the format it will hold): before any long work."""
    path = Path(path)
    if path.is_dir():
        raise UnlearnableError(f"{path} is a directory; give a file name")
    _check_writable(path)
    if suffix is not None and path.suffix.lower() != suffix:
        raise UnlearnableError(f"{path} will hold a {suffix[1:].upper()} file: give it a {suffix} name")
    if path.exists() and not overwrite:
        raise UnlearnableError(f"{path} exists; pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def atomic_dir(out: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it takes the place of ``out``, on failure it is removed.

    ``out`` is resolved first (a link to a folder: the folder is replaced, not the link). What was at ``out`` is
    renamed aside and removed only once the new result is in place: an interruption leaves the old result or the
    new one (and at worst a hidden ``.NAME.old-*`` sibling), never neither."""
    out = Path(out).resolve()
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _sweep_leftovers(out)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{_writer()}-", dir=out.parent))
    except OSError as e:  # name the folder asked for, not the temporary one tried beside it
        if e.filename is not None and Path(str(e.filename)).name.startswith(f".{out.name}."):
            e.filename = str(out)
        raise
    try:
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)  # mkdtemp's 0700 would make a folder meant for release private
        with _named_as(tmp, out):
            yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{tmp.name.rsplit('.', 1)[-1]}")
            out.rename(old)
        try:
            tmp.rename(out)
        except BaseException:
            if old is not None:
                old.rename(out)
            raise
        if old is not None:
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_atomic(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path`` (same suffix), then rename it to ``path``: a crash
    never leaves a half-written file there, and a failed write leaves no temporary behind."""
    path = Path(path)
    _sweep_leftovers(path)
    tmp = path.with_name(f".{path.name}.{_writer()}-{secrets.token_hex(4)}.tmp{path.suffix}")  # one per writer
    try:
        with _named_as(tmp, path):
            path.parent.mkdir(parents=True, exist_ok=True)
            write(tmp)
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _writer() -> str:
    """Who writes a temporary: this host (a digest of its name) and process, in the temporary's name."""
    return f"{hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]}-{os.getpid()}"


def _sweep_leftovers(target: Path) -> None:
    """Remove the temporaries that a killed writer of ``target`` (SIGKILL, a power cut) left beside it: those named
    by this host whose process is gone. A live writer's (another run into the same place) are left alone."""
    if os.name != "posix" or not target.parent.is_dir():
        return
    host = _writer().split("-")[0]
    # not a ".NAME.old-*" copy: killed between its two renames, a writer leaves the only earlier result there
    own = re.compile(rf"\.{re.escape(target.name)}\.{host}-(\d+)-")
    for p in target.parent.glob(f".{glob.escape(target.name)}.*"):
        m = own.match(p.name)
        if m is None or _alive(int(m.group(1))):
            continue
        log.info("removing %s, left by an interrupted run", p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


@contextlib.contextmanager
def _named_as(tmp: Path, target: Path) -> Iterator[None]:
    """An OSError about the temporary ``tmp`` (or a file in it) names ``target`` instead, so that a user reads
    "No such file or directory: /proc/g.png", not the hidden temporary name nobody asked for; numpy's short write
    on a full disk ("1843200 requested and 1048448 written", no errno) says the disk is full."""
    try:
        yield
    except OSError as e:
        if e.errno is None and re.fullmatch(r"\d+ requested and \d+ written", str(e)):
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} ({e})", str(target)) from None
        if e.filename is not None:
            name = Path(str(e.filename))
            if name == tmp or tmp in name.parents:
                e.filename = str(target / name.relative_to(tmp)) if name != tmp and tmp.is_dir() else str(target)
        raise


def torch_save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` via :func:`write_atomic`."""
    import torch

    def write(tmp: Path) -> None:  # through a Python file: an unwritable folder is an OSError, not torch's
        with open(tmp, "wb") as f:  # RuntimeError ("open file failed with strerror")
            torch.save(obj, f)

    return write_atomic(path, write)


def budget_levels(eps: float) -> int:
    """An L-inf radius on the [0, 1] scale as whole 8-bit levels: floor(eps * 255)."""
    return int(np.floor(eps * 255 + 1e-6))


def between_levels(eps: float) -> bool:
    """Whether an L-inf radius falls between 8-bit levels (0.1 is 25.5: the budget is the 25 below it)."""
    return abs(eps * 255 - round(eps * 255)) > 1e-6


def perturbation_norms(x: np.ndarray, clean: np.ndarray) -> dict[str, np.ndarray]:
    """Per-sample L-inf, L2 (on the [0, 1] scale) and L0 (changed pixel positions) of ``x - clean``."""
    d = (x.astype(np.int16) - clean.astype(np.int16)).reshape(len(x), x.shape[1], -1)
    return {
        "linf": np.abs(d).max(axis=(1, 2)) / 255.0,
        "l2": np.sqrt((d.astype(np.float64) ** 2).sum(axis=(1, 2))) / 255.0,
        "l0": (d != 0).any(axis=1).sum(axis=1).astype(np.float64),
    }


def check_budget(x: np.ndarray, clean: np.ndarray, norm: str, eps: float) -> dict[str, np.ndarray]:
    """Raise if any sample breaks the budget after 8-bit quantisation; return the per-sample norms."""
    if x.shape != clean.shape:
        raise UnlearnableError(f"poisoned images {x.shape} do not match the clean ones {clean.shape}")
    norms = perturbation_norms(x, clean)
    if norm == "linf":
        worst = int(np.rint(norms["linf"].max() * 255)) if len(x) else 0
        ok, said = worst <= budget_levels(eps), f"{worst} levels > {budget_levels(eps)}"
    elif norm == "l2":
        worst = float(norms["l2"].max()) if len(x) else 0.0
        ok, said = worst <= eps + 1e-6, f"L2 {worst:.4f} > {eps:.4f}"
    elif norm == "l0":
        worst = float(norms["l0"].max()) if len(x) else 0.0
        ok, said = worst <= eps, f"{worst:.0f} pixels > {eps:.0f}"
    else:
        raise UnlearnableError(f"unknown norm {norm!r}; known: linf, l2, l0")
    if not ok:
        raise UnlearnableError(f"refusing to save: a sample breaks the {norm} budget ({said})")
    return norms


def save_set(data: ImageSet, out: str | Path, *, clean: ImageSet | None = None, overwrite: bool = False,
             extra_files: dict[str, bytes] | None = None) -> Path:
    """Save ``data`` (usually a poisoned or purified train split) as a directory; return its path.

    When ``clean`` is given, the per-sample perturbation norms are computed against it and, if the provenance
    names a budget (``{"norm": ..., "eps": ...}``) and is not a purified set's, every sample is checked against it
    first (without ``clean`` nothing is checked).
    """
    from .sources import absolute_spec

    require_set(data, "the set to save")
    if clean is not None:
        require_set(clean, "clean")
        if clean.x.shape != data.x.shape:
            raise UnlearnableError(f"clean has {len(clean)} images of {shape_text(clean.x)}, the set to save "
                                   f"{len(data)} of {shape_text(data.x)}: clean must be the same images before")
    out = check_out_dir(out, overwrite)
    manifest: dict[str, Any] = {
        **data.provenance,  # first: a set saved again (purified) records this version and its own shape
        "format": FORMAT_VERSION,
        "unlearnable_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "source": absolute_spec(data.source),  # the set is read from other folders too
        "split": data.split,
        "classes": data.classes,
        "shape": list(data.x.shape),
    }
    if clean is not None:
        # a purified set's budget record is the attack's it came from: its pixels are the purifier's, not bounded
        budget = None if "purified_by" in data.provenance else data.provenance.get("budget")
        if budget:
            norms = check_budget(data.x, clean.x, budget["norm"], float(budget["eps"]))
        else:
            norms = perturbation_norms(data.x, clean.x)
        manifest["norms"] = {k: np.round(v, 6).tolist() for k, v in norms.items()}
        manifest["label_changed"] = np.flatnonzero(data.y != clean.y).tolist()
    with atomic_dir(out) as tmp:
        hashes = {}
        for name in ARRAYS:
            np.save(tmp / f"{name}.npy", getattr(data, name))
            hashes[f"{name}.npy"] = sha256_file(tmp / f"{name}.npy")
        for name, blob in (extra_files or {}).items():
            (tmp / name).write_bytes(blob)
            hashes[name] = sha256_file(tmp / name)
        manifest["sha256"] = hashes
        (tmp / MANIFEST).write_text(json_text(manifest, indent=1))
    return out


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not is_saved_set(path):
        raise UnlearnableError(f"{path} is not a saved set (no {MANIFEST})")
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnlearnableError(f"{path / MANIFEST} is not valid JSON: {e}") from None
    _check_manifest(path / MANIFEST, manifest)
    return manifest


def _check_manifest(where: Path, m: Any) -> None:
    """A one-line error for a manifest that was edited into something this package cannot read."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise UnlearnableError(f"{where} is damaged: {what}")

    need(isinstance(m, dict), "not a JSON object")
    need(isinstance(m.get("format"), int), "no format number")
    need(m["format"] <= FORMAT_VERSION, f"format {m['format']} is newer than this package reads ({FORMAT_VERSION}); "
         "update unlearnable")
    for key, kind in (("source", str), ("split", str), ("classes", list), ("shape", list), ("sha256", dict)):
        need(isinstance(m.get(key), kind), f"'{key}' is missing or not a {kind.__name__}")
    need(len(m["shape"]) == 4 and all(isinstance(n, int) and n >= 0 for n in m["shape"]), "'shape' is not N,C,H,W")
    n = m["shape"][0]
    for key in ("changed", "label_changed", "source_index"):
        v = m.get(key, [])
        need(isinstance(v, list) and all(isinstance(i, int) and i >= 0 for i in v), f"'{key}' is not a list of "
             "indices")
    need(all(i < n for key in ("changed", "label_changed") for i in m.get(key, [])), "an index beyond the set")
    hashes = m["sha256"]  # the arrays must be covered: an emptied record skipped every check
    need(all(isinstance(hashes.get(f), str) and len(hashes[f]) == 64 for f in ("x.npy", "y.npy")),
         "'sha256' does not cover x.npy and y.npy")
    need(all(isinstance(f, str) and "/" not in f and "\\" not in f and f not in (".", "..") for f in hashes),
         "'sha256' names a file outside the set")
    budget = m.get("budget")
    if budget is not None:
        need(isinstance(budget, dict) and isinstance(budget.get("norm"), str)
             and isinstance(budget.get("eps"), (int, float)), "'budget' needs a norm name and a number eps")


def verify_hashes(path: Path, manifest: dict[str, Any]) -> None:
    for name, digest in manifest.get("sha256", {}).items():
        f = path / name
        if not f.is_file():
            raise UnlearnableError(f"{f} is missing")
        if sha256_file(f) != digest:
            raise UnlearnableError(f"{f} does not match the SHA-256 in its manifest: the set was modified")


def load_set(path: str | Path, verify: bool = True) -> ImageSet:
    """Load a saved set (memory-mapped), verifying each array against the manifest's SHA-256."""
    path = Path(path)
    manifest = read_manifest(path)
    if verify:
        verify_hashes(path, manifest)
    x = np.load(path / "x.npy", mmap_mode="r")
    y = np.load(path / "y.npy")
    if list(x.shape) != manifest["shape"] or y.shape != (len(x),):  # the record's indices are bounded by 'shape'
        raise UnlearnableError(f"{path}: its arrays ({shape_text(x)}, {len(y)} labels) are not the manifest's "
                               f"shape {manifest['shape']}: the set was modified")
    keep = {k: v for k, v in manifest.items()
            if k not in ("format", "created", "source", "split", "classes", "shape", "sha256", "unlearnable_version")}
    return ImageSet(x, y, list(manifest["classes"]), source=manifest["source"], split=manifest["split"],
                    provenance=keep)


def safe_name(name: str) -> str:
    """A class name usable as a folder name ("T-shirt/top" -> "T-shirt_top"; never hidden, "." or "..")."""
    name = "".join(c if c.isalnum() or c in "-_. " else "_" for c in name).strip() or "_"
    return "_" + name[1:] if name.startswith(".") else name


def class_folders(classes: list[str]) -> list[str]:
    """One folder name per class, all distinct (also where case does not count, as on macOS and Windows): a class
    whose :func:`safe_name` meets an earlier one's ("a/b" and "a_b", or a repeated name) gets ``-<label>``."""
    out: list[str] = []
    taken: set[str] = set()
    for label, name in enumerate(classes):
        folder = safe_name(str(name))
        while folder.lower() in taken:
            folder = f"{folder}-{label}"
        taken.add(folder.lower())
        out.append(folder)
    return out


def png_paths(data: ImageSet) -> list[Path]:
    """Where :func:`export_png` writes each sample, relative to its split's folder.

    ``<class>/<index>.png``; for images read from a folder (``provenance["file_names"]``), each file's own path below
    its class folder with a ``.png`` suffix, so a released set keeps its file names. The class folder follows the
    label, which an attack may have changed; a name that would then meet another (or ``a.jpg`` meeting ``a.png``,
    or ``A.png`` meeting ``a.png``: one file where case is ignored) gets ``-<index>`` appended to its stem, again
    while that name is taken too.
    """
    names = data.provenance.get("file_names")
    by_label = class_folders(data.classes)
    folders = [by_label[c] for c in data.y.tolist()]
    if names is None or len(names) != len(data):
        return [Path(f, f"{i:06d}.png") for i, f in enumerate(folders)]
    paths = [Path(f, *(Path(n).parts[1:] or [Path(n).name])).with_suffix(".png") for f, n in zip(folders, names)]
    key = lambda p: str(p).lower()  # noqa: E731 - A.png and a.png are one file on macOS and Windows
    seen = Counter(map(key, paths))
    # a name kept as it is: unique ones, and of a clash the file that already bears it (a.png, not a.jpg or A.png)
    exact = {key(p): i for i, (p, n) in enumerate(zip(paths, names))
             if seen[key(p)] > 1 and Path(n) == p}
    taken = {key(p) for p in paths if seen[key(p)] == 1} | set(exact)
    out = []
    for i, p in enumerate(paths):
        if seen[key(p)] > 1 and exact.get(key(p)) != i:
            stem = f"{p.stem}-{i}"
            while key(p.with_stem(stem)) in taken:  # a.jpg's a-1.png meeting the folder's own a-1.png
                stem = f"{stem}-{i}"
            p = p.with_stem(stem)
            taken.add(key(p))
        out.append(p)
    return out


def renamed_files(data: ImageSet) -> list[tuple[str, str]]:
    """``(file name, exported name)`` of each file of a folder's set whose name :func:`png_paths` had to change
    beyond the ``.png`` suffix (and a class folder an attack's label change moved it to): the clashes."""
    names = data.provenance.get("file_names")
    if names is None or len(names) != len(data):
        return []
    return [(n, str(p)) for n, p in zip(names, png_paths(data)) if Path(n).with_suffix(".png").name != p.name]


def export_png(parts: dict[str, ImageSet] | ImageSet, out: str | Path, overwrite: bool = False,
               progress=None) -> Path:
    """Write ``OUT/<split>/<class>/<name>.png`` for each named part (``{"train": set, "test": set}``; one set alone
    is its own split, ``train`` or ``test``), losslessly (names: :func:`png_paths`); atomic like :func:`save_set`."""
    from PIL import Image

    if isinstance(parts, ImageSet):
        parts = {parts.split or "train": parts}
    if not isinstance(parts, dict) or not parts:
        raise UnlearnableError(f"export_png takes an ImageSet or a dict of them by split, got {type(parts).__name__}")
    for split, data in parts.items():
        require_set(data, f"the {split} part")

    out = check_out_dir(out, overwrite)
    with atomic_dir(out) as tmp:
        for split, data in parts.items():
            paths = png_paths(data)
            # every class folder, empty ones too (the class list must survive a reload: a reload sorts it, as
            # ImageFolder does, so a label keeps its class name, not its index), and the subfolders a folder's own
            # names bring
            for d in {*map(Path, class_folders(data.classes)), *(p.parent for p in paths)}:
                (tmp / split / d).mkdir(parents=True, exist_ok=True)
            for i, rel in enumerate(paths):
                path = tmp / split / rel
                img = np.asarray(data.x[i]).transpose(1, 2, 0)
                Image.fromarray(img[..., 0] if img.shape[2] == 1 else img).save(path)
                if progress:
                    progress()
    return out

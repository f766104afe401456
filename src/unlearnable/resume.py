"""Resumable long jobs: attacks and purifiers that train for minutes to days save their state at safe points.

A caller (the CLI) sets ``job.checkpoint`` to a file path; the job writes its state there atomically, tagged with
its parameters, its data (a fingerprint of the pixels and labels, their shape and classes) and the code that
wrote it, and a later run with the same parameters on the same data by the same code continues from it - with the
result an uninterrupted run gives, random number generators included. A state made with other parameters, other
data or other code (another version of the package, or an edited copy) is ignored with a warning, never half-applied.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from .data.store import torch_save_atomic
from .errors import UnlearnableError, first_line

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """A digest of the package's source files (computed when this module is imported, before any job runs; hidden
    names such as an editor's ``.#cli.py`` lock link are left out): a state written by other code (an algorithm
    changed with no change of parameters; a network of another shape) is not resumed by this one."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        h.update(rel.as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


code_digest()  # now: a file edited while a job runs is not taken for the code that runs it

#: The state files this process wrote or resumed from: what a command that stops early may say it kept.
written: set[str] = set()


class Resumable:
    """Mixin of the long jobs (attacks, purifiers); subclasses provide ``name`` and ``params()``."""

    #: Where the job keeps its state between safe points (set by the caller, e.g. the CLI); None: nowhere.
    checkpoint: ClassVar[str | None] = None
    #: Inside one long pass, the state is written at most this often (seconds); safe points at the end of a
    #: trial, round or epoch are always written.
    save_every_s: ClassVar[float] = 60.0
    #: Set by a caller that writes the job's result somewhere (the CLI): the job then leaves its last state in
    #: place when it ends (:meth:`finish_state`), and the caller removes it (:meth:`clear_state`) once the result
    #: is saved, so a failed save costs a rerun seconds, not the whole job.
    keep_state: ClassVar[bool] = False
    #: Seconds the runs before this one spent up to their last saved state (0 unless :meth:`load_state` resumed).
    resumed_seconds: float = 0.0
    #: Where "resuming from STATE" is said once the state has been found to fit (the CLI: its stderr line).
    announce: ClassVar[Callable[[str], None]] = log.info

    def bind_state(self, data: Any) -> None:
        """Tie the saved state to ``data`` (an ImageSet): a run on other data will not resume from it."""
        self._state_data = None if not self.checkpoint else {
            "fingerprint": data.fingerprint(), "shape": list(data.x.shape), "classes": list(data.classes)}
        self._state_started, self.resumed_seconds = time.perf_counter(), 0.0

    def _state_tag(self) -> dict[str, Any]:
        return {"params": self.params(), "data": getattr(self, "_state_data", None), "code": code_digest()}

    def save_state(self, state: dict[str, Any]) -> None:
        """Write ``state`` (tensors, ints...) to :attr:`checkpoint` atomically, tagged with parameters and data."""
        if self.checkpoint:
            seconds = self.resumed_seconds + time.perf_counter() - getattr(self, "_state_started", time.perf_counter())
            torch_save_atomic({**self._state_tag(), "seconds": seconds, "state": state}, self.checkpoint)
            written.add(str(self.checkpoint))

    def load_state(self) -> dict[str, Any] | None:
        """The state saved by an interrupted run with the same parameters and data, or None."""
        if not self.checkpoint or not Path(self.checkpoint).is_file():
            return None
        saved = read_state(self.checkpoint)
        if saved is None:
            return None
        tag = self._state_tag()
        if {k: saved.get(k) for k in tag} != tag or "state" not in saved:
            log.warning("%s: ignoring %s (made with other parameters, other data or another version of the code)",
                        self.name, self.checkpoint)
            return None
        self.resumed_seconds = float(saved.get("seconds", 0.0))
        written.add(str(self.checkpoint))
        Resumable.announce(f"{self.name}: resuming the interrupted run kept in {self.checkpoint} "
                           f"({self.resumed_seconds:.0f} s of work done)")
        return saved["state"]

    @contextmanager
    def restoring(self):
        """Around the use of a loaded state: one that does not fit this run after all is a one-line error that names
        the file (the job's networks may hold part of it by then, so it cannot just be ignored)."""
        import torch

        try:
            yield
        except torch.cuda.OutOfMemoryError:  # the state may well fit: the device's memory does not
            raise
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            raise UnlearnableError(f"{self.name}: the state in {self.checkpoint} does not fit this run "
                                   f"({first_line(e)}); delete it to start afresh") from None

    def finish_state(self) -> None:
        """The job has its result: remove the state, unless the caller keeps it until the result is saved."""
        if not self.keep_state:
            self.clear_state()

    def clear_state(self) -> None:
        if self.checkpoint and Path(self.checkpoint).is_file():
            if str(self.checkpoint) not in written:  # an interrupted run's, that this job could not use: said
                log.warning("%s: removed %s, an interrupted run's state this job could not use", self.name,
                            self.checkpoint)
            Path(self.checkpoint).unlink()


def _numpy_globals() -> list:
    """What a state's numpy arrays (the numpy generator's state) need from numpy to be unpickled."""
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    kinds = (np.bool_, np.uint8, np.int32, np.int64, np.uint32, np.uint64, np.float32, np.float64)
    return [_reconstruct, scalar, np.ndarray, np.dtype, *{type(np.dtype(k)) for k in kinds}]


def read_state(path: str | Path) -> dict[str, Any] | None:
    """A state file's contents, or None (with a warning) when it cannot be one: truncated, empty, written by another
    version, or not a state at all. Read with ``weights_only`` (tensors, numbers, strings, containers and numpy
    arrays), so a file planted at a state's path cannot run code."""
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is ignored, never half-applied
        log.warning("ignoring %s: not a state this version can read (%s)", path, first_line(e))
        return None
    if not isinstance(saved, dict):
        log.warning("ignoring %s: not a state this version can read", path)
        return None
    return saved


def rng_state(gen: Any = None, device: Any = None) -> dict[str, Any]:
    """The global torch (CPU, and CUDA: ``device`` when it is a CUDA device, else the current one) and numpy
    generators, and ``gen``'s state."""
    import torch

    cuda = device if device is not None and torch.device(device).type == "cuda" else "cuda"
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state(cuda) if torch.cuda.is_initialized() else None,
            "cuda_device": str(cuda), "gen": None if gen is None else gen.get_state()}


def set_rng_state(state: dict[str, Any], gen: Any = None) -> None:
    """Restore what :func:`rng_state` saved."""
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], state.get("cuda_device", "cuda"))
    if gen is not None and state["gen"] is not None:
        gen.set_state(state["gen"])

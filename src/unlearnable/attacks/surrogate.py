"""Surrogate models for the optimisation attacks: created from the model registry, sized to the data, and (for
attacks that need a model trained on CLEAN data: TAP, SEP) trained once and cached by data + architecture + seed."""
from __future__ import annotations

import copy
import inspect
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import ImageSet, cache_dir
from ..data.store import torch_save_atomic
from ..errors import UnlearnableError
from ..models import CLASSICAL, MODELS, create_model
from ..training import TrainConfig, train

log = logging.getLogger(__name__)


def check_surrogate(name: str, width: int | None = None) -> None:
    """Fail early (when an attack is configured) on an unknown or non-differentiable surrogate architecture, or a
    ``width`` the architecture has no option for."""
    factory = MODELS.get(name)
    if name in CLASSICAL:
        raise UnlearnableError(f"{name} is a scikit-learn victim; a surrogate must be a torch model (e.g. cnn)")
    if width is None:
        return
    if "width" not in inspect.signature(factory).parameters:
        known = [n for n in MODELS if n not in CLASSICAL and "width" in inspect.signature(MODELS.get(n)).parameters]
        raise UnlearnableError(f"surrogate {name} has no width option (model_width works with {', '.join(known)})")
    if width < 1:
        raise UnlearnableError(f"model_width must be >= 1, got {width}")


def make_surrogate(name: str, data: ImageSet, device: torch.device, width: int | None = None) -> nn.Module:
    """A fresh registry model ``name`` for ``data``'s channels, classes and image size, on ``device``; ``width``
    (architectures that have one: ``cnn``, ``convnet``) overrides the model's default width."""
    check_surrogate(name, width)
    if data.num_classes < 2:  # one class: a constant loss, zero gradients, and the noise stays its random start
        raise UnlearnableError(f"a surrogate needs two or more classes to learn from; this set has {data.num_classes}")
    kwargs = {} if width is None else {"width": width}
    model = create_model(name, data.channels, data.num_classes, data.image_size, **kwargs)
    return model.to(device, memory_format=torch.channels_last)


def frozen(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` for input-gradient work (PGD): eval mode, no parameter gradients, and each
    conv followed by batch norm folded into one conv (torch.fx ``fuse``) - 1.6x the PGD throughput of the
    default ``cnn`` here (BENCHMARKS.md). Models fx cannot trace are returned unfused."""
    m = copy.deepcopy(model).eval()
    try:
        from torch.fx.experimental.optimization import fuse

        m = fuse(m)
    except Exception as err:  # control flow fx cannot trace: the plain eval copy is just slower
        log.debug("batch-norm folding skipped for %s: %s", type(model).__name__, err)
    return m.requires_grad_(False)


#: Every epoch's weights are cached when the whole run's weights stay below this size (the ``cnn``: ~0.5 MB an
#: epoch), so TAP (final epoch) and SEP (evenly spaced epochs) on the same data share one training run when they
#: ask for the same epochs, seed and width (as their ``fast`` presets do: 10 epochs; by default TAP trains 10, SEP 30).
KEEP_ALL_EPOCHS_BYTES = 64 * 2**20


def clean_surrogate(data: ImageSet, name: str, epochs: int, seed: int, device: torch.device,
                    keep: int = 1, width: int | None = None) -> list[nn.Module]:
    """Train ``name`` on the clean ``data`` with the package's trainer; return ``keep`` checkpoints taken at evenly
    spaced epochs, ending with the final model. Cached epoch by epoch under ``cache_dir()/surrogates``: a second
    attack on the same data, architecture, epochs and seed reuses the run when the epochs it needs are there."""
    keep = max(1, min(keep, epochs))
    at = sorted({int(round(e)) for e in np.linspace(epochs / keep, epochs, keep)})
    arch = name if width is None else f"{name}-w{width}"
    shape = "x".join(map(str, (data.num_classes, *data.x.shape[1:])))  # the fingerprint is pixels and labels only
    run = cache_dir() / "surrogates" / f"{data.fingerprint()}-{shape}-{arch}-e{epochs}-s{seed}"
    states = _load_epochs(run, at)
    if states is None:
        states = {}
        cfg = TrainConfig(epochs=epochs, seed=seed, device=str(device), eval_every=epochs + 1)

        def snapshot(epoch: int, model: nn.Module) -> None:  # each kept epoch is cached as soon as it is taken
            state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            small = epochs * sum(v.numel() * v.element_size() for v in state.values()) <= KEEP_ALL_EPOCHS_BYTES
            if epoch in at or small:
                states[epoch] = state
                _save_epochs(run, {epoch: state})

        torch.manual_seed(seed)  # the initialisation, whatever the caller drew before (TAP and SEP: the same seed)
        # an interrupted run resumes after its last finished epoch; the epochs it kept before are in the cache
        train(data, None, make_surrogate(name, data, device, width), cfg, description=f"surrogate {arch}",
              on_epoch=snapshot, state_path=run / "training.pt" if _writable(run) else None)
        missing = [e for e in at if e not in states]
        if missing:
            states.update(_load_epochs(run, missing) or {})
    models = []
    for epoch in at:
        m = make_surrogate(name, data, device, width)
        m.load_state_dict(states[epoch])
        models.append(frozen(m))
    return models


def _load_epochs(run: Path, at: list[int]) -> dict[int, dict] | None:
    """The cached weights of epochs ``at`` of one surrogate run, or None when any is missing or unreadable."""
    try:
        states = {e: torch.load(run / f"epoch{e}.pt", map_location="cpu", weights_only=True) for e in at}
    except Exception:  # missing or broken: the run is trained again
        return None
    log.info("surrogate: epochs %s cached in %s", at, run)
    return states


def _writable(run: Path) -> bool:
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(run, os.W_OK)


def _save_epochs(run: Path, states: dict[int, dict]) -> None:
    try:
        for epoch, state in states.items():
            torch_save_atomic(state, run / f"epoch{epoch}.pt")
    except OSError:
        log.warning("could not cache the surrogate in %s", run)

"""Defenses. Purifiers follow scikit-learn: ``DEFENSES.create(name, ...).fit(set).transform(set)``; training-time
defenses are options of the trainer."""
from __future__ import annotations

from typing import Any

from ..registry import Registry

DEFENSES: Registry = Registry("defense")

_D = "unlearnable.defenses"
DEFENSES.add("jpeg", f"{_D}.jpeg:JPEG", "JPEG re-compression (quality 10)")
DEFENSES.add("grayscale", f"{_D}.simple:Grayscale", "3-channel grayscale")
DEFENSES.add("bdr", f"{_D}.simple:BitDepthReduction", "bit-depth reduction (2 bits)")
DEFENSES.add("vae", f"{_D}.dvae:RateConstrainedVAE", "rate-constrained VAE reconstruction (Yu et al., ICML 2024)")
DEFENSES.add("dvae", f"{_D}.dvae:DVAE", "D-VAE two-stage purification (Yu et al., ICML 2024)")


def create_defense(name: str, **options: Any):
    """A purifier by registry name; ``options`` may be typed values or strings from ``--set key=value``."""
    from ..params import build

    return build(DEFENSES.get(name), f"defense {name!r}", options)


def load_purifier(path, device: str = "auto"):
    """A fitted purifier from the weights file that its ``save()`` or ``unlearnable purify`` wrote
    (``OUT/purifier.safetensors``): the method is read from the file, ``device`` overrides the saved one."""
    from pathlib import Path

    from safetensors import safe_open

    from ..errors import UnlearnableError, first_line

    if not Path(path).is_file():
        raise UnlearnableError(f"no saved purifier at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types
        raise UnlearnableError(f"cannot read {path} as saved purifier weights: {first_line(e)}") from None
    method = meta.get("method")
    factory = DEFENSES.get(method) if method in DEFENSES.names() else None
    if not hasattr(factory, "load"):
        what = ("a DeepConfuse generator (protect --generator applies it)" if "unlearnable.generator" in meta
                else f"no saved purifier (its method: {method!r})")
        raise UnlearnableError(f"{path} holds {what}")
    return factory.load(path, device)

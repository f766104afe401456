"""Attacks: a clean training :class:`ImageSet` in, a poisoned one out (``ATTACKS.create(name, ...).poison(set)``)."""
from __future__ import annotations

from typing import Any

from ..registry import Registry

ATTACKS: Registry = Registry("attack")

_A = "unlearnable.attacks"
ATTACKS.add("random-noise", f"{_A}.random_noise:RandomNoise",
            "uniform noise in the L-inf ball, sample- or class-wise (baseline)")
ATTACKS.add("em", f"{_A}.em:EM", "error-minimising noise, min-min (Huang et al., ICLR 2021)")
ATTACKS.add("rem", f"{_A}.rem:REM", "robust error-minimising noise, survives adversarial training (Fu et al., ICLR 2022)")
ATTACKS.add("tap", f"{_A}.tap:TAP", "targeted adversarial poisoning toward (y+1) mod C (Fowl et al., NeurIPS 2021)")
ATTACKS.add("sep", f"{_A}.sep:SEP", "self-ensemble protection: PGD over checkpoints (Chen et al., ICLR 2023)")
ATTACKS.add("label-flip", f"{_A}.label_flip:LabelFlip", "random label flips of a fraction (DeepConfuse's baseline)")
ATTACKS.add("deepconfuse", f"{_A}.deepconfuse:DeepConfuse",
            "auto-encoder trained to confuse classifiers; protects new images in one pass (Feng et al. 2019)")


def create_attack(name: str, **options: Any):
    """An attack by registry name; ``options`` may be typed values or strings from ``--set key=value``."""
    from ..params import build

    return build(ATTACKS.get(name), f"attack {name!r}", options)

"""Victim recipes by name: the registry of :class:`~unlearnable.training.TrainConfig` factories (each takes field
overrides). ``default`` is the package's victim; the others are papers' test protocols, for comparing with their
published numbers. The factories live in :mod:`unlearnable.training`; naming them here keeps ``unlearnable list
recipes`` and the CLI's check of ``--recipe`` free of torch (~2 s to import on two cores)."""
from __future__ import annotations

from .registry import Registry

RECIPES: Registry = Registry("victim recipe")
_T = "unlearnable.training"
RECIPES.add("default", f"{_T}:default_recipe",
            "The package's victim: SGD with Nesterov momentum, one-cycle, label smoothing, crop/flip, >= 705 steps.")
RECIPES.add("deepconfuse-paper", f"{_T}:deepconfuse_paper_recipe",
            "DeepConfuse's MNIST test protocol: Adam 0.01, batch 64, 2 epochs, no augmentation (pair with lenet).")

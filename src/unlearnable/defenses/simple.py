"""Fixed image squeezes: grayscale and bit-depth reduction."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from kornia.color import rgb_to_grayscale

from ..params import check
from .base import Purifier

log = logging.getLogger(__name__)

CHUNK = 4096  # images converted at a time


@dataclass
class Grayscale(Purifier):
    """Replace colour images by their luma, repeated over 3 channels (so victims keep their input shape).

    Liu, Zhao & Larson, "Image Shortcut Squeezing" (ICML 2023): grayscale removes colour-coded class-wise shortcuts
    (the D-VAE paper's "Gray" column). Identity on single-channel data.
    """

    name = "grayscale"

    def purify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if x.shape[1] == 1:
            log.warning("grayscale: the images are already single-channel; nothing to do")
            return x.copy()
        out = np.empty_like(x)
        for i in range(0, len(x), CHUNK):  # float copies of a chunk at a time, not of the whole set
            g = rgb_to_grayscale(torch.from_numpy(np.asarray(x[i:i + CHUNK])).float().div(255))
            out[i:i + CHUNK] = g.mul(255).round().clamp(0, 255).to(torch.uint8).numpy()  # broadcast to 3 channels
        return out


@dataclass
class BitDepthReduction(Purifier):
    """Quantise every pixel to ``bits`` bits (``2**bits`` levels spread over [0, 1]).

    Bit-depth reduction (Xu, Evans & Qi, "Feature Squeezing", NDSS 2018), the seed table's "BDR" with 2 bits.
    """

    bits: int = 2  # bits per channel kept (seed table: 2)
    name = "bdr"

    def validate(self) -> None:
        check(1 <= self.bits <= 7, f"bits must lie in 1..7, got {self.bits}")

    def purify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        levels = 2 ** self.bits - 1
        table = np.rint(np.rint(np.arange(256) / 255.0 * levels) / levels * 255).astype(np.uint8)
        return table[x]  # one lookup per pixel: no float copies of the set

"""Fixed image squeezes: grayscale and bit-depth reduction."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from kornia.color import rgb_to_grayscale

from ..params import check, check_choice
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
    """Quantise every pixel to ``bits`` bits.

    Bit-depth reduction, the seed table's "BDR" with 2 bits, as the unlearnable-examples papers apply it: ISS (Liu,
    Zhao & Larson, ICML 2023; torchvision's ``RandomPosterize(bits)``) and the D-VAE code (yuyi-sd/D-VAE
    ``dataset.py``, ``BDR``: ``floor(4 x) / 4`` on [0, 1] pixels) both truncate, ``mode="floor"`` (the default,
    the D-VAE code's exactly: levels 0, 64, 128, 191 of 255, and 255 for white only; ISS's posterize gives 0, 64,
    128, 192). Feature squeezing (Xu, Evans & Qi, NDSS 2018), where bit-depth reduction comes from, rounds to
    ``2**bits`` levels spread over [0, 1], ``mode="round"`` (0, 85, 170, 255): it moves pixels by half as much on
    average and does not darken the image (truncation lowers it by ~32 levels at 2 bits).
    """

    bits: int = 2  # bits per channel kept (seed table, ISS and the D-VAE code: 2)
    mode: str = "floor"  # "floor": ISS / D-VAE code (truncation); "round": Xu et al.'s feature squeezing
    name = "bdr"

    def validate(self) -> None:
        check(1 <= self.bits <= 7, f"bits must lie in 1..7, got {self.bits}")
        check_choice("mode", self.mode, ("floor", "round"))

    def table(self) -> np.ndarray:
        """What each of the 256 levels becomes."""
        k = np.arange(256) / 255.0
        if self.mode == "floor":
            scale = 2 ** self.bits
            return np.rint(np.floor(k * scale) / scale * 255).astype(np.uint8)
        levels = 2 ** self.bits - 1
        return np.rint(np.rint(k * levels) / levels * 255).astype(np.uint8)

    def purify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.table()[x]  # one lookup per pixel: no float copies of the set

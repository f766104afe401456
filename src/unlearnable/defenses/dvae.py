"""Rate-constrained VAE and D-VAE purification.

Yu et al., "Purify Unlearnable Examples via Rate-Constrained Variational Autoencoders", ICML 2024
(arXiv 2405.01460); official code github.com/yuyi-sd/D-VAE. Architecture, loss and hyperparameters below
follow that code (``configs/models/resnet.py`` class ``ResNetDVAE``, stem_end_block 7;
``main_vae_disentangle.py``; ``configs/cifar10/resnet18DVAE.yaml``; ``some_scripts.sh``); it is our own code.

* ``vae``: a VAE trained with ``||x - x_hat||^2 + lambda * max(KLD, kld_limit)``. The ``max`` is a hinge: below the
  limit the KL term is a constant with no gradient, so the rate is *constrained*, not minimised (paper Sec. 3).
  Purified images are reconstructions.
* ``dvae``: the disentangling VAE. A second ("perturbation") decoder, fed ``post_conv(z) + u_y`` with ``u_y`` a
  trainable spatial embedding per class, learns the part of ``x`` the rate-limited reconstruction cannot carry:
  the low-entropy class-wise poison. Loss (official ``train_batch``)::

      mse(x_hat, x) + mse(clamp(x_hat + p_hat, 0, 1), x) + lambda * max(KLD, kld_limit)
      [+ max(mean(p_hat^2), 0.002)  after epoch 10 of 60]

  and the two-stage purification (paper Algorithm 1, official ``main()`` loop): stage 1 trains a D-VAE with
  ``kld_limit = 1.0`` on the poisoned set, ``x1 = clamp(x0 - p_hat_1)``; stage 2 trains a *fresh* D-VAE with
  ``kld_limit = 3.0`` (CIFAR-10 value of ``some_scripts.sh``; argparse default 2.5) on ``x1``, then
  ``x2 = clamp(x1 - p_hat_2)`` and the final image is the stage-2 reconstruction of ``x2``.

Encoder: a CIFAR ResNet-18 stem (3x3 conv, BN, ReLU, no max-pool), ``layer1`` (two BasicBlocks) and ``layer2[0]``
(a stride-2 BasicBlock), i.e. 128 x 16 x 16 features for 32 x 32 inputs at ``width=64``; 1x1 convolutions to
``mu``/``logvar`` with 256 channels; ``post_conv`` 1x1 back to 128. For 28 x 28 grey images (Fashion-MNIST) the
same stem gives 128 x 14 x 14 (our analogue; the paper has no grey-scale model). Inputs larger than 32 px get
one more stride-2 block (and one more up-sampling decoder stage) per halving until the feature map is at most 32 px
wide: 224 px -> 28 x 28, like the official ImageNet stem 15. The unused classifier head of the official model is left
out. ``width`` scales every channel count (the ``fast`` preset uses a narrower net; see :data:`FAST_PRESET_NOTE`).

Differences from the official code, on purpose: images are quantised to 8 bits by rounding (the code truncates);
the cosine learning-rate schedule is stepped per batch (the code steps per epoch; the same curve for 60 epochs,
smoother for short runs); the epoch at which the ``p_hat`` penalty starts is scaled with the epoch count
(``p_after * epochs``, i.e. epoch > 10 of 60 by default; the code's fixed epoch 10 would be 11 of 100 for its
CIFAR-100 setting, ours 17); 60 epochs a stage for every dataset (the code: 100 for CIFAR-100, 20 for its ImageNet
subset); bf16 autocast where bf16 is fast (CUDA of compute capability 8 or more, CPUs with native bf16: ``amp``;
the code runs in float32, which on Fashion-MNIST's ``fast`` preset changed the clean cost by less than the seeds'
spread, :data:`FAST_PRESET_NOTE`). ``perturbation_`` holds stage 1's estimate on the given images (the code's saved
``perturbation1.pt`` is stage 2's on ``x1``; neither is used to purify). Inputs larger than 32 px get our encoder and
decoder stages described above, not the layers of the official ImageNet model (whose class embedding is sized for
128 x 16 x 16 features at every input size).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import progress
from ..data import ImageSet, require_set
from ..data.store import write_atomic
from ..errors import UnlearnableError
from ..params import check
from ..resume import rng_state, set_rng_state
from ..training import (epochs_with_steps, fast_bf16, flush_denormals, keeps_global_rng, resolve_device,
                        seed_everything)
from .base import PURIFIER_FILE, Purifier

log = logging.getLogger(__name__)

SKIPS = ("s1", "s2", "i2", "i3")

FAST_PRESET_NOTE = """The ``fast`` preset (CPU): ``width=16`` (every channel count / 4: 32 x 14 x 14 features and 64
latent channels on 28 x 28 images), 2 epochs per stage instead of 60 (so the p_hat penalty starts after epoch
10/60 * 2 = 0.33, i.e. with the second epoch) and batch 256 instead of 128 (fewer, cheaper steps); Adam 5e-3, clip 5,
lambda and the limits stay official. Measured on full Fashion-MNIST (60,000 images, 1 thread, the second core busy
with other work, bf16 autocast): 0.37-0.40 s per step, 88 s per epoch, 23 s per inference pass; the whole
``fit_transform`` took 409 s (6.8 min). With both cores free, 2 threads are faster still; with 2 threads on the
shared, busy machine a training step took 2-3 s (OpenMP threads waiting on each other; inference still sped up to
13.5 s per pass), so prefer 1 thread (OMP_NUM_THREADS=1) when the cores are shared. On that run (class-wise noise
64/255 on all 60,000 images) the default victim went from 11.4% (poisoned) to 71.8% test accuracy (purified). Idle
2-core machine, 8/255 (BENCHMARKS.md): both stages 3.5-3.9 min, 1.8 GB RSS; class-wise EM 30.7% -> 88.2% against
92.1% clean. On a later Xeon without native bf16 (float32): 9-10.5 min for the whole `purify` command, 2.08 GB,
class-wise EM -> 87.7% (BENCHMARKS.md, session 10); on the slower Zen 1 (float32) 18.4 min and, since stage 1's
``p_hat`` waits on disk while stage 2 trains, 1.89 GB (session 15). On a slow CPU ``width=8`` halves the time at a
price (Zen 1, session 18: 9.2 min; class-wise EM -> 86.5% against 87.7% at ``width=16``; clean images lose 2.0
points at either width, 91.6% -> 89.6%). The preset is sized for 60,000 grey images (468 steps a stage); a smaller
set trains more epochs, at least those 468 steps a stage (``min_steps=468``, since 2026-12-06: its 2 epochs had
purified a 2,000-image set, 14 steps a stage, to noise; BENCHMARKS.md, D-VAE, session 54). On 20,000 colour 32 x 32
images 2 epochs were far too short (EM 18.7% -> 42.8%, clean 75.4% -> 47.5%; ``epochs=8``: 52.0%; the 6 that
``min_steps`` now gives them: EM 18.2% -> 51.0%, clean 75.8% -> 48.4%, session 55), so give colour data many more
epochs and width: the defaults (``width=64``, 60 epochs, batch 128) on an H200 GPU took 214 s for both stages and
gave back 71.8% against class-wise EM (11.1%; clean 75.3%) and 68.7% against sample-wise EM (BENCHMARKS.md,
session 14). Caveat (BENCHMARKS.md, session 7): on Fashion-MNIST at 8/255 the stage-1 ``p_hat`` does not point
at a class-wise EM poison (cosine -0.3..0.2 per class) and a longer-trained VAE reconstructs the pattern instead
(cosine of ``x_hat - x_clean`` with it up to 0.76 after 12 epochs): the official rate limit leaves room for it on
simple grey images, so there the recovery comes from coarse stage-2 reconstructions, not from the perturbation
decoder. So a third epoch a stage does not help there (AMX Xeon, session 25: class-wise EM
-> 84.4% / 79.0% at seeds 0 / 1 against 83.5% / 87.4% with two). The seed matters as much: with two epochs, seeds 0-4
give 83.5 / 87.4 / 86.5 / 87.6 / 86.0% (mean 86.2%, clean 91.6%), and the clean split loses 2.2 / 2.5 / 3.0 / 2.8 /
3.7 points (mean 2.8; 2.3 at seed 0 in fp32; session 26). That price is the stage-2 reconstruction's own: on an H200
(five seeds each, session 27) it stays at 2.2-2.4 points with the stage-2 limit eight times looser (``kld_2=24``,
which also lets class-wise EM through at one seed) or with the reconstruction alone (``skip=s1,i2``), so the official
limits and steps stay. ``width=24`` takes twice the time (8 min on an AMX Xeon) and recovered more against class-wise
EM (seeds 0-4: 86.3-88.3%, mean 87.6%, against 86.2%) at a clean price still over 2 points (mean 2.3 over seeds 0-2),
but it lets more of a per-image perturbation through: against sample-wise EM 8/255 its five seeds gave 82.7-88.8%
(mean 86.7%) against 87.2-88.8% (mean 88.0%) at ``width=16`` (H200, session 28; REM a tie, TAP and SEP +0.3 points),
so the preset keeps ``width=16``. More capacity and steps can lower the price at a given seed: the official width and
batch with 8 epochs a stage (``width=64, epochs=8, batch_size=128``; ~105 s on an H200, far over 10 minutes on two
cores) cost clean images 0.69 points and recovered class-wise EM 8/255 to 90.25% against 91.69% clean (seed 0;
session 28). Half of that on two cores, ``width=32, epochs=4, batch_size=128`` (18 min for both stages on an AMX
Xeon, 1.96 GB): clean images lost 0.56 points and class-wise EM 8/255 came back to 88.81% against 91.64%, but
sample-wise EM to 85.74% where ``fast`` gave 87.77% (seed 0; session 28). It is no reliable option either: at seed 1
it cost clean images 5.73 points, and batch 128 at ``width=16`` (twice the steps of ``fast``) left the purified clean
split at 78% at seeds 1 and 2 (89.7% at seed 0), class- and sample-wise EM at 63-71% (session 29): on two cores more
steps are a bet on the seed. What those bad seeds write is the label (session 32): the victim trained on the clean
split purified at seed 1 scored 93.7% on test images purified with their true labels, 80.9% with shifted ones and
78.1% on raw ones (seed 0 of the preset: 89.4 / 89.0 / 89.5%), i.e. ``u_y`` left a class trace that helps only where
the same purifier wrote it. Check a purified set with a victim on images it did not purify;
:meth:`DVAE.label_sensitivity` measures what the labels write, but over 17 fits on the clean split it did not predict
the victim (sessions 35-36), and the clean price of ``fast`` is machine-dependent: 2.0-4.3 points (mean 3.3) over
seeds 0-9 on a Zen 4 EPYC against a mean of 2.8 over seeds 0-4 on an AMX Xeon. Two post-steps outside the paper did
not bring it under 2 points (session 38, seeds 0-3 on the Zen 4): the pixel mean of two fits' outputs (3.38 over six
pairs; it is smoother still) and an unsharp mask that gives the output the input's high-frequency energy (3.25 ->
2.73, class-wise EM 8/255 4.76 -> 4.47 under clean, colour 4.9 points worse). Those prices are against one victim at
seed 0, this Zen 4's best clean victim (92.11% against a mean of 91.76% over seeds 0-4): with five victims per fit,
seeds 0-3 cost 2.48 / 2.72 / 3.18 / 2.84 (mean 2.81, session 40). Neither float32 (``amp=False``: 2.83 at seeds 0-3,
1.45x the time) nor twice the learning rate is a lever: ``lr=0.01`` cost 2.44 against 3.00 over seeds 0-4 but let
per-image poison through (sample-wise EM 85.8% against 88.3% at seed 1, REM 0.5 / 1.5 points worse at seeds 0 / 1),
so the preset keeps 5e-3 (BENCHMARKS.md, sessions 41-42)."""


# ----------------------------------------------------------------------------------------------------- the network
class _BasicBlock(nn.Module):
    """The ResNet-18 BasicBlock (He et al., 2016), as in the official CIFAR ResNet."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _ConvTranspose2d(nn.ConvTranspose2d):
    """A stride-1 ``nn.ConvTranspose2d`` (same parameters, same function) whose forward runs, outside autograd, as
    the equivalent convolution: kernel flipped, in/out channels swapped, padding ``k - 1 - p``. On CPU the
    transposed path is 2-4.5x slower for these small channel counts, which made inference ~30% slower
    (BENCHMARKS.md, D-VAE session 10); training keeps the standard op (no gain measured there)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int, padding: int) -> None:
        assert stride == 1, "only stride 1 has the plain-convolution equivalent used here"
        super().__init__(c_in, c_out, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if torch.is_grad_enabled() or output_size is not None:
            return super().forward(x, output_size)
        pad = tuple(k - 1 - p for k, p in zip(self.kernel_size, self.padding))
        return F.conv2d(x, self.weight.flip(2, 3).transpose(0, 1), self.bias, padding=pad)


def _decoder(c: int, out_channels: int, levels: int, sigmoid: bool) -> nn.Sequential:
    """Official decoder for stem 7: per level ConvT(4, 2, 1) up-sampling, ConvT(3), IN, ReLU; then ConvT(3), IN,
    ReLU, ConvT(3) to the image channels (+ sigmoid for the image decoder, none for the perturbation decoder)."""
    layers: list[nn.Module] = []
    for _ in range(levels):
        layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1), _ConvTranspose2d(c // 2, c // 2, 3, 1, 1),
                   nn.InstanceNorm2d(c // 2), nn.ReLU()]
        c //= 2
    layers += [_ConvTranspose2d(c, c // 2, 3, 1, 1), nn.InstanceNorm2d(c // 2), nn.ReLU(),
               _ConvTranspose2d(c // 2, out_channels, 3, 1, 1)]
    if sigmoid:
        layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def down_levels(size: int) -> int:
    """Stride-2 stages of the encoder: one for <= 32 px (as in the official CIFAR model), then one per halving
    until the feature map is at most 32 px (224 -> 28, as the official ImageNet stem)."""
    levels = 1
    while math.ceil(size / 2 ** levels) > 32:
        levels += 1
    return levels


class DVAENet(nn.Module):
    """ResNet-18-stem VAE with an optional perturbation decoder and class embedding (official ``ResNetDVAE``).

    ``forward(x, y)`` returns ``(x_hat, mu, logvar, p_hat)`` with ``p_hat = None`` when ``perturbation=False``
    (the plain rate-constrained VAE, official ``ResNetVAE``); ``decode`` ("x", "p" or "xp") runs only the decoders
    the caller needs (the other output is None; ``z`` is sampled the same way).
    """

    def __init__(self, in_channels: int, num_classes: int, image_size: tuple[int, int], width: int = 64,
                 perturbation: bool = True) -> None:
        super().__init__()
        h, w = image_size
        self.levels = down_levels(max(h, w))
        if h % 2 ** self.levels or w % 2 ** self.levels:
            raise UnlearnableError(f"the VAE needs image sides divisible by {2 ** self.levels}, got {h} x {w}")
        c = width
        layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                   _BasicBlock(c, c), _BasicBlock(c, c)]
        for _ in range(self.levels):
            layers.append(_BasicBlock(c, 2 * c, stride=2))
            c *= 2
        self.stem = nn.Sequential(*layers)
        self.feature_shape = (c, h // 2 ** self.levels, w // 2 ** self.levels)
        latent = 2 * c  # official: 256 latent channels for 128 feature channels
        self.fc_mu, self.fc_var = nn.Conv2d(c, latent, 1), nn.Conv2d(c, latent, 1)
        self.post_conv = nn.Conv2d(latent, c, 1)
        self.decoder = _decoder(c, in_channels, self.levels, sigmoid=True)
        self.perturbation = perturbation
        if perturbation:
            self.decoder_p = _decoder(c, in_channels, self.levels, sigmoid=False)
            # official set_spatial_emb(): one trainable feature-shaped tensor per class
            self.emb = nn.Embedding(num_classes, int(np.prod(self.feature_shape)))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, gen: torch.Generator | None = None,
                sample: bool = True, decode: str = "xp"):
        feat = self.stem(x)
        mu, logvar = self.fc_mu(feat), self.fc_var(feat)
        z = mu
        if sample:
            z = mu + torch.randn(mu.shape, generator=gen, device=mu.device) * torch.exp(0.5 * logvar)
        z = self.post_conv(z)
        x_hat = self.decoder(z) if "x" in decode else None
        p_hat = None
        if self.perturbation and "p" in decode:
            p_hat = self.decoder_p(z + self.emb(y).view(-1, *self.feature_shape))
        return x_hat, mu, logvar, p_hat


def kld_per_location(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(q(z|x) || N(0, I)) summed over latent channels, averaged over batch and positions (official code):
    nats per spatial location."""
    return torch.mean(-0.5 * torch.sum(1 + logvar - mu ** 2 - logvar.exp(), dim=1))


def rate_term(kld: torch.Tensor, limit: float) -> torch.Tensor:
    """``max(KLD, limit)``: a hinge whose gradient is zero while the KL is below ``limit`` (the rate constraint)."""
    return torch.clamp(kld, min=limit)


def visible_perturbation(x_hat, p):
    """The part of ``p_hat`` the D-VAE loss can see, ``clamp(x_hat + p_hat, 0, 1) - x_hat``: what ``p_clip``
    subtracts (torch tensors or numpy arrays alike)."""
    return (x_hat + p).clip(0, 1) - x_hat


def official_kld_weight(limit: float) -> float:
    """The official rule (``main_vae_disentangle.py``): lambda = 0.01 if the limit exceeds 0.99, else 0.5."""
    return 0.01 if limit > 0.99 else 0.5


# ------------------------------------------------------------------------------------------------ the purifiers
@dataclass
class RateConstrainedVAE(Purifier):
    """Rate-constrained VAE purification (Yu et al., ICML 2024, Sec. 3): train a VAE on the poisoned set with
    ``||x - x_hat||^2 + lambda * max(KLD, kld_limit)`` and replace every image by its reconstruction.

    Defaults are the official D-VAE training recipe (``configs/cifar10/resnet18VAE.yaml``, the same as the D-VAE
    one): Adam lr 5e-3, cosine schedule, batch 128, gradient-norm clip 5, 60 epochs, ``width=64`` (ResNet-18 stem),
    lambda 0.01 (0.5 when ``kld_limit <= 0.99``, the official rule). No official script trains this plain VAE, so
    ``kld_limit=1.0`` (the D-VAE stage-1 value) is our choice.

    >>> purified = create_defense("vae", preset="fast").fit_transform(poisoned)
    """

    epochs: int = 60  # passes over the training set (official CIFAR-10: 60)
    min_steps: int = 0  # a stage trains at least this many steps: more epochs on a small set (0: none, official)
    batch_size: int = 128  # official train_batch_size
    lr: float = 5e-3  # Adam learning rate, cosine-annealed to 0 (official)
    grad_clip: float = 5.0  # gradient-norm clip (official grad_clip)
    width: int = 64  # channels of the first ResNet stage (official ResNet-18: 64); latent = 4 * width
    kld_weight: float | None = None  # lambda; None: the official rule (0.01 if the limit > 0.99 else 0.5)
    kld_limit: float = 1.0  # the rate constraint, nats per latent position
    sample: bool = True  # sample z at purification time too, as the official code does (False: z = mu; the
    #   sampling noise purifies too: class-wise EM 8/255 on Fashion-MNIST, fast preset, 87.8% vs 85.5% with z = mu)
    purify_batch: int = 512  # batch size of inference (memory only)
    amp: bool | None = None  # bf16 autocast + channels_last (not on the CPU over 64 px: _channels_last); None: on
    #   where bf16 is fast (CUDA, CPUs with native bf16: ~20% less CPU time per step for the fast preset)

    name: ClassVar[str] = "vae"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # min_steps: the steps its 2 epochs make on 60,000 images (FAST_PRESET_NOTE): a small set gets more epochs
        "fast": {"width": 16, "epochs": 2, "batch_size": 256, "min_steps": 468}}

    def validate(self) -> None:
        check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        check(self.min_steps >= 0, f"min_steps must be >= 0, got {self.min_steps}")
        check(self.batch_size >= 2, f"batch_size must be >= 2, got {self.batch_size}")
        check(self.lr > 0, f"lr must be positive, got {self.lr}")
        check(self.grad_clip > 0, f"grad_clip must be positive, got {self.grad_clip}")
        check(self.width >= 2 and self.width % 2 == 0, f"width must be an even number >= 2, got {self.width}")
        check(self.kld_weight is None or self.kld_weight >= 0, f"kld_weight must be >= 0, got {self.kld_weight}")
        check(self.purify_batch >= 1, f"purify_batch must be >= 1, got {self.purify_batch}")
        for name in self._limits():
            check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")

    def _limits(self) -> tuple[str, ...]:
        return ("kld_limit",)

    # -------------------------------------------------------------------------------------------- learning
    def _device(self) -> torch.device:
        return resolve_device(self.device)

    def _amp(self) -> bool:
        return fast_bf16(self._device()) if self.amp is None else self.amp

    def _channels_last(self, net: DVAENet) -> bool:
        """channels_last goes with ``amp``, except on the CPU for images over 64 px (two or more down-sampling
        levels): there oneDNN's bf16 channels_last kernels corrupted the heap in training (a glibc abort or a
        segfault within one fit of 96 x 96 images at widths 4 and 8; torch 2.14.1, an AVX512-BF16 EPYC, 2026-12-06;
        none in 6 fits with contiguous tensors, nor without oneDNN). Fashion-MNIST and CIFAR sizes keep it."""
        return self._amp() and (net.levels < 2 or next(net.parameters()).device.type != "cpu")

    def _forward(self, net: DVAENet, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator | None = None,
                 sample: bool = True, decode: str = "xp"):
        """``net(x, y)`` under bf16 autocast (and channels_last, :meth:`_channels_last`) when ``amp``; outputs
        back in float32."""
        amp = self._amp()
        if self._channels_last(net):
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x, y, gen, sample, decode)
        return tuple(None if t is None else t.float() for t in out)

    def _new_net(self, data: ImageSet, perturbation: bool) -> DVAENet:
        return DVAENet(data.channels, data.num_classes, data.image_size, self.width, perturbation)

    def _check_data(self, data: ImageSet) -> None:
        if len(data) < self.batch_size:
            raise UnlearnableError(f"{self.name}: {len(data)} training images, fewer than one batch "
                                   f"({self.batch_size}); lower batch_size")

    def _start(self, data: ImageSet) -> None:
        """Begin a fit: the state of an interrupted run on the same data with the same parameters, if any."""
        require_set(data, "the set to fit on")
        self._check_data(data)
        self._forget()  # nothing of an earlier fit survives into this one
        self._remember(data)
        self.bind_state(data)
        self._run = self.load_state() or {"done": {}, "current": None}

    @keeps_global_rng
    def _train(self, data: ImageSet, limit: float, perturbation: bool, seed: int, key: str, desc: str) -> DVAENet:
        """Train one (D-)VAE with the official objective; returns it in eval mode.

        Resumable: with :attr:`checkpoint` set, the state is saved after every epoch (and within one at most every
        :attr:`save_every_s` seconds) and a finished network under ``key``; a resumed fit trains on from there to
        the weights of an uninterrupted one."""
        gen = seed_everything(seed)
        dev = self._device()
        net = self._new_net(data, perturbation).to(dev)
        if self._channels_last(net):
            net = net.to(memory_format=torch.channels_last)
        if key in self._run["done"]:  # trained before an interruption
            with self.restoring():
                net.load_state_dict(self._run["done"][key])
                return net.eval()
        # the set stays uint8 (a quarter of a float copy: 141 MB less on full Fashion-MNIST); batches become floats
        x_all = torch.from_numpy(np.require(data.x, requirements=["C", "W"])).to(dev)
        y_all = torch.from_numpy(np.asarray(data.y, dtype=np.int64)).to(dev)
        steps_per_epoch = len(data) // self.batch_size  # official: drop_last=True
        epochs = self.epochs_for(len(data))
        if epochs > self.epochs:
            log.info("%s: %d epochs of %d steps, so that it trains min_steps=%d steps (epochs=%d would make %d)",
                     desc, epochs, steps_per_epoch, self.min_steps, self.epochs, self.epochs * steps_per_epoch)
        total = epochs * steps_per_epoch
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
        weight = official_kld_weight(limit) if self.kld_weight is None else self.kld_weight
        first_epoch, first_step, perm, sums = 0, 0, None, np.zeros(3)
        cur = self._run["current"]
        if cur is not None and cur["key"] == key:
            with self.restoring():
                net.load_state_dict(cur["net"])
                opt.load_state_dict(cur["opt"])
                sched.load_state_dict(cur["sched"])
                set_rng_state(cur["rng"], gen)
                first_epoch, first_step, sums = cur["epoch"], cur["step"], cur["sums"]
                perm = None if cur["perm"] is None else cur["perm"].to(dev)

        def save(epoch: int, step: int) -> None:
            self._run["current"] = {"key": key, "epoch": epoch, "step": step, "sums": sums.copy(),
                                    "perm": None if perm is None else perm.cpu(), "rng": rng_state(gen),
                                    "net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}
            self.save_state(self._run)

        net.train()
        t0 = saved = time.perf_counter()
        with progress.task(desc, total=total) as advance, flush_denormals():
            advance(first_epoch * steps_per_epoch + first_step)
            for epoch in range(first_epoch, epochs):
                if perm is None:
                    perm = torch.randperm(len(data), generator=gen).to(dev)
                for i in range(first_step, steps_per_epoch):
                    idx = perm[i * self.batch_size:(i + 1) * self.batch_size]
                    loss, parts = self._loss(net, x_all[idx].float().div_(255), y_all[idx], limit, weight, epoch,
                                             epochs)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(net.parameters(), self.grad_clip)
                    opt.step()
                    sched.step()
                    sums += parts
                    advance(1)
                    due = time.perf_counter() - saved >= self.save_every_s
                    if self.checkpoint and due and i + 1 < steps_per_epoch:
                        save(epoch, i + 1)
                        saved = time.perf_counter()
                log.info("%s epoch %d/%d: rec %.5f, kld %.3f, p2 %.5f (%.1f s)", desc, epoch + 1, epochs,
                         *(sums / steps_per_epoch), time.perf_counter() - t0)
                if not np.isfinite(sums).all():  # would purify every image to black (and save that state)
                    raise UnlearnableError(f"{desc}: the loss is no longer finite in epoch {epoch + 1}: the fit "
                                           f"diverged (lr {self.lr}, KL weight {weight:.3g}); lower them")
                first_step, perm, sums = 0, None, np.zeros(3)
                if self.checkpoint and epoch + 1 < epochs:
                    save(epoch + 1, 0)
                    saved = time.perf_counter()
        if self.checkpoint:
            self._run["done"][key] = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            self._run["current"] = None
            self.save_state(self._run)
        return net.eval()

    def epochs_for(self, n: int) -> int:
        """The epochs a stage trains on ``n`` images: ``epochs``, or more where they would make fewer than
        ``min_steps`` steps of ``batch_size`` (the last, partial batch of an epoch is dropped, as officially)."""
        return epochs_with_steps(self.epochs, self.min_steps, n // self.batch_size)

    def _loss(self, net: DVAENet, x: torch.Tensor, y: torch.Tensor, limit: float, weight: float, epoch: int,
              epochs: int | None = None):
        """The loss of one batch in epoch ``epoch`` (from 0) of the ``epochs`` this fit trains (None: the field),
        and its parts."""
        x_hat, mu, logvar, _ = self._forward(net, x, y)
        kld = kld_per_location(mu, logvar)
        rec = F.mse_loss(x_hat, x)
        return rec + weight * rate_term(kld, limit), np.array([rec.item(), kld.item(), 0.0])

    @torch.no_grad()
    def _infer(self, net: DVAENet, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator, decode: str = "xp"):
        """``(x_hat, p_hat)`` of one batch of float images (eval mode; z sampled when ``sample``); only what
        ``decode`` asks for is computed, the other is None."""
        x_hat, _, _, p = self._forward(net, x, y, gen, self.sample, decode)
        return x_hat, p

    def _batches(self, x: np.ndarray, y: np.ndarray):
        """``(slice, float images, labels)`` of ``purify_batch`` uint8 images at a time on the device.

        Inference streams batch by batch into preallocated outputs: on the full Fashion-MNIST set, whole-set float
        copies of the input, x_hat and p_hat (188 MB each, and torch.cat doubles them) lifted the RSS of one D-VAE
        run from 1.4 to 4.4 GiB (BENCHMARKS.md).
        """
        dev = self._device()
        y = np.asarray(y, dtype=np.int64)
        for i in range(0, len(x), self.purify_batch):
            s = slice(i, i + self.purify_batch)
            yield s, _floats(x[s], dev), torch.from_numpy(y[s]).to(dev)

    def _gen(self, offset: int = 0) -> torch.Generator:
        return torch.Generator(device=self._device()).manual_seed(self.seed + 7919 * offset)

    def fit(self, data: ImageSet) -> "RateConstrainedVAE":
        with self._fitting():
            self._start(data)
            self.net_ = self._train(data, self.kld_limit, False, self.seed, "net", "VAE")
        return self

    FITTED = ("shape_", "num_classes_", "classes_", "net_", "stage1_", "stage2_", "perturbation_", "_fit_cache",
              "fit_seconds_")

    @contextlib.contextmanager
    def _fitting(self):
        """A fit that fails or is interrupted leaves the purifier unfitted (it kept the shape of the new data and
        the networks of an earlier fit, or none: transform() then raised AttributeError, save() wrote no weights).
        One that ends records its seconds in ``fit_seconds_``, an interrupted run's before it included."""
        t0 = time.perf_counter()
        try:
            yield
        except BaseException:
            self._forget()
            raise
        self.fit_seconds_ = time.perf_counter() - t0 + self.resumed_seconds

    def _forget(self) -> None:
        for name in self.FITTED:
            self.__dict__.pop(name, None)

    def _remember(self, data: ImageSet) -> None:
        self.shape_ = (data.channels, *data.image_size)
        self.num_classes_ = data.num_classes
        self.classes_ = [str(c) for c in data.classes]

    def _check_fitted(self, x: np.ndarray, y: np.ndarray) -> None:
        if not hasattr(self, "shape_"):
            raise UnlearnableError(f"{self.name}: call fit() (or load()) before transform()")
        if tuple(x.shape[1:]) != tuple(self.shape_):
            raise UnlearnableError(f"{self.name} was fitted on {self.shape_} images, got {tuple(x.shape[1:])}")
        if len(y) and (y.min() < 0 or y.max() >= self.num_classes_):
            raise UnlearnableError(f"{self.name} was fitted on {self.num_classes_} classes; labels out of range")

    def check_applicable(self, data: ImageSet) -> None:
        """Refuse, before any work, a set this fitted purifier cannot purify (images of another shape)."""
        self._check_fitted(data.x[:0], np.zeros(0, np.int64))

    def transform(self, data: ImageSet, only: np.ndarray | None = None, **note: Any) -> ImageSet:
        """As :meth:`Purifier.transform`, for a set :meth:`check_applicable` accepts."""
        if isinstance(data, ImageSet):  # anything else: the base class's one-line error
            self.check_applicable(data)
        return super().transform(data, only, **note)

    def purify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        self._check_fitted(x, y)
        out, gen = np.empty(x.shape, np.uint8), self._gen()
        for s, xb, yb in self._batches(x, y):
            out[s] = _to_uint8(self._infer(self.net_, xb, yb, gen, "x")[0])
        return out

    # -------------------------------------------------------------------------------------------- persistence
    def _nets(self) -> dict[str, DVAENet]:
        return {"net": self.net_}

    def _weights_bytes(self) -> bytes:
        """The fitted networks' tensors as safetensors bytes, with the metadata :meth:`load` rebuilds the purifier
        from: what :meth:`save` writes and :meth:`artifacts` hands to a saved set."""
        from safetensors.torch import save

        if not hasattr(self, "shape_"):
            raise UnlearnableError(f"{self.name}: nothing to save, call fit() first")
        tensors = {f"{k}.{n}": t.detach().cpu().contiguous()
                   for k, net in self._nets().items() for n, t in net.state_dict().items()}
        meta = {"method": self.name, "params": json.dumps(self.params()), "shape": json.dumps(list(self.shape_)),
                "num_classes": str(self.num_classes_), "nets": json.dumps(sorted(self._nets()))}
        if getattr(self, "classes_", None) is not None:
            meta["classes"] = json.dumps(self.classes_)
        return save(tensors, metadata=meta)

    def save(self, path: str | Path) -> Path:
        """Write the trained weights and parameters to one ``.safetensors`` file (atomically)."""
        data = self._weights_bytes()
        return write_atomic(path, lambda tmp: tmp.write_bytes(data))

    def artifacts(self) -> dict[str, bytes]:
        """The fitted weights as :data:`~unlearnable.defenses.base.PURIFIER_FILE` (what :meth:`save` writes), for
        ``unlearnable purify --purifier``; none before a fit."""
        return {PURIFIER_FILE: self._weights_bytes()} if hasattr(self, "shape_") else {}

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "RateConstrainedVAE":
        """A fitted purifier from :meth:`save`; ``device`` overrides the saved one."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise UnlearnableError(f"cannot read {path} as saved {cls.name} weights: {e}") from None
        if meta.get("method") != cls.name:
            raise UnlearnableError(f"{path} holds {meta.get('method')!r} weights, not {cls.name!r}")
        params = {**json.loads(meta["params"]), "device": device}
        preset = params.pop("preset", None)
        self = cls(**params)  # the saved values include the preset's: applying it again would undo explicit ones
        self.preset = preset
        c, h, w = json.loads(meta["shape"])
        self.shape_, self.num_classes_ = (c, h, w), int(meta["num_classes"])
        self.classes_ = json.loads(meta["classes"]) if "classes" in meta else None  # files of before 2026-12-07
        dummy = ImageSet(np.zeros((1, c, h, w), np.uint8), np.zeros(1), [str(i) for i in range(self.num_classes_)])
        for key in json.loads(meta["nets"]):
            net = self._new_net(dummy, cls is not RateConstrainedVAE)
            net.load_state_dict({n[len(key) + 1:]: t for n, t in tensors.items() if n.startswith(key + ".")})
            net = net.to(self._device())
            if self._channels_last(net):
                net = net.to(memory_format=torch.channels_last)
            setattr(self, f"{key}_", net.eval())
        return self


@dataclass
class DVAE(RateConstrainedVAE):
    """D-VAE two-stage purification (Yu et al., ICML 2024, Algorithm 1; official ``main_vae_disentangle.py``).

    Stage 1 trains a D-VAE with ``kld_limit=kld_1`` (official: 1.0, hard-coded) on the poisoned set and subtracts
    its perturbation estimate: ``x1 = clamp(x0 - p_hat_1)``. Stage 2 trains a fresh D-VAE with ``kld_2`` (official
    CIFAR-10 script: 3.0) on ``x1``; ``x2 = clamp(x1 - p_hat_2)`` and the output is its reconstruction ``Dec(Enc(x2))``.
    Each D-VAE minimises ``mse(x_hat, x) + mse(clamp(x_hat + p_hat), x) + lambda * max(KLD, limit)`` plus
    ``max(mean(p_hat^2), p_floor)`` once the epoch index exceeds ``p_after * epochs`` (official: epoch > 10 of 60,
    floor 0.002); the p decoder sees ``post_conv(z) + u_y``, ``u_y`` a trainable class-wise embedding.

    ``skip`` (comma-separated) switches steps off for the ablation of the paper's Table 7 (the names are ours):

    * ``s1``: no stage 1; stage 2 is trained on the poisoned images (``x1 = x0``).
    * ``s2``: no stage 2; the output is ``x1 = clamp(x0 - p_hat_1)``.
    * ``i2``: no inference step 2 (the stage-2 subtraction); the output is the stage-2 reconstruction of ``x1``.
    * ``i3``: no inference step 3 (the final reconstruction); the output is ``x2 = clamp(x1 - p_hat_2)``.

    Observed on 4,000 Fashion-MNIST images, class-wise uniform noise 64/255 (default victim: 41% poisoned, ~83%
    clean), ``width=8, epochs=3, batch_size=64``: full 70.7%, ``i2`` 71.4%, ``s2`` 48.6%, ``i3`` 37.6%. At such
    short budgets the stage-2 reconstruction does the purifying; subtracting an imperfect class-wise ``p_hat``
    alone adds a new class-wise pattern (``i3`` is below the poisoned victim). On full Fashion-MNIST with the
    ``fast`` preset against EM at 8/255 the same holds (``benchmarks/dvae_trace.py``, BENCHMARKS.md session 62):
    what the poison changes in the stage-1 ``p_hat`` is orthogonal to it (mean cosine -0.06..0.06 over ten fits
    against class-wise EM), the image decoder passes 65-75% of it on, and the purified set keeps 72-89% of the
    poison's RMS (cosine 0.54-0.59 with it), yet victims reach 85-88% at nine fits of ten (92% clean): the
    D-VAE at this budget blurs and resamples the poison rather than subtracting it.

    ``p_clip`` (ours, not in the paper or the official code; off by default): the loss sees ``p_hat`` only through
    ``clamp(x_hat + p_hat, 0, 1)``, so where an image is 0 (half of Fashion-MNIST's pixels) ``p_hat`` runs negative
    unchecked and the official subtraction lightens the background: stage 1 leaves it at 6-11/255 on average,
    the purified output at 7-12/255, where the test images have 0. ``p_clip=true`` subtracts, in stage 1 and
    in inference step 2, only the part the loss can see, ``clamp(x_hat + p_hat, 0, 1) - x_hat`` (at most ``x_hat``
    where the image is 0). Full Fashion-MNIST, ``fast``, one victim a fit (BENCHMARKS.md, D-VAE, session 63): against
    class-wise EM 8/255 it recovered more at four seeds of five (mean drop 3.84 against 4.65 points), and the clean
    split cost 2.94 against 3.23 (seeds 0-2); against the per-image attacks it is no better (session 64):
    sample-wise EM 87.63% against 87.91% (seeds 0-4), REM 87.61% against 87.13% (seeds 0-2), TAP 89.05% against
    89.45% (seed 0), each within one victim's spread, so the official subtraction stays the default.

    After :meth:`transform` (or :meth:`purify`), ``perturbation_`` holds the per-sample estimate ``p_hat`` of the
    first stage that ran (float32 ``N x C x H x W`` on the [0, 1] scale; with ``p_clip``, the part it subtracted);
    :meth:`estimate_perturbation` computes it (as decoded) for any images. Both are what detection
    (:mod:`unlearnable.detect`) and :func:`dvae_check` use.

    >>> dvae = create_defense("dvae", preset="fast").fit(poisoned)
    >>> purified = dvae.transform(poisoned); dvae.save("dvae.safetensors")

    ``unlearnable purify`` leaves the same file in the set it saves (``purifier.safetensors``), and ``purify
    --purifier`` (:func:`~unlearnable.defenses.load_purifier`) applies it to new images of the same shape and class
    names without fitting again: fitted on 2,000 images under class-wise noise at 64/255, a ``width=8`` D-VAE (500
    steps a stage) lifted the tests' victim on 2,000 others it never saw from 48.6% to 74.7% (``tests/test_dvae.py``).
    """

    kld_1: float = 1.0  # stage-1 rate limit (official, hard-coded)
    kld_2: float = 3.0  # stage-2 rate limit (official CIFAR-10 script some_scripts.sh --kd 3.0; argparse 2.5)
    p_floor: float = 0.002  # floor of the p_hat penalty max(mean(p_hat^2), p_floor) (official)
    p_after: float = 10 / 60  # the penalty is on once epoch index > p_after * epochs (official: > 10 of 60)
    skip: str = ""  # steps to leave out: any of s1, s2, i2, i3, comma-separated (see the class docstring)
    p_clip: bool = False  # ours, not official: subtract only clamp(x_hat + p_hat, 0, 1) - x_hat (class docstring)

    name: ClassVar[str] = "dvae"
    presets: ClassVar[dict[str, dict[str, Any]]] = RateConstrainedVAE.presets

    def validate(self) -> None:
        super().validate()
        check(self.p_floor >= 0, f"p_floor must be >= 0, got {self.p_floor}")
        check(0 <= self.p_after <= 1, f"p_after must lie in [0, 1], got {self.p_after}")
        bad = sorted(self.skips - set(SKIPS))
        check(not bad, f"skip: unknown step(s) {', '.join(bad)}; known: {', '.join(SKIPS)}")
        check(not {"s1", "s2"} <= self.skips, "skip: s1 and s2 together leave nothing to run")
        check(not ("s2" in self.skips and self.skips & {"i2", "i3"}), "skip: i2/i3 are stage-2 steps; s2 removes them")

    def _limits(self) -> tuple[str, ...]:
        return ("kld_1", "kld_2")

    @property
    def skips(self) -> set[str]:
        return {s.strip() for s in str(self.skip).split(",") if s.strip()}

    def _loss(self, net: DVAENet, x: torch.Tensor, y: torch.Tensor, limit: float, weight: float, epoch: int,
              epochs: int | None = None):
        x_hat, mu, logvar, p = self._forward(net, x, y)
        kld = kld_per_location(mu, logvar)
        rec = F.mse_loss(x_hat, x)
        p2 = p.pow(2).mean()
        loss = rec + F.mse_loss((x_hat + p).clamp(0, 1), x) + weight * rate_term(kld, limit)
        if epoch > self.p_after * (epochs or self.epochs):  # more than self.epochs where min_steps asks for more
            loss = loss + torch.clamp(p2, min=self.p_floor)
        return loss, np.array([rec.item(), kld.item(), p2.item()])

    def fit(self, data: ImageSet) -> "DVAE":
        with self._fitting():
            self._start(data)
            return self._fit_stages(data)

    def check_applicable(self, data: ImageSet) -> None:
        """As the VAE's; also refuse class names other than the ones the D-VAE was fitted on (a folder of other
        classes, or of the same ones in another order): its class embeddings ``u_y`` would be read under other
        labels, and the subtracted ``p_hat`` would be another class's."""
        super().check_applicable(data)
        fitted, given = getattr(self, "classes_", None), [str(c) for c in data.classes]
        if fitted is not None and given != fitted:
            has = "the same ones in another order" if sorted(given) == sorted(fitted) else _listed(given)
            raise UnlearnableError(f"{self.name} was fitted on the classes {_listed(fitted)}; this set has {has}: "
                                   "its class embeddings would read other labels")

    def _fit_stages(self, data: ImageSet) -> "DVAE":
        if "s1" not in self.skips:
            self.stage1_ = self._train(data, self.kld_1, True, self.seed, "stage1", "D-VAE stage 1")
        if "s2" not in self.skips:
            x1 = data
            if "s1" not in self.skips:
                x1_arr, p1 = self._stage1(data.x, data.y)
                # fit_transform on the same set reuses stage 1; its float p_hat waits on disk while stage 2
                # trains, which keeps it out of the peak RSS (188 MB on full Fashion-MNIST, BENCHMARKS.md)
                self._fit_cache = (data.x, data.y, x1_arr, _spill(p1))
                del p1
                x1 = data.replace(x=x1_arr)
            self.stage2_ = self._train(x1, self.kld_2, True, self.seed + 1, "stage2", "D-VAE stage 2")
        return self

    def _subtracted(self, net: DVAENet, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The ``p_hat`` a stage subtracts from the float images ``x``: as decoded, or with ``p_clip`` only the part
        the loss can see, ``clamp(x_hat + p_hat, 0, 1) - x_hat`` (same sampled ``z`` for both decoders)."""
        if not self.p_clip:
            return self._infer(net, x, y, gen, "p")[1]
        return visible_perturbation(*self._infer(net, x, y, gen, "xp"))

    def _stage1(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(x1 as uint8, p_hat_1 as float32)`` of uint8 images."""
        x1, p1, gen = np.empty(x.shape, np.uint8), np.empty(x.shape, np.float32), self._gen(1)
        for s, xb, yb in self._batches(x, y):
            p = self._subtracted(self.stage1_, xb, yb, gen)
            x1[s], p1[s] = _to_uint8(xb - p), p.cpu().numpy()
        return x1, p1

    def purify(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        self._check_fitted(x, y)
        cache, self._fit_cache = getattr(self, "_fit_cache", None), None
        s1, s2 = "s1" not in self.skips, "s2" not in self.skips
        if s1:
            # the same generator seeds give the same result: the cache only saves one pass over the data
            hit = cache is not None and cache[0] is x and np.array_equal(cache[1], y)
            x1, p1 = (cache[2], cache[3]()) if hit else self._stage1(x, y)
            self.perturbation_ = p1
            if not s2:
                return x1
            x = x1
        out = np.empty(x.shape, np.uint8)
        if not s1:
            self.perturbation_ = np.empty(x.shape, np.float32)
        g2, g3 = self._gen(2), self._gen(3)
        for s, xb, yb in self._batches(x, y):  # stage 2 and the final reconstruction, batch by batch
            p2 = self._subtracted(self.stage2_, xb, yb, g2)
            if not s1:
                self.perturbation_[s] = p2.cpu().numpy()
            x2 = xb if "i2" in self.skips else (xb - p2).clamp_(0, 1)  # float, as the official code
            if "i3" in self.skips:
                out[s] = _to_uint8(x2)
            else:
                out[s] = _to_uint8(self._infer(self.stage2_, x2, yb, g3, "x")[0])
        return out

    def estimate_perturbation(self, x: np.ndarray, y: np.ndarray, stage: int | None = None) -> np.ndarray:
        """The learned perturbation ``p_hat`` of uint8 images ``x`` with labels ``y`` (float32, [0, 1] scale, signed).

        ``stage`` 1 or 2 picks the D-VAE; None: the first one fitted (stage 1 unless ``skip`` has ``s1``).
        """
        return self.decompose(x, y, stage)[1]

    def decompose(self, x: np.ndarray, y: np.ndarray, stage: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(x_hat, p_hat)`` of one stage's D-VAE for uint8 images ``x`` (float32 arrays on the [0, 1] scale)."""
        self._check_fitted(x, np.asarray(y))
        stage = stage or (1 if hasattr(self, "stage1_") else 2)
        net = getattr(self, f"stage{stage}_", None)
        if net is None:
            raise UnlearnableError(f"stage {stage} was not fitted (skip={self.skip!r})")
        x_hat, p, gen = np.empty(x.shape, np.float32), np.empty(x.shape, np.float32), self._gen(stage)
        for s, xb, yb in self._batches(x, y):
            x_hat[s], p[s] = (t.cpu().numpy() for t in self._infer(net, xb, yb, gen))
        return x_hat, p

    def label_sensitivity(self, x: np.ndarray, y: np.ndarray, sample: int = 2000, seed: int = 0) -> dict[str, Any]:
        """How much the purified images depend on the labels the purifier is given: a measurement without a victim.

        Purifies a seeded sample of at most ``sample`` of the uint8 images ``x`` twice, with their labels ``y`` and
        with every label shifted by one class (``(y + 1) mod C``), and returns ``moved`` (RMS difference of the two
        outputs, 8-bit levels), ``changed`` (RMS difference of the true-label output from the input) and their
        ``ratio``. Only the class embedding ``u_y`` of the perturbation decoders sees the label, and the sampling
        noise is the same in both passes, so ``moved`` is what the label alone writes into an image.

        Why (BENCHMARKS.md, D-VAE, sessions 32, 35 and 36): a fit that writes the label into the images trains a
        victim that relies on the trace and fails on images the purifier did not touch (the clean split purified at
        a bad seed: 93.7% on test images purified with their true labels, 78% on raw ones). Whether the ratio tells
        such fits apart without a victim: over eight fits on the clean Fashion-MNIST split it looked so (the three
        highest ratios were the three worst victims), but over 17 it does not (Spearman -0.12 against the victim;
        both leaking fits had 0.39-0.42, good fits as much as 0.51). It is a measurement, not a verdict, and the
        CLI no longer warns on it; the ratio on 5,000 training images is within 0.007 of the one on the test split,
        so the purified set itself serves. Where ``u_y`` does catch a class-wise poison (colour sets at the defaults)
        the output moves with the label by design, and it is blind to a purifier that only blurs (``fast`` on the
        colour CIFAR-10 subset: ratio 0.10 while the victim on the purified clean split fell from 75.4% to 47.5%).
        """
        y = np.asarray(y, dtype=np.int64)
        self._check_fitted(x, y)
        check(sample >= 1, f"sample must be at least 1, got {sample}")
        idx = np.arange(len(x))
        if len(x) > sample:
            idx = np.sort(np.random.default_rng(seed).choice(len(x), sample, replace=False))
        xs, ys = np.asarray(x)[idx], y[idx]
        kept = {k: self.__dict__[k] for k in ("perturbation_", "_fit_cache") if k in self.__dict__}
        true = self.purify(xs, ys).astype(np.int16)
        shifted = self.purify(xs, (ys + 1) % self.num_classes_).astype(np.int16)
        self.__dict__.update(kept)  # the estimate of the last transform() stays the whole set's
        moved = float(np.sqrt(np.mean(np.square(true - shifted, dtype=np.float64))))
        changed = float(np.sqrt(np.mean(np.square(true - xs.astype(np.int16), dtype=np.float64))))
        return {"moved": round(moved, 3), "changed": round(changed, 3), "images": len(idx),
                "ratio": round(moved / changed, 4) if changed > 0 else 0.0}

    def _nets(self) -> dict[str, DVAENet]:
        return {k: getattr(self, f"{k}_") for k in ("stage1", "stage2") if hasattr(self, f"{k}_")}


# --------------------------------------------------------------------------------------------- helpers, Table 1
def _listed(names, most: int = 6) -> str:
    """Class names for a one-line message: the first ``most`` and a count of the rest."""
    names = [str(n) for n in names]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _spill(a: np.ndarray) -> Callable[[], np.ndarray]:
    """Write ``a`` to an anonymous temporary file (gone when closed) and return the function that reads it back
    once. Unlike a memory map, the caller's copy can be freed and nothing of it counts in the RSS meanwhile."""
    f = tempfile.TemporaryFile()
    np.save(f, a, allow_pickle=False)

    def load() -> np.ndarray:
        with f:
            f.seek(0)
            return np.load(f, allow_pickle=False)
    return load


def _floats(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 images as float32 in [0, 1] on ``device`` (a copy: sets may be read-only)."""
    return torch.as_tensor(np.array(x, dtype=np.uint8)).to(device).float().div_(255)


def _quantise(x: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] rounded to the 256 levels of uint8, staying float on their device."""
    return x.clamp(0, 1).mul(255).round()


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return _quantise(x).to(torch.uint8).cpu().numpy()


def fit_stage1(data: ImageSet, checkpoint: str | None = None, **options: Any) -> DVAE:
    """A D-VAE with stage 1 trained on ``data`` (``skip="s2"`` unless ``options`` say otherwise), for the Table-1
    check and detection; its training resumes from ``checkpoint`` (a file) when that holds an interrupted fit."""
    from ..params import build

    options.setdefault("skip", "s2")
    dvae = build(DVAE, "defense 'dvae'", options)
    dvae.checkpoint = checkpoint
    return dvae.fit(data)


def dvae_check(poisoned: ImageSet, testset: ImageSet, clean: ImageSet | None = None, dvae: DVAE | None = None,
               model: str = "cnn", train_cfg: Any = None, checkpoint: str | None = None,
               **options: Any) -> dict[str, Any]:
    """The paper's Table 1 check: does the D-VAE's ``p_hat`` carry the poison?

    Fits a D-VAE on ``poisoned`` (unless a fitted ``dvae`` is given; ``options`` go to :class:`DVAE`, e.g.
    ``preset="fast"``; only stage 1 is trained), adds each sample's stage-1 ``p_hat`` to its CLEAN counterpart
    (``clean``, same order; None: reloaded from the poisoned set's source with ``data.clean_counterpart``) and
    trains a victim (``model``, ``train_cfg``: a :class:`~unlearnable.training.TrainConfig`) on that. A test
    accuracy far below the clean one means the decoder captured a working poison. Returns the victim's test
    accuracy, the size of ``p_hat`` (RMS and mean per-sample L-inf, [0, 1] scale) and the D-VAE parameters.
    ``checkpoint``: a file where the D-VAE fit keeps its training state, so an interrupted check continues from its
    last saved epoch (removed once ``p_hat`` is estimated).

    Observed: with the ``fast`` preset fitted on all 60,000 Fashion-MNIST images poisoned with class-wise noise
    (64/255), clean + ``p_hat`` still trained the default victim to 71.4% (poisoned: 11.4%): at that budget
    ``p_hat`` does NOT carry a working poison, unlike the paper's Table 1 (60 epochs, full width, CIFAR-10). The
    same at the paper's budget: class-wise EM 8/255 (victim 30.7% on the poisoned set), clean + ``p_hat`` 88.8%
    against 92.1% clean (BENCHMARKS.md, session 9). At the defaults on colour images (the 20,000-image CIFAR-10
    subset, EM 8/255, H200 GPU) the check holds: class-wise EM 11.1%, clean + ``p_hat`` 10.5% (clean 75.3%); for
    sample-wise EM it holds in part (11.4%, clean + ``p_hat`` 50.6%) (BENCHMARKS.md, session 14).
    """
    from ..data import clean_counterpart
    from ..training import train

    clean = clean_counterpart(poisoned) if clean is None else clean
    if clean.x.shape != poisoned.x.shape or not np.array_equal(clean.y, poisoned.y):
        raise UnlearnableError("dvae_check: the clean set must match the poisoned one (same shape, order, labels)")
    if dvae is None:
        dvae = fit_stage1(poisoned, checkpoint, **options)
    p = dvae.estimate_perturbation(poisoned.x, poisoned.y)
    if checkpoint:
        dvae.clear_state()
    x = torch.as_tensor(np.array(clean.x)).float().div(255) + torch.from_numpy(p)
    with_p = clean.replace(x=_to_uint8(x), provenance={**clean.provenance, "dvae_check": dvae.params()})
    result = train(with_p, testset, model, train_cfg, description="victim on clean + p_hat")
    flat = p.reshape(len(p), -1)
    return {"test_acc": result.test_acc, "p_rms": float(np.sqrt((flat ** 2).mean())),
            "p_linf_mean": float(np.abs(flat).max(1).mean()), "seconds": round(result.seconds, 2),
            "dvae": dvae.params()}

"""The one projected-gradient engine of the package.

Used by every optimisation attack (EM, REM, TAP, SEP) and, later, by adversarial training. One object holds the
budget (L-inf or L2), step size and step count; :meth:`PGD.run` moves a perturbation ``delta`` to minimise (or
maximise) any loss of the perturbed images ``clamp(x + delta, 0, 1)``:

* ``loss_fn(x_adv) -> scalar`` is the whole objective, so targeted attacks, checkpoint ensembles (SEP) and inner
  maximisations (REM) are just different closures;
* ``eot`` repeats the loss with fresh random augmentation and sums the gradients (expectation over
  transformations); :func:`differentiable_augment` builds the kornia crop + flip used for it;
* ``groups`` makes the variable class-wise: one delta per group (e.g. per label). As in the official class-wise EM
  update (HanxunH/Unlearnable-Examples, ``perturbation.py`` ``universal_perturbation`` with ``toolbox.py``
  ``min_min_attack``), each sample of the batch starts from its group's delta, takes ``steps`` signed steps of its
  own (the image clamped to [0, 1] before each gradient, the step then clipped to the eps-ball around the clean
  image), and each group's delta becomes the mean of its samples' results, clipped to the ball; groups absent from
  the batch keep theirs. The clamp matters: where ``x + delta`` leaves [0, 1] (the black half of a Fashion-MNIST
  image) a sample's result starts from the clamped image, so a class delta is not pushed further into values that
  no image shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .errors import UnlearnableError
from .params import height_width

LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class PGD:
    """Projected gradient steps on an additive perturbation (Madry et al., ICLR 2018)."""

    eps: float  # radius of the ball on the [0, 1] scale
    step_size: float  # L-inf: per-step change of each pixel; L2: per-step L2 length
    steps: int  # gradient steps per call of run()
    norm: str = "linf"  # "linf" or "l2"
    maximize: bool = False  # False: descend on loss_fn (error-minimising, targeted); True: ascend (adversarial)
    random_start: bool = False  # start from a uniform draw in the ball when no delta is given
    eot: int = 1  # loss evaluations (fresh augmentation each) summed per step

    def __post_init__(self) -> None:
        if self.norm not in ("linf", "l2"):
            raise UnlearnableError(f"PGD norm must be linf or l2, got {self.norm!r}")
        if self.eps < 0 or self.step_size <= 0 or self.steps < 0 or self.eot < 1:
            raise UnlearnableError("PGD needs eps >= 0, step_size > 0, steps >= 0 and eot >= 1")

    def init(self, shape: tuple[int, ...], device, generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.random_start:
            return torch.zeros(shape, device=device)
        if self.norm == "linf":
            return (torch.rand(shape, generator=generator).to(device) * 2 - 1) * self.eps
        # uniform in the L2 ball: a uniform direction (normalised Gaussian) at radius eps * U^(1/d)
        direction = torch.randn(shape, generator=generator).to(device).flatten(1)
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        radius = torch.rand(shape[0], generator=generator).to(device) ** (1 / direction.shape[1]) * self.eps
        return (direction * radius[:, None]).view(shape)

    def run(self, loss_fn: LossFn, x: torch.Tensor, delta: torch.Tensor | None = None,
            groups: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Return the updated perturbation (per sample, or per group when ``groups`` is given).

        ``x`` is a clean batch in [0, 1]; ``delta`` the starting perturbation (same shape as ``x``, or
        ``num_groups x ...`` with ``groups`` giving each sample's group index).
        """
        if delta is None:
            if groups is not None:
                raise UnlearnableError("class-wise PGD needs the starting class perturbations")
            delta = self.init(tuple(x.shape), x.device, generator)
        delta = delta.detach().clone()
        if groups is not None:
            return self._run_grouped(loss_fn, x, delta, groups)
        sign = 1.0 if self.maximize else -1.0
        for _ in range(self.steps):
            delta = self.project(delta + sign * self.step_size * self._gradient_direction(loss_fn, x + delta), x)
        return delta.detach()

    def _gradient_direction(self, loss_fn: LossFn, x_adv: torch.Tensor) -> torch.Tensor:
        # The gradient is taken at the perturbed image, not through the clamp: torch's clamp passes no gradient at
        # 0 or 1, so a delta differentiated through it could never move a black or white pixel (half of every
        # Fashion-MNIST image). The official EM code differentiates at the clamped image too.
        x_adv = x_adv.clamp(0, 1).detach().requires_grad_(True)
        loss = sum(loss_fn(x_adv) for _ in range(self.eot))
        (grad,) = torch.autograd.grad(loss, x_adv)
        return self._direction(grad)

    def _run_grouped(self, loss_fn: LossFn, x: torch.Tensor, delta: torch.Tensor,
                     groups: torch.Tensor) -> torch.Tensor:
        """One delta per group: per-sample steps from the group's delta, then each group's mean (module docstring)."""
        sign = 1.0 if self.maximize else -1.0
        per_sample = delta[groups]
        for _ in range(self.steps):
            start = (x + per_sample).clamp(0, 1) - x  # official: perturb_img = clamp(images + eta, 0, 1)
            step = self._gradient_direction(loss_fn, x + start)
            per_sample = self.project(start + sign * self.step_size * step)  # eta = clip(perturb_img + step - x)
        total = torch.zeros_like(delta).index_add_(0, groups, per_sample)
        count = torch.bincount(groups, minlength=len(delta)).view(-1, *([1] * (delta.dim() - 1)))
        return self.project(torch.where(count > 0, total / count.clamp_min(1), delta)).detach()

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "linf":
            return grad.sign()
        flat = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        return grad / flat.view(-1, *([1] * (grad.dim() - 1)))

    def project(self, delta: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """Into the eps-ball, and (when the clean ``x`` is known) so that ``x + delta`` stays in [0, 1]."""
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            delta = self._project_l2(delta, torch.full((len(delta),), self.eps, device=delta.device))
        if x is not None:
            delta = (x + delta).clamp(0, 1) - x
        return delta

    @staticmethod
    def _project_l2(delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        n = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        factor = torch.minimum(torch.ones_like(n), radius / n)
        return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def differentiable_augment(image_size: int | tuple[int, int], flip: bool = True, pad: int = 4) -> nn.Module:
    """kornia random crop (zero padding ``pad``) + horizontal flip, differentiable w.r.t. the images;
    ``image_size``: a square's side or (height, width)."""
    import kornia.augmentation as K

    size = height_width(image_size)
    ops: list[nn.Module] = [K.RandomCrop(size, padding=pad, p=1.0)] if pad else []
    if flip:
        ops.append(K.RandomHorizontalFlip())
    return K.AugmentationSequential(*ops) if ops else nn.Identity()


def cross_entropy_loss(model: nn.Module, y: torch.Tensor, augment: nn.Module | None = None) -> LossFn:
    """``x -> CE(model(augment(x)), y)``: the loss of EM (toward the true labels) and of targeted attacks.

    Runs under bf16 autocast and channels_last where those are fast (the trainer's rule), in float32 otherwise.
    """
    from .training import fast_bf16

    ce = nn.CrossEntropyLoss()
    device = next(model.parameters()).device
    amp = fast_bf16(device)

    def loss(x: torch.Tensor) -> torch.Tensor:
        x = augment(x) if augment is not None else x
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x.contiguous(memory_format=torch.channels_last))
        return ce(out.float(), y)

    return loss

"""The PGD engine: budget, direction, class-wise grouping, L2."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from unlearnable.errors import UnlearnableError
from unlearnable.pgd import PGD, cross_entropy_loss, differentiable_augment


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()


@pytest.mark.parametrize("maximize", [False, True])
def test_linf_budget_and_direction(maximize):
    model, x, y = _model(), torch.rand(16, 3, 8, 8), torch.randint(0, 4, (16,))
    loss = cross_entropy_loss(model, y)
    pgd = PGD(eps=4 / 255, step_size=1 / 255, steps=10, maximize=maximize, random_start=True)
    delta = pgd.run(loss, x, generator=torch.Generator().manual_seed(0))
    assert delta.abs().max() <= 4 / 255 + 1e-7
    assert ((x + delta) >= -1e-7).all() and ((x + delta) <= 1 + 1e-7).all()
    before, after = loss(x).item(), loss((x + delta).clamp(0, 1)).item()
    assert (after > before) if maximize else (after < before)


def test_l2_budget():
    model, x, y = _model(), torch.rand(8, 3, 8, 8), torch.randint(0, 4, (8,))
    delta = PGD(eps=0.5, step_size=0.2, steps=5, norm="l2").run(cross_entropy_loss(model, y), x)
    assert delta.flatten(1).norm(dim=1).max() <= 0.5 + 1e-5


def test_l2_random_start_is_uniform_in_the_ball():
    """It was a uniform draw in the cube, projected: nearly every start sat on the sphere."""
    start = PGD(eps=0.5, step_size=0.1, steps=1, norm="l2", random_start=True).init(
        (4000, 1, 1, 2), "cpu", torch.Generator().manual_seed(0))
    r = start.flatten(1).norm(dim=1)
    assert r.max() <= 0.5 + 1e-6
    assert abs((r < 0.25).float().mean().item() - 0.25) < 0.03  # area inside half the radius: a quarter in 2-D
    angle = torch.atan2(start[:, 0, 0, 1], start[:, 0, 0, 0])
    assert abs((angle > 0).float().mean().item() - 0.5) < 0.03


def test_classwise_variable_is_shared_per_group():
    model, x = _model(), torch.rand(12, 3, 8, 8)
    y = torch.arange(12) % 4
    start = torch.zeros(4, 3, 8, 8)
    delta = PGD(eps=8 / 255, step_size=2 / 255, steps=3).run(cross_entropy_loss(model, y), x, start, groups=y)
    assert delta.shape == (4, 3, 8, 8) and delta.abs().max() <= 8 / 255 + 1e-7 and delta.abs().sum() > 0


def test_class_wise_update_is_the_official_one():
    """Each sample steps from the clamped image, the class delta becomes the mean of the results (official
    ``min_min_attack`` + ``universal_perturbation``): at a black pixel with the class delta at -8/255, a step asking
    for darker gives -0.8/255 (an update that averaged the signed steps instead kept -8/255); absent classes keep
    their delta."""
    x = torch.zeros(2, 1, 2, 2)
    x[1, 0, 0, 0] = 0.5  # one mid-grey pixel: there the step moves the delta itself
    delta = torch.full((3, 1, 2, 2), -8 / 255)
    out = PGD(eps=8 / 255, step_size=0.8 / 255, steps=1).run(lambda xa: xa.sum(), x, delta, torch.tensor([0, 0]))
    expected = torch.full((1, 2, 2), -0.8 / 255)
    expected[0, 0, 0] = (-0.8 / 255 - 8 / 255) / 2  # black in one sample, clipped at -8/255 in the other
    torch.testing.assert_close(out[0], expected)
    torch.testing.assert_close(out[1:], delta[1:])  # no sample of classes 1 and 2 in the batch


def test_eot_with_augmentation_runs():
    model, x, y = _model(), torch.rand(4, 3, 8, 8), torch.randint(0, 4, (4,))
    loss = cross_entropy_loss(model, y, differentiable_augment(8, pad=1))
    delta = PGD(eps=8 / 255, step_size=2 / 255, steps=2, eot=3).run(loss, x)
    assert delta.abs().max() <= 8 / 255 + 1e-7


def test_bad_parameters():
    with pytest.raises(UnlearnableError):
        PGD(eps=0.1, step_size=0.01, steps=1, norm="l1")
    with pytest.raises(UnlearnableError):
        PGD(eps=0.1, step_size=0, steps=1)


def test_saturated_pixels_can_move_inward():
    """Black and white pixels (half of a Fashion-MNIST image is 0) must be perturbable: the step is taken from the
    gradient at the perturbed image, since torch's clamp passes no gradient at 0 or 1."""
    x = torch.cat([torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)])
    toward_grey = lambda z: ((z - 0.5) ** 2).sum()  # minimised by moving every pixel toward 0.5
    delta = PGD(eps=8 / 255, step_size=2 / 255, steps=4).run(toward_grey, x)
    assert torch.allclose(delta[:2], torch.full_like(delta[:2], 8 / 255))
    assert torch.allclose(delta[2:], torch.full_like(delta[2:], -8 / 255))

"""Shared fixtures: real Fashion-MNIST subsets, loaded once per session, and a fast victim recipe."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("UNLEARNABLE_NO_PROGRESS", "1")
os.environ["UNLEARNABLE_CACHE"] = tempfile.mkdtemp(prefix="unlearnable-test-cache-")  # no state across runs
atexit.register(shutil.rmtree, os.environ["UNLEARNABLE_CACHE"], ignore_errors=True)  # and no litter in /tmp


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers) the workers share the cores. On the 2-core Zen 1
    (2026-12-01) the suite took 631 s in one process on both cores, 576 s in two one-thread workers and 516 s once
    the tests that share work were grouped on one worker (``xdist_group`` marks, ``--dist loadgroup``). The effect
    tests' margins hold at either thread count (another float draw, within the seed-to-seed spread they allow)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() // workers))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """The slow effect tests first: under pytest-xdist the workers then share out the short tests at the end and
    finish together. The tests that use the clean victim (``clean_acc``) share one worker, which trains it once."""
    for item in items:
        if "clean_acc" in item.fixturenames:
            item.add_marker(pytest.mark.xdist_group("clean_acc"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


#: Small real subsets keep the suite within minutes on 2 CPU cores.
N_TRAIN, N_TEST = 4000, 2000


@pytest.fixture(scope="session")
def fmnist():
    from unlearnable.data import load

    try:
        return load("fashion-mnist")
    except Exception as e:  # pragma: no cover - the Makefile installs the data first
        pytest.skip(f"Fashion-MNIST unavailable: {e}")


@pytest.fixture(scope="session")
def small_train(fmnist):
    """4,000 class-balanced training images (seeded)."""
    return fmnist[0].take(N_TRAIN, seed=0)


@pytest.fixture(scope="session")
def small_test(fmnist):
    """2,000 class-balanced clean test images (seeded)."""
    return fmnist[1].take(N_TEST, seed=1)


@pytest.fixture(scope="session")
def victim(small_test):
    """``victim(trainset)``: the clean test accuracy of the effect tests' victim trained on ``trainset``.

    The package's ``cnn`` at half its default width (a quarter of the convolution work) for 8 epochs in batches of
    128 (more passes than the full-set recipe, the subsets being small); the test split is evaluated once, after the
    last epoch (the effect tests read the final accuracy only). On these subsets it learns as well as the default
    width (Zen 1, 2026-11-30: 81.3% vs 77.7% on 2,000 images, 85.3% on 4,000, in 7 s vs 18 s) and the attacks cost
    it as much (per-attack figures beside each test's margin; the default victim on the full sets: BENCHMARKS.md).
    """
    from unlearnable.training import TrainConfig, train

    cfg = TrainConfig(epochs=8, batch_size=128, seed=0, eval_every=8)
    return lambda trainset: train(trainset, small_test, "cnn", cfg, width=16).test_acc


@pytest.fixture(scope="session")
def clean_acc(small_train, victim):
    """Clean test accuracy of the victim trained on the clean 4,000 images (the reference for effect tests)."""
    return victim(small_train)


@pytest.fixture
def crash(monkeypatch):
    """For the resume tests of the long jobs: ``resumed = crash(make, "poison", data, state, (Cls, "method", n))``
    builds a job with ``make()``, runs ``job.poison(data)`` (or ``"fit"``) keeping its state in the file ``state``
    until the n-th call of ``Cls.method`` raises KeyboardInterrupt (which must happen), and returns a fresh
    ``make()`` set to resume from that state, bound to ``data``. ``every``: the crashed job's save interval inside a
    pass (0: at every chance; None: its own default)."""

    def crash_then_resume(make, run: str, data, state, at, every: float | None = 0.0):
        owner, name, n = at
        calls, original = [], getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        crashed = make()
        crashed.checkpoint = str(state)
        if every is not None:
            crashed.save_every_s = every
        monkeypatch.setattr(owner, name, wrapper)
        try:
            with pytest.raises(KeyboardInterrupt):
                getattr(crashed, run)(data)
        finally:
            monkeypatch.setattr(owner, name, original)
        resumed = make()
        resumed.checkpoint = str(state)
        resumed.bind_state(data)
        return resumed

    return crash_then_resume

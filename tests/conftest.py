"""Shared fixtures: real Fashion-MNIST subsets, loaded once per session, and a fast victim recipe."""
from __future__ import annotations

import contextlib
import os
import tempfile

import pytest

os.environ.setdefault("UNLEARNABLE_NO_PROGRESS", "1")
os.environ["UNLEARNABLE_CACHE"] = tempfile.mkdtemp(prefix="unlearnable-test-cache-")  # no state across runs

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
def victim_cfg():
    """The default recipe, longer because the subset is small: ~83% clean on 4,000 images in a few seconds."""
    from unlearnable.training import TrainConfig

    return TrainConfig(epochs=8, batch_size=128, seed=0)


@pytest.fixture(scope="session")
def clean_acc(small_train, small_test, victim_cfg):
    """Clean test accuracy of the default victim trained on the clean subset (the reference for effect tests)."""
    from unlearnable.training import train

    return train(small_train, small_test, "cnn", victim_cfg).test_acc


@pytest.fixture
def interrupt(monkeypatch):
    """``with interrupt(Cls, "method", n): job()`` - a crash (KeyboardInterrupt) on the n-th call of ``Cls.method``,
    which the block must raise; the method is restored after it. For the resume tests of the long jobs."""

    @contextlib.contextmanager
    def crash_on_call(owner, name: str, n: int):
        calls, original = [], getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls.append(1)
            if len(calls) == n:
                raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)
        try:
            with pytest.raises(KeyboardInterrupt):
                yield
        finally:
            monkeypatch.setattr(owner, name, original)

    return crash_on_call

"""Shared fixtures: real Fashion-MNIST subsets, loaded once per session, and a fast victim recipe."""
from __future__ import annotations

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
    """The default recipe, longer because the subset is small: ~83% clean on 4,000 images in a few seconds. The
    effect tests read the final accuracy only, so the test split is evaluated once, after the last epoch."""
    from unlearnable.training import TrainConfig

    return TrainConfig(epochs=8, batch_size=128, seed=0, eval_every=8)


@pytest.fixture(scope="session")
def clean_acc(small_train, small_test, victim_cfg):
    """Clean test accuracy of the default victim trained on the clean subset (the reference for effect tests)."""
    from unlearnable.training import train

    return train(small_train, small_test, "cnn", victim_cfg).test_acc


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

"""The trainer: it learns real data, is deterministic, and baselines barely hurt it (effect tests)."""
from __future__ import annotations

import pytest
import torch

from unlearnable.attacks import create_attack
from unlearnable.training import TrainConfig, random_crop, train


def test_victim_learns(clean_acc):
    assert clean_acc >= 0.80  # 4,000 Fashion-MNIST images, 8 epochs of the cnn


def test_training_is_deterministic_on_cpu(small_train, small_test):
    data = small_train.take(500)
    cfg = TrainConfig(epochs=1, seed=3, device="cpu")
    a, b = train(data, small_test, "cnn", cfg), train(data, small_test, "cnn", cfg)
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=0)
    assert a.history[-1]["train_loss"] == b.history[-1]["train_loss"]


def test_history_and_summary(small_train, small_test):
    r = train(small_train.take(300), small_test.take(200), "linear", TrainConfig(epochs=2, eval_every=1))
    s = r.summary()
    assert [h["epoch"] for h in r.history] == [1, 2]
    assert {"test_acc", "peak_test_acc", "train_acc", "seconds", "epochs"} <= set(s)
    assert s["peak_test_acc"] >= s["test_acc"]


def test_min_steps_trains_a_small_set_more_epochs_tested_as_often(small_train, small_test):
    """The recipe's 3 epochs are 705 steps on 60,000 images and 24 on 2,000, after which a victim on clean images
    scored 18-26%: ``min_steps`` raises the epochs; the test split is used about as often as for those asked."""
    from unlearnable.training import RECIPE_STEPS

    recipe = TrainConfig(min_steps=RECIPE_STEPS)
    assert [recipe.epochs_for(n) for n in (60000, 50000, 2000, 257)] == [3, 4, 89, 705]  # 257: one batch
    assert TrainConfig().epochs_for(2000) == 3 and TrainConfig(epochs=100, min_steps=705).epochs_for(2000) == 100
    r = train(small_train.take(300), small_test.take(200), "linear", TrainConfig(epochs=2, batch_size=100,
                                                                                 min_steps=20))
    assert [h["epoch"] for h in r.history] == [1, 2, 3, 4, 5, 6, 7]  # 3 steps an epoch: 7 make at least 20
    assert [h["epoch"] for h in r.history if "test_acc" in h] == [3, 6, 7]  # every 7 // 2 epochs, and the last
    assert r.summary()["epochs"] == 7


def test_the_deepconfuse_paper_recipe_is_its_test_protocol_and_learns(small_train, small_test):
    """kingfengji/DeepConfuse MNIST/test_model.py: Adam(lr=0.01), batch 64, 2 epochs, plain float32 images."""
    from unlearnable.errors import UnlearnableError
    from unlearnable.training import RECIPES, Trainer

    cfg = RECIPES.create("deepconfuse-paper", seed=1)
    assert (cfg.optimizer, cfg.lr, cfg.batch_size, cfg.epochs, cfg.min_steps) == ("adam", 0.01, 64, 2, 1876)
    assert (cfg.augment, cfg.schedule, cfg.label_smoothing, cfg.weight_decay, cfg.amp) == (False, "constant", 0, 0,
                                                                                           False)
    assert cfg.seed == 1  # the changes a recipe is given win
    trainer = Trainer(torch.nn.Linear(4, 2), cfg, total_steps=10, image_size=28)
    assert isinstance(trainer.opt, torch.optim.Adam) and trainer.sched.get_last_lr() == [0.01]
    assert isinstance(Trainer(torch.nn.Linear(4, 2), TrainConfig(), 10, 28).opt, torch.optim.SGD)
    r = train(small_train.take(2000), small_test, "lenet", cfg.replace(min_steps=128))  # 4 epochs of 32 steps
    assert r.test_acc >= 0.7, r.test_acc  # 77-81% at seeds 1-3 (chance: 10%)
    with pytest.raises(UnlearnableError, match="unknown optimizer 'rmsprop'; known: sgd, adam"):
        TrainConfig(optimizer="rmsprop")


@pytest.mark.parametrize("avx512_bf16, amx, expected", [(False, False, False), (True, False, True), (False, True, True)])
def test_bf16_autocast_only_where_the_cpu_has_native_bf16(monkeypatch, avx512_bf16, amx, expected):
    from unlearnable.training import fast_bf16

    # oneDNN calls bf16 "supported" on every AVX-512 CPU; without AVX512-BF16/AMX it is emulated and 2x slower
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert fast_bf16(torch.device("cpu")) is expected
    for major, fast in ((7, False), (8, True), (9, True)):  # V100 / T4 emulate bf16; Ampere and later have it
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, m=major: (m, 0))
        assert fast_bf16(torch.device("cuda")) is fast


def test_random_crop_shifts_content():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    out = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # each output is a window of the zero-padded input
        padded = torch.nn.functional.pad(x[i, 0], (2, 2, 2, 2))
        assert any(torch.equal(padded[r:r + 6, c:c + 6], out[i, 0]) for r in range(5) for c in range(5))


@pytest.mark.slow
def test_random_noise_barely_hurts(small_train, victim, clean_acc):
    acc = victim(create_attack("random-noise", eps=16 / 255, seed=0).poison(small_train))
    assert acc >= clean_acc - 0.05, (acc, clean_acc)


@pytest.mark.slow
def test_label_flip_hurts_but_leaves_the_majority_label(small_train, victim, clean_acc):
    flipped = create_attack("label-flip", ratio=0.6, seed=0).poison(small_train)
    assert (flipped.y != small_train.y).mean() == pytest.approx(0.6, abs=0.01)
    acc = victim(flipped)
    assert acc < clean_acc  # 60% of the labels are wrong...
    assert acc >= 0.5  # ...but the true class still holds the plurality of each image's labels


def test_flush_denormals_is_scoped():
    from unlearnable.training import flush_denormals

    tiny = torch.tensor([1e-38])
    with flush_denormals():
        if not torch.set_flush_denormal(True):
            pytest.skip("this CPU cannot flush subnormals")
        assert (tiny / 100).item() == 0.0  # a subnormal result is flushed inside...
    assert (tiny / 100).item() > 0  # ...and representable again after the block
    torch.set_flush_denormal(True)  # a caller that had it on keeps it on (it was switched off)
    try:
        with flush_denormals():
            pass
        assert (tiny / 100).item() == 0.0
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("bad", [{"epochs": 0}, {"batch_size": 0}, {"lr": 0.0}, {"eval_every": 0}, {"momentum": -1.0},
                                 {"label_smoothing": 2.0}, {"crop_pad": -3}, {"grad_clip": -1.0}, {"lr": float("inf")},
                                 {"min_steps": -1}])
def test_bad_recipe_is_a_clear_error(bad):
    from unlearnable.errors import UnlearnableError

    with pytest.raises(UnlearnableError, match=next(iter(bad))):
        TrainConfig(**bad)


def test_a_test_set_unlike_the_training_set_is_a_clear_error(small_train, small_test):
    import numpy as np

    from unlearnable.errors import UnlearnableError

    data = small_train.take(100)
    with pytest.raises(UnlearnableError, match="test images are 3x28x28"):
        train(data, small_test.replace(x=np.repeat(small_test.x[:50], 3, axis=1), y=small_test.y[:50]))
    with pytest.raises(UnlearnableError, match="classes"):
        train(data, small_test.replace(classes=small_test.classes[:-1] + ["other"]))
    with pytest.raises(UnlearnableError, match="at least 2 classes"):
        create_attack("label-flip").poison(data.replace(y=np.zeros(len(data), np.int64), classes=["one"]))


def test_devices_other_than_cpu_and_cuda_are_a_clear_error():
    from unlearnable.errors import UnlearnableError
    from unlearnable.training import resolve_device

    assert resolve_device("cpu").type == "cpu"
    bad = ["mps", "xpu", "meta", "gpu"] + ([] if torch.cuda.is_available() else ["cuda", "cuda:0"])
    for device in bad:
        with pytest.raises(UnlearnableError, match="device"):
            resolve_device(device)


def test_a_last_batch_of_one_is_merged_and_batches_of_one_refused_for_batch_norm(small_train):
    """lenet's BatchNorm1d raised a ValueError traceback on a last batch of one image (257 images, batch 256)."""
    from unlearnable.errors import UnlearnableError

    r = train(small_train.take(257), None, "lenet", TrainConfig(epochs=1, device="cpu"))
    assert r.history[0]["epoch"] == 1
    with pytest.raises(UnlearnableError, match="batches of one image cannot train lenet"):
        train(small_train.take(20), None, "lenet", TrainConfig(epochs=1, batch_size=1))


def test_interrupted_training_resumes_as_if_never_stopped_and_only_on_its_own_data(small_train, tmp_path):
    """The state holds the global random state (dropout draws from it) and is tied to the data and the network."""
    from torch import nn

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10))

    data, state = small_train.take(300), tmp_path / "s.pt"
    cfg = TrainConfig(epochs=3, batch_size=64, seed=1, device="cpu")
    expected = train(data, None, net(), cfg)

    def stop(epoch, model):
        if epoch == 2:  # after epoch 1's state was written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, None, net(), cfg, on_epoch=stop, state_path=state)
    assert state.is_file()
    epochs = []
    resumed = train(data, None, net(), cfg, state_path=state, on_epoch=lambda epoch, model: epochs.append(epoch))
    assert epochs and 0 not in epochs  # resumed: epoch 0 was not trained again
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in expected.history]
    for a, b in zip(resumed.model.parameters(), expected.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not state.exists()
    with pytest.raises(KeyboardInterrupt):
        train(data, None, net(), cfg, on_epoch=stop, state_path=state)
    other = train(small_train.take(300, seed=5), None, net(), cfg, state_path=state)  # not this state's data
    assert len(other.history) == 3 and other.history[0]["train_loss"] != expected.history[0]["train_loss"]
    for junk in (b"", b"garbage", b"PK\x03\x04trunc"):  # empty, foreign, a truncated zip: a fresh start, no traceback
        state.write_bytes(junk)
        assert len(train(data, None, net(), cfg, state_path=state).history) == 3
    torch.save([1, 2], state)  # readable, but not a state
    assert len(train(data, None, net(), cfg, state_path=state).history) == 3


def test_no_warmup_is_the_full_rate_and_logits_are_float32(small_train):
    """warmup=0 still began at 0.1 x lr; predict_logits gave bf16 logits under autocast (a caller's .numpy() failed)."""
    from unlearnable.training import _schedule, predict_logits

    assert _schedule(TrainConfig(warmup=0), 100)(0) == 1.0
    assert _schedule(TrainConfig(), 100)(0) == pytest.approx(0.1)
    model = train(small_train.take(50), None, "linear", TrainConfig(epochs=1)).model
    for amp in (True, False):
        assert predict_logits(model, torch.rand(3, 1, 28, 28), amp=amp).dtype == torch.float32

"""Contract tests run over every registry entry (timm / scikit-learn style): register once, tested everywhere."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from unlearnable.attacks import ATTACKS, create_attack
from unlearnable.defenses import DEFENSES, create_defense
from unlearnable.errors import UnlearnableError
from unlearnable.models import CLASSICAL, MODELS, create_model
from unlearnable.training import RECIPES, TrainConfig, train

# Expensive optimisation attacks are contract-tested on fewer images with their cheapest settings (and a narrow
# surrogate, which also exercises the ``model_width`` path, the TAP / SEP cache of a non-default width included).
ATTACK_TEST_OPTIONS: dict[str, dict] = {
    "em": {"steps": 2, "max_rounds": 2, "train_steps": 2, "model_width": 8},
    "tap": {"surrogate_epochs": 1, "steps": 2, "restarts": 1, "model_width": 8},
    "sep": {"surrogate_epochs": 2, "checkpoints": 2, "steps": 2, "model_width": 8},
    "rem": {"train_steps": 4, "steps": 2, "eot": 1, "adv_steps": 1, "model_width": 8},
    "deepconfuse": {"preset": "smoke"},
}
DEFENSE_TEST_OPTIONS: dict[str, dict] = {
    "vae": {"width": 4, "epochs": 1, "batch_size": 64},
    "dvae": {"width": 4, "epochs": 1, "batch_size": 64},
}


@pytest.fixture(scope="module")
def tiny(small_train):
    return small_train.take(200, seed=3)


@pytest.mark.parametrize("name", RECIPES.names())
def test_recipe_contract(name, tiny, small_test):
    cfg = RECIPES.create(name, epochs=1, min_steps=0, seed=2)  # a recipe takes any TrainConfig field as a change
    assert isinstance(cfg, TrainConfig) and (cfg.epochs, cfg.seed) == (1, 2) and RECIPES.describe(name)
    r = train(tiny, small_test.take(200), "linear", cfg)
    assert r.summary()["epochs"] == 1 and 0 <= r.test_acc <= 1


@pytest.mark.parametrize("name", [n for n in MODELS.names() if n not in CLASSICAL])
@pytest.mark.parametrize("shape", [(1, 28), (3, 32)])
def test_model_shapes(name, shape):
    if name in ("resnet50", "densenet121", "vgg16") and shape[0] == 1:
        pytest.skip("big models: one input shape is enough")
    c, s = shape
    model = create_model(name, in_channels=c, num_classes=7, image_size=s).eval()
    with torch.no_grad():
        out = model(torch.rand(2, c, s, s))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", CLASSICAL)
def test_classical_victims_fit_flattened_pixels(name, tiny, small_test):
    result = train(tiny, small_test, name, TrainConfig())
    assert result.history[0]["train_acc"] > 0.7
    assert result.test_acc > 0.5  # ten classes: chance is 0.1


def test_unknown_names_list_the_known_ones():
    for registry in (MODELS, ATTACKS, DEFENSES):
        with pytest.raises(UnlearnableError, match="known: .*"):
            registry.get("no-such-thing")


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_contract(name, tiny):
    """Budget holds after quantisation, uint8 range, shape, labels, ratio, determinism under a seed."""
    opts = {"eps": 16 / 255, "seed": 1, **ATTACK_TEST_OPTIONS.get(name, {})}
    a = create_attack(name, **opts).poison(tiny)
    b = create_attack(name, **opts).poison(tiny)
    assert a.x.dtype == np.uint8 and a.x.shape == tiny.x.shape and a.y.dtype == np.int64
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert np.abs(a.x.astype(int) - tiny.x).max() <= 16
    assert a.provenance["method"] == name
    attack = create_attack(name, **opts, ratio=0.5)
    half, chosen = attack.poison(tiny), attack.select(len(tiny))
    changed = np.asarray(half.provenance["changed"])  # those of the chosen 100 whose pixels or label really moved
    assert len(chosen) == 100 and 0 < len(changed) <= 100 and np.isin(changed, chosen).all()
    untouched = np.setdiff1d(np.arange(len(tiny)), changed)
    np.testing.assert_array_equal(half.x[untouched], tiny.x[untouched])
    np.testing.assert_array_equal(half.y[untouched], tiny.y[untouched])


@pytest.mark.parametrize("name", ATTACKS.names())
@pytest.mark.parametrize("bad", [{"eps": 0}, {"eps": -0.1}, {"eps": 1.5}, {"ratio": 0}, {"ratio": 1.2},
                                 {"norm": "l3"}, {"no_such_param": 1}])
def test_attack_bad_parameters(name, bad):
    with pytest.raises(UnlearnableError):
        create_attack(name, **bad)


def _preset_cases():
    for kind, registry in (("attack", ATTACKS), ("defense", DEFENSES)):
        for name in registry.names():
            for preset in registry.get(name).presets:
                yield kind, name, preset


@pytest.mark.parametrize("kind,name,preset", list(_preset_cases()))
def test_presets_apply_in_python_as_on_the_command_line(kind, name, preset):
    """``EM(preset="fast")`` once silently kept the paper defaults (only ``--set preset=fast`` applied them)."""
    registry, create = (ATTACKS, create_attack) if kind == "attack" else (DEFENSES, create_defense)
    cls = registry.get(name)
    assert cls(preset=preset) == create(name, preset=preset)
    assert all(getattr(cls(preset=preset), k) == v for k, v in cls.presets[preset].items())
    numbers = [(k, v) for k, v in cls.presets[preset].items() if type(v) in (int, float)]
    if numbers:  # an explicit value wins over the preset...
        key, value = numbers[0]
        default = getattr(cls(), key)
        other = 2 * value if 2 * value != default else 3 * value
        assert getattr(cls(preset=preset, **{key: other}), key) == other
        assert getattr(create(name, preset=preset, **{key: other}), key) == other
        # ...even when it equals the class default (in Python it once lost there: DeepConfuse(preset="fast",
        # augment=False) kept the preset's augment=True)
        assert getattr(create(name, preset=preset, **{key: default}), key) == default
        assert getattr(cls(preset=preset, **{key: default}), key) == default


@pytest.mark.parametrize("name", ["linear", "lenet", "cnn", "convnet"])
def test_small_models_take_images_that_are_not_square(name):
    """linear and lenet sized their dense layer from the height alone: 48 x 64 folders crashed in torch."""
    assert create_model(name, 3, 5, (20, 36)).eval()(torch.rand(2, 3, 20, 36)).shape == (2, 5)


@pytest.mark.parametrize("name, side", [("cnn", 7), ("convnet", 7), ("vgg11", 12), ("lenet", 12)])
def test_models_refuse_images_their_pooling_cannot_take(name, side):
    """Tiny folder images crashed inside torch ("Output size is too small") at the first training step."""
    with pytest.raises(UnlearnableError, match=f"{side} x {side}"):
        create_model(name, 1, 10, side)
    assert create_model(name, 1, 10, 28).training  # the size check leaves a fresh model in training mode


def test_python_values_are_type_checked_and_numpy_scalars_converted():
    """A numpy seed from ``np.arange`` passed creation and crafting, then broke the manifest's JSON at the save."""
    rn = create_attack("random-noise", seed=np.int64(1), eps=np.float32(0.03))
    assert type(rn.seed) is int and type(rn.eps) is float
    for name, bad, needle in (("em", {"eps": None}, "eps must be a number"), ("em", {"seed": 1.5}, "an integer"),
                              ("em", {"seed": -1}, "seed must lie in 0"), ("em", {"eps": True}, "eps must be a number"),
                              ("jpeg", {"quality": 1.5}, "an integer")):
        with pytest.raises(UnlearnableError, match=needle):
            (create_attack if name in ATTACKS.names() else create_defense)(name, **bad)
    with pytest.raises(UnlearnableError, match="epochs must be an integer"):
        TrainConfig(epochs=1.5)
    # inf passed the range checks and diverged a VAE into an all-black set; numpy's seeding takes 32 bits; a CPU-only
    # purifier recorded a device that does not exist
    with pytest.raises(UnlearnableError, match="kld_weight must be a finite number"):
        create_defense("vae", kld_weight=float("inf"))
    with pytest.raises(UnlearnableError, match="lr must be a finite number"):
        TrainConfig(lr=float("inf"))
    with pytest.raises(UnlearnableError, match="seed must lie in"):
        TrainConfig(seed=2**32)
    with pytest.raises(UnlearnableError, match="seed must lie in"):
        create_attack("random-noise", seed=2**64)
    from unlearnable.detect import check_options

    for method in ("contrast", "simple"):  # the detectors' options are function keywords, not dataclass fields
        for seed in ("-1", "4294967296"):
            with pytest.raises(UnlearnableError, match="seed must lie in"):
                check_options(method, {"seed": seed})
    with pytest.raises(UnlearnableError, match="unknown device 'tpu'"):
        create_defense("jpeg", device="tpu")


def test_entry_points_refuse_what_is_not_an_image_set(tiny):
    """An array, or load()'s (train, test) pair, gave an AttributeError from deep inside each method."""
    from unlearnable.data import save_set
    from unlearnable.detect import contrast_detect, detect

    calls = [lambda: create_attack("random-noise").poison(tiny.x), lambda: create_defense("jpeg").transform(tiny.x),
             lambda: create_defense("dvae").fit(tiny.x), lambda: train((tiny, tiny)), lambda: train(tiny, tiny.x),
             lambda: detect(tiny.x, method="simple"), lambda: contrast_detect(tiny, tiny.x),
             lambda: save_set(tiny.x, "unused")]
    for call in calls:
        with pytest.raises(UnlearnableError, match="must be an ImageSet, got (ndarray|tuple)"):
            call()
    with pytest.raises(UnlearnableError, match="cfg must be a TrainConfig"):
        train(tiny, tiny, cfg={"epochs": 1})


def test_the_record_lists_only_the_samples_an_attack_really_changed(tiny, caplog):
    """A perturbation that rounds to nothing poisons nothing: DeepConfuse's smoke generator at 8/255 changed no
    pixel yet recorded every sample, and detection then scored against samples identical to the clean ones."""
    from dataclasses import dataclass

    from unlearnable.attacks.base import Attack

    @dataclass
    class EveryOther(Attack):
        name = "every-other"

        def craft(self, data, index):
            x = data.x[index].astype(np.float32) / 255
            x[1::2] = np.where(x[1::2] < 0.5, x[1::2] + 4 / 255, x[1::2] - 4 / 255)
            return x, data.y[index]

    out = EveryOther(eps=8 / 255).poison(tiny)
    assert out.provenance["changed"] == list(range(1, len(tiny), 2))
    assert "came out unchanged" in caplog.text


def test_em_fast_preset_keeps_the_official_single_class_wise_step():
    """The ``fast`` preset once set 10 PGD steps in both modes: ten times the cost of a class-wise sweep."""
    fast = {mode: create_attack("em", preset="fast", mode=mode).pgd_steps for mode in ("class", "sample")}
    assert fast == {"class": 1, "sample": 10}
    assert create_attack("em", mode="sample").pgd_steps == 20
    assert create_attack("em", preset="fast", mode="class", steps=3).pgd_steps == 3


def test_targeted_attacks_refuse_a_shift_that_targets_the_true_class(small_train):
    for name in ("tap", "sep"):
        with pytest.raises(UnlearnableError, match="maps each of the 10 classes to itself"):
            create_attack(name, shift=10).poison(small_train)


def test_unknown_preset_is_refused_in_python_too():
    from unlearnable.attacks.em import EM

    with pytest.raises(UnlearnableError, match="no preset 'quick'"):
        EM(preset="quick")


@pytest.mark.parametrize("name", DEFENSES.names())
def test_defense_contract(name, tiny):
    opts = DEFENSE_TEST_OPTIONS.get(name, {})
    pur = create_defense(name, **opts)
    assert pur.fit(tiny) is pur
    out = pur.transform(tiny)
    assert out.x.dtype == np.uint8 and out.x.shape == tiny.x.shape
    np.testing.assert_array_equal(out.y, tiny.y)
    np.testing.assert_array_equal(create_defense(name, **opts).fit_transform(tiny).x, out.x)
    assert out.provenance["purified_by"]["method"] == name


@pytest.mark.parametrize("name", ["em", "rem", "tap", "sep"])
def test_surrogate_attacks_refuse_classical_or_unknown_models(name):
    with pytest.raises(UnlearnableError, match="scikit-learn"):
        create_attack(name, model="svm-linear")
    with pytest.raises(UnlearnableError, match="known"):
        create_attack(name, model="resnet19")
    with pytest.raises(UnlearnableError, match="resnet18 has no width option .*cnn, convnet"):
        create_attack(name, model="resnet18", model_width=16)
    with pytest.raises(UnlearnableError, match="model_width must be >= 1"):
        create_attack(name, model_width=0)


def test_surrogate_width_is_the_models_width(tiny):
    from unlearnable.attacks.surrogate import make_surrogate

    convs = [m for m in make_surrogate("cnn", tiny, torch.device("cpu"), width=8).modules()
             if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 16, 32]


def test_defense_bad_parameters():
    with pytest.raises(UnlearnableError):
        create_defense("jpeg", quality=0)
    with pytest.raises(UnlearnableError):
        create_defense("bdr", bits=9)
    with pytest.raises(UnlearnableError, match="mode"):
        create_defense("bdr", mode="ceil")
    with pytest.raises(UnlearnableError, match="no parameter"):
        create_defense("jpeg", qualty=10)


def test_colour_defenses_change_colour_images():
    from unlearnable.data import ImageSet

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8)
    data = ImageSet(x, np.arange(8) % 2, ["a", "b"])
    gray = create_defense("grayscale").transform(data).x
    assert (gray[:, 0] == gray[:, 1]).all() and (gray[:, 1] == gray[:, 2]).all()
    # the unlearnable-examples papers' BDR truncates (the D-VAE code: floor(4x)/4 on [0, 1] pixels); Xu et al. round
    k = torch.arange(256, dtype=torch.uint8)
    floor = ((4 * (k.float() / 255)).int() / 4).float().mul(255).round().to(torch.uint8).numpy()
    np.testing.assert_array_equal(create_defense("bdr", bits=2).transform(data).x, floor[x])
    assert np.unique(create_defense("bdr", bits=2, mode="round").transform(data).x).tolist() == [0, 85, 170, 255]
    assert not np.array_equal(create_defense("jpeg").transform(data).x, x)


def test_sep_steps_one_level_up_to_8_of_255_as_the_official():
    """The official ``alpha`` is 1/255 at every budget; ours took 30 steps of 0.25/255 at the paper's 2/255."""
    steps = {e: create_attack("sep", eps=e / 255)._step_size() * 255 for e in (2, 8, 32)}
    assert steps == pytest.approx({2: 1, 8: 1, 32: 4})
    assert create_attack("sep", eps=8 / 255, preset="fast")._step_size() * 255 == pytest.approx(1.6)


def test_vgg_takes_tall_images_as_it_takes_wide_ones():
    """Its last pool was kept or dropped by the height alone: 40 x 28 was refused where 28 x 40 trained."""
    for hw in ((28, 40), (40, 28)):
        assert create_model("vgg11", 1, 5, hw).eval()(torch.rand(2, 1, *hw)).shape == (2, 5)


def test_rbf_svm_subset_takes_any_class_sizes():
    """scikit-learn's stratified split refused a remainder smaller than the class count (10,005 images) and a
    class of one image: a traceback from ``train --model svm-rbf``."""
    from unlearnable.data.imageset import stratified_indices
    from unlearnable.models.classical import svm_rbf

    y = np.r_[0, np.repeat(np.arange(1, 10), 6)]  # 55 images, one of class 0
    idx = stratified_indices(y, 50, seed=1)
    assert len(idx) == 50 and len(np.unique(idx)) == 50 and (np.bincount(y[idx]) >= 1).all()
    np.testing.assert_array_equal(idx, stratified_indices(y, 50, seed=1))
    svm_rbf(1, 10, 4, max_samples=50).fit(np.random.default_rng(0).random((55, 1, 4, 4)), y)
    with pytest.raises(UnlearnableError, match="two or more classes"):
        svm_rbf(1, 1, 4).fit(np.zeros((4, 1, 4, 4)), np.zeros(4, dtype=np.int64))


def test_attacks_need_two_classes(tiny):
    """One class: a constant loss and zero gradients - REM returned its random start as 'noise', silently."""
    one = tiny.subset(np.flatnonzero(tiny.y == 0)).replace(classes=["a"])
    for name in ("em", "rem", "tap", "sep"):
        with pytest.raises(UnlearnableError, match="two or more classes"):
            create_attack(name, **ATTACK_TEST_OPTIONS[name]).poison(one)


def test_a_batch_of_one_is_a_one_line_error_for_batch_norm(tiny):
    """REM's surrogate steps skipped the trainer's batch-of-one check (lenet's BatchNorm1d): a torch ValueError."""
    with pytest.raises(UnlearnableError, match="batch of 1 image"):
        create_attack("rem", model="lenet", batch_size=1, train_steps=1, steps=1, eot=1, adv_steps=1).poison(tiny)


def test_non_finite_crafted_images_are_refused(tiny):
    rn = create_attack("random-noise")
    with pytest.raises(UnlearnableError, match="non-finite"):
        rn.quantise(tiny.x[:2], np.full(tiny.x[:2].shape, np.nan, dtype=np.float32))


def test_api_inputs_that_were_tracebacks_are_one_line_errors(tiny):
    """What a notebook passes: masks, lists, the natural export call, a typo in a model option, NHWC images."""
    from unlearnable.data import ImageSet, partial
    from unlearnable.detect import detect, flag, index_mask, purify_flagged

    mask = tiny.y == 0
    assert len(tiny.subset(mask)) == mask.sum()  # a mask meant samples 0 and 1, cast to integers
    assert index_mask(mask, len(tiny)).sum() == mask.sum()
    assert flag(mask.astype(float), 0.5).metrics(mask)["f1"] == 1.0
    for bad in (lambda: tiny.subset([-1]), lambda: index_mask([len(tiny)], len(tiny)),
                lambda: partial(tiny.x, 0.5), lambda: purify_flagged(tiny, [1, 2], create_defense("jpeg")),
                lambda: create_model("cnn", 1, 10, 28, widht=8), lambda: ImageSet(tiny.x, tiny.y, tiny.classes,
                                                                                  provenance=None),
                lambda: detect(tiny, "simple", model="svm-linear")):
        with pytest.raises(UnlearnableError):
            bad()
    for bad in (lambda: tiny.take(-1), lambda: tiny.take(2.5), lambda: create_model("cnn", 1, 0, 28),
                lambda: create_attack("tap", shift=0), lambda: create_attack("sep", shift=0)):
        with pytest.raises(UnlearnableError):
            bad()
    with pytest.raises(UnlearnableError, match="transpose"):
        ImageSet(tiny.x.transpose(0, 2, 3, 1), tiny.y, tiny.classes)
    # a fixed transform may give flat images (1-bit depth of dark ones): only a learned purifier is refused for it
    dark = tiny.replace(x=tiny.x // 3)
    assert create_defense("bdr", bits=1).fit_transform(dark).x.max() == 0


def test_attacks_refuse_a_set_already_poisoned_or_purified(tiny):
    """From Python the CLI's refusal did not hold: noise on noise measured 16 levels against an 8/255 record."""
    once = create_attack("random-noise").poison(tiny)
    with pytest.raises(UnlearnableError, match="already poisoned"):
        create_attack("random-noise").poison(once)
    with pytest.raises(UnlearnableError, match="purified set"):
        create_attack("random-noise").poison(create_defense("jpeg").fit_transform(tiny))
    from unlearnable.detect import flag, purify_flagged

    untouched = purify_flagged(tiny, flag(np.zeros(len(tiny)), 0.5), create_defense("jpeg"))
    assert len(create_attack("random-noise").poison(untouched).provenance["changed"]) == len(tiny)  # nothing purified


def test_library_calls_leave_the_callers_random_state_alone(tiny):
    """Each call seeded torch's (and numpy's) global generator: a notebook's later draws were the same whatever
    seed it had set."""
    draws = []
    for seed in (1, 2):
        np.random.seed(seed)
        torch.manual_seed(seed)
        train(tiny.take(50), None, "linear", TrainConfig(epochs=1))
        create_attack("em", **ATTACK_TEST_OPTIONS["em"]).poison(tiny.take(50))
        create_attack("deepconfuse", **ATTACK_TEST_OPTIONS["deepconfuse"]).fit(tiny)  # public too
        draws.append((np.random.rand(), torch.rand(1).item()))
        np.random.seed(seed)
        torch.manual_seed(seed)
        assert draws[-1] == (np.random.rand(), torch.rand(1).item())
    assert draws[0] != draws[1]


def test_a_failed_fit_leaves_the_purifier_unfitted(tiny):
    """After a fit that diverged, transform() raised AttributeError and save() wrote a file without weights."""
    vae = create_defense("vae", width=4, epochs=1, batch_size=64, lr=1e9)
    with pytest.raises(UnlearnableError):
        vae.fit(tiny)
    with pytest.raises(UnlearnableError, match="call fit"):
        vae.transform(tiny)

"""The command line end to end: one-line errors with exit code 2, nothing half-written, JSON output."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest


def run(*args, check_rc=None, subprocess_=False):
    """``unlearnable ARGS``: its exit code, stdout and stderr. The real command in a new Python process when
    ``subprocess_``; otherwise ``cli.main`` in this process (each new process spends ~4.5 s importing torch and
    building its first optimiser, ~60 s over this file on a 2-core CPU), with the warnings the command logs
    routed to its stderr as ``main`` does (pytest's log capture keeps ``logging.basicConfig`` from doing it here).
    The bad-input cases run as subprocesses: they are cheap and prove the real exit path."""
    if subprocess_:
        e = {**os.environ, "UNLEARNABLE_NO_PROGRESS": "1"}
        p = subprocess.run([sys.executable, "-m", "unlearnable.cli", *args], capture_output=True, text=True, env=e)
    else:
        p = _run_in_process(list(args))
    if check_rc is not None:
        assert p.returncode == check_rc, (p.returncode, p.stdout, p.stderr)
    return p


def _run_in_process(args):
    from unlearnable import cli

    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    argv, code = sys.argv, 0
    sys.argv = ["unlearnable", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            cli.main()
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = argv
        root.removeHandler(handler)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def one_line_error(p):
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def test_list_lists_without_importing_torch():
    # how fast is measured in benchmarks (target < 1 s); what keeps it fast is that the CLI imports no torch
    p = run("list", "attacks", check_rc=0, subprocess_=True)
    assert "random-noise" in p.stdout and "label-flip" in p.stdout
    out = subprocess.run([sys.executable, "-c", "import unlearnable.cli, sys; "
                          "print('torch' in sys.modules)"], capture_output=True, text=True).stdout
    assert out.strip() == "False"


def test_each_command_is_listed_on_one_line():
    """``unlearnable --help`` lists a command by its docstring's first paragraph and, in typer's rich mode, keeps
    that paragraph's line breaks: a wrapped one broke the command table (purify, export and detect did)."""
    import inspect

    from unlearnable.cli import app

    for command in app.registered_commands:
        first = inspect.cleandoc(command.callback.__doc__ or "").split("\n\n")[0]
        assert first and "\n" not in first, command.callback.__name__


def test_recipes_are_listed_and_checked_without_torch():
    """``list recipes`` and the check of ``train --recipe`` import no torch (it took ~2 s before the error)."""
    code = ("import sys; from unlearnable.cli import _registry; r = _registry('recipes'); r.check('default'); "
            "print(r.names(), bool(r.describe('deepconfuse-paper')), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip() == "['deepconfuse-paper', 'default'] True False", out


@pytest.mark.parametrize("args,needle", [
    (["poison", "--attack", "nope", "--out", "{tmp}/o"], "unknown attack"),
    (["poison", "--attack", "random-noise", "--eps", "-1", "--out", "{tmp}/o"], "eps"),
    (["poison", "--attack", "random-noise", "--eps", "0", "--out", "{tmp}/o"], "eps"),
    (["poison", "--attack", "random-noise", "--eps", "x/y", "--out", "{tmp}/o"], "eps"),
    (["poison", "--attack", "random-noise", "--eps", "1.5", "--out", "{tmp}/o"], "eps"),
    (["poison", "--attack", "random-noise", "--ratio", "0", "--out", "{tmp}/o"], "ratio"),
    (["poison", "--attack", "random-noise", "--ratio", "1.5", "--out", "{tmp}/o"], "ratio"),
    (["poison", "--attack", "random-noise", "--data", "mnist-2", "--out", "{tmp}/o"], "unknown dataset"),
    (["poison", "--attack", "random-noise", "--set", "nokey", "--out", "{tmp}/o"], "key=value"),
    (["poison", "--attack", "em", "--set", "preset=fast", "--set", "lr=1/0", "--out", "{tmp}/o"], "cannot read lr"),
    (["purify", "--defense", "nope", "--data", "{tmp}", "--out", "{tmp}/o"], "unknown defense"),
    (["train", "--model", "nope"], "unknown model"),
    (["train", "--recipe", "nope", "--data", "folder:{tmp}/missing"], "unknown victim recipe 'nope'"),  # data unread
    (["train", "--data", "folder:{tmp}/missing"], "does not exist"),
    (["purify", "--defense", "jpeg", "--data", "{tmp}/missing", "--out", "{tmp}/o"], "no saved set at"),
    (["purify", "--data", "{tmp}", "--out", "{tmp}/o"], "give --defense NAME"),  # was typer's missing --defense
    (["purify", "--purifier", "{tmp}/p.safetensors", "--data", "{tmp}", "--out", "{tmp}/o"], "no saved purifier"),
    (["purify", "--purifier", "{tmp}", "--data", "{tmp}", "--out", "{tmp}/o"], "holds no purifier.safetensors"),
    (["purify", "--purifier", "{tmp}/p.safetensors", "--defense", "dvae", "--data", "{tmp}", "--out", "{tmp}/o"],
     "--defense does not apply to a saved purifier"),
    (["purify", "--purifier", "{tmp}/p.safetensors", "--seed", "1", "--data", "{tmp}", "--out", "{tmp}/o"],
     "--seed does not apply"),
    (["purify", "--purifier", "{tmp}/p.safetensors", "--set", "width=8", "--data", "{tmp}", "--out", "{tmp}/o"],
     "--set does not apply"),
    (["list", "things"], "unknown kind"),
    (["detect", "--data", "{tmp}", "--purify", "jpeg"], "--out"),
    (["detect", "--data", "{tmp}", "--purify", "nope", "--out", "{tmp}/o"], "unknown defense"),
    (["detect", "--data", "{tmp}", "--drop"], "--out"),
    (["detect", "--data", "{tmp}", "--purify-set", "quality=5"], "give --purify DEFENSE too"),  # was ignored
    (["detect", "--data", "{tmp}", "--out", "{tmp}/o"], "--purify, --purifier or --drop"),
    (["detect", "--data", "{tmp}", "--drop", "--purify", "bdr", "--out", "{tmp}/o"], "exclude each other"),
    (["detect", "--data", "{tmp}", "--scores", "{tmp}"], "is a directory"),
    (["detect", "--data", "{tmp}", "--plot", "{tmp}"], "is a directory"),
    (["detect", "--data", "{tmp}", "--plot", "{tmp}/plot.jpg"], "give it a .png name"),
    (["info", "{tmp}", "--grid", "{tmp}/grid.jpg"], "give it a .png name"),
    # detector options are checked before the data is read ({tmp}/missing: it never is)
    (["detect", "--data", "{tmp}/missing", "--method", "nope"], "unknown detector"),
    (["detect", "--data", "{tmp}/missing", "--set", "method=simple"], "not a detector option"),  # was a TypeError
    (["detect", "--data", "{tmp}/missing", "--method", "simple", "--set", "keep_state=1"], "not a detector option"),
    (["detect", "--data", "{tmp}/missing", "--method", "simple", "--set", "epochs=x"], "epochs"),
    (["detect", "--data", "{tmp}/missing", "--set", "score=nope"], "unknown D-VAE score"),
    (["detect", "--data", "{tmp}/missing", "--set", "threshold=abc"], "threshold must be a number"),
    (["dvae-check", "--data", "{tmp}/missing", "--set", "model=cnn"], "not a D-VAE option"),  # was a TypeError
    (["dvae-check", "--data", "{tmp}/missing", "--set", "dvae=1"], "not a D-VAE option"),  # an AttributeError
    (["dvae-check", "--data", "{tmp}/missing", "--set", "widht=8"], "no parameter widht"),
    (["dvae-check", "--data", "fashion-mnist"], "not a poisoned set"),  # ran on clean images
    (["poison", "--attack", "em", "--set", "mode=class", "--set", "mode=sample", "--out", "{tmp}/o"], "given twice"),
    (["poison", "--attack", "label-flip", "--eps", "0.5", "--out", "{tmp}/o"], "--eps does not apply"),
    (["poison", "--attack", "random-noise", "--eps", "0.5", "--eps-unit", "levels", "--out", "{tmp}/o"],
     "0.5 levels is under one 8-bit level"),  # was said as the radius 0.00196
    (["poison", "--attack", "em", "--set", "preset=none", "--set", "model_width=8.0", "--out", "{tmp}/o"],
     "as a whole number or none"),
    # usage errors, caught by typer's own click (typer >= 0.26.0 vendors click and no longer installs it)
    (["poison", "--attack", "random-noise"], "--out"),
    (["train", "--epochs", "abc"], "--epochs"),
    (["poison", "--attack", "random-noise", "--seed", "-1", "--out", "{tmp}/o"], "--seed"),
    (["train", "--subset", "0"], "--subset"),
    (["nocmd"], "nocmd"),
])
def test_bad_input_one_line_exit_2(tmp_path, args, needle):
    args = [a.format(tmp=tmp_path) for a in args]
    assert needle in one_line_error(run(*args, subprocess_=True))
    assert not (tmp_path / "o").exists()


def test_poison_info_train_export_purify(tmp_path):
    out = tmp_path / "p"
    run("poison", "--attack", "random-noise", "--eps", "8/255", "--subset", "500", "--out", str(out),
        "--set", "mode=class", check_rc=0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["params"]["mode"] == "class" and manifest["params"]["eps"] == pytest.approx(8 / 255)
    # an existing non-empty --out is refused, and left as it was
    assert "overwrite" in one_line_error(run("poison", "--attack", "random-noise", "--subset", "500",
                                             "--out", str(out)))
    assert json.loads((out / "manifest.json").read_text()) == manifest
    info = run("info", str(out), check_rc=0).stdout
    assert "random-noise" in info and "PSNR" in info and "8/255" in info
    grid = tmp_path / "grid.png"
    assert "grid:" in run("info", str(out), "--grid", str(grid), check_rc=0).stdout and grid.stat().st_size > 1000
    assert "overwrite" in one_line_error(run("info", str(out), "--grid", str(grid)))
    res = json.loads(run("train", "--data", str(out), "--epochs", "1", "--json", check_rc=0).stdout)
    assert {"test_acc", "peak_test_acc", "train_acc", "seconds", "epochs"} <= set(res) and res["epochs"] == 1
    # without --epochs a small set trains the recipe's 705 steps, not 3 epochs (24 steps of 2,000 images: ~20%)
    p = run("train", "--data", str(out), "--subset", "300", "--model", "linear", "--batch-size", "100", "--json",
            check_rc=0)
    assert json.loads(p.stdout)["epochs"] == 235 and "the victim trains 235 epochs, the 705 steps the default" in p.stderr
    run("export", str(out), "--format", "png", "--out", str(tmp_path / "png"), check_rc=0)
    assert len(list((tmp_path / "png" / "train").rglob("*.png"))) == 500
    assert len(list((tmp_path / "png" / "test").rglob("*.png"))) == 10000
    run("purify", "--defense", "bdr", "--data", str(out), "--out", str(tmp_path / "pur"), check_rc=0)
    assert json.loads((tmp_path / "pur" / "manifest.json").read_text())["purified_by"]["method"] == "bdr"
    # purified again: the first purifier stays on record (it was overwritten) and info lists both, in order
    run("purify", "--defense", "jpeg", "--data", str(tmp_path / "pur"), "--out", str(tmp_path / "pur2"), check_rc=0)
    info = run("info", str(tmp_path / "pur2"), check_rc=0).stdout
    assert info.index("purified:   bdr") < info.index("purified:   jpeg") and "the attack's;" in info
    # a purified clean set is no clean start for an attack either: the budget against its source would not hold
    from unlearnable.attacks.base import require_unperturbed
    from unlearnable.data import load_set
    from unlearnable.errors import UnlearnableError

    purified = load_set(tmp_path / "pur2")
    del purified.provenance["method"]
    with pytest.raises(UnlearnableError, match=r"is a purified set \(jpeg\)"):
        require_unperturbed(purified, "SET")


def test_a_failed_save_keeps_the_attack_state_and_ctrl_c_exits_130(tmp_path, monkeypatch):
    import unlearnable.data as data_mod

    sets = [a for kv in ("mode=sample", "steps=2", "max_rounds=2", "train_steps=2", "stop_error=0", "model_width=8")
            for a in ("--set", kv)]
    poison = ("poison", "--attack", "em", "--subset", "200", *sets, "--out")
    save_set = data_mod.save_set

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data_mod, "save_set", full_disk)
    p = run(*poison, str(tmp_path / "em"))
    kept = f" (the work so far is kept in {tmp_path / '.em.state.pt'}: the same command resumes it)"  # said
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1] == "error: No space left on device" + kept, p.stderr
    assert (tmp_path / ".em.state.pt").is_file()  # the crafting is not lost with the save
    monkeypatch.setattr(data_mod, "save_set", save_set)
    assert "resuming" in run(*poison, str(tmp_path / "em"), check_rc=0).stderr
    assert not (tmp_path / ".em.state.pt").exists()  # cleared once the set is saved
    from unlearnable import resume

    assert resume.Resumable.announce == resume.log.info  # the API's channel again after the command
    (tmp_path / ".rn.state.pt").write_bytes(b"junk")  # an interrupted run's state that no job here can use
    p = run("poison", "--attack", "random-noise", "--subset", "50", "--out", str(tmp_path / "rn"), check_rc=0)
    assert f"removed {tmp_path / '.rn.state.pt'}" in p.stderr and not (tmp_path / ".rn.state.pt").exists()
    run(*poison, str(tmp_path / "straight"), check_rc=0)
    np.testing.assert_array_equal(np.load(tmp_path / "em" / "x.npy"), np.load(tmp_path / "straight" / "x.npy"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(data_mod, "load", interrupted)
    p = run("train", "--epochs", "1")
    assert p.returncode == 130 and p.stderr.strip() == "aborted", (p.returncode, p.stderr)


def test_interrupted_purify_resumes(tmp_path, crash):
    from unlearnable.data import load_set
    from unlearnable.defenses.dvae import DVAE

    out = tmp_path / "p"
    run("poison", "--attack", "random-noise", "--subset", "256", "--out", str(out), check_rc=0)
    data, opts = load_set(out), {"width": 4, "epochs": 2, "batch_size": 64}
    expected = DVAE(**opts).fit(data).transform(data).x
    # crash in stage 2, with the state where the CLI keeps it
    crash(partial(DVAE, **opts), "fit", data, tmp_path / ".pur.state.pt", (DVAE, "_loss", 11))
    sets = [a for k, v in {**opts, "preset": "none"}.items() for a in ("--set", f"{k}={v}")]
    p = run("purify", "--defense", "dvae", "--data", str(out), "--out", str(tmp_path / "pur"), *sets, check_rc=0)
    assert "resuming" in p.stderr and "ignoring" not in p.stderr, p.stderr
    np.testing.assert_array_equal(load_set(tmp_path / "pur").x, expected)
    assert not (tmp_path / ".pur.state.pt").exists()  # resumed from it, and cleared once the set was saved
    record = json.loads((tmp_path / "pur" / "manifest.json").read_text())["purified_by"]
    sens = record["label_sensitivity"]
    assert f"(fit {record['fit_seconds']} s; purifying {record['seconds']} s)" in run("info", str(tmp_path / "pur"),
                                                                                      check_rc=0).stdout
    assert f"label sensitivity {sens['ratio']:.2f}" in p.stderr and sens["images"] == 256 and sens["changed"] > 0


def test_a_fitted_purifier_is_saved_and_purifies_new_images_unfitted(tmp_path):
    """``purify --defense dvae`` leaves its weights in the set (hashed in the manifest); ``purify --purifier`` applies
    them to other images without training, as fitted: on the same images, the same output; on images whose class
    names differ, a one-line error (the class embeddings would read other labels). ``dvae-check --purifier`` reads
    its p_hat from them."""
    from unlearnable.data import load_set

    rn, pur = tmp_path / "rn", tmp_path / "pur"
    run("poison", "--attack", "random-noise", "--subset", "256", "--out", str(rn), check_rc=0)
    sets = [a for kv in ("width=4", "epochs=1", "batch_size=64", "min_steps=0", "preset=none") for a in ("--set", kv)]
    p = run("purify", "--defense", "dvae", "--data", str(rn), "--out", str(pur), *sets, check_rc=0)
    assert f"`purify --purifier {pur}`" in p.stderr, p.stderr
    digest = json.loads((pur / "manifest.json").read_text())["sha256"]["purifier.safetensors"]
    for given in (pur, pur / "purifier.safetensors"):  # the set, or its file
        again = tmp_path / f"again-{given.name}"
        p = run("purify", "--purifier", str(given), "--data", str(rn), "--out", str(again), check_rc=0)
        assert "no training" in p.stderr and "D-VAE stage" not in p.stderr
        np.testing.assert_array_equal(load_set(again).x, load_set(pur).x)
        manifest = json.loads((again / "manifest.json").read_text())
        record = manifest["purified_by"]
        assert record["weights_sha256"] == digest and "fit_seconds" not in record
        assert manifest["sha256"]["purifier.safetensors"] == digest  # a copy: the set names and holds its purifier
        assert "fitted before" in run("info", str(again), check_rc=0).stdout
    assert f"purifier.safetensors (purify --purifier {pur} applies" in run("info", str(pur), check_rc=0).stdout
    data = load_set(rn)
    # dvae-check reads its p_hat from the saved D-VAE, no fit (none with a VAE: it has no perturbation decoder)
    from unlearnable.defenses.dvae import DVAE

    p_hat = DVAE.load(pur / "purifier.safetensors").estimate_perturbation(data.x, data.y)
    p = run("dvae-check", "--data", str(rn), "--purifier", str(pur), "--epochs", "1", check_rc=0)
    assert f"(p_hat RMS {np.sqrt(np.mean(p_hat ** 2)) * 255:.1f} levels of 255)" in p.stdout, p.stdout
    vae = tmp_path / "vae"
    run("purify", "--defense", "vae", "--data", str(rn), "--out", str(vae), *sets[:-2], check_rc=0)
    assert "no stage-1 D-VAE" in one_line_error(run("dvae-check", "--data", str(rn), "--purifier", str(vae)))
    np.savez(tmp_path / "other.npz", x=data.x, y=data.y, classes=np.array(data.classes[::-1]))
    err = one_line_error(run("purify", "--purifier", str(pur), "--data", f"npz:{tmp_path / 'other.npz'}", "--out",
                             str(tmp_path / "o")))
    assert "same ones in another order" in err and not (tmp_path / "o").exists()
    (pur / "purifier.safetensors").write_bytes((pur / "purifier.safetensors").read_bytes()[:-8] + bytes(8))
    err = one_line_error(run("purify", "--purifier", str(pur), "--data", str(rn), "--out", str(tmp_path / "o")))
    assert "does not match the SHA-256" in err


def test_detect_scores_and_purifies_with_a_purifier_fitted_before(tmp_path):
    """``detect --purifier``: a saved D-VAE scores the samples with no fit (the scores of the API's ``detect`` with
    that D-VAE); with --out it purifies the flagged samples only, its weights on record; another detector's flags
    are purified with it too. Flags that leave it no use, or options it cannot take, are one-line errors."""
    from unlearnable.data import load_set
    from unlearnable.defenses.dvae import DVAE
    from unlearnable.detect import detect as api_detect

    rn, pur = tmp_path / "rn", tmp_path / "pur"
    run("poison", "--attack", "random-noise", "--eps", "64/255", "--ratio", "0.5", "--set", "mode=class",
        "--subset", "256", "--out", str(rn), check_rc=0)
    sets = [a for kv in ("width=4", "epochs=1", "batch_size=64", "min_steps=0", "preset=none") for a in ("--set", kv)]
    run("purify", "--defense", "dvae", "--data", str(rn), "--out", str(pur), *sets, check_rc=0)
    digest = json.loads((pur / "manifest.json").read_text())["sha256"]["purifier.safetensors"]
    data = load_set(rn)
    expected = api_detect(data, "dvae", dvae=DVAE.load(pur / "purifier.safetensors"))
    p = run("detect", "--data", str(rn), "--purifier", str(pur), "--out", str(tmp_path / "o"), "--json", check_rc=0)
    res = json.loads(p.stdout)
    assert "D-VAE stage" not in p.stderr, p.stderr  # no fit
    assert res["flagged"] == len(expected.flagged) and res["threshold"] == pytest.approx(expected.threshold)
    assert res["purifier"]["weights_sha256"] == digest and res["purified"] == str(tmp_path / "o")
    out = load_set(tmp_path / "o")
    record = out.provenance["purified_by"]
    assert record["flagged"] == expected.flagged.tolist() and record["weights_sha256"] == digest
    assert record["only_flagged_by"] == "dvae" and "fit_seconds" not in record
    kept = np.setdiff1d(np.arange(len(data)), expected.flagged)
    assert np.array_equal(out.x[kept], data.x[kept]) and not np.array_equal(out.x, data.x)
    # it holds a copy of the weights that made it, hashed: reusable as a set that purify fitted
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["sha256"]["purifier.safetensors"] == digest
    p = run("detect", "--data", str(rn), "--method", "simple", "--purifier", str(pur / "purifier.safetensors"),
            "--out", str(tmp_path / "s"), check_rc=0)
    assert "with the dvae of" in p.stdout and "(fitted before)" in p.stdout, p.stdout
    assert load_set(tmp_path / "s").provenance["purified_by"]["only_flagged_by"] == "simple"
    vae = tmp_path / "vae"
    run("purify", "--defense", "vae", "--data", str(rn), "--out", str(vae), *sets[:-2], check_rc=0)
    for args, message in (
            (["--purifier", str(pur), "--purify", "bdr", "--out", str(tmp_path / "x")], "exclude each other"),
            (["--purifier", str(pur), "--method", "simple"], "--purifier has no use here"),
            (["--purifier", str(pur), "--set", "width=8"], "--set width does not apply to a saved D-VAE"),
            (["--purifier", str(vae)], "holds a vae with no stage-1 D-VAE"),
            (["--purifier", str(tmp_path / "none.safetensors")], "no saved purifier")):
        assert message in one_line_error(run("detect", "--data", str(rn), *args)), args
    assert not (tmp_path / "x").exists()


def test_on_a_cpu_poison_and_purify_default_to_the_fast_preset(tmp_path):
    """Defaults that finish on a laptop: a method with a ``fast`` preset runs it on a CPU unless --set names one
    (``none``: the paper's settings, which for the D-VAE are 2 x 60 epochs at full width)."""
    out = tmp_path / "rn"
    run("poison", "--attack", "random-noise", "--subset", "300", "--out", str(out), check_rc=0)
    tiny = ["--set", "device=cpu", "--set", "epochs=1", "--set", "width=4",  # smaller still than fast's width 16
            "--set", "min_steps=0"]  # and 1 step, not the 468 the preset's rule asks of a small set
    p = run("purify", "--defense", "vae", "--data", str(out), "--out", str(tmp_path / "a"), *tiny, check_rc=0)
    assert "vae: preset fast, its CPU budget (--set preset=none: the paper's settings)" in p.stderr, p.stderr
    params = json.loads((tmp_path / "a" / "manifest.json").read_text())["purified_by"]["params"]
    assert (params["preset"], params["batch_size"], params["width"]) == ("fast", 256, 4), params
    p = run("purify", "--defense", "vae", "--data", str(out), "--out", str(tmp_path / "b"), *tiny,
            "--set", "preset=none", check_rc=0)
    assert "preset fast" not in p.stderr
    params = json.loads((tmp_path / "b" / "manifest.json").read_text())["purified_by"]["params"]
    assert (params["preset"], params["batch_size"]) == (None, 128), params


@pytest.mark.parametrize("command", ["detect", "dvae-check"])
def test_interrupted_dvae_fit_of_detect_and_dvae_check_resumes(command, tmp_path, crash):
    """The two commands with no --out keep the D-VAE's training state in the cache, keyed by the data and the
    options (a run with other options overwrote, then deleted, an interrupted one's state)."""
    from unlearnable.cli import _state_in_cache
    from unlearnable.data import load
    from unlearnable.defenses.dvae import DVAE
    from unlearnable.detect import detect

    out = tmp_path / "p"
    run("poison", "--attack", "random-noise", "--subset", "256", "--set", "mode=class", "--out", str(out),
        check_rc=0)
    (data, _), opts = load(str(out)), {"width": 4, "epochs": 3, "batch_size": 64, "min_steps": 0}
    as_given = {**{k: str(v) for k, v in opts.items()}, "preset": "fast"}  # --set values, and the commands' preset
    state = Path(_state_in_cache(command, data, as_given))
    assert state != Path(_state_in_cache(command, data, {**as_given, "epochs": "1"}))
    # what both commands fit: stage 1 with the fast preset; crash in its second epoch
    crash(partial(DVAE, **opts, skip="s2", preset="fast"), "fit", data, state, (DVAE, "_loss", 7))
    assert state.is_file()
    sets = [a for k, v in opts.items() for a in ("--set", f"{k}={v}")]
    extra = ["--json"] if command == "detect" else ["--epochs", "1"]  # dvae-check's victim: its p_hat is the point
    p = run(command, "--data", str(out), *sets, *extra, check_rc=0)
    assert "resuming" in p.stderr and "ignoring" not in p.stderr, p.stderr
    if command == "detect":  # the scores of a run never interrupted: the same Otsu split and flags
        expected = detect(data, "dvae", **opts)
        summary = json.loads(p.stdout)
        assert summary["threshold"] == expected.threshold
        params = summary["params"]  # typed, and the D-VAE's whole configuration, preset included
        assert params["width"] == 4 and params["preset"] == "fast" and params["skip"] == "s2" and params["score"]
    else:
        p_hat = DVAE(**opts, skip="s2").fit(data).estimate_perturbation(data.x, data.y)
        assert f"p_hat RMS {np.sqrt(np.mean(p_hat.astype(np.float64) ** 2)) * 255:.1f} levels" in p.stdout
    assert not state.exists()  # cleared once the D-VAE's part was done


def test_tampered_set_is_refused(tmp_path):
    out = tmp_path / "p"
    run("poison", "--attack", "random-noise", "--subset", "100", "--out", str(out), check_rc=0)
    with open(out / "y.npy", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x07")
    assert "SHA-256" in one_line_error(run("train", "--data", str(out)))
    manifest = json.loads((out / "manifest.json").read_text())
    for damage, needle in (({"source": None}, "'source' is missing"), ({"format": 99}, "newer than this package"),
                           ({"budget": {"norm": "linf", "eps": "x"}}, "'budget'"),
                           ({"changed": [10 ** 9]}, "beyond the set")):
        (out / "manifest.json").write_text(json.dumps({**manifest, **damage}))
        assert needle in one_line_error(run("info", str(out))), damage
    (out / "manifest.json").write_text("[1, 2]")
    assert "not a JSON object" in one_line_error(run("info", str(out)))
    assert oct((out.stat().st_mode & 0o777)) == oct(0o777 & ~_umask())  # not mkdtemp's private 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_detect_purifies_only_the_flagged_samples(tmp_path):
    import numpy as np

    from unlearnable.data import load_set

    poisoned = tmp_path / "half"
    run("poison", "--attack", "random-noise", "--eps", "64/255", "--ratio", "0.5", "--subset", "1000",
        "--set", "mode=class", "--out", str(poisoned), check_rc=0)
    csv_path, png = tmp_path / "report" / "scores.csv", tmp_path / "report" / "scores.png"
    res = json.loads(run("detect", "--data", str(poisoned), "--method", "simple", "--purify", "bdr",
                         "--out", str(tmp_path / "pur"), "--scores", str(csv_path), "--plot", str(png), "--json",
                         check_rc=0).stdout)
    assert res["metrics"]["f1"] > 0.7, res  # class-wise noise at 64/255 is easy to spot
    before, after = load_set(poisoned), load_set(tmp_path / "pur")
    changed = np.flatnonzero((after.x != before.x).reshape(len(after.x), -1).any(1))
    flagged = after.provenance["purified_by"]["flagged"]
    assert len(flagged) == res["flagged"] and after.provenance["purified_by"]["only_flagged_by"] == "simple"
    assert f"; only the {len(flagged)} samples flagged by simple" in run("info", str(tmp_path / "pur"),
                                                                          check_rc=0).stdout
    assert len(changed) > 0.8 * len(flagged) and set(changed) <= set(flagged)  # flagged samples only
    assert np.array_equal(after.y, before.y)
    # the CSV says which samples were flagged (the same ones purified) and which the attack changed
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == len(before) and [int(r["index"]) for r in rows] == list(range(len(before)))
    assert [int(r["index"]) for r in rows if r["flagged"] == "1"] == flagged
    assert {int(r["index"]) for r in rows if r["poisoned"] == "1"} == set(before.provenance["changed"])
    assert all(before.classes[int(r["label"])] == r["class"] for r in rows)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and res["plot"] == str(png)
    assert sorted(p.name for p in csv_path.parent.iterdir()) == ["scores.csv", "scores.png"]  # no temporaries
    # an existing report is refused before any work, unless --overwrite
    assert "exists" in one_line_error(run("detect", "--data", str(poisoned), "--method", "simple",
                                          "--scores", str(csv_path)))
    # a purify step that fails loses nothing of the detection: its report is printed and its CSV written first
    failed = run("detect", "--data", str(poisoned), "--method", "simple", "--purify", "vae", "--purify-set",
                 "lr=1e6", "--purify-set", "epochs=1", "--out", str(tmp_path / "never"), "--scores",
                 str(tmp_path / "kept.csv"))
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines()[-1].startswith("error: VAE: the loss is no longer finite")
    assert "vae: preset fast, its CPU budget (--purify-set preset=none" in failed.stderr  # detect's flag, not --set
    assert f"simple: flagged {res['flagged']} of {len(before)}" in failed.stdout and "f1: " in failed.stdout
    assert (tmp_path / "kept.csv").read_text() == csv_path.read_text() and not (tmp_path / "never").exists()
    # --drop: the same flags, the set saved without them; what the detector missed stays known, renumbered
    res = json.loads(run("detect", "--data", str(poisoned), "--method", "simple", "--drop",
                         "--out", str(tmp_path / "kept"), "--json", check_rc=0).stdout)
    kept = load_set(tmp_path / "kept")
    rest = np.setdiff1d(np.arange(len(before)), flagged)
    assert res["flagged"] == len(flagged) and len(kept) == len(rest) == len(before) - len(flagged)
    assert np.array_equal(kept.x, before.x[rest]) and np.array_equal(kept.y, before.y[rest])
    assert kept.provenance["source_index"] == np.asarray(before.provenance.get("source_index", np.arange(
        len(before))))[rest].tolist()
    missed = np.intersect1d(rest, before.provenance["changed"])
    assert kept.provenance["changed"] == np.searchsorted(rest, missed).tolist()
    assert kept.provenance["dropped"] == {"by": "simple", "count": len(flagged), "of": len(before)}


def test_detect_checks_the_set_only_against_a_test_split_of_its_own(tmp_path, small_train, small_test,
                                                                    monkeypatch):
    from unlearnable.data import export_png

    monkeypatch.setenv("UNLEARNABLE_CACHE", str(tmp_path / "cache"))
    export_png({"train": small_train.take(200)}, tmp_path / "alone")
    out = run("detect", "--data", f"folder:{tmp_path / 'alone'}", "--method", "simple", check_rc=0).stdout
    assert "set: not checked" in out  # its test split would be carved out of the suspect images
    export_png({"train": small_train.take(200), "test": small_test.take(100)}, tmp_path / "both")
    res = json.loads(run("detect", "--data", f"folder:{tmp_path / 'both'}", "--method", "simple", "--json",
                         check_rc=0).stdout)
    assert (res["set"]["heldout"], res["set"]["test"], res["set"]["poisoned"]) == (40, 100, False), res["set"]
    out = run("detect", "--data", f"folder:{tmp_path / 'both'}", "--method", "simple", check_rc=0).stdout
    assert "a set this small hides gaps under the threshold" in out  # 40 held-out images: ~26 points of noise
    # the contrast detector needs trusted images: the carved folder has none of its own, --reference supplies them
    assert "pass --reference" in one_line_error(run("detect", "--data", f"folder:{tmp_path / 'alone'}", "--method",
                                                    "contrast", check_rc=2))
    p = run("detect", "--data", f"folder:{tmp_path / 'alone'}", "--method", "contrast", "--reference",
            f"folder:{tmp_path / 'both'}", "--json", "--scores", str(tmp_path / "s.csv"), check_rc=0)
    res = json.loads(p.stdout)
    # 'both' holds all 200 images of 'alone', suspects though 40 of them go unscored: they are no reference
    assert "its seeded training split (160 images) is scored, the 40 others are not" in p.stderr, p.stderr
    assert "200 of its images are also in the suspect set" in p.stderr, p.stderr
    assert res["method"] == "contrast" and res["params"]["reference"] == 100 and res["set"]["test"] == 100, res
    assert "is the suspect data itself" in one_line_error(run(
        "detect", "--data", f"folder:{tmp_path / 'alone'}", "--reference", f"folder:{tmp_path}/./alone"))
    header = (tmp_path / "s.csv").read_text().splitlines()[0]
    assert header == "index,file,label,class,score,score_linear,score_network,flagged", header
    assert set(res["verdict"]) == {"share", "expected", "threshold", "differs"}, res
    out = run("detect", "--data", f"folder:{tmp_path / 'alone'}", "--method", "contrast", "--reference",
              f"folder:{tmp_path / 'both'}", check_rc=0).stdout
    # suspect and reference images are alike here (clean Fashion-MNIST): nothing sets them apart
    assert "of clean images are flagged by design: no more than that" in out, out


def test_detect_reference_from_the_suspects_own_source_is_its_test_split(tmp_path):
    """Its training split holds the suspects' clean twins: as a reference it would hide them (review, session 46)."""
    out = tmp_path / "rn"
    run("poison", "--attack", "random-noise", "--subset", "300", "--out", str(out), check_rc=0)
    p = run("detect", "--data", str(out), "--method", "simple", "--reference", "fashion-mnist", "--json", check_rc=0)
    assert "only its 10000 test images are used" in p.stderr, p.stderr
    assert json.loads(p.stdout)["set"]["test"] == 10000


def test_an_npz_reference_named_relatively_is_still_the_suspects_source(tmp_path, monkeypatch, small_train):
    """Manifests record absolute sources; a relative npz spec must still be recognised as the same file."""
    sub = small_train.take(300)
    np.savez(tmp_path / "src.npz", x=sub.x[:200], y=sub.y[:200], x_test=sub.x[200:], y_test=sub.y[200:])
    monkeypatch.chdir(tmp_path)
    run("poison", "--attack", "random-noise", "--data", "npz:src.npz", "--out", "rn", check_rc=0)
    p = run("detect", "--data", "rn", "--method", "simple", "--reference", "npz:./src.npz", "--json", check_rc=0)
    assert "only its 100 test images are used" in p.stderr, p.stderr


def test_deepconfuse_poison_saves_its_generator_for_protect(tmp_path):
    out = tmp_path / "dc"
    run("poison", "--attack", "deepconfuse", "--set", "preset=smoke", "--eps", "0.3", "--subset", "300",
        "--out", str(out), check_rc=0)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["artifacts"]["generator.safetensors"]["eps"] == pytest.approx(0.3)
    assert "generator.safetensors" in manifest["sha256"]
    trials = manifest["outcome"]["holdout_clean_acc"]  # what the trials scored, in the manifest and in `info`
    assert len(trials) == 2 and f"holdout_clean_acc={trials}" in run("info", str(out), check_rc=0).stdout
    from unlearnable.data import export_png, load_set

    export_png({"train": load_set(out).subset(np.arange(40)), "test": load_set(out).subset(np.arange(40, 60))},
               tmp_path / "f")  # (its images, as new ones: a folder carries no poison record)
    run("protect", "--generator", str(out), "--data", f"folder:{tmp_path / 'f'}", "--out", str(tmp_path / "new"),
        check_rc=0)
    again = json.loads((tmp_path / "new" / "manifest.json").read_text())
    assert again["method"] == "deepconfuse" and max(again["norms"]["linf"]) <= 76 / 255 + 1e-6
    # the poisoned set itself is refused: a second perturbation on it would break the budget against its clean images
    assert "already poisoned (deepconfuse)" in one_line_error(run("protect", "--generator", str(out), "--data",
                                                                  str(out), "--out", str(tmp_path / "twice")))
    assert "would overwrite the input" in one_line_error(run("export", str(out), "--out", str(out), "--overwrite"))
    assert "give ratio as --ratio" in one_line_error(run("poison", "--attack", "random-noise", "--set", "ratio=0.2",
                                                         "--out", str(tmp_path / "r")))
    gen = out / "generator.safetensors"  # an edited generator (any budget) in the set: the manifest's hash says so
    gen.write_bytes(gen.read_bytes()[:-4] + b"\0\0\0\0")
    assert "does not match the SHA-256" in one_line_error(run("protect", "--generator", str(out), "--data",
                                                              f"folder:{tmp_path / 'f'}", "--out", str(tmp_path / "t")))


def test_outputs_never_land_in_a_saved_sets_source_and_json_is_strict(tmp_path, small_train):
    """export / purify into the folder or npz a saved set was made from corrupted it (a new 'class', a deleted
    npz) and every later command on the set; --json printed bare NaN (a scikit-learn victim's loss)."""
    sub = small_train.take(40)
    np.savez(tmp_path / "src.npz", x=sub.x, y=sub.y)
    from unlearnable.data import export_png

    export_png({"train": sub}, tmp_path / "tree")
    for spec, out in ((f"npz:{tmp_path / 'src.npz'}", tmp_path / "src.npz"),
                      (f"folder:{tmp_path / 'tree' / 'train'}", tmp_path / "tree" / "train" / "more")):
        saved = tmp_path / f"p{len(str(out))}"
        run("poison", "--attack", "random-noise", "--data", spec, "--out", str(saved), check_rc=0)
        for cmd in (("export", str(saved)), ("purify", "--defense", "jpeg", "--data", str(saved))):
            error = one_line_error(run(*cmd, "--out", str(out), "--overwrite"))
            assert "would overwrite the input" in error and "the source of" in error, error
    assert (tmp_path / "src.npz").is_file() and not (tmp_path / "tree" / "train" / "more").exists()
    grid = tmp_path / "tree" / "train" / "grid.png"  # a file in the source folder would be one more image there
    assert "--grid" in one_line_error(run("info", str(saved), "--grid", str(grid)))
    assert run("info", str(saved), "--grid", str(saved / "grid.png"), check_rc=0)  # beside its arrays: harmless
    p = run("train", "--data", str(saved), "--model", "random-forest", "--epochs", "2", "--json", check_rc=0)
    summary = json.loads(p.stdout, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert summary["history"][0]["train_loss"] is None and "does not apply" in p.stderr


def test_an_input_not_given_is_no_folder_named_none(tmp_path, monkeypatch):
    """An optional input left out (``detect --reference``) was checked as the path 'None': an --out inside a folder
    of that name in the working directory was refused as overwriting an input."""
    from unlearnable.cli import _clear_of_inputs

    monkeypatch.chdir(tmp_path)
    (tmp_path / "None").mkdir()
    _clear_of_inputs(Path("None") / "out", "--out", (None, str(tmp_path / "elsewhere")))
    with pytest.raises(Exception, match="would overwrite the input"):
        _clear_of_inputs(Path("None") / "out", "--out", ("None",))


def test_demo_writes_its_table_sets_and_grid(tmp_path, monkeypatch, small_train, small_test):
    """The demo's plumbing (the README's first command), on 300 images with cheap stand-ins for its attack and
    D-VAE: every stage runs, the table has one row per victim and says its setting, the sets and grid are saved."""
    from unlearnable import demo
    from unlearnable.data import load_set
    from unlearnable.errors import UnlearnableError
    from unlearnable.training import TrainConfig

    monkeypatch.setattr(demo, "load", lambda spec: (small_train.take(300, seed=0), small_test.take(200, seed=0)))
    monkeypatch.setattr(demo, "DEMO_ATTACK", ("random-noise", {"mode": "class"}))
    monkeypatch.setattr(demo, "DEMO_DEFENSES", (("jpeg", {}), ("dvae", {"preset": "fast", "epochs": 1, "width": 4,
                                                                          "min_steps": 0})))
    rows = demo.run_demo(out=tmp_path, eps=0.1, subset=None, cfg=TrainConfig(epochs=1))  # 25.5 levels: 25 moved
    assert [r["training data"] for r in rows] == ["clean", "random-noise (25/255)", "random-noise + jpeg",
                                                  "random-noise + dvae"]
    assert all(0 <= r["test_acc"] <= 1 for r in rows)
    text = (tmp_path / "results.md").read_text()
    assert "25/255" in text and "26/255" not in text and "victim cnn (width=16)" in text  # budget, victim, and
    assert "purifiers jpeg (defaults), dvae (preset=fast, epochs=1, width=4, min_steps=0)" in text  # its settings
    assert text.count("\n| ") == 5  # the header and four rows
    assert (tmp_path / "grid.png").stat().st_size > 1000
    poisoned = load_set(tmp_path / "poisoned")
    assert len(poisoned) == 300 and len(load_set(tmp_path / "purified-dvae")) == 300
    assert np.abs(poisoned.x.astype(int) - small_train.take(300, seed=0).x).max() == 25
    demo.check_demo_out(tmp_path)  # a second run may replace an earlier demo's results ...
    (tmp_path / demo.MARK).unlink()
    demo.check_demo_out(tmp_path)  # ... those of a version before the mark too ...
    monkeypatch.setattr(demo, "DEMO_DEFENSES", (("dvae", {"batch_size": 1000}),))  # fails after two victims
    with pytest.raises(UnlearnableError, match="fewer than one batch"):
        demo.run_demo(out=tmp_path, eps=32 / 255, subset=None, cfg=TrainConfig(epochs=1))
    assert (tmp_path / "results.md").read_text() == text  # the earlier result, whole; nothing half-written
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    with pytest.raises(UnlearnableError, match="not empty; pass --overwrite"):  # ... not a folder of the user's
        demo.check_demo_out(tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnlearnableError, match="holds the current directory"):
        demo.check_demo_out(Path("."), overwrite=True)
    with pytest.raises(UnlearnableError, match="below one 8-bit level"):  # before the first victim, not after it
        demo.run_demo(out=tmp_path / "new", eps=1 / 1000, cfg=TrainConfig(epochs=1))
    assert not (tmp_path / "new").exists()


def test_import_generator_makes_an_official_generator_ours_for_protect(tmp_path):
    """A state dict of the official MNIST generator becomes a generator file that ``protect`` uses; a file that is
    not one, or a layout it does not fit, is one line and no output."""
    import torch

    from unlearnable.attacks.deepconfuse import build_generator

    official = {f"layer{i}": t for i, t in enumerate(build_generator("ae-official", 1, 28, 0.3).state_dict().values())}
    torch.save(official, tmp_path / "atk.pt")  # the official tensors in the official order, under other names
    err = run("import-generator", str(tmp_path / "atk.pt"), "--arch", "ae-official", "--eps", "0.3", "--out",
              str(tmp_path / "g.safetensors"), check_rc=0).stderr
    assert "ae-official generator at eps 0.3 (288,963 weights)" in err, err
    x, y = np.random.default_rng(0).integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20) % 2
    np.savez(tmp_path / "new.npz", x=x, y=y)
    run("protect", "-g", str(tmp_path / "g.safetensors"), "--data", f"npz:{tmp_path / 'new.npz'}", "--out",
        str(tmp_path / "out"), check_rc=0)
    assert "not its weights" in one_line_error(run(
        "import-generator", str(tmp_path / "atk.pt"), "--arch", "deep-official", "--eps", "0.1", "--out",
        str(tmp_path / "h.safetensors"), subprocess_=True))
    assert not (tmp_path / "h.safetensors").exists()
    assert "exists" in one_line_error(run("import-generator", str(tmp_path / "atk.pt"), "--arch", "ae-official",
                                          "--eps", "0.3", "--out", str(tmp_path / "g.safetensors"), subprocess_=True))


def test_protect_png_keeps_every_image_of_a_folder_under_its_name(tmp_path, monkeypatch):
    """The data owner's use: a folder in, the same tree of protected PNGs out (the 20% a folder's split would hold
    out included), each file within the generator's budget; a saved set says which images it leaves out."""
    import torch
    from PIL import Image

    from unlearnable.attacks.deepconfuse import build_generator, save_generator

    monkeypatch.setenv("UNLEARNABLE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    g = build_generator("ae", 1, 28, eps=16 / 255)
    for m in g.modules():  # batch-norm statistics of one batch: an untrained generator that uses its budget
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    with torch.no_grad():
        g.train()(torch.rand(64, 1, 28, 28))
    save_generator(g.eval(), tmp_path / "g.safetensors")
    rng = np.random.default_rng(0)
    names = [f"{c}/{c[0]}{i}.{'jpg' if i == 0 else 'png'}" for c in ("coats", "shoes") for i in range(5)]
    for name in names:
        (tmp_path / "new" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / "new" / name)
    run("protect", "-g", str(tmp_path / "g.safetensors"), "--data", f"folder:{tmp_path / 'new'}", "--png",
        "--out", str(tmp_path / "out"), check_rc=0)
    written = sorted(str(p.relative_to(tmp_path / "out" / "train")) for p in (tmp_path / "out").rglob("*.png"))
    assert written == sorted(str(Path(n).with_suffix(".png")) for n in names), written
    changed = 0
    for name in names:
        before = np.asarray(Image.open(tmp_path / "new" / name), dtype=np.int16)
        after = np.asarray(Image.open(tmp_path / "out" / "train" / Path(name).with_suffix(".png")), dtype=np.int16)
        assert np.abs(after - before).max() <= 16, name
        changed += bool((after != before).any())
    assert changed == len(names)
    out = run("protect", "-g", str(tmp_path / "g.safetensors"), "--data", f"folder:{tmp_path / 'new'}",
              "--out", str(tmp_path / "set"), check_rc=0).stderr
    assert "protected 8 images" in out and "the 2 images of its test split are not in a saved set" in out, out
    err = run("export", str(tmp_path / "set"), "--out", str(tmp_path / "png"), check_rc=0).stderr
    assert "holds the 2 images of the source that its seeded split keeps out, clean" in err, err
    exported = sorted(p.relative_to(tmp_path / "png") for p in (tmp_path / "png").rglob("*.png"))
    assert sorted(str(p.relative_to(p.parts[0])) for p in exported) == written  # every file under its own name
    assert [p.parts[0] for p in exported].count("test") == 2
    # an npz likewise: every row (its seeded test split's too), named by its row number, not by its place in a split
    x, y = rng.integers(0, 256, (20, 28, 28), dtype=np.uint8), np.arange(20) % 2
    np.savez(tmp_path / "rows.npz", x=x, y=y, classes=np.array(["coats", "shoes"]))
    run("protect", "-g", str(tmp_path / "g.safetensors"), "--data", f"npz:{tmp_path / 'rows.npz'}", "--png",
        "--out", str(tmp_path / "rows"), check_rc=0)
    assert len(list((tmp_path / "rows").rglob("*.png"))) == 20
    for i in range(20):
        row = np.asarray(Image.open(tmp_path / "rows" / "train" / ("coats", "shoes")[y[i]] / f"{i:06d}.png"), np.int16)
        assert np.abs(row - x[i]).max() <= 16, i  # another row differs by ~100 levels
    err = run("protect", "-g", str(tmp_path / "g.safetensors"), "--data", f"npz:{tmp_path / 'rows.npz'}",
              "--out", str(tmp_path / "rowset"), check_rc=0).stderr
    assert "protected 16 images" in err and "the 4 images of its test split are not in a saved set" in err, err
    for p in g.parameters():  # a generator whose output is zero: every image comes out as it went in
        p.data.zero_()
    save_generator(g, tmp_path / "zero.safetensors")
    for split in ("train", "test"):
        for c in ("coats", "shoes"):
            (tmp_path / "tt" / split / c).mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / "tt" / split / c / "a.png")
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(tmp_path / "tt" / "train" / "coats" / "a.jpg")
    err = run("protect", "-g", str(tmp_path / "zero.safetensors"), "--data", f"folder:{tmp_path / 'tt'}", "--png",
              "--out", str(tmp_path / "z"), check_rc=0).stderr
    assert "warning: 5 of the 5 images it meant to change are identical" in err, err  # the test split counted too
    assert "1 files renamed where their names would meet: train/coats/a.jpg -> train/coats/a-" in err, err
    kept, own = (np.asarray(Image.open(d / "train" / "coats" / "a.png")) for d in (tmp_path / "z", tmp_path / "tt"))
    assert np.array_equal(kept, own)  # a.png keeps its own name (the zero generator changed no pixel)


def test_dvae_check_warns_when_its_p_hat_is_no_perturbation(tmp_path, monkeypatch):
    """A degenerate D-VAE fit (tiny settings) gave p_hat RMS 280 levels of 255, reported as a measurement."""
    from unlearnable.defenses import dvae

    run("poison", "--attack", "random-noise", "--subset", "100", "--out", str(tmp_path / "p"), check_rc=0)
    for rms, warned in ((1.1, True), (0.05, False), (0.4, True), (0.09, False)):  # the set's budget: 8/255
        monkeypatch.setattr(dvae, "dvae_check", lambda *a, rms=rms, **k: {"test_acc": 0.5, "p_rms": rms})
        p = run("dvae-check", "--data", str(tmp_path / "p"), check_rc=0)
        assert ("the D-VAE fit degenerated" in p.stderr) == warned, p.stderr


def test_a_source_folder_changed_since_the_set_was_made_is_refused(tmp_path, monkeypatch):
    """Files added to a folder re-drew its seeded test split: `train` tested on 4 of the set's own training images
    (and edited files made `info` report a perturbation of 255 levels), with no word."""
    from PIL import Image

    monkeypatch.setenv("UNLEARNABLE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for c in range(3):
        (tmp_path / "src" / f"c{c}").mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(tmp_path / "src" / f"c{c}" / f"{i}.png")
    out = tmp_path / "set"
    run("poison", "--attack", "random-noise", "--data", f"folder:{tmp_path / 'src'}", "--out", str(out), check_rc=0)
    p = run("train", "--data", str(out), "--model", "svm-linear", "--recipe", "deepconfuse-paper", check_rc=0)
    assert "svm-linear is fitted once by scikit-learn: --recipe does not apply to it" in p.stderr  # not silently
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(tmp_path / "src" / "c0" / "3.png")  # one file edited
    assert "has changed since this set was made" in one_line_error(run("train", "--data", str(out)))
    assert "vs clean:   unavailable" in run("info", str(out), check_rc=0).stdout
    # a set from before the digests: the training files' names are checked
    from unlearnable.data import load_set, reload_source

    old = load_set(out)
    del old.provenance["source_digest"]
    reload_source(old)  # same names: fine
    (tmp_path / "src" / "c1" / "0.png").rename(tmp_path / "src" / "c1" / "z.png")
    with pytest.raises(Exception, match="has changed since this set was made"):
        reload_source(old)


def test_a_budget_between_levels_is_said(tmp_path):
    p = run("poison", "--attack", "random-noise", "--eps", "0.031", "--subset", "20", "--out", str(tmp_path / "o"),
            check_rc=0)
    assert "7.91 levels" in p.stderr and "7/255" in p.stderr
    p = run("poison", "--attack", "random-noise", "--eps", "8/255", "--subset", "20", "--out", str(tmp_path / "p"),
            check_rc=0)
    assert "levels of 1/255" not in p.stderr


def test_an_unwritable_out_is_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("x")
    for args in (["poison", "--attack", "random-noise", "--out", str(tmp_path / "afile" / "sub")],
                 ["info", str(tmp_path), "--grid", str(tmp_path / "afile" / "g.png")]):
        assert "is a file, not a folder" in one_line_error(run(*args))
    if Path("/proc/self").is_dir():  # a folder os.access calls writable for root, where no file can be made
        err = one_line_error(run("poison", "--attack", "random-noise", "--out", "/proc/unlearnable-out"))
        assert "cannot write in /proc" in err
    from unlearnable.data.store import torch_save_atomic

    with pytest.raises(OSError):  # torch.save's own open raised a RuntimeError, a traceback for every state file
        torch_save_atomic({"a": 1}, tmp_path / "afile" / "x.pt")


def test_a_collapsed_purifier_is_refused_not_saved(small_train):
    """A VAE fit at lr=10 kept finite losses and purified every image to black: saved, exit 0."""
    from unlearnable.defenses.base import Purifier
    from unlearnable.errors import UnlearnableError

    class Flat(Purifier):  # a learned purifier (its own fit) whose fit collapsed
        name = "flat"

        def fit(self, data):
            return self

        def purify(self, x, y):
            return np.zeros_like(x)

    with pytest.raises(UnlearnableError, match="one flat value"):
        Flat().transform(small_train.take(20))
    blank = small_train.take(20).replace(x=np.zeros_like(small_train.take(20).x))
    assert Flat().transform(blank).x.max() == 0  # flat in, flat out: nothing collapsed

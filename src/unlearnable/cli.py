"""The command line: thin over the library. Parses, calls, prints. Heavy imports happen inside the commands."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import UnlearnableError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Availability data poisoning (unlearnable examples) and the defenses against it.")

KINDS = ("attacks", "defenses", "models", "datasets", "recipes")


def _registry(kind: str):
    if kind == "attacks":
        from .attacks import ATTACKS as reg
    elif kind == "defenses":
        from .defenses import DEFENSES as reg
    elif kind == "models":
        from .models import MODELS as reg
    elif kind == "datasets":
        from .data.sources import DATASETS as reg
    elif kind == "recipes":
        from .recipes import RECIPES as reg
    else:
        raise UnlearnableError(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    return reg


@app.command("list")
def list_(kind: str = typer.Argument(..., help="attacks, defenses, models, datasets or recipes")) -> None:
    """List the registered attacks, defenses, models, datasets or victim recipes."""
    from rich.console import Console
    from rich.table import Table

    reg = _registry(kind)
    table = Table(show_header=True, header_style="bold")
    table.add_column(kind[:-1])
    table.add_column("what it is")
    for name in reg.names():
        table.add_row(name, reg.describe(name))
    Console().print(table)


#: What a method runs without the CPU preset: its defaults are its paper's, except the surrogate attacks' network
PRESET_HELP = ("preset=none: the method's defaults, the paper's settings except that em, rem, tap and sep craft "
               "against the small cnn; preset=paper: theirs; deepconfuse's preset=smoke: seconds, no attack")
PURIFY_PRESET_HELP = "preset=none: the defense's defaults (its paper's and official code's settings)"


def _cpu_preset(options: dict, cls: type, name: str, flag: str = "--set") -> None:
    """On a CPU a method with a ``fast`` preset runs it unless ``--set preset=...`` names one (:data:`PRESET_HELP`;
    ``flag`` is the option that sets the method's options, ``--purify-set`` in ``detect``):
    defaults that finish on a laptop. At their papers' settings DeepConfuse (500 trials of ~150-230 s
    here for the official code, issue 4) and the D-VAE (2 x 60 epochs at full width) would run for about a day and
    many hours on two cores; each preset is documented with its method."""
    if "preset" in options or "fast" not in getattr(cls, "presets", {}):
        return
    from .training import resolve_device

    if resolve_device(str(options.get("device", "auto"))).type == "cpu":
        options["preset"] = "fast"
        other = (f"{flag} preset=none: its defaults, with the small cnn surrogate; preset=paper: the paper's "
                 "settings" if "paper" in cls.presets else f"{flag} preset=none: the paper's settings")
        _say(f"{name}: preset fast, its CPU budget ({other})")


def _check_out(out: Path, overwrite: bool, *inputs: Optional[str]) -> None:
    """Refuse a non-empty ``--out`` without ``--overwrite``, and one that is, holds or lies inside an input."""
    from .data.store import check_out_dir

    check_out_dir(out, overwrite)
    _clear_of_inputs(out, "--out", inputs)


def _check_out_file(path: Path, flag: str, overwrite: bool, suffix: str, *inputs: Optional[str]) -> None:
    """:func:`~unlearnable.data.store.check_out_file`, and refuse a file that is or lies inside an input."""
    from .data.store import check_out_file

    check_out_file(path, overwrite, suffix)
    _clear_of_inputs(path, flag, inputs, file=True)


def _clear_of_inputs(out: Path, flag: str, inputs: tuple, file: bool = False) -> None:
    """Refuse an output that is, holds or lies inside an input (a saved set's source folder or npz file included:
    its clean images are read again by every later command on the set). A ``file`` may lie in a saved set's own
    folder (a grid beside its arrays changes nothing that is read), not in an image folder (it would be an image)."""
    from .data.sources import spec_path
    from .data.store import is_saved_set, read_manifest

    target = out.resolve()
    for spec in map(str, filter(None, inputs)):  # an input not given (None) is no folder named 'None'
        saved = is_saved_set(spec)
        # a dataset spec's path, or a saved set's folder (a .png / .csv cannot be one of its arrays or its manifest)
        paths = [] if saved and file else [(spec_path(spec) or Path(spec).expanduser(), spec)]
        if saved:
            source = str(read_manifest(spec).get("source") or "")
            if spec_path(source) is not None:
                paths.append((spec_path(source), f"{source}, the source of {spec}"))
        for path, what in paths:
            if not path.exists():
                continue
            path = path.resolve()
            if target == path or target in path.parents or path in target.parents:
                raise UnlearnableError(f"{flag} {out} would overwrite the input {what}; give another place")


@app.command()
def poison(
    attack: str = typer.Option(..., "--attack", "-a", help="attack name (unlearnable list attacks)"),
    data: str = typer.Option("fashion-mnist", "--data", "-d", help="dataset spec: fashion-mnist, folder:PATH..."),
    out: Path = typer.Option(..., "--out", "-o", help="directory to write the poisoned set to"),
    eps: Optional[str] = typer.Option(None, help="budget: 8/255, 0.0314, or 8 with --eps-unit levels"),
    eps_unit: str = typer.Option("unit", help="unit of --eps: 'unit' ([0, 1] scale) or 'levels' (0..255)"),
    norm: Optional[str] = typer.Option(None, help="the budget's norm (default: the attack's; every landed attack "
                                       "takes linf)"),
    ratio: float = typer.Option(1.0, help="fraction of training samples to poison, in (0, 1]"),
    seed: int = typer.Option(0, min=0, help="random seed"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="attack parameter key=value (repeatable); on a "
                                             f"CPU preset=fast unless given ({PRESET_HELP})"),
    subset: Optional[int] = typer.Option(None, min=1, help="use a seeded class-balanced subset of N training images"),
    overwrite: bool = typer.Option(False, help="replace a non-empty --out"),
) -> None:
    """Poison a dataset's training split and save it with its manifest."""
    from .params import parse_eps, parse_sets

    options = parse_sets(set_)
    _own_options(options, "ratio", "seed", "eps", "norm")
    options.update(ratio=ratio, seed=seed)
    if eps is not None:
        options["eps"] = parse_eps(eps, eps_unit)
    if norm is not None:
        options["norm"] = norm
    from .attacks import ATTACKS, create_attack
    from .attacks.base import require_unperturbed

    if eps is not None and not ATTACKS.get(attack).changes_images:  # recorded, but no pixel changes
        raise UnlearnableError(f"{attack} changes labels only: --eps does not apply to it")
    _cpu_preset(options, ATTACKS.get(attack), attack)
    atk = create_attack(attack, **options)
    from .data.store import between_levels, budget_levels

    if eps is not None and atk.norm == "linf" and between_levels(atk.eps):  # 0.031: 7
        _say(f"--eps {eps} is {atk.eps * 255:.2f} levels of 1/255: the budget is the whole levels below it, "
             f"{budget_levels(atk.eps)}/255")
    _check_out(out, overwrite, data)
    from .data import load, save_set

    train, _ = load(data)
    require_unperturbed(train, data)  # a perturbation on a perturbed set: refused before any work
    if subset:
        train = _take(train, subset, seed)
    _say(f"poisoning {len(train)} images of {train.source} with {attack} ...")
    _resumable(atk, _state_next_to(out))
    poisoned = atk.poison(train)
    files = {name: blob for name, (blob, _) in atk.artifacts().items()}  # e.g. DeepConfuse's generator
    save_set(poisoned, out, clean=train, overwrite=overwrite, extra_files=files)
    atk.clear_state()
    _say(f"saved {out} ({len(poisoned.provenance['changed'])} samples changed, "  # the attack warns of any it
         f"{poisoned.provenance['crafting_seconds']} s)")  # meant to change that 8-bit rounding left as they were


def _take(data, n: int, seed: int):
    """``--subset N``: a seeded class-balanced subset, or the whole set (said so) when it has no more than N."""
    if n >= len(data):
        _say(f"--subset {n}: the set has {len(data)} training images, all used")
    return data.take(n, seed=seed)


def _own_options(options: dict, *names: str) -> None:
    """Options the command has flags for are refused in ``--set``, where the flag's default would override them."""
    for name in names:
        if name in options:
            raise UnlearnableError(f"give {name} as --{name}, not --set {name}=...")


def _unchanged_note(pairs) -> str:
    """A warning when 8-bit rounding left images ``protect`` meant to change identical to their input (an attack's
    ``poison`` leaves them out of its record and says so itself); ``pairs``: (protected, input) sets."""
    import numpy as np

    from .data.imageset import images_differ

    same = total = 0
    for saved, clean in pairs:
        changed = np.asarray(saved.provenance.get("changed", np.arange(len(saved))), dtype=np.int64)
        same += int((~images_differ(np.asarray(saved.x)[changed], np.asarray(clean.x)[changed])).sum())
        total += len(changed)
    if not same:
        return ""
    return (f"; warning: {same} of the {total} images it meant to change are identical to their input after "
            "8-bit rounding (a perturbation under half a level)")


@app.command()
def purify(
    defense: Optional[str] = typer.Option(None, "--defense", help="defense name (unlearnable list defenses), "
                                          "fitted on --data"),
    data: str = typer.Option(..., "--data", "-d", help="a saved set directory, or a dataset spec"),
    out: Path = typer.Option(..., "--out", "-o", help="directory to write the purified set to"),
    purifier: Optional[Path] = typer.Option(None, "--purifier", help="instead of --defense: a purifier fitted "
                                            "before (a set saved by `purify`, or its purifier.safetensors), "
                                            "applied to --data without fitting again"),
    seed: Optional[int] = typer.Option(None, min=0, help="random seed [default: 0]"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="defense parameter key=value (repeatable); on a "
                                             f"CPU preset=fast unless given ({PURIFY_PRESET_HELP})"),
    overwrite: bool = typer.Option(False, help="replace a non-empty --out"),
) -> None:
    """Fit a purifier on a (possibly poisoned) training set and save the purified set, or apply one fitted before.

    A learned purifier's weights are saved beside the set (purifier.safetensors); --purifier purifies new images with
    them, with no fitting."""
    from .params import parse_sets

    options = parse_sets(set_)
    if purifier is not None:
        return _purify_with_saved(purifier, data, out, defense, seed, options, overwrite)
    if defense is None:
        raise UnlearnableError("give --defense NAME (fit a purifier on --data) or --purifier PATH (one fitted before)")
    from .defenses import DEFENSES, create_defense

    _own_options(options, "seed")
    options["seed"] = seed or 0
    _cpu_preset(options, DEFENSES.get(defense), defense)
    pur = create_defense(defense, **options)
    _check_out(out, overwrite, data)
    from .data import load, save_set

    train, _ = load(data)
    _say(f"purifying {len(train)} images with {defense} ...")
    _resumable(pur, _state_next_to(out))
    purified = pur.fit(train).transform(train)
    if hasattr(pur, "label_sensitivity"):  # a purifier that reads the labels: say how much of them it wrote
        purified = _report_label_sensitivity(pur, train, purified)
    files = pur.artifacts()  # a learned purifier's weights, for --purifier
    save_set(purified, out, overwrite=overwrite, extra_files=files)
    pur.clear_state()
    _say(f"saved {out}" + (f" (and its weights: `purify --purifier {out}` purifies new images with them)" if files
                           else ""))


def _purify_with_saved(path: Path, data: str, out: Path, defense: Optional[str], seed: Optional[int],
                       options: dict, overwrite: bool) -> None:
    """``purify --purifier PATH``: a fitted purifier's weights applied to new images, as fitted (its method,
    options and sampling seed are the file's)."""
    for given, flag in ((defense, "--defense"), (seed, "--seed"), (options or None, "--set")):
        if given is not None:
            raise UnlearnableError(f"{flag} does not apply to a saved purifier (--purifier): it purifies with the "
                                   "method and options it was fitted with")
    from .data import load, save_set

    file, pur = _saved_purifier(path)
    _check_out(out, overwrite, data, str(path))
    train, _ = load(data)
    pur.check_applicable(train)  # before any work: images of another shape, classes of other names
    _say(f"purifying {len(train)} images with the {pur.name} of {file} (fitted before: no training) ...")
    purified = pur.transform(train, **_weights_note(file))
    save_set(purified, out, overwrite=overwrite, extra_files=_weights_copy(file))
    _say(f"saved {out} (with a copy of the weights: the set names and holds the purifier that made it)")


def _saved_purifier(path: Path, stage1_for: Optional[str] = None):
    """``--purifier PATH``: ``(its weights file, the fitted purifier)``; PATH is the file or a set that holds it.
    ``stage1_for``: what needs its stage-1 D-VAE (the end of the error for a purifier without one)."""
    from .defenses import load_purifier
    from .defenses.base import PURIFIER_FILE

    file = _saved_file(path, PURIFIER_FILE, ": a set keeps the weights of a learned purifier (vae, dvae) fitted "
                                            "for it, since 2026-12-07")
    pur = load_purifier(file)
    if stage1_for is not None and not hasattr(pur, "stage1_"):
        raise UnlearnableError(f"{file} holds a {pur.name} with no stage-1 D-VAE: {stage1_for}")
    return file, pur


def _weights_note(file: Path) -> dict[str, str]:
    """Where a purified set's weights came from, for its ``purified_by`` record: the file and its SHA-256."""
    from .data.store import sha256_file

    return {"weights": str(file.resolve()), "weights_sha256": sha256_file(file)}


def _weights_copy(file: Path) -> dict[str, bytes]:
    """A saved purifier's weights for the set it purifies (``extra_files``): that set holds them as one that `purify`
    fitted does, so it stays reusable (``--purifier SET``) wherever it is copied to and whatever happens to ``file``."""
    from .defenses.base import PURIFIER_FILE

    return {PURIFIER_FILE: file.read_bytes()}


def _report_label_sensitivity(pur, train, purified):
    """Print the D-VAE's label sensitivity and keep it in the provenance (a measurement, not a verdict: over 17 fits
    on Fashion-MNIST it did not predict the victim, BENCHMARKS.md, D-VAE, session 36)."""
    s = pur.label_sensitivity(train.x, train.y)
    _say(f"label sensitivity {s['ratio']:.2f}: shifting the labels moves the output by {s['moved']:.1f} of the "
         f"{s['changed']:.1f} levels (RMS) purification changes ({s['images']} images); it does not predict the "
         f"victim: train one on the result (`unlearnable train --data OUT`)")
    record = {**purified.provenance["purified_by"], "label_sensitivity": s}
    return purified.replace(provenance={**purified.provenance, "purified_by": record})


@app.command()
def train(
    data: str = typer.Option("fashion-mnist", "--data", "-d", help="dataset spec or saved set directory"),
    model: str = typer.Option("cnn", "--model", "-m", help="architecture (unlearnable list models)"),
    recipe: str = typer.Option("default", help="victim recipe (unlearnable list recipes): the package's, or a "
                               "paper's test protocol, e.g. deepconfuse-paper with --model lenet"),
    epochs: Optional[int] = typer.Option(None, help="epochs (default: the recipe's, at least the steps they make on "
                                         "60,000 images: the default's 3, 705 steps)"),
    lr: Optional[float] = typer.Option(None, help="peak learning rate"),
    batch_size: Optional[int] = typer.Option(None, help="batch size"),
    seed: int = typer.Option(0, min=0, help="random seed"),
    device: str = typer.Option("auto", help="auto, cpu or cuda"),
    subset: Optional[int] = typer.Option(None, min=1, help="train on a seeded class-balanced subset of N images"),
    json_: bool = typer.Option(False, "--json", help="print one JSON object instead of a table"),
) -> None:
    """Train a victim on a training set and test it on the CLEAN test split."""
    from .data import load
    from .data.store import json_text
    from .models import CLASSICAL, MODELS

    from .recipes import RECIPES

    MODELS.check(model)  # an unknown name fails before any data is read (and before torch is imported)
    RECIPES.check(recipe)
    from .training import train as fit

    trainset, testset = load(data)

    changes = {k: v for k, v in dict(epochs=epochs, lr=lr, batch_size=batch_size).items() if v is not None}
    unused = [*(["recipe"] if recipe != "default" else []), *changes]
    if model in CLASSICAL and unused:
        _say(f"{model} is fitted once by scikit-learn: {', '.join('--' + k.replace('_', '-') for k in unused)} "
             f"{'does' if len(unused) == 1 else 'do'} not apply to it")
    cfg = _victim_recipe(epochs, recipe, seed=seed, device=device,
                         **{k: v for k, v in changes.items() if k != "epochs"})
    if subset:
        trainset = _take(trainset, subset, seed)
    if not json_:
        _say(f"training {model} on {len(trainset)} images ({data}), testing on {len(testset)} clean images ...")
    if model not in CLASSICAL:
        _say_more_epochs(cfg, len(trainset), recipe)
    result = fit(trainset, testset, model, cfg)
    summary = {"data": data, "model": model, "recipe": recipe, **result.summary()}
    if json_:
        typer.echo(json_text(summary))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("epoch", "train acc", "test acc", "seconds")
    for h in [row for row in result.history if "test_acc" in row]:  # each epoch, or as often as 3 (min_steps)
        table.add_row(str(h["epoch"]), f"{h['train_acc']:.2%}", f"{h['test_acc']:.2%}",
                      f"{h['seconds']:.1f}")
    Console().print(table)
    typer.echo(f"clean test accuracy: final {result.test_acc:.2%}, peak {result.peak_test_acc:.2%}")


@app.command()
def export(
    data: str = typer.Argument(..., help="a saved set directory"),
    format: str = typer.Option("png", "--format", help="png (lossless ImageFolder tree)"),
    out: Path = typer.Option(..., "--out", "-o", help="output directory"),
    overwrite: bool = typer.Option(False, help="replace a non-empty --out"),
) -> None:
    """Export a saved set as an ImageFolder tree of PNGs: OUT/train/<class>/000123.png (+ the clean OUT/test).

    A set made from a folder keeps each file's own name (as .png)."""
    if format != "png":
        raise UnlearnableError(f"unknown format {format!r}; known: png")
    _check_out(out, overwrite, data)
    from .data import export_png, load
    from .progress import task

    train, test = load(data)
    with task("exporting", total=len(train) + len(test)) as advance:
        export_png({"train": train, "test": test}, out, overwrite=overwrite, progress=advance)
    from .data.store import class_folders

    carved = (f"; {out / 'test'} holds the {len(test)} images of the source that its seeded split keeps out, "
              f"clean" if test.provenance.get("carved") else "")
    _say(f"wrote {len(train)} + {len(test)} PNG files under {out}{carved}")
    _say_renamed({"train": train, "test": test})
    folders = class_folders(train.classes)
    renamed = [f"{c!r} -> {f}" for c, f in zip(train.classes, folders) if c != f]
    if renamed:
        _say(f"class folders renamed to be usable and distinct: {', '.join(renamed[:5])}"
             f"{' ...' if len(renamed) > 5 else ''}")
    if folders != sorted(folders):
        _say(f"note: --data folder:{out} numbers the classes in the folders' alphabetical order, not in this set's")


@app.command()
def info(
    data: str = typer.Argument(..., help="a saved set directory"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="also write a PNG: clean / saved / difference, one "
                                                             "image per class"),
    overwrite: bool = typer.Option(False, help="replace an existing --grid file"),
) -> None:
    """Show a saved set's manifest, perturbation norms and PSNR/SSIM against the clean images."""
    from .report import describe_set  # noqa: I001

    if grid is not None:
        _check_out_file(grid, "--grid", overwrite, ".png", data)
    typer.echo(describe_set(data, grid))


@app.command()
def demo(
    subset: int = typer.Option(10000, min=1, help="training images used (of 60,000)"),
    eps: str = typer.Option("32/255", help="attack budget (8/255 is weak on grey Fashion-MNIST)"),
    eps_unit: str = typer.Option("unit", help="unit of --eps: 'unit' ([0, 1] scale) or 'levels' (0..255)"),
    out: Path = typer.Option(Path("runs/demo"), help="where the demo writes its sets, table and images (an earlier "
                             "demo's are replaced)"),
    overwrite: bool = typer.Option(False, help="replace a non-empty --out that holds something else"),
) -> None:
    """The embedded end-to-end run on Fashion-MNIST: poison, purify, train victims, print a table."""
    from .demo import run_demo
    from .params import parse_eps

    run_demo(out=out, eps=parse_eps(eps, eps_unit), subset=subset, overwrite=overwrite)


@app.command()
def protect(
    generator: Path = typer.Option(..., "--generator", "-g", help="a saved DeepConfuse generator (.safetensors), "
                                   "or a set saved by `poison --attack deepconfuse` (its generator.safetensors)"),
    data: str = typer.Option(..., "--data", "-d", help="dataset spec (e.g. folder:PATH) or saved set"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for the protected set"),
    batch_size: int = typer.Option(256, min=1, help="images per forward pass"),
    png: bool = typer.Option(False, help="write an ImageFolder tree of PNGs instead of a saved set; for "
                             "folder:PATH every image of the folder, under its own file name (npz:PATH: every "
                             "row, named by its row number)"),
    overwrite: bool = typer.Option(False, help="replace a non-empty --out"),
) -> None:
    """Protect new images with a trained DeepConfuse generator: one forward pass, no retraining.

    A saved set holds the training split (a folder without train/ and test/, or an npz without x_test, keeps its
    seeded 20% test split out); --png protects every image of a folder and mirrors it: OUT/train/<class>/<file>.png
    (and OUT/test/ when the folder has train/ and test/); of an npz every row, as OUT/train/<class>/<row>.png (and
    OUT/test/ for x_test)."""
    _check_out(out, overwrite, data, str(generator))
    from .attacks.base import require_unperturbed
    from .attacks.deepconfuse import GENERATOR_FILE, load_generator, protect_set
    from .data import export_png, load, save_set
    from .data.sources import unsplit
    from .training import resolve_device

    gen = load_generator(_saved_file(generator, GENERATOR_FILE), resolve_device())
    train, test = load(data)
    require_unperturbed(train, data)  # a perturbation on a perturbed set: refused before any work
    own = data.startswith(("folder:", "npz:"))  # a saved set made from one is protected as the set it is
    carved = own and test.provenance.get("carved")  # one tree or array split 80/20 on loading
    if png and own:
        parts = {"train": unsplit(train, test)} if carved else {"train": train, "test": test}
    else:
        parts = {"train": train}
    protected = {split: protect_set(gen, part, batch_size=batch_size) for split, part in parts.items()}
    n = sum(len(p) for p in protected.values())
    if png:
        from .progress import task

        with task("writing", total=n) as advance:
            export_png(protected, out, overwrite=overwrite, progress=advance)
    else:
        save_set(protected["train"], out, clean=train, overwrite=overwrite)
    held = f" (the {len(test)} images of its test split are not in a saved set; --png protects all)"
    unchanged = _unchanged_note((protected[split], parts[split]) for split in protected)
    _say(f"protected {n} images -> {out}{held if carved and not png else ''}{unchanged}")
    if png:
        _say_renamed(protected)


@app.command("import-generator")
def import_generator(
    official: Path = typer.Argument(..., help="a generator file of kingfengji/DeepConfuse (a torch state dict: "
                                    "MNIST/pretrained/atkmnist_best.pt, ImageNet/pretrained/atk.0.100.best.pth)"),
    arch: str = typer.Option(..., help="its layout: ae-official (MNIST), unet-official (CIFAR), deep-official "
                             "(ImageNet)"),
    eps: str = typer.Option(..., help="the budget the official code scales its output by (MNIST 0.3, CIFAR "
                            "8/255 = 0.032, ImageNet 0.1)"),
    eps_unit: str = typer.Option("unit", help="unit of --eps: 'unit' ([0, 1] scale) or 'levels' (0..255)"),
    targeted: bool = typer.Option(False, help="it was trained towards eta(y) = y + 1 (MNIST/pretrained/"
                                  "atkmnist_target_best.pt); recorded in its config"),
    out: Path = typer.Option(..., "--out", "-o", help="the .safetensors file to write, for protect --generator"),
    overwrite: bool = typer.Option(False, help="replace an existing --out"),
) -> None:
    """Turn an official DeepConfuse generator (kingfengji/DeepConfuse) into ours, for `protect --generator OUT`."""
    _check_out_file(out, "--out", overwrite, ".safetensors", str(official))
    from .attacks.deepconfuse import import_official_generator, save_generator
    from .params import parse_eps

    gen = import_official_generator(official, arch, parse_eps(eps, eps_unit), targeted)
    save_generator(gen, out)
    _say(f"{arch} generator at eps {gen.eps:g} ({sum(p.numel() for p in gen.parameters()):,} weights) -> {out}")


def _say_renamed(parts: dict) -> None:
    """Name the files an exported tree could not keep under their own names (clashes: a.jpg beside a.png)."""
    from .data.store import renamed_files

    renamed = [(split, name, new) for split, part in parts.items() for name, new in renamed_files(part)]
    if renamed:
        shown = ", ".join(f"{split}/{name} -> {split}/{new}" for split, name, new in renamed[:5])
        _say(f"{len(renamed)} files renamed where their names would meet: {shown}{' ...' if len(renamed) > 5 else ''}")


def _saved_file(path: Path, name: str, hint: str = "") -> Path:
    """``--generator`` / ``--purifier``: the file itself, or the file ``name`` inside a saved set, checked against
    the SHA-256 its manifest records (an edited generator could have any budget); ``hint`` ends the error for a
    folder without it."""
    from .data.store import is_saved_set, read_manifest, verify_hashes

    if not path.is_dir():
        return path
    file = path / name
    digest = read_manifest(path)["sha256"].get(name) if is_saved_set(path) else None
    if digest is not None:
        verify_hashes(path, {"sha256": {name: digest}})
    elif not file.is_file():
        raise UnlearnableError(f"{path} holds no {name}{hint}")
    return file


@app.command()
def detect(
    data: str = typer.Option(..., "--data", "-d", help="the suspect set: a saved set directory or a dataset "
                             "spec (folder:PATH...)"),
    method: str = typer.Option("dvae", help="dvae (D-VAE residual), simple (a tiny model's fitting speed) or "
                               "contrast (a linear and a small conv classifier against trusted clean images)"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="detector option key=value (repeatable)"),
    reference: Optional[str] = typer.Option(None, "--reference", help="trusted clean images (a dataset spec or "
                                            "folder:PATH: all its images but copies of suspect ones; the suspect "
                                            "set's own source: its test split) for the set check and the contrast "
                                            "detector; default: the data's own clean test split"),
    purify_with: Optional[str] = typer.Option(None, "--purify", help="purify the flagged samples only with "
                                              "this defense (e.g. dvae) and save the set to --out"),
    purify_set: Optional[List[str]] = typer.Option(None, "--purify-set", help="purifier option key=value"),
    drop: bool = typer.Option(False, "--drop", help="save the set WITHOUT the flagged samples to --out "
                              "(instead of --purify)"),
    purifier: Optional[Path] = typer.Option(None, "--purifier", help="a purifier fitted before (a set saved by "
                                            "`purify`, or its purifier.safetensors), used with no fitting: a D-VAE "
                                            "scores the samples (--method dvae); with --out it purifies the "
                                            "flagged ones (instead of --purify)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="where --purify, --purifier or --drop writes the "
                                       "set"),
    overwrite: bool = typer.Option(False, help="replace a non-empty --out and existing --scores / --plot files"),
    scores: Optional[Path] = typer.Option(None, "--scores", help="write a CSV: every sample's index, file name "
                                          "(folder data), label, score, whether flagged (and poisoned, if known)"),
    plot: Optional[Path] = typer.Option(None, "--plot", help="write a PNG histogram of the scores and threshold"),
    json_: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Say whether a set looks poisoned, flag its poisoned samples, and purify or drop them.

    Says whether the set looks poisoned at all (a linear model's held-out accuracy against the clean test split),
    then scores every training sample and flags the poisoned ones; with a manifest, prints accuracy/precision/recall/F1.
    --scores lists which samples are flagged; with --purify, purify only the flagged samples and save the result;
    with --drop, save the set without them; with --purifier, score (D-VAE) or purify with weights fitted before."""
    from .data import load
    from .detect import check_options
    from .params import parse_sets

    options = parse_sets(set_)
    if drop and purify_with is not None:
        raise UnlearnableError("--drop and --purify exclude each other: drop the flagged samples or purify them")
    saved_file, saved = (None, None) if purifier is None else _detect_purifier(purifier, method, options, purify_with,
                                                                               purify_set, drop, out)
    purify_saved = saved is not None and out is not None and not drop  # the flagged samples, with --purifier
    if method == "dvae" and saved is None:
        options.setdefault("preset", "fast")
    check_options(method, options)
    defense = None
    if purify_set and purify_with is None:
        raise UnlearnableError("--purify-set sets an option of the --purify defense: give --purify DEFENSE too")
    if out is not None and not drop and purify_with is None and saved is None:
        raise UnlearnableError("--out is where --purify, --purifier or --drop writes its set: give one of them, or "
                               "leave --out out")
    if drop:
        if out is None:
            raise UnlearnableError("--drop needs --out (where to write the set without the flagged samples)")
    if purify_with is not None:
        if out is None:
            raise UnlearnableError("--purify needs --out (where to write the purified set)")
        from .defenses import DEFENSES, create_defense

        pur_options = parse_sets(purify_set)
        if purify_with == "dvae":
            pur_options.setdefault("preset", "fast")
        _cpu_preset(pur_options, DEFENSES.get(purify_with), purify_with, "--purify-set")  # as `purify` does
        defense = create_defense(purify_with, **pur_options)
    if out is not None:  # the set --drop, --purify or --purifier writes (the checks above leave no other use)
        _check_out(out, overwrite, data, reference, purifier)
    from .data.store import json_text

    for path, flag, suffix in ((scores, "--scores", ".csv"), (plot, "--plot", ".png")):
        if path is not None:
            _check_out_file(path, flag, overwrite, suffix, data, reference)
    train, test = load(data)
    from .data.store import is_saved_set
    from .detect import check_set
    from .detect import detect as run_detect

    unscored, carved = 0, None
    if test.provenance.get("carved") and not is_saved_set(data):
        # A test split carved out of the suspect images themselves would be as poisoned as the rest: no reference.
        unscored, carved, test = len(test), test, None
    if reference is not None:
        test = _reference_images(reference, train, carved)
    if method == "contrast":
        if test is None:
            raise UnlearnableError(f"the contrast detector needs trusted clean images: {data} has no test split of its "
                                   "own; pass --reference SPEC")
        options["reference"] = test
    if unscored:
        _say(f"{data} has no test split of its own: its seeded training split ({len(train)} images) is scored, the "
             f"{unscored} others are not (give a folder train/ and test/, an npz x_test and y_test, to choose them)")
    if saved is not None:
        saved.check_applicable(train)  # before any work: images of another shape, classes of other names
    verdict = None if test is None else check_set(train, test)
    state = None
    if method == "dvae" and saved is not None:
        options["dvae"] = saved  # scores with the saved D-VAE: no fit
    elif method == "dvae":
        state = _state_in_cache("detect", train, options)
    result = run_detect(train, method=method, checkpoint=state, keep_state=True, **options)
    changed = train.provenance.get("changed")
    summary = {"set": verdict, **result.summary(changed)}
    if saved is not None:
        summary["purifier"] = weights = _weights_note(saved_file)
    # The detection's own outputs first: a purify or drop step that fails or is stopped then loses none of them.
    if scores is not None:
        from .report import detection_csv

        summary["scores"] = str(detection_csv(train, result, scores))
    if plot is not None:
        from .report import score_histogram

        summary["plot"] = str(score_histogram(result, plot, changed))
    if not json_:
        _print_detection(summary, verdict, data, method, result)
    if defense is not None:
        from .data import save_set
        from .detect import purify_flagged

        _resumable(defense, _state_next_to(out))
        save_set(purify_flagged(train, result, defense), out, overwrite=overwrite, extra_files=defense.artifacts())
        defense.clear_state()
        summary["purified"] = str(out)
        if not json_:
            typer.echo(f"purified the {summary['flagged']} flagged samples with {purify_with}: saved {out}")
    elif purify_saved:
        from .data import save_set
        from .detect import purify_flagged

        save_set(purify_flagged(train, result, saved, fit=False, **weights), out, overwrite=overwrite,
                 extra_files=_weights_copy(saved_file))
        summary["purified"] = str(out)
        if not json_:
            typer.echo(f"purified the {summary['flagged']} flagged samples with the {saved.name} of {saved_file} "
                       f"(fitted before): saved {out}")
    if drop:
        from .data import save_set
        from .detect import drop_flagged

        save_set(drop_flagged(train, result), out, overwrite=overwrite)
        summary["dropped"] = str(out)
        if not json_:
            typer.echo(f"dropped the {summary['flagged']} flagged samples: saved the other "
                       f"{summary['samples'] - summary['flagged']} to {out}")
    if state is not None:  # everything is written: the detector's D-VAE is no longer needed
        Path(state).unlink(missing_ok=True)
    if json_:
        typer.echo(json_text(summary))


def _detect_purifier(path: Path, method: str, options: dict, purify_with: Optional[str], purify_set, drop: bool,
                     out: Optional[Path]):
    """``detect --purifier PATH``: ``(its weights file, the fitted purifier)``, once the flags agree on its use: a
    D-VAE scores the samples (``--method dvae``, with the options it was fitted with); with ``--out`` and no
    ``--drop`` it purifies the flagged ones."""
    if purify_with is not None or purify_set:
        raise UnlearnableError("--purifier and --purify exclude each other: purify the flagged samples with a "
                               "purifier fitted before (--purifier) or fitted now (--purify)")
    scores, purifies = method == "dvae", out is not None and not drop
    if not scores and not purifies:
        raise UnlearnableError(f"--purifier has no use here: the {method} detector fits its own model; give --out DIR "
                               "to purify the flagged samples with it (or --method dvae to score with a saved D-VAE)")
    extra = sorted(set(options) - {"score", "threshold"}) if scores else []
    if extra:
        raise UnlearnableError(f"--set {extra[0]} does not apply to a saved D-VAE (--purifier): it scores with the "
                               "options it was fitted with (score and threshold may be set)")
    return _saved_purifier(path, "the dvae detector reads stage 1's perturbation estimate (with --method contrast or "
                                 "simple and --out, it purifies the flagged samples)" if scores else None)


def _print_detection(summary: dict, verdict: dict | None, data: str, method: str, result) -> None:
    """``detect``'s report: the set check, the flags, the metrics (with a manifest) and the files written."""
    if verdict is None:
        typer.echo(f"set: not checked ({data} has no test split of its own to compare with)")
    else:
        if verdict["poisoned"]:
            answer = "it looks POISONED"
        elif verdict["threshold"] > verdict["margin"]:  # the threshold is the sampling noise, not the margin
            answer = "no sign of poisoning, but a set this small hides gaps under the threshold"
        else:
            answer = "no sign of poisoning"
        typer.echo(f"set: a linear model fitted on {summary['samples'] - verdict['heldout']} of its images scores "
                   f"{verdict['heldout_acc']:.1%} on the other {verdict['heldout']} and {verdict['test_acc']:.1%} on "
                   f"the clean test split (gap {100 * verdict['gap']:.1f} points, threshold "
                   f"{100 * verdict['threshold']:.1f}): {answer}")
    share, caveat = "", ""
    if method == "contrast":
        v = result.verdict
        share = f"{summary['flagged'] / summary['samples']:.1%}; "
        if v is not None:
            caveat = (f"; about {v['expected']:.0%} of clean images are flagged by design: "
                      + ("the set DIFFERS from the trusted images (poisoned, or another source or pipeline)"
                         if v["differs"] else "no more than that"))
    elif verdict is not None and not verdict["poisoned"]:
        caveat = "; Otsu's rule splits even a clean set"
    typer.echo(f"{method}: flagged {summary['flagged']} of {summary['samples']} ({share}threshold "
               f"{summary['threshold']:.4g}){caveat}")
    for k, v in summary.get("metrics", {}).items():
        typer.echo(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {'n/a (0 / 0)' if v is None else v}")
    for key in ("scores", "plot"):
        if key in summary:
            typer.echo(f"{key}: {summary[key]}")


def _same_source(a: str, b: str) -> bool:
    """Two dataset specs naming the same data (``folder:./x``, ``folder:x`` and the absolute path a manifest
    records; ``npz:`` likewise)."""
    from .data.sources import absolute_spec

    return absolute_spec(a) == absolute_spec(b)


def _reference_images(spec: str, suspect, unscored=None):
    """The trusted clean images of ``detect --reference``: every image of ``spec``, both splits, except copies of
    suspect images (the detectors and the set check need images independent of the suspect set); only the test
    split when ``spec`` is the suspect set's own source, whose training images are the suspects' clean twins.
    ``unscored``: the suspect folder's carved test split, suspect images too (never a reference)."""
    import hashlib

    import numpy as np

    from .data import load
    from .data.imageset import shape_text

    train, test = load(spec)
    if train.x.shape[1:] != suspect.x.shape[1:]:
        raise UnlearnableError(f"--reference {spec} holds {shape_text(train.x)} images but the suspect set "
                               f"{shape_text(suspect.x)} ones; the reference must look like the suspect set's clean "
                               "part")
    if _same_source(train.source, suspect.source):
        if unscored is not None:
            raise UnlearnableError(f"--reference {spec} is the suspect data itself; give trusted images from elsewhere")
        _say(f"--reference {spec} is where the suspect set comes from: only its {len(test)} test images are used")
        ref = test
    else:
        ref = test.replace(x=np.concatenate([train.x, test.x]), y=np.concatenate([train.y, test.y]))

    def digest(image):
        return hashlib.blake2b(image.tobytes(), digest_size=16).digest()

    seen = {digest(image) for part in (suspect, unscored) if part is not None for image in part.x}
    keep = np.array([digest(image) not in seen for image in ref.x], dtype=bool)
    if not keep.all():
        _say(f"--reference {spec}: {int((~keep).sum())} of its images are also in the suspect set; left out")
    if not keep.any():
        raise UnlearnableError(f"--reference {spec} holds no image that is not in the suspect set")
    return ref.replace(x=ref.x[keep], y=ref.y[keep], provenance={"reference": spec})


@app.command("dvae-check")
def dvae_check(
    data: str = typer.Option(..., "--data", "-d", help="a saved poisoned set"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="D-VAE option key=value (repeatable)"),
    model: str = typer.Option("cnn", "--model", "-m", help="the victim's architecture (unlearnable list models)"),
    epochs: Optional[int] = typer.Option(None, help="the victim's epochs (default: the trainer's)"),
    purifier: Optional[Path] = typer.Option(None, "--purifier", help="a D-VAE fitted before (a set saved by "
                                            "`purify --defense dvae`, or its purifier.safetensors): its stage-1 "
                                            "p_hat, with no fitting"),
) -> None:
    """Add the D-VAE's learned perturbation to the CLEAN images and train a victim (the seed's Table 1)."""
    from .data import load
    from .models import MODELS
    from .params import parse_sets

    MODELS.check(model)
    options = parse_sets(set_)
    if purifier is not None and options:
        raise UnlearnableError("--set does not apply with --purifier: the saved D-VAE keeps the options it was fitted "
                               "with")
    options.setdefault("preset", "fast")
    clash = sorted({"model", "train_cfg", "poisoned", "testset", "clean", "dvae", "checkpoint"} & set(options))
    if clash:
        raise UnlearnableError(f"{clash[0]} is not a D-VAE option (--set sets the D-VAE's; see --model, --epochs)")
    from .detect import check_options

    check_options("dvae", options)  # the D-VAE's options, before the data is loaded
    fitted = None
    if purifier is not None:
        _, fitted = _saved_purifier(purifier, "dvae-check reads stage 1's p_hat")
    train, test = load(data)
    if not train.provenance.get("method"):  # clean + p_hat of clean images: a number that means nothing
        raise UnlearnableError(f"{data} is not a poisoned set: dvae-check takes a set saved by `unlearnable poison` "
                               "(it adds the D-VAE's perturbation estimate to the set's clean images)")
    from .defenses.dvae import dvae_check as check

    if fitted is not None:
        fitted.check_applicable(train)
    cfg = _victim_recipe(epochs)
    _say_more_epochs(cfg, len(train))
    state = None if fitted is not None else _state_in_cache("dvae-check", train, options)
    res = check(train, test, dvae=fitted, model=model, train_cfg=cfg, checkpoint=state, **options)
    typer.echo(f"victim on clean + learned p_hat: clean test accuracy {res['test_acc']:.2%} "
               f"(p_hat RMS {res['p_rms'] * 255:.1f} levels of 255)")
    # Half the pixel range, RMS: no poison is near that size (64/255 class-wise is <= 0.25). With the set's L-inf
    # budget known, 4 times it (at least 0.1: a working fit's p_hat also holds what its reconstruction misses) -
    # a working fit against EM at 8/255 gave 0.045 (BENCHMARKS.md), the fast preset's few steps on 600 colour
    # images 0.40 against EM at 8/255 and random noise at 1/255 alike (no word, until 2026-12-06).
    budget = train.provenance.get("budget") or {}
    eps = budget.get("eps") if budget.get("norm") == "linf" else None
    limit, than = (0.5, "any poison") if eps is None else (min(0.5, max(4 * eps, 0.1)), "this set's poison (an "
                                                                  f"L-inf budget of {eps * 255:.0f} levels)")
    if res["p_rms"] > limit:
        _say(f"warning: p_hat (RMS {res['p_rms'] * 255:.0f} levels) is far larger than {than}: the D-VAE fit "
             "degenerated (too few epochs or too narrow?), so this accuracy says nothing about the poison")


def _resumable(job, state: str) -> None:
    """Keep ``job``'s state in the file ``state``, so that an interrupted run continues where it stopped."""
    job.checkpoint = state
    job.keep_state = True  # until the command has saved the result: a failed save must not cost the whole job
    _announce(state)


def _victim_recipe(epochs: int | None, recipe: str = "default", **changes):
    """The victims' recipe of ``train`` and ``dvae-check``: ``--epochs`` as given, else the recipe's own length
    (the default's 3 epochs raised on a small set to the steps they make on 60,000 images,
    :data:`~unlearnable.training.RECIPE_STEPS`)."""
    from .recipes import RECIPES

    length = {} if epochs is None else {"epochs": epochs, "min_steps": 0}
    return RECIPES.create(recipe, **length, **changes)


def _say_more_epochs(cfg, n: int, recipe: str = "default") -> None:
    """Say so when :func:`_victim_recipe`'s rule trains the victim more epochs than asked."""
    from .training import batch_starts

    epochs = cfg.epochs_for(n)
    if epochs > cfg.epochs:
        _say(f"{n} training images make {len(batch_starts(n, cfg.batch_size))} steps an epoch: the victim trains "
             f"{epochs} epochs, the {cfg.min_steps} steps the {recipe} recipe makes on 60,000 images (--epochs N: "
             "exactly N)")


def _state_next_to(out: Path) -> str:
    """Where a command that writes ``out`` keeps its state: a hidden sibling, ``.NAME.state.pt``."""
    return str(out.parent / f".{out.name}.state.pt")


def _state_in_cache(command: str, data, options: dict) -> str:
    """Where a command with no ``--out`` keeps its state: the cache, keyed by the data's fingerprint and the job's
    options (a run with other options must not overwrite, then delete, an interrupted one's state)."""
    import hashlib
    import json

    from .data import cache_dir

    key = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:8]
    state = str(cache_dir() / "state" / f"{command}-{data.fingerprint()}-{key}.pt")
    _announce(state)
    return state


_STATES: list[str] = []  # the state files of this command's jobs: said when it stops before its end


def _announce(state: str) -> None:
    """Remember ``state`` (said if the command stops early); the job says whether it resumes from it, once it has
    checked that the state fits (parameters, data, code), or why it ignores it."""
    from .resume import Resumable

    _STATES.append(state)
    Resumable.announce = _say


def _say(message: str) -> None:
    typer.echo(message, err=True)


def main() -> None:
    """Entry point: every :class:`UnlearnableError`, usage error and :class:`OSError` becomes one line on stderr and
    exit code 2; Ctrl-C says "aborted" and exits 130."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _STATES.clear()  # (a caller may run several commands in one process)
    try:
        code = app(standalone_mode=False)  # typer answers Ctrl-C by returning 130 here, not by raising Abort
        if isinstance(code, int) and code:
            if code == 130:
                typer.echo(f"aborted{_kept()}", err=True)
            sys.exit(code)
    except UnlearnableError as e:
        typer.echo(f"error: {e}{_kept()}", err=True)
        sys.exit(2)
    except (typer.Exit, SystemExit) as e:
        code = getattr(e, "exit_code", getattr(e, "code", 0))
        sys.exit(code or 0)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo(f"aborted{_kept()}", err=True)
        sys.exit(130)
    except OSError as e:  # an unwritable --out, a full disk, an unreadable file: the system's one line
        where = f": {e.filename}" if e.filename else ""
        typer.echo(f"error: {e.strerror or e}{where}{_kept()}", err=True)
        sys.exit(2)
    except Exception as e:
        if _is_usage_error(e):
            typer.echo(f"error: {e.format_message()}", err=True)
            sys.exit(2)
        raise
    finally:  # a caller that runs a command in its process gets the library's own "resuming" channel back
        from . import resume

        resume.Resumable.announce = resume.log.info


def _kept() -> str:
    """For the line that ends a command early: where its work so far is kept, if anywhere."""
    from .resume import written

    kept = [s for s in dict.fromkeys(_STATES) if s in written and Path(s).is_file()]  # this run's, still there
    return f" (the work so far is kept in {', '.join(kept)}: the same command resumes it)" if kept else ""


def _is_usage_error(e: Exception) -> bool:
    """A click usage error (missing or unknown option, bad value...). Looked up through ``typer.BadParameter``
    because typer >= 0.26.0 ships its own copy of click, and the ``click`` package may not be installed at all."""
    base = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    return isinstance(e, base)


if __name__ == "__main__":
    main()

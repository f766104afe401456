"""The data layer: sources, saved sets (hashes, budget, atomic writes), export, bad input."""
from __future__ import annotations

import csv
import errno
import json
from pathlib import Path

import numpy as np
import pytest

from unlearnable.attacks import create_attack
from unlearnable.data import ImageSet, export_png, load, load_dataset, load_set, save_set
from unlearnable.data.sources import unsplit
from unlearnable.data.store import png_paths, read_manifest
from unlearnable.detect import flag
from unlearnable.errors import UnlearnableError
from unlearnable.params import parse_eps
from unlearnable.report import detection_csv


def test_fashion_mnist_shapes(fmnist):
    train, test = fmnist
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == np.uint8 and train.y.dtype == np.int64
    assert train.num_classes == 10 and set(np.unique(train.y)) == set(range(10))
    assert train.source == "fashion-mnist"


def test_take_is_balanced_and_seeded(fmnist):
    a, b = fmnist[0].take(1000, seed=5), fmnist[0].take(1000, seed=5)
    np.testing.assert_array_equal(a.x, b.x)
    assert np.bincount(a.y, minlength=10).tolist() == [100] * 10


def test_save_load_roundtrip_and_manifest(tmp_path, small_train):
    poisoned = create_attack("random-noise", eps=8 / 255, ratio=0.5, seed=2).poison(small_train)
    out = save_set(poisoned, tmp_path / "set", clean=small_train)
    loaded = load_set(out)
    np.testing.assert_array_equal(loaded.x, poisoned.x)
    np.testing.assert_array_equal(loaded.y, poisoned.y)
    m = json.loads((out / "manifest.json").read_text())
    assert m["method"] == "random-noise" and m["params"]["ratio"] == 0.5 and m["seed"] == 2
    assert m["source"] == "fashion-mnist" and len(m["changed"]) == 2000
    assert set(m["sha256"]) == {"x.npy", "y.npy"} and "unlearnable_version" in m
    assert round(max(m["norms"]["linf"]) * 255, 3) <= 8
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    train, test = load(str(out))  # a saved set trains against the CLEAN test split of its source
    assert test.split == "test" and len(test) == 10000


def test_hash_mismatch_is_detected(tmp_path, small_train):
    out = save_set(small_train.take(100), tmp_path / "set")
    x = np.load(out / "x.npy")
    x[0, 0, 0, 0] ^= 1
    np.save(out / "x.npy", x)
    with pytest.raises(UnlearnableError, match="SHA-256"):
        load_set(out)


def test_save_refuses_budget_violation(tmp_path, small_train):
    data = small_train.take(10)
    bad = data.replace(x=np.clip(data.x.astype(int) + 9, 0, 255).astype(np.uint8))
    bad.provenance["budget"] = {"norm": "linf", "eps": 8 / 255}
    with pytest.raises(UnlearnableError, match="budget"):
        save_set(bad, tmp_path / "bad", clean=data)
    assert not (tmp_path / "bad").exists()
    # a purified set keeps the attack's budget record, but its pixels are the purifier's: saved, with its norms
    purified = bad.replace(provenance={**bad.provenance, "purified_by": {"method": "jpeg", "params": {}}})
    save_set(purified, tmp_path / "purified", clean=data)
    assert max(read_manifest(tmp_path / "purified")["norms"]["linf"]) == pytest.approx(9 / 255, abs=1e-6)


def test_out_dir_not_overwritten_without_flag(tmp_path, small_train):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(UnlearnableError, match="overwrite"):
        save_set(small_train.take(10), tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    save_set(small_train.take(10), tmp_path / "full", overwrite=True)
    assert not (tmp_path / "full" / "keep.txt").exists()


def test_export_png_is_lossless(tmp_path, small_train):
    from PIL import Image

    data = small_train.take(30)
    out = export_png({"train": data}, tmp_path / "png")
    files = sorted((out / "train").rglob("*.png"))
    assert len(files) == 30
    first = files[0]
    idx = int(first.stem)
    np.testing.assert_array_equal(np.asarray(Image.open(first)), data.x[idx, 0])
    assert first.parent.name == "T-shirt_top" or first.parent.name in {c.replace("/", "_") for c in data.classes}


def test_folder_source_roundtrip(tmp_path, small_train, monkeypatch):
    monkeypatch.setenv("UNLEARNABLE_CACHE", str(tmp_path / "cache"))
    data = small_train.take(60)
    export_png({"train": data}, tmp_path / "tree")
    train, test = load_dataset(f"folder:{tmp_path / 'tree' / 'train'}")
    assert len(train) + len(test) == 60 and train.channels == 1
    assert len(test) == 10  # the seeded 20% split, stratified: round(6 * 0.2) = 1 per class
    assert test.provenance["carved"]  # drawn from the same images: `detect` will not use it as a clean reference
    # a root holding only train/ (the layout of the shared colour subset) is split the same way
    train2, test2 = load_dataset(f"folder:{tmp_path / 'tree'}")
    assert len(train2) == len(train) and len(test2) == len(test) and train2.classes == train.classes
    # a detection report names each sample by its file
    rows = list(csv.DictReader(detection_csv(train, flag(np.arange(len(train), dtype=float)), tmp_path / "s.csv")
                               .open()))
    assert [r["file"] for r in rows] == train.provenance["file_names"] and len(rows) == len(train)
    assert all((tmp_path / "tree" / "train" / r["file"]).is_file() for r in rows)
    from PIL import Image

    for i in (0, len(rows) - 1):  # each name is the file of that very sample
        assert np.array_equal(np.asarray(Image.open(tmp_path / "tree" / "train" / rows[i]["file"])), train.x[i, 0])
    assert len(set(test.provenance["file_names"]) | set(train.provenance["file_names"])) == 60
    assert train.subset(np.array([3, 1])).provenance["file_names"] == [rows[3]["file"], rows[1]["file"]]


def test_export_keeps_a_folder_sets_file_names(tmp_path, monkeypatch):
    """A set read from a folder is exported under its own file names (as PNG); the class folder follows the label,
    and names that would meet get their index appended."""
    from PIL import Image

    monkeypatch.setenv("UNLEARNABLE_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for rel in ("cat/a.png", "cat/b.jpg", "cat/old/c.png", "dog/a.png", "dog/d.png", "dog/b.png"):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "in" / rel, quality=95)
    every = unsplit(*load_dataset(f"folder:{tmp_path / 'in'}"))  # the carved 20% back in: all six files
    out = export_png({"train": every}, tmp_path / "out")
    written = sorted(str(p.relative_to(out / "train")) for p in (out / "train").rglob("*.png"))
    assert written == ["cat/a.png", "cat/b.png", "cat/old/c.png", "dog/a.png", "dog/b.png", "dog/d.png"], written
    for i, name in enumerate(every.provenance["file_names"]):  # the pixels of each file are its own
        png = out / "train" / Path(name).with_suffix(".png")
        assert np.array_equal(np.asarray(Image.open(png)), every.x[i, 0]), name
    flipped = every.replace(y=np.zeros_like(every.y))  # a label-flip: every dog is a cat now
    paths = [str(p) for p in png_paths(flipped)]
    assert len(set(paths)) == len(paths) and all(p.startswith("cat/") for p in paths)
    dog_a = every.provenance["file_names"].index("dog/a.png")
    assert paths[dog_a] == f"cat/a-{dog_a}.png", paths
    x = np.zeros((4, 1, 2, 2), np.uint8)  # a.jpg -> a-1.png met the folder's own a-1.png: one image was lost
    names = ["c/a-1.png", "c/a.jpg", "c/a.png", "c/A.PNG"]
    paths = [str(p).lower() for p in png_paths(ImageSet(x, np.zeros(4), ["c"], provenance={"file_names": names}))]
    assert len(set(paths)) == 4 and paths[0] == "c/a-1.png" and paths[2] == "c/a.png", paths  # a.png keeps its name


def test_folder_bad_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnlearnableError, match="no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    one = tmp_path / "one" / "cat"
    one.mkdir(parents=True)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8), np.uint8)).save(one / "a.png")
    with pytest.raises(UnlearnableError, match="class"):
        load_dataset(f"folder:{tmp_path / 'one'}")
    (tmp_path / "one" / "dog").mkdir()
    (tmp_path / "one" / "dog" / "b.png").write_bytes(b"not an image")
    with pytest.raises(UnlearnableError, match="cannot read image"):
        load_dataset(f"folder:{tmp_path / 'one'}")


def test_folder_says_what_it_leaves_out(tmp_path, caplog, monkeypatch):
    """An empty class folder became a class with no images, and images beside the class folders were skipped,
    both without a word."""
    from PIL import Image

    monkeypatch.setenv("UNLEARNABLE_CACHE", str(tmp_path / "cache"))
    for c in ("a", "b"):
        (tmp_path / "t" / c).mkdir(parents=True)
        for i in range(5):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / "t" / c / f"{i}.png")
    (tmp_path / "t" / "empty").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "t" / "stray.png")
    (tmp_path / "t" / "a" / "notes.txt").write_text("x")
    rgba = np.zeros((8, 8, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t" / "b" / "see-through.png")
    rgba[..., 3] = 255  # an opaque RGBA file (a screenshot) loses nothing: not counted
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t" / "b" / "opaque.png")
    train, _ = load_dataset(f"folder:{tmp_path / 't'}")
    assert train.classes == ["a", "b", "empty"]
    assert "has no images" in caplog.text and "1 image(s) directly in" in caplog.text
    assert "1 file(s) in the class folders" in caplog.text and "notes.txt" in caplog.text  # skipped, and said
    assert "1 image(s) under" in caplog.text and "have transparency: it is dropped" in caplog.text
    caplog.clear()
    assert load_dataset(f"folder:{tmp_path / 't'}")[0].fingerprint() == train.fingerprint()  # from the cache
    assert "have transparency: it is dropped" in caplog.text and "notes.txt" in caplog.text  # said again


def test_folder_turns_photos_as_their_exif_orientation_says(tmp_path):
    """A phone's portrait photo is stored landscape with an EXIF Orientation: it loaded (and was protected) turned
    90 degrees from how every viewer shows it, or was refused as of another size in a folder of portrait images."""
    from PIL import Image, ImageOps

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "t" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (12, 8, 3), np.uint8)).save(tmp_path / "t" / c / f"{i}.png")
    stored = np.zeros((8, 12, 3), np.uint8)  # landscape as stored, a red band on top
    stored[:2, :, 0] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to show"
    Image.fromarray(stored).save(tmp_path / "t" / "a" / "phone.jpg", exif=exif, quality=95)
    train, test = load_dataset(f"folder:{tmp_path / 't'}")
    every = {n: x for n, x in zip(train.provenance["file_names"] + test.provenance["file_names"],
                                  np.concatenate([train.x, test.x]))}
    shown = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "t" / "a" / "phone.jpg"))).transpose(2, 0, 1)
    assert every["a/phone.jpg"].shape == (3, 12, 8) and np.array_equal(every["a/phone.jpg"], shown)
    assert every["a/phone.jpg"][0, :, -2:].mean() > 200  # the band on the right, as a viewer shows it


def test_folder_follows_links_scales_16_bit_and_skips_hidden_files(tmp_path):
    from PIL import Image

    root = tmp_path / "photos" / "train"
    for c, level in (("cat", 1000), ("dog", 60000)):
        (root / c).mkdir(parents=True)
        for i in range(5):  # 16-bit grey PNGs: scaled to 8 bits (Pillow's own conversion clips them to 255)
            Image.fromarray(np.full((8, 8), level, np.uint16)).save(root / c / f"{i}.png")
    (root / "cat" / "._0.png").write_bytes(b"macOS resource fork")  # hidden: skipped, not "cannot read"
    (tmp_path / "photos" / ".git").mkdir()  # a hidden folder beside train/ does not hide the train/ layout
    elsewhere = tmp_path / "elsewhere" / "owl"
    elsewhere.mkdir(parents=True)
    for i in range(5):
        Image.fromarray(np.full((8, 8), 7, np.uint8)).save(elsewhere / f"{i}.png")
    (root / "owl").symlink_to(elsewhere, target_is_directory=True)  # a linked class folder is read
    (elsewhere / "loop").symlink_to(elsewhere, target_is_directory=True)  # once
    train, test = load_dataset(f"folder:{tmp_path / 'photos'}")
    every = unsplit(train, test)
    assert every.classes == ["cat", "dog", "owl"] and len(every) == 15
    assert {int(v) for v in every.x[every.y == 0].ravel()} == {round(1000 / 257)}
    assert {int(v) for v in every.x[every.y == 1].ravel()} == {round(60000 / 257)}
    (root / "dog" / "gone.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(UnlearnableError, match="gone.png.*broken link"):
        load_dataset(f"folder:{tmp_path / 'photos'}")


def test_folder_one_colour_image_makes_it_colour_and_splits_must_agree_in_size(tmp_path):
    from PIL import Image

    for split, mode in (("train", "L"), ("test", "RGB")):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new(mode, (8, 8), color=200 if mode == "L" else (10, 20, 30)).save(tmp_path / split / c / "0.png")
    Image.new("RGB", (8, 8), color=(1, 2, 3)).save(tmp_path / "train" / "b" / "1.png")
    train, test = load_dataset(f"folder:{tmp_path}")  # the first file (grey) no longer decides for the folder
    assert train.x.shape[1:] == test.x.shape[1:] == (3, 8, 8)
    assert train.x[0, :, 0, 0].tolist() == [200, 200, 200] and train.x[2, :, 0, 0].tolist() == [1, 2, 3]
    Image.new("RGB", (9, 8)).save(tmp_path / "test" / "a" / "0.png")
    Image.new("RGB", (9, 8)).save(tmp_path / "test" / "b" / "0.png")
    with pytest.raises(UnlearnableError, match="train images are 3x8x8 but .*test images are 3x8x9"):
        load_dataset(f"folder:{tmp_path}")


def test_npz_checks_labels_and_its_test_split(tmp_path):
    x, y = np.zeros((10, 4, 4), np.uint8), np.arange(10) % 2
    np.savez(tmp_path / "col.npz", x=x, y=y, x_test=x[:4], y_test=y[:4, None])  # an N x 1 label column is fine
    assert load_dataset(f"npz:{tmp_path / 'col.npz'}")[1].y.shape == (4,)
    for name, arrays, needle in (
            ("shape", dict(x_test=np.zeros((4, 3, 4, 4), np.uint8), y_test=y[:4]), "x_test images are 3x4x4"),
            ("range", dict(x_test=x[:4], y_test=np.arange(4)), "y_test has label 3"),
            ("neg", dict(y=y - 1), "negative label"),
            ("float", dict(y=y * 0.5), "integer class labels"),
            ("nan", dict(x=np.full((10, 4, 4), np.nan, np.float32)), r"floats in \[0, 1\]")):
        np.savez(tmp_path / f"{name}.npz", **{"x": x, "y": y, **arrays})
        with pytest.raises(UnlearnableError, match=needle):
            load_dataset(f"npz:{tmp_path / name}.npz")
    np.save(tmp_path / "one.npy", x)
    with pytest.raises(UnlearnableError, match="holds one array"):
        load_dataset(f"npz:{tmp_path / 'one.npy'}")
    # object arrays and 0-d / 2-d class lists were tracebacks; RGBA and half a test split were misexplained
    for name, arrays, needle in (
            ("obj", dict(x=np.array([x[0]] * 9 + [None], dtype=object)), "'x' holds Python objects"),
            ("clobj", dict(classes=np.array(["a", 1], dtype=object)), "'classes' holds Python objects"),
            ("cl0d", dict(classes=np.array("ab")), "1-D array of class names"),
            ("cl2d", dict(classes=np.array([["a", "b"]])), "1-D array of class names"),
            ("rgba", dict(x=np.zeros((10, 4, 4, 4), np.uint8)), "1 or 3 channels"),
            ("half", dict(x_test=x[:4]), "x_test without y_test")):
        np.savez(tmp_path / f"{name}.npz", **{"x": x, "y": y, **arrays})
        with pytest.raises(UnlearnableError, match=needle):
            load_dataset(f"npz:{tmp_path / name}.npz")
    np.savez(tmp_path / "bytes.npz", x=x, y=y, classes=np.array([b"cat", b"dog"]))
    assert load_dataset(f"npz:{tmp_path / 'bytes.npz'}")[0].classes == ["cat", "dog"]  # was "b'cat'"
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(UnlearnableError, match="not an .npz archive"):
        load_dataset(f"npz:{tmp_path / 'text.npz'}")
    with pytest.raises(UnlearnableError, match="is a folder"):
        load_dataset(f"npz:{tmp_path}")


def test_npz_damaged_members_and_labels_that_are_not_class_indices(tmp_path, caplog):
    """A bad CRC was a 65-line zipfile traceback, a truncated member "holds Python objects", a label of 10**9 a
    billion class names (and 2**63 in uint64 "labels must lie in 0..8"); labels 1..C left class 0 empty unsaid."""
    x, y = np.random.default_rng(0).integers(0, 256, (64, 8, 8), np.uint8), np.arange(64) % 4
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    raw = bytearray((tmp_path / "ok.npz").read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 100] = bytes(100)  # inside x.npy's pixels: its CRC no longer matches
    (tmp_path / "crc.npz").write_bytes(bytes(raw))
    with pytest.raises(UnlearnableError, match="array 'x' is damaged"):
        load_dataset(f"npz:{tmp_path / 'crc.npz'}")
    for name, labels, needle in (("huge", y * 10**9, "has the label 3000000000: labels are class indices"),
                                 ("wrap", np.full(64, 2**63, np.uint64), "labels are class indices")):
        np.savez(tmp_path / f"{name}.npz", x=x, y=labels)
        with pytest.raises(UnlearnableError, match=needle):
            load_dataset(f"npz:{tmp_path / name}.npz")
    np.savez(tmp_path / "from1.npz", x=x, y=y + 1)
    with caplog.at_level("WARNING"):
        assert load_dataset(f"npz:{tmp_path / 'from1.npz'}")[0].num_classes == 5
    assert "1 of them have no image (e.g. 0)" in caplog.text


def test_take_gives_what_a_small_class_lacks_to_the_others():
    y = np.array([0] * 900 + [1] * 50)
    data = ImageSet(np.zeros((950, 1, 4, 4), np.uint8), y, ["big", "small"])
    assert np.bincount(data.take(600).y).tolist() == [550, 50]


def test_out_dir_never_replaces_the_current_folder_and_replaces_files_and_links(tmp_path, monkeypatch, small_train):
    from unlearnable.data.store import check_out_dir

    monkeypatch.chdir(tmp_path)
    for out in (".", str(tmp_path.parent)):
        with pytest.raises(UnlearnableError, match="holds the current directory"):
            check_out_dir(out, overwrite=True)
    part = small_train.subset(np.arange(20))
    (tmp_path / "file").write_text("old")
    save_set(part, tmp_path / "file", overwrite=True)  # a file in the way, replaced on request
    assert len(load_set(tmp_path / "file")) == 20
    (tmp_path / "target").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "target", target_is_directory=True)
    save_set(part, tmp_path / "link")  # through a link: the folder it names gets the set
    assert (tmp_path / "link").is_symlink() and len(load_set(tmp_path / "target")) == 20
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries or old copies left


def test_npz_source_and_mismatch(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "ok.npz", x=rng.random((50, 8, 8, 3)).astype(np.float32), y=np.arange(50) % 5)
    train, test = load_dataset(f"npz:{tmp_path / 'ok.npz'}")
    assert train.x.shape[1:] == (3, 8, 8) and len(train) + len(test) == 50
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 8, 8), np.uint8), y=np.zeros(4))
    with pytest.raises(UnlearnableError, match="5 images but y has 4"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_unknown_dataset():
    with pytest.raises(UnlearnableError, match="unknown dataset"):
        load_dataset("imagenet-1k")
    with pytest.raises(UnlearnableError, match="takes no ':subset=5'"):  # was silently ignored: the whole set ran
        load_dataset("fashion-mnist:subset=5")
    with pytest.raises(UnlearnableError, match="needs a path"):
        load_dataset("folder:")


@pytest.mark.parametrize("text,unit,value", [("8/255", "unit", 8 / 255), ("0.031", "unit", 0.031),
                                             ("8", "levels", 8 / 255)])
def test_parse_eps(text, unit, value):
    assert parse_eps(text, unit) == pytest.approx(value)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "2", "1/0"])
def test_parse_eps_rejects(text):
    with pytest.raises(UnlearnableError):
        parse_eps(text)


def test_imageset_validates():
    with pytest.raises(UnlearnableError):
        ImageSet(np.zeros((3, 1, 4, 4), np.uint8), np.zeros(2), ["a", "b"])
    with pytest.raises(UnlearnableError):
        ImageSet(np.zeros((3, 1, 4, 4), np.float32), np.zeros(3), ["a", "b"])
    with pytest.raises(UnlearnableError, match="whole class indices"):  # was truncated to [0, 1, 0] silently
        ImageSet(np.zeros((3, 1, 4, 4), np.uint8), np.array([0.9, 1.5, -0.5]), ["a", "b"])
    assert ImageSet(np.zeros((2, 1, 4, 4), np.uint8), np.array([0.0, 1.0]), ["a", "b"]).y.tolist() == [0, 1]
    x = np.zeros((3, 1, 4, 4), np.uint8)
    with pytest.raises(UnlearnableError, match="one class index per image"):  # failed later inside the trainer
        ImageSet(x, np.zeros((3, 1)), ["a", "b"])
    with pytest.raises(UnlearnableError, match="a list of class names"):  # saved, then the reload refused it
        ImageSet(x, np.zeros(3), "ab")
    assert ImageSet(x, np.zeros(3), ("a", 1)).classes == ["a", "1"]


def test_save_set_checks_its_clean_set_and_records_an_absolute_source(tmp_path, small_train, monkeypatch):
    sub = small_train.take(20)
    with pytest.raises(UnlearnableError, match="clean has 4000 images"):  # was a numpy broadcasting error
        save_set(sub, tmp_path / "a", clean=small_train)
    np.savez(tmp_path / "src.npz", x=sub.x, y=sub.y)
    monkeypatch.chdir(tmp_path)
    train, _ = load_dataset("npz:src.npz")
    save_set(train, "b")
    m = read_manifest(tmp_path / "b")
    assert m["source"] == f"npz:{tmp_path / 'src.npz'}"  # relative, it broke once the user changed folders
    save_set(sub.replace(source=""), "c")
    with pytest.raises(UnlearnableError, match="names no source dataset"):
        load("c")
    save_set(train, "d")
    manifest = tmp_path / "d" / "manifest.json"  # as older versions wrote it: right from this folder only
    manifest.write_text(manifest.read_text().replace(str(tmp_path / "src.npz"), "src.npz"))
    assert load("d")[0].source == "npz:src.npz"
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(UnlearnableError, match="relative path that does not exist from .*run from the folder"):
        load(tmp_path / "d")


def test_tiny_images_get_an_ssim_and_write_errors_name_the_users_path(tmp_path, monkeypatch):
    from unlearnable.data.store import write_atomic
    from unlearnable.report import mean_ssim

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (5, 1, 4, 4), dtype=np.uint8)
    assert 0 < mean_ssim(a, a) == pytest.approx(1.0)  # a 4 x 4 image was a ValueError traceback in `info`
    assert np.isnan(mean_ssim(a[:, :, :2, :2], a[:, :, :2, :2]))

    def fail(tmp):
        raise FileNotFoundError(2, "No such file or directory", str(tmp))

    with pytest.raises(FileNotFoundError) as e:
        write_atomic(tmp_path / "g.png", fail)
    assert e.value.filename == str(tmp_path / "g.png")  # not the hidden temporary name

    def short(tmp):  # what numpy's tofile (np.save) raises on a full disk: no errno, numpy's own words
        raise OSError("1843200 requested and 1048448 written")

    with pytest.raises(OSError) as e:
        write_atomic(tmp_path / "x.npy", short)
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "x.npy")
    assert e.value.strerror.startswith("No space left on device")


def test_a_killed_writers_temporaries_are_removed_by_the_next_write(tmp_path):
    """SIGKILL mid-write left a hidden half-written copy of --out (25 MB of PNGs) beside it for good."""
    import subprocess
    import sys

    from unlearnable.data.store import _writer, atomic_dir, write_atomic

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    host = _writer().split("-")[0]
    dead = [tmp_path / f".out.{host}-{gone}-x1", tmp_path / f".f.npz.{host}-{gone}-0a1b2c3d.tmp.npz"]
    live = [tmp_path / f".out.{_writer()}-x3", tmp_path / f".out.elsewhere-{gone}-x4",
            tmp_path / f".out.old-{host}-{gone}-x2", tmp_path / ".out.state.pt"]  # the last earlier result kept
    for d in (dead[0], *live[:3]):
        d.mkdir()
        (d / "x.npy").write_bytes(b"half")
    dead[1].write_bytes(b"half")
    live[3].write_bytes(b"a state")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "done").write_text("x")
    write_atomic(tmp_path / "f.npz", lambda t: t.write_bytes(b"x"))
    assert not any(d.exists() for d in dead)  # a dead writer's, on this host
    assert all(d.exists() for d in live)  # a live writer's (this process), another host's, an earlier result, a state
    assert (tmp_path / "out" / "done").is_file()


def test_export_gives_every_class_its_own_usable_folder(tmp_path):
    from unlearnable.data.store import class_folders

    assert class_folders(["a/b", "a_b", "..", ".", "", "Cat", "cat", ".h", "a_b-1"]) == \
        ["a_b", "a_b-1", "_.", "_", "_-4", "Cat", "cat-6", "_h", "a_b-1-8"]
    x = np.arange(4 * 16, dtype=np.uint8).reshape(4, 1, 4, 4)
    data = ImageSet(x, np.array([0, 1, 2, 2]), ["a/b", "a_b", ".."], source="npz:unused")
    export_png({"train": data}, tmp_path / "out")
    folders = sorted(p.name for p in (tmp_path / "out" / "train").iterdir())
    assert folders == ["_.", "a_b", "a_b-1"]  # three classes, none merged, none written into train/ itself
    assert len(list((tmp_path / "out" / "train").rglob("*.png"))) == 4


def test_partial_keeps_a_seeded_fraction_of_the_poison(small_train):
    from unlearnable.data import partial

    clean = small_train.take(100)
    poisoned = clean.replace(x=clean.x ^ 1, y=(clean.y + 1) % 10, provenance={"changed": list(range(100))})
    part = partial(poisoned, 0.4, seed=3, clean=clean)
    keep = np.asarray(part.provenance["changed"])
    assert len(keep) == 40 and part.provenance["partial"] == {"ratio": 0.4, "seed": 3}
    rest = np.setdiff1d(np.arange(100), keep)
    assert np.array_equal(part.x[keep], poisoned.x[keep]) and np.array_equal(part.y[keep], poisoned.y[keep])
    assert np.array_equal(part.x[rest], clean.x[rest]) and np.array_equal(part.y[rest], clean.y[rest])
    assert np.array_equal(partial(poisoned, 0.4, seed=3, clean=clean).x, part.x)  # seeded
    assert not np.array_equal(partial(poisoned, 0.4, seed=4, clean=clean).x, part.x)
    with pytest.raises(UnlearnableError, match="ratio"):
        partial(poisoned, 0.0, clean=clean)
    with pytest.raises(UnlearnableError, match="same shape"):
        partial(poisoned, 0.5, clean=clean.take(50))


def test_subset_renumbers_the_per_sample_records(small_train):
    data = small_train.take(10).replace(provenance={"changed": [1, 4, 7], "label_changed": [4],
                                                    "norms": {"linf": list(range(10))}})
    part = data.subset(np.array([0, 4, 5, 7]))
    assert part.provenance["changed"] == [1, 3] and part.provenance["label_changed"] == [1]
    assert part.provenance["norms"] == {"linf": [0, 4, 5, 7]} and part.provenance["source_index"] == [0, 4, 5, 7]
    assert data.provenance["changed"] == [1, 4, 7]  # the parent's record is not touched


def test_curve_plot_writes_a_png_atomically(tmp_path):
    from PIL import Image

    from unlearnable.report import curve_plot

    path = curve_plot({"attack": ([0.2, 0.6, 1.0], [0.9, 0.85, 0.3]), "flip": ([0.2, 0.6, 1.0], [0.9, 0.8, 0.1])},
                      tmp_path / "c.png", "ratio", "accuracy", hlines={"clean": 0.92})
    assert path == tmp_path / "c.png" and Image.open(path).format == "PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]  # no temporary file left


def test_a_damaged_saved_set_is_refused_in_one_line(tmp_path, small_train):
    """An emptied sha256 record skipped every check (zeroed arrays loaded); a manifest shape unlike the arrays
    passed and later indexing raised IndexError; a manifest that is not UTF-8 was a UnicodeDecodeError."""
    data = small_train.take(12)
    for case in ("sha", "shape", "utf8"):
        out = save_set(data, tmp_path / case)
        m = json.loads((out / "manifest.json").read_text())
        if case == "sha":
            m["sha256"] = {}
            np.save(out / "x.npy", np.zeros_like(data.x))
        elif case == "shape":
            m["shape"][0] = 100
        (out / "manifest.json").write_text(json.dumps(m))
        if case == "utf8":
            (out / "manifest.json").write_bytes(b"\xff\xfe{}")
        with pytest.raises(UnlearnableError, match={"sha": "does not cover x.npy", "shape": "not the manifest's shape",
                                                    "utf8": "not valid JSON"}[case]):
            load_set(out)


def test_a_set_saved_again_records_this_version(tmp_path, small_train):
    data = small_train.take(12)
    data.provenance["unlearnable_version"] = "0.0.1-old"
    import unlearnable

    assert read_manifest(save_set(data, tmp_path / "s"))["unlearnable_version"] == unlearnable.__version__


def test_a_truncated_idx_file_is_a_one_line_error(tmp_path):
    """A cut .gz raised EOFError, which the command line's click reported as Ctrl-C ('aborted', exit 130)."""
    import gzip

    from unlearnable.data.sources import _read_idx

    raw = gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 200]) + bytes(200))
    (tmp_path / "a.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UnlearnableError, match="truncated or damaged"):
        _read_idx(tmp_path / "a.gz")


def test_the_folder_cache_knows_the_class_folders(tmp_path, monkeypatch):
    """An empty class folder added to train/ left the cached arrays (and their class list) as they were."""
    from PIL import Image

    monkeypatch.setenv("UNLEARNABLE_CACHE", str(tmp_path / "cache"))
    for split, classes in (("train", "ab"), ("test", "abz")):
        for c in classes:
            (tmp_path / "t" / split / c).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "t" / split / c / "0.png")
    (tmp_path / "t" / "train" / "b" / "0.png").rename(tmp_path / "t" / "train" / "b" / "1.png")
    with pytest.raises(UnlearnableError, match="different class folders"):
        load_dataset(f"folder:{tmp_path / 't'}")
    (tmp_path / "t" / "train" / "z").mkdir()
    assert load_dataset(f"folder:{tmp_path / 't'}")[0].classes == ["a", "b", "z"]


def test_partial_of_a_set_nothing_changed_and_its_label_record(small_train):
    from unlearnable.data import partial

    flipped = create_attack("label-flip", ratio=0.5).poison(small_train.take(40))
    flipped.provenance["label_changed"] = list(flipped.provenance["changed"])
    half = partial(flipped, 0.5, clean=small_train.take(40))
    assert half.provenance["label_changed"] == half.provenance["changed"]  # those that kept their flipped label
    none = flipped.replace(provenance={**flipped.provenance, "changed": []})
    assert partial(none, 0.5, clean=small_train.take(40)).provenance["changed"] == []  # was a ValueError


def test_info_grid_shows_relabelled_samples_with_both_labels(small_train, monkeypatch, tmp_path):
    """A label-only attack changes no pixel: its grid shows relabelled samples first, each titled with its clean
    label too (a column titled with the flipped class showed another class's image, unmarked)."""
    from unlearnable import report

    clean = small_train.take(60)
    flipped = create_attack("label-flip", ratio=0.5, seed=0).poison(clean)
    shown = {}
    monkeypatch.setattr(report, "image_grid", lambda rows, png, classes=None, labels=None, titles=None:
                        shown.update(rows=rows, titles=titles))
    report.set_grid(flipped, clean, report.images_differ(flipped.x, clean.x), tmp_path / "g.png")
    relabelled = set(np.flatnonzero(flipped.y != clean.y))
    idx = report.subset_for_grid(flipped, prefer=flipped.y != clean.y)
    assert {i for i in idx if i in relabelled} and len(shown["titles"]) == len(idx)
    for i, title in zip(idx, shown["titles"]):
        assert title.startswith(clean.classes[flipped.y[i]])
        assert (f"(clean: {clean.classes[clean.y[i]]})" in title) == (i in relabelled)
    has_flip = {flipped.y[i] for i in relabelled}  # every class with a relabelled sample shows one
    assert all(i in relabelled for i in idx if flipped.y[i] in has_flip)


def test_subset_renumbers_the_samples_a_purifier_was_given(small_train):
    """detect --purify records the flagged positions; a later drop or take kept the old ones (pointing elsewhere)."""
    data = small_train.take(8)
    data.provenance.update(purified_by={"method": "jpeg", "params": {}, "flagged": [1, 3, 5]},
                           purified_before=[{"method": "bdr", "params": {}, "flagged": [0, 3]}, {"method": "x"}])
    part = data.subset(np.array([3, 4, 5]))
    assert part.provenance["purified_by"]["flagged"] == [0, 2]
    assert part.provenance["purified_before"] == [{"method": "bdr", "params": {}, "flagged": [0]}, {"method": "x"}]
    assert data.provenance["purified_by"]["flagged"] == [1, 3, 5]  # the original's record is not touched

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fewclip.data.datasets import BENCHMARK_DATASETS, DATASETS, base_new_split, check_dataset, get_spec, load_dataset
from fewclip.data.fixtures import write_all_fixtures, write_fixture
from fewclip.data.images import load_image
from fewclip.errors import ConfigError, DataError
from fewclip.methods._tip import TIP_CONFIG

N_CLASSES, N_TRAIN, N_VAL, N_TEST = 4, 3, 2, 3

EXPECTED_NAMES = {
    "imagenet": ["tench", "goldfish", "great white shark", "tiger shark"],
    "caltech101": ["face", "leopard", "motorbike", "accordion"],
    "oxford_pets": ["abyssinian", "american bulldog", "american pit bull terrier", "basset hound"],
    "stanford_cars": ["2000 AM General Hummer SUV", "2012 Acura RL Sedan", "2012 Acura TL Sedan",
                      "2008 Acura TL Type-S"],
    "oxford_flowers": ["pink primrose", "hard-leaved pocket orchid", "canterbury bells", "sweet pea"],
    "food101": ["apple pie", "baby back ribs", "baklava", "beef carpaccio"],
    "fgvc_aircraft": ["707-320", "727-200", "A300B4", "Cessna 172"],
    "sun397": ["abbey", "airplane cabin", "airport terminal", "alley"],
    "dtd": ["banded", "blotchy", "braided", "bubbly"],
    "eurosat": ["Annual Crop Land", "Forest", "Herbaceous Vegetation Land", "Highway or Road"],
    "ucf101": ["Apply Eye Makeup", "Apply Lipstick", "Archery", "Baby Crawling"],
    "imagenet_v2": ["tench", "goldfish", "great white shark", "tiger shark"],
    "imagenet_sketch": ["tench", "goldfish", "great white shark", "tiger shark"],
    "imagenet_a": ["goldfish", "great white shark", "tiger shark"],
    "imagenet_r": ["tench", "great white shark", "tiger shark"],
}
TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "food101": "a photo of {}, a type of food.",
    "ucf101": "a photo of a person doing {}.",
}
TARGETS = ("imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_all_fixtures(root, n_classes=N_CLASSES, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST)
    return root


def _fresh(tmp_path, name):
    write_fixture(name, tmp_path, n_classes=N_CLASSES, n_train=N_TRAIN, n_val=N_VAL, n_test=N_TEST)
    return tmp_path / get_spec(name).folder


def test_registry():
    assert list(BENCHMARK_DATASETS) == list(EXPECTED_NAMES)
    assert list(DATASETS)[:15] == list(EXPECTED_NAMES)
    with pytest.raises(ConfigError, match="oxford_pets"):
        get_spec("pets")
    for name in BENCHMARK_DATASETS:
        spec = DATASETS[name]
        assert (name in TIP_CONFIG) != (name in TARGETS)  # Tip-Adapter's per-dataset values: sources only
        assert spec.source
    assert TIP_CONFIG["imagenet"][1] == (7, 3)
    assert TIP_CONFIG["oxford_flowers"][0] == 10


@pytest.mark.parametrize("name", list(BENCHMARK_DATASETS))
def test_reader_on_fixture(data_root, name):
    ds = load_dataset(name, data_root)
    assert ds.name == name and ds.root == Path(data_root).absolute()
    assert ds.classnames == EXPECTED_NAMES[name]
    assert ds.template == TEMPLATES.get(name, "a photo of a {}.")
    n = len(ds.classnames)
    if name in TARGETS:
        sizes = (0, 0, n * N_TEST)
    elif name == "imagenet":
        sizes = (n * N_TRAIN, n * N_TEST, n * N_TEST)
        assert ds.val == ds.test
    else:
        sizes = (n * N_TRAIN, n * N_VAL, n * N_TEST)
    assert (len(ds.train), len(ds.val), len(ds.test)) == sizes
    for split in ("train", "val", "test"):
        items = ds.split(split)
        if items:
            assert sorted({it.label for it in items}) == list(range(n))
        for it in items:
            assert it.classname == ds.classnames[it.label]
            assert not Path(it.path).is_absolute() and it.path.startswith(get_spec(name).folder + "/")
            assert ds.abspath(it).is_file()
    assert ds.imagenet_index == ({"imagenet_a": [1, 2, 3], "imagenet_r": [0, 2, 3]}.get(name))
    with pytest.raises(ConfigError):
        ds.split("dev")


def test_targets_labels(data_root):
    v2 = load_dataset("imagenet_v2", data_root)
    for it in v2.test:
        assert it.label == int(it.path.split("/")[-2])
    names = load_dataset("imagenet", data_root).classnames
    for name in ("imagenet_a", "imagenet_r"):
        ds = load_dataset(name, data_root)
        assert [names[i] for i in ds.imagenet_index] == ds.classnames
        wnids = sorted({it.path.split("/")[-2] for it in ds.test})
        for it in ds.test:
            assert it.label == wnids.index(it.path.split("/")[-2])


def test_split_json_paths_relative_to_image_dir(data_root):
    cars = load_dataset("stanford_cars", data_root)
    assert {it.path.split("/")[1] for it in cars.train} == {"cars_train"}
    assert {it.path.split("/")[1] for it in cars.test} == {"cars_test"}
    pets = load_dataset("oxford_pets", data_root)
    assert all(it.path.startswith("oxford_pets/images/") for it in pets.train)
    raw = json.loads((data_root / "oxford_pets" / "split_zhou_OxfordPets.json").read_text())
    assert [it.path for it in pets.train] == ["oxford_pets/images/" + r[0] for r in raw["train"]]


def test_fixture_deterministic(tmp_path):
    for sub in ("a", "b"):
        write_fixture("dtd", tmp_path / sub, seed=3)
    write_fixture("dtd", tmp_path / "c", seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)


def test_fixture_exercises_modes(data_root):
    modes = {Image.open(p).mode for p in (data_root / "dtd").rglob("*") if p.suffix in (".jpg", ".png")}
    assert {"RGB", "L", "RGBA", "P", "CMYK", "I;16", "LA"} <= modes


def test_base_new_split(data_root):
    ds = load_dataset("oxford_pets", data_root)
    base, new = base_new_split(ds, "base"), base_new_split(ds, "new")
    assert base.classnames == ds.classnames[:2] and new.classnames == ds.classnames[2:]
    for split in ("train", "val", "test"):
        assert {it.label for it in base.split(split)} == {0, 1}
        assert {it.label for it in new.split(split)} == {0, 1}
        assert [it.path for it in new.split(split)] == [it.path for it in ds.split(split) if it.label >= 2]
        assert all(it.classname == new.classnames[it.label] for it in new.split(split))
    odd = load_dataset("imagenet_a", data_root)  # 3 classes: base = ceil(3/2) = 2
    assert len(base_new_split(odd, "base").classnames) == 2
    assert base_new_split(odd, "new").imagenet_index == [3]
    with pytest.raises(ConfigError):
        base_new_split(ds, "all")


# ----------------------------------------------------------------------------- check_dataset


def test_check_empty_root_all_missing(tmp_path):
    for name, spec in DATASETS.items():
        report = check_dataset(name, tmp_path)
        assert report["status"] == "missing", name
        text = "\n".join(report["problems"])
        assert str(tmp_path / spec.folder / spec.split_file) in text
        assert spec.source in text
        if spec.image_dir:
            assert str(tmp_path / spec.folder / spec.image_dir) in text


def test_check_ok_and_missing_image(tmp_path):
    _fresh(tmp_path, "oxford_pets")
    report = check_dataset("oxford_pets", tmp_path)
    assert report == {"status": "ok", "classes": 4, "train": 12, "val": 8, "test": 12, "problems": []}
    ds = load_dataset("oxford_pets", tmp_path)
    for it in ds.test[:7]:
        ds.abspath(it).unlink()
    report = check_dataset("oxford_pets", tmp_path)
    assert report["status"] == "broken"
    text = "\n".join(report["problems"])
    assert "7 image file(s)" in text
    assert sum(line.startswith("missing: ") for line in report["problems"]) == 5


def test_check_broken_split_file(tmp_path):
    base = _fresh(tmp_path, "dtd")
    (base / "split_zhou_DescribableTextures.json").unlink()
    report = check_dataset("dtd", tmp_path)
    assert report["status"] == "broken"
    assert "split_zhou_DescribableTextures.json" in report["problems"][0]


def test_check_broken_targets(tmp_path):
    base = _fresh(tmp_path, "imagenet_a")
    (base / "classnames.txt").unlink()
    assert check_dataset("imagenet_a", tmp_path)["status"] == "broken"
    base = _fresh(tmp_path, "imagenet_v2")
    (base / "imagenetv2-matched-frequency-format-val" / "bogus").mkdir()
    report = check_dataset("imagenet_v2", tmp_path)
    assert report["status"] == "broken" and "bogus" in report["problems"][0]


# ----------------------------------------------------------------------------- bad split files


def _rewrite(base: Path, fn) -> Path:
    path = base / "split_zhou_OxfordPets.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing", "not found"),
        ("malformed", "not valid JSON"),
        ("structure", "lists 'train', 'val', 'test'"),
        ("entry", r"train\[0\].*not \[path, label, classname\]"),
        ("absolute", r"train\[0\].*escapes the data root"),
        ("dotdot", r"test\[1\].*escapes the data root"),
        ("negative", r"train\[2\].*out of range"),
        ("out_of_range", r"val\[0\].*label 9 out of range"),
        ("inconsistent", r"label \d+ is .* here but"),
        ("empty_class", r"no train images"),
    ],
)
def test_bad_split_json(tmp_path, case, match):
    base = _fresh(tmp_path, "oxford_pets")
    path = base / "split_zhou_OxfordPets.json"
    if case == "missing":
        path.unlink()
    elif case == "malformed":
        path.write_text('{"train": [')
    elif case == "structure":
        path.write_text('{"train": []}')
    elif case == "entry":
        _rewrite(base, lambda d: d["train"].__setitem__(0, ["x.jpg", "0", "abyssinian"]))
    elif case == "absolute":
        _rewrite(base, lambda d: d["train"][0].__setitem__(0, "/etc/passwd"))
    elif case == "dotdot":
        _rewrite(base, lambda d: d["test"][1].__setitem__(0, "../../secret.jpg"))
    elif case == "negative":
        _rewrite(base, lambda d: d["train"][2].__setitem__(1, -1))
    elif case == "out_of_range":
        _rewrite(base, lambda d: d["val"][0].__setitem__(1, 9))
    elif case == "inconsistent":
        _rewrite(base, lambda d: d["train"][0].__setitem__(2, "not_" + d["train"][0][2]))
    elif case == "empty_class":
        def drop_label_1(d):
            d["train"] = [r for r in d["train"] if r[1] != 1]
        _rewrite(base, drop_label_1)
    with pytest.raises(DataError, match=match) as err:
        load_dataset("oxford_pets", tmp_path)
    assert str(path) in str(err.value)
    assert check_dataset("oxford_pets", tmp_path)["status"] == "broken"


def test_bad_fgvc_and_imagenet(tmp_path):
    base = _fresh(tmp_path, "fgvc_aircraft")
    with open(base / "images_variant_test.txt", "a") as fh:
        fh.write("0000001 Concorde\n")
    with pytest.raises(DataError, match="Concorde"):
        load_dataset("fgvc_aircraft", tmp_path)
    base = _fresh(tmp_path, "imagenet")
    (base / "images" / "val" / "n01440764").rename(base / "images" / "val" / "n00000000")
    with pytest.raises(DataError, match="different class folders"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(DataError, match="not found"):
        load_dataset("imagenet", tmp_path / "nowhere")


# ----------------------------------------------------------------------------- images


def _save(tmp_path, name, img, fmt, **kw):
    path = tmp_path / name
    img.save(path, fmt, **kw)
    return path


def test_load_image_modes(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8))
    ramp = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 257)
    cases = [
        _save(tmp_path, "rgb.jpg", rgb, "JPEG"),
        _save(tmp_path, "l.jpg", rgb.convert("L"), "JPEG"),
        _save(tmp_path, "la.png", rgb.convert("LA"), "PNG"),
        _save(tmp_path, "cmyk.jpg", rgb.convert("CMYK"), "JPEG"),
        _save(tmp_path, "rgba.png", rgb.convert("RGBA"), "PNG"),
        _save(tmp_path, "p.png", rgb.quantize(8), "PNG", transparency=0),
        _save(tmp_path, "i16.png", Image.fromarray(ramp), "PNG"),
        _save(tmp_path, "one.bmp", rgb.convert("1"), "BMP"),
    ]
    for path in cases:
        img = load_image(path)
        assert img.mode == "RGB" and img.size == (16, 16), path
    assert Image.open(cases[6]).mode.startswith("I")
    grey = np.asarray(load_image(cases[6]))[..., 0]
    assert np.array_equal(grey.ravel(), np.arange(256))  # scaled, not clipped
    assert np.array_equal(np.asarray(load_image(cases[4])), np.asarray(rgb))


def test_load_image_corrupt(tmp_path):
    rgb = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    rgb.save(buf, "JPEG")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0" + b"garbage" * 50)
    truncated_jpeg = tmp_path / "truncated.jpg"
    truncated_jpeg.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    png = io.BytesIO()
    rgb.save(png, "PNG")
    truncated_png = tmp_path / "truncated.png"
    truncated_png.write_bytes(png.getvalue()[: len(png.getvalue()) // 2])
    for path in (corrupt, truncated_jpeg, truncated_png, tmp_path / "absent.jpg"):
        with pytest.raises(DataError, match="cannot read image") as err:
            load_image(path)
        assert str(path) in str(err.value) and "re-copy the file" in str(err.value)


def test_fixture_images_all_load(data_root):
    for name in ("imagenet", "fgvc_aircraft", "imagenet_v2"):
        ds = load_dataset(name, data_root)
        for it in ds.train + ds.test:
            assert load_image(ds.abspath(it)).size == (32, 32)

import random
import warnings
from collections import defaultdict

import pytest

from fewclip.data.datasets import Dataset, Item, base_new_split, load_dataset
from fewclip.data.fewshot import (
    base_new_manifest,
    make_manifest,
    read_manifest,
    sample_fewshot,
    write_manifest,
)
from fewclip.data.fixtures import write_fixture
from fewclip.errors import ConfigError, DataError


def _dassl_generate_fewshot_dataset(data_source, num_shots):
    """Dassl's DatasetBase.generate_fewshot_dataset (repeat=False), literally, on global `random`."""
    tracker = defaultdict(list)
    for item in data_source:
        tracker[item.label].append(item)
    dataset = []
    for label, items in tracker.items():
        if len(items) >= num_shots:
            sampled_items = random.sample(items, num_shots)
        else:
            sampled_items = items
        dataset.extend(sampled_items)
    return dataset


def _dassl(train, val, k, seed):
    state = random.getstate()
    try:
        random.seed(seed)
        return (_dassl_generate_fewshot_dataset(train, k),
                _dassl_generate_fewshot_dataset(val, min(k, 4)))
    finally:
        random.setstate(state)


def _items(labels, prefix="x"):
    return [Item(f"{prefix}/{i}.jpg", lab, f"c{lab}") for i, lab in enumerate(labels)]


def _toy():
    # file order interleaves classes and starts with label 2: first appearance is 2, 0, 1;
    # class sizes: 0 -> 7, 1 -> 6, 2 -> 9
    train = _items([2, 0, 1] * 6 + [2, 2, 2, 0], "train")
    val = _items([1, 0, 2] * 5, "val")
    return Dataset("toy", root=None, classnames=["c0", "c1", "c2"], template="{}",
                   train=train, val=val, test=list(val))


def test_hand_checked_tiny_case():
    items = _items([1, 0, 1, 0, 1])
    got, short = sample_fewshot(items, 2, seed=1)
    state = random.getstate()
    random.seed(1)
    expected = random.sample([items[0], items[2], items[4]], 2) + random.sample([items[1], items[3]], 2)
    random.setstate(state)
    assert got == expected and short == {}
    assert [it.label for it in got] == [1, 1, 0, 0]  # labels in order of first appearance


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_manifest_matches_dassl(k, seed):
    ds = _toy()
    train, val = _dassl(ds.train, ds.val, k, seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = make_manifest(ds, k, seed)
    assert len(caught) == (k > 6)  # smallest train class has 6 images; val needs <= 4 of 5
    assert m["train"] == [[it.path, it.label] for it in train]
    assert m["val"] == [[it.path, it.label] for it in val]
    assert len(m["val"]) == 3 * min(k, 4)
    assert m["val_is_test"] is False


def test_global_random_untouched():
    random.seed(123)
    before = random.getstate()
    make_manifest(_toy(), 2, 1)
    assert random.getstate() == before


def test_short_class_keeps_all_and_is_recorded():
    ds = _toy()  # classes 0, 1, 2 have 7, 6, 9 train images
    with pytest.warns(UserWarning, match="fewer than 8"):
        m = make_manifest(ds, 8, 1)
    assert m["short_classes"] == {"0": 7, "1": 6}
    assert sum(lab == 2 for _, lab in m["train"]) == 8
    assert sum(lab == 1 for _, lab in m["train"]) == 6
    assert sum(lab == 0 for _, lab in m["train"]) == 7
    with pytest.warns(UserWarning):
        m16 = make_manifest(ds, 16, 1)
    assert m16["short_classes"] == {"2": 9, "0": 7, "1": 6}


def test_determinism_and_hash(tmp_path):
    ds = _toy()
    a, b, c = make_manifest(ds, 4, 1), make_manifest(ds, 4, 1), make_manifest(ds, 4, 2)
    assert a == b and a["sha256"] == b["sha256"]
    assert a["train"] != c["train"] and a["sha256"] != c["sha256"]
    path = tmp_path / "m" / "shot_4-seed_1.json"
    write_manifest(path, a)
    assert read_manifest(path) == a
    path.write_text(path.read_text().replace('"seed": 1', '"seed": 7'))
    with pytest.raises(DataError, match="sha256"):
        read_manifest(path)
    path.write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        read_manifest(path)
    with pytest.raises(DataError, match="missing keys"):
        write_manifest(path, {"train": []})


def test_bad_arguments():
    with pytest.raises(ConfigError):
        make_manifest(_toy(), 0, 1)
    with pytest.raises(ConfigError):
        make_manifest(_toy(), 1, 1, preset="fast")
    target = Dataset("imagenet_a", None, ["a"], "{}", test=_items([0]))
    with pytest.raises(DataError, match="no train split"):
        make_manifest(target, 1, 1)


def test_imagenet_presets(tmp_path):
    write_fixture("imagenet", tmp_path, n_classes=3, n_train=6, n_test=3)
    ds = load_dataset("imagenet", tmp_path)
    official = make_manifest(ds, 2, 1, preset="official")
    assert official["val_is_test"] is True
    assert {p for p, _ in official["val"]} <= {it.path for it in ds.test}
    train, val = _dassl(ds.train, ds.val, 2, 1)
    assert official["train"] == [[it.path, it.label] for it in train]
    assert official["val"] == [[it.path, it.label] for it in val]

    clean = make_manifest(ds, 2, 1, preset="clean")
    assert clean["val_is_test"] is False and clean["train"] == official["train"]
    train_paths = {it.path for it in ds.train}
    assert {p for p, _ in clean["val"]} <= train_paths
    assert not {p for p, _ in clean["val"]} & {p for p, _ in clean["train"]}
    assert len(clean["val"]) == 3 * 2
    # same stream: val is drawn after train from the remaining train images
    rest = [it for it in ds.train if [it.path, it.label] not in clean["train"]]
    _, expected_val = _dassl(ds.train, rest, 2, 1)
    assert clean["val"] == [[it.path, it.label] for it in expected_val]


def test_base_new(tmp_path):
    write_fixture("oxford_pets", tmp_path, n_classes=5, n_train=4, n_val=2, n_test=2)
    ds = load_dataset("oxford_pets", tmp_path)
    base, new = base_new_split(ds, "base"), base_new_split(ds, "new")
    assert len(base.classnames) == 3 and len(new.classnames) == 2
    assert {it.label for it in new.train} == {0, 1}
    full = make_manifest(ds, 2, 1)
    bm = base_new_manifest(full, len(ds.classnames), "new")
    assert bm["part"] == "new" and bm["sha256"] != full["sha256"]
    assert bm["train"] == [[p, lab - 3] for p, lab in full["train"] if lab >= 3]
    assert {lab for _, lab in bm["val"]} == {0, 1}

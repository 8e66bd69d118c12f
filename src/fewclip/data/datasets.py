"""The 15 datasets in CoOp's on-disk layout (SPEC §4): declarative specs and one reader per kind.

Every reader returns a `Dataset` whose items carry paths relative to the data root, so
manifests and caches stay valid when the data root moves. Anything wrong on disk raises a
`DataError` saying what is wrong, where, and how to fix it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath

from ..errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
COOP_DATASETS_MD = "CoOp DATASETS.md (github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md)"
SPLIT_JSON_HINT = f"split_zhou_*.json: Google Drive link in {COOP_DATASETS_MD}"
CLASSNAMES_HINT = f"classnames.txt: Google Drive link in {COOP_DATASETS_MD} (copy of ImageNet's)"


@dataclass(frozen=True)
class Item:
    path: str  # POSIX path relative to the data root
    label: int
    classname: str  # cleaned: underscores -> spaces


@dataclass
class Dataset:
    name: str
    root: Path  # absolute data root
    classnames: list[str]
    template: str
    train: list[Item] = field(default_factory=list)
    val: list[Item] = field(default_factory=list)
    test: list[Item] = field(default_factory=list)
    # imagenet_a / imagenet_r: ImageNet (1000-way) index of each class, in label order; else None.
    imagenet_index: list[int] | None = None

    def split(self, name: str) -> list[Item]:
        if name not in ("train", "val", "test"):
            raise ConfigError(f"unknown split {name!r}; valid: train, val, test")
        return getattr(self, name)

    def abspath(self, item: Item) -> Path:
        return self.root / item.path


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str  # as in the papers' tables
    folder: str  # under the data root
    template: str
    kind: str  # split_json | imagenet | fgvc | imagenet_v2 | imagenet_wnid | imagenet_subset
    image_dir: str  # relative to folder ("" = split paths are relative to folder itself)
    split_file: str  # relative to folder: split JSON, classnames.txt or variants.txt
    source: str  # where the files come from

    def expected_paths(self, root: Path) -> list[Path]:
        base = root / self.folder
        paths = [base / self.split_file]
        if self.kind == "imagenet":
            paths += [base / self.image_dir / "train", base / self.image_dir / "val"]
        elif self.image_dir:
            paths.append(base / self.image_dir)
        if self.kind == "fgvc":
            paths += [base / f"images_variant_{s}.txt" for s in ("train", "val", "test")]
        return paths


def _split_json(name, title, folder, image_dir, split_file, template, images_from):
    return DatasetSpec(
        name, title, folder, template, "split_json", image_dir, split_file,
        source=f"{image_dir or 'images'}: {images_from}; {SPLIT_JSON_HINT}",
    )


def _target(name, title, folder, image_dir, kind, images_from):
    return DatasetSpec(
        name, title, folder, "a photo of a {}.", kind, image_dir, "classnames.txt",
        source=f"{image_dir}: {images_from}; {CLASSNAMES_HINT}",
    )


_SPECS = [
    DatasetSpec(
        "imagenet", "ImageNet", "imagenet", "a photo of a {}.", "imagenet", "images",
        "classnames.txt",
        source="images/train, images/val: ILSVRC2012 from image-net.org (val sorted into wnid "
        f"folders); {CLASSNAMES_HINT}",
    ),
    _split_json("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories",
                "split_zhou_Caltech101.json", "a photo of a {}.",
                "101_ObjectCategories.tar.gz from data.caltech.edu"),
    _split_json("oxford_pets", "OxfordPets", "oxford_pets", "images",
                "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet.",
                "images.tar.gz from robots.ox.ac.uk/~vgg/data/pets"),
    _split_json("stanford_cars", "StanfordCars", "stanford_cars", "",
                "split_zhou_StanfordCars.json", "a photo of a {}.",
                "cars_train/ and cars_test/ (official Stanford links are dead: mirrors in "
                "KaiyangZhou/CoOp#61 and pytorch/vision#7545)"),
    _split_json("oxford_flowers", "Flowers102", "oxford_flowers", "jpg",
                "split_zhou_OxfordFlowers.json", "a photo of a {}, a type of flower.",
                "102flowers.tgz from robots.ox.ac.uk/~vgg/data/flowers/102"),
    _split_json("food101", "Food101", "food-101", "images", "split_zhou_Food101.json",
                "a photo of {}, a type of food.",
                "food-101.tar.gz from data.vision.ee.ethz.ch"),
    DatasetSpec(
        "fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "a photo of a {}, a type of aircraft.",
        "fgvc", "images", "variants.txt",
        source="the data/ folder of fgvc-aircraft-2013b.tar.gz from robots.ox.ac.uk/~vgg/data/"
        "fgvc-aircraft (images/, variants.txt, images_variant_{train,val,test}.txt)",
    ),
    _split_json("sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json",
                "a photo of a {}.",
                "SUN397.tar.gz from vision.princeton.edu (link often dead: use a mirror)"),
    _split_json("dtd", "DTD", "dtd", "images", "split_zhou_DescribableTextures.json",
                "{} texture.", "dtd-r1.0.1.tar.gz from robots.ox.ac.uk/~vgg/data/dtd"),
    _split_json("eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json",
                "a centered satellite photo of {}.",
                "EuroSAT.zip (RGB) from madm.dfki.de/files/sentinel"),
    _split_json("ucf101", "UCF101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json",
                "a photo of a person doing {}.",
                f"UCF-101-midframes.zip: Google Drive link in {COOP_DATASETS_MD}"),
    _target("imagenet_v2", "ImageNet-V2", "imagenetv2", "imagenetv2-matched-frequency-format-val",
            "imagenet_v2", "imagenetv2-matched-frequency.tar.gz from the ImageNetV2 release"),
    _target("imagenet_sketch", "ImageNet-Sketch", "imagenet-sketch", "images", "imagenet_wnid",
            "ImageNet-Sketch.zip (github.com/HaohanWang/ImageNet-Sketch), renamed sketch/ -> images/"),
    _target("imagenet_a", "ImageNet-A", "imagenet-adversarial", "imagenet-a", "imagenet_subset",
            "imagenet-a.tar from github.com/hendrycks/natural-adv-examples"),
    _target("imagenet_r", "ImageNet-R", "imagenet-rendition", "imagenet-r", "imagenet_subset",
            "imagenet-r.tar from github.com/hendrycks/imagenet-r"),
]
DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
BENCHMARK_DATASETS: tuple[str, ...] = tuple(DATASETS)  # the 15 of SPEC §4 (demo datasets are added below)


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None


def clean_classname(name: str) -> str:
    return name.replace("_", " ")


# ----------------------------------------------------------------------------- readers


def load_dataset(name: str, data_root) -> Dataset:
    spec = get_spec(name)
    root = Path(data_root).expanduser().absolute()
    base = root / spec.folder
    if not base.is_dir():
        raise DataError(
            f"{spec.title}: folder {base} not found; expected "
            f"{', '.join(str(p) for p in spec.expected_paths(root))} (source: {spec.source})"
        )
    ds = _READERS[spec.kind](spec, root)
    _check_classes(spec, ds)
    return ds


def _rel(root: Path, path: Path) -> str:
    return path.relative_to(root).as_posix()


def _read_lines(path: Path, spec: DatasetSpec) -> list[str]:
    if not path.is_file():
        raise DataError(f"{spec.title}: {path} not found (source: {spec.source})")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{spec.title}: cannot read {path} ({err}); re-download it (source: {spec.source})") from err
    return [line.strip() for line in text.splitlines() if line.strip()]


def _safe_relpath(rel, where: str) -> str:
    """Reject absolute paths and `..` so every item stays inside the data root."""
    if not isinstance(rel, str) or not rel:
        raise DataError(f"{where}: image path must be a non-empty string, got {rel!r}")
    posix, win = PurePosixPath(rel), PureWindowsPath(rel)
    if posix.is_absolute() or win.is_absolute() or win.drive or ".." in posix.parts or ".." in win.parts:
        raise DataError(
            f"{where}: image path {rel!r} escapes the data root (absolute or '..'); "
            "use the published split file"
        )
    return posix.as_posix()


def _read_split_json(spec: DatasetSpec, root: Path) -> Dataset:
    path = root / spec.folder / spec.split_file
    fix = f"download the published {spec.split_file} ({SPLIT_JSON_HINT}) into {path.parent}"
    if not path.is_file():
        raise DataError(f"{spec.title}: split file {path} not found; {fix}")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DataError(f"{spec.title}: split file {path} is not valid JSON ({err}); {fix}") from err
    if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in ("train", "val", "test")):
        raise DataError(
            f"{spec.title}: split file {path} must be an object with lists 'train', 'val', 'test' "
            f"of [path, label, classname]; {fix}"
        )
    prefix = PurePosixPath(spec.folder, spec.image_dir)
    names: dict[int, str] = {}
    splits: dict[str, list[tuple[str, int, str]]] = {}
    for split in ("train", "val", "test"):
        rows = []
        for i, entry in enumerate(data[split]):
            where = f"{spec.title}: {path} {split}[{i}]"
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[2], str)
                    and isinstance(entry[1], int) and not isinstance(entry[1], bool)):
                raise DataError(f"{where} = {entry!r} is not [path, label, classname]; {fix}")
            rel, label, cname = entry
            rel = (prefix / _safe_relpath(rel, where)).as_posix()
            if label < 0:
                raise DataError(f"{where}: label {label} out of range (labels start at 0); {fix}")
            if names.setdefault(label, cname) != cname:
                raise DataError(
                    f"{where}: label {label} is {cname!r} here but {names[label]!r} earlier; {fix}"
                )
            rows.append((rel, label, cname))
        splits[split] = rows
    n = 1 + max((lab for _, lab, _ in splits["train"]), default=-1)
    for split in ("val", "test"):
        for i, (_, label, _) in enumerate(splits[split]):
            if label >= n:
                raise DataError(
                    f"{spec.title}: {path} {split}[{i}]: label {label} out of range "
                    f"(train labels are 0..{n - 1}); {fix}"
                )
    classnames = [clean_classname(names[lab]) if lab in names else "" for lab in range(n)]
    return Dataset(
        spec.name, root, classnames, spec.template,
        **{s: [Item(rel, lab, classnames[lab]) for rel, lab, _ in rows] for s, rows in splits.items()},
    )


def _image_files(folder: Path) -> list[Path]:
    with os.scandir(folder) as entries:  # scandir: no extra stat per file on 1.3M ImageNet images
        names = [e.name for e in entries if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    return [folder / n for n in sorted(names)]


def _subdirs(folder: Path, spec: DatasetSpec) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{spec.title}: image folder {folder} not found (source: {spec.source})")
    dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if not dirs:
        raise DataError(f"{spec.title}: {folder} has no class folders (source: {spec.source})")
    return dirs


def _read_classnames(spec: DatasetSpec, root: Path) -> dict[str, str]:
    """classnames.txt: '<wnid> <name with spaces>' per line, in the standard ImageNet order."""
    path = root / spec.folder / spec.split_file
    out: dict[str, str] = {}
    for i, line in enumerate(_read_lines(path, spec)):
        wnid, _, cname = line.partition(" ")
        if not cname.strip():
            raise DataError(f"{spec.title}: {path} line {i + 1} {line!r} is not '<wnid> <class name>'")
        out[wnid] = cname.strip()
    return out


def _wnid_items(root, folders, wnid_to_label, classnames) -> list[Item]:
    items = []
    for folder in folders:
        label = wnid_to_label[folder.name]
        items += [Item(_rel(root, p), label, classnames[label]) for p in _image_files(folder)]
    return items


def _lookup(spec, root, names: dict[str, str], wnids: list[str]) -> list[str]:
    unknown = [w for w in wnids if w not in names]
    if unknown:
        raise DataError(
            f"{spec.title}: class folders {unknown[:5]} are not in {root / spec.folder / spec.split_file}; "
            f"use the classnames.txt from {COOP_DATASETS_MD}"
        )
    return [clean_classname(names[w]) for w in wnids]


def _read_imagenet(spec: DatasetSpec, root: Path) -> Dataset:
    names = _read_classnames(spec, root)
    images = root / spec.folder / spec.image_dir
    train_dirs = _subdirs(images / "train", spec)
    val_dirs = _subdirs(images / "val", spec)
    wnids = [d.name for d in train_dirs]
    if [d.name for d in val_dirs] != wnids:
        raise DataError(
            f"{spec.title}: {images / 'val'} and {images / 'train'} have different class folders; "
            "sort the validation images into the same wnid folders as train"
        )
    classnames = _lookup(spec, root, names, wnids)
    index = {w: i for i, w in enumerate(wnids)}
    val = _wnid_items(root, val_dirs, index, classnames)
    return Dataset(spec.name, root, classnames, spec.template,
                   train=_wnid_items(root, train_dirs, index, classnames), val=val, test=list(val))


def _read_fgvc(spec: DatasetSpec, root: Path) -> Dataset:
    base = root / spec.folder
    variants = _read_lines(base / spec.split_file, spec)
    label_of = {v: i for i, v in enumerate(variants)}
    classnames = [clean_classname(v) for v in variants]
    splits = {}
    for split in ("train", "val", "test"):
        path = base / f"images_variant_{split}.txt"
        items = []
        for i, line in enumerate(_read_lines(path, spec)):
            image_id, _, variant = line.partition(" ")
            if variant not in label_of:
                raise DataError(f"{spec.title}: {path} line {i + 1}: variant {variant!r} not in {base / spec.split_file}")
            image = _safe_relpath(f"{image_id}.jpg", f"{spec.title}: {path} line {i + 1}")
            label = label_of[variant]
            items.append(Item(f"{spec.folder}/{spec.image_dir}/{image}", label, classnames[label]))
        splits[split] = items
    return Dataset(spec.name, root, classnames, spec.template, **splits)


def _read_imagenet_v2(spec: DatasetSpec, root: Path) -> Dataset:
    classnames = [clean_classname(c) for c in _read_classnames(spec, root).values()]
    folders = _subdirs(root / spec.folder / spec.image_dir, spec)
    for folder in folders:
        if not (folder.name.isdigit() and int(folder.name) < len(classnames)):
            raise DataError(
                f"{spec.title}: folder {folder} is not a class number 0..{len(classnames) - 1}; "
                f"expected the layout of {spec.source}"
            )
    test = []
    for folder in sorted(folders, key=lambda p: int(p.name)):
        label = int(folder.name)
        test += [Item(_rel(root, p), label, classnames[label]) for p in _image_files(folder)]
    return Dataset(spec.name, root, classnames, spec.template, test=test)


def _read_imagenet_wnid(spec: DatasetSpec, root: Path) -> Dataset:
    names = _read_classnames(spec, root)
    dirs = _subdirs(root / spec.folder / spec.image_dir, spec)
    wnids = [d.name for d in dirs]
    classnames = _lookup(spec, root, names, wnids)
    index = {w: i for i, w in enumerate(wnids)}
    return Dataset(spec.name, root, classnames, spec.template,
                   test=_wnid_items(root, dirs, index, classnames))


def _read_imagenet_subset(spec: DatasetSpec, root: Path) -> Dataset:
    ds = _read_imagenet_wnid(spec, root)
    position = {w: i for i, w in enumerate(_read_classnames(spec, root))}
    wnids = [d.name for d in _subdirs(root / spec.folder / spec.image_dir, spec)]
    ds.imagenet_index = [position[w] for w in wnids]
    return ds


_READERS = {
    "split_json": _read_split_json,
    "imagenet": _read_imagenet,
    "fgvc": _read_fgvc,
    "imagenet_v2": _read_imagenet_v2,
    "imagenet_wnid": _read_imagenet_wnid,
    "imagenet_subset": _read_imagenet_subset,
}


def _check_classes(spec: DatasetSpec, ds: Dataset) -> None:
    """Every class of a dataset with a train split needs train images; targets need test images."""
    source = "train" if ds.train else "test"
    seen = {it.label for it in ds.split(source)}
    if not seen:
        raise DataError(f"{spec.title}: no images found under {ds.root / spec.folder} (source: {spec.source})")
    empty = [i for i in range(len(ds.classnames)) if i not in seen]
    if empty:
        raise DataError(
            f"{spec.title}: {len(empty)} class(es) have no {source} images (labels {empty[:5]}) in "
            f"{ds.root / spec.folder / spec.split_file if spec.kind != 'imagenet' else ds.root / spec.folder}; "
            f"re-download the published files ({spec.source})"
        )


# ----------------------------------------------------------------------------- checks


def check_dataset(name: str, data_root) -> dict:
    """Existence check (no decoding): {"status": ok|missing|broken, counts..., "problems": [...]}."""
    spec = get_spec(name)
    root = Path(data_root).expanduser().absolute()
    report = {"status": "ok", "classes": None, "train": None, "val": None, "test": None, "problems": []}
    if not (root / spec.folder).is_dir():
        report["status"] = "missing"
        report["problems"] = [f"{p} not found" for p in spec.expected_paths(root)]
        report["problems"].append(f"source: {spec.source}")
        return report
    try:
        ds = load_dataset(name, root)
    except (DataError, OSError) as err:
        report.update(status="broken", problems=[str(err)])
        return report
    report.update(classes=len(ds.classnames), **{s: len(ds.split(s)) for s in ("train", "val", "test")})
    if spec.kind not in ("split_json", "fgvc"):
        return report  # the folder readers only list files that exist
    missing = sorted({it.path for s in ("train", "val", "test") for it in ds.split(s)
                      if not (root / it.path).is_file()})
    if missing:
        report["status"] = "broken"
        report["problems"] = [f"{len(missing)} image file(s) listed in the split are missing under {root}"]
        report["problems"] += [f"missing: {root / p}" for p in missing[:5]]
        report["problems"].append(f"re-copy the images (source: {spec.source})")
    return report


# ----------------------------------------------------------------------------- base-to-new


def base_new_split(ds: Dataset, part: str) -> Dataset:
    """CoCoOp base-to-new (SPEC §3): base = first ceil(n/2) labels, new = the rest, relabelled from 0."""
    labels = base_new_labels(len(ds.classnames), part)
    relabel = {old: new for new, old in enumerate(labels)}

    def keep(items: list[Item]) -> list[Item]:
        return [replace(it, label=relabel[it.label]) for it in items if it.label in relabel]

    return Dataset(
        ds.name, ds.root, [ds.classnames[i] for i in labels], ds.template,
        train=keep(ds.train), val=keep(ds.val), test=keep(ds.test),
        imagenet_index=None if ds.imagenet_index is None else [ds.imagenet_index[i] for i in labels],
    )


def base_new_labels(n_classes: int, part: str) -> list[int]:
    """The original labels of the `base` or `new` half, in order (their new labels are 0, 1, ...)."""
    m = math.ceil(n_classes / 2)
    if part == "base":
        return list(range(m))
    if part == "new":
        return list(range(m, n_classes))
    raise ConfigError(f"unknown base-to-new part {part!r}; valid: base, new")


# ----------------------------------------------------------------------------- demo world
# The embedded demo's generated datasets (fewclip.data.demo writes them), in the same layouts
# and read by the same readers as the real ones. BENCHMARK_DATASETS keeps the 15 of SPEC §4.

_DEMO_SOURCE = "generated: run `fewclip generate demo --out DATA_ROOT` (fewclip.data.demo)"
_DEMO_SPECS = [
    DatasetSpec("demo_shapes", "Demo-Shapes", "demo_shapes", "a photo of a {}.", "imagenet", "images",
                "classnames.txt", source=_DEMO_SOURCE),
    DatasetSpec("demo_textures", "Demo-Textures", "demo_textures", "{} texture.", "split_json", "images",
                "split_demo.json", source=_DEMO_SOURCE),
    DatasetSpec("demo_scenes", "Demo-Scenes", "demo_scenes", "a photo of a {}.", "split_json", "images",
                "split_demo.json", source=_DEMO_SOURCE),
    DatasetSpec("demo_shapes_v2", "Demo-Shapes-V2", "demo_shapes_v2", "a photo of a {}.", "imagenet_v2",
                "images", "classnames.txt", source=_DEMO_SOURCE),
    DatasetSpec("demo_shapes_sketch", "Demo-Shapes-Sketch", "demo_shapes_sketch", "a photo of a {}.",
                "imagenet_wnid", "images", "classnames.txt", source=_DEMO_SOURCE),
    DatasetSpec("demo_shapes_a", "Demo-Shapes-A", "demo_shapes_a", "a photo of a {}.", "imagenet_subset",
                "images", "classnames.txt", source=_DEMO_SOURCE),
    DatasetSpec("demo_shapes_r", "Demo-Shapes-R", "demo_shapes_r", "a photo of a {}.", "imagenet_subset",
                "images", "classnames.txt", source=_DEMO_SOURCE),
]
DEMO_DATASETS: tuple[str, ...] = tuple(s.name for s in _DEMO_SPECS)
DATASETS.update({s.name: s for s in _DEMO_SPECS})

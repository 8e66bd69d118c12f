"""Nothing is written outside its tree: every path from a sources table or an archive, and every name
that becomes a folder (backbone keys, methods), is checked before anything is fetched, written, moved
or deleted; a path Snakemake would parse for wildcards holds no brace. Each case is a refusal: one
clear error naming the table entry or the config key, and a sentinel outside the tree untouched."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import refused
from test_download import loopback_only, serve_dataset, server  # noqa: F401 (fixtures)

from fewclip import paths
from fewclip.data import download
from fewclip.errors import ConfigError, DataError
from fewclip.plan import SCHEMA

SENTINEL = b"the user's file: never overwritten, moved or deleted\n"
ESCAPE = "../../../sentinel.txt"  # from <data-root>/.downloads/dtd, from the staged dtd folder, from the extraction folder


def _name(entry):
    entry["files"][1]["name"] = ESCAPE


def _place_file(entry):
    entry["files"][1]["place"] = {"file": ESCAPE}


def _absolute_place_file(entry, outside):
    entry["files"][1]["place"] = {"file": str(outside / "sentinel.txt")}


def _extract_target(entry):
    entry["files"][0]["place"]["extract"] = {"dtd/images": "../../../escaped", "dtd": ""}


def _extract_member(entry):  # "moves" the user's file into the dataset (and the staging folder's removal deletes it)
    entry["files"][0]["place"]["extract"] = {"dtd": "", ESCAPE: "moved.txt"}


def _reuse(entry):  # would copy the user's file into the dataset
    entry["files"][1]["reuse"] = "../sentinel.txt"


@pytest.mark.parametrize("mutate, words", [
    (_name, ["dtd files[1] name", "'..'"]),
    (_place_file, ["dtd files[1] place.file", "'..'"]),
    (_absolute_place_file, ["dtd files[1] place.file", "absolute"]),
    (_extract_target, ["dtd files[0] place.extract target", "'..'"]),
    (_extract_member, ["dtd files[0] place.extract member", "'..'"]),
    (_reuse, ["dtd files[1] reuse", "'..'"]),
], ids=["name", "place.file", "absolute place.file", "extract target", "extract member", "reuse"])
def test_a_sources_table_path_leading_out_of_the_data_root_is_refused_before_any_fetch(
        mutate, words, server, tmp_path, cli):
    """A sources table entry whose path leaves its folder: the table is refused, naming the table,
    the entry and the field, before any request; the file outside the data root is untouched and
    nothing is written beside it."""
    outside = tmp_path / "outside"
    root = outside / "data"  # every escape above lands in `outside`
    outside.mkdir()
    (outside / "sentinel.txt").write_bytes(SENTINEL)
    entry = serve_dataset("dtd", server, tmp_path / "src")
    if mutate is _absolute_place_file:
        mutate(entry, outside)
    else:
        mutate(entry)
    table = tmp_path / "sources.json"
    table.write_text(json.dumps({"version": 1, "datasets": {"dtd": entry}}))

    proc = cli("download", "dtd", "--data-root", root, "--sources", table)

    refused(proc, "sources table", str(table), *words)
    assert server.requests == []  # refused before fetching anything
    assert (outside / "sentinel.txt").read_bytes() == SENTINEL
    assert sorted(p.name for p in outside.iterdir()) == ["sentinel.txt"]  # no data root, nothing escaped


def test_the_packaged_table_passes_the_same_check():
    table = download.load_sources()  # checks every entry
    assert download.sources_of(table, "fgvc_aircraft")[1][0].extract == {"fgvc-aircraft-2013b/data": ""}


def _archive(kind: str, member: str) -> bytes:
    buf = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("dtd/ok.txt", b"ok")
            zf.writestr(member, b"escaped")
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as tf:
            for name, data in (("dtd/ok.txt", b"ok"), (member, b"escaped")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_an_archive_member_leading_out_is_refused_by_the_same_rule(kind, tmp_path):
    """Archive members pass the rule the sources table's paths pass: '..' is refused with a message
    naming the archive and the member (zipfile would silently rename it; tarfile's filter would call
    the archive corrupt)."""
    archive = tmp_path / f"a.{kind}"
    archive.write_bytes(_archive(kind, "../escaped.txt"))
    dest = tmp_path / "x" / "dest"
    dest.mkdir(parents=True)
    with pytest.raises(DataError, match=r"member '\.\./escaped\.txt' contains '\.\.'.*outside") as err:
        download.extract_archive(archive, dest)
    assert archive.name in str(err.value)
    assert not (tmp_path / "x" / "escaped.txt").exists() and not (dest / "escaped.txt").exists()


# ----------------------------------------------------------------------------- names that become folders


def _config(tmp_path, **change) -> str:
    config = {
        "data_root": str(tmp_path / "data"),
        "seeds": [1],
        "backbones": {"tiny": {"model": "fewclip-tiny-vit", "pretrained": "none"}},
        "protocols": {"fewshot": {"datasets": ["demo_shapes"], "shots": [1],
                                  "runs": [{"backbone": "tiny", "methods": ["zeroshot"]}]}},
    }
    key = change.pop("backbone_key", None)
    if key is not None:
        config["backbones"] = {key: config["backbones"]["tiny"]}
        config["protocols"]["fewshot"]["runs"][0]["backbone"] = key
    config.update(change)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.parametrize("key", ["..", ".tiny", "a/b"])
def test_a_backbone_key_that_is_not_one_plain_folder_is_refused_by_plan(key, tmp_path, cli):
    """'..' would put outputs outside results/runs and results/features; '.tiny' is a hidden folder
    `fewclip collect` skips after every cell has run."""
    proc = cli("plan", "--configfile", _config(tmp_path, backbone_key=key))
    line = refused(proc, "config key backbones", repr(key), "letters, digits")
    assert "does not match" not in line  # our sentence, not the schema's


@pytest.mark.parametrize("key", ["..", ".tiny"])
def test_snakemakes_schema_refuses_the_same_backbone_keys(key, tmp_path):
    """The Snakefile validates the config against the schema first: its pattern is the Python rule."""
    from snakemake.utils import validate

    schema = yaml.safe_load(SCHEMA.read_text())
    assert schema["properties"]["backbones"]["propertyNames"]["pattern"] == paths.NAME_PATTERN
    config = yaml.safe_load(Path(_config(tmp_path, backbone_key=key)).read_text())
    with pytest.raises(Exception, match="does not match"):
        validate(config, str(SCHEMA))
    validate(yaml.safe_load(Path(_config(tmp_path)).read_text()), str(SCHEMA))  # a plain key passes


@pytest.mark.parametrize("value", ["ok", "a.b-c_1", "RN50", "ViT-B-16"])
def test_plain_names_pass_the_rule(value):
    assert paths.check_name("backbone key", value) == value


@pytest.mark.parametrize("value, why", [
    ("..", "starts with a dot"), (".tiny", "starts with a dot"), ("../../X", "path separator"),
    ("a\\b", "path separator"), ("", "empty"), ("a b", "characters other than"), ("a\n", "characters other than"),
    (3, "not a string"),
])
def test_names_that_are_not_one_plain_folder_fail_the_rule(value, why):
    with pytest.raises(ConfigError, match=why):
        paths.check_name("backbone key", value, "config key backbones")


@pytest.mark.parametrize("verb", ["run", "encode"])
def test_a_backbone_key_leading_out_of_the_features_root_is_refused_with_nothing_written(
        verb, tmp_path, fixture_root, cli):
    work = tmp_path / "work"
    work.mkdir()
    common = ["--backbone", "fewclip-tiny-vit", "--backbone-key", "../../X", "--pretrained", "none",
              "--device", "cpu", "--data-root", fixture_root, "--dataset", "dtd"]
    if verb == "run":
        args = ["run", *common, "--method", "zeroshot", "--shots", "1", "--seed", "1",
                "--out", work / "run", "--features", work / "a" / "features"]
    else:
        args = ["encode", *common, "--out", work / "a" / "features" / "tiny" / "dtd"]
    proc = cli(*args)
    refused(proc, "--backbone-key", "'../../X'", "path separator")
    assert list(tmp_path.rglob("*")) == [work]  # nothing written, inside --features or beside it


def test_a_model_name_that_cannot_be_a_folder_needs_a_backbone_key(tmp_path, fixture_root, cli):
    """Without --backbone-key the model name is the key: one with a '/' (an hf-hub name) is refused."""
    proc = cli("run", "--backbone", "hf-hub:timm/some-clip", "--pretrained", "none", "--device", "cpu",
               "--data-root", fixture_root, "--dataset", "dtd", "--method", "zeroshot", "--shots", "1",
               "--seed", "1", "--out", tmp_path / "run", "--features", tmp_path / "features")
    refused(proc, "--backbone", "--backbone-key NAME", "path separator")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- braces


@pytest.mark.parametrize("key", ["data_root", "download_sources"])
def test_braces_in_a_path_snakemake_parses_are_refused_naming_the_key(key, tmp_path, cli):
    value = str(tmp_path / "da{ta}")
    proc = cli("plan", "--configfile", _config(tmp_path, **{key: value}))
    refused(proc, f"config key {key}", value, "'{'", "rename the folder")

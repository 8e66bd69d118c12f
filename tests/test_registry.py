"""Every registered method (built-in, or a plugin named in FEWCLIP_PLUGINS when the suite runs)
gets, for free: a contract check of its declarations, a smoke run of one cell through the engine,
and the planner's and the run's hyper-parameters agreeing digest for digest."""

from __future__ import annotations

import json

import pytest
import torch

from fewclip.constants import PRESETS, PROTOCOLS
from fewclip.engine.run import RunSpec, run_cell
from fewclip.errors import ConfigError
from fewclip.methods import HP, REGISTRY, DataNeeds, Method, load_all, resolve_hparams
from fewclip.plan import check_config, plan

load_all()
NAMES = sorted(REGISTRY)
DATASET = "eurosat"


def _fast(name: str) -> dict:
    """Overrides that keep a training cell to seconds on the tiny model (one epoch)."""
    hp = REGISTRY[name].hparams
    fast = {k: 1 for k in ("epochs", "guidance_epochs") if k in hp}
    if "views" in hp:
        fast["views"] = 2
    return fast


@pytest.mark.parametrize("name", NAMES)
def test_declarations_are_complete(name):
    """needs, resources, hyper-parameter specs whose defaults obey their own rules, every
    preset and protocol resolving, and DataNeeds answered before setup."""
    cls = REGISTRY[name]
    assert cls.needs in ("features", "images")
    assert set(cls.resource_needs()) == {"mem_mb", "runtime"} and all(v > 0 for v in cls.resource_needs().values())
    assert set(cls.hparam_specs) == set(cls.hparams)
    for key, spec in cls.hparam_specs.items():
        assert isinstance(spec, HP)
        assert spec.problem(key, spec.default) is None, (key, spec.default)
    for preset in PRESETS:
        for protocol in PROTOCOLS:
            hp = resolve_hparams(cls, DATASET, 4, preset, None, protocol)
            needs = cls(hp).data_needs()  # answered from the hyper-parameters alone
            assert isinstance(needs, DataNeeds)
            if cls.trains:
                assert needs.batch_size >= 1 and (hp["epochs"] >= 1 or hp.get("iters", 0) >= 1)  # a step budget


@pytest.mark.parametrize("name", NAMES)
def test_declared_ranges_refuse_bad_values(name):
    """A value outside a declared range or choice set is refused by name, before any work."""
    cls = REGISTRY[name]
    bad = {}
    for key, spec in cls.hparam_specs.items():
        if spec.type in (int, float) and spec.min is not None:
            bad[key] = spec.type(spec.min - 1)
        elif spec.type in (int, float) and spec.above is not None:
            bad[key] = spec.type(spec.above)
        elif spec.type is str and spec.allowed() is not None:
            bad[key] = "no-such-choice"
    if bad:
        with pytest.raises(ConfigError) as err:
            resolve_hparams(cls, DATASET, 4, "clean", bad)
        for key in bad:
            assert f"{key}=" in str(err.value)
    with pytest.raises(ConfigError, match="has no hyper-parameter 'no_such_key'"):
        resolve_hparams(cls, DATASET, 4, "clean", {"no_such_key": 1})


def test_every_builtin_declares_its_ranges():
    """No built-in leaves its numeric or choice keys unchecked (the registry knows no key by name)."""
    for name in NAMES:
        cls = REGISTRY[name]
        if not cls.__module__.startswith("fewclip.methods."):
            continue
        for key, spec in cls.hparam_specs.items():
            if spec.type in (int, float) and key not in ("init_alpha", "beta_max", "alpha_max"):
                assert spec.min is not None or spec.above is not None or spec.max is not None, (name, key)


def test_base_to_half_keeps_exempt_buffers():
    """The default precision hook: half weights, exempt buffers untouched, flagged once."""

    class Toy(Method):
        name = "toy_half"

        def half_exempt(self):
            return ["keep"]

    toy = Toy({})
    toy.w = torch.nn.Parameter(torch.ones(2))
    toy.register_buffer("keep", torch.ones(2, dtype=torch.float64))
    toy.register_buffer("cast", torch.ones(2))
    toy.to_half()
    assert toy.is_half and toy.w.dtype == torch.float16 and toy.cast.dtype == torch.float16
    assert toy.keep.dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_smoke_run_matches_the_plan(name, tmp_path, fixture_root, one_torch_thread):
    """One cell of the method through `run_cell`, with the digest the planner computed for the
    same config: the run accepts it and records exactly the planned hyper-parameters."""
    fast = _fast(name)
    config = check_config({
        "data_root": str(fixture_root), "seeds": [1], "device": "cpu", "views": 2, "templates": ["dataset"],
        "backbones": {"tiny": {"model": "fewclip-tiny-vit", "pretrained": "none"}},
        "method_params": {name: fast} if fast else {},
        "protocols": {"fewshot": {"datasets": [DATASET], "shots": [1], "runs": [{"backbone": "tiny", "methods": [name]}]}},
    })
    (planned,) = plan(config)
    out = tmp_path / "run"
    spec = RunSpec(data_root=str(fixture_root), dataset=DATASET, method=name, backbone="fewclip-tiny-vit",
                   out=str(out), shots=1, seed=1, pretrained="none", overrides=fast,
                   features=str(tmp_path / "features"), expect_hparams=planned.hparams_sha)
    metrics = run_cell(spec)
    assert metrics["status"] == "complete" and metrics["method"] == name
    assert 0.0 <= metrics["top1"] <= 100.0 and metrics["n_test"] > 0
    assert metrics["hparams"] == planned.hparams
    assert json.loads((out / "metrics.json").read_text())["hparams"] == planned.hparams
    if REGISTRY[name].trains:
        assert metrics["train"]["steps"] >= 1 and metrics["trainable_params"] > 0

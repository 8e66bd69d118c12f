"""A few-shot run may pick some of the protocol's K (`runs[].shots`), as an official script that
ships one shot count (KgCoOp's 4-shot `xd_train.sh`): the planner, the batched jobs and the
schema follow it, and a run asking for something else is refused naming the key."""

from __future__ import annotations

import pytest

from fewclip.errors import ConfigError
from fewclip.grid import expand_grid
from fewclip.plan import check_config

TINY = {"tiny": {"model": "fewclip-tiny-vit", "pretrained": "none"}}


def config(fewshot_runs, base2new_runs=None) -> dict:
    protocols = {"fewshot": {"datasets": ["dtd"], "shots": [1, 2, 4], "runs": fewshot_runs}}
    if base2new_runs:
        protocols["base2new"] = {"datasets": ["dtd"], "shots": 4, "runs": base2new_runs}
    return {"data_root": "/data", "seeds": [1, 2], "backbones": TINY, "protocols": protocols}


def test_a_runs_own_shots_narrow_its_cells_only():
    cfg = check_config(config([{"backbone": "tiny", "methods": ["zeroshot", "coop"]},
                               {"backbone": "tiny", "methods": ["kgcoop"], "shots": [4]}]))
    cells = expand_grid(cfg, sample_free={"zeroshot"})
    ks = {m: sorted({(c.shots, c.seed) for c in cells if c.method == m}) for m in ("zeroshot", "coop", "kgcoop")}
    assert ks["kgcoop"] == [(4, 1), (4, 2)]
    assert ks["coop"] == [(k, s) for k in (1, 2, 4) for s in (1, 2)]
    assert ks["zeroshot"] == [(1, 1)]  # the protocol's first K and seed, as without run shots


@pytest.mark.parametrize("runs,base2new,words", [
    ([{"backbone": "tiny", "methods": ["kgcoop"], "shots": [8]}], None,
     ["protocols.fewshot.runs[0].shots", "[8] not in protocols.fewshot.shots"]),
    ([{"backbone": "tiny", "methods": ["coop"]}, {"backbone": "tiny", "methods": ["zeroshot", "kgcoop"], "shots": [4]}],
     None, ["protocols.fewshot.runs[1].shots", "zeroshot reads no few-shot sample"]),
    ([{"backbone": "tiny", "methods": ["coop"]}], [{"backbone": "tiny", "methods": ["kgcoop"], "shots": [4]}],
     ["protocols.base2new.runs[0].shots", "only few-shot runs"]),
])
def test_other_run_shots_are_refused_naming_the_key(runs, base2new, words):
    with pytest.raises(ConfigError) as err:
        check_config(config(runs, base2new))
    for word in words:
        assert word in str(err.value)


def test_the_schema_refuses_an_empty_or_non_integer_list():
    for bad in ([], ["4"], [0]):
        with pytest.raises(ConfigError, match="shots"):
            check_config(config([{"backbone": "tiny", "methods": ["kgcoop"], "shots": bad}]))

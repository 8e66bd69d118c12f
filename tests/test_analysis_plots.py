"""One colour and one marker per method across every figure of a report (`plots.method_style`).

The styles are read back from the drawn matplotlib artists (`plots._save` patched to look at each
figure before it is written): the legend's entries for the shot curves and the DG bars, the
coloured labels and rank markers for the critical-difference diagram."""

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle
from matplotlib.patches import Rectangle
from test_analysis_fixtures import grid_config, make_runs

from fewclip.analysis import paper, plots
from fewclip.analysis.collect import collect_runs
from fewclip.analysis.report import build_report

SHAPES = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*", "d", "H", "8")


def _shape(collection: PathCollection) -> str | None:
    """The marker code a scatter was drawn with (matched on its path's vertices)."""
    drawn = collection.get_paths()[0].vertices
    for code in SHAPES:
        style = MarkerStyle(code)
        ref = style.get_path().transformed(style.get_transform()).vertices
        if ref.shape == drawn.shape and np.allclose(ref, drawn):
            return code
    return None


def figure_styles(fig) -> dict[str, tuple[str, str | None]]:
    """{method: (colour '#rrggbb', marker or None)} as a reader of the figure sees them; asserts the
    lines and bars actually drawn use only the legend's styles."""
    styles = {}
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for legend in legends:
        for text, handle in zip(legend.get_texts(), legend.legend_handles):
            if isinstance(handle, Line2D):
                styles[text.get_text()] = (to_hex(handle.get_color()), handle.get_marker())
            elif isinstance(handle, Rectangle):
                styles[text.get_text()] = (to_hex(handle.get_facecolor()), None)
    if legends:
        for ax in fig.axes:
            for line in ax.get_lines():
                if line.get_marker() not in (None, "", "None"):  # a method's line (not a bar's grey error bar)
                    style = (to_hex(line.get_color()), line.get_marker())
                    assert style in styles.values(), style
            for patch in ax.patches:
                if patch.get_height() > 0:
                    assert to_hex(patch.get_facecolor()) in {c for c, _ in styles.values()}
        return styles
    # a critical-difference diagram: a label "name (rank)" or "(rank) name" per method in its colour,
    # and one rank marker per method on the axis
    ax = fig.axes[0]
    for text in ax.texts:
        name = re.sub(r"\s*\([^)]*\)\s*", "", text.get_text()).strip()
        if name and not text.get_text().startswith("CD ="):
            styles[name] = (to_hex(text.get_color()), None)
    markers = {to_hex(c.get_facecolor()[0]): _shape(c) for c in ax.collections if isinstance(c, PathCollection)}
    return {name: (colour, markers.get(colour)) for name, (colour, _) in styles.items()}


@pytest.fixture()
def drawn(monkeypatch):
    """{figure stem name: styles} of every figure drawn while it is active (nothing is written)."""
    seen = {}
    monkeypatch.setattr(plots, "_save", lambda fig, stem: seen.__setitem__(stem.name, figure_styles(fig)) or [])
    return seen


def test_one_style_per_method_across_a_reports_figures(tmp_path, monkeypatch):
    """The curves, the DG bars and the CD diagrams of one report give each method one colour (and
    one marker where the figure has markers); coop is in all three kinds."""
    seen = {}
    original = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, stem: seen.__setitem__(stem.name, figure_styles(fig)) or original(fig, stem))
    runs = make_runs(tmp_path, grid_config(seeds=(1, 2)))
    build_report(collect_runs(runs), runs, tmp_path / "reports", n_resamples=50, workers=0)
    kinds = {"fewshot_curves_rn50", "dg_vitb16_16shot"} | {n for n in seen if n.startswith("cd_fewshot_")}
    assert {"fewshot_curves_rn50", "dg_vitb16_16shot"} <= set(seen) and len(kinds) > 2, sorted(seen)
    colours, markers = {}, {}
    for name, styles in seen.items():
        assert len({c for c, _ in styles.values()}) == len(styles), (name, styles)  # no two methods share one
        for method, (colour, marker) in styles.items():
            colours.setdefault(method, {})[name] = colour
            if marker is not None:
                markers.setdefault(method, {})[name] = marker
    assert set(colours["coop"]) == kinds  # coop is drawn in every figure
    for method in colours:
        assert len(set(colours[method].values())) == 1, (method, colours[method])
        assert len(set(markers.get(method, {}).values())) <= 1, (method, markers[method])
    assert set(markers["coop"]) == kinds - {"dg_vitb16_16shot"}  # curves and CD diagrams show markers
    for method, by_figure in colours.items():
        assert set(by_figure.values()) == {plots.method_style(method)[0]}


def _curves(methods):
    rows = [{"panel": p, "method": m, "shots": k, "seed": s, "top1": 40.0 + 3 * i + 4 * np.log2(k) + s}
            for p in ("dtd", "Average") for i, m in enumerate(methods) for k in (1, 2, 4) for s in (1, 2)]
    return pd.DataFrame(rows), ["dtd", "Average"]


def _draw(kind, methods, stem):
    if kind == "curves":
        data, panels = _curves(methods)
        plots.shot_curves(stem, data, "curves", methods, panels)
    elif kind == "dg":
        data = pd.DataFrame([{"eval_dataset": d, "method": m, "top1": 50.0 + i + j}
                             for j, d in enumerate(["imagenet", "imagenetv2"]) for i, m in enumerate(methods) for _ in range(2)])
        plots.dg_bars(stem, data, "DG", methods, ["imagenet", "imagenetv2"])
    else:
        ranks = pd.Series(np.linspace(1.0, len(methods), len(methods)), index=methods)
        pvalues = pd.DataFrame(0.5, index=methods, columns=methods)
        plots.cd_diagram(stem, ranks, pvalues, "CD")


@pytest.mark.parametrize("kind", ["curves", "dg", "cd"])
def test_adding_or_removing_methods_keeps_each_methods_style(kind, drawn, tmp_path):
    grids = {"few": ["coop", "linear_probe"],
             "more": ["zeroshot", "linear_probe", "tip_adapter", "coop", "my_plugin"],
             "other_order": ["my_plugin", "coop", "cocoop", "linear_probe"]}
    for name, methods in grids.items():
        _draw(kind, methods, tmp_path / name)
        assert set(drawn[name]) == set(methods), drawn[name]
    for method in ("coop", "linear_probe", "my_plugin"):
        styles = {drawn[name][method] for name in grids if method in drawn[name]}
        assert len(styles) == 1, (kind, method, styles)
        colour, marker = styles.pop()
        expected = plots.method_style(method)
        assert colour == expected[0] and marker in (None, expected[1])


def test_built_in_methods_never_share_a_colour_or_marker():
    styles = [plots.method_style(m) for m in paper.METHOD_ORDER]
    assert len({c for c, _ in styles}) == len(styles)
    assert len({m for _, m in styles}) == len(styles)
    assert styles[:2] == [("#1f77b4", "o"), ("#ff7f0e", "s")]  # tab10 in METHOD_ORDER: zeroshot, linear_probe
    builtin, other = plots._palettes()
    assert len(paper.METHOD_ORDER) <= len(builtin) and not set(other) & set(builtin)
    assert plots.method_style("my_plugin")[0] in other


@pytest.mark.parametrize("kind", ["curves", "cd"])
def test_a_figure_of_every_built_in_method_draws(kind, drawn, tmp_path):
    """Every built-in at once (the demo's 16): seaborn mixes no filled and line-art markers."""
    assert all(MarkerStyle(m).is_filled() for m in plots.MARKERS)
    _draw(kind, list(paper.METHOD_ORDER), tmp_path / "all")
    assert set(drawn["all"]) == set(paper.METHOD_ORDER)


def test_every_registered_built_in_has_a_fixed_style():
    """A new built-in method needs its place in paper.METHOD_ORDER (and so its own colour)."""
    from fewclip.methods import load_all

    builtins = {name for name, cls in load_all().items() if cls.__module__.startswith("fewclip.methods.")}
    assert builtins <= set(paper.METHOD_ORDER), sorted(builtins - set(paper.METHOD_ORDER))


def test_plugin_style_does_not_depend_on_the_hash_seed():
    names = ["my_plugin", "coop_variant", "x"]
    code = "import sys; from fewclip.analysis.plots import method_style; print([method_style(n) for n in sys.argv[1:]])"
    outputs = {subprocess.run([sys.executable, "-c", code, *names], env={**os.environ, "PYTHONHASHSEED": seed},
                              check=True, capture_output=True, text=True).stdout.strip() for seed in ("1", "2")}
    assert outputs == {str([plots.method_style(n) for n in names])}

"""What a researcher sees in reports/ — honest headers, readable tables and figures, README first."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_analysis_fixtures import grid_config, make_runs

from fewclip.analysis import plots
from fewclip.analysis.collect import collect_runs
from fewclip.analysis.report import build_report
from fewclip.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    cfg = grid_config(seeds=(1, 2))
    # two coop runs measured on a GPU: their peak memory is a CUDA peak, not a CPU process's RSS
    gpu = {"fewclip_version": "0.1.0", "git_commit": "abc", "config_hash": "cfg", "backbone_sha256": "b",
           "torch": "2", "open_clip": "2", "device": "NVIDIA H100 80GB HBM3"}
    overrides = {("fewshot", "coop", "dtd", 4, s): {"peak_mem_mb": 3000.0 + s, "provenance": {
        **gpu, "manifest_sha256": f"m-fewshot-dtd-4-{s}"}} for s in (1, 2)}
    runs = make_runs(root, cfg, overrides=overrides)
    table = root / "results" / "all_runs.parquet"
    assert main(["collect", "--runs", str(runs), "--out", str(table)]) == 0
    out = root / "reports"
    assert main(["report", "--table", str(table), "--runs", str(runs), "--out", str(out), "--n-resamples", "100"]) == 0
    return root, runs, out


def test_efficiency_headers_say_what_was_measured(built):
    _, runs, out = built
    eff = pd.read_csv(out / "tables" / "efficiency.csv")
    assert "peak GPU memory (MB)" in eff and "peak RSS (MB, CPU run)" in eff
    gpu = eff[(eff["method"] == "coop") & (eff["dataset"] == "dtd") & (eff["shots"] == 4) & (eff["protocol"] == "fewshot")]
    assert gpu["peak GPU memory (MB)"].iloc[0] == pytest.approx(3001.5) and np.isnan(gpu["peak RSS (MB, CPU run)"].iloc[0])
    cpu = eff[(eff["method"] == "coop") & (eff["dataset"] == "dtd") & (eff["shots"] == 2)]
    rss = json.loads((runs / "fewshot/rn50/dtd/coop/2shot/seed1/metrics.json").read_text())["peak_mem_mb"]
    assert cpu["peak RSS (MB, CPU run)"].iloc[0] == pytest.approx(rss) and np.isnan(cpu["peak GPU memory (MB)"].iloc[0])
    assert "resident set size" in (out / "tables" / "efficiency.md").read_text()


def test_linear_probe_counts_what_it_learns():
    # the engine's count (engine/run.py): parameters that require grad
    from test_feature_methods import _task

    cls, task = _task("linear_probe", n_classes=3, shots=2, dim=16)
    method = cls(task.hp)
    method.setup(task)
    assert sum(p.numel() for p in method.parameters() if p.requires_grad) == 3 * 16 + 3


def test_paper_vs_ours_matched_rows_first_then_one_line_per_paper(built):
    _, _, out = built
    full = pd.read_csv(out / "tables" / "paper_vs_ours_all.csv", keep_default_na=False, na_values=[""])
    short = pd.read_csv(out / "tables" / "paper_vs_ours.csv", keep_default_na=False, na_values=[""])
    unrun = full["note"].isin(["not run", "no fewclip method"])
    n_ran = int((~unrun).sum())
    assert 0 < n_ran < len(full)
    head, tail = short.iloc[:n_ran], short.iloc[n_ran:]
    assert not head["note"].isin(["not run", "no fewclip method"]).any()
    numbers = head["ours"].notna().to_numpy()
    assert numbers.sum() == full["ours"].notna().sum() and not (np.diff(numbers.astype(int)) > 0).any()  # numbers first
    assert list(tail["paper"]) == list(dict.fromkeys(full.loc[unrun, "paper"]))  # one line per paper
    for paper, note in zip(tail["paper"], tail["note"]):
        missing = int(((full["paper"] == paper) & unrun).sum())
        assert note.startswith(f"{missing} of {int((full['paper'] == paper).sum())} published rows with no run of ours")
    assert "per paper" in (out / "tables" / "paper_vs_ours.md").read_text()


def test_readme_reads_like_a_results_section(built):
    _, _, out = built
    text = (out / "README.md").read_text()
    headings = [h for h in re.findall(r"^## (.+)$", text, flags=re.M)]
    assert headings == ["Few-shot classification", "Base-to-new generalization", "Domain generalization", "Efficiency",
                        "Significance", "Paper vs ours", "Legend", "Notes", "Files"]
    # one few-shot table per shot count, the shot curves, the tables' numbers copied in
    for title in ("RN50, 1 shot", "RN50, 2 shots", "RN50, 4 shots"):
        assert f"### {title}\n" in text
    assert "![RN50: top-1 accuracy against shots per class](figures/fewshot_curves_rn50.png)" in text
    dtd = pd.read_csv(out / "tables" / "fewshot_rn50_4shot.csv", index_col=0).loc["coop", "dtd"]
    assert dtd in text
    # every relative link and image resolves inside reports/
    links = re.findall(r"\]\(([^)#]+)\)", text)
    assert len(links) > 50
    for link in links:
        assert not link.startswith(("/", "http")) and (out / link).is_file(), link


def test_dg_tick_labels_do_not_overlap(tmp_path, monkeypatch):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, stem: figures.append(fig) or [])
    order = ["demo_shapes", "demo_shapes_r", "demo_shapes_sketch", "demo_shapes_a", "demo_shapes_v2"]
    rows = pd.DataFrame([{"eval_dataset": d, "method": m, "top1": 50.0 + i} for i, d in enumerate(order)
                         for m in ("zeroshot", "coop", "cocoop") for _ in range(2)])
    plots.dg_bars(tmp_path / "dg", rows, "DG", ["zeroshot", "coop", "cocoop"], order)
    fig = figures[0]
    fig.canvas.draw()
    labels = fig.axes[0].get_xticklabels()
    assert [t.get_text() for t in labels] == order
    for a, b in zip(labels, labels[1:]):
        if a.get_rotation() == 0:  # upright: the boxes themselves must not overlap
            assert not a.get_window_extent().overlaps(b.get_window_extent()), "x tick labels overlap"
            continue
        # slanted labels are parallel strips one line high: apart when the gap between their anchors,
        # measured across the strips, is at least a line
        dx = b.get_window_extent().x1 - a.get_window_extent().x1  # right-anchored: the right edges are the anchors
        line = 1.2 * a.get_fontsize() * fig.dpi / 72
        assert dx * np.sin(np.radians(a.get_rotation())) >= line, "x tick labels overlap"


def test_figure_workers_write_the_same_bytes(tmp_path):
    runs = make_runs(tmp_path, grid_config(seeds=(1,)))
    table = collect_runs(runs)
    serial = build_report(table, runs, tmp_path / "serial", n_resamples=50, workers=0)
    pooled = build_report(table, runs, tmp_path / "pooled", n_resamples=50, workers=2)
    rel = lambda paths, root: sorted(Path(p).relative_to(root).as_posix() for p in paths)
    assert rel(serial, tmp_path / "serial") == rel(pooled, tmp_path / "pooled")
    figures = [p for p in rel(serial, tmp_path / "serial") if p.startswith("figures/")]
    assert figures
    for name in rel(serial, tmp_path / "serial"):
        assert (tmp_path / "serial" / name).read_bytes() == (tmp_path / "pooled" / name).read_bytes(), name


def test_report_bytes_do_not_depend_on_the_hash_seed(built, tmp_path):
    """`dvc repro` reruns the report in a new process: every file must come out the same whatever
    the process's string hash seed (scikit-posthocs draws crossbars through sets of names). The
    fixture's report was built in this process; it is built again with another seed."""
    root, runs, built_out = built
    own = os.environ.get("PYTHONHASHSEED", "")
    seed = str(int(own) + 1) if own.isdigit() else "1"  # unset/random here: any fixed seed differs
    out = tmp_path / "reports"
    code = ("import sys; from fewclip.cli import main; sys.exit(main(['report', '--table', sys.argv[1], "
            "'--runs', sys.argv[2], '--out', sys.argv[3], '--n-resamples', '100']))")
    subprocess.run([sys.executable, "-c", code, str(root / "results" / "all_runs.parquet"), str(runs), str(out)],
                   check=True, env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True)
    files = [{p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}
             for d in (built_out, out)]
    assert any(name.startswith("figures/cd_") for name in files[0]), sorted(files[0])
    assert files[0].keys() == files[1].keys()
    assert [name for name in files[0] if files[0][name] != files[1][name]] == []

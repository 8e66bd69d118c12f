"""reports/README.md: the page a researcher reads first."""

from __future__ import annotations

from ..io import write_text
from . import stats
from .results import Results
from .significance import legend


def write(res: Results) -> None:
    lines = ["# fewclip report", "", "Built by `fewclip report` from the collected runs.", "", "## Files", ""]
    for path in sorted({p.relative_to(res.out).as_posix() for p in res.written}):
        lines.append(f"- [{path}]({path})")
    lines += ["", "## Legend", "", legend(res.baselines), "",
              f"Wilcoxon signed-rank: with n ≤ 5 pairs an exact two-sided test cannot reach p < 0.05 "
              f"(smallest p = 2/2ⁿ = {stats.min_exact_wilcoxon_p(5):.4g} for n = 5); such rows read \"n/a (n=… too small)\".", "",
              "## Notes", ""]
    lines += [f"- {n}" for n in res.notes] or ["- none"]
    write_text(res.out / "README.md", "\n".join(lines) + "\n")

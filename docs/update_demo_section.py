"""Refresh the README's demo section from a demo run's reports (generated, never hand-edited).

    python docs/update_demo_section.py RUN_DIR     # RUN_DIR: where `make demo` ran (holds reports/)

Copies the 1–16-shot curves figure to docs/demo/ and pastes the generated 16-shot, DG,
cross-dataset and base-to-new tables between the README's demo markers.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
README = DOCS.parent / "README.md"
START, END = "<!-- demo:start -->", "<!-- demo:end -->"


def main(run_dir: str) -> int:
    reports = Path(run_dir) / "reports"
    (DOCS / "demo").mkdir(exist_ok=True)
    shutil.copy(reports / "figures" / "fewshot_curves_micro.png", DOCS / "demo" / "fewshot_curves.png")
    tables = [(reports / "tables" / name).read_text().strip()
              for name in ("fewshot_micro_16shot.md", "dg_micro_16shot.md", "cross_dataset_micro_16shot.md",
                           "base2new_micro.md")]
    body = "\n\n".join(["![1–16-shot curves of the demo](docs/demo/fewshot_curves.png)", *tables])
    text = README.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{body}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))

"""Results → papers: collect run directories into one table, then tables, figures and statistics.

Modules: `collect` (run dirs → tidy table, missing cells, consistency checks), `stats`
(the statistical tests, per pair and vectorised over cells), `paper` (published numbers and
their mapping to fewclip keys), `tables` and `plots` (writing tables and drawing figures).
`report` assembles reports/ from one module per artifact, each taking the prepared table
(`results.Results`): `significance` (tests vs the baselines, bootstrap, the tables' marks),
`fewshot`, `base2new`, `dg`, `efficiency`, `paper_vs_ours`, and `index` (reports/README.md);
`predictions` reads the runs' per-image predictions. The `fewclip collect` and `fewclip report`
verbs live in `fewclip.cli.report`. Nothing here imports torch or open_clip; plotting libraries
are imported inside functions.
"""

"""Results → papers: collect run directories into one table, then tables, figures and statistics.

Modules: `collect` (run dirs → tidy table, missing cells, consistency checks), `stats`
(the statistical tests), `paper` (published numbers and their mapping to fewclip keys),
`tables` and `plots` (the report's outputs), `report` (assembles everything under reports/),
`commands` (the `fewclip collect` and `fewclip report` verbs).
Nothing here imports torch or open_clip; plotting libraries are imported inside functions.
"""

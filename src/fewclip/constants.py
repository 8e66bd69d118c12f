"""Names and limits shared by the engine, the registry, the planner and the command line
(each defined once; nothing here imports the rest of fewclip)."""

from __future__ import annotations

# The evaluation protocols (DESIGN.md): few-shot, CoCoOp's base-to-new, ImageNet → variants.
PROTOCOLS = ("fewshot", "base2new", "dg")

# CoCoOp's cross-dataset transfer: the evaluations of a `dg` cell's model on other datasets, each
# scored with its own classes (`eval_protocol` in their metrics.json; the report's table name).
CROSS_DATASET = "cross_dataset"

# metrics.json key of a result that stands for several cells: the cell fields it depends on none of
# (["shots", "seed"] for a method with `uses_fewshot_sample = False`); `fewclip collect` places it at
# every such (shots, seed) of the other methods, each copy pointing at the one run directory.
SHARED_ACROSS = "shared_across"

# Hyper-parameter presets: "clean" (one rule for every dataset) and "official" (the papers' code).
PRESETS = ("clean", "official")

# What every RNG fewclip seeds (random, torch, numpy) accepts.
MAX_SEED = 2**32 - 1

# Device names a run accepts: these, or cuda:N.
DEVICE_NAMES = ("auto", "cpu", "cuda")

# The precisions the engine trains in: "auto" = bf16/fp16 autocast over fp32 weights on a GPU,
# fp32 on a CPU; "amp" = fp16 autocast + GradScaler; "fp16" = the official code's pure half.
PRECISIONS = ("auto", "fp32", "bf16", "amp", "fp16")

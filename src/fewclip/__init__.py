"""fewclip: a reproducibility workflow for few-shot adaptation of CLIP."""

__version__ = "0.1.0"

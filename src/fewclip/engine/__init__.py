"""The engine: feature store, training loop, evaluation and the run directory."""

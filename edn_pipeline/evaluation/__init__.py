"""Evaluating EDN: the paper's metrics (:mod:`.metrics`) and its tables of folders and parameter sweeps
(:mod:`.evaluate`), the library behind ``edn evaluate``."""

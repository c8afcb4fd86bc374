"""Checkpoints of a fine-tuning run: written atomically, with every random state the run draws from, so that
--resume continues the same run (the same shuffles and augmentation as a run never stopped)."""

from __future__ import annotations

import os
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pipelines.finetune.config import FinetuneConfig


def save_atomically(state: dict, path: Path) -> None:
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, temporary)
    os.replace(temporary, path)


def comparable(config: FinetuneConfig) -> dict:
    fields = asdict(config)
    for key in ("epochs", "device", "workers", "out", "patience", "cache_dir"):
        fields.pop(key)
    return fields


def same_settings(saved: dict, config: FinetuneConfig) -> bool:
    """Whether `saved`, the `comparable` fields of an earlier run, name this run. A field added since that run
    matches where this one leaves it at its default, so runs of an earlier version still resume."""
    now, default = comparable(config), comparable(FinetuneConfig())
    return saved.keys() <= now.keys() and all(saved.get(key, default[key]) == value for key, value in now.items())


def random_states(loader_generator: torch.Generator) -> dict:
    """Python's, NumPy's and torch's random states (augmentation, dropout, a new layer's initialisation) and the train
    loader's generator (each epoch's shuffle and its workers' seeds), in types `torch.load(weights_only=True)` reads."""
    kind, key, position, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, key.tolist(), position, has_gauss, cached),
            "torch": torch.get_rng_state(), "loader": loader_generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_random_states(states: dict, loader_generator: torch.Generator) -> None:
    random.setstate(states["python"])
    kind, key, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    loader_generator.set_state(states["loader"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])

"""The conventions every command on a cache follows (heads, suspects, duplicates, map, advise): the layer read by
default, where a command's files go, checks of the folds, parameter names as users write them, and when train
classes count as uneven."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from extract.errors import UsageError


def short_name(param: str) -> str:
    """'clf__C' -> 'C', 'layer__layer' -> 'layer': the names users write in --grid and see in reports."""
    return param.split("__", 1)[-1]


def check_cv(cv: int, labels: np.ndarray) -> None:
    present = np.bincount(labels)
    smallest = int(present[present > 0].min()) if present.any() else 0
    if cv < 2:
        raise UsageError(f"--cv must be 2 or more, not {cv}")
    if cv > smallest:
        raise UsageError(f"--cv {cv} is more than the {smallest} training images of the smallest class; "
                         f"use --cv {max(2, smallest)} or fewer folds")


IMBALANCE_NOTE_RATIO = 3  # largest over smallest train class at which a head without --balanced says so


def classes_uneven(largest: int, smallest: int) -> bool:
    """Train class sizes far enough apart that a head fitted for accuracy gives the small classes up."""
    return largest >= IMBALANCE_NOTE_RATIO * smallest


def imbalance_note(labels: np.ndarray, class_names: list[str]) -> str | None:
    """Where the largest train class has IMBALANCE_NOTE_RATIO times the images of the smallest, a head fitted for
    accuracy gives the small classes up (bench/imbalanced.py): say so, and what --balanced does."""
    counts = np.bincount(labels, minlength=len(class_names))
    present = np.flatnonzero(counts)
    large, small = present[counts[present].argmax()], present[counts[present].argmin()]
    if not classes_uneven(counts[large], counts[small]):
        return None
    return (f"note: the train split's classes are uneven ({counts[large]} images of {class_names[large]}, "
            f"{counts[small]} of {class_names[small]}), and a head fitted for accuracy favours the large ones; "
            "--balanced weights every class alike and chooses parameters by balanced accuracy (the mean of the "
            "classes' recalls)")


def default_layer(layout: dict) -> str:
    """penultimate when the cache holds it (what transfer learning usually reads), else its deepest layer."""
    candidates = [name for name in layout if name != "logits"] or list(layout)
    return "penultimate" if "penultimate" in layout else candidates[-1]


def output_base(cache_path: Path, layer: str | None) -> Path:
    """Where a command's files about a cache go, less their suffix: beside the cache, named after it, and after the
    layer where one was asked for (so the files of other layers than the default sit beside the default's)."""
    base = cache_path.with_suffix("")
    return Path(f"{base}.{layer}") if layer else base

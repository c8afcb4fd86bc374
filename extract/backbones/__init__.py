"""The backbone registry: a name becomes a frozen model with its weights, preprocessing and metadata.

One door, `create_backbone`, as in timm's `create_model`; one registry entry per source (`SOURCES`: the offline
EfficientNet-Lite family, timm, torchvision). Preprocessing travels with the weights (torchvision's weights enums,
timm's pretrained config) and is never hard-coded elsewhere.
"""

from __future__ import annotations

import torch
from torch import nn

from extract.backbones import efficientnet_lite, timm_models, torchvision_models
from extract.backbones.base import Backbone, BackboneSource, suggest
from extract.backbones.efficientnet_lite import EFFICIENTNET_LITE
from extract.backbones.timm_models import TIMM_PREFIX
from extract.errors import UsageError, first_line

__all__ = ["DEFAULT_BACKBONE", "EFFICIENTNET_LITE", "SOURCES", "TIMM_PREFIX", "Backbone", "BackboneSource",
           "backbone_source", "create_backbone", "freeze", "list_backbones"]

SOURCES: tuple[BackboneSource, ...] = (efficientnet_lite.SOURCE, timm_models.SOURCE, torchvision_models.SOURCE)
DEFAULT_BACKBONE = "efficientnet_lite0"


def list_backbones() -> list[str]:
    """The named backbones: the offline EfficientNet-Lite family and torchvision's models. `create_backbone` also
    takes any timm model as `timm/ARCH[.TAG]` (`timm.list_pretrained()` lists its weights)."""
    return [name for source in SOURCES for name in source.listed()]


def create_backbone(name: str, weights: str | None = None, image_size: int | None = None, seed: int = 0) -> Backbone:
    """Build `name` with its weights, frozen: eval mode, no gradients.

    weights: None or "default" for the pretrained default, "none" for random initialisation,
    a path to a local state dict, or (torchvision) a weights enum name such as "IMAGENET1K_V2".
    seed: the random initialisation of what the weights do not set (all of it with "none"), drawn without touching
    the caller's random state.
    """
    if image_size is not None and image_size < 8:  # before any model is built: timm and torch fail less clearly
        raise UsageError(f"--image-size {image_size} is too small; use 32 or more")
    weights = "default" if weights in (None, "", "default") else weights
    source = backbone_source(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random init ("none") is the same for a seed, so a scratch baseline is reproducible
        backbone = source.create(name, weights, image_size)
    native = backbone.preprocess.crop_size
    if image_size:
        backbone.preprocess = backbone.preprocess.with_image_size(image_size)
    freeze(backbone.model)
    _fit_input_size(backbone, native)
    return backbone


def backbone_source(name: str) -> BackboneSource:
    """The registry entry that builds `name`, without building it; an unknown name is a UsageError."""
    source = next((source for source in SOURCES if source.claims(name)), None)
    if source is None:
        raise UsageError(f"unknown backbone {name!r}{suggest(name, list_backbones())}; "
                         "`python -m extract --list` shows them all, and timm/ARCH takes any timm model")
    return source


def _fit_input_size(backbone: Backbone, native: int) -> None:
    """Make the model take the preprocessing's crop size, or say that it cannot, before any image is read.

    A torchvision ViT is built for one size (224 when its weights are 'none', whatever size its default weights
    were trained at): its position embeddings are resized to the crop's grid of patches by torchvision's own
    `interpolate_embeddings` (bicubic), as for fine-tuning at another resolution. Another architecture that fails
    at a size other than its own (MaxViT's attention windows need multiples of 224) is an error naming the size."""
    from torchvision.models import VisionTransformer

    model, size = backbone.model, backbone.preprocess.crop_size
    if isinstance(model, VisionTransformer) and model.image_size != size:
        _resize_position_embeddings(backbone.name, model, size)
    if size == native:
        return
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size))
    except Exception as error:  # noqa: BLE001 - shape errors of every kind: the size does not fit this architecture
        reason = first_line(error)
        raise UsageError(f"{backbone.name} does not take {size} px input ({reason}); "
                         f"use another --image-size, such as its own {native}") from None


def _resize_position_embeddings(name: str, model: nn.Module, size: int) -> None:
    from torchvision.models.vision_transformer import interpolate_embeddings

    patch = model.patch_size
    if size % patch:
        raise UsageError(f"{name} cuts images into {patch} px patches: use an --image-size that is a multiple of "
                         f"{patch}, such as {max(1, round(size / patch)) * patch}")
    state = interpolate_embeddings(size, patch, {"encoder.pos_embedding": model.encoder.pos_embedding.detach()})
    model.encoder.pos_embedding = nn.Parameter(state["encoder.pos_embedding"], requires_grad=False)
    model.image_size, model.seq_length = size, state["encoder.pos_embedding"].shape[1]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode (batch-norm statistics untouched) and no gradients."""
    model.eval()
    model.requires_grad_(False)
    return model

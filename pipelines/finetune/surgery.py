"""Model surgery for fine-tuning: a new output layer, the parameters each mode trains, their learning rates, and
train mode that leaves frozen batch norms alone."""

from __future__ import annotations

import math

from torch import nn

from extract.backbones import create_backbone
from extract.errors import UsageError
from extract.inspection import anatomy, block_names, classifier_layer, has_no_classifier
from extract.preprocess import Preprocess
from pipelines.finetune.config import FinetuneConfig


def replace_classifier(model: nn.Module, num_classes: int) -> str:
    """Swap the classifier for a freshly initialised linear layer with `num_classes` outputs; return its name."""
    name, family = classifier_layer(model), anatomy(model)
    if family.distilled(model):
        raise UsageError(f"{type(model).__name__} is distilled, with two classifier heads whose scores it averages; "
                         "fine-tune the variant without 'distilled' in its name")
    if family.rebuild_classifier(model, num_classes):  # timm builds a head of its own kind (none before, a conv, ...)
        return classifier_layer(model)
    old = model.get_submodule(name)
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, nn.Linear(old.in_features, num_classes))
    return name


def prepare_model(config: FinetuneConfig, num_classes: int) -> tuple[nn.Module, Preprocess, str]:
    """The backbone with a new output layer and only the parameters of the mode trainable; the head's name. lp-ft
    trains what partial does with --unfreeze-from, else everything (its output layer is set by `probe`)."""
    weights = "none" if config.mode == "scratch" else config.weights
    backbone = create_backbone(config.backbone, weights, config.image_size, seed=config.seed)
    model = backbone.model
    if config.mode == "lp-ft" and has_no_classifier(model):
        raise UsageError(f"{config.backbone} was built without a classifier, so there is no output layer to start "
                         "from the linear probe; use --mode full or partial (a new layer)")
    head = replace_classifier(model, num_classes)
    model.requires_grad_(False)
    if config.mode in ("full", "scratch") or (config.mode == "lp-ft" and not config.unfreeze_from):
        model.requires_grad_(True)
    elif config.mode in ("partial", "lp-ft"):
        blocks = block_names(model)
        start = config.unfreeze_from or default_unfreeze_from(blocks)
        if start not in blocks:
            raise UsageError(f"--unfreeze-from {start!r} is not a block of {config.backbone}; "
                             f"choose one of {', '.join(blocks)}")
        for name in blocks[blocks.index(start):]:
            model.get_submodule(name).requires_grad_(True)
    model.get_submodule(head).requires_grad_(True)
    return model, backbone.preprocess, head


def default_unfreeze_from(blocks: list[str]) -> str:
    """Train the last third of the blocks (by count) and the head."""
    return blocks[max(0, len(blocks) - 1 - math.ceil((len(blocks) - 1) / 3))]


def set_train_mode(model: nn.Module, keep_norm_statistics: bool = False) -> None:
    """Train mode, except batch-norm layers that are frozen (or all of them, with `keep_norm_statistics`): they
    normalise with their running statistics, which stay untouched."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (keep_norm_statistics or not any(
                p.requires_grad for p in module.parameters())):
            module.eval()


def parameter_groups(model: nn.Module, head: str, config: FinetuneConfig) -> list[dict]:
    """The new head at lr x head_lr_mult; the pretrained part at lr (scratch: everything at the head's rate; lp-ft:
    everything at lr, as its head starts trained; head: at lr, as nothing else trains to be faster than)."""
    head_params = list(model.get_submodule(head).parameters())
    head_ids = {id(p) for p in head_params}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    head_lr = config.base_lr * (1.0 if config.mode in ("lp-ft", "head") else config.head_lr_mult)
    body_lr = head_lr if config.mode == "scratch" else config.base_lr
    groups = [{"params": head_params, "lr": head_lr, "name": "head"}]
    if body:
        groups.append({"params": body, "lr": body_lr, "name": "backbone"})
    return groups

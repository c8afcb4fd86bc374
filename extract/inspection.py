"""What the rest of the toolkit asks of an architecture: its blocks, its classifier, its global pool, the input of
a probe forward pass. Each model family answers through its entry in `ANATOMIES` (timm's models share an API;
torchvision's are read by module type), so no caller branches on where a model came from.

Layer discovery (`layers`), batch-norm folding (`optimize`) and fine-tuning's model surgery all build on this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from extract.errors import UsageError

PROBE_SIZE = 224  # input size of the forward passes that find layers and check folds, where the model allows it


@dataclass(frozen=True)
class Anatomy:
    """How one model family is read: the size it was built for, its classifier module, which pooling module is its
    global pool, and whether its head may do more than pool (then features are read at the classifier's input:
    timm's pre-logits)."""

    name: str
    owns: Callable[[nn.Module], bool]
    built_size: Callable[[nn.Module], int]
    classifier: Callable[[nn.Module], nn.Module | None]
    is_global_pool: Callable[[nn.Module], bool]
    head_beyond_pool: bool
    distilled: Callable[[nn.Module], bool]  # two classifier heads whose scores it averages
    # give the model a classifier of its own kind for n classes where it has no plain linear one; False: not done
    rebuild_classifier: Callable[[nn.Module, int], bool]


def _timm_classifier(model: nn.Module) -> nn.Module | None:
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(classifier, tuple):  # a distilled model's class and distillation heads: the class head
        classifier = classifier[0]
    if not isinstance(classifier, nn.Module):
        raise UsageError(f"{type(model).__name__} is an encoder without a classifier head (timm's "
                         "get_classifier() names none), which this tool does not read features from")
    return classifier


def _timm_rebuild_classifier(model: nn.Module, num_classes: int) -> bool:
    if isinstance(_timm_classifier(model), nn.Linear):
        return False
    model.reset_classifier(num_classes)  # timm builds a head of its own kind (none before, a conv, ...)
    return True


def _last_module(model: nn.Module, kind: type[nn.Module]) -> nn.Module | None:
    """The last module of a type, in registration (forward) order."""
    modules = [module for module in model.modules() if isinstance(module, kind)]
    return modules[-1] if modules else None


def _torchvision_built_size(model: nn.Module) -> int:
    from torchvision.models import VisionTransformer

    return model.image_size if isinstance(model, VisionTransformer) else PROBE_SIZE


# timm's `create_model` gives every model it builds its `pretrained_cfg`; most of them share an API too:
# `get_classifier`, `reset_classifier`, `forward_head(pre_logits=True)`. Only a pool to 1x1 is its global pool
# (PVT-v2's attention blocks pool to 7x7).
TIMM = Anatomy(
    "timm", owns=lambda model: hasattr(model, "pretrained_cfg"),
    built_size=lambda model: model.pretrained_cfg["input_size"][-1], classifier=_timm_classifier,
    is_global_pool=lambda module: isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)),
    head_beyond_pool=True, distilled=lambda model: isinstance(model.get_classifier(), tuple),
    rebuild_classifier=_timm_rebuild_classifier)
TORCHVISION = Anatomy(
    "torchvision", owns=lambda model: True, built_size=_torchvision_built_size,
    classifier=lambda model: _last_module(model, nn.Linear),
    is_global_pool=lambda module: isinstance(module, nn.AdaptiveAvgPool2d), head_beyond_pool=False,
    distilled=lambda model: False, rebuild_classifier=lambda model, num_classes: False)
ANATOMIES = (TIMM, TORCHVISION)  # the first that owns a model answers for it


def anatomy(model: nn.Module) -> Anatomy:
    return next(entry for entry in ANATOMIES if entry.owns(model))


def probe_size(model: nn.Module) -> int:
    """Input size of a probe forward pass: the size a torchvision ViT or a timm model was built for, else PROBE_SIZE.
    Stage names come from output strides, so they do not depend on it."""
    return anatomy(model).built_size(model)


def probe_input(model: nn.Module) -> torch.Tensor:
    """One image of seeded noise at `probe_size`, on the model's device: the input of the passes that find layers
    and pairs. Not a black one: in a random-init model with zero biases, that makes every activation zero, and a
    head's norm would seem to change nothing (`feature_layers`)."""
    size = probe_size(model)
    noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return noise.to(next(model.parameters()).device)


def classifier_layer(model: nn.Module) -> str:
    """The classifier's module name, which fine-tuning replaces: the module timm's `get_classifier()` names (an
    `Identity` in a model built without one, as DINOv2's), else the final linear layer."""
    classifier = anatomy(model).classifier(model)
    name = next((name for name, module in model.named_modules() if module is classifier), None)
    if classifier is None or name is None:
        raise UsageError(f"{type(model).__name__} has neither a global pooling nor a classifier layer to read "
                         "features from or to replace for fine-tuning")
    return name


def has_no_classifier(model: nn.Module) -> bool:
    """A model built without a classifier (a timm model with num_classes=0) gives no logits."""
    return isinstance(model.get_submodule(classifier_layer(model)), nn.Identity)


def block_names(model: nn.Module, parameterless: bool = False) -> list[str]:
    """Blocks in forward order: top-level children, Sequential and ModuleList containers expanded once (MaxViT keeps
    its stages in a ModuleList); by default only those that hold parameters.

    These are the names `--unfreeze-from` accepts (resnet18: conv1, bn1, layer1.0, ..., layer4.1, fc;
    efficientnet_lite0: conv_stem, bn1, blocks.0, ..., blocks.6, conv_head, bn2, classifier).
    """
    names = []
    for name, child in model.named_children():
        pairs = ([(f"{name}.{sub}", grandchild) for sub, grandchild in child.named_children()]
                 if isinstance(child, nn.Sequential | nn.ModuleList) else [(name, child)])
        names += [block for block, module in pairs if parameterless or any(True for _ in module.parameters())]
    return names

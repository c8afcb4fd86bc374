"""torchvision's classification models by name, with the weights and transforms of its weights API."""

from __future__ import annotations

import urllib.error
from collections.abc import Callable
from pathlib import Path

from torch import nn

from extract.backbones.base import Backbone, BackboneSource, hub_file, is_path, load_strict, read_state_dict
from extract.errors import UsageError
from extract.paths import file_sha256
from extract.preprocess import Preprocess


def torchvision_names() -> list[str]:
    from torchvision import models

    return models.list_models(module=models)


def create_torchvision(name: str, weights: str, image_size: int | None = None) -> Backbone:
    """`image_size` is applied by `create_backbone` (a ViT's position embeddings resized there)."""
    from torchvision import models

    enum = models.get_model_weights(name)
    default = enum.DEFAULT
    if weights == "none":
        chosen, path = None, None
    elif is_path(weights):
        chosen, path = None, weights
    elif weights == "default":
        chosen, path = default, None
    else:
        member = weights.split(".")[-1]
        if member not in enum.__members__:
            raise UsageError(f"{name} has no weights {weights!r}; choose one of "
                             f"{', '.join(enum.__members__)}, 'none' or a state-dict path")
        chosen, path = enum[member], None

    reference = chosen or default
    model = _build_torchvision(name, chosen, models.get_model)
    if path is not None:
        load_strict(model, read_state_dict(path), name, path)
        label, sha = str(Path(path).resolve()), file_sha256(path)
    elif chosen is not None:
        label, sha = f"{enum.__name__}.{chosen.name}", file_sha256(hub_file(chosen.url))
    else:
        label, sha = "none", "none"
    return Backbone(name, model, label, sha, _preprocess_of(reference),
                    list(chosen.meta["categories"]) if chosen is not None else None,
                    chosen.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1") if chosen else None)


def _build_torchvision(name: str, weights, get_model: Callable) -> nn.Module:
    """torchvision's own builder, so architecture tweaks tied to the weights (aux heads, ...) stay right."""
    try:
        return get_model(name, weights=weights)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
        if weights is None:
            raise
        target = hub_file(weights.url)
        raise UsageError(
            f"cannot download {name} weights from {weights.url} ({getattr(error, 'reason', error)}); "
            f"offline, place that file at {target}, or pass --weights PATH to a local state dict") from None
    except RuntimeError as error:
        if weights is not None and "hash" in str(error).lower():
            raise UsageError(f"the cached {name} weights at {hub_file(weights.url)} are corrupt "
                             f"({error}); delete the file and run again") from None
        raise


def _preprocess_of(weights) -> Preprocess:
    transform = weights.transforms()
    return Preprocess(crop_size=int(transform.crop_size[0]), resize_size=int(transform.resize_size[0]),
                      mean=tuple(float(v) for v in transform.mean), std=tuple(float(v) for v in transform.std),
                      interpolation=transform.interpolation.value)


SOURCE = BackboneSource("torchvision", lambda name: name in torchvision_names(), create_torchvision, torchvision_names)

"""Any timm model as `timm/ARCH[.TAG]`, its weights from the Hugging Face Hub (its cache first, no network call)."""

from __future__ import annotations

import math
import os
import socket
import urllib.parse
from pathlib import Path

import torch
from torch import nn

from extract.backbones.base import Backbone, BackboneSource, hub_file, imagenet_categories, is_path, suggest
from extract.errors import UsageError, first_line
from extract.paths import file_sha256
from extract.preprocess import Preprocess

TIMM_PREFIX = "timm/"  # timm/ARCH or timm/ARCH.TAG: any timm model, its weights from the Hugging Face Hub


PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")  # where a proxy reaches the Hub


def create_timm(name: str, weights: str, image_size: int | None) -> Backbone:
    """`timm/ARCH[.TAG]` with the weights of that pretrained tag (ARCH alone: timm's default tag), read through timm
    itself so that its checkpoint filters apply (a ViT's position embeddings resized to `image_size`, ...)."""
    import timm
    from timm.models import get_pretrained_cfg

    full = name.removeprefix(TIMM_PREFIX)
    arch = full.partition(".")[0]
    if not timm.is_model(arch):
        raise UsageError(f"timm has no model {arch!r}{suggest(arch, timm.list_models())}; "
                         "`python -c 'import timm; print(timm.list_models())'` lists them")
    try:
        cfg = get_pretrained_cfg(full)
    except RuntimeError:
        tags = ", ".join(_timm_tags(arch)) or "(none: use --weights none or a state-dict path)"
        raise UsageError(f"timm's {arch} has no pretrained tag {full.partition('.')[2]!r}; choose one of {tags}"
                         ) from None
    canonical = f"{TIMM_PREFIX}{arch}.{cfg.tag}" if cfg is not None and cfg.tag else f"{TIMM_PREFIX}{arch}"
    label = f"timm:{cfg.tag}" if cfg is not None else None
    if weights == "none":
        path = None
    elif weights in ("default", label):
        if cfg is None:
            raise UsageError(f"timm has no pretrained weights for {arch}; use --weights none or a state-dict path")
        path = _timm_weights_file(canonical, cfg)
    elif is_path(weights):
        if not Path(weights).is_file():
            raise UsageError(f"weights file {weights} does not exist; pass an existing state-dict file to --weights")
        path, label = weights, str(Path(weights).resolve())
    elif weights in _timm_tags(arch):  # --weights TAG, as --weights IMAGENET1K_V2 for torchvision
        return create_timm(f"{TIMM_PREFIX}{arch}.{weights}", "default", image_size)
    else:
        raise UsageError(f"{canonical} has weights 'default', 'none', a state-dict path or one of its tags "
                         f"({', '.join(_timm_tags(arch)) or 'none'}), not {weights!r}")
    model = _build_timm(canonical, path, image_size if cfg is not None and cfg.fixed_input_size else None)
    recipe = cfg.to_dict() if cfg is not None else model.pretrained_cfg  # the native size, before `image_size`
    preprocess = _timm_preprocess(recipe)
    if path is None:
        return Backbone(canonical, model, "none", "none", preprocess, None, None)
    categories = imagenet_categories() if label.startswith("timm:") and recipe["num_classes"] == 1000 else None
    return Backbone(canonical, model, label, file_sha256(path), preprocess, categories, None)


def _timm_preprocess(recipe: dict) -> Preprocess:
    """timm's eval transform for a pretrained config."""
    crop = recipe["input_size"][-1]
    return Preprocess(crop_size=crop, resize_size=math.floor(crop / recipe["crop_pct"]), mean=tuple(recipe["mean"]),
                      std=tuple(recipe["std"]), interpolation=recipe["interpolation"],
                      crop_mode=recipe["crop_mode"] if recipe["crop_mode"] in ("squash", "border") else "center")


def _timm_tags(arch: str) -> list[str]:
    """The pretrained tags timm knows for an architecture (resnet18: a1_in1k, ..., tv_in1k)."""
    import timm

    return [name.partition(".")[2] for name in timm.list_pretrained(f"{arch}.*")]


def _build_timm(name: str, path: str | None, image_size: int | None) -> nn.Module:
    """timm's own builder: `pretrained_cfg_overlay` points its loader at the file. A model built for one input size
    (ViT, ...) is built for `image_size`."""
    import timm

    overlay = {"pretrained": True, "pretrained_cfg_overlay": {"file": path}} if path else {}
    try:
        model = timm.create_model(name.removeprefix(TIMM_PREFIX), **overlay,
                                  **({"img_size": image_size} if image_size else {}))
        if image_size:  # timm keeps the recipe's size there; `probe_size` reads the size it was built for
            model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, image_size, image_size)}
        return model
    except TypeError as error:  # an architecture built for one size without an `img_size` argument
        if not image_size:
            raise
        raise UsageError(f"{name} does not take {image_size} px input ({error}); use its own size") from None
    except (RuntimeError, ValueError, KeyError, OSError) as error:
        if path is None:
            raise
        detail = " ".join(str(error).split())[:300]
        raise UsageError(f"weights file {path} does not fit {name}: {detail}") from None


def _timm_weights_file(name: str, cfg) -> str:
    """The weights file of a pretrained tag: from the Hugging Face Hub cache, downloaded there when absent."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    if not cfg.hf_hub_id:
        target = hub_file(cfg.url)
        if not target.exists():
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(cfg.url, str(target))
            except OSError as error:  # URLError included
                raise UsageError(f"cannot download {name} weights from {cfg.url} ({error}); offline, place that "
                                 f"file at {target}, or pass --weights PATH to a local state dict") from None
        return str(target)
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
    offline = UsageError(f"cannot download {name} weights: the Hugging Face Hub ({cfg.hf_hub_id}) cannot be reached "
                         f"and its cache {constants.HF_HUB_CACHE} does not hold them; copy that cache from a machine "
                         "where they were downloaded, or pass --weights PATH to a local state dict")
    for local_only in (True, False):  # the cache first: no network call where the file is already there
        if not local_only and not _host_resolves(constants.ENDPOINT):
            raise offline
        for filename in names:
            try:
                return hf_hub_download(cfg.hf_hub_id, filename, local_files_only=local_only)
            except LocalEntryNotFoundError:
                if not local_only:
                    raise offline from None
            except EntryNotFoundError:
                continue
            except OSError as error:  # refused (a gated or removed repository), or the disk is full
                raise UsageError(f"cannot download {name} weights from the Hugging Face Hub ({cfg.hf_hub_id}): "
                                 f"{first_line(error, 200)}; or pass --weights PATH to a local state dict"
                                 ) from None
    raise UsageError(f"the Hugging Face Hub repository {cfg.hf_hub_id} holds none of {', '.join(names)}")


def _host_resolves(url: str) -> bool:
    """False where the URL's host has no address (offline): huggingface_hub would retry for ~23 s, logging each try.

    Behind a proxy the host may resolve only there, so a configured proxy counts as reachable."""
    if any(os.environ.get(name) for name in PROXY_VARIABLES):
        return True
    try:
        socket.getaddrinfo(urllib.parse.urlsplit(url).hostname, 443)
    except (OSError, UnicodeError):
        return False
    return True


SOURCE = BackboneSource("timm", lambda name: name.startswith(TIMM_PREFIX), create_timm, list)

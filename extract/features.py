"""Running a frozen backbone over images and pooling one or more layers into one vector per image.

Layer choice goes through one mechanism for every architecture: hooks on the named modules of `feature_layers`
capture their outputs (or, for the penultimate layer, the global pool's input), and the deepest one stops the
forward pass there (nothing after it is computed). For torch.compile the same points become the outputs of one
FX graph of the backbone (`layer_graph`); the tests check that it computes what the hooks capture.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from extract.backbones import (
    Backbone,
    LayerPoint,
    Preprocess,
    block_names,
    feature_layers,
    probe_input,
    probe_size,
)
from extract.datasets import BadImageError, Split, load_image, to_rgb
from extract.errors import UsageError
from extract.pixels import normalize, resize_or_defer, stack_at_crop

POOLS = ("avg", "max", "avgmax")
COMPILE_MODES = ("auto", "on", "off")
# torch.compile's start-up (about 5 s with torch's compiler cache warm) against its faster batches: efficientnet_lite0
# fp32 on the 2-core CPU, batch 16, whole `python -m extract` process, --compile on against off: 3,510 images
# 20.1/21.6 against 21.0/20.9 s, 4,510 24.0/25.8 against 26.0/25.8 s (at batch 64 it broke even between 5,000 and
# 7,500 images)
COMPILE_MIN_IMAGES = 4500
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEFAULT_LAYER = "penultimate"


class _Stop(Exception):
    """Raised by the hook of the deepest requested layer: nothing after it is computed."""


class NoLogitsError(UsageError):
    """`logits` asked of a backbone without a classifier."""


def resolve_layers(text: str | None, available: dict[str, LayerPoint]) -> list[str]:
    """'stage3,penultimate' or 'all' (every stage and penultimate; 'all,logits' adds the class scores) -> layer
    names in forward order, checked."""
    names = [n.strip() for n in (text or DEFAULT_LAYER).split(",") if n.strip()]
    if "all" in names:
        names = [name for name in names if name != "all"] + [name for name in available if name != "logits"]
    unknown = [name for name in names if name not in available]
    if unknown == ["logits"]:
        raise NoLogitsError("this backbone was built without a classifier (a timm model with num_classes=0, such as "
                            "DINOv2), so it gives no logits; use its other layers")
    if unknown or not names:
        raise UsageError(f"unknown layer {', '.join(unknown) or repr(text)}; this backbone has "
                         f"{', '.join(available)} (or 'all')")
    order = list(available)
    return sorted(set(names), key=order.index)


class FeatureModel(nn.Module):
    """A frozen backbone read at one or more layers, returning their pooled vectors side by side.

    Every layer is read through a hook on its module, in one forward pass that stops after the deepest one.
    Spatial maps are pooled globally (avg, max, or both concatenated); `layout` says which columns hold which layer.
    With `flip`, each image's vector is the mean of its own and its left-right mirror image's (both in one pass of
    twice the batch): a test-time augmentation that the heads score higher on (bench/flip_features.py).
    """

    def __init__(self, model: nn.Module, pool: str = "avg", layers: str = DEFAULT_LAYER, flip: bool = False):
        super().__init__()
        if pool not in POOLS:
            raise UsageError(f"--pool must be one of {', '.join(POOLS)}, not {pool!r}")
        self.model = model
        self.pool = pool
        self.flip = flip
        available = feature_layers(model)
        self.layers = resolve_layers(layers, available)
        self.points = {name: available[name] for name in self.layers}
        penultimate = self.points.get("penultimate")
        if pool != "avg" and penultimate and not penultimate.spatial:
            stages = [name for name, point in available.items() if point.spatial]
            hint = f"; --layers {stages[-1]} --pool {pool} pools its last feature map that way" if stages else ""
            raise UsageError(f"{type(model).__name__} pools inside its forward pass (or changes the pooled features, "
                             f"as a head's norm does), so only --pool avg is available for its penultimate layer{hint}")
        self._captured: dict[str, torch.Tensor] = {}
        self.layout = self._layout()

    def _attach_hooks(self) -> list:
        """Hooks that capture each requested layer; the deepest one stops the pass. Attached for one pass only,
        so several FeatureModels can share a backbone."""
        deepest = self.layers[-1]

        def capture(name: str, reads_input: bool) -> Callable:
            def hook(module: nn.Module, inputs: tuple, output: torch.Tensor | None = None) -> None:
                self._captured[name] = inputs[0] if reads_input else output
                if name == deepest:
                    raise _Stop

            return hook

        handles = []
        for name, point in self.points.items():
            if name != "logits":
                module = self.model.get_submodule(point.module)
                register = module.register_forward_pre_hook if point.reads_input else module.register_forward_hook
                handles.append(register(capture(name, point.reads_input)))
        return handles

    @property
    def feature_dim(self) -> int:
        return self.layout[-1][2]

    @property
    def layer_modules(self) -> dict[str, str]:
        return {name: point.module for name, point in self.points.items()}

    def _pooled(self, name: str, features: torch.Tensor | None = None) -> torch.Tensor:
        features = self._captured[name] if features is None else features
        point = self.points[name]
        if point.spatial:
            dims = (1, 2) if point.channels_last else (2, 3)
            parts = [features.mean(dims)] if self.pool in ("avg", "avgmax") else []
            parts += [features.amax(dims)] if self.pool in ("max", "avgmax") else []
            features = torch.cat(parts, 1)
        return features.flatten(1).float()

    def _run(self, images: torch.Tensor) -> None:
        self._captured = {}
        handles = self._attach_hooks()
        try:
            self._captured["logits"] = self.model(images)
        except _Stop:
            pass
        finally:
            for handle in handles:
                handle.remove()

    def _with_mirror(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images, images.flip(-1)]) if self.flip else images

    def _mirror_mean(self, features: torch.Tensor) -> torch.Tensor:
        """The mean of each image's vector and its mirror image's (the second half of the batch `_with_mirror`
        made)."""
        if not self.flip:
            return features
        own, mirrored = features.chunk(2)
        return (own + mirrored) / 2

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self._run(self._with_mirror(images))
        try:
            return self._mirror_mean(torch.cat([self._pooled(name) for name in self.layers], 1))
        finally:
            self._captured = {}

    def as_graph(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """`forward` as one function without hooks, for torch.compile to make a single graph of; None when the
        backbone does not trace."""
        graph = layer_graph(self.model, self.points)
        if graph is None:
            return None

        def forward(images: torch.Tensor) -> torch.Tensor:
            tensors = graph(self._with_mirror(images))
            return self._mirror_mean(
                torch.cat([self._pooled(name, tensor) for name, tensor in zip(self.layers, tensors, strict=True)], 1))

        return forward

    @torch.no_grad()
    def _layout(self) -> list[tuple[str, int, int]]:
        """(layer, first column, end column) of each layer in the output, from one forward pass."""
        self._run(probe_input(self.model))
        layout, start = [], 0
        for name in self.layers:
            width = self._pooled(name).shape[1]
            layout.append((name, start, start + width))
            start += width
        self._captured = {}
        return layout


def layer_graph(model: nn.Module, points: dict[str, LayerPoint]) -> torch.fx.GraphModule | None:
    """The backbone as one FX graph returning the tensors the hooks of `points` would capture, in their order, with
    nothing after the deepest computed; None when it does not trace (Python control flow on tensor values).

    Why: torch.compile makes one graph of it, where compiling block by block leaves a boundary at every block that
    no fusion crosses (measured on 2 cores, `Extractor.features` on tensors: ResNet-50 bf16 at batch 16, 178 against
    144 images/s; efficientnet_lite0 fp32 at batch 64, 176 against 142). The point modules are kept as calls, so
    their outputs are nodes; timm's modules that do not trace stay calls too.
    """
    from timm.layers import get_notrace_functions, get_notrace_modules

    leaves = {point.module for point in points.values() if point.module}
    opaque = (*get_notrace_modules(), StaticSamePadConv)  # branches on its input's size

    class PointTracer(torch.fx.Tracer):
        def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
            return (qualified_name in leaves or isinstance(module, opaque)
                    or super().is_leaf_module(module, qualified_name))

    try:
        graph = PointTracer(autowrap_functions=tuple(get_notrace_functions())).trace(model)
    except Exception:  # noqa: BLE001 - tracing fails in many ways (TraceError, TypeError, ...): compile by blocks
        return None
    # a module called twice: the hooks keep the tensors of its last call, and so does this
    last_call = {node.target: node for node in graph.nodes if node.op == "call_module"}
    output = next(node for node in graph.nodes if node.op == "output")
    if any(point.module and point.module not in last_call for point in points.values()):
        return None
    nodes = [output.args[0] if not point.module else
             last_call[point.module].args[0] if point.reads_input else last_call[point.module]
             for point in points.values()]
    with graph.inserting_before(output):
        graph.output(tuple(nodes))
    graph.erase_node(output)
    module = torch.fx.GraphModule(model, graph)
    module.graph.eliminate_dead_code()
    module.recompile()
    return module


def compile_blocks(model: nn.Module, stop_before: str) -> list[tuple[nn.Module, Callable]]:
    """Replace the forward of each block before `stop_before` (the penultimate layer's module) by its compiled
    version; return (module, original forward) pairs. Forward hooks run around `forward`, so the layer hooks stay
    eager and keep working; blocks holding the penultimate module are left alone."""
    import torch._dynamo

    originals = []
    for name in block_names(model, parameterless=True):
        if stop_before == name or stop_before.startswith(f"{name}."):
            break
        module = model.get_submodule(name)
        originals.append((module, module.forward))
        module.forward = torch.compile(module.forward, dynamic=False)
    # blocks of one class share their code: allow a compiled graph for each of them
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(originals))
    return originals


def conv_batch_norm_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(convolution, batch norm) pairs where the batch norm's input is the convolution's output, found by one
    forward pass (module order says nothing about data flow: DenseNet's norms read concatenations). Modules called
    more than once, and norms that use batch statistics, are left out. No pass for a model without batch norms
    (ViT, Swin, ConvNeXt: a second or more for the large ones)."""
    if not any(isinstance(module, nn.BatchNorm2d) for module in model.modules()):
        return []
    outputs: dict[int, tuple[torch.Tensor, nn.Conv2d]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []
    calls: dict[nn.Module, int] = {}

    def conv_hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        calls[module] = calls.get(module, 0) + 1
        outputs[id(output)] = (output, module)

    def norm_hook(module: nn.Module, inputs: tuple) -> None:
        calls[module] = calls.get(module, 0) + 1
        source = outputs.get(id(inputs[0]))
        if source is not None and source[0] is inputs[0]:
            pairs.append((source[1], module))

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.BatchNorm2d) and module.running_mean is not None:
            handles.append(module.register_forward_pre_hook(norm_hook))
    try:
        with torch.no_grad():
            model(probe_input(model))
    finally:
        for handle in handles:
            handle.remove()
    return [(conv, norm) for conv, norm in pairs if calls[conv] == 1 and calls[norm] == 1]


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> int:
    """Fold each eval-mode batch norm into the convolution that feeds it (scaled weights, shifted bias), in float32,
    then take the norm out of the model (`_after_norm`); return how many were folded. The same function to float
    rounding with one pass over memory fewer per norm: measured on 2 cores, the eager model alone on tensors,
    efficientnet_lite0 fp32 169-171 against 122-125 images/s with the folded norms left in as identities, ResNet-50
    35.5 against 31.0; compiled, the same speed, and 3 s less compilation (5 against 8 s for Lite0). In bf16 it
    also keeps accuracy: left to the compiler, the fold came after the cast to bf16 (feature cosine to fp32 0.9937
    against 0.9976). A conv whose output has another reader would change it: a check on a random input then undoes
    every fold."""
    pairs = conv_batch_norm_pairs(model)
    if not pairs:
        return 0
    device = next(model.parameters()).device
    size = probe_size(model)
    probe = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    before = model(probe)
    touched = [t for conv, norm in pairs for t in (conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                    norm.weight, norm.bias) if t is not None]
    saved = [t.clone() for t in touched]
    biasless = [conv for conv, _ in pairs if conv.bias is None]
    for conv, norm in pairs:
        scale = torch.rsqrt(norm.running_var.double() + norm.eps)
        if norm.weight is not None:
            scale = scale * norm.weight.double()
        shift = -norm.running_mean.double() * scale + (0 if norm.bias is None else norm.bias.double())
        if conv.bias is not None:
            shift = shift + conv.bias.double() * scale
        conv.weight.copy_((conv.weight.double() * scale.view(-1, *[1] * (conv.weight.dim() - 1))).float())
        if conv.bias is None:
            conv.bias = nn.Parameter(shift.float(), requires_grad=False)
        else:
            conv.bias.copy_(shift)
        norm.running_mean.zero_()
        norm.running_var.fill_(1 - norm.eps)
        if norm.weight is not None:
            norm.weight.fill_(1)
            norm.bias.zero_()
    after = model(probe)
    if not torch.allclose(after, before, rtol=1e-3, atol=1e-3 * before.abs().max().item()):
        for tensor, copy in zip(touched, saved, strict=True):
            tensor.copy_(copy)
        for conv in biasless:
            conv.bias = None
        return 0
    names = {module: name for name, module in model.named_modules()}
    for _, norm in pairs:
        model.set_submodule(names[norm], _after_norm(norm))
    return len(pairs)


def _after_norm(norm: nn.BatchNorm2d) -> nn.Module:
    """What is left of a folded norm: nothing for torch's BatchNorm2d, the activation for timm's BatchNormAct2d
    (norm, dropout, activation in one module); another subclass stays as it is, its norm now an identity."""
    from timm.layers import BatchNormAct2d

    if type(norm) is nn.BatchNorm2d:
        return nn.Identity()
    if type(norm) is BatchNormAct2d:
        return nn.Sequential(norm.drop, norm.act)
    return norm


class StaticSamePadConv(nn.Conv2d):
    """timm's Conv2dSame (TensorFlow 'same' padding) for one input size, as one convolution: where the padding is
    uneven (one more row and column at the bottom right, as for every stride-2 layer of the TF-ported EfficientNets
    on even sizes), the kernel gains a zero row and column at the top left and the padding becomes even. The same
    sums, without the padded copy of the input Conv2dSame makes first (efficientnet_lite0 fp32, compiled, in the
    extraction loop: the model 184-187 against 163-166 images/s). Other input sizes take the original module."""

    def __init__(self, conv: nn.Conv2d, size: tuple[int, int]):
        extra, padding = [], []
        for length, kernel, stride in zip(size, conv.kernel_size, conv.stride, strict=True):
            total = max((-(-length // stride) - 1) * stride + kernel - length, 0)
            extra.append(total % 2)
            padding.append(total // 2 + total % 2)
        kernel_size = tuple(k + e for k, e in zip(conv.kernel_size, extra, strict=True))
        super().__init__(conv.in_channels, conv.out_channels, kernel_size, conv.stride, tuple(padding), 1, conv.groups,
                         conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        self.size, self.original = tuple(size), conv
        self.weight = nn.Parameter(nn.functional.pad(conv.weight.detach(), (extra[1], 0, extra[0], 0)),
                                   requires_grad=False)
        if conv.bias is not None:
            self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) if tuple(x.shape[-2:]) == self.size else self.original(x)


@torch.no_grad()
def static_same_padding(model: nn.Module, size: int) -> int:
    """Replace each timm Conv2dSame (dilation 1) by a StaticSamePadConv for the input it gets from `size` px images,
    found by one forward pass; return how many were replaced."""
    from timm.layers.conv2d_same import Conv2dSame

    convs = {module: name for name, module in model.named_modules()
             if type(module) is Conv2dSame and module.dilation == (1, 1)}
    if not convs:
        return 0
    sizes: dict[str, tuple[int, int]] = {}

    def record(module: nn.Module, inputs: tuple) -> None:
        sizes.setdefault(convs[module], tuple(inputs[0].shape[-2:]))

    handles = [module.register_forward_pre_hook(record) for module in convs]
    try:
        model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for handle in handles:
            handle.remove()
    for name, input_size in sizes.items():
        model.set_submodule(name, StaticSamePadConv(model.get_submodule(name), input_size))
    return len(sizes)


def keep_freed_memory() -> None:
    """Let the next batch reuse the memory the last one freed. glibc hands every block above its mmap threshold
    (a batch's activations are tens of MB) back to the kernel on free, and the next batch page-faults it in again:
    measured here, 22 s of system time in 30 s for 1,000 images, and half the throughput. Raising the mmap and trim
    thresholds keeps those blocks in the heap (peak memory is unchanged: it is the same high-water mark).
    glibc only; elsewhere nothing happens."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: 1 GiB (mallopt takes a C int)
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UsageError(f"--device must be auto, cpu or cuda, not {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto': bfloat16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX512-BF16 or AMX),
    float32 elsewhere. Not the default: with efficientnet_lite0 on CIFAR-10, bf16 features sit at cosine 0.9977 to
    fp32 and the full-data heads within 0.26 points (bench/precision_check.py), but the linear probe of
    bench/extract_speed.py moved by 1.2 points at 2,000 images and 0.6 at 10,000, over the 0.3 we allow."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if native else "fp32"


class _SplitImages(TorchDataset):
    """Decoded uint8 images of a split from row `start` on, resized or, if small, left for the batch to enlarge
    (`resize_or_defer`); bad images come back as their error."""

    def __init__(self, split: Split, preprocess: Preprocess, start: int = 0):
        self.split, self.preprocess, self.start = split, preprocess, start

    def __len__(self) -> int:
        return len(self.split) - self.start

    def __getitem__(self, index: int):
        try:
            return resize_or_defer(self.split.image(self.start + index), self.preprocess), None
        except BadImageError as error:
            return None, (error.sample_id, str(error))


def _ignore_interrupts(_worker: int) -> None:
    """Ctrl-C reaches the decoding workers too; the main process decides when to stop (after a batch is written)
    and shuts them down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _collate(items: list, preprocess: Preprocess) -> tuple[torch.Tensor | None, list[int], list[tuple[str, str]]]:
    good = [i for i, (image, _) in enumerate(items) if image is not None]
    images = stack_at_crop([items[i][0] for i in good], preprocess) if good else None
    return images, good, [error for _, error in items if error is not None]


@dataclass
class ExtractionSettings:
    """How to run the backbone: these change speed only, except precision, which is part of the cache key."""

    batch_size: int | None = None  # None: default_batch_size(device)
    device: str = "auto"
    precision: str = "fp32"
    workers: int | None = None
    compile: str = "auto"


def default_batch_size(device: torch.device) -> int:
    """16 images on a CPU, where a batch's activations stay closer to the caches: the models alone, compiled, fp32,
    2 cores, batch 16 against 64: efficientnet_lite0 253-283 against 241-244 images/s, resnet18 103.5 against 98.4,
    mobilenet_v3_large 402 against 385, convnext_tiny 29.6 against 28.4, resnet50 43.4 against 42.6 (bf16: 228 against
    227). 64 on a GPU, which needs large batches to be busy."""
    return 16 if device.type == "cpu" else 64


LARGE_IMAGE_MEGAPIXELS = 1.0  # about where 2 decoding workers start to pay on 2 cores (1.2 MP: 4-7% faster)


def check_workers(workers: int | None) -> None:
    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be 0 (decode in the main process) or more, not {workers}")


def default_workers(device: torch.device, megapixels: Callable[[], float] = lambda: 0.0) -> int:
    """Decoding processes. With the model on a CPU of 2 cores or fewer, a worker competes with the model for the same
    cores: none for small images, 2 for images of `LARGE_IMAGE_MEGAPIXELS` or more (`megapixels()`, asked only
    there, as it decodes an image), where decoding takes longer
    (measured on 2 cores, Lite0, whole process, images/s with 0 against 2 workers: CIFAR-10 171/166 against 142/147;
    500x375 JPEGs 124/123 against 115/122; 1.2-megapixel 58.2/57.4 against 60.5/64.0; 3 megapixels 28.0/27.9
    against 34.7/38.2; 12 megapixels 8.9/8.7 against 12.9/13.3). Else cores - 1, up to 8; with the model on a GPU
    every core, up to 8, as the CPU's only work is decoding (not measured here: no GPU)."""
    cores = os.cpu_count() or 1
    if device.type != "cpu":
        return min(8, cores)
    if cores <= 2:
        return 2 if megapixels() >= LARGE_IMAGE_MEGAPIXELS else 0
    return min(8, cores - 1)


def _megapixels(split: Split, row: int) -> float:
    """The size of image `row` (a split's first to compute): how large the split's images are, as a rule."""
    try:
        width, height = split.image(row).size if row < len(split) else (0, 0)
    except BadImageError:
        return 0.0
    return width * height / 1e6


class Extractor:
    """A backbone ready to turn images into pooled features on a device."""

    def __init__(self, backbone: Backbone, pool: str, settings: ExtractionSettings,
                 layers: str = DEFAULT_LAYER, flip: bool = False):
        if settings.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, not {settings.precision!r}")
        if settings.batch_size is not None and settings.batch_size < 1:
            raise UsageError(f"--batch-size must be 1 or more, not {settings.batch_size}")
        check_workers(settings.workers)
        if settings.compile not in COMPILE_MODES:
            raise UsageError(f"--compile must be one of {', '.join(COMPILE_MODES)}, not {settings.compile!r}")
        self.backbone = backbone
        self.device = resolve_device(settings.device)
        self.settings = replace(settings, batch_size=settings.batch_size or default_batch_size(self.device))
        keep_freed_memory()
        self.precision = resolve_precision(settings.precision, self.device)
        self.model = FeatureModel(backbone.model, pool, layers, flip).to(self.device)
        self.model.to(memory_format=torch.channels_last)
        self.model.eval()
        self.compiled = False
        self.prepared = False
        self._compiled_forward: Callable[[torch.Tensor], torch.Tensor] | None = None  # from pixels on the device

    def _prepare_once(self) -> None:
        """Fold batch norms and make 'same' paddings static, before the backbone first computes features or is
        compiled (whose frozen graph captures the weights); not on construction, which also serves a run that finds
        its cache entry and computes nothing."""
        if not self.prepared:
            fold_batch_norms(self.backbone.model)
            static_same_padding(self.backbone.model, self.backbone.preprocess.crop_size)
            self.prepared = True

    def compile_for(self, images: int) -> str | None:
        """torch.compile the backbone when it pays (`--compile on`, or `auto` from COMPILE_MIN_IMAGES images) and say
        so; None when it stays eager. One graph from pixels to pooled features (`as_graph`), or block by block when
        the backbone does not trace. The features are the same to float rounding."""
        mode = self.settings.compile
        if self.compiled or mode == "off" or (mode == "auto" and images < COMPILE_MIN_IMAGES):
            return None
        import torch._dynamo
        import torch._inductor.config

        # Every extractor compiles the same code (from_pixels below, or the same block classes): in one process (a
        # notebook trying backbones) each compile adds an entry to that code's cache, and past torch's recompile
        # limit (8) the ninth ran eagerly while saying it was compiled, and every earlier graph stayed in memory with
        # its weights. A reset drops them; an earlier extractor still in use compiles again on its next batch.
        torch._dynamo.reset()
        torch._inductor.config.freezing = True  # weights are constants: packed once for the CPU's kernels
        self._prepare_once()
        whole = self.model.as_graph()
        if whole is not None:
            preprocess, device = self.backbone.preprocess, self.device

            def from_pixels(pixels: torch.Tensor) -> torch.Tensor:
                # normalisation in the graph too: one fused pass instead of an eager float32 copy of the batch
                # (Extractor.features: ResNet-50 bf16 185 against 161 images/s, Lite0 bf16 427 against 340)
                return whole(normalize(pixels, preprocess, device))

            self._compiled_forward, originals = torch.compile(from_pixels, dynamic=False), []
        else:
            originals = compile_blocks(self.backbone.model, self.model.points["penultimate"].module
                                       if "penultimate" in self.model.points else "")
        size = self.backbone.preprocess.crop_size
        try:  # compilation happens on the first call: do it now, so a failure falls back to eager here
            self.compiled = True
            self.features(torch.zeros(1, 3, size, size, dtype=torch.uint8))
        except Exception as error:  # noqa: BLE001 - no C++ compiler, an unsupported op...: run eagerly instead
            self.compiled, self._compiled_forward = False, None
            for module, forward in originals:
                module.forward = forward
            return f"torch.compile failed ({type(error).__name__}), running eagerly"
        what = "the backbone as one graph" if whole is not None else "the backbone's blocks (it does not trace)"
        return f"compiled {what} with torch.compile (--compile off skips this)"

    @property
    def layout(self) -> list[tuple[str, int, int]]:
        return self.model.layout

    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype or torch.float32, enabled=dtype is not None)

    def features(self, batch: torch.Tensor) -> np.ndarray:
        """uint8 NCHW images (already resized and cropped) to float32 features.

        The compiled graph is specialised to one batch shape and to ordinary (not inference-mode) input tensors,
        which is what the data loader gives: so a short batch is padded, and outside inference mode. (A warm-up
        tensor made inside it had cost every run a second compilation: 6.6 s for ResNet-50.)"""
        self._prepare_once()
        count = len(batch)
        if self.compiled and count < self.settings.batch_size:
            batch = torch.cat([batch, batch.new_zeros(self.settings.batch_size - count, *batch.shape[1:])])
        with torch.inference_mode(), self._autocast():
            pixels = batch.to(self.device, non_blocking=True)
            features = (self._compiled_forward(pixels) if self._compiled_forward is not None
                        else self.model(normalize(pixels, self.backbone.preprocess, self.device)))
        return features[:count].cpu().numpy()

    def feature_dim(self) -> int:
        return self.model.feature_dim

    def images(self, images: Sequence[Image.Image | str | os.PathLike]) -> np.ndarray:
        """Features of PIL images of any mode (converted to RGB as files are) or of image files (decoded upright, as
        a dataset's are): (N, feature_dim), float32, computed a batch at a time so that memory stays flat."""
        preprocess, size = self.backbone.preprocess, self.settings.batch_size
        chunks = [np.empty((0, self.feature_dim()), dtype=np.float32)]
        for start in range(0, len(images), size):
            loaded = [to_rgb(item) if isinstance(item, Image.Image) else load_image(item, str(item))
                      for item in images[start:start + size]]
            chunks.append(self.features(stack_at_crop([resize_or_defer(image, preprocess) for image in loaded],
                                                      preprocess)))
        return np.concatenate(chunks)

    def split(self, split: Split, start: int = 0) -> Iterator[tuple[int, np.ndarray, list[tuple[str, str]]]]:
        """Yield (first row, features, [(id, error)]) batch by batch from row `start`; unreadable images: NaN rows."""
        dim = self.feature_dim()
        workers = self.settings.workers
        if workers is None:
            workers = default_workers(self.device, lambda: _megapixels(split, start))
        preprocess = self.backbone.preprocess
        loader = DataLoader(_SplitImages(split, preprocess, start), batch_size=self.settings.batch_size,
                            num_workers=workers, collate_fn=partial(_collate, preprocess=preprocess),
                            pin_memory=self.device.type == "cuda", prefetch_factor=4 if workers else None,
                            worker_init_fn=_ignore_interrupts)
        row = start
        for images, good, errors in loader:
            out = np.full((len(good) + len(errors), dim), np.nan, dtype=np.float32)
            if images is not None:
                out[good] = self.features(images)
            yield row, out, errors
            row += len(out)

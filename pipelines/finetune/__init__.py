"""Fine-tuning, one module per step: `config` (the run's settings and result), `surgery` (new output layer, what
each mode trains), `data` (augmentation, validation split, loaders), `schedule` (optimiser, learning rates),
`trainer` (the loop), `checkpoint` (atomic, with random states, for --resume), `run` (`finetune`, the whole run)."""

from pipelines.finetune.config import DEFAULT_LR, MODES, OPTIMIZERS, SCHEDULES, FinetuneConfig, FinetuneResult
from pipelines.finetune.run import finetune
from pipelines.finetune.surgery import prepare_model, replace_classifier
from pipelines.finetune.trainer import scored_logits

__all__ = ["DEFAULT_LR", "MODES", "OPTIMIZERS", "SCHEDULES", "FinetuneConfig", "FinetuneResult", "finetune",
           "prepare_model", "replace_classifier", "scored_logits"]

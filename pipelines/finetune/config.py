"""A fine-tuning run's settings (`FinetuneConfig`, recorded in its checkpoints and result file) and its result."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from extract.backbones import DEFAULT_BACKBONE
from extract.errors import UsageError
from extract.runtime import PRECISIONS, check_workers
from extract.store import DEFAULT_CACHE_DIR

MODES = ("head", "partial", "full", "lp-ft", "scratch")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step")
DEFAULT_LR = {"sgd": 0.003, "adamw": 1e-4}


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Everything here is recorded in the checkpoint and the result file."""

    backbone: str = DEFAULT_BACKBONE
    dataset: str = ""
    mode: str = "full"
    unfreeze_from: str | None = None
    weights: str | None = None
    image_size: int | None = None
    limit_per_class: int | None = None
    train_per_class: int | None = None  # the train split cut to the first N of each class; the test split whole
    data_root: str = "data"
    epochs: int = 10
    batch_size: int = 32
    lr: float | None = None
    head_lr_mult: float = 10.0
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    patience: int = 3
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"  # auto: resolved when the run starts, and recorded as what it resolved to
    balanced: bool = False  # classes weighted by the inverse of their train count; checkpoints by balanced accuracy
    flip: bool = False  # validation and test logits averaged with the mirror image's (frozen: extract --flip)
    skip_bad: bool = False  # unreadable images left out, each named, instead of stopping the run
    workers: int | None = None
    out: str = "runs/finetune"
    cache_dir: str = DEFAULT_CACHE_DIR  # lp-ft: where the features its probe is fitted on are cached

    def validate(self) -> None:
        checks = [
            (self.mode in MODES, f"--mode must be one of {', '.join(MODES)}, not {self.mode!r}"),
            (self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}"),
            (self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}"),
            (self.epochs >= 1, f"--epochs must be 1 or more, not {self.epochs}"),
            (self.batch_size >= 1, f"--batch-size must be 1 or more, not {self.batch_size}"),
            (0 < self.val_fraction < 1, f"--val-fraction must be between 0 and 1, not {self.val_fraction}"),
            (self.lr is None or self.lr > 0, f"--lr must be positive, not {self.lr}"),
            (self.head_lr_mult > 0, f"--head-lr-mult must be positive, not {self.head_lr_mult}"),
            (self.weight_decay >= 0, f"--weight-decay must be 0 or more, not {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be 0 or more, not {self.warmup_epochs}"),
            (self.patience >= 1, f"--patience must be 1 or more (epochs without a better validation score before "
                                 f"stopping), not {self.patience}"),
            (self.precision in PRECISIONS, f"--precision must be one of {', '.join(PRECISIONS)}"),
            (self.unfreeze_from is None or self.mode in ("partial", "lp-ft"),
             "--unfreeze-from goes with --mode partial or lp-ft"),
            (self.mode != "lp-ft" or self.weights != "none",
             "--mode lp-ft starts from the linear probe of pretrained features, and --weights none has none; use "
             "--mode scratch to train from random weights"),
        ]
        for ok, message in checks:
            if not ok:
                raise UsageError(message)
        check_workers(self.workers)

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]

    @property
    def validation_score(self) -> str:
        """What picks the best checkpoint and stops early: a key of the history's rows."""
        return "val_balanced_accuracy" if self.balanced else "val_accuracy"


@dataclass
class FinetuneResult:
    strategy: str
    test_accuracy: float
    test_accuracy_interval: tuple[float, float]  # 95% Wilson interval (classify/evaluate.py)
    test_balanced_accuracy: float  # the mean of the classes' recalls
    macro_f1: float
    test_log_loss: float  # of the softmax probabilities at `temperature` (classify/evaluate.py)
    test_calibration_error: float
    test_by_confidence: list[dict]  # share of test images and accuracy at each minimum probability
    temperature: float  # the logits are divided by it before the softmax (fit_temperature)
    best_epoch: int
    epochs_run: int
    trainable_params: int
    total_params: int
    seconds: float
    train_images_per_second: float
    history: list[dict] = field(repr=False)
    test_predictions: list[int] = field(repr=False)
    out: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

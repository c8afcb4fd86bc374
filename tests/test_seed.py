"""--seed reaches every random choice: the scratch network's initialisation and the heads' cross-validation folds."""

import shutil

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold, cross_val_score

from classify.heads import build_head
from classify.train import train_head
from extract.store import open_cache
from pipelines.finetune.config import FinetuneConfig
from pipelines.finetune.surgery import prepare_model


def first_weights(seed: int) -> torch.Tensor:
    config = FinetuneConfig(dataset="unused", mode="scratch", image_size=64, seed=seed)
    model, _, _ = prepare_model(config, 3)
    return next(model.parameters()).detach().clone()


def test_scratch_initialisation_follows_the_seed():
    one, again, other = first_weights(1), first_weights(1), first_weights(2)
    assert torch.equal(one, again) and not torch.equal(one, other)


def test_a_random_backbone_leaves_the_callers_random_state_alone():
    from extract.backbones import create_backbone

    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    create_backbone("efficientnet_lite0", "none", 64, seed=5)
    assert torch.equal(torch.rand(1), expected_next)


def test_the_heads_folds_follow_the_seed(lite_cache, tmp_path):
    cache = shutil.copy(lite_cache, tmp_path / lite_cache.name)
    x, y, _ = open_cache(cache).load("train")
    scores = {}
    for seed in (0, 1):
        result = train_head(cache, "logreg", "C=0.1", cv=2, n_jobs=1, seed=seed, log=lambda m: None)
        reference = cross_val_score(build_head("logreg", open_cache(cache).layout).set_params(clf__C=0.1), x, y,
                                    cv=StratifiedKFold(2, shuffle=True, random_state=seed))
        assert np.isclose(result.cv_accuracy, reference.mean())
        scores[seed] = reference.mean()
    assert scores[0] != scores[1]  # the two seeds' folds differ on this sample, so the check above tells them apart

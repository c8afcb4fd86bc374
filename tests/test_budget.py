"""The advisor's time model: the passes each strategy makes over the images, at speeds measured here."""

import pytest
import torch

from pipelines.budget import HEAD_SECONDS_PER_IMAGE, Speeds, expected_minutes, measure_speeds


def test_each_strategy_costs_the_passes_it_makes_over_the_images():
    speeds = Speeds(extract=100.0, train=10.0)
    head = HEAD_SECONDS_PER_IMAGE * 900
    # 900 train, 100 test: extraction reads 1,000 images; fine-tuning trains on 810 and validates 90 per epoch,
    # then tests 100
    assert expected_minutes("frozen", 900, 100, speeds, epochs=2) == pytest.approx((1000 / 100 + head) / 60)
    assert expected_minutes("frozen-layers", 900, 100, speeds, epochs=2) == pytest.approx((10 + 2 * head) / 60)
    full = 2 * (810 / 10 + 90 / 100) + 100 / 100
    assert expected_minutes("full", 900, 100, speeds, epochs=2) == pytest.approx(full / 60)
    assert expected_minutes("lp-ft", 900, 100, speeds, epochs=2) == pytest.approx((10 + head + full) / 60)
    with pytest.raises(ValueError, match="no time model for 'scratch'"):
        expected_minutes("scratch", 900, 100, speeds)


def test_speeds_are_images_over_the_timed_steps_after_a_warm_up(monkeypatch):
    import time

    clock = iter([0.0, 2.0, 10.0, 18.0])  # inference timed from 0 to 2 s, training from 10 to 18 s
    monkeypatch.setattr(time, "perf_counter", lambda: next(clock))
    state = torch.get_rng_state()
    speeds = measure_speeds("efficientnet_lite0", 32, classes=3, batch_size=4, steps=2)
    assert speeds == Speeds(extract=2 * 4 / 2.0, train=2 * 4 / 8.0)  # the warm-up steps were not timed
    assert torch.equal(torch.get_rng_state(), state)  # its random images and new layer drew on a fork of the RNG

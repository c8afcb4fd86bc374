"""The advisor's time model: the passes each strategy makes over the images, at speeds measured here."""

import pytest

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


def test_training_is_measured_slower_than_inference_at_the_size_asked():
    small = measure_speeds("efficientnet_lite0", 64, classes=3, batch_size=4, steps=1)
    large = measure_speeds("efficientnet_lite0", 160, classes=3, batch_size=4, steps=1)
    assert 0 < small.train < small.extract and 0 < large.train < large.extract
    assert large.extract < small.extract and large.train < small.train  # 6 times the pixels

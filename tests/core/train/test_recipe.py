"""The fine-tuning recipe chosen from the data and the backbone (components.core.train.recipe)."""

import pytest

from components.core.config.schema import PipelineConfig
from components.core.train import recipe

MOBILENET_025_PARAMETERS = 218_544
RESNET50_PARAMETERS = 23_587_712


def _resolve(counts, parameters, **overrides):
    config = PipelineConfig.from_dict(overrides)
    return recipe.resolve(config.finetune, config.augment, config.loss, counts, parameters, 0.2)


def test_a_small_imbalanced_set_on_a_small_backbone_gets_a_full_fine_tune():
    chosen = _resolve([299, 369, 282, 406, 325, 95], MOBILENET_025_PARAMETERS)  # trashnet-like
    assert chosen.epochs == 28  # 50,000 images seen / 1,776
    assert chosen.warmup_epochs == 2
    assert chosen.learning_rate == pytest.approx(3e-4)
    assert chosen.unfreeze_fraction == 1.0
    assert chosen.min_crop_scale == 0.6
    assert chosen.class_weight == "none"  # 406 / 95 = 4.3x: below 10x
    assert "1,776 training images" in chosen.reasons["epochs"]


def test_the_recipe_scales_with_data_size_backbone_size_and_batch():
    tiny_large_model = _resolve([98, 98], RESNET50_PARAMETERS)
    assert tiny_large_model.epochs == 40  # capped
    assert tiny_large_model.unfreeze_fraction == 0.2  # the backbone's default share
    assert tiny_large_model.learning_rate == pytest.approx(3e-4 * (4e6 / 23_587_712) ** 0.5)
    assert tiny_large_model.class_weight == "none"
    huge = _resolve([30_000] * 10, RESNET50_PARAMETERS, finetune={"batch_size": 128})
    assert huge.epochs == 4  # at least a few passes
    assert huge.unfreeze_fraction == 1.0
    assert huge.min_crop_scale == 0.8  # weaker crops with plenty of data
    assert huge.learning_rate == pytest.approx(2 * tiny_large_model.learning_rate)
    assert _resolve([1000, 90], RESNET50_PARAMETERS).class_weight == "sqrt"  # 11x
    middle = _resolve([600] * 5, RESNET50_PARAMETERS)
    assert 0.2 < middle.unfreeze_fraction < 1.0  # 3,000 images x 2,000 / 23.6 M
    assert middle.min_crop_scale == 0.7


def test_values_set_in_the_config_are_kept():
    chosen = _resolve([50, 500], MOBILENET_025_PARAMETERS,
                      finetune={"epochs": 5, "learning_rate": 1e-5, "warmup_epochs": 0,
                                "unfreeze_fraction": 0.3},
                      augment={"min_crop_scale": 0.9}, loss={"class_weight": "none"})
    assert (chosen.epochs, chosen.learning_rate, chosen.warmup_epochs, chosen.unfreeze_fraction,
            chosen.min_crop_scale, chosen.class_weight) == (5, 1e-5, 0, 0.3, 0.9, "none")
    assert set(chosen.reasons.values()) == {"set in the config"}


def test_applied_fills_the_config_and_validates():
    config = PipelineConfig()
    chosen = recipe.resolve(config.finetune, config.augment, config.loss, [100, 120],
                            MOBILENET_025_PARAMETERS, 0.2)
    filled = recipe.applied(config, chosen).validate()
    assert filled.finetune.epochs == chosen.epochs > 0
    assert filled.finetune.learning_rate == chosen.learning_rate
    assert filled.augment.min_crop_scale == chosen.min_crop_scale
    assert filled.loss.class_weight == "none"
    assert config.finetune.epochs == -1  # the original is untouched


def test_square_root_class_weights_sit_between_none_and_balanced_and_average_one():
    from components.core.train import model as models

    counts = [900, 100]
    balanced = models.class_weights(counts, "balanced")
    sqrt = models.class_weights(counts, "sqrt")
    assert balanced[1] / balanced[0] == pytest.approx(9.0)
    assert sqrt[1] / sqrt[0] == pytest.approx(3.0)
    assert sum(sqrt[c] * n for c, n in enumerate(counts)) == pytest.approx(sum(counts))
    assert models.class_weights(counts, "auto") is None  # 9x: below the auto threshold
    assert models.class_weights([1000, 90], "auto") == models.class_weights([1000, 90], "sqrt")

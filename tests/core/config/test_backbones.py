"""Registry: backbones build at tiny sizes with random weights; preprocessing matches Keras."""

import keras
import numpy as np
import pytest

from components.core.data.preprocessing import RawImagePreprocessing, normalize
from components.core.config import backbones
from components.core.train import model as models

# Quick to build; the rest of the zoo is built in the slow tier.
QUICK = {"mobilenet", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0",
         "efficientnet_v2_b0", "resnet50", "resnet50_v2", "densenet121", "convnext_tiny"}


@pytest.mark.parametrize("name", [
    name if name in QUICK else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(backbones.REGISTRY)])
def test_every_backbone_builds_at_its_minimum_size(name):
    spec = backbones.get(name)
    alpha = spec.alphas[0] if spec.alphas else 1.0
    model = models.build_backbone(spec, spec.min_size, alpha, None)
    features = model(np.zeros((1, spec.min_size, spec.min_size, 3), np.float32))
    assert model.name == "backbone" and features.shape[0] == 1 and len(features.shape) == 2
    keras.backend.clear_session()


@pytest.mark.parametrize("name", sorted(backbones.REGISTRY))
def test_normalize_equals_the_backbone_modules_own_preprocess_input(name):
    spec = backbones.get(name)
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    expected = getattr(keras.applications, spec.module).preprocess_input(images.copy())
    np.testing.assert_allclose(np.asarray(normalize(images, spec.preprocess_mode)), expected,
                               atol=1e-4)


def test_every_registered_constructor_exists():
    for spec in backbones.REGISTRY.values():
        assert callable(getattr(keras.applications, spec.constructor)), spec.name


def test_registry_modes_match_keras_modules():
    modes = {spec.preprocess_mode for spec in backbones.REGISTRY.values()}
    assert modes == {"tf", "torch", "caffe", "none"}
    assert backbones.get("resnet50").preprocess_mode == "caffe"
    assert backbones.get("resnet50_v2").preprocess_mode == "tf"


def test_raw_image_layer_resizes_any_size_and_round_trips_through_a_keras_file(tmp_path):
    layer = RawImagePreprocessing(16, "tf")
    raw = np.random.default_rng(0).integers(0, 255, (2, 30, 50, 3), dtype=np.uint8)
    out = np.asarray(layer(raw))
    assert out.shape == (2, 16, 16, 3) and -1 <= out.min() and out.max() <= 1
    same = np.random.default_rng(1).integers(0, 255, (1, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(layer(same)), same / 127.5 - 1, atol=1e-5)
    inputs = keras.Input((None, None, 3), dtype="uint8")
    model = keras.Model(inputs, layer(inputs))
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(raw, verbose=0), out, atol=1e-6)


def test_problems_name_the_fix():
    spec = backbones.get("mobilenet")
    assert backbones.problems(spec, 0, 0.25, "imagenet") == []
    assert "from 32 to 1024" in backbones.problems(spec, 16, 0.25, "imagenet")[0]
    assert backbones.problems(spec, 0, 0.3, "none") == []
    with pytest.raises(ValueError, match="use one of"):
        backbones.get("vit")

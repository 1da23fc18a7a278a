"""The preprocess step's one pass: resized-image cache and frozen features written together."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.core.config.schema import AugmentConfig, DataConfig
from components.core.data import cache, discovery, ingest as ingestion, tfrecords
from components.core.data.preprocessing import augment, resize_images, to_uint8
from components.core.io import storage

SIZE = 12


@pytest.fixture
def dataset(digits_folder, tmp_path):
    ingestion.ingest_folder(digits_folder, str(tmp_path / "dataset"), DataConfig(seed=4))
    return str(tmp_path / "dataset")


def tiny_extractor():
    """uint8 (B, SIZE, SIZE, 3) -> (B, 5) features, fixed random weights."""
    images = keras.Input((SIZE, SIZE, 3), dtype="uint8")
    pooled = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(5, 3, kernel_initializer=keras.initializers.GlorotUniform(1))(
            keras.ops.cast(images, "float32") / 255.0))
    return keras.Model(images, pooled)


def expected_resized(dataset_dir, split):
    """Each decoded image resized alone, the way the model's own preprocessing does it."""
    images, labels = [], []
    for image, label in tfrecords.read_split(dataset_dir, split):
        images.append(to_uint8(resize_images(image[None], SIZE))[0].numpy())
        labels.append(int(label))
    return np.stack(images), np.array(labels)


def one_pass(dataset_dir, root, extractor, views=0, seed=3, on_batch=None):
    features = cache.FeatureCache(extractor, SIZE, AugmentConfig(views=views), seed, 0.75)

    def add(split, images, labels):
        features.add(split, images, labels)
        if on_batch:
            on_batch(split, images, labels)

    meta = cache.write_resized(cache.start_resizing(dataset_dir, SIZE), dataset_dir,
                               str(root / "images"), SIZE, on_batch=add)
    features.add_views(str(root / "images"))
    return meta, features.save(str(root / "features"), meta["classes"])


def test_one_pass_writes_every_split_resized_and_the_features_of_train_and_val(
        dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "BATCH", 5)  # several batches per split, partial ones too
    extractor = tiny_extractor()
    seen = []
    meta, facts = one_pass(dataset, tmp_path, extractor, views=2,
                           on_batch=lambda split, images, labels: seen.append(split))
    assert seen == sorted(seen, key=discovery.SPLITS.index)  # split after split, in order
    manifest = storage.read_json(os.path.join(dataset, tfrecords.MANIFEST))
    for split in discovery.SPLITS:
        images, labels = cache.read_arrays(str(tmp_path / "images"), split)
        want_images, want_labels = expected_resized(dataset, split)
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
        assert meta["counts"][split] == sum(manifest["counts"][split].values()) == len(labels)
    assert facts == {"feature_seconds": pytest.approx(facts["feature_seconds"]), "views": 3,
                     "feature_dim": 5}

    arrays = cache.load_features(str(tmp_path / "features"))
    train, train_labels = cache.read_arrays(str(tmp_path / "images"), "train")
    count = len(train_labels)
    assert arrays["train_features"].shape == (3 * count, 5)
    np.testing.assert_array_equal(arrays["train_labels"], np.tile(train_labels, 3))
    np.testing.assert_allclose(arrays["train_features"][:count], extractor(train), atol=1e-6)
    val, val_labels = cache.read_arrays(str(tmp_path / "images"), "val")
    np.testing.assert_allclose(arrays["val_features"], extractor(val), atol=1e-6)
    np.testing.assert_array_equal(arrays["val_labels"], val_labels)
    for view in (1, 2):  # seeds (seed, view * stride + batch number) over batches of 5
        expected = [extractor(augment(train[start:start + 5], tf.constant(
            [3, view * cache.AUGMENT_SEED_STRIDE + start // 5], tf.int64), 0.75, True))
            for start in range(0, count, 5)]
        np.testing.assert_allclose(arrays["train_features"][view * count:(view + 1) * count],
                                   np.concatenate(expected), atol=1e-6)
    assert not np.allclose(arrays["train_features"][count:2 * count],
                           arrays["train_features"][2 * count:])


def test_a_failure_during_the_pass_leaves_nothing_written(dataset, tmp_path):
    def fail_on_val(split, images, labels):
        if split == "val":
            raise RuntimeError("extractor failed")

    with pytest.raises(RuntimeError, match="extractor failed"):
        one_pass(dataset, tmp_path, tiny_extractor(), on_batch=fail_on_val)
    assert not (tmp_path / "images").exists() and not (tmp_path / "features").exists()
    assert sorted(os.listdir(tmp_path)) == ["dataset", "digits"]  # no partial folder left


def test_batchnorm_sample_is_seeded_and_drawn_across_the_training_split(dataset):
    train, labels = expected_resized(dataset, "train")
    first = cache.batchnorm_sample(dataset, SIZE, seed=1)
    assert first.shape == (min(cache.BATCH, len(train)), SIZE, SIZE, 3)
    np.testing.assert_array_equal(first, cache.batchnorm_sample(dataset, SIZE, seed=1))
    assert not np.array_equal(first, cache.batchnorm_sample(dataset, SIZE, seed=2))
    drawn = [int(np.flatnonzero((train == image).all(axis=(1, 2, 3)))[0]) for image in first]
    assert drawn != sorted(drawn)  # shuffled, not the split's first images (sorted by class)


def test_preprocess_with_random_weights_is_the_same_for_the_same_seed(dataset, tmp_path):
    """Random initial weights come from data.seed: the same seed gives the same backbone and
    features in a new run (what makes a from-scratch run reproducible), another seed not."""
    from components.core import stages

    def run(name, seed):
        config = {"model": {"backbone": "mobilenet", "alpha": 0.25, "image_size": 32,
                            "weights": "none"}, "data": {"seed": seed}}
        folder = tmp_path / name
        stages.preprocess(dataset, str(folder / "images"), str(folder / "features"),
                          str(folder / "backbone"), config=config)
        return cache.load_features(str(folder / "features"))["train_features"]

    first = run("first", 7)
    keras.utils.set_random_seed(123)  # whatever ran before: the step seeds itself
    np.testing.assert_array_equal(run("again", 7), first)
    assert not np.allclose(run("other", 8), first)


@pytest.mark.parametrize("images, batch, replicas, expected", [
    (13, 4, 1, (4, False)),  # one process: the last batch of 1 is trained on
    (13, 4, 2, (3, True)),  # two replicas: a batch of 1 would leave one empty, dropped
    (14, 4, 2, (4, False)),  # a batch of 2: one image each
    (12, 4, 2, (3, False)),  # no remainder
    (17, 8, 4, (2, True)),
])
def test_a_last_batch_smaller_than_the_replicas_is_dropped(images, batch, replicas, expected):
    assert cache.batches_per_epoch(images, batch, replicas) == expected


def test_a_split_read_from_disk_behaves_like_the_array_it_stays_out_of_memory_as(tmp_path):
    from tests.conftest import write_image_cache

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (300, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(300) % 3
    folder = write_image_cache(tmp_path / "images", {"train": (images[:5], labels[:5]),
                                                     "test": (images, labels)})
    split = cache.SplitImages(folder, "test", batch_size=64)
    assert len(split) == 300 and split.shape == (300, 4, 4, 3)
    assert (split.labels == labels).all()
    assert np.array_equal(np.concatenate(list(split.batches())), images)
    assert np.array_equal(np.stack(list(split)), images)
    assert np.array_equal(split[7], images[7]) and np.array_equal(split[:3], images[:3])
    wanted = [299, 5, 5, 130]  # any order, repeats, across batches
    assert np.array_equal(split[wanted], images[wanted])
    assert split[[]].shape == (0, 4, 4, 3)
    with pytest.raises(IndexError, match="out of range for 300 test images"):
        split[[300]]

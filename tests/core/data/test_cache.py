"""The preprocess step's one pass: resized-image cache and frozen features written together."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.core.config.schema import AugmentConfig, DataConfig
from components.core.data import cache, discovery, ingest as ingestion, shards, tfrecords
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
    assert shards.batches_per_epoch(images, batch, replicas) == expected


@pytest.mark.parametrize("images, files", [(0, 1), (8191, 1), (16384, 2), (40000, 4),
                                            (160000, 16), (10 ** 7, 16)])
def test_the_training_cache_gets_a_power_of_two_of_files_by_size(images, files):
    assert cache.train_file_count(images) == files


def constant_images(count: int, size: int = 8) -> np.ndarray:
    """Image i filled with the value i: any crop of it, resized, is still i."""
    return np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None],
                           (count, size, size, 3)).copy()


def test_a_training_split_in_several_files_reads_back_in_its_order(tmp_path):
    from tests.helpers import write_image_cache

    images, labels = constant_images(37), np.arange(37) % 3
    folder = write_image_cache(tmp_path / "images", {"train": (images, labels),
                                                     "val": (images[:3], labels[:3])},
                               train_files=4)
    assert sorted(os.listdir(folder)) == ["meta.json", *[f"train-0000{n}-of-00004.tfrecord"
                                                         for n in range(4)], "val.tfrecord"]
    assert storage.read_json(os.path.join(folder, cache.META))["train_file_counts"] == \
        [10, 9, 9, 9]  # image i in file i % 4
    assert (cache.read_labels(folder, "train") == labels).all()
    split = cache.SplitImages(folder, "train", batch_size=8)
    assert np.array_equal(np.concatenate(list(split.batches())), images)
    assert np.array_equal(split[[36, 0, 13]], images[[36, 0, 13]])
    read = [pixels[0, 0, 0]
            for pixels, _ in cache.read_resized(folder, "train").as_numpy_iterator()]
    assert read == list(range(37))


@pytest.mark.parametrize("files, batch, workers, replicas, expected", [
    (1, 32, 1, 1, None),  # one file: read whole
    ([9, 9, 9, 9], 8, 1, 1, (4, 2, 4)),  # (streams, images per stream per batch, steps)
    ([9, 9, 9, 9], 8, 2, 1, (4, 2, 4)),
    ([9, 9, 9, 9], 8, 3, 1, None),  # 4 streams do not split over 3 workers
    ([9, 9, 9, 9], 8, 2, 2, (4, 2, 4)),  # 4 images per worker, 2 per device
    ([9, 9, 9, 9], 8, 2, 3, None),
    ([9, 9, 9, 9], 6, 2, 1, (2, 3, 6)),  # gcd(4 files, 6) = 2 streams of 2 files each
    ([9, 9, 9, 9], 6, 4, 1, None),
    ([3, 3, 2, 2], 16, 1, 1, None),  # a stream holds fewer images than its part of a batch
])
def test_the_stream_plan(files, batch, workers, replicas, expected):
    counts = [100] if files == 1 else files
    plan = shards.stream_plan(counts, batch, workers, replicas)
    assert (plan and (plan.streams, plan.stream_batch, plan.steps)) == expected


def test_each_worker_reads_its_own_files_and_together_they_give_the_one_worker_batches(
        tmp_path):
    """70 images in 4 files, a global batch of 8: 4 streams of 2 images per batch, 8 steps
    (the files hold 18, 18, 17, 17). Read by 1, 2 and 4 workers, the global batches are the
    same images, augmented the same way, in the same order."""
    from tests.helpers import write_image_cache

    images, labels = constant_images(70), np.arange(70) % 3
    folder = write_image_cache(tmp_path / "images", {"train": (images, labels),
                                                     "val": (images[:3], labels[:3])},
                               train_files=4)
    augmentation = AugmentConfig(min_crop_scale=0.5, flip=True)

    def epoch(workers, number, seed=5):
        plan = shards.stream_plan([18, 18, 17, 17], 8, workers, 1)
        parts = [list(shards.worker_epoch(folder, plan, worker, seed, augmentation, number)
                      .as_numpy_iterator()) for worker in range(workers)]
        for worker, batches in enumerate(parts):
            assert len(batches) == plan.steps == 8
            files = {int(image) % 4 for images, _ in batches for image in images[:, 0, 0, 0]}
            assert files == set(plan.worker_streams(worker))  # its own files, no other
        return [(np.concatenate([batches[step][0] for batches in parts]),
                 np.concatenate([batches[step][1] for batches in parts])) for step in range(8)]

    one = epoch(1, 0)
    ids = np.concatenate([images[:, 0, 0, 0] for images, _ in one]).astype(int)
    assert len(set(ids)) == 64  # each image once; 6 left out this epoch
    assert all((batch_labels == batch_images[:, 0, 0, 0] % 3).all()
               for batch_images, batch_labels in one)
    assert len({int(image) % 4 for image in one[0][0][:, 0, 0, 0]}) == 4  # every file in a batch
    for workers in (2, 4):
        for (a_images, a_labels), (b_images, b_labels) in zip(epoch(workers, 0), one):
            assert np.array_equal(a_images, b_images) and np.array_equal(a_labels, b_labels)
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(epoch(1, 0), one))  # seeded
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(epoch(1, 1), one))  # per epoch
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(epoch(1, 0, seed=6), one))


def test_one_process_trains_on_the_file_streams_and_a_one_file_split_on_the_whole_split(
        tmp_path):
    from tests.helpers import write_image_cache

    images, labels = constant_images(70), np.arange(70) % 3
    augmentation = AugmentConfig(min_crop_scale=0.5, flip=True)
    strategy = tf.distribute.get_strategy()
    for files, how, steps in ((4, "its own files", 8), (1, "the whole split", 9)):
        folder = write_image_cache(tmp_path / f"images-{files}", {
            "train": (images, labels), "val": (images[:3], labels[:3])}, train_files=files)
        epochs = shards.training_epochs(strategy, folder, 8, 5, augmentation, workers=1)
        assert epochs.how == {"train_files": files, "streams": 4 if files == 4 else 1,
                              "read_by_each_worker": how}
        batches = list(epochs.batches(0))
        assert len(batches) == epochs.steps_per_epoch == steps
        assert sum(len(batch_labels) for _, batch_labels in batches) == \
            (64 if files == 4 else 70)


def test_a_split_read_from_disk_behaves_like_the_array_it_stays_out_of_memory_as(tmp_path):
    from tests.helpers import write_image_cache

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

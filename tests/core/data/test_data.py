"""Ingest on a dirty folder built here: every kind of mess a real collection has."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from components.core.config.schema import DataConfig
from components.core.data import discovery, image_check, ingest as ingestion, splitting, tfrecords
from components.core.io import storage


def photo(seed, size=(40, 30)):
    """A random-texture RGB picture; different seeds give different content."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def save(image, path, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, **kwargs)


@pytest.fixture
def dirty(tmp_path):
    root = tmp_path / "dirty"
    for label, offset in (("cats", 0), ("dogs", 100)):
        for i in range(8):
            save(photo(offset + i), str(root / label / f"img {i} (copy).jpg"), quality=95)
    save(photo(1).convert("CMYK"), str(root / "cats" / "cmyk.jpeg"))
    rgba = photo(2).convert("RGBA")
    rgba.putalpha(128)
    save(rgba, str(root / "cats" / "alpha.png"))
    deep = Image.fromarray(np.arange(1200, dtype=np.uint16).reshape(30, 40) * 50)
    save(deep, str(root / "dogs" / "deep16.png"))
    save(photo(3).convert("P"), str(root / "dogs" / "palette.gif"))
    buffer = io.BytesIO()
    photo(4).save(buffer, format="JPEG")
    (root / "dogs" / "truncated.jpg").write_bytes(buffer.getvalue()[:300])
    (root / "dogs" / "notes.txt").write_text("not an image")
    (root / "cats" / ".DS_Store").write_bytes(b"\0\0")
    (root / "cats" / "zz dup.jpg").write_bytes((root / "cats" / "img 0 (copy).jpg").read_bytes())
    # the same picture filed under both classes: a label conflict
    (root / "dogs" / "which.jpg").write_bytes((root / "cats" / "img 1 (copy).jpg").read_bytes())
    # an "image not found" placeholder: a flat graphic with a few colours
    placeholder = Image.new("P", (120, 90), 0)
    placeholder.putpalette([200, 200, 200, 90, 90, 90] + [0] * 762)
    placeholder.paste(1, (20, 30, 100, 60))
    save(placeholder, str(root / "dogs" / "imageNotFound.gif"))
    return str(root)


def read_all(dataset_dir, split):
    return [(image.numpy(), int(label))
            for image, label in tfrecords.read_split(dataset_dir, split)]


def test_dirty_folder_is_checked_converted_split_and_reported(dirty, tmp_path):
    out = str(tmp_path / "dataset")
    manifest = ingestion.ingest_folder(dirty, out, DataConfig(seed=1))
    skipped = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) == {"dogs/truncated.jpg", "dogs/notes.txt", "cats/zz dup.jpg"}
    assert "cannot be decoded" in skipped["dogs/truncated.jpg"]
    assert "not an image" in skipped["dogs/notes.txt"]
    assert "duplicate of cats/img 0 (copy).jpg" in skipped["cats/zz dup.jpg"]
    converted = {entry["path"]: entry["conversion"] for entry in manifest["converted"]}
    assert set(converted) == {"cats/cmyk.jpeg", "cats/alpha.png", "dogs/deep16.png",
                              "dogs/palette.gif", "dogs/imageNotFound.gif"}
    few = {entry["path"]: entry["colours"] for entry in manifest["few_colours"]}
    assert few["dogs/imageNotFound.gif"] == 2  # the placeholder is listed, the photos are not
    assert not [path for path in few if "img" in path or path.endswith(".jpeg")]
    assert "dogs/deep16.png" not in few  # a 16-bit photo is judged on its 8-bit rendering
    assert converted["cats/cmyk.jpeg"].startswith("CMYK JPEG")
    assert manifest["classes"] == ["cats", "dogs"]
    total = {split: sum(counts.values()) for split, counts in manifest["counts"].items()}
    assert sum(total.values()) + len(manifest["excluded_from_test"]) == 22
    assert min(total.values()) >= 1
    for split in discovery.SPLITS:
        records = read_all(out, split)
        assert len(records) == total[split]
        assert all(image.dtype == np.uint8 and image.shape[2] == 3 for image, _ in records)
    assert sorted(os.listdir(out)) == sorted(["manifest.json", "train-00000.tfrecord",
                                              "val-00000.tfrecord", "test-00000.tfrecord"])
    assert not [name for name in os.listdir(tmp_path) if ".partial" in name]


def test_conversions_produce_the_right_pixels(dirty, tmp_path):
    rgba = np.asarray(Image.open(io.BytesIO(image_check.rgb_bytes(os.path.join(dirty, "cats",
                                                                               "alpha.png")))))
    source = np.asarray(photo(2), dtype=np.float64)
    expected = np.round(source * (128 / 255) + 255 * (127 / 255))  # 50% alpha over white
    assert rgba.shape == (30, 40, 3) and np.abs(rgba - expected).max() <= 1
    deep = np.asarray(Image.open(io.BytesIO(image_check.rgb_bytes(os.path.join(dirty, "dogs",
                                                                               "deep16.png")))))
    assert deep.dtype == np.uint8 and deep[0, 0, 0] == 0
    assert deep[..., 0].max() == round(59950 * 255 / 65535)  # full 16-bit range -> 8 bits


def test_split_is_seeded_and_shards_rotate(dirty, tmp_path):
    first = ingestion.ingest_folder(dirty, str(tmp_path / "a"), DataConfig(seed=7, shard_size=3))
    again = ingestion.ingest_folder(dirty, str(tmp_path / "b"), DataConfig(seed=7, shard_size=3))
    other = ingestion.ingest_folder(dirty, str(tmp_path / "c"), DataConfig(seed=8, shard_size=3))
    assert first["fingerprint"] == again["fingerprint"] != other["fingerprint"]
    assert len(first["shards"]["train"]) == -(-sum(first["counts"]["train"].values()) // 3)


def test_conflicting_labels_are_flagged_and_kept_out_of_test_and_odd_names_listed(dirty,
                                                                                  tmp_path):
    import hashlib

    pair = ["cats/img 1 (copy).jpg", "dogs/which.jpg"]
    sha = hashlib.sha256(open(os.path.join(dirty, pair[0]), "rb").read()).hexdigest()
    seed = next(s for s in range(1000) if splitting.split_point(s, sha) < 0.15)  # lands in test
    manifest = ingestion.ingest_folder(dirty, str(tmp_path / "out"), DataConfig(seed=seed))
    assert manifest["label_conflicts"] == [{"sha256": sha, "paths": pair}]
    assert sorted(e["path"] for e in manifest["excluded_from_test"]) == pair
    assert all(e["reason"] == "the same image is labelled with another class too"
               for e in manifest["excluded_from_test"])
    tested = {source for _, _, source in read_sources(str(tmp_path / "out"), "test")}
    assert tested and not tested & set(pair)
    assert "cats/img 0 (copy).jpg" in manifest["odd_names"]
    assert "cats/cmyk.jpeg" not in manifest["odd_names"]
    assert manifest["imbalance_ratio"] >= 1.0
    from components.core.data import report as data_report

    page = data_report.render_data_report(manifest)
    assert "## Same image under different classes: 1" in page
    assert "## Left out of the test split: 2" in page
    assert "`dogs/truncated.jpg`" in page and "| **all** |" in page


def read_sources(dataset_dir, split):
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(os.path.join(dataset_dir, f"{split}-*.tfrecord")))
    spec = {"label": tf.io.FixedLenFeature([], tf.int64),
            "sha256": tf.io.FixedLenFeature([], tf.string),
            "source": tf.io.FixedLenFeature([], tf.string)}
    return [(int(e["label"]), e["sha256"].numpy().decode(), e["source"].numpy().decode())
            for e in (tf.io.parse_single_example(r, spec) for r in tf.data.TFRecordDataset(files))]


def test_adding_images_keeps_every_old_file_in_its_split(tmp_path):
    root = tmp_path / "grow"
    for label, offset in (("a", 0), ("b", 500)):
        for i in range(30):
            save(photo(offset + i), str(root / label / f"{i:03d}.png"))
    ingestion.ingest_folder(str(root), str(tmp_path / "before"), DataConfig(seed=3))
    for i in range(30, 60):
        save(photo(1000 + i), str(root / "a" / f"{i:03d}.png"))
    ingestion.ingest_folder(str(root), str(tmp_path / "after"), DataConfig(seed=3))
    placed = {}
    for name in ("before", "after"):
        placed[name] = {source: split for split in discovery.SPLITS
                        for _, _, source in read_sources(str(tmp_path / name), split)}
    assert len(placed["after"]) == 90
    assert all(placed["after"][source] == split for source, split in placed["before"].items())


def test_split_fractions_hold_on_large_classes_and_small_ones_keep_a_training_image():
    def image(label, i):
        source = discovery.SourceFile(f"/{label}/{i}", f"{label}/{i}", label)
        return image_check.CheckedImage(source, f"{label}{i:05d}", 10, 10, "")

    images = [image("big", i) for i in range(4000)] + [image("tiny", i) for i in range(2)]
    splits = splitting.assign_splits(images, ["big", "tiny"], DataConfig(seed=0, val_fraction=0.1,
                                                                         test_fraction=0.2))
    big = {split: sum(m.source.label == "big" for m in splits[split]) for split in discovery.SPLITS}
    assert abs(big["test"] / 4000 - 0.2) < 0.02 and abs(big["val"] / 4000 - 0.1) < 0.02
    assert any(m.source.label == "tiny" for m in splits["train"])


def test_given_val_becomes_test_and_val_is_carved_from_train(tmp_path):
    root = tmp_path / "splits"
    for split, count in (("train", 10), ("val", 4)):
        for label in ("ants", "bees"):
            for i in range(count):
                # fixed content (Python's str hash changes per process): a fixed split
                seed = 1000 * (split == "val") + 100 * (label == "bees") + i
                save(photo(seed), str(root / split / label / f"{i}.png"))
    manifest = ingestion.ingest_folder(str(root), str(tmp_path / "out"), DataConfig())
    assert manifest["counts"]["test"] == {"ants": 4, "bees": 4}
    for label in ("ants", "bees"):  # val carved from the given train only
        assert manifest["counts"]["val"][label] + manifest["counts"]["train"][label] == 10
        assert manifest["counts"]["train"][label] >= 1


@pytest.mark.parametrize("build, message", [
    (lambda root: None, "does not exist"),
    (lambda root: save(photo(0), str(root / "only" / "a.png")), "at least two"),
    (lambda root: (save(photo(0), str(root / "a" / "a.png")), os.makedirs(root / "b")),
     "class folder 'b'"),
    (lambda root: (save(photo(0), str(root / "a" / "a.png")),
                   os.makedirs(root / "b"), (root / "b" / "x.jpg").write_text("junk")),
     "class 'b' has no usable image"),
])
def test_bad_sources_fail_before_writing(tmp_path, build, message):
    root = tmp_path / "source"
    build(root)
    out = tmp_path / "out"
    with pytest.raises(discovery.DataError, match=message):
        ingestion.ingest_folder(str(root), str(out), DataConfig())
    assert not out.exists()


def test_atomic_dir_keeps_the_old_artifact_when_writing_fails(tmp_path):
    target = tmp_path / "artifact"
    target.mkdir()
    (target / "old.txt").write_text("whole")
    with pytest.raises(RuntimeError):
        with storage.atomic_dir(str(target)) as partial:
            open(os.path.join(partial, "half.txt"), "w").write("half")
            raise RuntimeError("killed")
    assert os.listdir(target) == ["old.txt"] and os.listdir(tmp_path) == ["artifact"]


def test_an_image_in_both_train_and_test_folders_is_kept_once(tmp_path):
    root = tmp_path / "leaky"
    for split, count in (("train", 6), ("test", 3)):
        for label, offset in (("ants", 0), ("bees", 50)):
            for i in range(count):
                save(photo(offset + i + (10 if split == "test" else 0)),
                     str(root / split / label / f"{i}.png"))
    (root / "test" / "ants" / "copy.png").write_bytes((root / "train" / "ants" / "0.png")
                                                      .read_bytes())
    manifest = ingestion.ingest_folder(str(root), str(tmp_path / "out"),
                                       DataConfig(val_fraction=0.4))
    [skipped] = manifest["skipped"]
    assert skipped["reason"].startswith("exact duplicate of")
    assert {skipped["path"], skipped["reason"].split()[3]} == {"test/ants/copy.png",
                                                               "train/ants/0.png"}
    placed = {source for split in discovery.SPLITS
              for _, _, source in read_sources(str(tmp_path / "out"), split)}
    assert len(placed & {"test/ants/copy.png", "train/ants/0.png"}) == 1  # no leakage


@pytest.mark.parametrize("seed", range(6))
def test_a_class_of_three_images_gets_one_in_every_split(tmp_path, seed):
    for label in ("ants", "bees"):
        for i in range(3):
            save(photo(10 * (label == "bees") + i), str(tmp_path / "src" / label / f"{i}.png"))
    manifest = ingestion.ingest_folder(str(tmp_path / "src"), str(tmp_path / "out"),
                                       DataConfig(seed=seed))
    assert all(manifest["counts"][split] == {"ants": 1, "bees": 1}
               for split in ("train", "val", "test"))


def test_the_training_split_is_stored_with_classes_mixed_in_a_seeded_order(tmp_path):
    """A class larger than the training stream's shuffle buffer must not fill whole batches:
    the caches hold the training images in a seeded random order, the same for a seed, and new
    files do not move the old ones relative to each other."""
    from tests.helpers import write_digits

    def train_order(folder, seed, name):
        ingestion.ingest_folder(folder, str(tmp_path / name), DataConfig(seed=seed))
        return [(int(label), path.decode()) for _, label, path in _records(tmp_path / name)]

    def _records(dataset_dir):
        import tensorflow as tf

        manifest = storage.read_json(os.path.join(dataset_dir, tfrecords.MANIFEST))
        spec = {"label": tf.io.FixedLenFeature([], tf.int64),
                "source": tf.io.FixedLenFeature([], tf.string)}
        for record in tf.data.TFRecordDataset([os.path.join(dataset_dir, name) for name in
                                               manifest["shards"]["train"]]):
            parsed = tf.io.parse_single_example(record, spec)
            yield None, parsed["label"].numpy(), parsed["source"].numpy()

    folder = write_digits(tmp_path / "digits", per_class=30)
    order = train_order(folder, 5, "a")
    labels = [label for label, _ in order]
    changes = sum(a != b for a, b in zip(labels, labels[1:]))
    assert changes > len(labels) / 3  # class order would change label twice
    assert train_order(folder, 5, "b") == order
    assert train_order(folder, 6, "c") != order
    write_digits(tmp_path / "digits", per_class=45)  # 15 new images per class
    grown = [entry for entry in train_order(folder, 5, "d") if entry in order]
    assert grown == [entry for entry in order if entry in grown]

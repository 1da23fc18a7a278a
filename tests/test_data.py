"""Ingest on a dirty folder built here: every kind of mess a real collection has."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from components.core import data, storage
from components.core.config import DataConfig


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
    return str(root)


def read_all(dataset_dir, split):
    return [(image.numpy(), int(label)) for image, label in data.read_split(dataset_dir, split)]


def test_dirty_folder_is_checked_converted_split_and_reported(dirty, tmp_path):
    out = str(tmp_path / "dataset")
    manifest = data.ingest_folder(dirty, out, DataConfig(seed=1))
    skipped = {entry["path"]: entry["reason"] for entry in manifest["skipped"]}
    assert set(skipped) == {"dogs/truncated.jpg", "dogs/notes.txt", "cats/zz dup.jpg"}
    assert "cannot be decoded" in skipped["dogs/truncated.jpg"]
    assert "not an image" in skipped["dogs/notes.txt"]
    assert "duplicate of cats/img 0 (copy).jpg" in skipped["cats/zz dup.jpg"]
    converted = {entry["path"]: entry["conversion"] for entry in manifest["converted"]}
    assert set(converted) == {"cats/cmyk.jpeg", "cats/alpha.png", "dogs/deep16.png",
                              "dogs/palette.gif"}
    assert converted["cats/cmyk.jpeg"].startswith("CMYK JPEG")
    assert manifest["classes"] == ["cats", "dogs"]
    total = {split: sum(counts.values()) for split, counts in manifest["counts"].items()}
    assert sum(total.values()) == 20 and min(total.values()) >= 2
    for split in data.SPLITS:
        records = read_all(out, split)
        assert len(records) == total[split]
        assert all(image.dtype == np.uint8 and image.shape[2] == 3 for image, _ in records)
    assert sorted(os.listdir(out)) == sorted(["manifest.json", "train-00000.tfrecord",
                                              "val-00000.tfrecord", "test-00000.tfrecord"])
    assert not [name for name in os.listdir(tmp_path) if ".partial" in name]


def test_conversions_produce_the_right_pixels(dirty, tmp_path):
    rgba = np.asarray(Image.open(io.BytesIO(data.rgb_bytes(os.path.join(dirty, "cats",
                                                                        "alpha.png")))))
    source = np.asarray(photo(2), dtype=np.float64)
    expected = np.round(source * (128 / 255) + 255 * (127 / 255))  # 50% alpha over white
    assert rgba.shape == (30, 40, 3) and np.abs(rgba - expected).max() <= 1
    deep = np.asarray(Image.open(io.BytesIO(data.rgb_bytes(os.path.join(dirty, "dogs",
                                                                        "deep16.png")))))
    assert deep.dtype == np.uint8 and deep[0, 0, 0] == 0
    assert deep[..., 0].max() == round(59950 * 255 / 65535)  # full 16-bit range -> 8 bits


def test_split_is_seeded_stratified_and_shards_rotate(dirty, tmp_path):
    first = data.ingest_folder(dirty, str(tmp_path / "a"), DataConfig(seed=7, shard_size=3))
    again = data.ingest_folder(dirty, str(tmp_path / "b"), DataConfig(seed=7, shard_size=3))
    other = data.ingest_folder(dirty, str(tmp_path / "c"), DataConfig(seed=8, shard_size=3))
    assert first["fingerprint"] == again["fingerprint"] != other["fingerprint"]
    for label in ("cats", "dogs"):
        assert first["counts"]["test"][label] >= 1 and first["counts"]["val"][label] >= 1
    assert len(first["shards"]["train"]) == -(-sum(first["counts"]["train"].values()) // 3)


def test_given_val_becomes_test_and_val_is_carved_from_train(tmp_path):
    root = tmp_path / "splits"
    for split, count in (("train", 10), ("val", 4)):
        for label in ("ants", "bees"):
            for i in range(count):
                save(photo(hash((split, label, i)) % 10000), str(root / split / label / f"{i}.png"))
    manifest = data.ingest_folder(str(root), str(tmp_path / "out"), DataConfig())
    assert manifest["counts"]["test"] == {"ants": 4, "bees": 4}
    assert manifest["counts"]["val"] == {"ants": 2, "bees": 2}
    assert manifest["counts"]["train"] == {"ants": 8, "bees": 8}


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
    with pytest.raises(data.DataError, match=message):
        data.ingest_folder(str(root), str(out), DataConfig())
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


def test_carve_counts():
    assert data.carve_counts(10, [0.15, 0.15]) == [2, 2]
    assert data.carve_counts(3, [0.15, 0.15]) == [1, 1]
    assert data.carve_counts(2, [0.15, 0.15]) == [1, 0]
    assert data.carve_counts(1, [0.15, 0.15]) == [0, 0]
    assert data.carve_counts(10, [0.0]) == [0]


def test_listing_fingerprint_changes_only_when_the_files_do(digits_folder):
    before = data.listing_fingerprint(digits_folder)
    assert data.listing_fingerprint(digits_folder) == before
    added = os.path.join(digits_folder, "digit1", "new.png")
    save(photo(7), added)
    with_new = data.listing_fingerprint(digits_folder)
    assert with_new != before
    os.utime(added, ns=(1, 1))  # rewritten in place: same name and size, new time
    assert data.listing_fingerprint(digits_folder) != with_new
    os.remove(added)
    assert data.listing_fingerprint(digits_folder) == before
    with pytest.raises(data.DataError, match="does not exist"):
        data.listing_fingerprint(os.path.join(digits_folder, "missing"))

"""Every source kind becomes the same local folder: Cloud Storage through a real fake-gcs-server
started here on 127.0.0.1, archives built here (hostile ones included), TFDS through its own
mock data. Each kind goes through the ingest stage; one runs through the whole local pipeline."""

import io
import json
import os
import socket
import tarfile
import time
import zipfile

import pytest

from components.core import stages
from components.core.data import archives, gcs as gcs_reads, source_uri, sources, tfds_source
from components.core.data.discovery import DataError
from pipelines.cli import main
from tests.helpers import TINY, artifact, run_pipeline, upload_folder


def listing(folder):
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, names in os.walk(folder) for name in names)


def test_gcs_prefix_downloads_every_object_and_fingerprints_without_downloading(
        gcs, digits_folder, tmp_path):
    upload_folder(gcs, "images", digits_folder, "sets/digits")
    uri = "gs://images/sets/digits"
    folder = sources.materialize(uri, str(tmp_path))
    assert listing(folder) == listing(digits_folder)
    before = sources.fingerprint(uri)
    assert sources.fingerprint(uri + "/") == before
    gcs.bucket("images").blob("sets/digits/digit1/extra.png").upload_from_filename(
        os.path.join(digits_folder, "digit1", "000.png"))
    assert sources.fingerprint(uri) != before


@pytest.mark.parametrize("uri, message", [
    ("gs://no-such-bucket/x", "gs://no-such-bucket/x"),
    ("gs://images/empty-prefix", "holds no objects"),
])
def test_bad_gcs_sources_are_named(gcs, digits_folder, uri, message):
    upload_folder(gcs, "images", digits_folder, "sets/digits")
    with pytest.raises(DataError, match=message):
        sources.check(uri)


def test_unreachable_gcs_is_a_clear_error(monkeypatch):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", closed)
    monkeypatch.setattr(gcs_reads, "RETRY_DEADLINE_SECONDS", 2.0)
    with pytest.raises(DataError, match="cannot reach Cloud Storage for gs://bucket/prefix"):
        sources.check("gs://bucket/prefix")


def make_zip(path, entries):
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in entries.items():
            archive.writestr(name, content)
    return str(path)


def make_tar(path, entries, links=()):
    with tarfile.open(path, "w:gz") as archive:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            archive.addfile(info)
    return str(path)


def folder_entries(folder, top="photos"):
    return {f"{top}/{name}": open(os.path.join(folder, name), "rb").read()
            for name in listing(folder)}


@pytest.mark.parametrize("maker, suffix", [(make_zip, "zip"), (make_tar, "tar.gz")])
def test_archives_extract_below_their_top_folder(digits_folder, tmp_path, maker, suffix):
    path = maker(tmp_path / f"digits.{suffix}", folder_entries(digits_folder))
    folder = sources.materialize(path, str(tmp_path / "work"))
    assert os.path.basename(folder) == "photos"
    assert listing(folder) == listing(digits_folder)


@pytest.mark.parametrize("build, message", [
    (lambda p: make_zip(p / "evil.zip", {"a/../../escape.png": b"x"}), "outside the target"),
    (lambda p: make_zip(p / "abs.zip", {"/etc/cron.d/x": b"x"}), "outside the target"),
    (lambda p: make_tar(p / "evil.tar.gz", {"../escape.png": b"x"}), "outside the target"),
    (lambda p: make_tar(p / "link.tar.gz", {"c/a.png": b"x"}, links=[("c/l.png", "/etc/passwd")]),
     "outside it"),
    (lambda p: make_tar(p / "up.tar.gz", {"c/a.png": b"x"}, links=[("c/l", "../../x")]),
     "outside it"),
    (lambda p: make_zip(p / "empty.zip", {}), "holds no files"),
    (lambda p: str(p / "missing.tar"), "does not exist"),
])
def test_hostile_and_empty_archives_are_refused_before_anything_is_written(tmp_path, build,
                                                                           message):
    path = build(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DataError, match=message):
        sources.materialize(path, str(work))
    assert list(work.iterdir()) == [] and not (tmp_path / "escape.png").exists()


def test_archive_limits(tmp_path, monkeypatch):
    path = make_zip(tmp_path / "big.zip", {f"c{i}/x.png": b"x" * 100 for i in range(3)})
    monkeypatch.setattr(archives, "MAX_ARCHIVE_BYTES", 250)
    with pytest.raises(DataError, match="over the limits"):
        sources.check(path)


def test_tfds_split_exports_class_folders(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    # mock_data stands in for TFDS's download; this machine has no internet, so the check that
    # the download servers can be reached is lifted here (it is tested on its own below)
    monkeypatch.setattr(sources, "require_tfds_download", lambda source: None)
    with tfds.testing.mock_data(num_examples=30):
        folder = sources.materialize("tfds:tf_flowers?split=train", str(tmp_path))
        names = tfds.builder("tf_flowers").info.features["label"].names
    assert set(os.listdir(folder)) <= set(names) and len(listing(folder)) == 30


def test_unknown_tfds_dataset_and_bad_uri_are_named():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DataError, match="TFDS has no dataset 'no_such_dataset_xyz'"):
        sources.check("tfds:no_such_dataset_xyz")
    with pytest.raises(DataError, match="unknown option 'spilt'"):
        source_uri.parse("tfds:mnist?spilt=train")


@pytest.mark.e2e
def test_every_source_kind_is_ingested_and_one_runs_through_the_local_pipeline(
        capsys, tmp_path, digits_folder, gcs):
    """Each kind through the ingest stage as its step process calls it; an archive in Cloud
    Storage (both readers at once) through the whole local pipeline, in step processes."""
    tfds = pytest.importorskip("tensorflow_datasets")
    upload_folder(gcs, "pipeline", digits_folder, "digits")
    archive = make_tar(tmp_path / "digits.tar.gz", folder_entries(digits_folder))
    gcs.bucket("pipeline").blob("exports/digits.tar.gz").upload_from_filename(archive)
    # the step processes cannot see a mock: a real prepared TFDS dataset in a data_dir, which
    # TFDS reads from its files alone (no builder code, no download)
    data_dir = prepare_tfds_digits(tfds, digits_folder, tmp_path / "tfds_data")

    def check(manifest, uri):
        assert manifest["source"] == uri and manifest["classes"] == ["digit0", "digit1",
                                                                     "digit2"]
        assert sum(sum(c.values()) for c in manifest["counts"].values()) == 72

    for name, uri in (("gcs", "gs://pipeline/digits"), ("archive", archive),
                      ("tfds", f"tfds:tlpipe_digits?split=train&data_dir={data_dir}")):
        dataset = tmp_path / name / "dataset"
        metadata = stages.ingest(uri, str(dataset), str(tmp_path / name / "report.md"),
                                 config={"data": {}})
        assert metadata["counts"] == {"train": 55, "val": 10, "test": 7}  # same split each kind
        check(json.load(open(dataset / "manifest.json")), uri)
    uri = "gs://pipeline/exports/digits.tar.gz"
    # stops at evaluate unless the tiny head is perfect
    summary, _ = run_pipeline(capsys, uri, tmp_path / "gcs-archive", *TINY[:-4],
                              "--finetune-epochs", "0", "--min-accuracy", "1.0")
    check(json.load(open(os.path.join(artifact(summary, "ingest", "dataset")["path"],
                                      "manifest.json"))), uri)


def prepare_tfds_digits(tfds, folder, data_dir):
    """Writes the digits folder as a prepared TFDS dataset 'tlpipe_digits' into data_dir."""
    import numpy as np
    from PIL import Image

    classes = sorted(os.listdir(folder))

    class TlpipeDigits(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(names=classes)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for label in classes:
                for name in sorted(os.listdir(os.path.join(folder, label))):
                    pixels = np.asarray(Image.open(os.path.join(folder, label, name))
                                        .convert("RGB"))
                    yield f"{label}/{name}", {"image": pixels, "label": label}

    TlpipeDigits(data_dir=str(data_dir)).download_and_prepare()
    return str(data_dir)


def test_bad_sources_fail_in_the_cli_before_a_run(capsys, tmp_path):
    bad = make_zip(tmp_path / "evil.zip", {"../../x.png": b"x"})
    assert main(["run", "--data", bad, "--output", str(tmp_path / "out"), *TINY]) == 2
    assert "outside the target" in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()


def test_a_tfds_dataset_that_needs_a_download_fails_fast_offline(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds_source, "TFDS_DOWNLOAD_HOST", "unreachable.invalid")
    started = time.monotonic()
    with pytest.raises(DataError, match="not prepared in .* cannot be reached .*tfds build mnist"):
        sources.check(f"tfds:mnist?data_dir={tmp_path}")
    assert time.monotonic() - started < 30
    assert [names for _, _, names in os.walk(tmp_path) if names] == []  # nothing written


def test_missing_gcs_credentials_are_named(monkeypatch, tmp_path):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-key.json"))
    with pytest.raises(DataError, match="no Google Cloud credentials .* "
                                        "GOOGLE_APPLICATION_CREDENTIALS"):
        sources.check("gs://bucket/photos")

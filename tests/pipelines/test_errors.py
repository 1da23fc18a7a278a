"""Every failure a person can act on: one line on stderr naming the problem and the fix, the
right exit code (2 bad input before any work, 1 a failed step or image, 130 interrupted), no
traceback, nothing half-written, and a predict that never loses the good results."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np
import psutil
import pytest
from PIL import Image

from pipelines import local_run
from pipelines.cli import main
from tests.helpers import ROOT, TINY, assert_one_line, start_tlpipe, write_digits

def cli(capfd, *args):
    """Runs `tlpipe ARGS` in this process; (exit code, stdout, stderr) at the file-descriptor
    level, so output of C++ code and child processes counts too."""
    code = main([str(arg) for arg in args])
    out, err = capfd.readouterr()
    return code, out, err


def truncated_jpeg(path, keep=0.5):
    """A real photo cut to `keep` of its bytes: its header reads, its pixels do not decode."""
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    content = open(path, "rb").read()
    open(path, "wb").write(content[:int(len(content) * keep)])
    return str(path)


def zip_folder(folder, archive):
    with zipfile.ZipFile(archive, "w") as handle:
        for dirpath, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(dirpath, name)
                handle.write(path, os.path.relpath(path, os.path.dirname(folder)))
    return str(archive)


# --- bad input to `tlpipe run`: exit 2 before anything is written ---------------------------

def _garbage(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).bytes(3000))
    return str(path)


def _one_class_archive(tmp_path):
    write_digits(tmp_path / "photos", classes=(7,), per_class=4)
    return zip_folder(tmp_path / "photos", tmp_path / "photos.zip")


def _unreadable_class(tmp_path):
    folder = write_digits(tmp_path / "data", per_class=16)
    os.makedirs(tmp_path / "data" / "notes")
    for i in range(3):
        (tmp_path / "data" / "notes" / f"{i}.jpg").write_text("not a picture")
    return folder


def _a_class_with_one_image(tmp_path):
    data = write_digits(tmp_path / "data", classes=(0, 1), per_class=30)
    write_digits(tmp_path / "one", classes=(9,), per_class=1)
    os.rename(tmp_path / "one" / "digit9", os.path.join(data, "digit9"))
    return data


def _with_link(tmp_path, target):
    data = write_digits(tmp_path / "data", classes=(0, 1), per_class=30)
    os.symlink(target, os.path.join(data, "digit0", "gone.png"))
    return data


def _latin1_name(tmp_path):
    data = write_digits(tmp_path / "data", classes=(0, 1), per_class=30)
    folder = os.fsencode(os.path.join(data, "digit1"))
    first = sorted(os.listdir(folder))[0]
    os.rename(os.path.join(folder, first), os.path.join(folder, b"caf\xe9.png"))
    return data


def _an_image_file(tmp_path):
    folder = write_digits(tmp_path / "data", per_class=4)
    return os.path.join(folder, "digit0", "000.png")


def _big_batch_config(tmp_path):
    """A batch that fits the 24-image folder but not its training split."""
    config = tmp_path / "batch.yaml"
    config.write_text("finetune: {batch_size: 20}\n")
    return str(config)


@pytest.mark.parametrize("case, make_data, extra, words", [
    ("garbage zip", lambda p: _garbage(p, "photos.zip"), [],
     ["archive", "photos.zip cannot be read (BadZipFile", "create it again"]),
    ("garbage tar.gz", lambda p: _garbage(p, "photos.tar.gz"), [],
     ["photos.tar.gz cannot be read (ReadError", "not a .tar.gz file"]),
    ("one-class archive", _one_class_archive, [],
     ["photos.zip/photos has 1 class folder(s) ['digit7']", "at least two"]),
    ("class of unreadable files", _unreadable_class, [],
     ["class 'notes' has no usable image", "not an image file", "(and 2 more like it)"]),
    ("an image as --data", _an_image_file, [], ["000.png is a file, not a folder"]),
    ("a dangling symlink", lambda p: _with_link(p, "/no/such/photo.png"), [],
     ["digit0/gone.png is a symbolic link to /no/such/photo.png, which does not exist",
      "remove the link or restore its target"]),
    ("a symlink loop", lambda p: _with_link(p, "gone.png"), [],
     ["digit0/gone.png is a symbolic link to gone.png", "links back to itself"]),
    ("a file name that is not UTF-8", _latin1_name, [],
     ["digit1/caf\\xe9.png has a name that is not valid UTF-8", "rename it"]),
    ("a class with one image", _a_class_with_one_image, [],
     ["class 'digit9' of", "has no image in val or test (train 1, val 0, test 0)",
      "add images to it (3 or more"]),
    ("batch larger than the training split",
     lambda p: write_digits(p / "data", classes=(0, 1), per_class=12),
     ["--config", "CONFIG"], ["finetune.batch_size=20 is larger than the",
                              "images in the training split of"]),
])
def test_bad_run_input_is_one_line_before_anything_runs(capfd, tmp_path, case, make_data, extra,
                                                         words):
    data = make_data(tmp_path)
    extra = [_big_batch_config(tmp_path) if arg == "CONFIG" else arg for arg in extra]
    code, _, err = cli(capfd, "run", "--data", data, "--output", tmp_path / "out", *TINY, *extra)
    assert code == 2, err
    assert_one_line(err, "tlpipe: error:", *words)
    assert not os.path.exists(tmp_path / "out")


def test_output_and_compile_into_folders_that_cannot_be_written(capfd, tmp_path, digits_folder):
    code, _, err = cli(capfd, "run", "--data", digits_folder, "--output", "/proc/tlpipe-out",
                       *TINY)
    assert code == 2
    assert_one_line(err, "--output /proc/tlpipe-out cannot be written to (",
                    "give a folder you can write to")
    code, _, err = cli(capfd, "compile", "-o", "/proc/pipeline.yaml")
    assert code == 2
    assert_one_line(err, "cannot write /proc/pipeline.yaml: ", "in /proc; write the pipeline "
                    "to a folder you can write to")


def test_offline_imagenet_weights_fail_in_the_preflight_before_ingest(tmp_path, digits_folder):
    """An empty Keras cache and no network (a proxy on a closed port makes sure of it): the
    download is tried before any data is read, and fails in one line."""
    output = tmp_path / "out"
    process = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--data", str(digits_folder), "--output",
         str(output), "--backbone", "mobilenet", "--alpha", "0.25", "--image-size", "32"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": ROOT, "KERAS_HOME": str(tmp_path / "keras"),
             "https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert process.returncode == 2, process.stderr[-2000:]
    assert_one_line(process.stderr, "ImageNet weights for mobilenet could not be downloaded",
                    "--weights FILE, or --weights none")
    assert not output.exists()  # nothing ingested


def test_gs_weights_without_credentials_fail_in_the_preflight(capfd, tmp_path, digits_folder,
                                                              monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-key.json"))
    code, _, err = cli(capfd, "run", "--data", digits_folder, "--output", tmp_path / "out",
                       *TINY[:6], "--weights", "gs://bucket/mobilenet.h5")
    assert code == 2
    assert_one_line(err, "model.weights: no Google Cloud credentials", "gcloud auth "
                    "application-default login")
    assert not (tmp_path / "out").exists()


def test_a_hidden_class_folder_is_named_not_dropped_silently(capfd, tmp_path):
    data = write_digits(tmp_path / "data", classes=(0, 1), per_class=12)
    os.rename(os.path.join(data, "digit1"), os.path.join(data, ".digit1"))
    write_digits(tmp_path / "data", classes=(2,), per_class=12)
    code, _, err = cli(capfd, "run", "--data", data, "--output", tmp_path / "out", *TINY,
                       "--config", _big_batch_config(tmp_path))  # fails after the note
    assert code == 2
    note, error = err.strip().splitlines()
    assert note.startswith("tlpipe: note: hidden folder(s) ['.digit1'] in ") and \
        "are not read" in note
    assert error.startswith("tlpipe: error: finetune.batch_size=20")


def test_output_that_is_a_file_and_compile_into_a_missing_folder(capfd, tmp_path, digits_folder):
    (tmp_path / "taken").write_text("")
    code, _, err = cli(capfd, "run", "--data", digits_folder, "--output", tmp_path / "taken")
    assert code == 2
    assert_one_line(err, "taken is a file; give a folder")
    code, _, err = cli(capfd, "compile", "-o", tmp_path / "no" / "such" / "pipeline.yaml")
    assert code == 2
    assert_one_line(err, "does not exist; create it or write elsewhere")
    assert not os.path.exists(tmp_path / "no")


def test_report_on_a_truncated_summary(capfd, tmp_path):
    (tmp_path / "summary.json").write_text('{"run_dir": "/x", "ste')
    code, _, err = cli(capfd, "report", tmp_path)
    assert code == 2
    assert_one_line(err, "summary.json is damaged (JSONDecodeError")


# --- a step that fails inside the pipeline: one line, exit 1, a summary of the failure -------

@pytest.mark.e2e
def test_a_failing_step_is_reported_in_one_line_with_its_log(capfd, tmp_path):
    data = write_digits(tmp_path / "data", per_class=16)
    os.makedirs(tmp_path / "data" / "broken")
    for i in range(3):  # headers read (the preflight passes), pixels do not: ingest fails
        truncated_jpeg(tmp_path / "data" / "broken" / f"{i}.jpg", keep=0.4 + 0.1 * i)
    code, _, err = cli(capfd, "run", "--data", data, "--output", tmp_path / "out", *TINY)
    assert code == 1
    assert_one_line(err, "tlpipe: step ingest failed: DataError: class 'broken' has no usable "
                         "image", "image file is truncated", "its log:")
    summary = json.load(open(tmp_path / "out" / "summary.json"))
    assert summary["status"] == "failed" and summary["finished_steps"] == ["fingerprint"]
    assert summary["failure"]["step"] == "ingest"
    log = open(summary["failure"]["log"]).read()
    assert summary["failure"]["log"] in err and "Traceback" in log and "DataError" in log
    run_dir = summary["run_dir"]
    assert json.load(open(os.path.join(run_dir, "summary.json"))) == summary
    assert not [name for name in os.listdir(tmp_path / "out") if name.startswith(".")]
    code, _, err = cli(capfd, "report", tmp_path / "out")  # says the run failed, and where
    assert code == 1
    assert_one_line(err, "failed at step ingest", "finished steps: fingerprint")


# --- a small real run: the fine-tuning batch from the config, then predict on its models -----

@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A tiny run on two local workers whose training split (13 images) is smaller than the
    default fine-tuning batch (32), with finetune.batch_size 4 from --config: it must pass.
    Batch 4 over 13 images leaves a last global batch of 1 image, which would give one worker
    none (it failed with "Incompatible shapes: [0,32,32,3] vs. [8]" three times over); that
    batch is dropped for the epoch. "images": three of the run's test images."""
    folder = tmp_path_factory.mktemp("small")
    data = folder / "data"
    write_digits(folder / "all", classes=(3, 5), per_class=11)
    for label, train in ((3, 7), (5, 6)):  # distinct images: train, then 2 val, then 2 test
        files = sorted(os.listdir(folder / "all" / f"digit{label}"))
        for split, chosen in (("train", files[:train]), ("val", files[train:train + 2]),
                              ("test", files[train + 2:train + 4])):
            os.makedirs(data / split / f"digit{label}", exist_ok=True)
            for name in chosen:
                os.rename(folder / "all" / f"digit{label}" / name,
                          data / split / f"digit{label}" / name)
    config = folder / "config.yaml"
    config.write_text("finetune: {batch_size: 4}\nexport: {tflite_variants: [fp16]}\n")
    scratch_before = {name for name in os.listdir(tempfile.gettempdir())
                      if name.startswith("tmp.")}
    assert main(["run", "--data", str(data), "--output", str(folder / "out"), *TINY,
                 "--workers", "2", "--config", str(config)]) == 0
    scratch_after = {name for name in os.listdir(tempfile.gettempdir())
                     if name.startswith("tmp.")}
    summary = json.load(open(folder / "out" / "summary.json"))
    images = sorted(str(path) for path in (data / "test").glob("*/*.png"))[:3]
    return {"folder": folder, "images": images, "summary": summary,
            "leftovers": scratch_after - scratch_before}


@pytest.mark.e2e
def test_the_configs_fine_tuning_batch_is_the_one_checked_and_two_workers_share_it(small_run):
    summary = small_run["summary"]
    assert summary["status"] == "succeeded"
    dataset = summary["steps"]["ingest"]["outputs"]["dataset"]["metadata"]
    assert dataset["counts"]["train"] == 13  # the default batch would not fit
    tuned = summary["steps"]["finetune"]["outputs"]["model"]["metadata"]
    assert tuned["workers"] == 2 and tuned["restarts"] == 0 and tuned["mode"]


@pytest.mark.e2e
def test_steps_leave_no_temporary_folders(small_run):
    assert not small_run["leftovers"]  # KFP's `mktemp -d` program folders went to the run's own
    out = small_run["folder"] / "out"
    assert not [name for name in os.listdir(out) if name.startswith(".")]
    logs = os.listdir(os.path.join(small_run["summary"]["run_dir"], "logs"))
    assert "preprocess.log" in logs and not [name for name in logs if "error" in name]


@pytest.mark.e2e
def test_every_step_records_its_peak_memory(small_run):
    logs = os.path.join(small_run["summary"]["run_dir"], "logs")
    for step in small_run["summary"]["finished_steps"]:
        with open(os.path.join(logs, f"{step}.memory.json"), encoding="utf-8") as handle:
            memory = json.load(handle)
        assert memory["process_mb"] > 20 and memory["largest_child_mb"] >= 0, step


def test_peak_memory_counts_an_ended_child_process():
    from components.core import stages

    touch_300_mb = "b = bytearray(300 << 20); b[::4096] = b'x' * len(b[::4096])"
    subprocess.run([sys.executable, "-c", touch_300_mb], check=True)
    assert stages.peak_memory()["largest_child_mb"] >= 300


def _model(run, kind):
    steps = run["summary"]["steps"]
    if kind == "keras":
        return os.path.join(steps["finetune"]["outputs"]["model"]["path"], "model.keras")
    return os.path.join(steps["quantize"]["outputs"]["tflite"]["path"], "model_fp16.tflite")


def _damaged_copy(run, tmp_path, how):
    """A copy of the run's model.keras, damaged `how`."""
    source = open(_model(run, "keras"), "rb").read()
    path = tmp_path / "model.keras"
    if how == "truncated":
        path.write_bytes(source[:len(source) // 2])
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(2).bytes(len(source)))
    elif how == "byte-flipped":
        with zipfile.ZipFile(_model(run, "keras")) as archive:
            info = archive.getinfo("model.weights.h5")
        middle = info.header_offset + len(info.filename) + 30 + info.compress_size // 2
        damaged = bytearray(source)
        damaged[middle] ^= 0xFF
        path.write_bytes(bytes(damaged))
    elif how == "bad config.json":
        with zipfile.ZipFile(_model(run, "keras")) as archive, \
                zipfile.ZipFile(path, "w") as copy:
            for item in archive.infolist():
                content = archive.read(item.filename)
                copy.writestr(item, b'{"class_name": ' if item.filename == "config.json"
                              else content)
    return str(path)


@pytest.mark.parametrize("how, words", [
    ("truncated", ["model.keras is not a .keras file (not a zip archive"]),
    ("garbage", ["model.keras is not a .keras file"]),
    ("byte-flipped", ["model.keras is damaged", "fails its checksum"]),
    ("bad config.json", ["its config.json is not valid JSON"]),
])
@pytest.mark.e2e
def test_predict_names_a_damaged_model(capfd, tmp_path, small_run, how, words):
    image = small_run["images"][0]
    code, out, err = cli(capfd, "predict", _damaged_copy(small_run, tmp_path, how), image)
    assert code == 2 and not out
    assert_one_line(err, "tlpipe: error: model ", *words)


@pytest.mark.e2e
@pytest.mark.parametrize("suffix", [".tflite", ".onnx"])
def test_predict_names_a_garbage_model_of_other_formats(capfd, tmp_path, small_run, suffix):
    path = _garbage(tmp_path, f"model{suffix}")
    code, _, err = cli(capfd, "predict", path, small_run["images"][0])
    assert code == 2
    assert_one_line(err, f"model{suffix} cannot be loaded", "export it again")


@pytest.mark.e2e
@pytest.mark.parametrize("top", ["0", "-3"])
def test_predict_top_must_be_at_least_one(capfd, small_run, top):
    code, out, err = cli(capfd, "predict", _model(small_run, "keras"),
                         small_run["images"][0], "--top", top)
    assert code == 2 and not out
    assert_one_line(err, f"--top {top}: show at least 1 class")


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["keras", "tflite"])
def test_predict_reports_every_image_and_keeps_the_good_ones(capfd, tmp_path, small_run, kind):
    good = small_run["images"][1:]
    bad = {"truncated": truncated_jpeg(tmp_path / "cut.jpg"),
           "not an image": str(tmp_path / "notes.txt"),
           "a folder": str(tmp_path),
           "missing": str(tmp_path / "missing.png")}
    (tmp_path / "notes.txt").write_text("hello")
    order = [good[0], bad["truncated"], bad["not an image"], good[1], bad["a folder"],
             bad["missing"]]
    code, out, err = cli(capfd, "predict", _model(small_run, kind), *order, "--top", "2")
    assert code == 1
    lines = out.strip().splitlines()
    assert [line.split(": ")[0] for line in lines] == good  # both good images, in order
    assert all(len(line.split(": ")[1].split(", ")) == 2 for line in lines)
    problems = err.strip().splitlines()
    assert len(problems) == 4 and "Traceback" not in err
    assert problems[0].startswith(f"tlpipe: {bad['truncated']}: cannot be read as an image")
    assert "truncated" in problems[0]
    assert problems[1].startswith(f"tlpipe: {bad['not an image']}: cannot be read as an image")
    assert problems[2] == f"tlpipe: {bad['a folder']}: is a folder, not an image file; pass " \
                          f"the image files in it"
    assert problems[3] == f"tlpipe: {bad['missing']}: does not exist"
    code, out, err = cli(capfd, "predict", _model(small_run, kind), *good)
    assert code == 0 and not err and len(out.strip().splitlines()) == 2


# --- as a user runs it: a fresh process, TensorFlow's start-up notices, Ctrl-C ---------------

def test_a_fresh_process_prints_only_the_error(tmp_path):
    """TensorFlow prints start-up notices on stderr at import whatever TF_CPP_MIN_LOG_LEVEL
    says; the CLI holds them back, so the error is the only line."""
    process = start_tlpipe("run", "--data", _garbage(tmp_path, "x.zip"), "--output", tmp_path / "o",
                      "--weights", "none")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert_one_line(err, "x.zip cannot be read")


def _processes_naming(text: str) -> list:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(text in part for part in process.info["cmdline"] or ()):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.mark.e2e
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_stop_signal_ends_every_process_and_says_where_the_partial_run_is(tmp_path, stop):
    """Ctrl-C (SIGINT) and SIGTERM (what `timeout`, CI cancels and Kubernetes send) alike: every
    step and worker ended, one line, exit 128 + the signal, summary.json says which signal,
    no scratch folder left, and the output folder takes the next run."""
    data = write_digits(tmp_path / "data")
    output = tmp_path / "interrupted"
    process = start_tlpipe("run", "--data", data, "--output", output, *TINY, "--workers", "2")
    try:
        deadline = time.monotonic() + 240
        while not any("-m components.worker" in " ".join(p.info["cmdline"] or ())
                      for p in _processes_naming(str(output))):  # the fine-tuning workers
            assert process.poll() is None and time.monotonic() < deadline, \
                process.communicate()[1][-2000:]
            time.sleep(0.5)
        process.send_signal(stop)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + stop
    how = "" if stop == signal.SIGINT else " by SIGTERM"
    assert_one_line(err, f"tlpipe: interrupted{how}; partial run in ", str(output / "runs"))
    time.sleep(1)
    assert not _processes_naming(str(output))  # steps and workers: no orphan left
    summary = json.load(open(output / "summary.json"))
    assert summary["status"] == "interrupted" and summary["signal"] == stop.name
    assert {"ingest", "preprocess", "train-head"} <= set(summary["finished_steps"])
    assert sorted(name for name in os.listdir(output) if name.startswith(".")) == []
    with local_run.output_lock(str(output)):  # the next run takes the folder: no lock held
        pass


@pytest.mark.e2e
def test_sighup_in_the_first_step_ends_the_run_cleanly(tmp_path):
    data = write_digits(tmp_path / "data")
    output = tmp_path / "hung-up"
    process = start_tlpipe("run", "--data", data, "--output", output, *TINY)
    try:
        deadline = time.monotonic() + 120
        while not any("executor_main" in " ".join(p.info["cmdline"] or ())
                      for p in _processes_naming(str(output))):  # a step has started
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        process.send_signal(signal.SIGHUP)  # the terminal closed
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signal.SIGHUP
    assert_one_line(err, "tlpipe: interrupted by SIGHUP")
    assert json.load(open(output / "summary.json"))["signal"] == "SIGHUP"
    assert not _processes_naming(str(output))
    assert sorted(name for name in os.listdir(output) if name.startswith(".")) == []


def test_a_lock_left_by_a_dead_run_is_taken_over(tmp_path):
    output = tmp_path / "o"
    output.mkdir()
    (output / ".tlpipe-run.lock").write_text('{"pid": 999999, "host": "gone"}')  # no flock held
    with local_run.output_lock(str(output)) as path:
        assert json.load(open(path))["pid"] == os.getpid()
        other = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1])"
                                "\nfrom pipelines import local_run"
                                "\nlocal_run.output_lock(sys.argv[2]).__enter__()", ROOT,
                                str(output)], capture_output=True, text=True)
        assert other.returncode == 1 and "OutputRefused" in other.stderr
        assert f"in use by another tlpipe run (pid {os.getpid()}" in other.stderr
    assert not os.path.exists(path)


def test_output_inside_the_data_folder_is_refused_before_anything_is_written(tmp_path, capfd):
    data = write_digits(tmp_path / "photos")
    code, _, err = cli(capfd, "run", "--data", data, "--output", os.path.join(data, "runs"),
                       *TINY)
    assert code == 2
    assert_one_line(err, "is inside --data", "give an --output outside the data folder")
    assert sorted(os.listdir(data)) == ["digit0", "digit1", "digit2"]


@pytest.mark.parametrize("args", [
    ["run", "--data", "/no/such/photos"],
    ["run", "--data", "DIGITS", "--output", "DIGITS/runs"],
    ["demo", "--output", "/proc/demo"],
], ids=["missing-data", "output-in-data", "unwritable-output"])
def test_arguments_are_checked_before_tensorflow_is_imported(tmp_path, digits_folder, args):
    """A mistyped path is refused in about a second, not after the 5-12 s TensorFlow import."""
    args = [arg.replace("DIGITS", str(digits_folder)) for arg in args]
    probe = ("import sys\nfrom pipelines.cli import main\ncode = main(sys.argv[1:])\n"
             "print('tensorflow' in sys.modules, code)")
    done = subprocess.run([sys.executable, "-c", probe, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": ROOT})
    assert done.stdout.split()[-2:] == ["False", "2"], done.stdout + done.stderr
    assert_one_line(done.stderr, "tlpipe: error: ")


def test_an_unreachable_cloud_storage_says_it_is_retrying_then_fails_in_one_line(
        capfd, tmp_path, monkeypatch):
    from components.core.data import gcs

    monkeypatch.setattr(gcs, "RETRY_DEADLINE_SECONDS", 2.0)  # a minute by default
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:9")  # nothing listens there
    code, _, err = cli(capfd, "run", "--data", "gs://bucket/photos/", "--output",
                       tmp_path / "out")
    assert code == 2
    note, error = err.strip().splitlines()
    assert note == ("tlpipe: warning: Cloud Storage is not answering for gs://bucket/photos/ "
                    "(ConnectionError); retrying for up to 2 s")
    assert error.startswith("tlpipe: error: cannot reach Cloud Storage for gs://bucket/photos/ "
                            "(retried 2 s") and "check the network" in error
    assert not (tmp_path / "out").exists()

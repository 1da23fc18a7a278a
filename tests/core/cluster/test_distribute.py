"""Multi-worker fine-tuning on this machine: real worker processes under
MultiWorkerMirroredStrategy (TF_CONFIG on 127.0.0.1), the launcher's failure handling, and
backups that let a killed group resume."""

import json
import os
import signal
import sys

import keras
import numpy as np
import pytest

from components.core import stages
from components.core.cluster import distribute, local as local_workers
from components.core.config import schema as configs
from components.core.data import cache
from components.core.train import backup
from tests.helpers import MOBILENET_WEIGHTS, require_shared, upload_folder, write_digits

PYTHON = sys.executable

# Pretrained weights (BatchNorm frozen, the transfer-learning case) at a tiny size; head training
# cut short so fine-tuning has something to improve.
CONFIG = configs.PipelineConfig.from_dict({
    "model": {"backbone": "mobilenet", "alpha": 0.25, "image_size": 32, "dropout": 0.0},
    "augment": {"views": 0},
    "head": {"max_steps": 10},
    "finetune": {"epochs": 3, "batch_size": 16, "learning_rate": 1e-3, "unfreeze_layers": 30,
                 "patience": 3}}).to_dict()


# ---------------------------------------------------------------- TF_CONFIG and the launcher

def test_tf_config_roles():
    assert distribute.task("") == ("worker", 0) and distribute.is_chief("")
    assert distribute.worker_count("") == 1
    configs_ = local_workers.local_tf_configs([1234, 1235, 1236])
    assert [distribute.task(c) for c in configs_] == [("worker", 0), ("worker", 1),
                                                      ("worker", 2)]
    assert [distribute.is_chief(c) for c in configs_] == [True, False, False]
    assert json.loads(configs_[2])["cluster"]["worker"] == [
        "127.0.0.1:1234", "127.0.0.1:1235", "127.0.0.1:1236"]
    with_chief = json.dumps({"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
                             "task": {"type": "worker", "index": 0}})
    assert not distribute.is_chief(with_chief) and distribute.worker_count(with_chief) == 3
    ports = local_workers.free_ports(4)
    assert len(set(ports)) == 4


def test_one_process_trains_without_collective_ops_unless_it_has_several_gpus():
    one_worker = local_workers.local_tf_configs([1234])[0]
    assert distribute.strategy_kind("", gpus=0) == "single"
    assert distribute.strategy_kind("", gpus=1) == "single"
    assert distribute.strategy_kind("", gpus=4) == "mirrored"
    assert distribute.strategy_kind(one_worker, gpus=0) == "multi_worker"
    strategy = distribute.make_strategy(tf_config="")
    assert type(strategy).__name__ == "_DefaultDistributionStrategy"
    assert strategy.num_replicas_in_sync == 1


def test_a_one_worker_step_drops_an_inherited_tf_config(monkeypatch):
    """A TF_CONFIG from the shell or pod (here a TrainJob worker's, as a test once leaked it)
    would make the one-worker step wait for a peer forever; the step trains alone."""
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["j-node-0-0.j:2222",
                                                                      "j-node-0-1.j:2222"]},
                                                "task": {"type": "worker", "index": 1}}))
    assert distribute.worker_count() == 2
    assert distribute.train_alone() and "TF_CONFIG" not in os.environ
    assert distribute.worker_count() == 1 and distribute.strategy_kind(None, 0) == "single"
    assert not distribute.train_alone()


def script(body: str) -> list[str]:
    """A worker command running `body` with TF_CONFIG's task index as `index`."""
    return [PYTHON, "-c", "import json, os, signal, sys, time\n"
            "index = json.loads(os.environ['TF_CONFIG'])['task']['index']\n" + body]


class Lines:
    """A stream the launcher writes worker lines to; calls `watch(line)` on each."""

    def __init__(self, watch=None):
        self.lines, self.watch = [], watch

    def write(self, text):
        self.lines.append(text)
        if self.watch:
            self.watch(text)

    def flush(self):
        pass


def test_launcher_prefixes_lines_and_returns_when_all_succeed():
    out = Lines()
    local_workers.launch_local(script(f"print('{distribute.READY} up', index)"), 2, output=out)
    assert sorted(out.lines) == [f"[worker 0] {distribute.READY} up 0\n",
                                 f"[worker 1] {distribute.READY} up 1\n"]


def test_a_failed_worker_stops_the_group_with_its_last_lines(tmp_path):
    # worker 1 ignores SIGTERM like TensorFlow does and would run for 10 minutes; worker 0
    # fails once worker 1 has written its pid, so the test always knows whom to look for
    pid_file = str(tmp_path / "pid")
    body = (f"print('{distribute.READY}', flush=True)\n"
            "if index == 0:\n"
            f"    while not os.path.exists({pid_file!r}): time.sleep(0.05)\n"
            "    print('bad input file'); sys.exit(3)\n"
            "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            f"open({pid_file!r} + '.partial', 'w').write(str(os.getpid()))\n"
            f"os.replace({pid_file!r} + '.partial', {pid_file!r})\n"
            "time.sleep(600)")
    with pytest.raises(distribute.WorkerFailure,
                       match=r"^worker 0 exited with status 3: bad input file$") as failure:
        local_workers.launch_local(script(body), 2, output=Lines())
    assert not failure.value.retryable  # an error, not a lost worker: no restart
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)  # worker 1 killed and reaped


def test_a_peer_that_never_joins_fails_at_the_start_timeout():
    body = (f"if index == 0:\n    print('{distribute.READY}', flush=True)\n"
            "time.sleep(600)")
    with pytest.raises(distribute.WorkerFailure, match=r"worker\(s\) \[1\] did not join .*2 s"):
        local_workers.launch_local(script(body), 2, start_timeout_seconds=2, output=Lines())


def test_the_group_timeout_kills_a_hung_group():
    body = f"print('{distribute.READY}', flush=True)\ntime.sleep(600)"
    with pytest.raises(distribute.WorkerFailure, match="did not finish within 2 s"):
        local_workers.launch_local(script(body), 2, timeout_seconds=2, output=Lines())


def test_a_killed_worker_is_reported_by_signal_and_the_group_restarts(tmp_path):
    marker = tmp_path / "attempts"
    body = (f"print('{distribute.READY}', flush=True)\n"
            f"path = {str(marker)!r}\n"
            "attempt = len(open(path).read()) if os.path.exists(path) else 0\n"
            "if index == 1:\n    open(path, 'a').write('x')\n"
            "    if attempt == 0:\n        os.kill(os.getpid(), signal.SIGKILL)\n")
    messages = []
    restarts = local_workers.launch_with_restarts(
        lambda: local_workers.launch_local(script(body), 2, output=Lines()), 2, messages.append)
    assert restarts == 1 and "killed by SIGKILL" in messages[0]
    starts = []

    def failing():  # a deterministic error: started once, never again
        starts.append(1)
        local_workers.launch_local(script("raise ValueError('Incompatible shapes: [0,32,32,3] "
                                          "vs. [8]')"), 1, output=Lines())
    with pytest.raises(distribute.WorkerFailure, match=r"^worker 0 exited with status 1: "
                       r"ValueError: Incompatible shapes: \[0,32,32,3\] vs. \[8\]$"):
        local_workers.launch_with_restarts(failing, 3, messages.append)
    assert len(starts) == 1 and len(messages) == 1


def test_the_error_line_is_the_end_of_the_traceback():
    lines = ["Traceback (most recent call last):", '  File "x.py", line 1, in <module>',
             "tensorflow.python.framework.errors_impl.InvalidArgumentError: Incompatible "
             "shapes", "", "2026 INFO shutting down"]
    assert local_workers.error_line(lines).startswith("tensorflow.python.framework."
                                                      "errors_impl.InvalidArgumentError: ")
    assert local_workers.error_line(["starting", "bad input file", " "]) == "bad input file"
    assert local_workers.error_line([]) == "(no output)"


# ---------------------------------------------------------------- backups

def test_backups_keep_the_last_two_epochs_and_are_removed(tmp_path):
    directory = backup.worker_dir(str(tmp_path / "backups"), "worker", 1)
    assert directory.endswith("backups/worker-1") and backup.epochs(directory) == []
    for epoch in (1, 2, 3):
        backup.save(directory, epoch, {"epoch": epoch}, {"model/0": np.arange(float(epoch))})
    assert backup.epochs(directory) == [2, 3]
    assert sorted(os.listdir(directory)) == ["epoch-00002.npz", "epoch-00003.npz"]  # no partial
    state, arrays = backup.load(directory, 2)
    assert state == {"epoch": 2} and arrays["model/0"].tolist() == [0, 1]
    backup.remove(directory)
    assert not os.path.exists(directory)


def test_backups_on_cloud_storage(gcs):
    gcs.create_bucket("backups")
    directory = backup.worker_dir("gs://backups/run-1", "worker", 0)
    for epoch in (1, 2, 3):
        backup.save(directory, epoch, {"epoch": epoch}, {"optimizer/0": np.ones(epoch)})
    assert backup.epochs(directory) == [2, 3]
    state, arrays = backup.load(directory, 3)
    assert state == {"epoch": 3} and arrays["optimizer/0"].tolist() == [1, 1, 1]
    backup.remove(directory)
    assert backup.epochs(directory) == []


# ---------------------------------------------------------------- real workers

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """ingest -> preprocess (MobileNet 0.25 ImageNet weights at 32 px) -> train-head, once."""
    root = tmp_path_factory.mktemp("prepared")
    config = {**CONFIG, "model": {**CONFIG["model"],
                                  "weights": require_shared(MOBILENET_WEIGHTS)}}
    write_digits(root / "data", per_class=24, size=16)
    stages.ingest(str(root / "data"), str(root / "dataset"), str(root / "report.md"),
                  config=config)
    with pytest.MonkeyPatch.context() as patch:  # the ~50 training images in 2 files
        patch.setattr(cache, "IMAGES_PER_FILE", 16)
        stages.preprocess(str(root / "dataset"), str(root / "images"), str(root / "features"),
                          str(root / "backbone"), config=config)
    stages.train_head(str(root / "features"), str(root / "head"), config=config)
    return root, config


def run_workers(prepared, output_dir, workers: int, backup_root: str = "", watch=None,
                on_start=None, restarts: int = 0):
    """Runs `python -m components.worker` as `workers` local processes; returns
    (the facts JSON each worker printed last, by worker index, every output line)."""
    root, config = prepared
    command = distribute.worker_command(str(root / "images"), str(root / "backbone"),
                                        str(root / "head"), str(output_dir / "model"),
                                        json.dumps(config), backup_root)
    out = Lines(watch)
    os.makedirs(output_dir / "tmp", exist_ok=True)
    env = {"TMPDIR": str(output_dir / "tmp")}  # where non-chief workers write and clean up
    local_workers.launch_with_restarts(lambda: local_workers.launch_local(
        command, workers, env=env, output=out, on_start=on_start, timeout_seconds=480),
        restarts)
    facts = {}
    for line in out.lines:
        prefix, _, text = line.partition("] ")
        if text.startswith("{"):
            facts[int(prefix.split()[-1])] = json.loads(text)
    return facts, out.lines


@pytest.fixture(scope="module")
def two_workers(prepared, tmp_path_factory):
    output = tmp_path_factory.mktemp("two-workers")
    return output, *run_workers(prepared, output, 2, str(output / "backups"))


def model_weights(output_dir):
    model = keras.models.load_model(output_dir / "model" / "model.keras")
    return [variable.numpy() for variable in model.trainable_variables]


def history(output_dir, part: str = "history"):
    with open(output_dir / "model" / "finetune.json") as handle:
        return json.load(handle)[part]


@pytest.mark.slow  # more than 10 s: whole trainings or several processes
def test_two_workers_stay_in_sync_match_one_worker_and_only_the_chief_writes(
        prepared, two_workers, tmp_path):
    output, facts, _ = two_workers
    assert set(facts) == {0, 1} and facts[0]["workers"] == 2
    # every trainable weight identical on both workers at the end
    assert facts[0]["finetuned_weights_sha256"] == facts[1]["finetuned_weights_sha256"]
    assert sorted(os.listdir(output)) == ["backups", "model", "tmp"]
    assert os.listdir(output / "tmp") == []  # worker 1's temporary output was removed
    assert os.listdir(output / "backups") == []  # finished: nothing to resume
    assert sorted(os.listdir(output / "model")) == ["finetune.json", "labels.txt", "model.keras",
                                                    "tensorboard"]

    single_output = tmp_path / "one-worker"
    single, _ = run_workers(prepared, single_output, 1)
    assert single[0]["workers"] == 1
    assert facts[0]["chosen"] == single[0]["chosen"] == "finetuned"  # the weights compared moved
    # each worker read its own one of the 2 training files; the one worker read both
    assert history(output, "input")["read_by_each_worker"] == "its own files"
    assert history(single_output, "input") == {"train_files": 2, "streams": 2, "steps_per_epoch": 3,
                                               "read_by_each_worker": "its own files"}
    # Same global batches, same initial weights, BatchNorm frozen: the runs differ only in the
    # order float32 sums are taken (two halves all-reduced vs one batch of 16). Measured after
    # 3 epochs: history figures 1.3e-6 apart (relative), weights 4.8e-7 (absolute). The bounds
    # (1e-4, 1e-5) leave 20-100x for other CPUs and stay 100x below one Adam step (lr 1e-3).
    two, one = history(output), history(single_output)
    for name in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(two[name], one[name], rtol=1e-4, err_msg=name)
    for a, b in zip(model_weights(output), model_weights(single_output)):
        np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.slow  # more than 10 s: whole trainings or several processes
@pytest.mark.parametrize("uneven", [False, True], ids=["both-saved", "one-epoch-apart"])
def test_a_worker_killed_mid_training_resumes_from_the_backups(prepared, two_workers, tmp_path,
                                                               uneven):
    """Worker 1 is SIGKILLed once both workers saved epoch 2; the launcher restarts the group.
    one-epoch-apart: worker 0's epoch-2 backup is deleted first, as when a group dies between
    two workers' saves: all must then resume from epoch 1, which both have."""
    processes, saved, killed = [], set(), []

    def kill_after_epoch_2(line):
        if "backup of epoch 2 saved" in line:
            saved.add(line.split("]")[0])
        if len(saved) == 2 and not killed:
            killed.append(True)
            if uneven:
                os.remove(tmp_path / "backups" / "worker-0" / backup.file_name(2))
            os.kill(processes[1].pid, signal.SIGKILL)

    facts, lines = run_workers(prepared, tmp_path, 2, str(tmp_path / "backups"),
                               watch=kill_after_epoch_2, on_start=processes.extend,
                               restarts=1)
    assert killed, "the workers never reported their epoch-2 backups"
    resumed = 1 if uneven else 2
    assert facts[0]["resumed_from_epoch"] == facts[1]["resumed_from_epoch"] == resumed
    assert any(f"resuming after epoch {resumed}" in line for line in lines)
    second_start = [i for i, line in enumerate(lines)
                    if line.startswith("[worker 0]") and distribute.READY in line][1]
    epochs_after_restart = [line for line in lines[second_start:]
                            if line.startswith("[worker 0]") and "finetune epoch" in line]
    assert len(epochs_after_restart) == 3 - resumed  # not from zero
    reference_output, reference, _ = two_workers
    # bit-identical to the uninterrupted run
    assert facts[0]["finetuned_weights_sha256"] == reference[0]["finetuned_weights_sha256"]
    for a, b in zip(model_weights(tmp_path), model_weights(reference_output)):
        np.testing.assert_array_equal(a, b)
    assert os.listdir(tmp_path / "backups") == []


@pytest.mark.slow  # more than 10 s: whole trainings or several processes
def test_a_worker_pod_reads_its_inputs_from_cloud_storage_and_uploads_the_model(
        prepared, gcs, tmp_path):
    """What a TFJob worker does: gs:// artifact URIs in, the chief's model out to gs://."""
    root, config = prepared
    for name in ("images", "backbone", "head"):
        upload_folder(gcs, "artifacts", root / name, f"run-1/{name}")
    command = distribute.worker_command(
        "gs://artifacts/run-1/images", "gs://artifacts/run-1/backbone",
        "gs://artifacts/run-1/head", "gs://artifacts/run-1/model", json.dumps(config),
        "gs://artifacts/run-1/backups")
    out = Lines()
    local_workers.launch_local(command, 1, output=out, env={"TMPDIR": str(tmp_path)},
                               timeout_seconds=300)
    uploaded = sorted(blob.name for blob in gcs.list_blobs("artifacts", prefix="run-1/model/"))
    assert "run-1/model/model.keras" in uploaded and "run-1/model/finetune.json" in uploaded
    assert not list(gcs.list_blobs("artifacts", prefix="run-1/backups/"))  # removed at the end
    assert any("backup of epoch 3 saved in gs://artifacts/run-1/backups/worker-0" in line
               for line in out.lines)  # (and removed: checked above)
    assert os.listdir(tmp_path) == []  # downloaded inputs removed

"""The model registry: immutable versions, a production alias moved by compare-and-swap, the
event log; races between promotions and a killed promotion, on a local folder and on
fake-gcs-server (real generation preconditions)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from components.core.registry import champion, models
from components.core.registry.store import RegistryError, open_store
from tests.helpers import ROOT


def version_folder(tmp_path, name="files"):
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / "model.keras").write_bytes(os.urandom(2048))
    (folder / "labels.txt").write_text("a\nb\n")
    return str(folder)


@pytest.fixture(params=["local", "gcs"])
def registry_root(request, tmp_path):
    """A fresh registry root: a local folder, or a prefix of a fresh fake-gcs-server bucket."""
    if request.param == "local":
        return str(tmp_path / "registry")
    client = request.getfixturevalue("gcs")
    bucket = f"registry-{os.urandom(4).hex()}"
    client.create_bucket(bucket)
    return f"gs://{bucket}/models"


def test_versions_aliases_events_and_rollback(registry_root, tmp_path):
    store = open_store(registry_root)
    folder = version_folder(tmp_path)
    assert [models.register(store, "flowers", folder, {"test_accuracy": 0.5 + n / 10})
            for n in range(3)] == [1, 2, 3]
    assert [v["version"] for v in models.versions(store, "flowers")] == [1, 2, 3]
    assert models.models(store) == ["flowers"]
    with pytest.raises(RegistryError, match="flowers has no version 9; its versions are 1, 2, 3"):
        models.version(store, "flowers", 9)
    with pytest.raises(RegistryError, match="no production version yet"):
        models.rollback(store, "flowers", "me")

    first = models.promote_candidate(store, "flowers", 1, lambda current: (True, "first"), "me")
    assert first == {"promoted": True, "reason": "first", "production": 1}
    with pytest.raises(RegistryError, match="first production version: there is no earlier"):
        models.rollback(store, "flowers", "me")
    kept = models.promote_candidate(
        store, "flowers", 2, lambda current: (False, f"worse than {current}"), "me")
    assert kept == {"promoted": False, "reason": "worse than 1", "production": 1}
    models.promote_by_hand(store, "flowers", 3, "me")
    assert models.alias(store, "flowers")[0]["history"] == [1]
    assert models.rollback(store, "flowers", "me")["version"] == 1
    assert models.alias(store, "flowers")[0]["history"] == []
    actions = [(e["version"], e["action"]) for e in models.events(store, "flowers")]
    assert actions == [(1, "promoted"), (2, "candidate"), (3, "promoted"), (1, "rolled back")]
    with pytest.raises(RegistryError, match="already in production"):
        models.promote_by_hand(store, "flowers", 1, "me")


def test_a_stale_alias_move_is_refused_and_nothing_is_overwritten(registry_root):
    store = open_store(registry_root)
    read = models.alias(store, "m")
    models.move_alias(store, "m", 1, read, "first", "run-a")
    with pytest.raises(models.AliasMoved, match="production moved to version 1"):
        models.move_alias(store, "m", 2, read, "also first", "run-b")  # the same old read
    assert models.alias(store, "m")[0]["version"] == 1


def test_a_version_is_written_once(tmp_path):
    store = open_store(str(tmp_path / "registry"))
    models.register(store, "m", version_folder(tmp_path), {})
    with pytest.raises(RegistryError, match="cannot reach the model registry"):
        store.put_tree(version_folder(tmp_path), "m/versions/1")  # never over a version
    assert not store.create("m/versions/1/version.json", b"{}")


RACER = """
import json, os, sys, time
from components.core.registry import models
from components.core.registry.store import open_store

root, me, barrier, folder = sys.argv[1:5]
store = open_store(root)

def wait_for_both(stage):
    open(os.path.join(barrier, f"{stage}-{me}"), "w").close()
    while len([n for n in os.listdir(barrier) if n.startswith(stage)]) < 2:
        time.sleep(0.01)

wait_for_both("register")
number = models.register(store, "m", folder, {"by": me})
calls = []

def decide(current):  # promote over no production only; both read it before either moves it
    calls.append(current)
    if len(calls) == 1:
        wait_for_both("decide")
    return current is None, "first" if current is None else f"{current} got there first"

print(json.dumps({"number": number, **models.promote_candidate(store, "m", number, decide, me),
                  "calls": calls}))
"""


def test_two_racing_promotions_one_wins_and_both_versions_stay(registry_root, tmp_path):
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    racers = [subprocess.Popen([sys.executable, "-c", RACER, registry_root, name, str(barrier),
                                version_folder(tmp_path, name)], cwd=ROOT,
                               stdout=subprocess.PIPE, text=True, env={**os.environ,
                                                                       "PYTHONPATH": ROOT})
              for name in ("run-a", "run-b")]
    results = [json.loads(racer.communicate(timeout=120)[0]) for racer in racers]
    assert sorted(result["number"] for result in results) == [1, 2]  # no number taken twice
    winners = [result for result in results if result["promoted"]]
    assert len(winners) == 1
    loser = next(result for result in results if not result["promoted"])
    assert loser["calls"] == [None, winners[0]["number"]]  # it re-read and decided again
    store = open_store(registry_root)
    assert models.alias(store, "m")[0] == {**models.alias(store, "m")[0],
                                            "version": winners[0]["number"], "history": []}
    assert [v["by"] for v in models.versions(store, "m")] == [
        r["by"] for r in sorted(({"by": ("run-a", "run-b")[i], **results[i]}
                                 for i in range(2)), key=lambda r: r["number"])]
    assert sorted(e["action"] for e in models.events(store, "m")) == ["candidate", "promoted"]


KILLED = """
import os, sys, time
from components.core.io import storage
from components.core.registry import models
from components.core.registry.store import open_store

root, folder, started = sys.argv[1:4]
real_copy, real_upload = __import__("shutil").copytree, storage.upload_tree

def stall(*args, **kwargs):  # part of the files written, then killed here
    open(started, "w").close()
    time.sleep(300)

storage.upload_tree = stall
__import__("shutil").copytree = stall
models.register(open_store(root), "m", folder, {"by": "killed"})
"""


def test_a_killed_promotion_leaves_the_registry_as_it_was(registry_root, tmp_path):
    store = open_store(registry_root)
    models.register(store, "m", version_folder(tmp_path), {"by": "first"})
    models.promote_candidate(store, "m", 1, lambda current: (True, "first"), "first")
    before = (models.versions(store, "m"), models.alias(store, "m")[0])
    started = tmp_path / "started"
    killed = subprocess.Popen([sys.executable, "-c", KILLED, registry_root,
                               version_folder(tmp_path, "second"), str(started)], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": ROOT})
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.05)
    assert started.exists()
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (models.versions(store, "m"), models.alias(store, "m")[0]) == before
    # the number it claimed stays taken; the next version gets a fresh one
    assert models.register(store, "m", version_folder(tmp_path, "third"), {"by": "third"}) == 3
    assert [v["version"] for v in models.versions(store, "m")] == [1, 3]


def test_decisions_follow_production_as_it_is_when_promoting():
    registry = {"root": "unused", "model": "m", "promote": "auto"}
    evaluation = {"shippable": True, "blessed": False, "blessing_reason": "0.80 vs 0.90",
                  "champion": {"production_version": 2, "comparable": True,
                               "text": "is not blessed against production version 2: 0.80"}}
    assert champion.decide(evaluation, registry, 2, None) == (
        False, "this model is not blessed against production version 2: 0.80")
    assert champion.decide(evaluation, registry, None, None) == (
        True, "first production version of m")
    promote, reason = champion.decide(evaluation, registry, 3, lambda current: (True, "ok"))
    assert promote and "against production version 3 (which replaced 2 during this run)" in reason
    manual = champion.decide({**evaluation, "blessed": True}, {**registry, "promote": "manual"},
                             2, None)
    assert manual[0] is False and "promote: manual" in manual[1]
    assert champion.decide({**evaluation, "shippable": False}, registry, None, None)[0] is False
    changed = {**evaluation, "blessed": True, "champion": {
        "production_version": 2, "comparable": False, "text": "classifies other classes"}}
    assert champion.decide(changed, registry, 2, None) == (
        False, "this model classifies other classes")


def test_the_verdict_names_the_comparison_with_production():
    registry = {"root": "unused", "model": "m", "promote": "manual"}
    checks = [{"rule": "min_accuracy", "passed": True, "detail": "0.90 >= 0.50"},
              {"rule": "baseline_margin", "passed": False, "detail": "0.90 vs baseline 0.95"},
              {"rule": "max_recall_drop", "passed": True, "detail": "drop 2 points"}]
    judged = {"blessed": False, "shippable": True, "checks": checks,
              "blessing_reason": "0.90 vs baseline 0.95"}
    production = {"version": 4, "classes": ["a", "b"]}
    lost = champion.verdict(registry, production, ["a", "b"], judged)
    assert lost["text"] == "is not blessed against production version 4: 0.90 vs baseline 0.95"
    assert lost["expected"] == "candidate" and lost["comparable"]
    won = champion.verdict(registry, production, ["a", "b"], {
        **judged, "blessed": True, "checks": [{**c, "passed": True} for c in checks]})
    assert won["text"].endswith("0.90 vs baseline 0.95; drop 2 points")
    assert won["expected"].startswith("candidate, awaiting approval (promote: manual")
    other = champion.verdict(registry, production, ["a", "c"], judged)
    assert not other["comparable"] and "not comparable" in other["text"]
    first = champion.verdict({**registry, "promote": "auto"}, None, ["a", "b"],
                             {**judged, "blessed": True})
    assert first["expected"] == "promoted" and "first version of m" in first["text"]


@pytest.mark.parametrize("source, name", [("/data/flowers/", "flowers"),
                                          ("gs://b/x/trash net.tar.gz", "trash-net"),
                                          ("tfds:tf_flowers?split=train", "tf_flowers"),
                                          ("/", "model")])
def test_model_names_come_from_the_source(source, name):
    assert models.default_model_name(source) == name


def cli(capsys, *args):
    from pipelines.cli import main

    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_models_commands_name_what_is_wrong_in_one_line(capsys, tmp_path):
    root = tmp_path / "registry"
    code, _, err = cli(capsys, "models", "list", "--registry", root)
    assert code == 2 and err.strip() == (f"tlpipe: error: {root} holds no model yet: a run that "
                                         f"exports a model registers it (or pass another "
                                         f"--registry)")
    store = open_store(str(root))
    models.register(store, "ants", version_folder(tmp_path), {"test_accuracy": 0.9, "data": {"fingerprint": "f1"}})
    code, _, err = cli(capsys, "models", "rollback", "--registry", root)
    assert code == 2 and "ants has no production version yet: nothing to roll back" in err
    code, _, err = cli(capsys, "models", "show", "4", "--registry", root)
    assert code == 2 and "ants has no version 4; its versions are 1" in err
    code, _, err = cli(capsys, "models", "promote", "1", "--registry", root, "--model", "bees")
    assert code == 2 and "has no model 'bees'; its models are ants" in err
    models.register(store, "bees", version_folder(tmp_path), {"test_accuracy": 0.8, "data": {"fingerprint": "f2"}})
    code, _, err = cli(capsys, "models", "list", "--registry", root)
    assert code == 2 and "holds models ants, bees; name one with --model" in err
    code, out, _ = cli(capsys, "models", "promote", "1", "--registry", root, "--model", "bees")
    assert code == 0 and "bees: production is version 1" in out
    code, out, _ = cli(capsys, "models", "list", "--registry", root, "--model", "bees")
    assert code == 0 and "production is version 1" in out and "promoted by hand" in out


def test_a_registry_bucket_that_does_not_exist_is_one_line(capsys, gcs):
    code, _, err = cli(capsys, "models", "list", "--registry", "gs://no-such-bucket/models")
    assert code == 2 and "the model registry's bucket gs://no-such-bucket does not exist" in err
    assert len(err.strip().splitlines()) == 1


def test_a_run_refuses_a_registry_it_cannot_write_before_any_work(capsys, tmp_path,
                                                                   digits_folder):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    code, out, err = cli(capsys, "run", "--data", digits_folder, "--output", tmp_path / "out",
                         "--registry", blocked / "registry")
    assert code == 2 and f"--registry {blocked / 'registry'}: {blocked} is a file" in err
    assert not (tmp_path / "out").exists()

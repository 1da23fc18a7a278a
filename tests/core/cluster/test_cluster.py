"""submit, runs, schedule, schedules and unschedule through the real kfp.Client against a local
fake of the KFP v2beta1 REST API (tests/fake_kfp.py) that records every request. No real
cluster is involved."""

import socket

import pytest

from pipelines import cluster
from pipelines.cli import main
from tests.helpers import GOLDEN_SETTINGS
from tests.fake_kfp import FakeKfp


@pytest.fixture
def kfp_api(monkeypatch):
    monkeypatch.delenv(cluster.TOKEN_ENV, raising=False)
    monkeypatch.delenv(cluster.HOST_ENV, raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", "/nonexistent/token")
    with FakeKfp() as fake:
        yield fake


def cli(capsys, *args):
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_submit_uploads_the_compiled_pipeline_with_settings_and_parameters(capsys, kfp_api,
                                                                           monkeypatch):
    monkeypatch.setenv(cluster.TOKEN_ENV, "token-123")
    code, out, err = cli(capsys, "submit", "--host", kfp_api.url, "--data", "/mnt/images",
                         "--experiment", "ants", "--run-name", "first", "--settings",
                         GOLDEN_SETTINGS, "--finetune-epochs", "3", "--backbone",
                         "efficientnet_b0")
    assert code == 0, err
    assert f"run run-1: {kfp_api.url}/#/runs/details/run-1" in out

    [experiment] = kfp_api.received("POST", "/experiments")
    assert experiment["body"]["display_name"] == "ants"
    [run] = kfp_api.received("POST", "/runs")
    body = run["body"]
    assert body["display_name"] == "first"
    assert body["experiment_id"] == kfp_api.experiments["exp-1"]["experiment_id"]
    spec = body["pipeline_spec"]
    assert spec["pipeline_spec"]["pipelineInfo"]["name"] == "tlpipe-transfer-learning"
    executors = spec["pipeline_spec"]["deploymentSpec"]["executors"]
    assert executors["exec-finetune"]["container"]["image"] == \
        "registry.example.com/ml/tlpipe-train:1.2.3"
    assert "exec-finetune" in spec["platform_spec"]["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    parameters = body["runtime_config"]["parameters"]
    assert parameters["source"] == "/mnt/images"
    assert parameters["finetune"]["epochs"] == 3
    assert parameters["model"]["backbone"] == "efficientnet_b0"
    assert all(request["authorization"] == "Bearer token-123" for request in kfp_api.requests)


def test_runs_lists_the_newest_first(capsys, kfp_api):
    for name in ("one", "two"):
        assert cli(capsys, "submit", "--host", kfp_api.url, "--data", "/d",
                   "--run-name", name)[0] == 0
    code, out, _ = cli(capsys, "runs", "--host", kfp_api.url, "--limit", "5")
    assert code == 0
    lines = out.strip().splitlines()
    assert [line.split()[0] for line in lines] == ["run-2", "run-1"]
    assert all("PENDING" in line for line in lines) and lines[0].endswith("two")
    [listing] = kfp_api.received("GET", "/runs")
    assert listing["query"]["page_size"] == ["5"]
    assert listing["query"]["sort_by"] == ["created_at desc"]


def test_schedule_creates_a_cron_recurring_run_without_catchup(capsys, kfp_api):
    code, out, err = cli(capsys, "schedule", "--host", kfp_api.url, "--data", "/mnt/images",
                         "--cron", "0 0 3 * * MON", "--name", "weekly", "--experiment",
                         "retraining", "--max-concurrency", "2", "--min-accuracy", "0.9")
    assert code == 0, err
    assert "recurring run job-1 (0 0 3 * * MON)" in out
    [created] = kfp_api.received("POST", "/recurringruns")
    body = created["body"]
    assert body["display_name"] == "weekly"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * MON"
    assert int(body["max_concurrency"]) == 2
    assert body["no_catchup"] is True and body["mode"] == "ENABLE"
    assert body["experiment_id"] == "exp-1"
    assert kfp_api.experiments["exp-1"]["display_name"] == "retraining"
    assert body["runtime_config"]["parameters"]["evaluate"]["min_accuracy"] == 0.9
    assert body["pipeline_spec"]["pipelineInfo"]["name"] == "tlpipe-transfer-learning"
    # no registry in the settings and no gs:// pipeline root: no registry, said plainly
    assert body["runtime_config"]["parameters"]["registry"] == {}

    assert cli(capsys, "schedule", "--host", kfp_api.url, "--data", "/d", "--cron",
               "@weekly", "--catchup")[0] == 0
    assert kfp_api.received("POST", "/recurringruns")[1]["body"]["no_catchup"] is False


def test_a_schedule_carries_the_model_registry_so_each_run_meets_production_then(
        capsys, kfp_api, tmp_path):
    settings = tmp_path / "settings.yaml"
    settings.write_text("pipeline_root: gs://team/tlpipe\nmodel_registry: {promote: manual}\n")
    assert cli(capsys, "schedule", "--host", kfp_api.url, "--data", "gs://team/data/flowers",
               "--cron", "@weekly", "--settings", str(settings))[0] == 0
    assert cli(capsys, "schedule", "--host", kfp_api.url, "--data", "gs://team/data/flowers",
               "--cron", "@weekly", "--registry", "gs://models/reg", "--model-name",
               "flowers-v2")[0] == 0
    first, second = (call["body"]["runtime_config"]["parameters"]["registry"]
                     for call in kfp_api.received("POST", "/recurringruns"))
    assert first == {"root": "gs://team/tlpipe/registry", "model": "flowers",
                     "promote": "manual"}
    assert second == {"root": "gs://models/reg", "model": "flowers-v2", "promote": "auto"}
    code, _, err = cli(capsys, "schedule", "--host", kfp_api.url, "--data", "/d", "--cron",
                       "@weekly", "--registry", "relative/models")
    assert code == 2 and "gs://BUCKET/PATH prefix or an absolute folder" in err


def test_submit_and_schedule_compile_the_configs_search_into_the_pipeline(capsys, kfp_api,
                                                                           tmp_path):
    config = tmp_path / "search.yaml"
    config.write_text("finetune: {search: {learning_rates: [1e-4, 3e-4]}}\n")
    for command in (["submit"], ["schedule", "--cron", "@weekly"]):
        code, _, err = cli(capsys, *command, "--host", kfp_api.url, "--data", "/mnt/images",
                           "--config", str(config))
        assert code == 0, err
    runs = kfp_api.received("POST", "/runs") + kfp_api.received("POST", "/recurringruns")
    for body in (request["body"] for request in runs):
        spec = body["pipeline_spec"]
        spec = spec.get("pipeline_spec", spec)  # a run nests it beside the platform spec
        tasks = spec["root"]["dag"]["tasks"]
        loop = next(task for name, task in tasks.items() if name.startswith("for-loop"))
        assert loop["parameterIterator"]["items"]["raw"] == (
            '[{"learning_rate": 0.0001}, {"learning_rate": 0.0003}]')
        assert "iteratorPolicy" not in loop  # every trial at once on a cluster
        assert "pick-trial" in tasks["evaluate"]["dependentTasks"]
        search = body["runtime_config"]["parameters"]["finetune"]["search"]
        assert search["learning_rates"] == [1e-4, 3e-4]


def test_schedules_lists_and_unschedule_disables(capsys, kfp_api):
    assert cli(capsys, "schedule", "--host", kfp_api.url, "--data", "/d", "--cron",
               "0 30 2 * * *")[0] == 0
    code, out, _ = cli(capsys, "schedules", "--host", kfp_api.url)
    assert code == 0 and out.split()[:2] == ["job-1", "ENABLED"] and "0 30 2 * * *" in out
    code, out, _ = cli(capsys, "unschedule", "--host", kfp_api.url, "job-1")
    assert code == 0 and "disabled recurring run job-1" in out
    assert len(kfp_api.received("POST", "/recurringruns/job-1:disable")) == 1
    code, out, _ = cli(capsys, "schedules", "--host", kfp_api.url)
    assert out.split()[:2] == ["job-1", "DISABLED"]
    code, _, err = cli(capsys, "unschedule", "--host", kfp_api.url, "job-9")
    assert code == 1 and "answered 404" in err and "recurring run job-9 not found" in err


@pytest.mark.parametrize("cron, message", [
    ("0 3 * * 1", "has 5 fields; KFP needs six"),
    ("0 0 25 * * *", "hours field '25' is out of range; use 0-23"),
    ("0 0 3 * * FUNDAY", "day of week field 'FUNDAY' is out of range"),
    ("0 */0 * * * *", "has step '0'"),
    ("0 0 3 ? * ?", ""),  # valid: '?' in both day fields
])
def test_cron_is_validated_before_any_request(capsys, kfp_api, cron, message):
    code, _, err = cli(capsys, "schedule", "--host", kfp_api.url, "--data", "/d", "--cron", cron)
    if not message:
        assert code == 0, err
        return
    assert code == 2 and message in err and err.startswith("tlpipe: error:")
    assert kfp_api.requests == []


def test_cron_accepts_what_kfp_accepts():
    for cron in ("0 0 9 ? * 2-6", "0 0 3 * * 1", "*/30 * * * * *", "0 0 0 1 JAN-MAR *",
                 "0 15,45 8-18/2 * * MON-FRI", "@every 6h", "@daily"):
        assert cluster.validate_cron(cron) == cron


def test_unreachable_and_refusing_servers_are_explained(capsys, kfp_api):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    code, _, err = cli(capsys, "runs", "--host", closed)
    assert code == 1 and f"cannot talk to KFP at {closed}" in err and "--host" in err
    kfp_api.fail_with = 401
    code, _, err = cli(capsys, "runs", "--host", kfp_api.url)
    assert code == 1 and "refused the request (401)" in err and cluster.TOKEN_ENV in err


def test_in_cluster_service_account_token_is_used(capsys, kfp_api, tmp_path, monkeypatch):
    token = tmp_path / "token"
    token.write_text("sa-token-xyz")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    assert cli(capsys, "runs", "--host", kfp_api.url)[0] == 0
    assert kfp_api.requests[-1]["authorization"] == "Bearer sa-token-xyz"

"""Multi-worker fine-tuning on a cluster: the TFJob manifest checked against the published TFJob
CRD schema (tests/k8s/) and the kubeflow-training SDK's typed models, and the launcher's wait /
failure / retry / clean-up logic against a fake Kubernetes API the test drives (409 on a name
that still exists, Foreground deletion that takes 2 s, schema validation on create). No real
cluster is used."""

import json
from dataclasses import replace
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml
from kubeflow.training import models as kubeflow_models
from kubernetes.client import models as kubernetes_models

from components.core.cluster import job as cluster_job, launch, pod as own_pod, tfjob
from components.core.cluster.distribution import Distribution
from components.core.errors import ConfigError
from pipelines import deploy, settings as deployment
from pipelines.cli import main
from pipelines.transfer_learning import STEP_ORDER, compile_pipeline
from tests import k8s_schema
from tests.fake_kubernetes import FakeKubernetes, pod
from tests.helpers import ROOT

SETTINGS = {
    "registry": "registry.example.com/ml", "tag": "1.2.3",
    "pipeline_root": "gs://tlpipe-artifacts/runs", "backup_root": "gs://tlpipe-backups/ft",
    "steps": {"finetune": {
        "launcher": "tfjob", "workers": 3, "worker_restarts": 2,
        "worker_start_timeout_seconds": 900,
        "cpu_request": "4", "memory_limit": "32Gi", "gpus": 2, "gpu_type": "nvidia.com/gpu",
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                         "effect": "NoSchedule"}],
        "secrets": [{"name": "wandb", "env": {"api-key": "WANDB_API_KEY"}},
                    {"name": "gcs-writer", "mount_path": "/secrets/gcs"}],
        "timeout_seconds": 21600}}}
URIS = {"images": "gs://tlpipe-artifacts/runs/r1/preprocess/images",
        "backbone": "gs://tlpipe-artifacts/runs/r1/preprocess/backbone",
        "head": "gs://tlpipe-artifacts/runs/r1/train-head/head",
        "model": "gs://tlpipe-artifacts/runs/r1/finetune/model"}


def distribution():
    return deploy.distribution(deployment.parse(SETTINGS, STEP_ORDER), "tfjob")


LAUNCHER = {"name": "tlpipe-run-finetune-driver", "uid": "9b1c3d2e-0000-4000-8000-000000000001",
            "service_account": "pipeline-runner"}


def job_manifest(dist=None, owner=None):
    dist = dist or distribution()
    command = ["python", "-m", "components.worker", "--backup-root", "gs://b/backups"]
    return tfjob.manifest(launch.job_name(URIS["model"]), "team-a", dist.image, command,
                          dist.workers, dist.pod, dist.restarts,
                          dist.timeout_seconds, owner)


# ---------------------------------------------------------------- the manifest

def _model_class(name: str):
    return getattr(kubeflow_models, name, None) or getattr(kubernetes_models, name)


def schema_problems(value, type_name: str, where: str = "") -> list[str]:
    """Every key of `value` not in the schema of `type_name` (an OpenAPI-generated model name,
    dict(str, T), list[T] or a primitive), every value of the wrong type, and every required
    field missing, recursively."""
    match = re.fullmatch(r"(list)\[(.+)\]|(dict)\(str, (.+)\)", type_name)
    if match and match.group(1):
        if not isinstance(value, list):
            return [f"{where}: expected a list"]
        return [p for i, item in enumerate(value)
                for p in schema_problems(item, match.group(2), f"{where}[{i}]")]
    if match:
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        return [p for key, item in value.items()
                for p in schema_problems(item, match.group(4), f"{where}.{key}")]
    primitives = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object}
    if type_name in primitives:
        ok = isinstance(value, primitives[type_name]) and not (
            type_name == "int" and isinstance(value, bool))
        return [] if ok else [f"{where}: {value!r} is not {type_name}"]
    cls = _model_class(type_name)
    if not isinstance(value, dict):
        return [f"{where}: expected a {type_name} object"]
    by_json = {json_key: attribute for attribute, json_key in cls.attribute_map.items()}
    found = [f"{where}.{key}: not a field of {type_name}" for key in value if key not in by_json]
    for key, item in value.items():
        if key in by_json:
            found += schema_problems(item, cls.openapi_types[by_json[key]], f"{where}.{key}")
    try:  # the generated constructor rejects missing required fields
        cls(**{attribute: value[json_key] for attribute, json_key in cls.attribute_map.items()
               if json_key in value})
    except (TypeError, ValueError) as error:
        found.append(f"{where}: {error}")
    return found


def test_the_manifest_follows_the_tfjob_schema_and_carries_the_step_settings():
    job = job_manifest(owner=LAUNCHER)
    assert k8s_schema.problems(job, *k8s_schema.TFJOB) == []  # the published CRD
    assert schema_problems(job, "KubeflowOrgV1TFJob") == []  # the SDK's models, metadata too
    broken = json.loads(json.dumps(job))
    broken["spec"]["runPolicy"]["cleanupPolicy"] = "All"
    broken["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = "3"
    assert k8s_schema.problems(broken, *k8s_schema.TFJOB) == [
        "spec.runPolicy: Additional properties are not allowed ('cleanupPolicy' was unexpected)",
        "spec.tfReplicaSpecs.Worker.replicas: '3' is not of type 'integer'"]
    # the checker does catch a wrong type, an unknown key and a missing required field
    assert schema_problems({**job, "spec": {**job["spec"], "tfReplicaSpecs": {"Worker": {
        "replicas": "3"}}}}, "KubeflowOrgV1TFJob")
    assert schema_problems({**job, "spec": {**job["spec"], "workers": 3}}, "KubeflowOrgV1TFJob")
    assert schema_problems({**job, "spec": {"runPolicy": {}}}, "KubeflowOrgV1TFJob")
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "TFJob"
    assert job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["name"] == launch.job_name(URIS["model"])
    assert re.fullmatch(r"[a-z0-9-]{1,63}", job["metadata"]["name"])
    spec = job["spec"]
    assert spec["runPolicy"] == {"backoffLimit": 2, "cleanPodPolicy": "Running",
                                 "activeDeadlineSeconds": 21600}
    # owned by the launcher pod: Kubernetes deletes the job when that pod goes
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "v1", "kind": "Pod", "name": LAUNCHER["name"], "uid": LAUNCHER["uid"],
        "blockOwnerDeletion": True}]
    assert list(spec["tfReplicaSpecs"]) == ["Worker"]  # worker 0 is the chief
    worker = spec["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] == 3 and worker["restartPolicy"] == "OnFailure"
    pod_spec = worker["template"]["spec"]
    container, = pod_spec["containers"]
    assert container["name"] == "tensorflow"
    assert pod_spec["serviceAccountName"] == "pipeline-runner"  # the launcher's, by default
    assert container["image"] == "registry.example.com/ml/tlpipe-train:1.2.3"
    assert container["command"][:3] == ["python", "-m", "components.worker"]
    assert container["resources"] == {"requests": {"cpu": "4"},
                                      "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"}}
    assert pod_spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert pod_spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                        "effect": "NoSchedule"}]
    assert container["env"] == [{"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "wandb", "key": "api-key"}}}]
    assert container["volumeMounts"] == [{"name": "secret-1", "mountPath": "/secrets/gcs",
                                          "readOnly": True}]
    assert pod_spec["volumes"] == [{"name": "secret-1", "secret": {"secretName": "gcs-writer"}}]


def test_the_step_passes_backup_location_and_artifacts_to_the_workers(gcs, tmp_path):
    """launch.fine_tune end to end against the fake API and a fake GCS: the workers' command
    names the artifact URIs and the backup location, and the chief's model is copied back."""
    gcs.create_bucket("tlpipe-backups")
    name = launch.job_name(URIS["model"])
    for file_name in ("model.keras", "finetune.json", "labels.txt"):
        gcs.bucket("tlpipe-backups").blob(f"ft/{name}/model/{file_name}").upload_from_string(
            file_name)
    with FakeKubernetes(["Created", "Running", "Succeeded"]) as fake:
        restarts = launch.fine_tune(replace(distribution(), start_timeout_seconds=5), URIS,
                                    '{"finetune": {}}', str(tmp_path / "model"),
                                    api_client=fake.client(), poll_seconds=0.01)
        created = [r["body"] for r in fake.requests if r["method"] == "POST"][0]
    assert restarts == 0
    assert sorted(os.listdir(tmp_path / "model")) == ["finetune.json", "labels.txt",
                                                      "model.keras"]
    command = created["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0][
        "command"]
    arguments = dict(zip(command[3::2], command[4::2]))
    assert arguments["--images"] == URIS["images"] and arguments["--head"] == URIS["head"]
    assert arguments["--model"] == f"gs://tlpipe-backups/ft/{name}/model"
    assert arguments["--backup-root"] == f"gs://tlpipe-backups/ft/{name}/backups"
    assert json.loads(arguments["--config"]) == {"finetune": {}}
    assert created["metadata"]["namespace"] == "default"  # not in a pod: "default"
    assert "ownerReferences" not in created["metadata"]  # nor is there an owner to name
    assert created["spec"]["runPolicy"]["activeDeadlineSeconds"] == 21300  # 5 min before the step


def test_the_job_deadline_leaves_the_launcher_time_to_report():
    assert launch.job_deadline(0) == 0
    assert launch.job_deadline(21600) == 21600 - launch.LAUNCHER_MARGIN_SECONDS
    assert launch.job_deadline(600) == 540  # a tenth of a short step


def test_the_launcher_pod_and_the_worker_service_account(monkeypatch):
    assert own_pod.launcher_pod() is None
    monkeypatch.setenv("TLPIPE_POD_NAME", LAUNCHER["name"])
    monkeypatch.setenv("TLPIPE_POD_UID", LAUNCHER["uid"])
    monkeypatch.setenv("TLPIPE_SERVICE_ACCOUNT", "pipeline-runner")
    assert own_pod.launcher_pod() == LAUNCHER
    settings = json.loads(json.dumps(SETTINGS))
    settings["steps"]["finetune"]["worker_service_account"] = "gcs-workload-identity"
    dist = deploy.distribution(deployment.parse(settings, STEP_ORDER), "tfjob")
    job = job_manifest(dist, own_pod.launcher_pod())
    assert job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"][
        "serviceAccountName"] == "gcs-workload-identity"
    settings["steps"]["finetune"]["worker_service_account"] = "Not_A_Name"
    with pytest.raises(ConfigError, match="worker_service_account='Not_A_Name'; give a "
                                          "Kubernetes service account name"):
        deployment.parse(settings, STEP_ORDER)


def test_a_cluster_run_needs_a_gcs_backup_root(tmp_path):
    with pytest.raises(ValueError, match="backup_root: gs://"):
        launch.fine_tune(replace(distribution(), backup_root=""), URIS, "{}", str(tmp_path))


# ---------------------------------------------------------------- waiting, failures, clean-up

def test_success_counts_restarts_and_deletes_the_job():
    job = job_manifest()
    with FakeKubernetes(["Created", "Running", "Restarting", "Running", "Succeeded"]) as fake:
        assert cluster_job.run(tfjob.KIND, job, fake.client(), poll_seconds=0.01) == 1
    # a leftover job is deleted and known gone before the create
    assert fake.methods()[:3] == ["DELETE tfjob", "GET tfjob", "POST tfjob"]
    assert fake.methods()[-1] == "DELETE tfjob" and fake.live_jobs() == {}
    created = [r["body"] for r in fake.requests if r["method"] == "POST"][0]
    assert created == job


def _failure(pods: list, logs: dict) -> tuple[str, FakeKubernetes]:
    """The JobFailure message of a TFJob that fails with these worker pods and logs."""
    with FakeKubernetes(["Created", "Running", "Failed"], pods, logs,
                        failure_message="TFJob has failed because 1 Worker replica(s) failed."
                        ) as fake:
        with pytest.raises(cluster_job.JobFailure) as failure:
            cluster_job.run(tfjob.KIND, job_manifest(), fake.client(), poll_seconds=0.01)
    return str(failure.value), fake


def test_a_failed_worker_is_named_with_its_reason_and_last_lines():
    name = launch.job_name(URIS["model"])
    pods = [pod(f"{name}-worker-0", "Running"),
            pod(f"{name}-worker-1", "Failed", exit_code=1, reason="Error"),
            pod(f"{name}-worker-2", "Succeeded", exit_code=0)]
    logs = {f"{name}-worker-1": "epoch 2\nResourceExhaustedError: OOM when allocating\n"}
    message, fake = _failure(pods, logs)
    assert "1 Worker replica(s) failed" in message
    assert f"pod {name}-worker-1: Failed, Error, exit code 1" in message
    assert "ResourceExhaustedError: OOM when allocating" in message
    assert "worker-0" not in message and "worker-2" not in message  # healthy pods left out
    log_request, = [r for r in fake.requests if r["path"].endswith("/log")]
    assert log_request["query"]["tailLines"] == [str(cluster_job.LOG_LINES)]
    assert fake.methods()[-1] == "DELETE tfjob" and fake.live_jobs() == {}


def test_a_crash_looping_worker_is_named_with_its_last_exit_code_and_lines():
    name = launch.job_name(URIS["model"])
    pods = [pod(f"{name}-worker-0", "Running"),
            pod(f"{name}-worker-1", "Running", exit_code=137, reason="OOMKilled",
                crash_looping=True)]
    message, _ = _failure(pods, {f"{name}-worker-1": "epoch 1\nKilled\n"})
    assert f"pod {name}-worker-1: Running, CrashLoopBackOff, exit code 137" in message
    assert "epoch 1\nKilled" in message and "worker-0" not in message


def test_a_retry_waits_until_the_failed_attempts_job_is_gone():
    """KFP retries the step: the first attempt's job (same name) is still being deleted, as a
    real API server keeps it until its pods are gone; the retry waits, then creates."""
    failing = [pod("w0", "Running"), pod("w1", "Failed", exit_code=1, reason="Error")]
    with FakeKubernetes(["Created", "Failed"], failing, deletion_seconds=2) as fake:
        with pytest.raises(cluster_job.JobFailure, match="failed"):
            cluster_job.run(tfjob.KIND, job_manifest(), fake.client(), poll_seconds=0.05)
        assert fake.jobs and fake.live_jobs() == {}  # deleted, not gone yet
        first = len(fake.requests)
        fake.conditions, fake.pods = ["Running", "Succeeded"], [pod("w0", "Running"),
                                                                pod("w1", "Running"),
                                                                pod("w2", "Running")]
        assert cluster_job.run(tfjob.KIND, job_manifest(), fake.client(), poll_seconds=0.05) == 0
        retry = fake.methods()[first:]
    posts = [i for i, method in enumerate(retry) if method == "POST tfjob"]
    assert len(posts) == 1  # no 409: the create waited
    assert retry[posts[0] - 1] == "GET tfjob"
    assert fake.requests[first + posts[0] - 1]["path"].endswith(launch.job_name(URIS["model"]))
    assert retry.count("GET tfjob") > 3  # it polled through the two seconds


def test_a_pending_second_worker_fails_the_step_at_the_start_timeout_naming_it():
    """The operator reports Running as soon as one worker is; the step still waits for all."""
    name = launch.job_name(URIS["model"])
    pods = [pod(f"{name}-worker-0", "Running"), pod(f"{name}-worker-1", "Running"),
            pod(f"{name}-worker-2", "Pending",
                unschedulable="0/4 nodes are available: 4 Insufficient nvidia.com/gpu.")]
    with FakeKubernetes(["Created", "Running"], pods) as fake:
        with pytest.raises(cluster_job.JobFailure) as failure:
            cluster_job.run(tfjob.KIND, job_manifest(), fake.client(),
                            start_timeout_seconds=0.3, poll_seconds=0.02)
    message = str(failure.value)
    assert "did not have all 3 worker pods Running within 0.3 s (2 running)" in message
    assert (f"pod {name}-worker-2: Pending, Unschedulable: 0/4 nodes are available: 4 "
            f"Insufficient nvidia.com/gpu.") in message
    assert "worker-0" not in message.split("\n", 1)[1]  # only the pod that is not running
    assert fake.live_jobs() == {}


def test_the_shipped_rbac_grants_exactly_what_the_launcher_calls():
    """images/k8s/tfjob-rbac.yaml against every request a succeeding and a failing run make."""
    with open(os.path.join(ROOT, "images", "k8s", "tfjob-rbac.yaml")) as handle:
        documents = list(yaml.safe_load_all(handle))
    role, = [d for d in documents if d["kind"] == "Role"]
    granted = {(resource, verb) for rule in role["rules"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    used = set()
    failing = [pod("w0", "Failed", exit_code=1, reason="Error")]
    for conditions, pods in ((["Created", "Running", "Succeeded"], None),
                             (["Created", "Failed"], failing)):
        with FakeKubernetes(conditions, pods, {"w0": "Traceback"}, deletion_seconds=0) as fake:
            try:
                cluster_job.run(tfjob.KIND, job_manifest(), fake.client(), poll_seconds=0.01)
            except cluster_job.JobFailure:
                pass
        verbs = {"POST": "create", "DELETE": "delete"}
        for request in fake.requests:
            kind = fake.methods()[fake.requests.index(request)].split()[1]
            resource = {"tfjob": "tfjobs", "pods": "pods", "log": "pods/log"}[kind]
            verb = verbs.get(request["method"]) or ("list" if kind == "pods" else "get")
            used.add((resource, verb))
    assert used == granted
    binding, = [d for d in documents if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_sigterm_to_the_launcher_deletes_the_job(tmp_path):
    """A cancelled run: KFP's pod gets SIGTERM; the launcher deletes the job before it exits."""
    job = tmp_path / "job.json"
    job.write_text(json.dumps(job_manifest()))
    script = ("import json, sys\n"
              "from kubernetes import client\n"
              "from components.core.cluster import job as cluster_job, tfjob\n"
              "configuration = client.Configuration()\n"
              "configuration.host = sys.argv[2]\n"
              "cluster_job.run(tfjob.KIND, json.load(open(sys.argv[1])), "
              "client.ApiClient(configuration), poll_seconds=0.05)\n")
    with FakeKubernetes(["Created", "Running"]) as fake:
        launcher = subprocess.Popen([sys.executable, "-c", script, str(job), fake.url],
                                    stderr=subprocess.PIPE, text=True,
                                    cwd=ROOT)
        waited = 0
        while "Running" not in fake.served and waited < 600 and launcher.poll() is None:
            time.sleep(0.1)
            waited += 1
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=60)
        assert launcher.returncode != 0
        assert "Terminated: the launcher was sent SIGTERM" in stderr
        assert fake.methods()[-1] == "DELETE tfjob" and fake.live_jobs() == {}


def test_a_manifest_the_schema_refuses_is_refused_by_the_fake_as_by_the_api_server():
    from kubernetes.client.exceptions import ApiException

    job = job_manifest()
    job["spec"]["runPolicy"]["backoffLimit"] = "two"
    with FakeKubernetes(["Created"]) as fake:
        with pytest.raises(ApiException) as refused:
            cluster_job.run(tfjob.KIND, job, fake.client(), poll_seconds=0.01)
    assert refused.value.status == 422 and "backoffLimit" in refused.value.body


def test_workers_that_never_start_fail_at_the_start_timeout_with_why():
    name = launch.job_name(URIS["model"])
    pending = pod(f"{name}-worker-1", "Pending",
                  unschedulable="0/3 nodes are available: 3 Insufficient nvidia.com/gpu.")
    with FakeKubernetes([None, "Created"], [pending]) as fake:
        with pytest.raises(cluster_job.JobFailure,
                           match=r"(?s)did not have all 3 worker pods Running within 0.2 s "
                                 r"\(0 running\).*Unschedulable: 0/3 nodes .*"
                                 r"Insufficient nvidia.com/gpu"):
            cluster_job.run(tfjob.KIND, job_manifest(), fake.client(),
                            start_timeout_seconds=0.2, poll_seconds=0.01)
    assert fake.live_jobs() == {}


def test_a_job_that_runs_too_long_is_stopped_and_deleted():
    with FakeKubernetes(["Running"]) as fake:
        with pytest.raises(cluster_job.JobFailure, match="did not finish within 0.2 s"):
            cluster_job.run(tfjob.KIND, job_manifest(), fake.client(), timeout_seconds=0.2,
                            poll_seconds=0.01)
    assert fake.live_jobs() == {} and fake.methods()[-1] == "DELETE tfjob"


# ---------------------------------------------------------------- the compiled pipeline

def finetune_task(compiled: dict) -> tuple[Distribution, dict]:
    """(the finetune task's distribution argument as the step reads it, the task)."""
    task = compiled["root"]["dag"]["tasks"]["finetune"]
    return Distribution.from_dict(
        task["inputs"]["parameters"]["distribution"]["runtimeValue"]["constant"]), task


def test_compiled_multi_worker_pipeline_gives_the_accelerators_to_the_workers(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(SETTINGS))
    assert main(["compile", "--settings", str(path), "-o", str(tmp_path / "p.yaml")]) == 0
    documents = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    dist, _ = finetune_task(documents[0])
    assert dist.workers == 3 and dist.launcher == "tfjob" and dist.restarts == 2
    assert dist.backup_root == "gs://tlpipe-backups/ft"
    assert dist.pod.gpus == 2 and dist.pod.node_selector
    assert dist.start_timeout_seconds == 900
    executor = documents[0]["deploymentSpec"]["executors"]["exec-finetune"]["container"]
    assert "accelerator" not in executor.get("resources", {})  # the launcher pod needs no GPU
    kubernetes_config = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "nodeSelector" not in kubernetes_config.get("exec-finetune", {})
    assert kubernetes_config["exec-finetune"]["secretAsEnv"]  # it still reads gs:// itself
    # the launcher knows its own pod (the job's owner) and service account (the workers')
    assert {entry["name"]: entry["fieldPath"] for entry in kubernetes_config["exec-finetune"][
        "fieldPathAsEnv"]} == deploy.LAUNCHER_POD_FIELDS


def test_multi_worker_settings_are_checked_before_anything_runs(tmp_path):
    without_root = {**SETTINGS, "backup_root": ""}
    with pytest.raises(ConfigError, match="workers=3 needs backup_root: gs://"):
        compile_pipeline(str(tmp_path / "p.yaml"),
                         deployment.parse(without_root, STEP_ORDER))
    with pytest.raises(ConfigError, match="workers=3 needs pipeline_root: gs://"):
        compile_pipeline(str(tmp_path / "p.yaml"), deployment.parse(
            {**SETTINGS, "pipeline_root": "minio://bucket/runs"}, STEP_ORDER))
    local = compile_pipeline(str(tmp_path / "local.yaml"),
                             deployment.parse(without_root, STEP_ORDER), launcher="local")
    assert "tfjob" not in open(local).read()  # a local run needs no backup_root
    for bad, message in (({"steps": {"ingest": {"workers": 2}}}, "only steps.finetune runs"),
                         ({"defaults": {"workers": 2}}, "only steps.finetune runs"),
                         ({"steps": {"finetune": {"workers": 0}}}, "workers=0; use 1 or more"),
                         ({"steps": {"finetune": {"worker_restarts": 11}}}, "use 0 to 10"),
                         ({"backup_root": "/mnt/backups"}, "use a gs://BUCKET/PATH prefix")):
        with pytest.raises(ConfigError, match=message):
            deployment.parse(bad, STEP_ORDER)


def test_run_rejects_a_bad_worker_count_before_running(capsys, tmp_path, digits_folder):
    code = main(["run", "--data", digits_folder, "--output", str(tmp_path / "out"),
                 "--workers", "0"])
    assert code == 2 and "workers=0; use 1 or more" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out" / "runs")

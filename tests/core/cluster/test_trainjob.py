"""Multi-worker fine-tuning on Kubeflow Trainer v2: the TrainJob manifest and tlpipe's runtime
against the published TrainJob, ClusterTrainingRuntime and JobSet CRD schemas (tests/k8s/) and
the kubeflow-trainer-api models, the TF_CONFIG contract on what JobSet gives each pod, and the
launcher against the fake Kubernetes API (409, slow Foreground deletion, schema validation).
No real cluster is used."""

import json
from dataclasses import asdict, replace
import os
import re

import pytest
import yaml
from kubeflow_trainer_api import models as trainer_models

from components import worker
from components.core import stages
from components.core.cluster import job as cluster_job, launch, trainjob
from components.core.cluster.distribution import Distribution
from components.core.errors import ConfigError
from pipelines import deploy, settings as deployment
from pipelines.cli import main
from pipelines.transfer_learning import STEP_ORDER
from tests import k8s_schema
from tests.fake_kubernetes import FakeKubernetes, pod
from tests.helpers import ROOT

RUNTIME = os.path.join(ROOT, "images", "k8s", "tlpipe-tensorflow-runtime.yaml")
SETTINGS = {
    "registry": "registry.example.com/ml", "tag": "1.2.3",
    "pipeline_root": "gs://tlpipe-artifacts/runs", "backup_root": "/mnt/backups/ft",
    "backup_volume": {"claim_name": "tlpipe-backups", "mount_path": "/mnt/backups"},
    "steps": {"finetune": {
        "workers": 2, "gpus": 1, "cpu_request": "4", "memory_limit": "32Gi",
        "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists",
                         "effect": "NoSchedule"}],
        "secrets": [{"name": "wandb", "env": {"api-key": "WANDB_API_KEY"}},
                    {"name": "gcs-writer", "mount_path": "/secrets/gcs"}],
        "worker_service_account": "tlpipe-worker", "timeout_seconds": 21600}}}
URIS = {"images": "gs://tlpipe-artifacts/runs/r1/preprocess/images",
        "backbone": "gs://tlpipe-artifacts/runs/r1/preprocess/backbone",
        "head": "gs://tlpipe-artifacts/runs/r1/train-head/head",
        "model": "gs://tlpipe-artifacts/runs/r1/finetune/model"}
LAUNCHER = {"name": "tlpipe-run-finetune-driver", "uid": "9b1c3d2e-0000-4000-8000-000000000002",
            "service_account": "pipeline-runner"}


def distribution(settings=None):
    return deploy.distribution(deployment.parse(settings or SETTINGS, STEP_ORDER))


def job_manifest(dist=None, owner=LAUNCHER):
    dist = dist or distribution()
    return trainjob.manifest(launch.job_name(URIS["model"]), "team-a", dist.image,
                             ["python", "-m", "components.worker"], dist.workers,
                             dist.pod, dist.restarts, 21300, owner)


def test_the_trainjob_follows_the_published_schema_and_carries_the_step_settings():
    job = job_manifest()
    assert k8s_schema.problems(job, *k8s_schema.TRAINJOB) == []
    assert trainer_models.TrainerV1alpha1TrainJob.from_dict(job).to_dict() == job
    assert job["spec"]["runtimeRef"] == {"name": "tlpipe-tensorflow", "apiGroup":
                                         "trainer.kubeflow.org",
                                         "kind": "ClusterTrainingRuntime"}
    assert job["spec"]["activeDeadlineSeconds"] == 21300
    assert job["metadata"]["ownerReferences"] == [{
        "apiVersion": "v1", "kind": "Pod", "name": LAUNCHER["name"], "uid": LAUNCHER["uid"],
        "blockOwnerDeletion": True}]
    runner = job["spec"]["trainer"]
    assert runner["numNodes"] == 2
    assert runner["image"] == "registry.example.com/ml/tlpipe-train:1.2.3"
    assert runner["resourcesPerNode"] == {"requests": {"cpu": "4"},
                                          "limits": {"memory": "32Gi", "nvidia.com/gpu": "1"}}
    assert runner["env"] == [{"name": "TLPIPE_NUM_WORKERS", "value": "2"},
                             {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
                                 "name": "wandb", "key": "api-key"}}}]
    patch, = job["spec"]["runtimePatches"]
    replicated, = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == trainjob.REPLICATED_JOB
    pod_spec = replicated["template"]["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "tlpipe-worker"  # the settings' over the launcher's
    assert pod_spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod_spec["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                        "effect": "NoSchedule"}]
    assert pod_spec["volumes"] == [
        {"name": "secret-1", "secret": {"secretName": "gcs-writer"}},
        {"name": "backups", "persistentVolumeClaim": {"claimName": "tlpipe-backups"}}]
    assert pod_spec["containers"] == [{"name": "node", "volumeMounts": [
        {"name": "secret-1", "mountPath": "/secrets/gcs", "readOnly": True},
        {"name": "backups", "mountPath": "/mnt/backups"}]}]
    broken = json.loads(json.dumps(job))
    broken["spec"]["trainer"]["nodes"] = 2
    assert k8s_schema.problems(broken, *k8s_schema.TRAINJOB) == [
        "spec.trainer: Additional properties are not allowed ('nodes' was unexpected)"]


def test_the_shipped_runtime_is_a_valid_plain_ml_runtime_that_sets_the_contract():
    with open(RUNTIME) as handle:
        runtime = yaml.safe_load(handle)
    assert k8s_schema.problems(runtime, *k8s_schema.CLUSTER_TRAINING_RUNTIME) == []
    jobset = {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
              "metadata": {"name": "tlpipe-finetune-0123456789ab"},
              "spec": runtime["spec"]["template"]["spec"]}
    assert k8s_schema.problems(jobset, *k8s_schema.JOBSET) == []  # what Trainer makes of it
    assert runtime["metadata"]["name"] == trainjob.RUNTIME
    assert runtime["spec"]["mlPolicy"] == {"numNodes": 1}  # plain ML: no framework plugin
    network = runtime["spec"]["template"]["spec"]["network"]
    assert network == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    replicated, = runtime["spec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == trainjob.REPLICATED_JOB
    assert replicated["template"]["spec"]["completionMode"] == "Indexed"
    container, = replicated["template"]["spec"]["template"]["spec"]["containers"]
    assert container["name"] == trainjob.CONTAINER
    assert container["ports"][0]["containerPort"] == trainjob.WORKER_PORT
    env = {entry["name"]: entry.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath",
                                                                             entry.get("value"))
           for entry in container["env"]}
    assert env == {
        "TLPIPE_JOBSET_NAME": "metadata.labels['jobset.sigs.k8s.io/jobset-name']",
        "TLPIPE_REPLICATED_JOB": "metadata.labels['jobset.sigs.k8s.io/replicatedjob-name']",
        "TLPIPE_JOB_INDEX": "metadata.labels['jobset.sigs.k8s.io/job-index']",
        "TLPIPE_WORKER_PORT": str(trainjob.WORKER_PORT)}


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_tf_config_from_what_jobset_gives_each_pod(workers):
    name = "tlpipe-finetune-0123456789ab"
    hosts = [f"{name}-node-0-{i}.{name}:2222" for i in range(workers)]
    for index in range(workers):
        env = {"TLPIPE_JOBSET_NAME": name, "TLPIPE_REPLICATED_JOB": "node",
               "TLPIPE_JOB_INDEX": "0", "JOB_COMPLETION_INDEX": str(index),
               "TLPIPE_NUM_WORKERS": str(workers), "TLPIPE_WORKER_PORT": "2222"}
        tf_config = json.loads(trainjob.tf_config_from_jobset(env))
        assert tf_config == {"cluster": {"worker": hosts},
                             "task": {"type": "worker", "index": index}}
        from components.core.cluster import distribute

        assert distribute.worker_count(json.dumps(tf_config)) == workers
        assert distribute.is_chief(json.dumps(tf_config)) == (index == 0)


def test_tf_config_names_what_is_missing_or_wrong():
    env = {"TLPIPE_JOBSET_NAME": "j", "TLPIPE_REPLICATED_JOB": "node", "TLPIPE_JOB_INDEX": "0",
           "TLPIPE_NUM_WORKERS": "2"}
    with pytest.raises(ValueError, match="JOB_COMPLETION_INDEX is not set: this pod was not "
                                         "started by the tlpipe-tensorflow runtime"):
        trainjob.tf_config_from_jobset(env)
    with pytest.raises(ValueError, match=r"JOB_COMPLETION_INDEX=2 is outside 0..1"):
        trainjob.tf_config_from_jobset({**env, "JOB_COMPLETION_INDEX": "2"})


def test_the_worker_computes_tf_config_in_a_trainjob_pod(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setenv("TF_CONFIG", "")  # unset for the worker; the one it sets is undone
    for name, value in {"TLPIPE_JOBSET_NAME": "j", "TLPIPE_REPLICATED_JOB": "node",
                        "TLPIPE_JOB_INDEX": "0", "JOB_COMPLETION_INDEX": "1",
                        "TLPIPE_NUM_WORKERS": "2"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(stages, "finetune", lambda *args, **kwargs: seen.update(
        json.loads(os.environ["TF_CONFIG"])) or {})
    folders = [str(tmp_path / name) for name in ("images", "backbone", "head", "model")]
    assert worker.main(["--images", folders[0], "--backbone", folders[1], "--head", folders[2],
                        "--model", folders[3], "--config", "{}"]) == 0
    assert seen["task"] == {"type": "worker", "index": 1}
    assert seen["cluster"]["worker"][1] == "j-node-0-1.j:2222"


def test_success_returns_the_jobsets_restarts_and_deletes_the_trainjob():
    with FakeKubernetes(["Created", "Complete"], kind="trainjob", jobset_restarts=2) as fake:
        assert cluster_job.run(trainjob.KIND, job_manifest(), fake.client(),
                               poll_seconds=0.01) == 2
    assert fake.methods()[:3] == ["DELETE trainjob", "GET trainjob", "POST trainjob"]
    assert "GET jobset" in fake.methods() and fake.methods()[-1] == "DELETE trainjob"
    assert fake.live_jobs() == {}


def test_a_failed_trainjob_names_the_worker_and_its_last_lines():
    name = launch.job_name(URIS["model"])
    pods = [pod(f"{name}-node-0-0", "Running"),
            pod(f"{name}-node-0-1", "Failed", exit_code=137, reason="OOMKilled")]
    logs = {f"{name}-node-0-1": "epoch 3\nKilled\n"}
    with FakeKubernetes(["Created", "Failed"], pods, logs, kind="trainjob",
                        failure_message="jobset failed: max restarts reached") as fake:
        with pytest.raises(cluster_job.JobFailure) as failure:
            cluster_job.run(trainjob.KIND, job_manifest(), fake.client(), poll_seconds=0.01)
    message = str(failure.value)
    assert f"TrainJob {name} failed: jobset failed: max restarts reached" in message
    assert f"pod {name}-node-0-1: Failed, OOMKilled, exit code 137" in message
    assert "epoch 3\nKilled" in message
    log_request, = [r for r in fake.requests if r["path"].endswith("/log")]
    assert log_request["query"]["container"] == ["node"]
    pods_request = [r for r in fake.requests if r["path"].endswith("/pods")][0]
    assert pods_request["query"]["labelSelector"] == [f"jobset.sigs.k8s.io/jobset-name={name}"]


def test_a_pending_trainjob_worker_fails_at_the_start_timeout_naming_it():
    name = launch.job_name(URIS["model"])
    pods = [pod(f"{name}-node-0-0", "Running"),
            pod(f"{name}-node-0-1", "Pending", unschedulable="0/2 nodes are available: "
                "2 Insufficient nvidia.com/gpu.")]
    with FakeKubernetes(["Created"], pods, kind="trainjob") as fake:
        with pytest.raises(cluster_job.JobFailure, match=rf"(?s)TrainJob {name} did not have "
                           rf"all 2 worker pods Running within 0.2 s \(1 running\).*"
                           rf"{name}-node-0-1: Pending, Unschedulable"):
            cluster_job.run(trainjob.KIND, job_manifest(), fake.client(),
                            start_timeout_seconds=0.2, poll_seconds=0.02)
    assert fake.live_jobs() == {}


def test_a_retried_trainjob_waits_for_the_old_one_to_be_gone():
    with FakeKubernetes(["Created", "Failed"], kind="trainjob", deletion_seconds=2) as fake:
        with pytest.raises(cluster_job.JobFailure):
            cluster_job.run(trainjob.KIND, job_manifest(), fake.client(), poll_seconds=0.05)
        first = len(fake.requests)
        fake.conditions = ["Created", "Complete"]
        assert cluster_job.run(trainjob.KIND, job_manifest(), fake.client(),
                               poll_seconds=0.05) == 0
    retry = fake.methods()[first:]
    assert retry.count("POST trainjob") == 1 and retry.count("GET trainjob") > 3
    assert all(r["method"] != "POST" or r["path"].endswith("/trainjobs")
               for r in fake.requests[first:])


def test_the_step_on_a_pvc_copies_the_chiefs_model_from_the_mounted_volume(tmp_path):
    """Backups on a ReadWriteMany volume instead of gs://: the chief leaves the model there and
    the step, which mounts the same claim, copies it into its output."""
    volume = tmp_path / "backups"
    settings = {**SETTINGS, "backup_root": str(volume / "ft"),
                "backup_volume": {"claim_name": "tlpipe-backups", "mount_path": str(volume)}}
    name = launch.job_name(URIS["model"])
    (volume / "ft" / name / "model").mkdir(parents=True)
    for file_name in ("model.keras", "finetune.json"):
        (volume / "ft" / name / "model" / file_name).write_text(file_name)
    with FakeKubernetes(["Created", "Complete"], kind="trainjob") as fake:
        restarts = launch.fine_tune(replace(distribution(settings), start_timeout_seconds=5),
                                    URIS, '{"finetune": {}}', str(tmp_path / "model"),
                                    api_client=fake.client(), poll_seconds=0.01)
        created = [r["body"] for r in fake.requests if r["method"] == "POST"][0]
    assert restarts == 0
    assert sorted(os.listdir(tmp_path / "model")) == ["finetune.json", "model.keras"]
    command = created["spec"]["trainer"]["command"]
    arguments = dict(zip(command[3::2], command[4::2]))
    assert arguments["--model"] == f"{volume}/ft/{name}/model"
    assert arguments["--backup-root"] == f"{volume}/ft/{name}/backups"
    assert created["spec"]["activeDeadlineSeconds"] == 21300


def test_the_shipped_trainjob_rbac_grants_exactly_what_the_launcher_calls():
    with open(os.path.join(ROOT, "images", "k8s", "trainjob-rbac.yaml")) as handle:
        role, = [d for d in yaml.safe_load_all(handle) if d["kind"] == "Role"]
    granted = {(resource, verb) for rule in role["rules"] for resource in rule["resources"]
               for verb in rule["verbs"]}
    used = set()
    failing = [pod("w0", "Failed", exit_code=1, reason="Error")]
    for conditions, pods in ((["Created", "Complete"], None), (["Created", "Failed"], failing)):
        with FakeKubernetes(conditions, pods, {"w0": "Traceback"}, deletion_seconds=0,
                            kind="trainjob") as fake:
            try:
                cluster_job.run(trainjob.KIND, job_manifest(), fake.client(), poll_seconds=0.01)
            except cluster_job.JobFailure:
                pass
        for request, method in zip(fake.requests, fake.methods()):
            kind = method.split()[1]
            resource = {"trainjob": "trainjobs", "jobset": "jobsets", "pods": "pods",
                        "log": "pods/log"}[kind]
            verb = {"POST": "create", "DELETE": "delete"}.get(request["method"]) or (
                "list" if kind == "pods" else "get")
            used.add((resource, verb))
    assert used == granted


def test_the_compiled_pipeline_defaults_to_a_trainjob_and_mounts_the_backup_volume(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump(SETTINGS))
    assert main(["compile", "--settings", str(path), "-o", str(tmp_path / "p.yaml")]) == 0
    documents = list(yaml.safe_load_all((tmp_path / "p.yaml").read_text()))
    task = documents[0]["root"]["dag"]["tasks"]["finetune"]
    dist = Distribution.from_dict(
        task["inputs"]["parameters"]["distribution"]["runtimeValue"]["constant"])
    assert dist.launcher == "trainjob" and dist.backup_root == "/mnt/backups/ft"
    assert asdict(dist.pod.backup_volume) == SETTINGS["backup_volume"]
    kubernetes = documents[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"][
        "exec-finetune"]
    assert kubernetes["pvcMount"][0]["mountPath"] == "/mnt/backups"
    assert {e["name"]: e["fieldPath"] for e in kubernetes["fieldPathAsEnv"]} == \
        deploy.LAUNCHER_POD_FIELDS


@pytest.mark.parametrize("change, message", [
    ({"steps": {"finetune": {"launcher": "mpijob"}}}, "launcher='mpijob'; use trainjob"),
    ({"defaults": {"launcher": "tfjob"}},
     "steps.fingerprint.launcher='tfjob'; only steps.finetune launches workers"),
    ({"backup_root": "/mnt/backups/ft", "backup_volume": {}},
     "backup_root='/mnt/backups/ft'; use a gs://BUCKET/PATH prefix, or a folder inside "
     "backup_volume.mount_path"),
    ({"backup_root": "gs://b/ft", "backup_volume": {"claim_name": "tlpipe-backups"}},
     "backup_volume: give both claim_name"),
    ({"backup_root": "/elsewhere/ft"}, "backup_root='/elsewhere/ft'"),
])
def test_launcher_and_backup_volume_settings_are_checked(change, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        deployment.parse({**SETTINGS, **change}, STEP_ORDER)

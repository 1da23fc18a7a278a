"""Deployment settings land in the compiled YAML for the right steps, and bad settings are named.

The golden file tests/golden/pipeline.yaml is the compiled pipeline with
tests/golden/settings.yaml. After an intended change to the pipeline, regenerate it with
`TLPIPE_UPDATE_GOLDEN=1 pytest tests/pipelines/test_settings.py` and review the diff.
"""

import os

import pytest
import yaml

from components import __version__
from pipelines.cli import main
from pipelines.settings import ALWAYS_RUN
from pipelines.transfer_learning import STEP_ORDER
from tests.helpers import GOLDEN, GOLDEN_SETTINGS

COMPILED = tuple(step for step in STEP_ORDER if step != "pick-trial")  # no search
GOLDEN_PIPELINE = os.path.join(GOLDEN, "pipeline.yaml")
SECRET_VALUE = "hunter2-do-not-leak"


def compile_with(tmp_path, settings_path=GOLDEN_SETTINGS):
    output = tmp_path / "pipeline.yaml"
    assert main(["compile", "--settings", str(settings_path), "-o", str(output)]) == 0
    pipeline, platform = yaml.safe_load_all(output.read_text())
    return output.read_text(), pipeline, platform["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"]


def normalised(text: str) -> list:
    """The compiled documents without what changes between identical compiles."""
    documents = list(yaml.safe_load_all(text))
    documents[0].pop("sdkVersion", None)
    return documents


def test_compiled_pipeline_matches_the_golden_file(tmp_path):
    text, _, _ = compile_with(tmp_path)
    if os.environ.get("TLPIPE_UPDATE_GOLDEN"):
        with open(GOLDEN_PIPELINE, "w", encoding="utf-8") as handle:
            handle.write(text)
    with open(GOLDEN_PIPELINE, encoding="utf-8") as handle:
        assert normalised(text) == normalised(handle.read()), (
            "the compiled pipeline changed; if intended, regenerate the golden file (see the "
            "module docstring) and review the diff")


def test_each_setting_lands_on_the_right_step(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET_VALUE)  # a secret value in the environment
    text, pipeline, platform = compile_with(tmp_path)
    containers = {name[len("exec-"):]: executor["container"]
                  for name, executor in pipeline["deploymentSpec"]["executors"].items()}
    tasks = {**pipeline["root"]["dag"]["tasks"],
             **pipeline["components"]["comp-condition-1"]["dag"]["tasks"]}

    # images follow the settings' registry and tag
    assert {name: c["image"] for name, c in containers.items()} == {
        name: "registry.example.com/ml/" + ("tlpipe-tensorrt" if name == "tensorrt"
                                            else "tlpipe-train") + ":1.2.3"
        for name in COMPILED}
    assert pipeline["defaultPipelineRoot"] == "gs://tlpipe-artifacts/runs"

    # GPUs and resources: finetune 2, tensorrt 1, nobody else; defaults reach every step
    gpus = {name: c["resources"].get("accelerator", {}).get("resourceCount")
            for name, c in containers.items()}
    assert gpus == {**dict.fromkeys(COMPILED), "finetune": "2", "tensorrt": "1"}
    assert containers["finetune"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert all(c["resources"]["resourceCpuRequest"] == "1" and
               c["resources"]["resourceMemoryRequest"] == "4Gi" for c in containers.values())
    assert containers["finetune"]["resources"]["resourceMemoryLimit"] == "32Gi"

    # placement through kfp-kubernetes
    assert platform["exec-finetune"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-t4"}
    assert platform["exec-tensorrt"]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-l4"}
    for step in ("finetune", "tensorrt"):
        assert platform[f"exec-{step}"]["tolerations"] == [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert not any("nodeSelector" in platform.get(f"exec-{s}", {})
                   for s in COMPILED if s not in ("finetune", "tensorrt"))

    # secrets by reference only, on the steps that asked for them
    assert platform["exec-ingest"]["secretAsVolume"][0]["secretName"] == "gcs-reader"
    assert platform["exec-ingest"]["secretAsVolume"][0]["mountPath"] == "/secrets/gcs"
    assert platform["exec-finetune"]["secretAsEnv"][0]["keyToEnv"] == [
        {"envVar": "WANDB_API_KEY", "secretKey": "api-key"}]
    assert SECRET_VALUE not in text
    assert {s for s in COMPILED if "secretAsEnv" in platform.get(f"exec-{s}", {})
            or "secretAsVolume" in platform.get(f"exec-{s}", {})} == {"ingest", "finetune"}

    # retries with back-off for the steps that talk to storage, time-outs, caching
    assert tasks["ingest"]["retryPolicy"] == {"backoffDuration": "30s", "backoffFactor": 2.0,
                                              "backoffMaxDuration": "600s", "maxRetryCount": 3}
    assert tasks["fingerprint"]["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in tasks["finetune"]
    assert platform["exec-ingest"]["activeDeadlineSeconds"] == "7200"
    assert platform["exec-finetune"]["activeDeadlineSeconds"] == "21600"
    caching = {name: task.get("cachingOptions", {}).get("enableCache", False)
               for name, task in tasks.items() if name in COMPILED}
    assert caching == {**dict.fromkeys(COMPILED, True), "fingerprint": False,
                       "evaluate": False, "promote": False}


def test_without_settings_images_follow_the_package_version(tmp_path):
    output = tmp_path / "pipeline.yaml"
    assert main(["compile", "-o", str(output)]) == 0
    pipeline = next(yaml.safe_load_all(output.read_text()))
    images = {e["container"]["image"] for e in pipeline["deploymentSpec"]["executors"].values()}
    assert images == {f"ghcr.io/tlpipe/tlpipe-train:{__version__}",
                      f"ghcr.io/tlpipe/tlpipe-tensorrt:{__version__}"}
    assert "fingerprint" in ALWAYS_RUN
    assert pipeline["root"]["dag"]["tasks"]["fingerprint"].get("cachingOptions") == {}


@pytest.mark.parametrize("text, message", [
    ("steps: {train: {gpus: 1}}", "unknown step 'train' under steps"),
    ("steps: {finetune: {memory_limit: 32GB}}",
     "steps.finetune.memory_limit='32GB' is not a Kubernetes quantity"),
    ("steps: {finetune: {gpus: -1}}", "steps.finetune.gpus=-1"),
    ("steps: {ingest: {secrets: [{name: creds, env: {key: KEY}, mount_path: /s}]}}",
     "give either env"),
    ("steps: {ingest: {secrets: [{name: 'My Secret!', mount_path: /s}]}}",
     "secrets[0].name is not a Kubernetes Secret name"),
    ("steps: {ingest: {secrets: [{name: w, env: {api-key: 'my-api-key'}}]}}",
     "secrets[0].env['api-key'] is not an environment variable name"),
    ("steps: {finetune: {tolerations: [{key: gpu, operator: Exists, value: x}]}}",
     "operator Exists and a value"),
    ("steps: {finetune: {tolerations: [{key: gpu, effect: Never}]}}", "effect='Never'"),
    ("steps: {fingerprint: {caching: true}}", "the fingerprint step must always run"),
    ("steps: {ingest: {retries: 50}}", "retries=50; use 0 to 10"),
    ("steps: {ingest: {colour: blue}}", "unknown config key steps.ingest.colour"),
    ("pipeline_root: /local/folder", "pipeline_root='/local/folder'"),
    ("registry: https://ghcr.io/me/", "without a scheme"),
    ("defaults: {timeout_seconds: -5}", "timeout_seconds=-5"),
    ("steps: {finetune: {node_selector: {pool: 'two words'}}}", "not a valid node label"),
    ("job_namespace: Training_Jobs", "job_namespace='Training_Jobs' is not a Kubernetes"),
    ("{job_namespace: ml, tfjob_namespace: ml}", "tfjob_namespace is the old name of "
                                                  "job_namespace; keep only job_namespace"),
])
def test_bad_settings_are_named_before_anything_is_written(capsys, tmp_path, text, message):
    settings = tmp_path / "settings.yaml"
    settings.write_text(text)
    output = tmp_path / "pipeline.yaml"
    assert main(["compile", "--settings", str(settings), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("tlpipe: error:"), err
    assert len(err.strip().splitlines()) == 1
    assert "sk-live" not in err and "My Secret" not in err  # what may be a secret is not echoed
    assert not output.exists()


GITHUB_TOKEN = "ghp_" + "R4nd0mT0k3nV4lu3xYz9876543210AbCdEf"
HEX_KEY = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize("secret, where, value", [
    (f"{{name: gcs, env: {{token: {GITHUB_TOKEN}}}}}", "env variable #1", GITHUB_TOKEN),
    (f"{{name: '{HEX_KEY}', mount_path: /s}}", "name", HEX_KEY),
    (f"{{name: aws, env: {{'{AWS_SECRET}': AWS_SECRET_ACCESS_KEY}}}}", "env key #1", AWS_SECRET),
    (f"{{name: aws, mount_path: '/secrets/{AWS_SECRET}'}}", "mount_path", AWS_SECRET),
    (f"{{name: aws, mount_path: 'secrets/{AWS_SECRET}'}}", "mount_path", AWS_SECRET),
], ids=["token-as-variable-name", "hex-key-as-secret-name", "value-as-secret-key",
        "value-in-mount-path", "value-in-relative-mount-path"])
def test_a_credential_where_a_name_belongs_is_refused_without_echoing_it(capsys, tmp_path,
                                                                         secret, where, value):
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"steps: {{ingest: {{secrets: [{secret}]}}}}")
    output = tmp_path / "pipeline.yaml"
    assert main(["compile", "--settings", str(settings), "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert f"steps.ingest.secrets[0].{where} looks like a credential" in err, err
    assert len(err.strip().splitlines()) == 1 and value not in err and value[4:20] not in err
    assert not output.exists()


def test_names_made_of_words_are_not_taken_for_credentials():
    from pipelines.settings import secret_shaped

    for name in ("gcs-reader", "GOOGLE_APPLICATION_CREDENTIALS", "/secrets/gcs",
                 "AZURE_STORAGE_CONNECTION_STRING", "tlpipe-gcs-service-account-key",
                 "api-key", "HUGGINGFACE_HUB_TOKEN", "wandb.api.key"):
        assert not secret_shaped(name), name


def test_missing_settings_file_is_named(capsys, tmp_path):
    assert main(["compile", "--settings", str(tmp_path / "nope.yaml")]) == 2
    assert "settings file" in capsys.readouterr().err


def test_the_old_namespace_key_is_still_read_with_a_note(capsys, tmp_path):
    from pipelines import settings as deployment

    settings = tmp_path / "settings.yaml"
    settings.write_text("tfjob_namespace: training\nsteps: {finetune: {workers: 2, launcher: "
                        "tfjob}}\nbackup_root: gs://b/backups\n")
    loaded = deployment.load(str(settings), STEP_ORDER)
    assert loaded.job_namespace == "training"
    from pipelines import deploy

    assert deploy.distribution(loaded).namespace == "training"
    err = capsys.readouterr().err
    assert "tfjob_namespace is now called job_namespace; rename it" in err


def test_the_distribution_contract_reaches_the_step_as_it_was_built(tmp_path):
    """Built from the settings at compile time, carried as JSON (KFP turns its whole numbers
    into floats), read back once by the step: the same typed contract; a key the step's
    version does not know is refused by name."""
    from components.core.cluster.distribution import Distribution
    from components.core.errors import ConfigError
    from pipelines import deploy, settings as deployment

    settings = tmp_path / "settings.yaml"
    settings.write_text(
        "backup_root: gs://b/backups\nsteps: {finetune: {workers: 3, launcher: tfjob, gpus: 2, "
        "tolerations: [{key: nvidia.com/gpu, operator: Exists}], secrets: [{name: reader, "
        "env: {token: TOKEN}}]}}\n")
    built = deploy.distribution(deployment.load(str(settings), STEP_ORDER))
    assert built.runs_a_cluster_job and built.pod.tolerations[0].operator == "Exists"
    carried = yaml.safe_load(yaml.safe_dump(built.to_dict()))
    carried = {**carried, "workers": 3.0, "pod": {**carried["pod"], "gpus": 2.0}}
    assert Distribution.from_dict(carried) == built
    with pytest.raises(ConfigError, match="distribution.gpu_count"):
        Distribution.from_dict({**carried, "gpu_count": 1})

"""Deployment settings for running the pipeline on a cluster, from one YAML file: step images,
pipeline root, and per step the CPU/memory, GPUs, node selectors, tolerations, secrets, retries,
caching and time-out. Validated with errors that name the key and the fix; applied to the
pipeline's tasks when it is compiled (`apply`). Secrets are referenced by Kubernetes Secret name
and key only: their values never pass through tlpipe or the compiled YAML.

Example (every key optional):

    registry: registry.example.com/ml       # step images: <registry>/tlpipe-train:<tag>, ...
    tag: 0.1.0                              # default: the package version
    pipeline_root: gs://my-bucket/tlpipe    # where KFP stores artifacts
    model_registry:                         # versions and the production model
      root: gs://my-bucket/models           # default: <pipeline_root>/registry
      model: flowers                        # default: the data source's name
      promote: auto                         # or manual: a person runs `tlpipe models promote`
    defaults: {cpu_request: "2", memory_request: 8Gi}      # every step, unless it overrides
    steps:
      ingest:
        retries: 3
        secrets: [{name: gcs-reader, mount_path: /secrets/gcs}]
      finetune:
        gpus: 1
        node_selector: {cloud.google.com/gke-accelerator: nvidia-tesla-t4}
        tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
        timeout_seconds: 21600
"""

from __future__ import annotations

import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Optional

from components import __version__
from components.core.cluster import launch
from components.core.cluster.distribution import (CLUSTER_LAUNCHERS, BackupVolume,
                                                 PodResources)
from components.core.config.coerce import from_mapping, read_yaml
from components.core.errors import ConfigError
from components.core.registry.champion import PROMOTE_POLICIES
from components.core.registry.models import MODEL_NAME, default_model_name
from components.steps import IMAGE_REGISTRY

# Kubernetes resource quantity (e.g. "500m", "2", "1.5", "16Gi").
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*"
                       r"[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
ROOT_SCHEMES = ("gs://", "s3://", "minio://")
# Steps whose outcome depends on more than their inputs (what the source holds now; the
# registry's production model now): re-running them must not be skipped by the cache.
ALWAYS_RUN = ("fingerprint", "evaluate", "promote")
MULTI_WORKER_STEP = "finetune"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# Prefixes of credentials as their issuers print them: GitHub, GitLab, Slack, OpenAI-style API
# keys, AWS access key ids, Google API keys and OAuth tokens, PEM blocks, JWTs.
TOKEN_PREFIX = re.compile(r"^(gh[pousr]_|github_pat_|glpat-|xox[abpr]-|sk-|sk_live_|AKIA|ASIA|"
                          r"AIza|ya29\.|-----BEGIN|eyJ)")
LONG_HEX = re.compile(r"[0-9a-fA-F]{32,}")  # a 128-bit or longer key in hex
RANDOM_LENGTH, RANDOM_BITS = 20, 4.0  # a run of 20+ characters at >= 4 bits of entropy each


def secret_shaped(text: str) -> bool:
    """True when `text`, given where a name belongs (a Secret's name, a key, a variable name, a
    path), looks like a credential itself: a known token prefix, 32+ hex digits, or a 20+
    character run without separators mixing upper case, lower case and digits whose characters
    carry >= 4 bits of entropy each (random base64 or alphanumerics; names made of words stay
    below, and identifiers in one case never qualify)."""
    text = str(text)
    if TOKEN_PREFIX.match(text) or LONG_HEX.search(text):
        return True
    return any(_entropy_bits(run) >= RANDOM_BITS and re.search(r"[a-z]", run)
               and re.search(r"[A-Z]", run) and re.search(r"[0-9]", run)
               for run in re.findall(r"[A-Za-z0-9+/=_]{%d,}" % RANDOM_LENGTH, text))


def _entropy_bits(text: str) -> float:
    """Shannon entropy of the characters of `text`, bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


@dataclass
class StepSettings(PodResources):
    """Where and how one step's pod runs: its `PodResources` (quantities are Kubernetes
    quantities, "" leaves the cluster's default; gpus of `gpu_type`, >= 0), and
    retries: attempts after a failure, 0-10, waiting backoff_seconds, then x backoff_factor
    (>= 1) each time, at most max_backoff_seconds.
    timeout_seconds: 0 (none) or the step's deadline. caching: reuse an earlier identical run
    of the step (same image, code and inputs).
    Fine-tune step only: workers, >= 1 (default 1): processes training together under
    MultiWorkerMirroredStrategy; with more than 1 the step launches them (on a cluster, as the
    job of `launcher`; local processes in `tlpipe run`) and each worker gets this step's GPUs,
    node selector, tolerations, resources and secrets. launcher: "trainjob" (default: a Kubeflow
    Trainer v2 TrainJob on tlpipe's runtime) or "tfjob" (a Training Operator v1 TFJob, legacy).
    worker_restarts: times the worker group is started again after a lost worker, resuming from
    the last completed epoch, 0-10 (default 3; a TrainJob's come from the runtime's JobSet
    failurePolicy.maxRestarts instead).
    worker_start_timeout_seconds: how long every worker pod has to be Running, >= 10 (default
    600: pods may wait for a node and pull the image). worker_service_account: the Kubernetes
    service account the worker pods run as (e.g. one bound to a Google service account by
    Workload Identity for gs://); "" (default): the one the fine-tune step's own pod runs as."""

    retries: int = 0
    backoff_seconds: int = 30
    backoff_factor: float = 2.0
    max_backoff_seconds: int = 3600
    timeout_seconds: int = 0
    caching: bool = True
    workers: int = 1
    launcher: str = "trainjob"
    worker_restarts: int = 3
    worker_start_timeout_seconds: int = 600
    worker_service_account: str = ""


@dataclass
class ModelRegistrySettings:
    """The model registry every run registers its exported model in (`tlpipe models`).
    root: a gs://BUCKET/PATH prefix or an absolute folder the step pods mount; "" (default):
    <pipeline_root>/registry when the pipeline root is on gs://, else no registry (`tlpipe
    run` uses OUTPUT/registry). model: the model's name in it ("" (default): from the data
    source's name). promote: "auto" (default; production moves to a new version that beats it)
    or "manual" (new versions stay candidates until `tlpipe models promote`)."""

    root: str = ""
    model: str = ""
    promote: str = "auto"


@dataclass
class Settings:
    """A deployment: step images <registry>/tlpipe-train:<tag> and <registry>/tlpipe-tensorrt:
    <tag>, the pipeline root (gs://, s3:// or minio://; "" for the cluster's default) and each
    step's settings (`defaults` overlaid by its entry in `steps`).
    backup_root: where multi-worker fine-tuning keeps each worker's backup and the chief's model
    (per run): a gs:// prefix, or a folder inside backup_volume.mount_path; required on a
    cluster when steps.finetune.workers > 1, because a restarted pod must find what its
    predecessor saved. backup_volume: the PersistentVolumeClaim such a folder is on (mounted in
    the worker pods and the fine-tune step's pod). job_namespace: where the TrainJob or TFJob
    is created ("" for the namespace the pipeline's pods run in; the old name tfjob_namespace
    is still read, with a note). model_registry: see
    ModelRegistrySettings (not `registry`, which is where the step images are)."""

    registry: str = IMAGE_REGISTRY
    tag: str = __version__
    pipeline_root: str = ""
    backup_root: str = ""
    backup_volume: BackupVolume = field(default_factory=BackupVolume)
    job_namespace: str = ""
    model_registry: ModelRegistrySettings = field(default_factory=ModelRegistrySettings)
    steps: dict[str, StepSettings] = field(default_factory=dict)

    def step(self, name: str) -> StepSettings:
        return self.steps.get(name) or StepSettings(caching=name not in ALWAYS_RUN)

    def image(self, name: str) -> str:
        return f"{self.registry}/{name}:{self.tag}"


def load(path: Optional[str], step_names: tuple[str, ...]) -> Settings:
    """Reads and validates a settings YAML file (None: defaults). ConfigError names the bad key
    and the fix; `step_names` are the pipeline's steps."""
    if path is None:
        return Settings()
    return parse(read_yaml(path, "settings file"), step_names, origin=path)


def parse(raw: dict, step_names: tuple[str, ...], origin: str = "settings") -> Settings:
    """Settings from a mapping shaped like the YAML file; validated (see `problems`)."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin} must hold a mapping such as 'registry: ghcr.io/me'")
    raw = _renamed(dict(raw), origin)
    defaults = raw.pop("defaults", {}) or {}
    per_step = raw.pop("steps", {}) or {}
    if not isinstance(defaults, dict) or not isinstance(per_step, dict):
        raise ConfigError(f"{origin}: defaults and steps must be mappings")
    unknown = sorted(set(per_step) - set(step_names))
    if unknown:
        raise ConfigError(f"{origin}: unknown step {unknown[0]!r} under steps; the steps are "
                          f"{', '.join(step_names)}")
    steps = {}
    for name in step_names:
        own = per_step.get(name) or {}
        merged = {**defaults, **own}
        if name in ALWAYS_RUN and "caching" not in own:
            merged["caching"] = False
        steps[name] = from_mapping(StepSettings, merged, f"steps.{name}.")
    settings = from_mapping(Settings, raw)
    settings.steps = steps
    found = problems(settings)
    if found:
        raise ConfigError(f"{origin}: {found[0]}")
    return settings


# Old settings keys still read: {old name: new name}.
RENAMED_KEYS = {"tfjob_namespace": "job_namespace"}


def _renamed(raw: dict, origin: str) -> dict:
    """`raw` with every RENAMED_KEYS old key under its new name (a note on stderr for each);
    ConfigError when a file gives both names."""
    for old, new in RENAMED_KEYS.items():
        if old in raw:
            if new in raw:
                raise ConfigError(f"{origin}: {old} is the old name of {new}; keep only {new}")
            print(f"tlpipe: note: {origin}: {old} is now called {new}; rename it (the old "
                  f"name is still read)", file=sys.stderr)
            raw[new] = raw.pop(old)
    return raw


def problems(settings: Settings) -> list[str]:
    """Every invalid value, each naming the key and the fix."""
    found = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            found.append(message)

    check(bool(settings.registry) and "://" not in settings.registry
          and not settings.registry.endswith("/"),
          f"registry={settings.registry!r}; give host[/path] without a scheme or trailing /, "
          f"e.g. registry.example.com/ml")
    check(bool(IMAGE_TAG.match(settings.tag)), f"tag={settings.tag!r} is not a valid image tag")
    check(not settings.pipeline_root or settings.pipeline_root.startswith(ROOT_SCHEMES),
          f"pipeline_root={settings.pipeline_root!r}; use a {', '.join(ROOT_SCHEMES)} URI")
    volume = settings.backup_volume
    on_volume = bool(volume.mount_path) and launch.inside(settings.backup_root, volume.mount_path)
    check(not settings.backup_root or settings.backup_root.startswith("gs://") or on_volume,
          f"backup_root={settings.backup_root!r}; use a gs://BUCKET/PATH prefix, or a folder "
          f"inside backup_volume.mount_path")
    check(bool(volume.claim_name) == bool(volume.mount_path),
          "backup_volume: give both claim_name (a ReadWriteMany PersistentVolumeClaim) and "
          "mount_path, or neither")
    check(not volume.claim_name or bool(DNS_SUBDOMAIN.match(volume.claim_name)),
          f"backup_volume.claim_name={volume.claim_name!r} is not a PersistentVolumeClaim name")
    check(not volume.mount_path or volume.mount_path.startswith("/"),
          f"backup_volume.mount_path={volume.mount_path!r}; use an absolute path")
    check(not settings.job_namespace or bool(DNS_LABEL.match(settings.job_namespace)),
          f"job_namespace={settings.job_namespace!r} is not a Kubernetes namespace name")
    models = settings.model_registry
    check(not models.root or models.root.startswith(("gs://", "/")),
          f"model_registry.root={models.root!r}; use a gs://BUCKET/PATH prefix or an absolute "
          f"folder the step pods mount")
    check(not models.model or bool(MODEL_NAME.match(models.model)),
          f"model_registry.model={models.model!r}; use letters, digits, '.', '_' and '-'")
    check(models.promote in PROMOTE_POLICIES,
          f"model_registry.promote={models.promote!r}; use {' or '.join(PROMOTE_POLICIES)}")
    for name, step in settings.steps.items():
        found.extend(f"steps.{name}.{message}" for message in _step_problems(name, step))
    return found


def registry(settings: Settings, source: str, root: str = "", model: str = "") -> dict:
    """The pipeline's registry parameter (see `components.core.registry.champion`) for a run
    on `source`: root and model from the arguments, else the settings, else the defaults
    (<pipeline_root>/registry on gs://; the source's name); {} when there is no root."""
    chosen = root or settings.model_registry.root or (
        settings.pipeline_root.rstrip("/") + "/registry"
        if settings.pipeline_root.startswith("gs://") else "")
    if not chosen:
        return {}
    name = model or settings.model_registry.model or default_model_name(source)
    if not MODEL_NAME.match(name):
        raise ConfigError(f"--model-name {name!r}; use letters, digits, '.', '_' and '-'")
    return {"root": chosen, "model": name, "promote": settings.model_registry.promote}


def with_workers(settings: Settings, workers: int) -> Settings:
    """`settings` with steps.finetune.workers set to `workers` (validated)."""
    step = replace(settings.step(MULTI_WORKER_STEP), workers=workers)
    found = _step_problems(MULTI_WORKER_STEP, step)
    if found:
        raise ConfigError(f"--workers: {found[0]}")
    return replace(settings, steps={**settings.steps, MULTI_WORKER_STEP: step})


def cluster_problems(settings: Settings) -> list[str]:
    """What a cluster run needs beyond `problems` (a local run does not): for multi-worker
    fine-tuning, a gs:// backup_root and a gs:// pipeline_root the worker pods read."""
    workers = settings.step(MULTI_WORKER_STEP).workers
    if workers <= 1:
        return []
    found = []
    if not settings.backup_root:
        found.append(f"steps.{MULTI_WORKER_STEP}.workers={workers} needs backup_root: "
                     f"gs://BUCKET/PATH (or a folder on backup_volume), where workers keep "
                     f"backups a restarted pod can read")
    if not settings.pipeline_root.startswith("gs://"):
        found.append(f"steps.{MULTI_WORKER_STEP}.workers={workers} needs pipeline_root: "
                     f"gs://BUCKET/PATH: the worker pods read the step's inputs from there")
    return found


def _step_problems(name: str, step: StepSettings) -> list[str]:
    found = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            found.append(message)

    for key in ("cpu_request", "cpu_limit", "memory_request", "memory_limit"):
        value = getattr(step, key)
        check(not value or bool(QUANTITY.match(value)),
              f"{key}={value!r} is not a Kubernetes quantity; use e.g. \"500m\", \"4\", \"16Gi\"")
    check(step.gpus >= 0, f"gpus={step.gpus}; use 0 or more")
    check(step.gpus == 0 or bool(step.gpu_type), "gpu_type is empty; use e.g. nvidia.com/gpu")
    for key, value in step.node_selector.items():
        check(bool(LABEL_KEY.match(key)) and bool(LABEL_VALUE.match(value)),
              f"node_selector {key!r}: {value!r} is not a valid node label")
    for index, toleration in enumerate(step.tolerations):
        where = f"tolerations[{index}]"
        check(toleration.operator in ("Equal", "Exists"),
              f"{where}.operator={toleration.operator!r}; use Equal or Exists")
        check(toleration.operator != "Exists" or not toleration.value,
              f"{where} has operator Exists and a value; drop the value or use Equal")
        check(toleration.effect in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"),
              f"{where}.effect={toleration.effect!r}; use NoSchedule, PreferNoSchedule, "
              f"NoExecute or leave it out")
    for index, secret in enumerate(step.secrets):
        where = f"secrets[{index}]"
        shaped = [field_name for field_name, value in
                  [("name", secret.name), ("mount_path", secret.mount_path),
                   *[(f"env key #{number + 1}", key) for number, key in enumerate(secret.env)],
                   *[(f"env variable #{number + 1}", variable)
                     for number, variable in enumerate(secret.env.values())]]
                  if secret_shaped(value)]
        if shaped:  # the value itself is never repeated: it may be the credential
            found.append(f"{where}.{shaped[0]} looks like a credential (a token, key or "
                            f"random string), not a name; give the Kubernetes Secret's name, "
                            f"its keys and the variable names, and keep the values in the Secret")
            continue
        check(bool(DNS_SUBDOMAIN.match(secret.name)),
              f"{where}.name is not a Kubernetes Secret name (lower-case letters, digits, '-' "
              f"and '.'); give the Secret's name, never its value (not shown here in case it "
              f"is one)")
        check(bool(secret.env) != bool(secret.mount_path),
              f"{where}: give either env ({{secret key: VARIABLE}}) or mount_path, not both "
              f"or neither")
        check(not secret.mount_path or secret.mount_path.startswith("/"),
              f"{where}.mount_path is not an absolute path; give the folder the Secret's "
              f"files appear in, e.g. /secrets/gcs")
        wrong = sorted(key for key, variable in secret.env.items()
                       if not ENV_NAME.match(str(variable)))
        check(not wrong, f"{where}.env[{wrong[0]!r}] is not an environment variable name "
                         f"(letters, digits and _, not starting with a digit); give the "
                         f"variable's name there, never the secret's value (not shown here in "
                         f"case it is one)" if wrong else "")
    check(0 <= step.retries <= 10, f"retries={step.retries}; use 0 to 10")
    check(step.backoff_seconds >= 0 and step.max_backoff_seconds >= step.backoff_seconds,
          f"backoff_seconds={step.backoff_seconds}, max_backoff_seconds="
          f"{step.max_backoff_seconds}; use 0 <= backoff_seconds <= max_backoff_seconds")
    check(step.backoff_factor >= 1, f"backoff_factor={step.backoff_factor}; use 1 or more")
    check(step.timeout_seconds >= 0, f"timeout_seconds={step.timeout_seconds}; use 0 (none) "
                                     f"or more")
    check(step.workers >= 1, f"workers={step.workers}; use 1 or more")
    check(step.workers == 1 or name == MULTI_WORKER_STEP,
          f"workers={step.workers}; only steps.{MULTI_WORKER_STEP} runs on several workers "
          f"(set workers there, not in defaults)")
    check(0 <= step.worker_restarts <= 10, f"worker_restarts={step.worker_restarts}; use 0 to 10")
    check(step.launcher in CLUSTER_LAUNCHERS,
          f"launcher={step.launcher!r}; use trainjob (Kubeflow Trainer v2) or tfjob (Training "
          f"Operator v1)")
    check(step.launcher == StepSettings.launcher or name == MULTI_WORKER_STEP,
          f"launcher={step.launcher!r}; only steps.{MULTI_WORKER_STEP} launches workers (set "
          f"launcher there, not in defaults)")
    check(step.worker_start_timeout_seconds >= 10,
          f"worker_start_timeout_seconds={step.worker_start_timeout_seconds}; use 10 or more")
    check(not step.worker_service_account or bool(DNS_SUBDOMAIN.match(
        step.worker_service_account)) and name == MULTI_WORKER_STEP,
          f"worker_service_account={step.worker_service_account!r}; give a Kubernetes service "
          f"account name (lower-case letters, digits, '-' and '.'), in steps.{MULTI_WORKER_STEP}")
    check(not (name in ALWAYS_RUN and step.caching),
          f"caching=true: the {name} step must always run (it is what tells whether the data "
          f"changed); leave caching out for it")
    return found





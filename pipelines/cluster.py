"""Talking to a Kubeflow Pipelines cluster with `kfp.Client`: submit a run of the compiled
pipeline, list runs, schedule recurring retraining, list and disable schedules.

Authentication, the way KFP users expect, first match wins:
  1. an explicit token in the environment variable TLPIPE_KFP_TOKEN (sent as a bearer token);
  2. in a pod, the projected service-account token KFP mounts
     (KF_PIPELINES_SA_TOKEN_PATH, default /var/run/secrets/kubeflow/pipelines/token);
  3. otherwise kfp.Client's own discovery: the current kubeconfig context when no host is given.
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Optional

from components.core.errors import ConfigError, StepError

TOKEN_ENV = "TLPIPE_KFP_TOKEN"
HOST_ENV = "TLPIPE_KFP_HOST"
SERVICE_ACCOUNT_TOKEN = "/var/run/secrets/kubeflow/pipelines/token"

# KFP cron: six fields (robfig/cron with seconds): name, smallest, largest, names allowed.
CRON_FIELDS = (("seconds", 0, 59, ()), ("minutes", 0, 59, ()), ("hours", 0, 23, ()),
               ("day of month", 1, 31, ()),
               ("month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP",
                                 "OCT", "NOV", "DEC")),
               ("day of week", 0, 6, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")))
CRON_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                    "@hourly")


def validate_cron(expression: str) -> str:
    """Returns `expression` if KFP's scheduler accepts it, else ConfigError naming the field.

    Six space-separated fields: seconds minutes hours day-of-month month day-of-week, each `*`,
    `?` (day fields), a value, a range `a-b`, a list `a,b`, or a step `*/n` / `a-b/n`; month and
    weekday names (JAN, MON) allowed. Also @daily-style descriptors and `@every <duration>`.
    """
    text = expression.strip()
    if text in CRON_DESCRIPTORS or re.fullmatch(r"@every (\d+(\.\d+)?(ns|us|ms|s|m|h))+", text):
        return text
    fields = text.split()
    if len(fields) != 6:
        hint = (f"; KFP cron starts with seconds: try '0 {text}'" if len(fields) == 5 else "")
        raise ConfigError(f"cron {expression!r} has {len(fields)} fields; KFP needs six: seconds "
                          f"minutes hours day-of-month month day-of-week{hint}")
    for value, (name, low, high, names) in zip(fields, CRON_FIELDS):
        problem = _cron_field_problem(value, low, high, names, name.startswith("day"))
        if problem:
            raise ConfigError(f"cron {expression!r}: {name} field {value!r} {problem}")
    return text


def _cron_field_problem(value: str, low: int, high: int, names: tuple, question: bool) -> str:
    for part in value.split(","):
        base, _, step = part.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return f"has step {step!r}; use a positive whole number"
        if base == "*" or (base == "?" and question):
            continue
        for bound in base.split("-", 1):
            if bound.upper() in names:  # names count from the field's smallest value
                number = low + names.index(bound.upper())
            else:
                number = int(bound) if bound.isdigit() else None
            if number is None or not low <= number <= high:
                return f"is out of range; use {low}-{high}" + (
                    f" or {names[0]}-{names[-1]}" if names else "")
    return ""


def client(host: Optional[str], namespace: Optional[str] = None):
    """A kfp.Client for `host` (else $TLPIPE_KFP_HOST, else kubeconfig discovery), with
    credentials as described in this module's docstring. An explicit host is probed first, so
    an unreachable or refusing server is a clear StepError at once (kfp.Client itself retries
    its health check for ~20 s and then reports only a time-out)."""
    import kfp

    host = (host or os.environ.get(HOST_ENV) or "").rstrip("/") or None
    options = {"host": host, "namespace": namespace or "kubeflow"}
    token_path = os.environ.get("KF_PIPELINES_SA_TOKEN_PATH", SERVICE_ACCOUNT_TOKEN)
    if os.environ.get(TOKEN_ENV):
        options["existing_token"] = os.environ[TOKEN_ENV]
    elif os.path.isfile(token_path):
        from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

        options["credentials"] = ServiceAccountTokenVolumeCredentials(path=token_path)
    if host:
        _probe(host, options.get("existing_token") or _read_token(token_path))
    try:
        return kfp.Client(**options)
    except Exception as error:  # connection, TLS and auth errors all surface here first
        raise StepError(_explain(error, host)) from error


def _read_token(path: str) -> Optional[str]:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


def _probe(host: str, token: Optional[str]) -> None:
    """GET the KFP health endpoint once (10 s time-out); StepError saying why it failed."""
    import urllib.error
    import urllib.request

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{host}/apis/v2beta1/healthz", headers=headers)
    try:
        urllib.request.urlopen(request, timeout=10).close()
    except (urllib.error.URLError, OSError) as error:
        raise StepError(_explain(error, host)) from error


def _explain(error: Exception, host: Optional[str]) -> str:
    status = getattr(error, "status", None) or getattr(error, "code", None)
    where = host or "the cluster from your kubeconfig"
    if status in (401, 403):
        return (f"KFP at {where} refused the request ({status}); set {TOKEN_ENV} to a valid "
                f"token or check the service account's rights")
    if status:
        detail = str(getattr(error, "body", "") or getattr(error, "reason", ""))[:300]
        return (f"KFP at {where} answered {status}: {detail}; check the ids and names given "
                f"(`tlpipe runs` and `tlpipe schedules` list them)")
    return (f"cannot talk to KFP at {where}: {type(error).__name__}: {str(error)[:300]}; check "
            f"--host (or {HOST_ENV}) and that the KFP API is reachable from here")


def _call(host: Optional[str], action, *args, **kwargs):
    try:
        return action(*args, **kwargs)
    except Exception as error:
        raise StepError(_explain(error, host)) from error


def compiled_package(settings, directory: str, config=None) -> str:
    """Compiles the pipeline with `settings` (and the fine-tuning search of `config`, a
    PipelineConfig, if it has one) into `directory`; returns the YAML path."""
    from components.core.train import search
    from pipelines.transfer_learning import PIPELINE_NAME, compile_pipeline

    trials = search.trials(config.finetune.search) if config is not None else []
    return compile_pipeline(os.path.join(directory, f"{PIPELINE_NAME}.yaml"), settings,
                            trials=trials)


def arguments(source: str, config, registry: dict) -> dict:
    """Pipeline parameters for a run: the source, every config section and the model registry
    (`settings.registry`)."""
    return {"source": source, **config.to_dict(), "registry": registry}


def submit(host, namespace, experiment, run_name, source, config, settings, registry: dict
           ) -> dict:
    """Creates a run of the compiled pipeline; returns {"run_id", "url"}."""
    kfp_client = client(host, namespace)
    with tempfile.TemporaryDirectory() as scratch:
        result = _call(host, kfp_client.create_run_from_pipeline_package,
                       compiled_package(settings, scratch, config),
                       arguments=arguments(source, config, registry),
                       run_name=run_name, experiment_name=experiment, namespace=namespace)
    return {"run_id": result.run_id, "url": f"{_ui(kfp_client)}/#/runs/details/{result.run_id}"}


def runs(host, namespace, experiment: Optional[str], limit: int) -> list[dict]:
    """The newest runs (of `experiment` if given): id, name, state, created_at."""
    kfp_client = client(host, namespace)
    experiment_id = _experiment_id(kfp_client, host, experiment, namespace)
    listing = _call(host, kfp_client.list_runs, page_size=limit, sort_by="created_at desc",
                    experiment_id=experiment_id, namespace=namespace)
    return [{"run_id": run.run_id, "name": run.display_name, "state": run.state,
             "created_at": str(run.created_at)} for run in listing.runs or []]


def schedule(host, namespace, experiment, name, cron, max_concurrency, catchup, source, config,
             settings, registry: dict) -> dict:
    """Creates an enabled recurring run; returns {"recurring_run_id", "url"}. Each run of it
    compares itself with the production model of `registry` at the time it runs."""
    cron = validate_cron(cron)
    if max_concurrency < 1:
        raise ConfigError(f"--max-concurrency {max_concurrency}; use 1 or more")
    kfp_client = client(host, namespace)
    experiment_id = _call(host, kfp_client.create_experiment, experiment,
                          namespace=namespace).experiment_id
    with tempfile.TemporaryDirectory() as scratch:
        created = _call(host, kfp_client.create_recurring_run, experiment_id, name,
                        cron_expression=cron, max_concurrency=max_concurrency,
                        no_catchup=not catchup, params=arguments(source, config, registry),
                        pipeline_package_path=compiled_package(settings, scratch, config),
                        enabled=True)
    return {"recurring_run_id": created.recurring_run_id,
            "url": f"{_ui(kfp_client)}/#/recurringrun/details/{created.recurring_run_id}"}


def schedules(host, namespace, experiment: Optional[str], limit: int) -> list[dict]:
    """Recurring runs: id, name, status, cron, max_concurrency."""
    kfp_client = client(host, namespace)
    experiment_id = _experiment_id(kfp_client, host, experiment, namespace)
    listing = _call(host, kfp_client.list_recurring_runs, page_size=limit,
                    sort_by="created_at desc", experiment_id=experiment_id, namespace=namespace)
    return [{"recurring_run_id": job.recurring_run_id, "name": job.display_name,
             "status": job.status, "max_concurrency": job.max_concurrency,
             "cron": (job.trigger.cron_schedule.cron
                      if job.trigger and job.trigger.cron_schedule else "")}
            for job in listing.recurring_runs or []]


def unschedule(host, namespace, recurring_run_id: str) -> None:
    """Disables a recurring run (it stays listed, disabled; runs already made are kept)."""
    kfp_client = client(host, namespace)
    _call(host, kfp_client.disable_recurring_run, recurring_run_id)


def _experiment_id(kfp_client, host, experiment: Optional[str], namespace) -> Optional[str]:
    if not experiment:
        return None
    return _call(host, kfp_client.get_experiment, experiment_name=experiment,
                 namespace=namespace).experiment_id


def _ui(kfp_client) -> str:
    return kfp_client._get_url_prefix()  # the host the client talks to, as KFP links it

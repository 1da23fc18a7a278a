"""Validation of manifests against the published CRD schemas in tests/k8s/ (see its README).

The API server prunes fields a structural schema does not name (or, with fieldValidation=Strict,
refuses them); here they are refused, so a misspelt key fails a test instead of vanishing on a
cluster.
"""

from __future__ import annotations

import copy
import functools
import os

import yaml

FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "k8s")


@functools.lru_cache(maxsize=None)
def schema(file_name: str, version: str) -> dict:
    """The strict openAPIV3Schema of `version` in the CRD file tests/k8s/`file_name`."""
    with open(os.path.join(FOLDER, file_name), encoding="utf-8") as handle:
        crd = next(doc for doc in yaml.safe_load_all(handle) if doc)
    served = {entry["name"]: entry for entry in crd["spec"]["versions"] if entry.get("served")}
    return _strict(copy.deepcopy(served[version]["schema"]["openAPIV3Schema"]))


def _strict(node):
    """Every object schema that lists its properties and does not keep unknown fields gets
    additionalProperties: false."""
    if isinstance(node, dict):
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


def problems(manifest: dict, file_name: str, version: str) -> list[str]:
    """Every way `manifest` breaks the schema, as 'path: message' lines ([] when valid)."""
    import jsonschema

    validator = jsonschema.Draft7Validator(schema(file_name, version))
    return sorted(f"{'.'.join(map(str, error.absolute_path)) or '(root)'}: {error.message}"
                  for error in validator.iter_errors(manifest))


TFJOB = ("kubeflow.org_tfjobs.yaml", "v1")
TRAINJOB = ("trainer.kubeflow.org_trainjobs.yaml", "v1alpha1")
CLUSTER_TRAINING_RUNTIME = ("trainer.kubeflow.org_clustertrainingruntimes.yaml", "v1alpha1")
JOBSET = ("jobset.x-k8s.io_jobsets.yaml", "v1alpha2")

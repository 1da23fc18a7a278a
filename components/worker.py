"""One fine-tuning worker: `python -m components.worker --images DIR --backbone DIR --head DIR
--model DIR --config JSON [--backup-root URI]`.

Reads the cluster from TF_CONFIG (set by the local launcher, or by the Training Operator in a
TFJob pod; in a Trainer v2 TrainJob pod it is computed from what JobSet gives the pod, see
components/core/cluster/trainjob.py) and runs the fine-tune stage under
MultiWorkerMirroredStrategy.
Artifact locations are local paths or gs:// URIs: gs:// inputs are downloaded first, and the
chief uploads the model to a gs:// --model once it is complete.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m components.worker", description=__doc__)
    parser.add_argument("--images", required=True, help="the preprocess step's images artifact")
    parser.add_argument("--backbone", required=True, help="the preprocess step's backbone")
    parser.add_argument("--head", required=True, help="the train-head step's head artifact")
    parser.add_argument("--model", required=True, help="where the chief writes the model")
    parser.add_argument("--config", required=True,
                        help="the config sections fine-tuning uses, as JSON (data, model, "
                             "augment, loss, finetune: stages.WORKER_SECTIONS); each is "
                             "checked on its own")
    parser.add_argument("--backup-root", default="",
                        help="where each worker keeps its backup (local path or gs://) so a "
                             "restarted job resumes from the last completed epoch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from components.core import stages
    from components.core.cluster import distribute
    from components.core.data import gcs
    from components.core.io import storage

    args = parse_args(sys.argv[1:] if argv is None else argv)
    if not os.environ.get("TF_CONFIG") and os.environ.get("TLPIPE_JOBSET_NAME"):
        from components.core.cluster import trainjob

        os.environ["TF_CONFIG"] = trainjob.tf_config_from_jobset(os.environ)
    with tempfile.TemporaryDirectory(prefix="tlpipe-worker-inputs-") as scratch:
        inputs = {}
        for name in ("images", "backbone", "head"):
            uri = getattr(args, name)
            inputs[name] = os.path.join(scratch, name) if storage.is_gcs(uri) else uri
            if storage.is_gcs(uri):
                gcs.download_prefix(uri.rstrip("/") + "/", inputs[name])
        model = os.path.join(scratch, "model") if storage.is_gcs(args.model) else args.model
        facts = stages.finetune(inputs["images"], inputs["backbone"], inputs["head"], model,
                                config=json.loads(args.config), backup_root=args.backup_root)
        if storage.is_gcs(args.model) and distribute.is_chief():
            storage.upload_tree(model, args.model)
    print(json.dumps(facts, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

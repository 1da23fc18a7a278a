"""One fine-tuning worker: `python -m components.worker --images DIR --backbone DIR --head DIR
--model DIR --config JSON [--backup-root URI]`.

Reads the cluster from TF_CONFIG (set by the local launcher, or by the Training Operator in a
TFJob pod) and runs the fine-tune stage under MultiWorkerMirroredStrategy. Artifact locations
are local paths.
"""

from __future__ import annotations

import argparse
import json
import sys


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m components.worker", description=__doc__)
    parser.add_argument("--images", required=True, help="the preprocess step's images artifact")
    parser.add_argument("--backbone", required=True, help="the preprocess step's backbone")
    parser.add_argument("--head", required=True, help="the train-head step's head artifact")
    parser.add_argument("--model", required=True, help="where the chief writes the model")
    parser.add_argument("--config", required=True,
                        help="the pipeline config as JSON (sections data, model, augment, loss, "
                             "finetune)")
    parser.add_argument("--backup-root", default="",
                        help="where each worker keeps its backup (local path or gs://) so a "
                             "restarted job resumes from the last completed epoch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from components.core import stages

    args = parse_args(sys.argv[1:] if argv is None else argv)
    facts = stages.finetune(args.images, args.backbone, args.head, args.model,
                                   config=json.loads(args.config), backup_root=args.backup_root)
    print(json.dumps(facts, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

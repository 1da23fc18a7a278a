"""Champion/challenger: the registry's production model scored on this run's test split (like
with like) as the evaluate step's baseline, and the promote step's decision from it.

`registry` below is the pipeline's registry parameter: {"root": folder or gs:// prefix ("" for
none), "model": the model name, "promote": "auto" (production moves when the new version is
blessed against it) or "manual" (a person runs `tlpipe models promote`)}.
"""

from __future__ import annotations

import logging

from components.core.registry import models as registry_models
from components.core.registry.store import open_store

log = logging.getLogger("tlpipe.registry")

PROMOTE_POLICIES = ("auto", "manual")


def production(registry: dict, number: int | None = None) -> dict | None:
    """The production version's record (version.json) plus "uri" of its model.keras (version
    `number` instead, when given); None when the registry is unset or has no production
    version of this model yet."""
    if not registry.get("root"):
        return None
    store = open_store(registry["root"])
    if number is None:
        current, _ = registry_models.alias(store, registry["model"])
        if current is None:
            return None
        number = current["version"]
    record = registry_models.version(store, registry["model"], number)
    prefix = registry_models.version_prefix(registry["model"], number)
    return {**record, "uri": store.uri(f"{prefix}/model.keras")}


def comparable(champion: dict, classes: list[str]) -> bool:
    """A champion can be scored on this run's test split only if it classifies the same
    classes in the same order."""
    return champion.get("classes") == classes


def verdict(registry: dict, champion: dict | None, classes: list[str], judged: dict) -> dict:
    """The evaluate step's champion/challenger outcome for the report and model card:
    {"model", "production_version", "promote", "comparable", "expected", "text"}. judged: the
    blessing (`blessing.judge`), against the champion when there is a comparable one."""
    name, policy = registry["model"], registry.get("promote", "auto")
    number = champion["version"] if champion else None
    blessed = judged["blessed"]
    if champion is None:
        promote, text = blessed, (f"is the first version of {name}: no production version "
                                  f"yet" if blessed else f"is not blessed: "
                                  f"{judged['blessing_reason']}")
    elif not comparable(champion, classes):
        promote, text = False, (f"classifies {classes} but production version {number} "
                                f"classifies {champion.get('classes')}: not comparable, kept "
                                f"as a candidate (promote it by hand)")
    else:
        promote = blessed
        shown = (against(blessed, judged["checks"]) if judged["shippable"] else
                 judged["blessing_reason"])
        text = (f"is {'' if blessed else 'not '}blessed against production version {number}: "
                f"{shown}")
    expected = "promoted" if promote else "candidate"
    if promote and policy == "manual":
        expected = "candidate, awaiting approval (promote: manual; `tlpipe models promote`)"
    return {"model": name, "production_version": number, "promote": policy,
            "comparable": champion is None or comparable(champion, classes),
            "expected": expected, "text": text}


def against(blessed: bool, checks: list) -> str:
    """The blessing checks that compare with the production model, in one line: all of them
    when blessed, the failed ones otherwise."""
    from components.core.evaluate.blessing import ABSOLUTE_RULES

    return "; ".join(check["detail"] for check in checks if check["rule"] not in ABSOLUTE_RULES
                     and (blessed or not check["passed"]))


def decide(evaluation: dict, registry: dict, current, rescore) -> tuple[bool, str]:
    """Whether to move production to the version evaluated in `evaluation` (its evaluation.json)
    now that production is version `current` (None: none yet), and why. When production is
    still the version evaluate compared with, its blessing stands; when it moved meanwhile,
    `rescore(current)` returns (blessed, reason) against the new one."""
    name = registry["model"]
    champion = evaluation.get("champion") or {}
    compared = champion.get("production_version")
    if not evaluation["shippable"]:
        promote, reason = False, f"not blessed: {evaluation['blessing_reason']}"
    elif current is None:
        promote, reason = True, f"first production version of {name}"
    elif current == compared:
        promote = evaluation["blessed"] and champion.get("comparable", False)
        reason = f"this model {champion['text']}"
    else:
        log.info("production moved to version %s since evaluation (against %s): deciding "
                 "again", current, compared)
        promote, why = rescore(current)
        reason = (f"{'blessed' if promote else 'not blessed'} against production version "
                  f"{current} (which replaced {compared} during this run): {why}")
    if promote and registry.get("promote", "auto") == "manual":
        return False, f"{reason}; promote: manual, approve with `tlpipe models promote`"
    return promote, reason

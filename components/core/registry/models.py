"""A model registry on a store (`store.LocalStore` or `store.GcsStore`): per model name,
immutable numbered versions, aliases (`production`) with their history, and an append-only log
of what happened to each version and why.

Layout under the root:
    <model>/claims/<n>                   version number n is taken (created exclusively)
    <model>/versions/<n>/...             the version's files, written once
    <model>/versions/<n>/version.json    written last: a version exists once this does
    <model>/aliases/<alias>.json         {"version", "history", "moved_at", "reason", "by"}
    <model>/events/<time>-<id>.json      {"version", "action", "reason", "at", "by"}

A number is taken by creating its claim (the loser of a race takes the next one); an alias
moves by compare-and-swap from the version the mover read (the loser re-reads and decides
again). A promotion killed half-way leaves a claim, maybe files, but no version.json: the
registry reads as it was.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid

from components.core.registry.store import RegistryError

PRODUCTION = "production"
VERSION_FILE = "version.json"
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SWAP_ATTEMPTS = 20  # re-reads of a moving alias before giving up


class AliasMoved(RegistryError):
    """An alias moved between reading it and moving it. current: its version now (None when
    it was removed)."""

    def __init__(self, model: str, alias: str, current):
        super().__init__(f"{model}: {alias} moved to version {current} meanwhile; look again "
                         f"(`tlpipe models list`) and retry")
        self.current = current


def check_model_name(name: str) -> str:
    """`name` if it can name a model (letters, digits, '.', '_', '-'; 1-100 characters)."""
    if not MODEL_NAME.match(name or ""):
        raise RegistryError(f"model name {name!r} is not valid; use letters, digits, '.', '_' "
                            f"and '-' (e.g. flowers-v2)")
    return name


def default_model_name(source: str) -> str:
    """A model name from a data source: its last path component without archive extensions
    (tfds:NAME?... -> NAME), reduced to the characters a name may have; "model" if nothing
    is left."""
    name = source.split("?")[0].rstrip("/")
    name = name[len("tfds:"):] if name.startswith("tfds:") else name.rsplit("/", 1)[-1]
    name = re.sub(r"\.(zip|tar|tgz|tar\.gz|tar\.bz2|tar\.xz)$", "", name, flags=re.I)
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-_")
    return name[:100] or "model"


def models(store) -> list[str]:
    """The model names with at least one version."""
    return sorted({key.split("/")[0] for key in store.keys("")
                   if key.endswith("/" + VERSION_FILE) and "/versions/" in key})


def register(store, model: str, folder: str, record: dict) -> int:
    """Adds local `folder` as the next version of `model`, with `record` (plus "model",
    "version" and "registered_at") as its version.json, written last. Returns the number."""
    taken = [int(key.rsplit("/", 1)[-1]) for key in store.keys(f"{model}/claims/")
             if key.rsplit("/", 1)[-1].isdigit()]
    number = max(taken, default=0) + 1
    while not store.create(f"{model}/claims/{number}", _json({"at": _now()})):
        number += 1
    store.put_tree(folder, f"{model}/versions/{number}")
    if not store.create(f"{model}/versions/{number}/{VERSION_FILE}", _json(
            {**record, "model": model, "version": number, "registered_at": _now()})):
        raise RegistryError(f"{model} version {number} was written by someone else; the "
                            f"registry is damaged (two writers without claims?)")
    return number


def versions(store, model: str) -> list[dict]:
    """Every version record (version.json) of `model`, oldest first."""
    numbers = sorted(int(key.split("/")[2]) for key in store.keys(f"{model}/versions/")
                     if key.count("/") == 3 and key.endswith("/" + VERSION_FILE))
    return [_read_json(store, f"{model}/versions/{number}/{VERSION_FILE}")
            for number in numbers]


def version(store, model: str, number: int) -> dict:
    """One version's record; RegistryError naming the versions there are."""
    record = _read_json(store, f"{model}/versions/{number}/{VERSION_FILE}")
    if record is None:
        there = [entry["version"] for entry in versions(store, model)]
        raise RegistryError(f"{model} has no version {number}; its versions are "
                            f"{', '.join(map(str, there)) or 'none yet'} (`tlpipe models "
                            f"list`)")
    return record


def version_prefix(model: str, number: int) -> str:
    """The key prefix of a version's files."""
    return f"{model}/versions/{number}"


def alias(store, model: str, name: str = PRODUCTION) -> tuple[dict | None, object]:
    """(the alias record or None, the token to move it with)."""
    data, token = store.read(f"{model}/aliases/{name}.json")
    return (json.loads(data) if data is not None else None), token


def move_alias(store, model: str, number: int, read: tuple, reason: str, by: str,
               name: str = PRODUCTION, rollback: bool = False) -> dict:
    """Points alias `name` at version `number` if it is still what `read` (the (record, token)
    `alias` returned) says; AliasMoved otherwise. The old target joins the history (a rollback
    takes the last one off instead). Returns the new alias record."""
    current, token = read
    history = list((current or {}).get("history", []))
    if rollback:
        history = history[:-1]
    elif current is not None:
        history.append(current["version"])
    record = {"version": number, "history": history, "moved_at": _now(), "reason": reason,
              "by": by}
    if not store.swap(f"{model}/aliases/{name}.json", token, _json(record)):
        raise AliasMoved(model, name, (alias(store, model, name)[0] or {}).get("version"))
    return record


def log_event(store, model: str, number: int, action: str, reason: str, by: str) -> None:
    """Appends an event: `action` ("registered", "promoted", "candidate", "rolled back")
    on version `number`, and why."""
    key = f"{model}/events/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.json"
    store.create(key, _json({"version": number, "action": action, "reason": reason,
                             "at": _now(), "by": by}))


def events(store, model: str) -> list[dict]:
    """Every event of `model`, oldest first."""
    found = [_read_json(store, key) for key in store.keys(f"{model}/events/")]
    return sorted((event for event in found if event), key=lambda event: event["at"])


def promote_candidate(store, model: str, number: int, decide, by: str) -> dict:
    """Moves production to version `number` if `decide(current)` (current: the production
    version now, or None) returns (True, reason); re-reads and decides again when production
    moved meanwhile. Logs the outcome; returns {"promoted", "reason", "production"}."""
    for _ in range(SWAP_ATTEMPTS):
        read = alias(store, model)
        current_version = read[0]["version"] if read[0] else None
        promote, reason = decide(current_version)
        if not promote:
            log_event(store, model, number, "candidate", reason, by)
            return {"promoted": False, "reason": reason, "production": current_version}
        try:
            move_alias(store, model, number, read, reason, by)
        except AliasMoved:
            continue
        log_event(store, model, number, "promoted", reason, by)
        return {"promoted": True, "reason": reason, "production": number}
    raise RegistryError(f"{model}: production kept moving ({SWAP_ATTEMPTS} attempts); version "
                        f"{number} is registered as a candidate: promote it by hand")


def promote_by_hand(store, model: str, number: int, by: str) -> dict:
    """`tlpipe models promote`: production -> version `number` (which must exist)."""
    version(store, model, number)
    read = alias(store, model)
    current_version = read[0]["version"] if read[0] else None
    if current_version == number:
        raise RegistryError(f"{model} version {number} is already in production")
    reason = f"promoted by hand (was version {current_version})"
    record = move_alias(store, model, number, read, reason, by)
    log_event(store, model, number, "promoted", reason, by)
    return record


def rollback(store, model: str, by: str) -> dict:
    """`tlpipe models rollback`: production back to the version it pointed at before."""
    read = alias(store, model)
    current = read[0]
    if current is None:
        raise RegistryError(f"{model} has no production version yet: nothing to roll back")
    if not current.get("history"):
        raise RegistryError(f"{model} version {current['version']} is the first production "
                            f"version: there is no earlier one to roll back to")
    previous = current["history"][-1]
    reason = f"rolled back from version {current['version']}"
    record = move_alias(store, model, previous, read, reason, by, rollback=True)
    log_event(store, model, previous, "rolled back", reason, by)
    return record


def who() -> str:
    """Who acts: $USER@host, for events done by hand."""
    import socket

    return f"{os.environ.get('USER') or os.environ.get('LOGNAME') or 'unknown'}@" \
           f"{socket.gethostname()}"


def _read_json(store, key: str):
    data, _ = store.read(key)
    return json.loads(data) if data is not None else None


def _json(value) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def _now() -> str:
    """UTC now, ISO 8601 with nanoseconds (sorts as text)."""
    nanoseconds = time.time_ns()
    return (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(nanoseconds // 10**9))
            + f".{nanoseconds % 10**9:09d}Z")

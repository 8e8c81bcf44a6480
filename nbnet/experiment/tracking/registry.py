"""Model versions: registering runs, the ``champion`` alias and its history.

A registered model (named after its experiment) has versions ``1, 2, …``; the alias
``champion`` names the one that is served, ``challenger`` the latest fine-tuned candidate
(``nbnet update``). Every move of ``champion`` — a sweep or ``nbnet train --register`` that beat
the incumbent (:func:`register_champion`), ``nbnet promote`` (:func:`nbnet.ops.promote.promote`),
``nbnet rollback``, ``nbnet monitor --rollback`` (:func:`nbnet.ops.promote.rollback`) — goes through
:func:`move_champion`, which records it three ways:

* **version tags** (visible on each version in the MLflow UI): on the new champion
  ``champion.since`` (UTC time), ``champion.replaced`` (the version it displaced) and
  ``champion.reason``; on the displaced one ``champion.until`` and ``champion.replaced_by``
  (and ``champion.rollback_reason`` when it was rolled back). A version that becomes champion
  again loses its stale ``until``/``replaced_by``.
* **``champion.stack``**, a registered-model tag: the JSON list of versions that were champion,
  oldest first, the current one last. A promotion pushes; a rollback pops. So the *previous
  champion* is always ``stack[-2]``, however many moves came before: after 1 → 2 → 3, rollback
  gives 2, a second rollback gives 1, a third has nothing left to roll back to.
  ``rollback --to N`` pops down to N if N is on the stack, else pushes N.
* **``champion.history``**, a registered-model tag: the JSON list of the latest moves
  ``{"at", "action", "from", "to", "reason"}`` (oldest dropped first: a registered-model tag
  holds 5000 characters on a SQL store).

If the alias was moved by something else (the MLflow UI), the stack is resynchronised: the
current alias is pushed before the next move. A registered model without a ``champion.stack``
tag gets its stack rebuilt from the ``champion.replaced`` chain of version tags.

Two processes moving the alias of one model at the same instant can interleave their tag
updates; the alias itself is always set last, so it is never left pointing at an unchecked
version.

Example
-------
>>> register_champion("iris", run_id, "val_accuracy", "maximize")  # doctest: +SKIP
(3, True)
>>> stack("iris")                                             # doctest: +SKIP
[1, 3]
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException

from nbnet.errors import NbnetError
from nbnet.experiment import tags as T
from nbnet.metrics import direction as metric_direction

from .client import client, default_tracking_uri, global_uri, retrying
from .pyfunc import MODEL_NAME

CHAMPION = "champion"  # the alias of the served version
CHALLENGER = "challenger"  # the alias of the latest fine-tuned candidate
_MAX_RM_TAG = 5000  # registered_model_tags.value is VARCHAR(5000) on SQL stores
ACTIONS = ("register", "promote", "rollback", "monitor-rollback")


def now() -> str:
    """The current UTC time as the champion tags record it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _code(e) -> str | None:
    return getattr(e, "error_code", None)


# --- looking things up ---------------------------------------------------------------------
def get_registered_model(name: str, uri: str | None = None):
    """The registered model ``name``, or NbnetError (one line) if there is none."""
    c = client(uri)
    try:
        return c.get_registered_model(name)
    except MlflowException as e:
        if _code(e) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            known = sorted(m.name for m in c.search_registered_models(max_results=50))
            hint = f"; registered models: {', '.join(known)}" if known else "; none is registered yet"
            raise NbnetError(f"no registered model named {name!r}{hint}") from None
        raise


def get_version(name: str, version, uri: str | None = None):
    """Model version ``version`` of ``name`` (NbnetError when the model or version is unknown)."""
    get_registered_model(name, uri)
    v = str(version)
    if not v.isdigit():
        raise NbnetError(f"--version must be a version number like 3, got {version!r}")
    try:
        return client(uri).get_model_version(name, v)
    except MlflowException as e:
        if _code(e) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            have = versions(name, uri)
            raise NbnetError(f"{name} has no version {v}; versions: {', '.join(map(str, have)) or 'none'}") from None
        raise


def versions(name: str, uri: str | None = None) -> list[int]:
    """The version numbers of ``name``, ascending."""
    return sorted(int(mv.version) for mv in client(uri).search_model_versions(f"name = '{name}'"))


def alias_version(name: str, alias: str = CHAMPION, uri: str | None = None):
    """The model version behind ``name@alias``, or None when the alias is not set."""
    try:
        return client(uri).get_model_version_by_alias(name, alias)
    except MlflowException as e:
        if _code(e) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            return None
        raise


@dataclass
class ModelRef:
    """What an MLflow model URI points at: ``uri`` (pinned to the version when there is one, so
    an alias that moves meanwhile does not change what is loaded), the registered ``name``,
    ``version``, the ``alias`` it was addressed by, and the ``run_id`` that logged it."""

    given: str
    uri: str
    name: str | None = None
    version: int | None = None
    alias: str | None = None
    run_id: str | None = None
    tags: dict = field(default_factory=dict)


def resolve(model_uri: str, uri: str | None = None) -> ModelRef:
    """Resolve ``models:/NAME@ALIAS``, ``models:/NAME/N``, ``runs:/RUN_ID/model`` (its registered
    version, when exactly one exists) or a local nbnet file (no registry information)."""
    s = str(model_uri)
    c = client(uri)
    if s.startswith("models:/"):
        body = s[len("models:/"):].strip("/")
        if "@" in body:
            name, alias = body.split("@", 1)
            get_registered_model(name, uri)
            mv = alias_version(name, alias, uri)
            if mv is None:
                raise NbnetError(f"{name} has no alias {alias!r}; set it with nbnet promote {name} --version N")
        else:
            name, _, ver = body.rpartition("/")
            if not name or not ver.isdigit():
                raise NbnetError(f"model URI {s!r} must look like models:/NAME@ALIAS or models:/NAME/VERSION")
            alias = None
            mv = get_version(name, ver, uri)
        return ModelRef(s, f"models:/{name}/{mv.version}", name, int(mv.version), alias, mv.run_id, dict(mv.tags))
    if s.startswith("runs:/"):
        run_id = s[len("runs:/"):].split("/", 1)[0]
        try:
            c.get_run(run_id)
        except MlflowException:
            raise NbnetError(f"no MLflow run {run_id!r} in {default_tracking_uri()}") from None
        mvs = c.search_model_versions(f"run_id = '{run_id}'")
        if len(mvs) == 1:
            mv = mvs[0]
            return ModelRef(s, s, mv.name, int(mv.version), None, run_id, dict(mv.tags))
        return ModelRef(s, s, None, None, None, run_id)
    return ModelRef(s, s)


# --- the alias history -----------------------------------------------------------------------
def _json_tag(tags: dict, key: str) -> list | None:
    try:
        v = json.loads(tags[key])
    except (KeyError, ValueError, TypeError):
        return None
    return v if isinstance(v, list) else None


def _chain_stack(name: str, current: int | None, uri: str | None) -> list[int]:
    """The stack of a registered model without a ``champion.stack`` tag: the
    ``champion.replaced`` tags followed back from the current champion."""
    c = client(uri)
    out: list[int] = []
    v = current
    while v is not None and v not in out:
        out.append(v)
        try:
            prev = c.get_model_version(name, str(v)).tags.get(T.CHAMPION_REPLACED)
        except MlflowException:
            break
        v = int(prev) if prev and str(prev).isdigit() else None
    return out[::-1]


def stack(name: str, uri: str | None = None) -> list[int]:
    """The versions that were champion, oldest first, the current champion last (see the module
    docstring). Brought in line with the live alias when something else moved it."""
    rm = get_registered_model(name, uri)
    cur = alias_version(name, CHAMPION, uri)
    cur_v = int(cur.version) if cur is not None else None
    st = _json_tag(dict(rm.tags), T.CHAMPION_STACK)
    if st is None:
        return _chain_stack(name, cur_v, uri)
    st = [int(v) for v in st if str(v).isdigit()]
    if cur_v is not None and (not st or st[-1] != cur_v):
        # moved without this bookkeeping (the MLflow UI, an older nbnet): the live alias is the
        # truth; the champion.replaced chain back to the recorded top fills in the moves between
        chain = _chain_stack(name, cur_v, uri)
        if st and st[-1] in chain:
            chain = chain[chain.index(st[-1]) + 1:]
        else:
            chain = [cur_v]
        st += chain
    return st


def history(name: str, uri: str | None = None) -> list[dict]:
    """The recorded moves of ``champion`` (latest last)."""
    return _json_tag(dict(get_registered_model(name, uri).tags), T.CHAMPION_HISTORY) or []


def _fit(items: list, limit: int = _MAX_RM_TAG) -> str:
    """JSON of the newest items that fit in ``limit`` characters (the oldest are dropped)."""
    while True:
        s = json.dumps(items, separators=(",", ":"))
        if len(s) <= limit or not items:
            return s
        items = items[max(1, len(items) // 10):]


def move_champion(name: str, version: int, *, action: str, reason: str, uri: str | None = None,
                  old=None, new_stack: list[int] | None = None) -> int | None:
    """Point ``champion`` of ``name`` at ``version`` and record the move (version tags,
    ``champion.stack``, ``champion.history``). ``action`` is one of :data:`ACTIONS`; ``old`` is
    the current champion's model version if the caller has it; ``new_stack`` replaces the
    default (push ``version``). Returns the version that was champion before (or None)."""
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {ACTIONS}, got {action!r}")  # a bug, not a user error
    c = client(uri)
    version = int(version)
    if old is None:
        old = alias_version(name, CHAMPION, uri)
    old_v = int(old.version) if old is not None else None
    st = stack(name, uri)
    if new_stack is None:
        new_stack = st + ([version] if not st or st[-1] != version else [])
    events = history(name, uri)
    events.append({"at": now(), "action": action, "from": old_v, "to": version, "reason": reason[:300]})
    ts = events[-1]["at"]
    v = str(version)
    # version tags first, the alias last: a crash in between leaves the alias where it was
    mv_tags = dict(c.get_model_version(name, v).tags)
    for stale in (T.CHAMPION_UNTIL, T.CHAMPION_REPLACED_BY, T.CHAMPION_ROLLBACK_REASON):
        if stale in mv_tags:
            c.delete_model_version_tag(name, v, stale)
    c.set_model_version_tag(name, v, T.CHAMPION_SINCE, ts)
    c.set_model_version_tag(name, v, T.CHAMPION_REASON, f"{action}: {reason}"[:5000])
    if old_v is not None and old_v != version:
        c.set_model_version_tag(name, v, T.CHAMPION_REPLACED, str(old_v))
        c.set_model_version_tag(name, str(old_v), T.CHAMPION_UNTIL, ts)
        c.set_model_version_tag(name, str(old_v), T.CHAMPION_REPLACED_BY, v)
        if action in ("rollback", "monitor-rollback"):
            c.set_model_version_tag(name, str(old_v), T.CHAMPION_ROLLBACK_REASON, reason[:5000])
    c.set_registered_model_tag(name, T.CHAMPION_STACK, _fit(new_stack))
    c.set_registered_model_tag(name, T.CHAMPION_HISTORY, _fit(events))
    c.set_registered_model_alias(name, CHAMPION, v)
    return old_v


# --- registering a run as a version ------------------------------------------------------------
def create_version(name: str, run_id: str, uri: str | None = None):
    """Register ``runs:/<run_id>/model`` as a new version of ``name`` (created if missing);
    returns the ModelVersion."""
    uri = uri or default_tracking_uri()
    c = client(uri)
    try:
        c.create_registered_model(name)
    except MlflowException as e:
        if _code(e) != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = c.get_run(run_id).data.tags.get(T.MODEL_ID)
    with global_uri(uri):  # the SQL registry resolves models:/<model_id> through the global URI
        if model_id:
            return retrying(c.create_model_version, name, f"models:/{model_id}", run_id=run_id,
                            model_id=model_id, await_creation_for=0)
        # a model logged by other means: let MLflow resolve runs:/<id>/model
        return mlflow.register_model(f"runs:/{run_id}/{MODEL_NAME}", name, await_registration_for=0)


def register_champion(name: str, run_id: str, metric_key: str, direction: str,
                      uri: str | None = None) -> tuple[int, bool]:
    """Register ``runs:/<run_id>/model`` as a new version of ``name`` and move the alias
    ``champion`` to it only if its run's ``metric_key`` beats the current champion's
    (``direction`` "maximize" or "minimize"; a tie keeps the incumbent) or there is none.

    Every version gets tags ``nbnet.metric_key``, ``nbnet.metric`` and ``nbnet.promoted``; the
    alias history is kept as version tags: ``champion.since`` (and ``champion.replaced``) on the
    new champion, ``champion.until`` and ``champion.replaced_by`` on the one it displaced, and
    as the model's ``champion.stack``/``champion.history`` tags (see the module docstring).
    Returns ``(version, promoted)``.
    """
    if direction not in ("maximize", "minimize"):
        raise NbnetError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
    uri = uri or default_tracking_uri()
    c = client(uri)
    new = metric_of(c, run_id, metric_key)
    if new is None:
        raise NbnetError(f"run {run_id} has no finite metric {metric_key!r}; cannot compare it with the champion")
    version = str(create_version(name, run_id, uri).version)
    try:
        old = c.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        old = None
    old_metric = None if old is None or old.run_id is None else metric_of(c, old.run_id, metric_key)
    if old is None or old_metric is None:
        promoted, why = True, "no champion yet" if old is None else f"champion v{old.version} has no {metric_key}"
    else:
        better = new > old_metric if direction == "maximize" else new < old_metric
        promoted = bool(better)
        why = f"{metric_key} {new:.6g} vs champion v{old.version} {old_metric:.6g} ({direction})"
    for k, v in {T.METRIC_KEY: metric_key, T.METRIC: repr(new), T.DIRECTION: direction,
                 T.PROMOTED: str(promoted).lower(), T.PROMOTION_REASON: why}.items():
        c.set_model_version_tag(name, version, k, v)
    if promoted:  # alias, champion.* version tags and the champion.stack/history of the model
        move_champion(name, int(version), action="register", reason=why, uri=uri, old=old)
    return int(version), promoted


# --- the metric a version is judged by ----------------------------------------------------------
def metric_of(c: mlflow.MlflowClient, run_id: str, key: str) -> float | None:
    """The run's final value of metric ``key``; None when it has none or it is not finite."""
    v = c.get_run(run_id).data.metrics.get(key)
    return None if v is None or not np.isfinite(v) else float(v)


def metric_key(mv, uri: str | None = None) -> str | None:
    """The metric a version was selected on: its ``nbnet.metric_key`` tag, else its run's
    ``search.metric`` param."""
    key = (mv.tags or {}).get(T.METRIC_KEY)
    if key:
        return key
    if mv.run_id:
        try:
            return client(uri).get_run(mv.run_id).data.params.get("search.metric")
        except MlflowException:
            return None
    return None


def recorded_metric(mv, key: str, uri: str | None = None) -> float | None:
    """The version's recorded validation value of ``key``: its run's metric (final value)."""
    if not mv.run_id:
        return None
    try:
        return metric_of(client(uri), mv.run_id, key)
    except MlflowException:
        return None


def direction_of(mv, key: str) -> str:
    """The version's ``nbnet.direction`` tag, else the direction of the metric ``key``."""
    d = (mv.tags or {}).get(T.DIRECTION)
    if d in ("maximize", "minimize"):
        return d
    return metric_direction(key)

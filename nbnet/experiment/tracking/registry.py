"""Model versions: the ``champion`` alias, its history, the promotion gate and rollback.

A registered model (named after its experiment) has versions ``1, 2, …``; the alias
``champion`` names the one that is served, ``challenger`` the latest fine-tuned candidate
(``nbnet update``). Every move of ``champion`` — a sweep or ``nbnet train --register`` that beat
the incumbent (:func:`nbnet.experiment.tracking.register_champion`), ``nbnet promote``, ``nbnet rollback``,
``nbnet monitor --rollback`` — goes through :func:`move_champion`, which records it three ways:

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
current alias is pushed before the next move. A model registered before this bookkeeping
existed gets its stack rebuilt from the ``champion.replaced`` chain of version tags.

Two processes moving the alias of one model at the same instant can interleave their tag
updates; the alias itself is always set last, so it is never left pointing at an unchecked
version.

Example
-------
>>> promote("iris", 3, tolerance=0.01)                     # doctest: +SKIP
>>> rollback("iris", reason="drift in petal_length")       # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from nbnet.experiment import tracking
from nbnet.errors import NbnetError

CHAMPION = tracking.CHAMPION
CHALLENGER = "challenger"
STACK_TAG = "champion.stack"
HISTORY_TAG = "champion.history"
_MAX_RM_TAG = 5000  # registered_model_tags.value is VARCHAR(5000) on SQL stores
ACTIONS = ("register", "promote", "rollback", "monitor-rollback")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _code(e) -> str | None:
    return getattr(e, "error_code", None)


# --- looking things up ---------------------------------------------------------------------
def get_registered_model(name: str, uri: str | None = None):
    """The registered model ``name``, or NbnetError (one line) if there is none."""
    c = tracking.client(uri)
    try:
        return c.get_registered_model(name)
    except tracking.MlflowException as e:
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
        return tracking.client(uri).get_model_version(name, v)
    except tracking.MlflowException as e:
        if _code(e) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
            have = versions(name, uri)
            raise NbnetError(f"{name} has no version {v}; versions: {', '.join(map(str, have)) or 'none'}") from None
        raise


def versions(name: str, uri: str | None = None) -> list[int]:
    return sorted(int(mv.version) for mv in tracking.client(uri).search_model_versions(f"name = '{name}'"))


def alias_version(name: str, alias: str = CHAMPION, uri: str | None = None):
    """The model version behind ``name@alias``, or None when the alias is not set."""
    try:
        return tracking.client(uri).get_model_version_by_alias(name, alias)
    except tracking.MlflowException as e:
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
    c = tracking.client(uri)
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
        except tracking.MlflowException:
            raise NbnetError(f"no MLflow run {run_id!r} in {tracking.default_tracking_uri()}") from None
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
    """Rebuild the stack of a model registered before ``champion.stack`` existed: follow the
    ``champion.replaced`` tags back from the current champion."""
    c = tracking.client(uri)
    out: list[int] = []
    v = current
    while v is not None and v not in out:
        out.append(v)
        try:
            prev = c.get_model_version(name, str(v)).tags.get("champion.replaced")
        except tracking.MlflowException:
            break
        v = int(prev) if prev and str(prev).isdigit() else None
    return out[::-1]


def stack(name: str, uri: str | None = None) -> list[int]:
    """The versions that were champion, oldest first, the current champion last (see the module
    docstring). Brought in line with the live alias when something else moved it."""
    rm = get_registered_model(name, uri)
    cur = alias_version(name, CHAMPION, uri)
    cur_v = int(cur.version) if cur is not None else None
    st = _json_tag(dict(rm.tags), STACK_TAG)
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
    return _json_tag(dict(get_registered_model(name, uri).tags), HISTORY_TAG) or []


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
    c = tracking.client(uri)
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
    for stale in ("champion.until", "champion.replaced_by", "champion.rollback_reason"):
        if stale in mv_tags:
            c.delete_model_version_tag(name, v, stale)
    c.set_model_version_tag(name, v, "champion.since", ts)
    c.set_model_version_tag(name, v, "champion.reason", f"{action}: {reason}"[:5000])
    if old_v is not None and old_v != version:
        c.set_model_version_tag(name, v, "champion.replaced", str(old_v))
        c.set_model_version_tag(name, str(old_v), "champion.until", ts)
        c.set_model_version_tag(name, str(old_v), "champion.replaced_by", v)
        if action in ("rollback", "monitor-rollback"):
            c.set_model_version_tag(name, str(old_v), "champion.rollback_reason", reason[:5000])
    c.set_registered_model_tag(name, STACK_TAG, _fit(new_stack))
    c.set_registered_model_tag(name, HISTORY_TAG, _fit(events))
    c.set_registered_model_alias(name, CHAMPION, v)
    return old_v


# --- registering a run as a version ------------------------------------------------------------
def create_version(name: str, run_id: str, uri: str | None = None):
    """Register ``runs:/<run_id>/model`` as a new version of ``name`` (created if missing);
    returns the ModelVersion."""
    import mlflow  # registration needs MLflow's module-level helpers

    uri = uri or tracking.default_tracking_uri()
    c = tracking.client(uri)
    try:
        c.create_registered_model(name)
    except tracking.MlflowException as e:
        if _code(e) != "RESOURCE_ALREADY_EXISTS":
            raise
    model_id = c.get_run(run_id).data.tags.get("nbnet.model_id")
    with tracking.global_uri(uri):  # the SQL registry resolves models:/<model_id> through the global URI
        if model_id:
            return tracking.retrying(c.create_model_version, name, f"models:/{model_id}", run_id=run_id,
                                      model_id=model_id, await_creation_for=0)
        # a model logged by other means: let MLflow resolve runs:/<id>/model
        return mlflow.register_model(f"runs:/{run_id}/{tracking.MODEL_NAME}", name, await_registration_for=0)


# --- the metric a version is judged by ----------------------------------------------------------
def metric_key(mv, uri: str | None = None) -> str | None:
    """The metric a version was selected on: its ``nbnet.metric_key`` tag, else its run's
    ``search.metric`` param."""
    key = (mv.tags or {}).get("nbnet.metric_key")
    if key:
        return key
    if mv.run_id:
        try:
            return tracking.client(uri).get_run(mv.run_id).data.params.get("search.metric")
        except tracking.MlflowException:
            return None
    return None


def recorded_metric(mv, key: str, uri: str | None = None) -> float | None:
    """The version's recorded validation value of ``key``: its run's metric (final value)."""
    if not mv.run_id:
        return None
    try:
        return tracking.metric_of(tracking.client(uri), mv.run_id, key)
    except tracking.MlflowException:
        return None


def direction_of(mv, key: str) -> str:
    d = (mv.tags or {}).get("nbnet.direction")
    if d in ("maximize", "minimize"):
        return d
    from nbnet.metrics import direction

    return direction(key)


def worse_by(candidate: float, incumbent: float, direction: str) -> float:
    """How much worse ``candidate`` is than ``incumbent`` (negative: better)."""
    return incumbent - candidate if direction == "maximize" else candidate - incumbent


# --- promote and rollback ------------------------------------------------------------------------
@dataclass
class GateResult:
    name: str
    version: int
    champion: int | None  # the champion before
    passed: bool
    moved: bool
    metric: str | None = None
    direction: str | None = None
    source: str = ""  # "holdout DATA (n rows)" or "recorded validation metrics"
    candidate_value: float | None = None
    champion_value: float | None = None
    tolerance: float = 0.0
    reason: str = ""

    def lines(self) -> list[str]:
        out = []
        if self.metric and self.candidate_value is not None and self.champion_value is not None:
            out.append(f"gate: {self.metric} on {self.source}: v{self.version} {self.candidate_value:.6g} vs champion "
                       f"v{self.champion} {self.champion_value:.6g} ({self.direction}, tolerance {self.tolerance:g})")
        out.append(("PASS: " if self.passed else "FAIL: ") + self.reason)
        if self.moved:
            out.append(f"champion: {'v' + str(self.champion) if self.champion else 'none'} → v{self.version}  "
                       f"(models:/{self.name}@{CHAMPION})")
        else:
            out.append(f"champion unchanged: {'v' + str(self.champion) if self.champion else 'none'}")
        return out


def default_tolerance(mv=None, uri: str | None = None) -> float:
    """``monitor.tolerance`` of the version's training run (its experiment file's [monitor]
    table, logged as a param), else the config default."""
    from nbnet.experiment.config import MonitorConfig

    if mv is not None and mv.run_id:
        try:
            v = tracking.client(uri).get_run(mv.run_id).data.params.get("monitor.tolerance")
            if v is not None:
                return float(v)
        except (tracking.MlflowException, ValueError):
            pass
    return MonitorConfig().tolerance


def _holdout_scores(key: str, refs: list, data, target: str | None) -> tuple[list[float], int]:
    """Each model's ``key`` on the same holdout file (each read with its own feature columns)."""
    from nbnet.ops.monitor import load_labelled, score

    out, rows = [], 0
    for ref in refs:
        est, spec = tracking.load_model(ref)
        X, y, _ = load_labelled(data, spec, target, est, require_target=True)
        v = score(est, X, y, key)
        if v is None:
            raise NbnetError(f"{key} cannot be computed on {data} for {ref}; pick another metric or data")
        out.append(v)
        rows = len(X)
    return out, rows


def promote(name: str, version, *, data=None, target: str | None = None, tolerance: float | None = None,
            uri: str | None = None) -> GateResult:
    """Move ``champion`` of ``name`` to ``version`` if it passes the gate: not worse than the
    current champion by more than ``tolerance`` on the metric the model is selected on,
    measured on ``data`` (a CSV/Parquet/NPZ file with the ``target`` column) when given, else
    on each version's recorded validation metric. No champion yet: promoted directly."""
    uri = uri or tracking.default_tracking_uri()
    mv = get_version(name, version, uri)
    v = int(mv.version)
    if tolerance is not None and not tolerance >= 0:
        raise NbnetError(f"--tolerance must be a number >= 0, got {tolerance}")
    old = alias_version(name, CHAMPION, uri)
    if old is None:
        move_champion(name, v, action="promote", reason="no champion yet", uri=uri, old=old)
        return GateResult(name, v, None, True, True, reason="no champion yet: promoted directly")
    old_v = int(old.version)
    if old_v == v:
        return GateResult(name, v, old_v, True, False, reason=f"v{v} is already the champion")
    tol = default_tolerance(mv, uri) if tolerance is None else float(tolerance)
    key = metric_key(mv, uri) or metric_key(old, uri)
    if key is None:
        raise NbnetError(f"neither v{v} nor champion v{old_v} records the metric it was selected on "
                         "(tag nbnet.metric_key); register versions with nbnet train --register or a sweep")
    direction = direction_of(mv, key)
    if data is not None:
        (cand, champ), rows = _holdout_scores(key, [f"models:/{name}/{v}", f"models:/{name}/{old_v}"], data, target)
        source = f"holdout {data} ({rows} rows)"
    else:
        cand, champ = recorded_metric(mv, key, uri), recorded_metric(old, key, uri)
        missing = [f"v{x}" for x, val in ((v, cand), (old_v, champ)) if val is None]
        if missing:
            raise NbnetError(f"{' and '.join(missing)} record no {key}; compare on a holdout instead: "
                             f"--data FILE --target COLUMN")
        source = "recorded validation metrics (each version's own validation split)"
    gap = worse_by(cand, champ, direction)
    res = GateResult(name, v, old_v, gap <= tol, False, key, direction, source, cand, champ, tol)
    if res.passed:
        how = "better than" if gap < 0 else "as good as" if gap == 0 else f"worse by {gap:.4g} (within {tol:g}) than"
        res.reason = f"v{v} is {how} champion v{old_v} on {key}"
        move_champion(name, v, action="promote", uri=uri, old=old,
                      reason=f"{key} {cand:.6g} vs v{old_v} {champ:.6g} on {source}, tolerance {tol:g}")
        res.moved = True
    else:
        res.reason = f"v{v} is worse than champion v{old_v} by {gap:.4g} on {key} (> tolerance {tol:g}); champion stays v{old_v}"
    c = tracking.client(uri)
    c.set_model_version_tag(name, str(v), "nbnet.gate", f"{'pass' if res.passed else 'fail'} at {now()}: {res.reason}"[:5000])
    return res


def rollback(name: str, to=None, *, reason: str = "manual rollback", action: str = "rollback",
             uri: str | None = None) -> tuple[int, int]:
    """Move ``champion`` of ``name`` back to the previous champion (``stack[-2]``) or to
    version ``to``; returns ``(from_version, to_version)``. NbnetError when there is nothing to
    roll back to."""
    uri = uri or tracking.default_tracking_uri()
    get_registered_model(name, uri)
    old = alias_version(name, CHAMPION, uri)
    if old is None:
        raise NbnetError(f"{name} has no champion to roll back; promote one with nbnet promote {name} --version N")
    old_v = int(old.version)
    st = stack(name, uri)
    if to is not None:
        target = int(get_version(name, to, uri).version)
        if target == old_v:
            raise NbnetError(f"v{target} is already the champion of {name}; nothing to roll back")
        if target in st:  # pop down to its latest place on the stack
            new_stack = st[: len(st) - st[::-1].index(target)]
        else:  # a version that never was champion: pushed, so a later rollback returns here
            new_stack = st + [target]
    else:
        if len(st) < 2:
            raise NbnetError(f"{name} has no previous champion to roll back to (champion history: "
                             f"{' → '.join(f'v{x}' for x in st) or 'empty'}); use --to N")
        target, new_stack = st[-2], st[:-1]
    move_champion(name, target, action=action, reason=reason, uri=uri, old=old, new_stack=new_stack)
    return old_v, target


__all__ = ["CHAMPION", "CHALLENGER", "resolve", "ModelRef", "stack", "history", "move_champion", "create_version",
           "promote", "rollback", "GateResult", "get_version", "get_registered_model", "alias_version"]

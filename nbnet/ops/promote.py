"""``nbnet promote`` and ``nbnet rollback``: the gate a version passes before it becomes
``champion``, and the way back to an earlier champion.

A version is promoted when it is not worse than the current champion by more than a tolerance on
the metric the model is selected on, measured on a labelled holdout file when one is given, else
on each version's recorded validation metric. The move itself, and its record in the alias
history, is :func:`nbnet.experiment.tracking.registry.move_champion`; going back is :func:`rollback`.

Example
-------
>>> res = promote("iris", 3, tolerance=0.01)                   # doctest: +SKIP
>>> print("\\n".join(res.lines()))                             # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow.exceptions import MlflowException

from nbnet.errors import NbnetError
from nbnet.experiment import tags as T
from nbnet.experiment import tracking
from nbnet.experiment.config import MonitorConfig
from nbnet.experiment.tracking import registry
from nbnet.ops.labelled import load_labelled, score


@dataclass
class GateResult:
    """The gate's verdict on ``version`` of ``name`` and whether ``champion`` moved to it."""

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
                       f"(models:/{self.name}@{registry.CHAMPION})")
        else:
            out.append(f"champion unchanged: {'v' + str(self.champion) if self.champion else 'none'}")
        return out


def default_tolerance(mv=None, uri: str | None = None) -> float:
    """``monitor.tolerance`` of the version's training run (its experiment file's [monitor]
    table, logged as a param), else the config default."""
    if mv is not None and mv.run_id:
        try:
            v = tracking.client(uri).get_run(mv.run_id).data.params.get("monitor.tolerance")
            if v is not None:
                return float(v)
        except (MlflowException, ValueError):
            pass
    return MonitorConfig().tolerance


def _holdout_scores(key: str, refs: list, data, target: str | None) -> tuple[list[float], int]:
    """Each model's ``key`` on the same holdout file (each read with its own feature columns)."""
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


def _measure(name: str, mv, old, key: str, data, target: str | None, uri: str) -> tuple[float, float, str]:
    """``(candidate value, champion value, where they were measured)`` of ``key``."""
    v, old_v = int(mv.version), int(old.version)
    if data is not None:
        (cand, champ), rows = _holdout_scores(key, [f"models:/{name}/{v}", f"models:/{name}/{old_v}"], data, target)
        return cand, champ, f"holdout {data} ({rows} rows)"
    cand, champ = registry.recorded_metric(mv, key, uri), registry.recorded_metric(old, key, uri)
    missing = [f"v{x}" for x, val in ((v, cand), (old_v, champ)) if val is None]
    if missing:
        raise NbnetError(f"{' and '.join(missing)} record no {key}; compare on a holdout instead: "
                         f"--data FILE --target COLUMN")
    return cand, champ, "recorded validation metrics (each version's own validation split)"


def promote(name: str, version, *, data=None, target: str | None = None, tolerance: float | None = None,
            uri: str | None = None) -> GateResult:
    """Move ``champion`` of ``name`` to ``version`` if it passes the gate: not worse than the
    current champion by more than ``tolerance`` on the metric the model is selected on,
    measured on ``data`` (a CSV/Parquet/NPZ file with the ``target`` column) when given, else
    on each version's recorded validation metric. No champion yet: promoted directly."""
    uri = uri or tracking.default_tracking_uri()
    mv = registry.get_version(name, version, uri)
    v = int(mv.version)
    if tolerance is not None and not tolerance >= 0:
        raise NbnetError(f"--tolerance must be a number >= 0, got {tolerance}")
    old = registry.alias_version(name, registry.CHAMPION, uri)
    if old is None:
        registry.move_champion(name, v, action="promote", reason="no champion yet", uri=uri, old=old)
        return GateResult(name, v, None, True, True, reason="no champion yet: promoted directly")
    old_v = int(old.version)
    if old_v == v:
        return GateResult(name, v, old_v, True, False, reason=f"v{v} is already the champion")
    tol = default_tolerance(mv, uri) if tolerance is None else float(tolerance)
    key = registry.metric_key(mv, uri) or registry.metric_key(old, uri)
    if key is None:
        raise NbnetError(f"neither v{v} nor champion v{old_v} records the metric it was selected on "
                         "(tag nbnet.metric_key); register versions with nbnet train --register or a sweep")
    direction = registry.direction_of(mv, key)
    cand, champ, source = _measure(name, mv, old, key, data, target, uri)
    gap = worse_by(cand, champ, direction)
    res = GateResult(name, v, old_v, gap <= tol, False, key, direction, source, cand, champ, tol)
    if res.passed:
        how = "better than" if gap < 0 else "as good as" if gap == 0 else f"worse by {gap:.4g} (within {tol:g}) than"
        res.reason = f"v{v} is {how} champion v{old_v} on {key}"
        registry.move_champion(name, v, action="promote", uri=uri, old=old,
                               reason=f"{key} {cand:.6g} vs v{old_v} {champ:.6g} on {source}, tolerance {tol:g}")
        res.moved = True
    else:
        res.reason = (f"v{v} is worse than champion v{old_v} by {gap:.4g} on {key} (> tolerance {tol:g}); "
                      f"champion stays v{old_v}")
    verdict = f"{'pass' if res.passed else 'fail'} at {registry.now()}: {res.reason}"
    tracking.client(uri).set_model_version_tag(name, str(v), T.GATE, verdict[:5000])
    return res


__all__ = ["GateResult", "default_tolerance", "promote"]


def worse_by(candidate: float, incumbent: float, direction: str) -> float:
    """How much worse ``candidate`` is than ``incumbent`` (negative: better)."""
    return incumbent - candidate if direction == "maximize" else candidate - incumbent


# --- rollback ------------------------------------------------------------------------------------


def rollback(name: str, to=None, *, reason: str = "manual rollback", action: str = "rollback",
             uri: str | None = None) -> tuple[int, int]:
    """Move ``champion`` of ``name`` back to the previous champion (the top but one of ``registry.stack``) or to
    version ``to``; returns ``(from_version, to_version)``. NbnetError when there is nothing to
    roll back to."""
    uri = uri or tracking.default_tracking_uri()
    registry.get_registered_model(name, uri)
    old = registry.alias_version(name, registry.CHAMPION, uri)
    if old is None:
        raise NbnetError(f"{name} has no champion to roll back; promote one with nbnet promote {name} --version N")
    old_v = int(old.version)
    st = registry.stack(name, uri)
    if to is not None:
        target = int(registry.get_version(name, to, uri).version)
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
    registry.move_champion(name, target, action=action, reason=reason, uri=uri, old=old, new_stack=new_stack)
    return old_v, target

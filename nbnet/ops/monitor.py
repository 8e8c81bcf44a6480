"""Monitoring a model: input drift against its training statistics, and its metric on new labels.

``check(MODEL_URI, DATA)`` (``nbnet monitor``) compares new data with what the model learned from:

* **Input drift, per feature**, against ``Preprocessor.stats_`` stored in the model file (the raw
  training columns: 10 quantile bins and exact counts per bin, see
  :func:`nbnet.data.prep.feature_stats`). The new column is counted in the *same* bins with
  :func:`nbnet.data.prep.histogram_counts`, then

  - **PSI** (population stability index) ``Σ (q − p) · ln(q / p)`` over the bins, ``p`` the
    training and ``q`` the new proportions, each clipped below at ``1e-4`` so an empty bin does
    not give infinity. When either side has missing values (NaN) they form one more bin, so a
    change in the missing rate counts as drift. Rules of thumb: < 0.1 stable, 0.1–0.25 a
    moderate shift, > 0.25 a significant one.
  - **KS**, the two-sample Kolmogorov–Smirnov statistic ``max |F_train − F_new|`` of the
    non-missing values, evaluated at the stored bin edges (where the training CDF is known
    exactly). It is the KS statistic of the two samples binned at the training deciles — equal
    to ``scipy.stats.ks_2samp`` of the bin indices — and a lower bound of the statistic of the
    raw samples, below it by at most the largest share of either sample in one bin (0.1 for
    the training deciles of a continuous feature).

  Both are noisy on small samples: with ``m`` new rows, PSI of data from the training
  distribution itself is about ``9 / m`` (10 bins), and KS about ``1 / sqrt(m)``.
* **Performance**, when DATA has the target column: the model's metric (the one it was selected
  on: the version's ``nbnet.metric_key`` tag, else its run's ``search.metric``) on the new data,
  against the value recorded on its validation split (its run's metric). It fails when the new
  value is worse by more than the tolerance (in the metric's units).

Thresholds (``psi``, ``ks``, ``tolerance``) come from, in order: the command-line flags, the
``[monitor]`` table of ``--experiment FILE``, the ``[monitor]`` table of the experiment the model
was trained with (stored in the model), and the defaults of :class:`nbnet.experiment.config.MonitorConfig`.

Every check is an MLflow run in the experiment ``<registered model name>-monitoring`` (kept apart
from the training runs, so the sweep's table stays comparable; for a run that is not registered,
``<its experiment>-monitoring``, for a local file ``<file stem>-monitoring``): params (thresholds, model URI,
version, run, data path, rows and hash), metrics (``psi/<feature>``, ``ks/<feature>``,
``psi_max``, ``ks_max``, ``drifted_features``, the metric on the new data, the recorded one and
the drop), ``monitor/report.json`` and ``monitor/drift.csv``, and tags ``nbnet.verdict``
(``pass``/``fail``) and ``nbnet.verdict_reason``. The monitored version gets the tags
``monitor.last_verdict`` and ``monitor.last_run``.

With ``rollback=True`` a failed check of the champion (``models:/NAME@champion`` or its version)
moves ``champion`` back to the previous champion (:func:`nbnet.ops.promote.rollback`), recorded in
the alias history, the version tags and the monitoring run (tag ``nbnet.rollback``).
"""

from __future__ import annotations

import csv
import json
import math
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from mlflow.exceptions import MlflowException

from nbnet import metrics
from nbnet._sys.fmt import number
from nbnet.data.load import data_hash
from nbnet.data.prep import histogram_counts
from nbnet.errors import NbnetError
from nbnet.experiment import config as C
from nbnet.experiment import tags as T
from nbnet.experiment import tracking
from nbnet.experiment.tracking import registry
from nbnet.ops.labelled import load_labelled, score, task_of
from nbnet.ops.promote import rollback, worse_by

PSI_EPS = 1e-4  # proportions are clipped below at this, so an empty bin adds a finite amount


# --- the statistics (pure functions of counts) ------------------------------------------------
def psi(expected, actual, eps: float = PSI_EPS) -> np.ndarray:
    """Population stability index of each row of the bin counts ``expected`` (d, B) (training)
    and ``actual`` (d, B) (new data): ``Σ_b (q_b − p_b) ln(q_b / p_b)`` with the proportions
    ``p = expected / Σ expected``, ``q = actual / Σ actual`` clipped below at ``eps``. NaN for a
    row with no count on either side. Shape (d,)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    se, sa = e.sum(1, keepdims=True), a.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.clip(e / se, eps, None)
        q = np.clip(a / sa, eps, None)
        out = ((q - p) * np.log(q / p)).sum(1)
    out[(se[:, 0] == 0) | (sa[:, 0] == 0)] = np.nan
    return out


def ks_binned(expected, actual) -> np.ndarray:
    """Two-sample KS statistic ``max_k |P_train(x < e_k) − P_new(x < e_k)|`` over the inner bin
    edges, from the bin counts (d, B) of both samples. NaN for a row with no count on either
    side. Shape (d,)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    se, sa = e.sum(1, keepdims=True), a.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        F = np.cumsum(e, 1)[:, :-1] / se
        G = np.cumsum(a, 1)[:, :-1] / sa
        out = np.abs(F - G).max(1) if e.shape[1] > 1 else np.zeros(len(e))
    out[(se[:, 0] == 0) | (sa[:, 0] == 0)] = np.nan
    return out


def drift(stats: dict, X) -> dict[str, np.ndarray]:
    """Per-feature drift of ``X`` (m, d) against training ``stats`` (``Preprocessor.stats_``):
    ``psi``, ``ks`` (d,), the new bin ``counts`` (d, B), ``mean``, ``missing`` (fraction of NaN)
    for new and training data."""
    X = np.asarray(X, dtype=np.float64)
    edges = np.asarray(stats["edges"], dtype=np.float64)
    train = np.asarray(stats["counts"], dtype=np.int64)
    if X.ndim != 2 or X.shape[1] != edges.shape[0]:
        raise NbnetError(f"the data has {X.shape[-1]} features but the model's training statistics cover {edges.shape[0]}")
    new = histogram_counts(X, np.nan_to_num(edges))
    train_missing = np.asarray(stats["n_missing"], dtype=np.int64)
    new_missing = np.isnan(X).sum(0)
    ks = ks_binned(train, new)
    dead = ~np.isfinite(edges).all(1)  # a column with no training values has no bins
    ks[dead] = np.nan
    with_missing = (train_missing > 0) | (new_missing > 0)
    pe, pa = train, new
    if with_missing.any():  # missing values are one more bin of the PSI
        pe = np.concatenate([train, train_missing[:, None]], 1)
        pa = np.concatenate([new, new_missing[:, None]], 1)
        pe[~with_missing, -1] = pa[~with_missing, -1] = 0
    p = psi(pe, pa)
    p[dead & ~with_missing] = np.nan
    n_train = int(np.asarray(stats["n"]).ravel()[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column has a NaN mean
        new_mean = np.nanmean(X, 0) if len(X) else np.full(X.shape[1], np.nan)
    return {"psi": p, "ks": ks, "counts": new, "train_mean": np.asarray(stats["mean"], dtype=np.float64),
            "new_mean": new_mean, "train_missing": train_missing / max(n_train, 1),
            "new_missing": new_missing / max(len(X), 1)}


# --- thresholds ---------------------------------------------------------------------------------
def thresholds(est=None, *, psi=None, ks=None, tolerance=None, experiment=None) -> dict:
    """``{"psi", "ks", "tolerance", "source"}``: flags, else ``experiment``'s [monitor] table,
    else the model's stored config, else :class:`nbnet.experiment.config.MonitorConfig` defaults."""
    base, source = C.MonitorConfig(), "defaults"
    stored = ((getattr(est, "config_", None) or {}).get("monitor")) if est is not None else None
    if experiment is not None:
        base, source = C.load_experiment(experiment).monitor, f"experiment {experiment}"
    elif isinstance(stored, dict) and stored:
        try:
            base, source = C.monitor_config(stored), "the model's experiment config"
        except NbnetError:
            pass
    out = {"psi": base.psi, "ks": base.ks, "tolerance": base.tolerance}
    flags = {"psi": psi, "ks": ks, "tolerance": tolerance}
    for k, v in flags.items():
        if v is not None:
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise NbnetError(f"--{k} must be a number >= 0, got {v!r}")
            out[k] = float(v)
    if any(v is not None for v in flags.values()):
        source = "flags" if all(v is not None for v in flags.values()) else f"flags, else {source}"
    out["source"] = source
    return out


# --- the check ----------------------------------------------------------------------------------
@dataclass
class Report:
    model_uri: str
    data: str
    rows: int
    name: str | None
    version: int | None
    run_id: str | None
    thresholds: dict
    features: list[dict]
    metric: dict | None = None  # key, direction, new, recorded, drop, failed
    verdict: str = "pass"
    reasons: list[str] = field(default_factory=list)
    monitoring_run: str | None = None
    experiment: str | None = None
    rollback: str | None = None  # what happened about a rollback, if one was asked for
    data_hash: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.verdict == "fail"

    def drifted(self) -> list[dict]:
        return [f for f in self.features if f["drift"]]

    def to_dict(self) -> dict:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v

        return clean({k: getattr(self, k) for k in ("model_uri", "data", "rows", "name", "version", "run_id",
                                                    "thresholds", "verdict", "reasons", "metric", "rollback",
                                                    "monitoring_run", "experiment", "data_hash", "notes",
                                                    "features")})

    def text(self, worst: int = 5) -> str:
        t = self.thresholds
        what = f"v{self.version} of {self.name}" if self.version else self.model_uri
        lines = [f"monitor {self.model_uri} ({what}) on {Path(self.data).name}: {self.rows} rows",
                 f"drift: {len(self.drifted())} of {len(self.features)} features past PSI > {t['psi']:g} or "
                 f"KS > {t['ks']:g}  (thresholds from {t['source']})"]
        ranked = sorted(self.features, key=lambda f: (-_num(f["psi"]), -_num(f["ks"])))[:worst]
        if ranked:
            w = max(7, *(len(f["feature"]) for f in ranked))
            lines.append(f"  {'feature':<{w}}  {'psi':>8}  {'ks':>6}")
            for f in ranked:
                lines.append(f"  {f['feature']:<{w}}  {number(f['psi'], 4):>8}  {number(f['ks'], 4):>6}"
                             + ("  DRIFT" if f["drift"] else ""))
        lines.append(self._metric_line())
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"verdict: {self.verdict.upper()}" + (f" ({'; '.join(self.reasons)})" if self.reasons else ""))
        if self.rollback:
            lines.append(f"rollback: {self.rollback}")
        if self.monitoring_run:
            lines.append(f"monitoring run: {self.monitoring_run} (experiment {self.experiment})")
        return "\n".join(lines)

    def _metric_line(self) -> str:
        m = self.metric
        if m is None:
            return "metric: no labels in the data (pass --target COLUMN to check the model's metric)"
        new = number(m["new"], 4)
        if m.get("recorded") is None:
            return f"metric: {m['key']} {new} on the new data (no recorded validation value to compare)"
        drop = m["drop"]
        gap = f"worse by {number(drop, 4)}" if drop is None or drop >= 0 else f"better by {number(-drop, 4)}"
        return (f"metric: {m['key']} {new} on the new data vs {number(m['recorded'], 4)} recorded "
                f"({gap}, tolerance {self.thresholds['tolerance']:g})" + ("  FAIL" if m["failed"] else ""))


def _num(v) -> float:
    return v if isinstance(v, (int, float)) and math.isfinite(v) else -1.0


_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")


def metric_keys(names: list[str]) -> list[str]:
    """MLflow-safe, unique metric-key fragments for feature names (``color=red`` → ``color_red``)."""
    out, seen = [], set()
    for n in names:
        k = _BAD_KEY.sub("_", str(n))[:200] or "feature"
        base, i = k, 1
        while k in seen:
            k, i = f"{base}_{i}", i + 1
        seen.add(k)
        out.append(k)
    return out


def check(model_uri: str, data, *, target: str | None = None, psi: float | None = None, ks: float | None = None,
          tolerance: float | None = None, rollback: bool = False, experiment: str | None = None,
          uri: str | None = None, log: bool = True) -> Report:
    """Run the drift and performance checks of ``model_uri`` on ``data``, log the monitoring run
    and, with ``rollback``, roll a failing champion back. See the module docstring."""
    uri = uri or tracking.default_tracking_uri()
    ref = registry.resolve(model_uri, uri)
    est, spec = tracking.load_model(ref.uri, tracking_uri=uri)
    pre = getattr(est, "preprocessor_", None)
    stats = getattr(pre, "stats_", None) if pre is not None else None
    if not stats or "counts" not in stats:
        raise NbnetError(f"{model_uri} stores no training statistics to compare with (a model fitted by hand "
                         "without preprocessing); train it with nbnet train/sweep, or fit with preprocessing set")
    th = thresholds(est, psi=psi, ks=ks, tolerance=tolerance, experiment=experiment)
    X, y, tcol = load_labelled(data, spec, target, est)
    names = spec[0] if spec[0] is not None and len(spec[0]) == X.shape[1] else [f"x{j}" for j in range(X.shape[1])]
    rep = Report(str(model_uri), str(data), int(len(X)), ref.name, ref.version, ref.run_id, th,
                 _feature_rows(names, drift(stats, X), th), data_hash=data_hash(X, y if y is not None else np.zeros(0)))
    if rep.drifted():
        worst = max(rep.drifted(), key=lambda f: _num(f["psi"]))
        rep.reasons.append(f"drift in {len(rep.drifted())} feature(s), worst {worst['feature']} "
                           f"(PSI {number(worst['psi'], 4)}, KS {number(worst['ks'], 4)})")
    if len(X) < 100:
        rep.notes.append(f"only {len(X)} rows: PSI and KS are noisy on small samples (about 9/rows and 1/sqrt(rows))")
    if y is not None:
        rep.metric = m = _metric_check(est, X, y, ref, th["tolerance"], uri)
        if m["failed"]:
            rep.reasons.append(f"{m['key']} worse by {number(m['drop'], 4)} than recorded "
                               f"(> tolerance {th['tolerance']:g})")
    rep.verdict = "fail" if rep.reasons else "pass"
    if log:
        _log_run(rep, ref, tcol, uri)
    if rollback:
        _maybe_rollback(rep, ref, uri)
    return rep


def _feature_rows(names, d: dict, th: dict) -> list[dict]:
    """One report row per feature from :func:`drift`'s arrays ``d``, with its drift verdict."""
    feats = []
    for j, n in enumerate(names):
        p, k = float(d["psi"][j]), float(d["ks"][j])
        feats.append({"feature": str(n), "psi": p, "ks": k,
                      "drift": bool((math.isfinite(p) and p > th["psi"]) or (math.isfinite(k) and k > th["ks"])),
                      "train_mean": float(d["train_mean"][j]), "new_mean": float(d["new_mean"][j]),
                      "train_missing": float(d["train_missing"][j]), "new_missing": float(d["new_missing"][j])})
    return feats


def _metric_check(est, X, y, ref, tol: float, uri: str) -> dict:
    """The model's metric on the new data against the value its run recorded: the key, its
    direction, both values, the drop (positive: worse) and whether it exceeds ``tol``."""
    c = tracking.client(uri)
    mv = None
    if ref.name and ref.version:
        mv = c.get_model_version(ref.name, str(ref.version))
    key = registry.metric_key(mv, uri) if mv is not None else None
    if key is None and ref.run_id:
        key = c.get_run(ref.run_id).data.params.get("search.metric")
    if key is None:
        key = ((getattr(est, "config_", None) or {}).get("search") or {}).get("metric")
    if key is None:
        key = metrics.default_metric(task_of(est))
    direction = registry.direction_of(mv, key) if mv is not None else registry.direction_of(_NoTags, key)
    recorded = None
    if ref.run_id:
        recorded = tracking.metric_of(c, ref.run_id, key)
    new = score(est, X, y, key)
    drop = None if recorded is None or new is None else worse_by(new, recorded, direction)
    return {"key": key, "direction": direction, "new": new, "recorded": recorded, "drop": drop,
            "failed": bool((drop is not None and drop > tol) or (new is None and recorded is not None))}


class _NoTags:
    tags: dict = {}


def _log_run(rep: Report, ref, tcol, uri: str) -> None:
    """Log the check as a run of ``<name>-monitoring`` and tag the monitored version."""
    exp_name = f"{ref.name or _run_experiment(ref, uri) or Path(rep.model_uri).stem or 'nbnet'}-monitoring"
    exp = tracking.ensure_experiment(exp_name, uri)
    params = {"monitor.psi": rep.thresholds["psi"], "monitor.ks": rep.thresholds["ks"],
              "monitor.tolerance": rep.thresholds["tolerance"], "monitor.thresholds_from": rep.thresholds["source"],
              "model.uri": rep.model_uri, "model.resolved_uri": ref.uri, "model.name": ref.name,
              "model.version": ref.version, "model.run_id": ref.run_id, "data.path": str(Path(rep.data).resolve()),
              "data.rows": rep.rows, "data.target": tcol, "data.hash": rep.data_hash}
    tags = tracking.standard_tags(data_hash=rep.data_hash)
    tags.update({T.KIND: "monitor", T.VERDICT: rep.verdict,
                 T.VERDICT_REASON: "; ".join(rep.reasons) or "within thresholds",
                 T.MODEL_URI: rep.model_uri})
    if ref.version:
        tags[T.MODEL_VERSION] = str(ref.version)
    run_name = f"monitor-v{ref.version}" if ref.version else "monitor"
    run_id = tracking.start_run(exp, run_name=run_name, tags=tags, params=params, uri=uri)
    rep.monitoring_run, rep.experiment = run_id, exp_name
    status = "FAILED"
    try:
        m = _run_metrics(rep)
        tracking.log_metrics(run_id, {k: v for k, v in m.items() if v is not None and math.isfinite(v)}, uri=uri)
        with tempfile.TemporaryDirectory(prefix="nbnet-monitor-") as tmp:
            Path(tmp, "report.json").write_text(json.dumps(rep.to_dict(), indent=1))
            _write_csv(Path(tmp, "drift.csv"), rep.features)
            tracking.log_artifact(run_id, tmp, "monitor", uri=uri)
        status = "FINISHED"
    finally:
        tracking.end_run(run_id, status, uri=uri)
    if ref.name and ref.version:
        c = tracking.client(uri)
        c.set_model_version_tag(ref.name, str(ref.version), T.MONITOR_LAST_VERDICT, rep.verdict)
        c.set_model_version_tag(ref.name, str(ref.version), T.MONITOR_LAST_RUN, run_id)


def _run_metrics(rep: Report) -> dict:
    """The monitoring run's metrics: ``psi/<feature>``, ``ks/<feature>``, the maxima, the number
    of drifted features and rows, and the metric on the new data against the recorded one."""
    m: dict = {}
    for k, f in zip(metric_keys([f["feature"] for f in rep.features]), rep.features):
        for stat in ("psi", "ks"):
            if math.isfinite(f[stat]):
                m[f"{stat}/{k}"] = f[stat]
    m["psi_max"] = max((f["psi"] for f in rep.features if math.isfinite(f["psi"])), default=float("nan"))
    m["ks_max"] = max((f["ks"] for f in rep.features if math.isfinite(f["ks"])), default=float("nan"))
    m["drifted_features"] = len(rep.drifted())
    m["rows"] = rep.rows
    if rep.metric:
        mk = rep.metric["key"]
        m[f"new_{mk}"] = rep.metric["new"]
        m[f"recorded_{mk}"] = rep.metric["recorded"]
        m["metric_drop"] = rep.metric["drop"]
    return m


def _run_experiment(ref, uri: str) -> str | None:
    """The experiment name of the model's run, if it has one."""
    if not ref.run_id:
        return None
    c = tracking.client(uri)
    try:
        return c.get_experiment(c.get_run(ref.run_id).info.experiment_id).name
    except MlflowException:
        return None


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols = ["feature", "psi", "ks", "drift", "train_mean", "new_mean", "train_missing", "new_missing"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in cols})


def _maybe_rollback(rep: Report, ref, uri: str) -> None:
    """Move ``champion`` back when the check of the current champion failed; say what happened."""
    if not rep.failed:
        rep.rollback = "not needed (the check passed)"
        return
    cur = registry.alias_version(ref.name, registry.CHAMPION, uri) if ref.name else None
    if cur is None or ref.version is None or int(cur.version) != int(ref.version):
        rep.rollback = (f"not done: {rep.model_uri} is not the current champion"
                        + (f" (champion is v{cur.version})" if cur is not None else ""))
    else:
        why = f"monitoring run {rep.monitoring_run}: " + "; ".join(rep.reasons)
        try:
            old, new = rollback(ref.name, reason=why, action="monitor-rollback", uri=uri)
            rep.rollback = f"champion of {ref.name} moved back v{old} → v{new}"
        except NbnetError as e:
            rep.rollback = f"not done: {e}"
    if rep.monitoring_run:
        tracking.set_tags(rep.monitoring_run, {T.ROLLBACK: rep.rollback}, uri=uri)


__all__ = ["psi", "ks_binned", "drift", "check", "Report", "thresholds", "metric_keys"]

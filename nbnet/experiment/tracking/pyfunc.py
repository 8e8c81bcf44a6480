"""The MLflow pyfunc model around nbnet's safe model file: log, download and load it.

A logged model is an MLflow "model from code": its code file is
``nbnet/experiment/tracking/_pyfunc_model.py`` (it imports :class:`NbnetPyfuncModel` from the installed
nbnet), its weights the checksummed nbnet file ``artifacts/model.nbnet``. Nothing is pickled.

Example
-------
>>> uri = log_model(run_id, clf, X[:5])                          # doctest: +SKIP
>>> est, (feature_names, categories) = load_model(uri)          # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import mlflow
import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature, infer_signature
from mlflow.types.schema import ColSpec, DataType, Schema

from nbnet.data.load import raw_columns
from nbnet.errors import NbnetError
from nbnet.io import MLFLOW_URI_PREFIXES
from nbnet.experiment import tags as T
from nbnet.nn.estimator import load as load_file

from . import wheel
from .client import (
    client, default_tracking_uri, global_uri, not_found, param_value, quiet, retrying, store_error, truncated_key,
)
from .runs import MetricLogger, set_tags

MODEL_NAME = "model"  # artifact name of the pyfunc model in a run: runs:/<run_id>/model
MODEL_FILE = "model.nbnet"  # the nbnet file inside the pyfunc model's artifacts/
PYFUNC_CODE = Path(__file__).with_name("_pyfunc_model.py")


# --- a model's input columns -----------------------------------------------------------------------
def feature_spec(estimator, model_config: dict | None = None) -> tuple[list[str] | None, dict]:
    """``(feature_names, categories)`` of a model's raw input: from the estimator's
    ``feature_names_in_`` / ``categories_`` if it has them, else from the pyfunc model's config;
    ``(None, {})`` when neither knows (inputs are then taken by position)."""
    names = getattr(estimator, "feature_names_in_", None)
    cats = getattr(estimator, "categories_", None)
    if names is None and model_config:
        names, cats = model_config.get("feature_names"), model_config.get("categories")
    return (None if names is None else [str(n) for n in names]), dict(cats or {})


def input_columns(estimator, names: list[str] | None, categories: dict, file_columns: list[str] | None,
                  label: str) -> list[str]:
    """The raw columns to read for ``estimator``: its own ``names``, or, for a model that stores
    none (``x0, x1, ...``), the file's feature columns in order (``file_columns``; None where the
    file has no column names, e.g. NPZ). ``label`` names the file in the error."""
    n = estimator.n_features_in_
    generic = names is None or (not categories and names == [f"x{j}" for j in range(n)])
    if generic and file_columns is not None and (names is None or not set(names) <= set(file_columns)):
        if len(file_columns) != n:
            raise NbnetError(f"{label} has {len(file_columns)} feature columns but the model takes {n} "
                             "(and stores no column names to pick them by)")
        names = list(file_columns)
    return names if names is not None else [f"x{j}" for j in range(n)]


def frame_to_matrix(X, feature_names: list[str] | None, categories: dict, n_features: int) -> np.ndarray:
    """A pandas DataFrame (columns matched by name; extra columns ignored; categorical columns
    one-hot with the training categories, unseen → zeros) or an array → float64 (n, n_features)."""
    if not isinstance(X, pd.DataFrame):
        return np.asarray(X)
    X = X.rename(columns=str)
    cols = list(X.columns)
    if feature_names is None:
        return X.to_numpy(dtype=np.float64)
    raw = raw_columns(feature_names, categories) if categories else list(feature_names)
    missing = [c for c in raw if c not in set(cols)]
    if missing:
        if not categories and len(cols) == n_features and not set(raw) & set(cols):
            return X.to_numpy(dtype=np.float64)  # unnamed columns (0, 1, ...): taken by position
        raise NbnetError(f"input lacks column(s) {missing[:5]}; the model reads {raw[:10]}"
                         f"{' ...' if len(raw) > 10 else ''}")
    if not categories:
        sub = X[raw]
        if all(dt.kind in "iufb" for dt in sub.dtypes):  # the common case: one conversion
            return sub.to_numpy(dtype=np.float64)
    out = np.empty((len(X), len(feature_names)), np.float64)
    groups = {f"{c}={k}": (c, str(k)) for c, cats in categories.items() for k in cats}
    for j, name in enumerate(feature_names):
        if name in groups:
            c, k = groups[name]
            col = X[c]
            out[:, j] = (col.notna() & (col.astype(str) == k)).to_numpy()
        else:
            out[:, j] = _numbers(X[name], name)
    return out


def _numbers(col: pd.Series, name: str) -> np.ndarray:
    """A numeric input column (int, float, bool, or text/None as JSON may give) as float64;
    a value that is not a number is a one-line error naming the column."""
    if col.dtype.kind in "iufb":
        return col.to_numpy(dtype=np.float64)
    try:
        return pd.to_numeric(col, errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        bad = next((v for v in col if v is not None and not _is_number(v)), None)
        raise NbnetError(f"column {name!r} must hold numbers, got {bad!r}") from None


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


class NbnetPyfuncModel(mlflow.pyfunc.PythonModel):
    """The MLflow pyfunc face of an nbnet model. MLflow loads it through the code file
    ``nbnet/experiment/tracking/_pyfunc_model.py`` (models from code: nothing is pickled); the weights
    come from the safe nbnet file in ``context.artifacts["model"]``.

    ``predict(DataFrame)`` returns class labels for a classifier, values for a regressor; with
    ``params={"proba": True}`` a classifier returns a DataFrame of class probabilities.
    """

    def load_context(self, context) -> None:
        self.estimator = load_file(context.artifacts["model"])
        self.features = feature_spec(self.estimator, context.model_config)

    # The pd.DataFrame hint is one MLflow accepts without deriving a schema from it (the explicit
    # signature does that); without any hint MLflow warns on every import.
    def predict(self, context, model_input: pd.DataFrame, params=None):
        est = self.estimator
        X = frame_to_matrix(model_input, *self.features, est.n_features_in_)
        with warnings.catch_warnings():
            # X's columns were matched by name just above: scikit-learn's warning for an array
            # given to a model fitted on a data frame does not apply
            warnings.filterwarnings("ignore", "X does not have valid feature names", UserWarning)
            if params and params.get("proba"):
                if not hasattr(est, "predict_proba"):
                    raise NbnetError("proba=True needs a classifier; this model is a regressor")
                return pd.DataFrame(est.predict_proba(X), columns=[str(c) for c in est.classes_])
            return est.predict(X)


def _example_frame(X_example, feature_names, categories):
    """The raw-input example: a DataFrame as given, or the first rows of an (encoded) matrix with
    its one-hot groups folded back into their categorical columns."""
    if isinstance(X_example, pd.DataFrame):
        return X_example.head(5).rename(columns=str)
    X = np.asarray(X_example, dtype=np.float64)[:5]
    if X.ndim == 1:
        X = X.reshape(1, -1)
    names = feature_names or [f"x{j}" for j in range(X.shape[1])]
    if not categories:
        return pd.DataFrame(X, columns=names)
    pos = {n: j for j, n in enumerate(names)}
    cols = {}
    for c in raw_columns(names, categories):
        if c in categories:
            cats = [str(k) for k in categories[c]]
            onehot = X[:, [pos[f"{c}={k}"] for k in cats]] if cats else np.zeros((len(X), 0))
            cols[c] = [cats[int(r.argmax())] if r.size and r.max() > 0 else None for r in onehot]
        else:
            cols[c] = X[:, pos[c]]
    return pd.DataFrame(cols)


_MLFLOW_TYPES = {"long": DataType.long, "double": DataType.double, "boolean": DataType.boolean,
                 "string": DataType.string}
_PANDAS_TYPES = {"long": "int64", "boolean": "bool"}  # the example's dtype of such a column


def _typed_example(example: pd.DataFrame, column_types: dict) -> pd.DataFrame:
    """The example with the dtypes the signature declares (whole numbers as int64), where its
    values allow it."""
    out = example.copy()
    for c, spec in column_types.items():
        dtype = _PANDAS_TYPES.get(spec.get("type"))
        if dtype and c in out and out[c].notna().all():
            out[c] = out[c].astype(dtype)
    return out


def _input_schema(raw: list[str], column_types: dict) -> Schema | None:
    """The signature's input columns as the training file holds them (``column_types``, see
    :class:`nbnet.data.load.Dataset`): integers as ``long``, other numbers as ``double``,
    categories as ``string``; a column with missing values is optional. None when the types are
    not known for every column (then MLflow infers them from the example)."""
    if not raw or any(c not in column_types or column_types[c].get("type") not in _MLFLOW_TYPES for c in raw):
        return None
    specs = [column_types[c] for c in raw]
    return Schema([ColSpec(_MLFLOW_TYPES[t["type"]], c, required=bool(t.get("required", True))) for c, t in zip(raw, specs)])


def pip_requirements() -> list[str]:
    """The requirements written into every logged model's environment files: nbnet's own
    runtime requirements pinned to the installed versions (mlflow, numpy, numba, pandas, ...),
    and nbnet itself as the wheel the model carries (``wheels/nbnet-<version>-py3-none-any.whl``,
    :mod:`.wheel`), never a version no package index has."""
    return [*wheel.pinned_requirements(), f"{wheel.WHEEL_DIR}/{wheel.WHEEL_NAME}"]


# --- pyfunc model templates ------------------------------------------------------------------------
# Fields of a model's MLmodel file that differ between two models of one template (see _template).
_PLACEHOLDERS = {"artifact_path": "NBNETXARTIFACTPATHX", "run_id": "NBNETXRUNIDX", "model_uuid": "NBNETXMODELUUIDX",
                 "model_id": "NBNETXMODELIDX", "utc_time_created": "NBNETXCREATEDX"}
TEMPLATES: dict = {}  # key -> (folder, MLmodel text, size of the folder's model file, model_size_bytes)


def template_cache_dir() -> Path:
    """Where pyfunc model templates are kept between processes: ``NBNET_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/nbnet`` (``~/.cache/nbnet``), sub-folder ``pyfunc-templates``."""
    root = os.environ.get("NBNET_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nbnet"
    return Path(root) / "pyfunc-templates"


def _private_dir(path: Path) -> Path | None:
    """``path`` created 0700 if missing; None if it cannot be, or if it is not this user's alone
    (a template holds the code file MLflow runs when the model is loaded: nobody else may plant one)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = path.stat()
    except OSError:
        return None
    return path if st.st_uid == os.getuid() and not st.st_mode & 0o022 else None


def _usable_template(local: Path, code: str) -> bool:
    """A whole template whose code file is nbnet's own (the one MLflow runs at load time)."""
    try:
        return (_PLACEHOLDERS["run_id"] in (local / "MLmodel").read_text()
                and (local / PYFUNC_CODE.name).read_text() == code and (local / "artifacts" / MODEL_FILE).is_file()
                and (local / wheel.WHEEL_DIR / wheel.WHEEL_NAME).is_file())
    except OSError:
        return False


def _save_template(folder: Path, estimator, example, config: dict, signature_of) -> Path:
    """``mlflow.pyfunc.save_model`` into ``folder/model``, with placeholders for the model's ids."""
    src = folder / MODEL_FILE
    estimator.save(src)
    built = folder / MODEL_NAME
    with quiet():
        mlflow.pyfunc.save_model(path=str(built), python_model=str(PYFUNC_CODE), artifacts={"model": str(src)},
                                 model_config=config, signature=signature_of(), input_example=example,
                                 pip_requirements=pip_requirements(), mlflow_model=Model(**_PLACEHOLDERS))
    wheel.build_wheel(built / wheel.WHEEL_DIR)  # what requirements.txt names: nbnet travels with the model
    return built


def _install_template(folder: Path, cache: Path, digest: str, code: str) -> None:
    """Move the freshly built ``folder`` to ``cache/digest`` atomically, replacing a damaged one."""
    if (cache / digest).exists():  # damaged or not nbnet's: moved aside (atomically) and removed
        aside = Path(tempfile.mkdtemp(prefix=".bad-", dir=cache))
        with contextlib.suppress(OSError):
            os.rename(cache / digest, aside / "old")
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.rename(folder, cache / digest)  # atomic: a reader sees no folder or a whole one
    except OSError:  # another process made it meanwhile: use theirs
        shutil.rmtree(folder, ignore_errors=True)
    local = cache / digest / MODEL_NAME
    if not _usable_template(local, code):
        raise NbnetError(f"pyfunc model template {local.parent} is damaged; delete it and log the model again")


def _template(key: tuple, estimator, example, config: dict, signature_of) -> tuple:
    """A pyfunc model folder written by ``mlflow.pyfunc.save_model`` with placeholders where a
    model's own ids go, for every model with the same class, input columns, example, signature
    and requirements (every trial of a sweep). :func:`log_model` copies it and swaps in the
    weights and ids: ``save_model`` infers the schema, writes the example and the environment
    files, checks the requirements against every installed distribution (~0.45 s the first time
    in a process) and dumps the YAML for every model otherwise, and nothing of that differs
    between two trials. Kept in :func:`template_cache_dir` (private to the user, named by a
    digest of the key, MLflow's and Python's versions and nbnet's pyfunc code file, created
    atomically), so a sweep's worker processes and later sweeps reuse it; in a temporary folder
    of the process if that cannot be written."""
    hit = TEMPLATES.get(key)
    if hit is not None and Path(hit[0]).is_dir():
        return hit
    code = PYFUNC_CODE.read_text()
    digest = hashlib.sha256(json.dumps([list(map(str, key)), mlflow.__version__, sys.version, code,
                                        wheel.source_digest()]).encode()).hexdigest()[:32]
    cache = _private_dir(template_cache_dir())
    local = cache / digest / MODEL_NAME if cache else None
    if local is None or not _usable_template(local, code):
        if cache is None:
            folder = Path(tempfile.mkdtemp(prefix="nbnet-pyfunc-template-"))
            atexit.register(shutil.rmtree, folder, True)
            local = _save_template(folder, estimator, example, config, signature_of)
        else:
            folder = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
            _save_template(folder, estimator, example, config, signature_of)
            _install_template(folder, cache, digest, code)
    text = (local / "MLmodel").read_text()
    m = re.search(r"^model_size_bytes: (\d+)$", text, re.M)
    hit = (local, text, (local / "artifacts" / MODEL_FILE).stat().st_size, int(m.group(1)) if m else None)
    TEMPLATES.clear()  # one sweep's models at a time
    TEMPLATES[key] = hit
    return hit


def _write_model(dst: Path, estimator, template: tuple, ids: dict) -> None:
    """The pyfunc model folder ``dst``: the template's files with this estimator's nbnet file and
    an MLmodel naming this model's ids."""
    folder, text, tmpl_bytes, tmpl_size = template
    shutil.copytree(folder, dst, ignore=shutil.ignore_patterns("MLmodel", MODEL_FILE))
    model_file = dst / "artifacts" / MODEL_FILE
    estimator.save(model_file)
    ids = {**ids, "utc_time_created": str(datetime.now(timezone.utc).replace(tzinfo=None))}
    for field, ph in _PLACEHOLDERS.items():
        text = text.replace(ph, json.dumps(str(ids[field])))  # a JSON string is a valid YAML scalar
    if tmpl_size is not None:
        size = tmpl_size - tmpl_bytes + model_file.stat().st_size
        text = re.sub(r"^model_size_bytes: \d+$", f"model_size_bytes: {size}", text, count=1, flags=re.M)
    (dst / "MLmodel").write_text(text)


# --- logging, downloading and loading a model -------------------------------------------------------
def _model_template(estimator, X_example, feature_names, categories, column_types=None) -> tuple:
    """The template (see :func:`_template`) for ``estimator`` with its raw input columns: given as
    ``feature_names``/``categories``, else the estimator's own, else the example's columns;
    typed by ``column_types`` when given (see :func:`_input_schema`)."""
    names, cats = feature_spec(estimator)
    if feature_names is not None:
        names, cats = [str(f) for f in feature_names], dict(categories or {})
    if column_types is None:  # a model loaded from MLflow keeps its signature's types (nbnet update)
        column_types = getattr(estimator, "column_types_", None)
    types = {str(c): dict(v) for c, v in (column_types or {}).items()}
    example = _typed_example(_example_frame(X_example, names, cats), types)
    if names is None:
        names = [str(c) for c in example.columns]
    config = {"feature_names": names, "categories": cats, **({"column_types": types} if types else {})}
    X = frame_to_matrix(example, names, cats, estimator.n_features_in_)
    proba = hasattr(estimator, "predict_proba")
    pred = np.asarray(estimator.predict(X))
    schema = _input_schema([str(c) for c in example.columns], types)
    key = (type(estimator).__name__, json.dumps(config, sort_keys=True, default=str), example.to_json(orient="split"),
           tuple(str(t) for t in example.dtypes), str(pred.dtype), pred.shape[1:], proba, tuple(pip_requirements()),
           None if schema is None else schema.to_json())

    def signature_of():
        with warnings.catch_warnings():  # MLflow's hint on integer columns: the explicit schema below has answered it
            warnings.filterwarnings("ignore", message=".*[Ii]nteger column", category=UserWarning)
            sig = infer_signature(example, pred, params={"proba": False} if proba else None)
        return sig if schema is None else ModelSignature(inputs=schema, outputs=sig.outputs, params=sig.params)

    return _template(key, estimator, example, config, signature_of)


def log_model(run_id: str, estimator, X_example, uri: str | None = None, *,
              feature_names: list[str] | None = None, categories: dict | None = None,
              column_types: dict | None = None, experiment_id: str | None = None, params: dict | None = None,
              logger: MetricLogger | None = None, name: str = MODEL_NAME) -> str:
    """Log ``estimator`` to run ``run_id`` as an MLflow pyfunc model named ``name`` and return
    ``runs:/<id>/<name>``.

    The model directory holds the nbnet file (``artifacts/model.nbnet``: npz + JSON, checksummed),
    the code file ``_pyfunc_model.py`` (a copy of ``nbnet/experiment/tracking/_pyfunc_model.py``, which
    imports :class:`NbnetPyfuncModel` from the installed nbnet), ``MLmodel`` with the signature,
    and the input example (the first rows of ``X_example``, a DataFrame or an array). Nothing is
    pickled.

    ``feature_names`` (the matrix columns; one-hot groups as ``col=category``) and ``categories``
    (``{column: [category, ...]}``, as in :class:`nbnet.data.load.Dataset`) name the raw input
    columns; default: the estimator's ``feature_names_in_``/``categories_``, else the example's
    DataFrame columns, else ``x0, x1, ...``. ``column_types`` (``Dataset.column_types``: each raw
    column's type as the training file holds it, and whether values may be missing) makes the
    signature declare integers as ``long``, categories as ``string`` and columns with missing
    values as optional; default: the estimator's ``column_types_`` (set by :func:`load_model` for
    a model logged with types), else the types are inferred from the example. The model also
    carries nbnet's wheel (``wheels/``), named in its ``requirements.txt``, so an environment
    built from the model's own requirements needs no nbnet checkout. ``experiment_id`` and
    ``params`` (the run's flat params, given to the LoggedModel) save reading the run back; with
    ``logger`` the run's ``nbnet.model_id`` tag goes out with the logger's next flush instead of
    on its own.
    """
    uri = uri or default_tracking_uri()
    template = _model_template(estimator, X_example, feature_names, categories, column_types)
    c = client(uri)
    if experiment_id is None or params is None:
        run = c.get_run(run_id)
        experiment_id, params = run.info.experiment_id, dict(run.data.params)
    # Create the LoggedModel ourselves: left to MLflow it would land in the fluent "current"
    # experiment (the default one), not the run's.
    logged = retrying(c.create_logged_model, experiment_id, name=name, source_run_id=run_id,
                      params={truncated_key(k): param_value(v) for k, v in params.items()},
                      tags={T.ESTIMATOR: type(estimator).__name__})
    # What Model.log does, minus its check that the input example serves (it loads the model back
    # and predicts: ~0.1 s a trial; tests/test_tracking.py loads and serves logged models instead).
    with tempfile.TemporaryDirectory(prefix="nbnet-model-") as tmp:
        local = Path(tmp, MODEL_NAME)
        _write_model(local, estimator, template, {"artifact_path": logged.artifact_location, "run_id": run_id,
                                                  "model_uuid": logged.model_id, "model_id": logged.model_id})
        retrying(c.log_outputs, run_id, [LoggedModelOutput(logged.model_id, step=0)])
        retrying(c.log_model_artifacts, logged.model_id, str(local))
        retrying(c.finalize_logged_model, logged.model_id, "READY")
    if logger is not None:
        logger.tag(T.MODEL_ID, logged.model_id)
    else:
        set_tags(run_id, {T.MODEL_ID: logged.model_id}, uri=uri)
    return f"runs:/{run_id}/{name}"


def download_model(uri: str, dst: str | None = None, tracking_uri: str | None = None) -> tuple[str, dict]:
    """Download the pyfunc model at ``uri`` (``models:/NAME@alias``, ``models:/NAME/VERSION``,
    ``runs:/RUN_ID/model``, or any MLflow artifact URI of such a model) and return
    ``(local path of the nbnet file, the model's config)``."""
    import yaml  # heavy: imported on first use

    tracking = tracking_uri or default_tracking_uri()
    try:
        with global_uri(tracking), quiet():
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst, tracking_uri=tracking)
    except MlflowException as e:
        if not not_found(e):  # the store did not answer: not the user's URI
            raise store_error(f"fetching model {uri!r}", tracking, e) from e
        msg = str(e).splitlines()[0][:200]
        raise NbnetError(f"could not fetch model {uri!r} from {tracking}: {msg}") from None
    path = Path(local, "artifacts", MODEL_FILE)
    mlmodel = Path(local, "MLmodel")
    if not path.is_file() or not mlmodel.is_file():
        raise NbnetError(f"{uri!r} is not an nbnet model (no artifacts/{MODEL_FILE}); log it with nbnet")
    meta = yaml.safe_load(mlmodel.read_text()) or {}
    config = (meta.get("flavors", {}).get("python_function", {}) or {}).get("config") or {}
    return str(path), config


def download_model_file(uri: str, tracking_uri: str | None = None) -> str:
    """Local path of the nbnet model file behind an MLflow model URI (used by ``nbnet.load``)."""
    return download_model(uri, tracking_uri=tracking_uri)[0]


def load_model(uri_or_path: str, tracking_uri: str | None = None):
    """``(estimator, (feature_names, categories))`` from an MLflow model URI or a local file."""
    s = str(uri_or_path)
    if s.startswith(MLFLOW_URI_PREFIXES):
        path, config = download_model(s, tracking_uri=tracking_uri)
        est = load_file(path)
        if config.get("column_types"):
            est.column_types_ = dict(config["column_types"])  # logged again (nbnet update), the types stay
        return est, feature_spec(est, config)
    est = load_file(s)
    return est, feature_spec(est)

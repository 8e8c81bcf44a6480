"""Export a model to ONNX (``nbnet export MODEL_URI --onnx model.onnx``): one graph that holds the
whole model, from the raw input columns to the predictions, for ONNX Runtime and every other
ONNX consumer.

The graph, in order:

1. **Inputs.** A model without categorical columns takes one tensor ``X`` of shape
   (N, n_features), the raw columns in training order. A model with categorical columns takes
   one input per raw column, named after it (the convention of sklearn-onnx for mixed types):
   numeric columns (N, 1) floats, categorical columns (N, 1) strings. Numeric inputs are float64
   (``tensor(double)``, what NumPy and pandas hold, and what nbnet reads files as, so raw values
   such as timestamps keep every digit) unless ``input_type="float32"``.
2. **One-hot categories** (``ai.onnx.ml`` LabelEncoder, then Equal): the training categories in
   order; an unseen category, an empty string or "nan" gives an all-zeros group, as
   :func:`nbnet.data.load.read_features` does for an unseen or missing value.
3. **Preprocessing** (:class:`nbnet.data.prep.Preprocessor`), in float64 as nbnet computes it:
   imputation (NaN → the fitted fill value), the kept columns (dropped constant, low-variance and
   unselected columns leave), centring and scaling, PCA.
4. **The MLP** in the model's dtype: MatMul + Add per layer, the hidden activation (relu,
   leaky_relu, tanh, sigmoid, elu, softplus, identity).
5. **The output transform**: softmax (several classes) or sigmoid (two classes) → output
   ``probabilities`` (N, n_classes) in ``classes_`` order and ``label`` (N,), the class labels
   themselves (strings, integers or floats, as the classes are); identity for a regressor →
   output ``variable`` (N, n_outputs).

nbnet's regressors predict the network's output as it is (no target scaling is fitted), so
``variable`` needs no inverse transform. Standard opset :data:`OPSET` and, for categorical
columns, ``ai.onnx.ml`` opset :data:`ML_OPSET`. ONNX Runtime reproduces ``predict_proba`` and
``predict`` within 1e-5 (tests/test_export_onnx.py); before writing, :func:`export_onnx` runs
the graph on sample rows and refuses, with one NbnetError, a model it does not reproduce.

Example
-------
>>> export_onnx("models:/digits@champion", "digits.onnx")                        # doctest: +SKIP
>>> import onnxruntime as ort                                                   # doctest: +SKIP
>>> sess = ort.InferenceSession("digits.onnx")                                  # doctest: +SKIP
>>> label, proba = sess.run(None, {"X": X})          # X: float64 (N, 64)      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

try:  # the optional extra nbnet[onnx]; imported here, not by the CLI at start-up
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    onnx = None
try:  # runs the graph once before it is written (the check is skipped without it)
    import onnxruntime
except ImportError:  # pragma: no cover - exercised only where the extra is missing
    onnxruntime = None

from nbnet._sys.atomic import atomic_write
from nbnet.data.load import raw_columns
from nbnet.errors import NbnetError
from nbnet.experiment import tracking
from nbnet.kernels.tables import LEAKY_SLOPE
from nbnet.version import __version__

OPSET = 18  # the standard ONNX opset of the graph
ML_OPSET = 3  # ai.onnx.ml, for LabelEncoder (categorical columns only)
IR_VERSION = 9  # the ONNX IR version of opset 18: what ONNX Runtime >= 1.15 reads
INPUT_TYPES = ("float32", "float64")
MATRIX_INPUT = "X"  # the one input of a model without categorical columns
OUTPUTS_CLASSIFIER = ("label", "probabilities")
OUTPUTS_REGRESSOR = ("variable",)
_ONNX_FLOAT = {"float32": 1, "float64": 11}  # TensorProto.FLOAT, TensorProto.DOUBLE


class InputSpec(NamedTuple):
    """One graph input: its name, ``float32``/``float64``/``string`` and its width (columns)."""

    name: str
    dtype: str
    width: int


class ExportInfo(NamedTuple):
    """What :func:`export_onnx` wrote: the file, the graph's inputs and outputs (names)."""

    path: str
    inputs: list[InputSpec]
    outputs: list[str]


def _require_onnx() -> None:
    if onnx is None:
        raise NbnetError("ONNX export needs the onnx package: pip install 'nbnet[onnx]'")


# --- a small graph builder ------------------------------------------------------------------------
class _Graph:
    """Nodes and initializers of one graph; every intermediate gets a fresh name ``nbnet_k`` (with
    more leading underscores while that could collide with an input column's name)."""

    def __init__(self, model_dtype: str, input_names: list[str]):
        self.nodes: list = []
        self.initializers: list = []
        self.count = 0
        self.prefix = "nbnet_"
        while any(n.startswith(self.prefix) for n in input_names):
            self.prefix = "_" + self.prefix
        self.float = _ONNX_FLOAT[model_dtype]  # the network's element type
        self.np_float = np.dtype(model_dtype)

    def fresh(self) -> str:
        self.count += 1
        return f"{self.prefix}{self.count}"

    def const(self, value) -> str:
        """An initializer holding ``value`` (a NumPy array; strings become an ONNX string tensor)."""
        name = self.fresh()
        a = np.asarray(value)
        if a.dtype.kind in "US":
            a = a.astype(object)
        self.initializers.append(numpy_helper.from_array(a, name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        """Add one node; returns its (single) output's name."""
        out = out or self.fresh()
        domain = "ai.onnx.ml" if op_type == "LabelEncoder" else ""
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], domain=domain, **attrs))
        return out


# --- 1-2: the raw inputs, as one float64 matrix (N, n_features) -----------------------------------
def _input_specs(names: list[str] | None, categories: dict, n_features: int, input_type: str) -> list[InputSpec]:
    if not categories:
        return [InputSpec(MATRIX_INPUT, input_type, n_features)]
    specs = [InputSpec(c, "string" if c in categories else input_type, 1) for c in raw_columns(names, categories)]
    clash = [s.name for s in specs if s.name in OUTPUTS_CLASSIFIER + OUTPUTS_REGRESSOR]
    if clash:
        raise NbnetError(f"input column {clash[0]!r} has the name of an ONNX output; ONNX export needs the input "
                         "columns named otherwise (rename it in the data and train again)")
    return specs


def _encoded_matrix(g: _Graph, specs: list[InputSpec], categories: dict) -> str:
    """The float64 matrix of nbnet's feature columns: numeric columns as given, categorical ones
    one-hot over the training categories (anything else: zeros)."""
    blocks = []
    for s in specs:
        if s.dtype != "string":
            blocks.append(g.op("Cast", s.name, to=TensorProto.DOUBLE))
            continue
        cats = [str(k) for k in categories[s.name]]
        if not cats:  # all missing in training: the column has no feature columns
            continue
        code = g.op("LabelEncoder", s.name, keys_strings=cats, values_int64s=list(range(len(cats))),
                    default_int64=-1)
        hit = g.op("Equal", code, g.const(np.arange(len(cats), dtype=np.int64).reshape(1, -1)))
        blocks.append(g.op("Cast", hit, to=TensorProto.DOUBLE))
    return blocks[0] if len(blocks) == 1 else g.op("Concat", *blocks, axis=1)


# --- 3: the fitted preprocessing --------------------------------------------------------------------
def _preprocessed(g: _Graph, x: str, pre) -> str:
    """Impute → kept columns → (x - center) / scale → PCA, in float64 (Preprocessor.transform)."""
    if pre.fill_ is not None:
        x = g.op("Where", g.op("IsNaN", x), g.const(pre.fill_.reshape(1, -1)), x)
    cols = np.asarray(pre.columns_, np.int64)
    if not np.array_equal(cols, np.arange(pre.n_features_in_)):
        x = g.op("Gather", x, g.const(cols), axis=1)
    if np.any(pre.center_ != 0):
        x = g.op("Sub", x, g.const(pre.center_.reshape(1, -1)))
    if np.any(pre.scale_ != 1):
        x = g.op("Div", x, g.const(pre.scale_.reshape(1, -1)))
    if pre.pca_components_ is not None:
        x = g.op("Sub", x, g.const(pre.pca_mean_.reshape(1, -1)))
        x = g.op("MatMul", x, g.const(np.ascontiguousarray(pre.pca_components_.T)))
    return x


# --- 4-5: the network and its output transform ----------------------------------------------------
def _activation(g: _Graph, z: str, name: str) -> str:
    """``name``'s activation of ``z``, as nbnet's kernels compute it."""
    if name == "identity":
        return z
    if name in ("relu", "tanh", "sigmoid"):
        return g.op({"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[name], z)
    if name == "leaky_relu":  # max(z, slope * z), the slope in the model's dtype (LeakyRelu's is a float32)
        return g.op("Max", z, g.op("Mul", z, g.const(np.full((1, 1), LEAKY_SLOPE, g.np_float))))
    if name == "elu":
        return g.op("Elu", z, alpha=1.0)
    if name == "softplus":
        # max(z, 0) + log(1 + exp(-|z|)): ONNX Runtime's float64 Softplus overflows past z = 709
        one = g.const(np.ones((1, 1), g.np_float))
        tail = g.op("Log", g.op("Add", one, g.op("Exp", g.op("Neg", g.op("Abs", z)))))
        return g.op("Add", g.op("Relu", z), tail)
    raise NbnetError(f"activation {name!r} has no ONNX form in this nbnet; export supports "
                     "relu, leaky_relu, tanh, sigmoid, elu, softplus and identity")


def _network(g: _Graph, x: str, est, weights: list[np.ndarray]) -> str:
    """The MLP's output logits (N, n_outputs) in the model's dtype; ``weights`` = [W1, b1, ...]."""
    n_layers = len(weights) // 2
    for l in range(n_layers):
        W, b = weights[2 * l], weights[2 * l + 1]
        x = g.op("Add", g.op("MatMul", x, g.const(W.astype(g.np_float))), g.const(b.astype(g.np_float).reshape(1, -1)))
        if l < n_layers - 1:
            x = _activation(g, x, est.activation)
    return x


def _class_labels(classes: np.ndarray) -> np.ndarray:
    """The classes as an ONNX tensor holds them: strings, int64, float64 or bool."""
    c = np.asarray(classes)
    if c.dtype.kind in "USO":
        return c.astype(str).astype(object)
    if c.dtype.kind in "iu":
        return c.astype(np.int64)
    return c.astype(np.float64) if c.dtype.kind == "f" else c.astype(bool)


def _outputs(g: _Graph, logits: str, est) -> list:
    """The output transform and the graph's outputs (ValueInfo)."""
    loss = est.loss_
    if loss == "mse":
        g.op("Identity", logits, out="variable")
        return [helper.make_tensor_value_info("variable", g.float, [None, int(est.n_outputs_)])]
    if loss == "cross_entropy":
        g.op("Softmax", logits, axis=1, out="probabilities")
    elif loss == "binary_cross_entropy":
        p = g.op("Sigmoid", logits)
        g.op("Concat", g.op("Sub", g.const(np.ones((1, 1), g.np_float)), p), p, axis=1, out="probabilities")
    else:
        raise NbnetError(f"loss {loss!r} has no ONNX output transform in this nbnet; the model file is foreign")
    classes = _class_labels(est.classes_)
    index = g.op("ArgMax", "probabilities", axis=1, keepdims=0)
    g.op("Gather", g.const(classes), index, axis=0, out="label")
    label_type = helper.np_dtype_to_tensor_dtype(classes.dtype) if classes.dtype != object else TensorProto.STRING
    return [helper.make_tensor_value_info("label", label_type, [None]),
            helper.make_tensor_value_info("probabilities", g.float, [None, len(classes)])]


# --- the whole model ------------------------------------------------------------------------------
def _metadata(est, names, categories, specs) -> dict:
    meta = {"nbnet_version": __version__, "estimator": type(est).__name__,
            "feature_names": json.dumps(names), "categories": json.dumps(categories),
            "inputs": json.dumps([list(s) for s in specs])}
    if getattr(est, "classes_", None) is not None:
        meta["classes"] = json.dumps([c.item() if isinstance(c, np.generic) else c for c in est.classes_])
    return meta


def build_onnx(est, feature_names: list[str] | None = None, categories: dict | None = None, *,
               input_type: str = "float64"):
    """The ``onnx.ModelProto`` of a fitted nbnet estimator. ``feature_names`` (the matrix columns,
    one-hot groups as ``col=category``) and ``categories`` (``{column: [category, ...]}``) name the
    raw inputs as :func:`nbnet.experiment.tracking.feature_spec` gives them; ``input_type``
    (``float64``, the default, or ``float32``) is the numeric inputs' element type."""
    _require_onnx()
    weights = est.get_weights()  # first: an unfitted estimator says so
    if input_type not in INPUT_TYPES:
        raise NbnetError(f"input type must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}")
    categories = {str(k): [str(c) for c in v] for k, v in (categories or {}).items()}
    names = [str(n) for n in feature_names] if feature_names is not None else None
    n = int(est.n_features_in_)
    if categories and (names is None or len(names) != n):
        raise NbnetError(f"the model takes {n} feature columns but its stored names list "
                         f"{None if names is None else len(names)}; the model file is damaged")
    specs = _input_specs(names, categories, n, input_type)
    g = _Graph(est.dtype, [s.name for s in specs])
    x = _encoded_matrix(g, specs, categories) if categories else g.op("Cast", MATRIX_INPUT, to=TensorProto.DOUBLE)
    pre = getattr(est, "preprocessor_", None)
    if pre is not None:
        x = _preprocessed(g, x, pre)
    x = g.op("Cast", x, to=g.float)
    outputs = _outputs(g, _network(g, x, est, weights), est)
    inputs = [helper.make_tensor_value_info(s.name, TensorProto.STRING if s.dtype == "string" else _ONNX_FLOAT[s.dtype],
                                            [None, s.width]) for s in specs]
    graph = helper.make_graph(g.nodes, f"nbnet_{type(est).__name__}", inputs, outputs, g.initializers)
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("ai.onnx.ml", ML_OPSET)] if categories else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="nbnet", producer_version=__version__,
                              doc_string=f"nbnet {type(est).__name__}: raw columns → predictions")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, _metadata(est, names, categories, specs))
    onnx.checker.check_model(model, full_check=True)
    return model


# --- the check before writing: ONNX Runtime against nbnet on sample rows ----------------------------
CHECK_ROWS = 64
CHECK_TOL = {"float32": 1e-4, "float64": 1e-9}  # absolute, on probabilities (relative to the scale for regressors)


def _sample_rows(est, names: list[str] | None, categories: dict, rng) -> tuple[np.ndarray, dict]:
    """``(X, categorical)``: rows of nbnet's feature matrix drawn around the training statistics
    (NaN in some cells when the model imputes), and for each categorical column the category
    index of every row (-1: none, an all-zeros group)."""
    pre = getattr(est, "preprocessor_", None)
    n, d = CHECK_ROWS, int(est.n_features_in_)
    mean, std = np.zeros(d), np.ones(d)
    if pre is not None and "mean" in pre.stats_:
        mean, std = np.nan_to_num(pre.stats_["mean"]), np.nan_to_num(pre.stats_["std"], nan=1.0)
    X = rng.normal(mean, std + 1e-3, size=(n, d))
    if pre is not None and pre.allows_nan:
        X[rng.random((n, d)) < 0.1] = np.nan
    chosen = {}
    for c, cats in categories.items():
        cols = np.array([names.index(f"{c}={k}") for k in cats], np.int64)
        idx = rng.integers(-1, len(cats), n)  # -1: no category (an unseen or missing value)
        X[:, cols] = 0.0
        rows = np.flatnonzero(idx >= 0)
        X[rows, cols[idx[rows]]] = 1.0
        chosen[c] = idx
    return X, chosen


def _verify(proto, est, names: list[str] | None, categories: dict, input_type: str) -> None:
    """Run the graph on sample rows and compare with the estimator; a difference means the model
    holds something the export does not cover: one NbnetError, and nothing is written."""
    if onnxruntime is None:
        return
    X, chosen = _sample_rows(est, names, categories, np.random.default_rng(0))
    X = X.astype(input_type).astype(np.float64)  # the values the graph's inputs can hold
    if categories:
        feed = {}
        for s in _input_info(proto):
            if s.dtype == "string":
                cats = np.array([str(k) for k in categories[s.name]] + [""], dtype=object)
                feed[s.name] = cats[chosen[s.name]].reshape(-1, 1)  # index -1: "", no category
            else:
                feed[s.name] = X[:, [names.index(s.name)]].astype(input_type)
    else:
        feed = {MATRIX_INPUT: X.astype(input_type)}
    sess = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["variable" if est.loss_ == "mse" else "probabilities"], feed)[0]
    want = est.predict(X).reshape(len(X), -1) if est.loss_ == "mse" else est.predict_proba(X)
    scale = max(1.0, float(np.abs(want).max())) if est.loss_ == "mse" else 1.0
    diff = float(np.max(np.abs(got - want))) if got.shape == want.shape else np.inf  # NaN: a failure too
    if not diff <= CHECK_TOL[est.dtype] * scale:
        raise NbnetError(f"the ONNX graph does not reproduce this {type(est).__name__} (largest difference {diff:.3g} "
                         "on sample rows): the model holds a piece the ONNX export does not cover")


def _input_info(model) -> list[InputSpec]:
    """The graph's inputs as :class:`InputSpec` (name, element type, width)."""
    kinds = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64", TensorProto.STRING: "string"}
    return [InputSpec(i.name, kinds[i.type.tensor_type.elem_type], i.type.tensor_type.shape.dim[1].dim_value)
            for i in model.graph.input]


def export_onnx(model, path, *, input_type: str = "float64", tracking_uri: str | None = None) -> ExportInfo:
    """Write ``model`` as an ONNX graph to ``path``, atomically (see the module docstring).

    ``model`` is what ``nbnet predict`` takes (a local ``.nbnet`` file, ``runs:/RUN_ID/model``,
    ``models:/NAME@alias``, ``models:/NAME/VERSION``) or a fitted estimator. ``input_type``:
    ``float64`` (default) or ``float32`` numeric inputs; float32 inputs round raw values to 7
    digits before the preprocessing, which a column of small spread around a large mean
    (timestamps) magnifies."""
    _require_onnx()
    if isinstance(model, (str, os.PathLike)):
        est, (names, categories) = tracking.load_model(str(model), tracking_uri)
    else:
        est = model
        names, categories = tracking.feature_spec(est)
    proto = build_onnx(est, names, categories, input_type=input_type)
    _verify(proto, est, names, categories, input_type)
    if proto.ByteSize() >= 2**31:  # protobuf's limit of one message
        raise NbnetError(f"the ONNX graph of this model takes {proto.ByteSize() / 2**30:.1f} GiB, over the 2 GiB "
                         "of one ONNX file; export a smaller model")
    data = proto.SerializeToString()
    out = Path(path)
    try:
        atomic_write(out, lambda f: f.write(data))
    except OSError as e:
        raise NbnetError(f"could not write {str(out)!r}: {e.strerror or e}") from None
    return ExportInfo(str(out), _input_info(proto), [o.name for o in proto.graph.output])


__all__ = ["ExportInfo", "InputSpec", "build_onnx", "export_onnx"]

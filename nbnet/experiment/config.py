"""Experiment files: TOML → frozen dataclasses, ``--set key=value`` overrides, search spaces.

An experiment file has six tables; every key is optional and defaults to the value commented
below (nanoGPT-style: the dataclasses *are* the documentation)::

    [data]          where the data comes from, how it is split and preprocessed
    [model]         the network (estimator keyword arguments)
    [train]         the optimisation (estimator keyword arguments) plus seed/device/threads
    [search]        the Optuna sweep: sampler, pruner, trial count, metric and direction
    [search.space]  one entry per searched value, keyed by its dotted config path:
                    "train.learning_rate" = {type = "float", low = 1e-4, high = 1e-1, log = true}
    [monitor]       drift and performance thresholds of nbnet monitor / nbnet promote (psi, ks, tolerance)

Overrides use the same dotted paths and Python literals (a bare word is taken as a string)::

    nbnet sweep digits --set train.epochs=5 --set model.activation=tanh \
                       --set 'search.space."train.learning_rate".high=0.05'

The config is validated once, when it is loaded; a wrong key or value raises
:class:`~nbnet.errors.NbnetError` with one line.

Example
-------
>>> cfg = load_experiment("digits", ["train.epochs=3"])
>>> cfg.train.epochs, cfg.model.hidden()
(3, (128,))
"""

from __future__ import annotations

import ast
import importlib.resources
import json
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace  # noqa: F401 (fields is re-exported)
from pathlib import Path

from nbnet import optim
from nbnet.errors import NbnetError
from nbnet.experiment.typecheck import coerce, type_hints, unknown_key
from nbnet.kernels import BACKENDS
from nbnet.kernels.tables import ACTIVATIONS
from nbnet.metrics import METRICS, direction
from nbnet.nn.schedules import SCHEDULES, Schedule
from nbnet.nn.weights import check_class_weight

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

SAMPLERS = ("tpe", "gp", "random", "grid", "cmaes")
PRUNERS = ("median", "hyperband", "none")
DIRECTIONS = ("maximize", "minimize", "auto")
PARAM_TYPES = ("int", "float", "categorical")
#: The example experiments shipped inside the package (package data: the same in a checkout and a wheel).
SHIPPED_EXPERIMENTS = importlib.resources.files("nbnet") / "examples"


# --- the tables ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    source: str = "builtin:digits"  # data spec: builtin:NAME | csv:PATH | npz:PATH | parquet:PATH | synthetic:n=..,d=..,classes=.. | memory:NAME@DIGEST (nbnet.sweep's arrays)
    target: str | None = None  # label column of a CSV/Parquet file (required there); relative paths resolve against the working directory
    categorical: tuple[str, ...] = ()  # CSV/Parquet columns to one-hot encode (categories remembered in the model)
    task: str | None = None  # classification | regression | None (inferred from the labels)
    val_fraction: float = 0.2  # held out for validation: early stopping, pruning, model selection
    test_fraction: float = 0.0  # held out, untouched, for a final test score (0: no test split)
    split_seed: int = 0  # seed of the splits, kept apart from train.seed so searching seeds keeps data fixed
    stratify: bool = True  # stratify the splits by class (classification only)
    cleaning: dict = field(default_factory=dict)  # row cleaning before splitting (keys of nbnet.data.prep.clean), e.g. {drop_duplicates = true}
    preprocessing: dict = field(default_factory=dict)  # nbnet.data.prep.Preprocessor spec, fitted on train only, saved in the model


@dataclass(frozen=True)
class ModelConfig:
    hidden_layer_sizes: tuple[int, ...] = (128,)  # widths of the hidden layers (ignored when n_layers and width are set)
    n_layers: int | None = None  # depth; with width, builds hidden_layer_sizes (so depth and width can be searched)
    width: int | None = None  # width of the first hidden layer when n_layers is set
    width_ratio: float = 1.0  # each next hidden layer is width_ratio × the previous (0.5: a funnel)
    activation: str = "relu"  # relu, leaky_relu, tanh, sigmoid, elu, softplus, identity
    dropout: float = 0.0  # inverted dropout on hidden layers, in [0, 1)

    def hidden(self) -> tuple[int, ...]:
        """The hidden layer widths this config describes."""
        if self.n_layers is None and self.width is None:
            return tuple(self.hidden_layer_sizes)
        if self.n_layers is None or self.width is None:
            raise NbnetError("model.n_layers and model.width go together; set both or neither")
        sizes, w = [], float(self.width)
        for _ in range(self.n_layers):
            sizes.append(max(1, int(round(w))))
            w *= self.width_ratio
        return tuple(sizes)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20  # passes over the training split
    batch_size: int | None = 32  # None: full-batch gradient descent
    optimizer: str = "adam"  # sgd, momentum, nesterov, adam, adamw
    learning_rate: float = 1e-3
    momentum: float | None = None  # None: 0.9 for momentum/nesterov, 0 for sgd
    betas: tuple[float, float] = (0.9, 0.999)  # Adam/AdamW moment decays
    eps: float = 1e-8  # Adam/AdamW epsilon
    l2: float = 0.0  # L2 penalty 0.5*l2*||W||^2 on weights, added to the loss
    weight_decay: float = 0.0  # torch semantics: coupled for sgd/adam, decoupled for adamw
    clip_norm: float | None = None  # global gradient-norm clipping; None: off
    early_stopping: bool = False  # stop when val_loss has not improved for `patience` epochs; keep the best weights
    patience: int = 10
    min_delta: float = 0.0
    schedule: str = "constant"  # learning-rate schedule: constant, step, exponential, cosine, plateau (docs/library.md)
    warmup_epochs: int = 0  # cosine: linear warmup over this many epochs, per step (other schedules ignore it)
    lr_step_size: int = 10  # step: epochs between reductions
    lr_gamma: float = 0.1  # step, exponential, plateau: the reduction factor
    lr_min: float = 0.0  # cosine: the final rate; plateau: the lowest rate
    lr_patience: int = 10  # plateau: epochs without val_loss improvement before a reduction
    class_weight: str | dict | None = None  # None, "balanced" or {label = weight}; classification only
    warm_start: bool = False  # a second fit continues from the first (the estimator's warm_start)
    shuffle: bool = True
    noise_std: float = 0.0  # augmentation: Gaussian input noise, fresh every epoch
    mixup_alpha: float = 0.0  # augmentation: mixup Beta(alpha, alpha); 0: off
    shift_images: bool = False  # augmentation: random ±1-pixel shifts (needs image-shaped data, e.g. digits 8×8)
    dtype: str = "float32"  # float32 or float64
    device: str = "cpu"  # cpu, cuda or auto
    seed: int = 0  # weights, shuffling, dropout and augmentation; a run is reproducible from it
    n_threads: int | None = None  # None: NBNET_NUM_THREADS, NUMBA_NUM_THREADS or all cores (sweep workers: cores / workers)


@dataclass(frozen=True)
class ParamSpec:
    """One searched value: an int/float range (``low``..``high``, optionally ``log`` or ``step``)
    or categorical ``choices`` (any TOML values; lists are allowed, e.g. hidden layer sizes)."""

    type: str  # int | float | categorical
    low: int | float | None = None
    high: int | float | None = None
    log: bool = False  # sample on a log scale (low > 0)
    step: int | float | None = None  # grid step of an int/float range (None: 1 for int, continuous for float)
    choices: tuple | None = None  # categorical values


@dataclass(frozen=True)
class SearchConfig:
    sampler: str = "tpe"  # tpe (Bergstra et al. 2011), gp, random, grid, cmaes
    pruner: str = "median"  # median, hyperband, none — fed by per-epoch validation reports
    n_trials: int = 20  # trials per study, counted over all workers and resumed runs
    metric: str = "val_accuracy"  # val_<name> of nbnet.metrics.METRICS, scored on the validation split
    direction: str = "auto"  # maximize, minimize, auto (from the metric)
    n_startup_trials: int = 5  # random trials before TPE/GP model, and trials before the median pruner prunes
    n_warmup_steps: int = 2  # epochs a trial runs before it may be pruned
    timeout: float | None = None  # stop starting new trials after this many seconds (None: no limit)
    space: dict = field(default_factory=dict)  # dotted config path -> ParamSpec


@dataclass(frozen=True)
class MonitorConfig:
    """Thresholds of ``nbnet monitor`` (and the default tolerance of ``nbnet promote``)."""

    psi: float = 0.25  # a feature drifted when its PSI against the training bins exceeds this (0.1-0.25: moderate)
    ks: float = 0.2  # ... or its KS statistic against the training CDF exceeds this
    tolerance: float = 0.02  # the metric may be this much worse (in its units) than recorded / than the champion


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"  # the experiment file's name; the MLflow experiment and registered model name
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def estimator_kwargs(self) -> dict:
        """Keyword arguments of MLPClassifier/MLPRegressor (``image_shape`` is the caller's)."""
        m, t = self.model, self.train
        kw = {f.name: getattr(t, f.name) for f in fields(t) if f.name != "shift_images"}
        kw.update(hidden_layer_sizes=m.hidden(), activation=m.activation, dropout=m.dropout)
        kw["preprocessing"] = dict(self.data.preprocessing) or None
        return kw

    def direction(self) -> str:
        """maximize or minimize: the search direction, resolving ``auto`` from the metric."""
        if self.search.direction != "auto":
            return self.search.direction
        return metric_direction(self.search.metric)


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig, "search": SearchConfig,
            "monitor": MonitorConfig}


def metric_direction(metric: str) -> str:
    """Direction of a ``val_<name>``/``test_<name>`` metric (nbnet.metrics.direction)."""
    return direction(metric)


# --- building from dicts ---------------------------------------------------------------------
def _section(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise NbnetError(f"[{prefix}] must be a table, got {raw!r}")
    names = {f.name for f in fields(cls)}
    hints = type_hints(cls)
    kw = {}
    for key, value in raw.items():
        if key not in names:
            raise unknown_key(f"{prefix}.{key}", [f"{prefix}.{n}" for n in names if n != "space"])
        kw[key] = coerce(value, hints[key], f"{prefix}.{key}")
    return cls(**kw)


def _param_spec(path: str, raw) -> ParamSpec:
    key = f"search.space.{path!r}" if "." in path else f"search.space.{path}"
    if isinstance(raw, ParamSpec):
        return raw
    if isinstance(raw, (list, tuple)):  # shorthand: a list is categorical choices
        raw = {"type": "categorical", "choices": list(raw)}
    if not isinstance(raw, dict):
        raise NbnetError(f"{key} must be a table like {{type = \"float\", low = 1e-4, high = 0.1, log = true}}, got {raw!r}")
    raw = dict(raw)
    if "choices" in raw and "type" not in raw:
        raw["type"] = "categorical"
    names = {f.name for f in fields(ParamSpec)}
    hints = type_hints(ParamSpec)
    kw = {}
    for k, v in raw.items():
        if k not in names:
            raise unknown_key(f"{key}.{k}", [f"{key}.{n}" for n in names])
        kw[k] = coerce(v, hints[k], f"{key}.{k}")
    if "type" not in kw:
        raise NbnetError(f"{key} needs type = \"int\", \"float\" or \"categorical\"")
    spec = ParamSpec(**kw)
    if spec.type not in PARAM_TYPES:
        raise NbnetError(f"{key}.type must be one of {', '.join(PARAM_TYPES)}, got {spec.type!r}")
    if spec.type == "categorical":
        if not spec.choices:
            raise NbnetError(f"{key} is categorical and needs a non-empty choices = [...]")
        choices = tuple(tuple(c) if isinstance(c, list) else c for c in spec.choices)
        return replace(spec, choices=choices)
    if spec.low is None or spec.high is None:
        raise NbnetError(f"{key} is {spec.type} and needs low and high")
    if not spec.low <= spec.high:
        raise NbnetError(f"{key} has low={spec.low} > high={spec.high}")
    if spec.log and spec.low <= 0:
        raise NbnetError(f"{key} has log = true, which needs low > 0 (got {spec.low})")
    if spec.log and spec.step is not None:
        raise NbnetError(f"{key} cannot have both log = true and a step")
    if spec.type == "int":
        for b in ("low", "high", "step"):
            v = getattr(spec, b)
            if v is not None and float(v) != int(v):
                raise NbnetError(f"{key} is int but {b}={v} is not a whole number")
    return spec


def field_type(path: str):
    """The annotation of a dotted config path like ``train.learning_rate``; NbnetError if unknown."""
    section, _, name = path.partition(".")
    if section not in SECTIONS or section == "search":
        valid = [f"{s}.{f.name}" for s, c in SECTIONS.items() if s != "search" for f in fields(c)]
        raise unknown_key(path, valid)
    cls = SECTIONS[section]
    hints = type_hints(cls)
    if name not in hints:
        raise unknown_key(path, [f"{section}.{f.name}" for f in fields(cls)])
    return hints[name]


def _check_space(space: dict) -> dict:
    out = {}
    for path, raw in space.items():
        spec = _param_spec(path, raw)
        tp = field_type(path)
        if spec.type == "categorical":
            for c in spec.choices:
                value = coerce(list(c) if isinstance(c, tuple) else c, tp, f"search.space.{path!r} choice")
                _check_name_choice(path, value)
        else:
            probe = int(spec.low) if spec.type == "int" else float(spec.low)
            coerce(probe, tp, f"search.space.{path!r} ({spec.type})")
        out[path] = spec
    return out


def _check_name_choice(path: str, value) -> None:
    """A searched value that must be a name from a table: each choice is checked up front."""
    if path == "train.schedule" and value not in SCHEDULES:
        raise NbnetError(f"search.space 'train.schedule' choice {value!r} is unknown; choose from {', '.join(SCHEDULES)}")
    if path == "train.class_weight":
        check_class_weight(value, "search.space 'train.class_weight' choice")


def from_dict(raw: dict, name: str = "experiment") -> ExperimentConfig:
    """Build and validate a config from a nested dict (a parsed TOML file or :func:`to_dict`)."""
    if not isinstance(raw, dict):
        raise NbnetError("an experiment must be a table of [data], [model], [train], [search]")
    raw = dict(raw)
    name = raw.pop("name", name)
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        raise unknown_key(sorted(unknown)[0], list(SECTIONS) + ["name"])
    search = dict(raw.get("search", {}))
    space = search.pop("space", {})
    if not isinstance(space, dict):
        raise NbnetError("[search.space] must be a table of dotted paths → {type, low, high, ...}")
    cfg = ExperimentConfig(
        name=str(name),
        data=_section(DataConfig, raw.get("data", {}), "data"),
        model=_section(ModelConfig, raw.get("model", {}), "model"),
        train=_section(TrainConfig, raw.get("train", {}), "train"),
        search=replace(_section(SearchConfig, search, "search"), space=_check_space(space)),
        monitor=monitor_config(raw.get("monitor", {})),
    )
    validate(cfg)
    return cfg


def monitor_config(raw: dict) -> MonitorConfig:
    """A validated [monitor] table (thresholds are numbers >= 0)."""
    m = _section(MonitorConfig, raw, "monitor")
    for f in fields(m):
        if not getattr(m, f.name) >= 0:
            raise NbnetError(f"monitor.{f.name} must be a number >= 0, got {getattr(m, f.name)}")
    return m


def validate(cfg: ExperimentConfig) -> None:
    """Value checks beyond types: names from nbnet's tables, ranges, search settings."""
    d, m, t, s = cfg.data, cfg.model, cfg.train, cfg.search
    if ":" not in d.source:
        raise NbnetError(f"data.source {d.source!r} needs a kind prefix: builtin:digits, csv:PATH, npz:PATH, parquet:PATH or synthetic:n=1000,d=20")
    if d.task not in (None, "classification", "regression"):
        raise NbnetError(f"data.task must be classification, regression or omitted, got {d.task!r}")
    if not 0.0 < d.val_fraction < 1.0:
        raise NbnetError(f"data.val_fraction must be in (0, 1), got {d.val_fraction}")
    if not 0.0 <= d.test_fraction < 1.0 or d.val_fraction + d.test_fraction >= 1.0:
        raise NbnetError(f"data.test_fraction must be in [0, 1) with val_fraction + test_fraction < 1, got {d.test_fraction}")
    if m.activation not in ACTIVATIONS:
        raise NbnetError(f"model.activation {m.activation!r} is unknown; choose one of {', '.join(ACTIVATIONS)}")
    if not 0.0 <= m.dropout < 1.0:
        raise NbnetError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if m.n_layers is not None and m.n_layers < 0 or m.width is not None and m.width < 1 or m.width_ratio <= 0:
        raise NbnetError("model.n_layers must be >= 0, model.width >= 1 and model.width_ratio > 0")
    sizes = m.hidden()
    if any(h < 1 for h in sizes):
        raise NbnetError(f"model.hidden_layer_sizes must be positive, got {list(sizes)}")
    if t.optimizer not in optim.OPTIMIZERS:
        raise NbnetError(f"train.optimizer {t.optimizer!r} is unknown; choose one of {', '.join(optim.OPTIMIZERS)}")
    if t.device not in BACKENDS + ("auto",):
        raise NbnetError(f"train.device {t.device!r} is unknown; choose one of {', '.join(BACKENDS)}, auto")
    if t.dtype not in ("float32", "float64"):
        raise NbnetError(f"train.dtype must be float32 or float64, got {t.dtype!r}")
    if t.epochs < 1 or (t.batch_size is not None and t.batch_size < 1) or t.learning_rate <= 0:
        raise NbnetError("train.epochs and train.batch_size must be >= 1 and train.learning_rate > 0")
    if t.n_threads is not None and t.n_threads < 1:
        raise NbnetError(f"train.n_threads must be >= 1 or omitted, got {t.n_threads}")
    _check_schedule(t)
    if s.sampler not in SAMPLERS:
        raise NbnetError(f"search.sampler {s.sampler!r} is unknown; choose one of {', '.join(SAMPLERS)}")
    if s.pruner not in PRUNERS:
        raise NbnetError(f"search.pruner {s.pruner!r} is unknown; choose one of {', '.join(PRUNERS)}")
    if s.direction not in DIRECTIONS:
        raise NbnetError(f"search.direction must be one of {', '.join(DIRECTIONS)}, got {s.direction!r}")
    if not s.metric.startswith("val_"):
        raise NbnetError(f"search.metric must be a validation metric like val_accuracy or val_r2, got {s.metric!r}")
    _check_metric(s.metric)
    natural = metric_direction(s.metric)
    if s.direction not in ("auto", natural):
        better = "higher" if natural == "maximize" else "lower"
        raise NbnetError(f"search.direction {s.direction!r} contradicts search.metric {s.metric!r} ({better} is better); "
                         f"set search.direction={natural} or auto")
    depth_width = m.n_layers is not None or "model.n_layers" in s.space or "model.width" in s.space
    if "model.hidden_layer_sizes" in s.space and depth_width:
        raise NbnetError("search.space searches model.hidden_layer_sizes, but model.n_layers/width build the hidden "
                         "sizes and would override it; search one or the other (--set model.n_layers=None --set model.width=None)")
    if s.n_trials < 1:
        raise NbnetError(f"search.n_trials must be >= 1, got {s.n_trials}")
    if s.n_startup_trials < 0 or s.n_warmup_steps < 0:
        raise NbnetError("search.n_startup_trials and search.n_warmup_steps must be >= 0")


def _check_schedule(t: TrainConfig) -> None:
    """train.schedule and its options, train.class_weight: the estimator's checks, naming the keys."""
    Schedule.from_params({f.name: getattr(t, f.name) for f in fields(t)}, prefix="train.")
    check_class_weight(t.class_weight, "train.class_weight")


def _check_metric(metric: str) -> None:
    if metric[len("val_"):] not in METRICS and metric != "val_loss":
        names = ["val_loss"] + [f"val_{k}" for k in METRICS]
        raise NbnetError(f"search.metric {metric!r} is unknown; choose one of {', '.join(names)}")


# --- files and overrides ---------------------------------------------------------------------
def shipped_experiments() -> list[str]:
    """The names of the example experiments shipped with nbnet (``nbnet sweep NAME`` finds them)."""
    return sorted(p.name[: -len(".toml")] for p in SHIPPED_EXPERIMENTS.iterdir() if p.name.endswith(".toml"))


def find_experiment(path_or_name: str | Path) -> Path:
    """A TOML path as given, or ``experiments/NAME.toml`` in the working directory, else the
    shipped example ``NAME`` (package data, :data:`SHIPPED_EXPERIMENTS`)."""
    p = Path(path_or_name)
    candidates = [p] if p.suffix == ".toml" else []
    if p.suffix != ".toml" and len(p.parts) == 1:
        name = f"{p.name}.toml"
        candidates += [Path.cwd() / "experiments" / name, SHIPPED_EXPERIMENTS / name]
    for c in candidates:
        if c.is_file():
            return c
    shipped = shipped_experiments()
    hint = f"; shipped experiments: {', '.join(shipped)}" if shipped else ""
    raise NbnetError(f"experiment {str(path_or_name)!r} not found; pass a .toml path or the name of one in experiments/{hint}")


def load_experiment(path_or_name: str | Path, overrides: list[str] | tuple = ()) -> ExperimentConfig:
    """Read an experiment file (path or name in experiments/) and apply ``key=value`` overrides."""
    path = find_experiment(path_or_name)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise NbnetError(f"{path} is not valid TOML: {e}") from None
    except OSError as e:
        raise NbnetError(f"cannot read {path}: {e.strerror}") from None
    cfg = from_dict(raw, name=path.stem)
    return apply_overrides(cfg, overrides)


def parse_override(item: str) -> tuple[str, object]:
    """``"a.b=literal"`` → ``("a.b", value)``: a Python literal, or the text itself if it is not one."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise NbnetError(f"override {item!r} must look like key=value, e.g. train.epochs=5")
    text = text.strip()
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = text
    return key, value


def _split_space_key(rest: str) -> list[str]:
    """``'"train.learning_rate".high'`` → ``['train.learning_rate', 'high']``; also accepts the
    unquoted form by matching known config paths."""
    if rest.startswith(('"', "'")):
        q = rest[0]
        end = rest.find(q, 1)
        if end < 0:
            raise NbnetError(f"unbalanced quote in search.space key {rest!r}")
        path, tail = rest[1:end], rest[end + 1:]
        return [path] + ([tail[1:]] if tail.startswith(".") and tail[1:] else [])
    parts = rest.split(".")
    if len(parts) >= 3 and parts[-1] in {f.name for f in fields(ParamSpec)}:
        return [".".join(parts[:-1]), parts[-1]]
    return [rest]


def apply_overrides(cfg: ExperimentConfig, overrides) -> ExperimentConfig:
    """Apply ``key=value`` strings (see :func:`parse_override`) and re-validate."""
    if not overrides:
        return cfg
    raw = to_dict(cfg)
    for item in overrides:
        key, value = parse_override(item)
        _set(raw, key, value)
    return from_dict(raw, name=raw.get("name", cfg.name))


def _set(raw: dict, key: str, value) -> None:
    section, _, rest = key.partition(".")
    if section == "name" and not rest:
        raw["name"] = str(value)
        return
    if section not in SECTIONS:
        raise unknown_key(key, list(SECTIONS) + ["name"])
    if not rest:
        raise NbnetError(f"override {key!r} names a whole table; set one key, e.g. {section}.{fields(SECTIONS[section])[0].name}=...")
    if section == "search" and rest.startswith("space."):
        space = raw["search"].setdefault("space", {})
        parts = _split_space_key(rest[len("space."):])
        path = parts[0]
        if len(parts) == 1:
            if value is None or value == "none":
                if path not in space:
                    raise NbnetError(f"search.space has no {path!r} to remove; searched: {', '.join(space) or 'nothing'}")
                del space[path]  # no longer searched: the fixed value applies
            else:
                field_type(path)
                space[path] = value
        else:
            if path not in space:
                raise NbnetError(f"search.space has no {path!r}; set the whole entry first, e.g. search.space.{path}={{'type': 'float', 'low': 0.0, 'high': 1.0}}")
            space[path] = dict(space[path], **{parts[1]: value})
        return
    name, _, sub = rest.partition(".")
    cls = SECTIONS[section]
    hints = type_hints(cls)
    if name not in hints or name == "space":
        raise unknown_key(key, [f"{section}.{f.name}" for f in fields(cls) if f.name != "space"])
    if sub:  # a key inside a dict field: data.preprocessing.scale=standard
        if not (hints[name] is dict or typing.get_origin(hints[name]) is dict):
            raise unknown_key(key, [f"{section}.{f.name}" for f in fields(cls)])
        target = raw[section].setdefault(name, {})
        *heads, last = sub.split(".")
        for h in heads:
            target = target.setdefault(h, {})
            if not isinstance(target, dict):
                raise NbnetError(f"cannot set {key!r}: {h!r} is not a table")
        target[last] = value
        return
    raw[section][name] = coerce(value, hints[name], key)


# --- views -----------------------------------------------------------------------------------
def _plain(v):
    if is_dataclass(v):
        return {f.name: _plain(getattr(v, f.name)) for f in fields(v)}
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return v


def to_dict(cfg: ExperimentConfig) -> dict:
    """The whole config as JSON-able nested dicts (tuples → lists); ``from_dict`` inverts it."""
    d = _plain(cfg)
    space = d["search"]["space"]
    for path, spec in space.items():  # drop unset spec fields so the dict reads like the TOML
        space[path] = {k: v for k, v in spec.items() if v is not None and not (k == "log" and v is False)}
    return d


def to_json(cfg: ExperimentConfig) -> str:
    return json.dumps(to_dict(cfg), indent=1, sort_keys=True)


def to_flat_dict(cfg: ExperimentConfig) -> dict:
    """``{"train.learning_rate": 0.001, "model.hidden_layer_sizes": (128,), ...}`` for params
    logging; dict fields are flattened too, search-space entries become one string each; the
    resolved ``model.hidden_layer_sizes`` is the one actually trained."""
    out: dict = {"name": cfg.name}

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}", x)
        else:
            out[prefix] = tuple(v) if isinstance(v, list) else v

    for section in SECTIONS:
        obj = getattr(cfg, section)
        for f in fields(obj):
            v = getattr(obj, f.name)
            if f.name == "space":
                for path, spec in v.items():
                    out[f"search.space.{path}"] = json.dumps(to_dict_spec(spec), sort_keys=True)
            elif isinstance(v, dict):
                walk(f"{section}.{f.name}", _plain(v))
            else:
                out[f"{section}.{f.name}"] = v
    out["model.hidden_layer_sizes"] = cfg.model.hidden()
    return out


def to_dict_spec(spec: ParamSpec) -> dict:
    return {k: v for k, v in _plain(spec).items() if v is not None and not (k == "log" and v is False)}


def with_values(cfg: ExperimentConfig, values: dict) -> ExperimentConfig:
    """A copy of ``cfg`` with dotted-path values set (a trial's suggestions), type-checked."""
    sections = {s: {} for s in SECTIONS}
    for path, value in values.items():
        tp = field_type(path)
        section, _, name = path.partition(".")
        sections[section][name] = coerce(value, tp, path)
    new = replace(cfg, **{s: replace(getattr(cfg, s), **kw) for s, kw in sections.items() if kw})
    validate(new)
    return new


__all__ = [
    "DataConfig", "ModelConfig", "TrainConfig", "ParamSpec", "SearchConfig", "MonitorConfig", "ExperimentConfig",
    "load_experiment", "apply_overrides", "parse_override", "from_dict", "to_dict", "to_json",
    "to_flat_dict", "with_values", "find_experiment", "metric_direction",
]

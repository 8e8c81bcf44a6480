"""The best trial of a study (``nbnet best``)."""

from __future__ import annotations

from pathlib import Path

import optuna

from nbnet.errors import NbnetError
from nbnet.experiment import tags as T
from nbnet.experiment import tracking
from nbnet.experiment.sweep.storage import (
    default_storage, env_storage, is_rdb, list_studies, open_storage, optuna_load, storage_label,
)


def best_first(study, direction: str) -> list:
    """The study's trials: the completed ones best first, then the rest in their order."""
    done = [t for t in study.trials if t.state.name == "COMPLETE" and t.value is not None]
    done.sort(key=lambda t: t.value, reverse=direction == "maximize")
    rest = [t for t in study.trials if t not in done]
    return done + rest


def best(study_name: str | None = None, storage: str | None = None) -> dict:
    """The best trial of a study (default: the newest journal under mlruns/optuna, or the newest
    study of ``storage``): number, value, metric, params, run id and model URIs. ``storage``
    defaults to ``NBNET_STORAGE`` or ``OPTUNA_STORAGE``, else the study's journal file."""
    storage = storage or env_storage()
    if study_name is None:
        study_name = _newest_study(storage)
    storage = storage or default_storage(study_name)
    if not is_rdb(storage) and not Path(storage.removeprefix("journal:")).is_file():
        raise NbnetError(f"no study {study_name!r} at {storage_label(storage)}; run nbnet sweep first or pass --storage")
    try:
        study = optuna_load(study_name, open_storage(storage))
    except KeyError:
        raise NbnetError(f"no study {study_name!r} in {storage_label(storage)}; check --study") from None
    a = study.user_attrs
    direction = study.direction.name.lower()
    done = best_first(study, direction)
    if not done or done[0].state.name != "COMPLETE":
        raise NbnetError(f"study {study_name!r} has no completed trial yet ({len(study.trials)} trials)")
    t = done[0]
    run_id = t.user_attrs.get(T.TRIAL_RUN_ID)
    return {"study": study_name, "experiment": a.get(T.STUDY_EXPERIMENT), "metric": a.get(T.STUDY_METRIC, "value"),
            "direction": direction, "trial": t.number, "value": t.value, "params": dict(t.params), "run_id": run_id,
            "model_uri": f"runs:/{run_id}/{tracking.MODEL_NAME}" if run_id else None,
            "registered": a.get(T.STUDY_REGISTERED),
            "champion_uri": f"models:/{a[T.STUDY_EXPERIMENT]}@{tracking.CHAMPION}" if a.get(T.STUDY_REGISTERED) else None,
            "n_trials": len(study.trials)}


def _newest_study(storage: str | None) -> str:
    """The name of the study created last in ``storage``, or of the newest journal under
    mlruns/optuna when no storage is named."""
    if storage is None:
        studies = list_studies()
        if not studies:
            raise NbnetError("no sweep found under mlruns/optuna; run nbnet sweep EXPERIMENT first (or pass --study/--storage)")
        return studies[0][0]
    if not is_rdb(storage) and not Path(storage.removeprefix("journal:")).is_file():
        raise NbnetError(f"no study at {storage_label(storage)}; run nbnet sweep first or pass --storage")
    names = optuna.get_all_study_names(open_storage(storage))  # in the order they were created
    if not names:
        raise NbnetError(f"no study in {storage_label(storage)}; run nbnet sweep EXPERIMENT first")
    return names[-1]

"""``--workers auto``: workers × threads from the cores, the trials left and the largest trial the
search space allows (nbnet.experiment.sweep.plan), and the choice recorded on the sweep's run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from nbnet.data.prepared import Data, prepare_data
from nbnet.errors import NbnetError
from nbnet.experiment import config as C
from nbnet.experiment import tags as T
from nbnet.experiment import tracking
from nbnet.experiment.sweep import run_sweep
from nbnet.experiment.sweep.plan import (LONG_TRIAL_SECONDS, MIN_SWEEP_SECONDS, largest_trial, parse_workers,
                                         plan_workers, trial_seconds, typical_trial)


@pytest.fixture(scope="module")
def digits():
    cfg = C.load_experiment("digits", [])
    return cfg, prepare_data(cfg)


def _mnist_sized() -> tuple[C.ExperimentConfig, Data]:
    """The synthetic example's config on MNIST-sized data (never written: only its shape is read)."""
    cfg = C.load_experiment("synthetic", [])
    d = prepare_data(C.load_experiment("digits", []))
    X = np.empty((48_000, 784), np.float32)  # np.empty touches no page
    return cfg, Data(d.dataset, X, np.arange(48_000) % 10, X[:10], np.arange(10), None, None, d.hash)


def test_parse_workers_takes_a_count_or_auto():
    assert parse_workers("auto") == "auto" and parse_workers(" AUTO ") == "auto"
    assert parse_workers("3") == 3 and parse_workers(2) == 2
    for bad, msg in (("0", "at least 1"), ("-2", "at least 1"), ("many", "or 'auto', not 'many'"), (None, "not None")):
        with pytest.raises(NbnetError, match=msg):
            parse_workers(bad)


def test_the_largest_and_typical_trials_take_each_searched_size_at_its_top_and_middle(digits):
    cfg, data = digits
    big = largest_trial(cfg, 64, 10)
    assert big.model.hidden() == (256, 256, 256)  # n_layers ≤ 3, width ≤ 256 in experiments/digits.toml
    assert big.train.batch_size == cfg.train.batch_size  # only model sizes and epochs
    assert typical_trial(cfg, 64, 10).model.hidden() == (91, 91)  # depth 2 of 1–3, width √(32 · 256) on its log scale
    assert trial_seconds(cfg, data, typical=True) < trial_seconds(cfg, data)


def test_hidden_layer_choices_are_sized_by_their_weights():
    """With 64 inputs and 10 outputs one wide layer (256,) outweighs three narrow ones (32, 32, 32):
    18 944 weights against 4 416; the largest trial takes it, the typical one the middle choice."""
    cfg = C.load_experiment("wine", [])
    space = {"model.hidden_layer_sizes": C.ParamSpec(type="categorical", choices=((32, 32, 32), (256,), (8,)))}
    cfg = dataclasses.replace(cfg, search=dataclasses.replace(cfg.search, space=space))
    assert largest_trial(cfg, 64, 10).model.hidden() == (256,)
    assert typical_trial(cfg, 64, 10).model.hidden() == (32, 32, 32)


def test_short_trials_get_a_single_threaded_worker_per_core(digits):
    cfg, data = digits
    assert trial_seconds(cfg, data) < LONG_TRIAL_SECONDS
    p = plan_workers(cfg, "auto", 100, data, cores=2)
    assert (p.workers, p.threads) == (2, 1) and p.reason.startswith("auto, 100 short trials (about ")
    assert plan_workers(cfg, "auto", 100, data, cores=8).workers == 8
    enough = int(MIN_SWEEP_SECONDS / trial_seconds(cfg, data, typical=True)) + 2  # a sweep estimated over the threshold
    assert plan_workers(cfg, "auto", enough, data, cores=enough + 5).workers == enough  # no more workers than trials


def test_one_worker_when_spawning_would_not_pay(digits):
    cfg, data = digits
    assert (plan_workers(cfg, "auto", 1, data, cores=2).workers, plan_workers(cfg, "auto", 1, data, cores=2).threads) == (1, 2)
    few = max(1, int(MIN_SWEEP_SECONDS / trial_seconds(cfg, data, typical=True)) - 1)  # a sweep under the threshold
    assert plan_workers(cfg, "auto", few, data, cores=2).workers == 1
    assert plan_workers(cfg, "auto", 20, data, cores=2).workers == 1  # the shipped sweep: about 6 s of trials
    assert plan_workers(cfg, "auto", 100, data, cores=1).workers == 1


def test_long_trials_keep_every_core_on_one_trial():
    cfg, data = _mnist_sized()
    assert trial_seconds(cfg, data) > LONG_TRIAL_SECONDS
    p = plan_workers(cfg, "auto", 100, data, cores=2)
    assert (p.workers, p.threads) == (1, 2) and "every core trains one trial" in p.reason


def test_a_set_thread_count_is_kept(digits):
    cfg, data = digits
    two = C.with_values(cfg, {"train.n_threads": 2})
    p = plan_workers(two, "auto", 100, data, cores=8)
    assert (p.workers, p.threads) == (4, 2)
    assert (plan_workers(cfg, 3, 100, data, cores=8).workers, plan_workers(cfg, 3, 100, data, cores=8).threads) == (3, 2)
    assert plan_workers(two, 3, 100, data, cores=8).threads == 2


def test_the_choice_is_recorded_on_the_sweep_run(tmp_path, monkeypatch, empty_store_db):
    from stores import fresh_store

    monkeypatch.chdir(tmp_path)
    uri = fresh_store(tmp_path, empty_store_db)
    cfg = C.load_experiment("digits", ["train.epochs=1", "search.sampler=random", "search.pruner=none"])
    r = run_sweep(cfg, trials=1, workers="auto", uri=uri, register=False, quiet=True)
    tags = tracking.client(uri).get_run(r.parent_run_id).data.tags
    assert tags[T.SWEEP_WORKERS] == "1" and tags[T.SWEEP_PLAN].startswith("auto, 1 short trial left (about ")
    assert int(tags[T.SWEEP_THREADS]) >= 1

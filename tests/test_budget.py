"""The trial budget holds exactly on the embedded journal: separate sweep processes on one study
(two terminals, each `--workers 2`) start exactly the missing trials, repetition after
repetition; a worker that dies holding the claim leaks no slot; a retried trial counts once.
(The same on PostgreSQL: tests/test_scaleout.py.)"""

from __future__ import annotations

import json
import os

import optuna
import pytest

from nbnet.experiment import tracking
from nbnet.experiment.sweep import budget
from nbnet.experiment.sweep.storage import default_storage, open_storage
from stores import fresh_store
from sweepers import EXPERIMENT, Sweepers, die_holding_the_claim, tally

REPETITIONS = 10
N_TRIALS = 6


def _counts(complete=0, pruned=0, fail=0, running=0, waiting=0, stale=0):
    return {"COMPLETE": complete, "PRUNED": pruned, "FAIL": fail, "RUNNING": running, "WAITING": waiting, "STALE": stale}


@pytest.mark.parametrize("c, waitable, want", [
    (_counts(), 0, budget.START),
    (_counts(complete=3, fail=1, running=1), 1, budget.START),  # 5 slots in use of 6
    (_counts(complete=5, running=1), 1, budget.WAIT),  # full; the RUNNING one may still give its slot back
    (_counts(complete=5, running=1), 0, budget.DONE),  # full; nothing this worker could wait for
    (_counts(complete=4, pruned=1, fail=1), 0, budget.DONE),
    (_counts(complete=7), 0, budget.DONE),  # overshot before: never more
    (_counts(complete=5, stale=3, waiting=1), 0, budget.START),  # retried trials count once, as their retry
    (_counts(complete=2, running=4, waiting=2), 4, budget.WAIT),  # a WAITING retry takes no slot until it runs
])
def test_a_worker_starts_a_trial_only_while_the_budget_has_room(c, waitable, want):
    assert budget.decide(c, N_TRIALS, waitable) == want


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_the_claim_lock_excludes_every_other_holder_until_released(tmp_path, kind):
    """The claim is an exclusive flock next to the store, which any other process (here: another
    open file description, as another process would have) cannot take while it is held."""
    from nbnet._sys import locks

    if not locks.AVAILABLE:
        pytest.skip("no flock on this platform")
    if kind == "journal":
        storage = str(tmp_path / "s.log")
        lock_file = tmp_path / "s.log.claim"
    else:
        storage = f"sqlite:///{tmp_path}/s.db"
        lock_file = tmp_path / "s.db.claim"
    claim = budget.claim_lock(storage, open_storage(storage), "s")
    with claim():
        with pytest.raises(BlockingIOError):
            locks.acquire(lock_file, blocking=False)
    locks.release(locks.acquire(lock_file, blocking=False))  # free again


@pytest.fixture
def project(tmp_path, empty_store_db):
    (tmp_path / "tiny.toml").write_text(EXPERIMENT.format(n_trials=N_TRIALS))
    uri = fresh_store(tmp_path, empty_store_db)
    return tmp_path, uri, {**os.environ, "MLFLOW_TRACKING_URI": uri}


def _journal_study(folder, name: str):
    return optuna.load_study(study_name=name, storage=open_storage(default_storage(name, folder)))


@pytest.mark.slow
def test_two_sweeps_of_two_workers_on_one_journal_start_exactly_the_missing_trials(project):
    """Two `--workers 2` sweeps (4 worker processes) start together on a fresh journal study, ten
    times: every repetition has exactly N finished trials, N trial runs, nothing left running."""
    folder, uri, env = project
    sweepers = Sweepers(folder, folder / "tiny.toml", count=2, workers=2, env=env)
    tallies = []
    try:
        for rep in range(REPETITIONS):
            sweepers.sweep(f"rep{rep}")
            runs = tracking.client(uri).search_runs([tracking.client(uri).get_experiment_by_name("tiny").experiment_id],
                                                    max_results=5000)
            tallies.append(tally(_journal_study(folder, f"rep{rep}"), runs))
    finally:
        sweepers.close()
    print(json.dumps(tallies))
    over = [i for i, t in enumerate(tallies) if t["trials"] > N_TRIALS]
    assert not over, f"{len(over)} of {REPETITIONS} repetitions started more than {N_TRIALS} trials: {tallies}"
    for t in tallies:
        assert t["counted"] == t["trials"] == N_TRIALS and t["states"] == {"COMPLETE": N_TRIALS}, tallies
        assert t["runs"] == N_TRIALS and not t["run_names"] and not t["open_runs"], tallies
    # the two sweeps raced in every repetition (their spawned workers join while the trials last)
    assert min(t["workers"] for t in tallies) >= 2, tallies


@pytest.mark.slow
def test_a_worker_that_dies_holding_the_claim_leaks_no_slot(project):
    """A process takes the claim, creates a trial and is killed before recording itself as its
    owner: the next sweep is not blocked by the lock (the kernel dropped it), fails the orphan
    once it is older than the grace period, runs its parameters again, and ends with exactly N
    counted trials: the retried one counts once."""
    folder, uri, env = project
    name = "orphan"
    number, lr = die_holding_the_claim(default_storage(name, folder), name, cwd=folder, env=env)
    sweepers = Sweepers(folder, folder / "tiny.toml", count=1, workers=2,
                        env={**env, "NBNET_GRACE_SECONDS": "2"})
    try:
        sweepers.sweep(name)
    finally:
        sweepers.close()
    study = _journal_study(folder, name)
    trials = study.get_trials(deepcopy=False)
    orphan = trials[number]
    assert orphan.state.name == "FAIL" and orphan.user_attrs["stale"] and "died" in orphan.user_attrs["fail_reason"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == number]
    assert retry.state.name == "COMPLETE" and retry.params["train.learning_rate"] == pytest.approx(lr)
    runs = tracking.client(uri).search_runs([tracking.client(uri).get_experiment_by_name("tiny").experiment_id])
    t = tally(study, runs)
    assert t["counted"] == N_TRIALS and t["trials"] == N_TRIALS + 1, t
    # every trial that ran has its one run; the orphan never got as far as creating one
    assert t["runs"] == N_TRIALS and t["run_names"] == [f"trial-{number}"] and not t["open_runs"], t

"""Several sweep processes on one study at the same moment, repetition after repetition: the
test of the trial budget (``nbnet.experiment.sweep.budget``) under real races.

Run as a script, this module is one such process: ``python sweepers.py EXPERIMENT WORKERS
[STORAGE]`` prints ``@sweepers ready``, then for every study name it reads on stdin runs
``run_sweep(cfg, study_name=NAME, storage=STORAGE, workers=WORKERS)`` (the path of ``nbnet sweep``:
the study, its parent run, worker processes, tracked trials) and prints ``@sweepers {JSON}``. The test
side (:class:`Sweepers`) writes the same name to every process at once, so they start together
(a barrier without sleeps), and reads each one's line back.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path


#: Near-instant trials (150 iris rows, 4 hidden units, 1 epoch, one thread): the workers finish
#: together and race for the next trial.
EXPERIMENT = """
[data]
source = "builtin:iris"
val_fraction = 0.3

[model]
hidden_layer_sizes = [4]

[train]
epochs = 1
batch_size = 32
n_threads = 1
seed = 0

[search]
sampler = "random"
pruner = "none"
n_trials = {n_trials}
metric = "val_accuracy"

[search.space]
"train.learning_rate" = {{ type = "float", low = 1e-3, high = 1e-1, log = true }}
"""

#: A worker that dies holding the claim: it takes the study's claim lock, asks Optuna for a trial
#: (RUNNING, with parameters, its owner not yet recorded) and is killed (SIGKILL) before it lets go.
DIE_HOLDING_THE_CLAIM = """
import os, signal, sys
import optuna
from nbnet.experiment.sweep.budget import claim_lock
from nbnet.experiment.sweep.storage import open_storage
storage, name = sys.argv[1], sys.argv[2]
obj = open_storage(storage)
study = optuna.create_study(study_name=name, storage=obj, direction="maximize")
with claim_lock(storage, obj, name)():
    trial = study.ask({"train.learning_rate": optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)})
    print(trial.number, trial.params["train.learning_rate"], flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""


def die_holding_the_claim(storage: str, study: str, *, cwd: Path, env: dict) -> tuple[int, float]:
    """Run :data:`DIE_HOLDING_THE_CLAIM`; (the orphaned trial's number, its learning rate)."""
    proc = subprocess.run([sys.executable, "-c", DIE_HOLDING_THE_CLAIM, storage, study], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr  # killed while holding the lock
    number, lr = proc.stdout.split()
    return int(number), float(lr)


_MARK = "@sweepers"  # starts the lines of this protocol on stdout


class Sweepers:
    """``count`` processes in ``folder``, each ready to sweep ``experiment`` with ``workers`` workers."""

    def __init__(self, folder: Path, experiment: Path, *, count: int, workers: int = 1, storage: str | None = None,
                 env: dict | None = None):
        self.folder, self.count = folder, count
        args = [sys.executable, str(Path(__file__).resolve()), str(experiment), str(workers)] + ([storage] if storage else [])
        self.logs = [open(folder / f"sweeper-{i}.log", "w") for i in range(count)]
        self.procs = [subprocess.Popen(args, cwd=folder, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       stderr=log, text=True, start_new_session=True) for log in self.logs]
        self.lines = [queue.Queue() for _ in self.procs]
        for p, q in zip(self.procs, self.lines):
            threading.Thread(target=_drain, args=(p.stdout, q), daemon=True).start()
        for i in range(count):
            assert self._line(i, timeout=300) == "ready", self.log(i)

    def _line(self, i: int, timeout: float) -> str:
        """The next line that process ``i`` meant for us (MLflow prints to stdout too)."""
        while True:
            try:
                line = self.lines[i].get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"sweeper {i} said nothing for {timeout:.0f}s\n{self.log(i)}") from None
            assert line is not None, f"sweeper {i} exited ({self.procs[i].poll()})\n{self.log(i)}"
            if line.startswith(_MARK):
                return line[len(_MARK):].strip()

    def log(self, i: int) -> str:
        self.logs[i].flush()
        return (self.folder / f"sweeper-{i}.log").read_text()[-3000:]

    def sweep(self, study: str, timeout: float = 600) -> list[dict]:
        """Every process sweeps ``study`` (started together); their results."""
        for p in self.procs:
            p.stdin.write(study + "\n")
            p.stdin.flush()
        out = [json.loads(self._line(i, timeout)) for i in range(self.count)]
        bad = [f"sweeper {i}: {r['error']}\n{self.log(i)}" for i, r in enumerate(out) if "error" in r]
        assert not bad, "\n".join(bad)
        return out

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.stdin.close()
        for p in self.procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
        for log in self.logs:
            log.close()


def _drain(stream, q: queue.Queue) -> None:
    """Every line of ``stream`` into ``q``, then None (the process ended)."""
    for line in stream:
        q.put(line)
    q.put(None)


def tally(study, runs: list) -> dict:
    """What one repetition left: trials by state; ``counted``: the finished trials that count
    against n_trials (a failed trial whose parameters were retried does not); ``runs``: the trial
    runs of the study; ``run_names``: trial-N names seen more than once or missing;
    ``workers``: how many processes ran its trials."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    states = Counter(t.state.name for t in trials)
    counted = sum(1 for t in trials if t.state.is_finished() and t.number not in retried)
    mine = [r for r in runs if r.data.tags.get("optuna.study") == study.study_name and r.data.tags.get("nbnet.kind") == "trial"]
    names = Counter(r.info.run_name for r in mine)
    wrong = sorted((set(names) ^ {f"trial-{t.number}" for t in trials}) | {n for n, k in names.items() if k > 1})
    return {"trials": len(trials), "counted": counted, "states": dict(states), "runs": len(mine),
            "open_runs": sum(1 for r in mine if r.info.status == "RUNNING"), "run_names": wrong,
            "workers": len({t.user_attrs.get("pid") for t in trials})}


def _main(experiment: str, workers: str, storage: str | None = None) -> None:
    from nbnet.experiment import config as C
    from nbnet.experiment.sweep import run_sweep

    cfg = C.load_experiment(experiment)
    print(_MARK, "ready", flush=True)
    for line in sys.stdin:
        study = line.strip()
        try:
            r = run_sweep(cfg, study_name=study, storage=storage, workers=int(workers), register=False, quiet=True)
            out = {"study": study, "complete": r.n_complete, "failed": r.n_failed, "pruned": r.n_pruned}
        except Exception as e:  # reported to the test, which fails with it
            out = {"study": study, "error": f"{type(e).__name__}: {e}"}
        print(_MARK, json.dumps(out), flush=True)


if __name__ == "__main__":
    _main(*sys.argv[1:])

"""Storage faults end in one line and the next run resumes: a torn study journal, a full disk, an
I/O error, a read-only store and an unreachable tracking store (a stopped MLflow server, a
PostgreSQL that goes away mid-sweep). Everything is real: Optuna journals, SQLite and PostgreSQL
stores, a real ``mlflow server``, a tmpfs that fills up, a TCP proxy the test cuts."""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from nbnet.errors import StoreError
from nbnet.experiment import faults
from nbnet.experiment.sweep import open_storage
from nbnet.experiment.sweep.journal import corrupt_line, repair_tail, torn_tail

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _journal(path: Path, trials: int = 2) -> bytes:
    """A journal of a study with ``trials`` finished trials, written through nbnet's storage."""
    study = optuna.create_study(study_name="s", storage=open_storage(str(path)))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=trials)
    return path.read_bytes()


def _plain_read(path: Path) -> list:
    """The study as plain Optuna reads it (``JournalFileBackend`` without nbnet, as optuna-dashboard does)."""
    return optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path)))).trials


def _sides(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".torn-*"))


# --- torn journal tails ---------------------------------------------------------------------------
def test_a_cut_at_every_byte_of_the_last_record_is_repaired_before_the_next_append(tmp_path, capsys):
    whole = _journal(tmp_path / "ref.log")
    head, last = whole[: whole.rstrip(b"\n").rfind(b"\n") + 1], whole[whole.rstrip(b"\n").rfind(b"\n") + 1:]
    assert last.endswith(b"\n") and json.loads(last)
    n_before = len(_plain_read(tmp_path / "ref.log"))
    capsys.readouterr()
    for cut in range(len(last)):
        folder = tmp_path / f"cut{cut}"
        folder.mkdir()
        journal = folder / "s.log"
        journal.write_bytes(head + last[:cut])
        study = optuna.load_study(study_name="s", storage=open_storage(str(journal)))  # reading is fine
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)  # the append repairs first
        err = capsys.readouterr().err.strip().splitlines()
        data = journal.read_bytes()
        assert all(json.loads(line) for line in data.splitlines()), f"cut at {cut}: a line does not parse"
        assert data.startswith(head)
        sides = _sides(journal)
        if cut == 0:
            assert not sides and not err
        else:
            assert len(sides) == 1 and sides[0].read_bytes() == last[:cut], f"cut at {cut}"
            assert len(err) == 1 and "warning" in err[0] and str(journal) in err[0] and sides[0].name in err[0], err
        assert len(optuna.load_study(study_name="s", storage=open_storage(str(journal))).trials) == n_before + 1
    # and a fresh process with plain Optuna (what optuna-dashboard runs) reads the repaired journal
    probe = textwrap.dedent("""
        import sys, optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend
        s = optuna.load_study(study_name="s", storage=JournalStorage(JournalFileBackend(sys.argv[1])))
        print(len(s.trials), sum(t.state.name == "COMPLETE" for t in s.trials))
    """)
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / f"cut{len(last) // 2}" / "s.log")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == str(n_before + 1)


APPEND = textwrap.dedent("""
    import sys, optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sys.argv[2] == "nbnet":
        from nbnet.experiment.sweep import open_storage
        storage = open_storage(sys.argv[1])
    else:  # plain Optuna: appends to whatever the file ends with
        storage = JournalStorage(JournalFileBackend(sys.argv[1]))
    study = optuna.load_study(study_name="s", storage=storage)
    study.set_user_attr("appended_by", sys.argv[2])
""")


@pytest.mark.parametrize("appender", ["nbnet", "plain optuna"])
def test_a_cut_then_another_processs_append(tmp_path, appender):
    """Another process appends after the cut: nbnet's repairs the tail itself; plain Optuna's record is
    glued to the torn bytes, and nbnet's next append keeps that record and cuts only the torn start."""
    journal = tmp_path / "s.log"
    whole = _journal(journal)
    torn = b'{"op_code":6,"worker_id":"x","trial_id":1,"sta'
    journal.write_bytes(whole + torn)
    other = subprocess.run([sys.executable, "-c", APPEND, str(journal), appender.split()[0]], capture_output=True,
                           text=True, timeout=120)
    assert other.returncode == 0, other.stderr
    if appender == "nbnet":
        assert len(other.stderr.strip().splitlines()) == 1 and "warning" in other.stderr
    else:
        assert torn_tail(str(journal)) is not None  # glued: the last line does not parse
        study = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert torn_tail(str(journal)) is None
    assert [p.read_bytes() for p in _sides(journal)] == [torn]
    study = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    assert study.user_attrs["appended_by"] == appender.split()[0]  # the other process's record survived
    assert len(_plain_read(journal)) == len(study.trials)


def test_a_complete_but_corrupt_record_mid_file_is_one_error_naming_file_and_line(tmp_path):
    journal = tmp_path / "s.log"
    lines = _journal(journal).splitlines(keepends=True)
    lines[3] = b'{"op_code": 5, "broken\n'  # complete (it has its newline), more records follow
    journal.write_bytes(b"".join(lines))
    assert corrupt_line(str(journal))[0] == 4
    assert torn_tail(str(journal)) is None and repair_tail(str(journal)) is None  # not a torn tail: kept
    with pytest.raises(StoreError, match=rf"{journal}.*line 4"):
        optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    best = subprocess.run([sys.executable, "-m", "nbnet", "best", "--study", "s", "--storage", str(journal)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert best.returncode == 3 and len(best.stderr.strip().splitlines()) == 1, best.stderr
    assert f"the study journal {journal} has a corrupt record at line 4" in best.stderr
    assert journal.read_bytes() == b"".join(lines)  # nothing was dropped


def test_a_full_disk_while_appending_to_the_journal_is_one_line(tmp_path, monkeypatch):
    """Injected: the journal's write fails with ENOSPC (the tmpfs test below fills a real disk)."""
    journal = tmp_path / "s.log"
    _journal(journal)
    study = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    real_open = open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # half a record reaches the disk, like a real ENOSPC
            self.f.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def full_open(path, mode="r", *a, **k):
        f = real_open(path, mode, *a, **k)
        return Full(f) if str(path) == str(journal) and mode == "ab" else f

    import nbnet.experiment.sweep.journal as J

    monkeypatch.setattr(J, "open", full_open, raising=False)
    with pytest.raises(StoreError) as e:
        study.set_user_attr("k", "v")
    msg = str(e.value)
    assert "no space left on device" in msg and str(journal) in msg and "run the same command again" in msg
    assert "\n" not in msg
    monkeypatch.undo()
    assert torn_tail(str(journal)) is not None  # the half record
    study = optuna.load_study(study_name="s", storage=open_storage(str(journal)))
    study.set_user_attr("k", "v2")  # space is back: repaired, appended
    assert _plain_read(journal) and study.user_attrs["k"] == "v2"


@pytest.mark.parametrize("what", ["a checkpoint", "a model file"])
def test_a_full_disk_while_writing_a_checkpoint_or_model_keeps_the_old_file(tmp_path, monkeypatch, what):
    """Injected: the disk fills in the middle of the file (the second array). One StoreError line
    naming the file; the previous file is whole and loads; no temporary file is left behind."""
    import numpy as np

    import nbnet
    import nbnet.io as nio
    from nbnet import MLPClassifier
    from nbnet.nn.checkpoint import Checkpoint

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), rng.integers(0, 2, 60)
    path = tmp_path / ("w.ckpt" if what == "a checkpoint" else "m.nbnet")
    real, calls = nio.np.lib.format.write_array, {"n": 0}
    ck = Checkpoint(path, every=1)

    def filling_disk(f, a, **kw):
        calls["n"] += 1
        if armed() and calls["n"] % 3 == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(f, a, **kw)

    kw = dict(hidden_layer_sizes=(5,), epochs=4, batch_size=16, seed=0, n_threads=1)
    monkeypatch.setattr(nio.np.lib.format, "write_array", filling_disk)
    if what == "a checkpoint":
        armed = lambda: ck.writes == 2  # noqa: E731  (the third checkpoint)
        with pytest.raises(StoreError) as e:
            MLPClassifier(**kw).fit(X, y, callbacks=[ck])
        monkeypatch.undo()
        assert nbnet.load(path).n_epochs_ == 2
    else:
        armed = lambda: False  # noqa: E731
        first = MLPClassifier(**kw).fit(X, y)
        first.save(path)
        armed = lambda: True  # noqa: E731
        with pytest.raises(StoreError) as e:
            MLPClassifier(**{**kw, "seed": 1}).fit(X, y).save(path)
        monkeypatch.undo()
        assert np.array_equal(nbnet.load(path).predict(X), first.predict(X))
    msg = str(e.value)
    assert msg.startswith(f"no space left on device while writing {path}") and "\n" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


# --- translating faults ---------------------------------------------------------------------------
def test_disk_and_connection_errors_become_one_line_and_others_do_not(tmp_path):
    e = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "m.npz"))
    assert faults.describe(e).startswith(f"no space left on device while writing {tmp_path / 'm.npz'}; free space")
    assert faults.describe(OSError(errno.EROFS, "Read-only file system", "x")).startswith("read-only file system")
    assert faults.describe(OSError(errno.EIO, "Input/output error", "x")).startswith("I/O error")
    assert faults.describe(OSError(errno.ENOENT, "No such file", "x")) is None
    assert faults.describe(ValueError("bad value")) is None
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert "no space left" in faults.describe(wrapped)
    assert "\n" not in faults.describe(RuntimeError("connection refused\nline two"))


def test_an_unreachable_claim_lock_names_the_study_storage():
    """The trial budget's claim lock runs SQL on the study storage's own engine, outside Optuna's
    code: its connection errors still name the study storage, without the password."""
    pytest.importorskip("psycopg", reason="the postgres extra (psycopg) is not installed")
    import types

    import sqlalchemy
    from servers import free_port

    from nbnet.experiment.sweep.budget import claim_lock

    url = f"postgresql://someone:secret@127.0.0.1:{free_port()}/nowhere"  # nothing listens there
    storage_obj = types.SimpleNamespace(engine=sqlalchemy.create_engine(url))
    with pytest.raises(sqlalchemy.exc.OperationalError) as info:
        with claim_lock(url, storage_obj, "study")():
            pass
    line = faults.describe(info.value)
    assert line.startswith("cannot reach the Optuna study storage") and "secret" not in line, line


# --- a full disk during a sweep -------------------------------------------------------------------
TOML = """
[data]
source = "builtin:iris"
val_fraction = 0.3

[model]
hidden_layer_sizes = [8]

[train]
epochs = 3
batch_size = 16
seed = 0

[search]
sampler = "random"
pruner = "none"
n_trials = {trials}
metric = "val_accuracy"

[search.space]
"train.learning_rate" = {{ type = "float", low = 1e-3, high = 1e-1, log = true }}
"""


def _sweep(folder: Path, trials: int, *, preexec=None, env=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in (env or os.environ).items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run([sys.executable, "-m", "nbnet", "sweep", "tiny.toml", "--trials", str(trials), "--no-register"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=600, preexec_fn=preexec)


def _one_store_line(proc: subprocess.CompletedProcess, *what: str) -> str:
    """The command failed with exit 3 and exactly one stderr line naming the fault and how to resume."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert len(lines) == 1, proc.stderr[-4000:]
    line = lines[0]
    assert line.startswith("nbnet: store error: ") and "run the same command again to resume" in line, line
    assert "Traceback" not in proc.stderr
    assert any(w in line for w in what), line
    print(line)  # shown with -s: the docs' table quotes these
    return line


def check_consistent(folder: Path, uri: str, study_name: str, storage, trials: int) -> None:
    """The study has ``trials`` counted COMPLETE trials (store-failed ones retried); every trial has
    at most one MLflow run, which agrees with it; no run is left RUNNING."""
    import mlflow

    study = optuna.load_study(study_name=study_name, storage=storage)
    ts = study.get_trials(deepcopy=False)
    # a dead process's trial (user attr "stale"; its parameters, if it had drawn any, retried) does not count
    retried = {t.user_attrs["retry_of"] for t in ts if "retry_of" in t.user_attrs}
    counted = [t for t in ts if t.state.name in ("COMPLETE", "PRUNED", "FAIL") and t.number not in retried
               and not t.user_attrs.get("stale")]
    assert len(counted) == trials and all(t.state.name == "COMPLETE" for t in counted), \
        [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in ts]
    assert not [t for t in ts if t.state.name in ("RUNNING", "WAITING")]
    c = mlflow.MlflowClient(tracking_uri=uri)
    runs = c.search_runs([c.get_experiment_by_name("tiny").experiment_id], max_results=1000)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"], "a RUNNING run without a live process"
    by_id = {r.info.run_id: r for r in runs}
    for t in ts:
        run = by_id.get(t.user_attrs.get("mlflow_run_id"))
        if t.state.name == "COMPLETE":
            assert run is not None and run.info.status == "FINISHED", (t.number, run and run.info.status)
            assert run.data.metrics["val_accuracy"] == pytest.approx(t.value)
        elif run is not None:
            assert run.info.status in ("FAILED", "KILLED"), (t.number, t.state.name, run.info.status)


def _mount_tmpfs(mnt: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``mnt``; the reason when this machine does not allow it."""
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True,
                           text=True, timeout=30)
    except FileNotFoundError:
        return "no mount command"
    return None if r.returncode == 0 else f"mount -t tmpfs failed: {r.stderr.strip()[:200]}"


@contextlib.contextmanager
def _tmpfs(mnt: Path, size: str, why_skip: str):
    """``mnt`` as a new tmpfs of ``size``, unmounted afterwards; the test skips with the mount's
    failure and ``why_skip`` (what covers the case instead) where it cannot be mounted."""
    mnt.mkdir()
    why = _mount_tmpfs(mnt, size)
    if why:
        pytest.skip(f"{why}{why_skip}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


@pytest.fixture
def small_disk(tmp_path):
    """A 1.6 MB tmpfs (the project's stores fill it after a few trials), unmounted afterwards."""
    with _tmpfs(tmp_path / "disk", "1600k", "; the file-size-limit variant of this test injects the write failures instead") as mnt:
        yield mnt


def _project(folder: Path, template: Path, trials: int) -> str:
    from stores import fresh_store

    (folder / "tiny.toml").write_text(TOML.format(trials=trials))
    return fresh_store(folder, template)


@pytest.mark.slow
def test_a_full_disk_mid_sweep_is_one_line_and_the_same_command_resumes(small_disk, empty_store_db):
    uri = _project(small_disk, empty_store_db, 12)
    full = _sweep(small_disk, 12)
    line = _one_store_line(full, "no space left on device")
    assert str(small_disk) in line  # names the file or store it could not write
    assert not list(small_disk.rglob("*.tmp")), "a half-written file was left behind"
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True, timeout=30)  # space freed
    again = _sweep(small_disk, 12)
    assert again.returncode == 0, again.stderr[-4000:]
    check_consistent(small_disk, uri, "tiny", open_storage(str(small_disk / "mlruns" / "optuna" / "tiny.log")), 12)


@pytest.mark.slow
def test_a_file_size_limit_mid_sweep_is_one_line_and_the_same_command_resumes(tmp_path, empty_store_db):
    """Injected write failures that need no mount: RLIMIT_FSIZE makes every write past the limit
    fail (EFBIG; SQLite reports a disk I/O error)."""
    import resource
    import signal

    uri = _project(tmp_path, empty_store_db, 8)
    limit = (tmp_path / "mlflow.db").stat().st_size + 120_000  # a few trials' rows

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    failed = _sweep(tmp_path, 8, preexec=limited)
    _one_store_line(failed, "I/O error while writing the MLflow store", "file size limit exceeded")
    again = _sweep(tmp_path, 8)
    assert again.returncode == 0, again.stderr[-4000:]
    check_consistent(tmp_path, uri, "tiny", open_storage(str(tmp_path / "mlruns" / "optuna" / "tiny.log")), 8)


@pytest.mark.slow
def test_a_torn_journal_then_nbnet_sweep_best_and_a_dashboard_reader(tmp_path, empty_store_db):
    uri = _project(tmp_path, empty_store_db, 2)
    first = _sweep(tmp_path, 2)
    assert first.returncode == 0, first.stderr[-3000:]
    journal = tmp_path / "mlruns" / "optuna" / "tiny.log"
    data = journal.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(data[: last + (len(data) - last) // 2])  # power lost in the middle of the last append
    again = _sweep(tmp_path, 3)
    assert again.returncode == 0, again.stderr[-3000:]
    warn = again.stderr.strip().splitlines()
    assert len(warn) == 1 and warn[0].startswith("nbnet: warning: the study journal") and "torn-" in warn[0], warn
    assert len(_sides(journal)) == 1
    best = subprocess.run([sys.executable, "-m", "nbnet", "best", "--study", "tiny", "--json"], cwd=tmp_path,
                          env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
                          capture_output=True, text=True, timeout=300)
    assert best.returncode == 0 and not best.stderr.strip(), best.stderr
    assert json.loads(best.stdout)["run_id"]
    check_consistent(tmp_path, uri, "tiny", JournalStorage(JournalFileBackend(str(journal))), 3)  # plain Optuna


@pytest.fixture
def ro_disk(tmp_path):
    """A tmpfs for the MLflow store that the test can remount read-only."""
    with _tmpfs(tmp_path / "store", "64m", " (as root a file's mode does not stop writes: a read-only mount does)") as mnt:
        yield mnt


@pytest.mark.slow
def test_a_read_only_sqlite_store_is_one_line_and_the_same_command_resumes(tmp_path, ro_disk, empty_store_db):
    project = tmp_path / "project"
    project.mkdir()
    (project / "tiny.toml").write_text(TOML.format(trials=3))
    db = ro_disk / "mlflow.db"
    db.write_bytes(empty_store_db.read_bytes())
    uri = f"sqlite:///{db}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)

    def sweep(n):
        return subprocess.run([sys.executable, "-m", "nbnet", "sweep", "tiny.toml", "--trials", str(n), "--no-register"],
                              cwd=project, env=env, capture_output=True, text=True, timeout=600)

    assert sweep(1).returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(ro_disk)], check=True, timeout=30)
    line = _one_store_line(sweep(3), "read-only")
    assert str(db) in line
    subprocess.run(["mount", "-o", "remount,rw", str(ro_disk)], check=True, timeout=30)
    again = sweep(3)
    assert again.returncode == 0, again.stderr[-3000:]
    check_consistent(project, uri, "tiny", open_storage(str(project / "mlruns" / "optuna" / "tiny.log")), 3)


# --- unreachable stores: a stopped MLflow server, PostgreSQL gone mid-sweep --------------------------
from test_scaleout import CLUSTER, _env, pg  # noqa: E402,F401  (the real PostgreSQL of the scale-out tests)

SLOW_TOML = TOML.replace("epochs = 3", "epochs = 150")  # about a second a trial: time to cut a store mid-sweep


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of ``target`` (host, port) that the test controls: ``cut()``
    drops every connection and refuses new ones (the server is gone), ``restore()`` listens again."""

    def __init__(self, target: tuple[str, int]):
        from servers import free_port

        self.target, self.port, self.lock, self.conns = target, free_port(), threading.Lock(), []
        self.restore()

    def restore(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        self.listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s: socket.socket) -> None:
        while True:
            try:
                client, _ = s.accept()
            except OSError:  # cut()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for x in (a, b):
            with contextlib.suppress(OSError):
                x.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the sweep ended before {what}: {proc.communicate()[1][-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # polling another process's progress in the study


def _completed(study_name: str, storage) -> int:
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    return sum(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))


@pytest.mark.slow
def test_postgresql_gone_mid_sweep_is_one_line_and_the_same_command_resumes(pg, tmp_path, empty_store_db):
    """The sweep's PostgreSQL connections go through a proxy that the test cuts mid-sweep (every
    connection dropped, new ones refused), so the shared server itself keeps running."""
    real = urlsplit(pg["urls"]["optuna"])
    proxy = Proxy((real.hostname, real.port or 5432))
    via_proxy = urlunsplit(real._replace(netloc=real.netloc.replace(f"{real.hostname}:{real.port or 5432}",
                                                                    f"127.0.0.1:{proxy.port}")))
    study_name = f"gone-{uuid.uuid4().hex[:6]}"
    uri = _project(tmp_path, empty_store_db, 5)
    (tmp_path / "tiny.toml").write_text(SLOW_TOML.format(trials=5))
    cmd = [sys.executable, "-m", "nbnet", "sweep", "tiny.toml", "--storage", via_proxy, "--study", study_name,
           "--no-register"]
    # a trial whose worker lost the database before recording itself is failed on resume once older
    # than the grace period (no heartbeat will ever fail it): a short one, for the test
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(NBNET_HEARTBEAT_SECONDS="1", NBNET_GRACE_SECONDS="3")
    direct = optuna.storages.RDBStorage(pg["urls"]["optuna"])
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _completed(study_name, direct) >= 1, "a finished trial", proc)
        proxy.cut()
        out, err = proc.communicate(timeout=180)  # bounded: no endless retry
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = _one_store_line(subprocess.CompletedProcess(cmd, proc.returncode, out, err), "cannot reach")
    assert "the Optuna study storage postgresql://" in line and "nbnet_test:" not in line  # no password
    assert _completed(study_name, direct) < 5
    unowned = [t for t in optuna.load_study(study_name=study_name, storage=direct).get_trials(deepcopy=False)
               if t.state.name == "RUNNING" and "pid" not in t.user_attrs]
    while unowned and (datetime.datetime.now() - max(t.datetime_start for t in unowned)).total_seconds() <= 3.5:
        time.sleep(0.1)  # the resume below fails such a trial once it is older than the grace period (3 s)
    proxy.restore()
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    check_consistent(tmp_path, uri, study_name, direct, 5)
    proxy.cut()


def _tracking_server(run_dir: Path, port: int, backend: str, *, stop: bool = False) -> None:
    args = ["--run-dir", str(run_dir), "--stop"] if stop else [
        "--backend", backend, "--artifacts", str(run_dir / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1", "--run-dir", str(run_dir), "--no-jobs", "--timeout", "180"]
    p = subprocess.run(["bash", str(CLUSTER / "start_tracking_server.sh"), *args], env=_env(), capture_output=True,
                       text=True, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.slow
def test_a_stopped_mlflow_server_is_one_line_and_the_same_command_resumes(pg, tmp_path):
    from servers import free_port

    run_dir, port = tmp_path / "server", free_port()
    run_dir.mkdir()
    _tracking_server(run_dir, port, pg["urls"]["mlflow"])
    project = tmp_path / "project"
    project.mkdir()
    (project / "tiny.toml").write_text(SLOW_TOML.format(trials=5))
    uri = f"http://127.0.0.1:{port}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    cmd = [sys.executable, "-m", "nbnet", "sweep", "tiny.toml", "--no-register"]
    journal = project / "mlruns" / "optuna" / "tiny.log"
    proc = subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            _wait_for(lambda: journal.exists() and _completed("tiny", open_storage(str(journal))) >= 1,
                      "a finished trial", proc)
        finally:
            _tracking_server(run_dir, port, "", stop=True)
        out, err = proc.communicate(timeout=300)  # MLflow's retries are bounded (faults.HTTP_RETRIES)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = _one_store_line(subprocess.CompletedProcess(cmd, proc.returncode, out, err), "cannot reach")
    assert f"the MLflow tracking server {uri}" in line
    _tracking_server(run_dir, port, pg["urls"]["mlflow"])  # the server is back
    try:
        again = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        check_consistent(project, uri, "tiny", open_storage(str(journal)), 5)
    finally:
        _tracking_server(run_dir, port, "", stop=True)


def test_store_fault_warnings_of_mlflow_and_optuna_stay_off_stderr(caplog):
    """What MLflow's and Optuna's threads log about a store fault is dropped (the command reports
    the fault once); other warnings of the same loggers pass."""
    import logging

    faults.bounded_retries()
    for name in ("mlflow.system_metrics.system_metrics_monitor", "optuna.storages._rdb.storage"):
        log = logging.getLogger(name)
        with caplog.at_level(logging.WARNING, logger=name):
            caplog.clear()
            log.warning("Caught an error from sqlalchemy: (psycopg.OperationalError) consuming input failed: "
                        "server closed the connection unexpectedly")
            log.warning("an unrelated warning")
        assert [r.getMessage() for r in caplog.records] == ["an unrelated warning"], name


THREADS = textwrap.dedent("""
    import threading, sys
    from nbnet.experiment import faults
    faults.bounded_retries()
    def run(exc):
        raise exc
    for exc in (RuntimeError("server closed the connection unexpectedly"), ValueError("not a store fault")):
        t = threading.Thread(target=run, args=(exc,))
        t.start()
        t.join()
""")


def test_a_background_threads_store_fault_stays_off_stderr():
    """Optuna's heartbeat thread meeting a dropped connection dies quietly (the command's own thread
    reports the fault); any other exception of a thread is printed as before."""
    p = subprocess.run([sys.executable, "-c", THREADS], capture_output=True, text=True, timeout=120)
    assert "ValueError: not a store fault" in p.stderr
    assert "server closed the connection" not in p.stderr

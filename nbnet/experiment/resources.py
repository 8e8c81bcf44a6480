"""Resource monitoring: MLflow system metrics for long runs, a psutil summary for every trial.

* :class:`SystemMetrics` runs MLflow's own sampler (``mlflow.system_metrics``) beside a long-lived
  run — the sweep's parent run, an ``nbnet train`` run — and logs, every
  ``NBNET_SYSTEM_METRICS_INTERVAL`` seconds (default 5; ``0`` turns it off), the machine's
  ``system/cpu_utilization_percentage``, ``system/system_memory_usage_megabytes`` (and ``_percentage``),
  disk and network use, and ``system/gpu_<i>_*`` (utilisation, memory, power) when ``nvidia-ml-py``
  is installed (the ``cuda`` extra) and finds a GPU. It writes into the run's own store, whatever
  MLflow's global tracking URI is, and a run shorter than one interval still gets one sample.
* :class:`TrialUsage` summarises one trial, too short for a sampler, from ``psutil.Process`` at
  its start and end: ``system/cpu_percent`` (CPU time of all the process's threads over wall
  time, so up to 100 × threads), ``system/peak_rss_mb`` (the process's peak resident memory
  during the trial) and ``system/rss_mb`` (at its end). Megabytes are 10⁶ bytes, as MLflow's.

Example
-------
>>> with SystemMetrics(run_id, uri=uri):                 # doctest: +SKIP
...     est.fit(X, y)
>>> usage = TrialUsage(); est.fit(X, y); usage.metrics()  # doctest: +SKIP
{'system/cpu_percent': 187.5, 'system/peak_rss_mb': 412.3, 'system/rss_mb': 398.0}
"""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

from nbnet._sys import cputime
from nbnet.errors import NbnetError
from nbnet.experiment import faults
from nbnet.experiment.tracking import default_tracking_uri

INTERVAL_ENV = "NBNET_SYSTEM_METRICS_INTERVAL"
DEFAULT_INTERVAL = 5.0  # seconds between samples; MLflow's own default (10 s) misses most of a short run

_log = logging.getLogger(__name__)


def sampling_interval() -> float:
    """Seconds between system-metric samples: ``NBNET_SYSTEM_METRICS_INTERVAL`` (``0``: off)."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise NbnetError(f"{INTERVAL_ENV} must be a number of seconds >= 0 (0 turns system metrics off), got {raw!r}")
    return value


@functools.lru_cache(maxsize=1)
def _monitor_class():
    """MLflow's ``SystemMetricsMonitor``, with a first sample that covers a whole interval and a
    count of the samples it logged."""
    import psutil  # heavy: imported on first use
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor  # heavy: imported on first use

    class Monitor(SystemMetricsMonitor):
        published = 0

        def monitor(self):
            # psutil's CPU reading is "since this thread's previous call": the sampler thread's very
            # first one has no reference and reads 0. Take the reference now, sample an interval later.
            psutil.cpu_percent()
            self._shutdown_event.wait(self.sampling_interval)
            super().monitor()

        def publish_metrics(self, metrics):
            super().publish_metrics(metrics)
            self.published += 1

    return Monitor


class SystemMetrics:
    """``with SystemMetrics(run_id, uri=uri):`` — MLflow's ``SystemMetricsMonitor`` for that run.

    The sampler runs in a daemon thread; it is stopped and flushed on every way out of the
    ``with`` block, before the caller closes the run. ``interval`` defaults to
    :func:`sampling_interval`; ``0`` makes this a no-op. Steps continue after the run's last
    system sample, so a resumed sweep appends to its parent run's curves. Monitoring never fails
    the run: an error while sampling or logging is a warning.
    """

    def __init__(self, run_id: str, *, uri: str | None = None, interval: float | None = None):
        self.run_id, self.uri = run_id, uri or default_tracking_uri()
        self.interval = sampling_interval() if interval is None else float(interval)
        self._monitor = None

    def start(self) -> SystemMetrics:
        if self.interval <= 0 or self._monitor is not None:
            return self
        import psutil  # heavy: imported on first use

        try:
            # the run's own store, explicitly: by default the monitor logs wherever MLflow's global URI points
            self._monitor = _monitor_class()(self.run_id, sampling_interval=self.interval, resume_logging=True,
                                             tracking_uri=self.uri)
            psutil.cpu_percent()  # this thread's reference for a closing sample (see stop)
            self._monitor.start()
        except Exception as e:  # noqa: BLE001 (monitoring must not fail the run)
            _log.warning("system metrics are off for run %s: %s", self.run_id, e)
            self._monitor = None
        return self

    def stop(self) -> None:
        """Stop the sampler and log the sample it holds. A run that ended before the first
        sample gets one here: memory now, CPU utilisation since :meth:`start`."""
        m, self._monitor = self._monitor, None
        if m is None:
            return
        try:
            m.finish()  # joins the thread, flushes what it logged
            if not m.published and not any(mon.metrics for mon in m.monitors):
                m.collect_metrics()
            if any(mon.metrics for mon in m.monitors):
                m.publish_metrics(m.aggregate_metrics())
            m.mlflow_logger.flush()
        except Exception as e:  # noqa: BLE001
            if faults.describe(e) is None:  # a store fault is reported once, by the command
                _log.warning("could not log the last system metrics of run %s: %s", self.run_id, e)

    def __enter__(self) -> SystemMetrics:
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False


def _peak_rss() -> int | None:
    """The process's peak resident set size in bytes (Linux ``VmHWM``), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the peak to the current RSS (Linux >= 4.0, ``clear_refs`` 5); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class TrialUsage:
    """CPU and memory of this process from construction to :meth:`metrics` (one trial's
    training); its CPU leaves out a sweep's tracking helper (:mod:`nbnet._sys.cputime`).

    Trials of one worker process train one after another, so the peak resident memory is reset to
    the current value at the start (where Linux allows it: ``/proc/self/clear_refs``); elsewhere
    ``system/peak_rss_mb`` is the process's peak so far.
    """

    def __init__(self):
        import psutil  # heavy: imported on first use

        self._proc = psutil.Process()
        self.peak_is_per_trial = _reset_peak_rss()
        self._t0 = time.perf_counter()
        self._cpu0 = cputime.work_seconds()

    def metrics(self) -> dict[str, float]:
        """``{"system/cpu_percent", "system/peak_rss_mb", "system/rss_mb"}`` for the trial so far."""
        wall = max(time.perf_counter() - self._t0, 1e-9)
        rss = self._proc.memory_info().rss
        peak = _peak_rss() or rss
        cpu = max(0.0, cputime.work_seconds() - self._cpu0)
        return {"system/cpu_percent": round(100.0 * cpu / wall, 1),
                "system/peak_rss_mb": round(max(peak, rss) / 1e6, 1), "system/rss_mb": round(rss / 1e6, 1)}


__all__ = ["SystemMetrics", "TrialUsage", "sampling_interval", "INTERVAL_ENV", "DEFAULT_INTERVAL"]

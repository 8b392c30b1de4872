"""Soak run of the deploy stack (scenario D6): ``make bench-soak [ARGS="--minutes 480"]``.

Runs one deploy of the default scene on the pybullet-backed virtual robot (pty bus, e-stop
emulator, QP filter, supervisor, startup self-check) with the scripted joint-space policy for
``--minutes`` and measures, from the process and the run's own files:

* ``rss_growth_mb_per_h``: slope of the process's resident memory (``/proc/self/statm``, sampled
  every ``--sample-s``) after the first 10% of the run, MB per hour;
* ``comm_faults_per_min``: failed bus cycles per minute in each of ``--windows`` equal windows
  of the telemetry, and ``comm_fault_drift_per_min``: last window minus first;
* ``temperature_c``: min and max servo temperature over the run, from the telemetry (logged
  every period);
* ``period_p99_ms`` per window (the loop must not degrade), ``stops``, and the deploy audit's
  verdict (every stop in the hash-chained log, no telemetry gaps: no unlogged faults).

Targets: memory growth < 20 MB/h, no comm-fault drift (|drift| <= 0.5 per min), loop p99 <= 12 ms
in every window, audit PASS. The bundled default is 5 minutes; D6 asks for 8 hours at the nominal
rate on the real robot: ``--minutes 480 --port /dev/ttyUSB0`` (pass a checkpoint as for deploy).
Prints a table and writes ``benchmarks/results/soak.json`` atomically; the deploy run and its audit
report stay in ``runs/bench_soak/<id>/``.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from safetwin.robot_io.deploy import DeployConfig, run_deploy
from safetwin.robot_io.deploy_policy import ScriptedPolicy
from safetwin.safety.audit import build_report
from safetwin.safety.runio import atomic_write_json, config_from_dict, read_jsonl, run_metadata

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "benchmarks" / "results" / "soak.json"
TARGETS = {"rss_growth_mb_per_h": 20.0, "comm_fault_drift_per_min": 0.5, "period_p99_ms": 12.0}


def rss_mb() -> float:
    """Resident memory of this process (MB), from /proc (Linux)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


class RssSampler(threading.Thread):
    """Samples :func:`rss_mb` every ``period_s`` until stopped: ``samples`` is [(t_s, MB)]."""

    def __init__(self, period_s: float) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.period_s, self.samples = period_s, []
        self._stop_event = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.monotonic() - self._t0, rss_mb()))
            self._stop_event.wait(self.period_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5.0)


def growth_mb_per_h(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of RSS after the first 10% of the run (start-up allocations), MB/h."""
    if len(samples) < 4:
        return None
    t, mb = np.array(samples).T
    keep = t >= 0.1 * t[-1]
    if keep.sum() < 3:
        return None
    return float(np.polyfit(t[keep], mb[keep], 1)[0] * 3600.0)


def window_stats(tele: list[dict[str, Any]], windows: int, control_hz: float) -> list[dict[str, Any]]:
    """Per equal window of the telemetry: comm faults per minute, loop period p99, temperatures."""
    out = []
    for chunk in np.array_split(np.arange(len(tele)), windows):
        recs = [tele[i] for i in chunk]
        if not recs:
            continue
        minutes = len(recs) / control_hz / 60.0
        comm = sum(any(f.startswith(("read_failed", "write_failed", "bus")) for f in r["faults"]) for r in recs)
        periods = [r["period_ms"] for r in recs if r.get("period_ms") is not None]
        temps = [t for r in recs for t in (r.get("temperature") or [])]
        out.append({"records": len(recs), "comm_faults_per_min": comm / minutes if minutes else None,
                    "period_p99_ms": float(np.percentile(periods, 99)) if periods else None,
                    "temperature_c": [min(temps), max(temps)] if temps else None,
                    "temperature_missing": sum(r.get("temperature") is None for r in recs)})
    return out


def soak(minutes: float, root: Path, windows: int = 5, sample_s: float = 5.0, port: str = "sim",
         checkpoint: str = "") -> dict[str, Any]:
    """Run the soak and return the result dict (see the module docstring)."""
    cfg = config_from_dict(DeployConfig, {
        "run_dir": str(root), "duration_s": minutes * 60.0, "port": port, "checkpoint": checkpoint,
        "accept_unaudited": port == "sim" and bool(checkpoint),
        **({} if checkpoint else {"action_space": "joint"})}, "soak")
    policy = None if checkpoint else ScriptedPolicy("sine", 4, cfg.chunk_dt, amplitude=0.3, freq_hz=0.2)
    sampler = RssSampler(sample_s)
    sampler.start()
    try:
        run = run_deploy(cfg, policy=policy)
    finally:
        sampler.stop()
    tele = list(read_jsonl(run / "telemetry.jsonl"))
    stats = window_stats(tele, windows, cfg.control_hz)
    report = build_report(run, write=True)
    temps = [w["temperature_c"] for w in stats if w["temperature_c"]]
    rates = [w["comm_faults_per_min"] for w in stats if w["comm_faults_per_min"] is not None]
    return {
        "minutes": minutes, "cycles": len(tele), "control_hz": cfg.control_hz, "run_dir": str(run),
        "rss_mb_start": sampler.samples[0][1], "rss_mb_end": sampler.samples[-1][1],
        "rss_growth_mb_per_h": growth_mb_per_h(sampler.samples),
        "comm_faults_per_min": rates, "comm_fault_drift_per_min": (rates[-1] - rates[0]) if rates else None,
        "period_p99_ms": [w["period_p99_ms"] for w in stats],
        "temperature_c": [min(t[0] for t in temps), max(t[1] for t in temps)] if temps else None,
        "temperature_missing_records": sum(w["temperature_missing"] for w in stats),
        "audit_verdict": report.verdict, "audit_failing": [r.id for r in report.requirements if r.status != "PASS"],
        "targets": TARGETS, "meta": run_metadata(None)}


def met(result: dict[str, Any]) -> dict[str, bool]:
    growth, drift = result["rss_growth_mb_per_h"], result["comm_fault_drift_per_min"]
    return {"rss_growth": growth is not None and growth < TARGETS["rss_growth_mb_per_h"],
            "comm_fault_drift": drift is not None and abs(drift) <= TARGETS["comm_fault_drift_per_min"],
            "period_p99": all(p is not None and p <= TARGETS["period_p99_ms"] for p in result["period_p99_ms"]),
            "audit_pass": result["audit_verdict"] == "PASS"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="soak length (D6 asks for 480 on hardware)")
    ap.add_argument("--windows", type=int, default=5, help="equal telemetry windows compared for drift")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period (s)")
    ap.add_argument("--port", default="sim", help="servo bus port ('sim': the virtual robot)")
    ap.add_argument("--checkpoint", default="", help="audited policy checkpoint ('' = scripted sine)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    result = soak(args.minutes, ROOT / "runs" / "bench_soak", args.windows, args.sample_s, args.port,
                  args.checkpoint)
    result["met"] = met(result)
    atomic_write_json(RESULT, result)
    print(f"{'measurement':30s} value")
    for key in ("minutes", "cycles", "rss_mb_start", "rss_mb_end", "rss_growth_mb_per_h", "comm_faults_per_min",
                "comm_fault_drift_per_min", "period_p99_ms", "temperature_c", "audit_verdict", "met"):
        print(f"{key:30s} {result[key]}")
    print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()

"""``summary.json`` of a deploy run: status, every stop with cause and T_stop, loop-time
statistics, comm faults by type, interventions and rejected inputs (F1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetwin.safety.runio import sha256_file


def build_summary(run: Any, status: str, energised: list[str]) -> dict[str, Any]:
    """Collect the summary of ``run`` (a ``deploy._Run``); never raises on a partial run."""
    cfg, sup, loop, arm = run.cfg, run.sup, run.loop, run.arm
    n = len(run.periods_ms)
    counts = dict(loop.counts) if loop is not None else {}
    policy = run.policy_thread
    out: dict[str, Any] = {
        "status": status, "error": run.error, "abort_signal": run.abort, "cycles": n,
        "control_hz": cfg.control_hz, "policy_hz": cfg.policy_hz,
        "loop": {"period_ms": run.periods_ms.stats(), "cycle_ms": run.cycle_ms.stats(),
                 "deadline_misses": run.misses, "deadline_miss_rate": run.misses / n if n else None},
        "stops": sup.summary()["stops"] if sup else [],
        "supervisor": ({k: v for k, v in sup.summary().items() if k != "stops"} if sup else None),
        "faults_by_type": counts,
        "interventions": {"filter": counts.get("filter_interventions", 0),
                          "clamps": sum(v for k, v in counts.items() if k == "clamp"),
                          "rejected_actions": counts.get("action_rejected", 0),
                          "holds": sum(counts.get(k, 0) for k in ("no_action", "deadline_miss",
                                                                  "chunk_exhausted", "stale_action"))},
        "comm_faults": _comm_faults(arm),
        "possibly_energised": energised,
        "policy": None if policy is None else {
            "chunks": loop.mailbox.published if loop else 0, "errors": policy.errors,
            "last_error": policy.last_error, "latency_ms": policy.latencies_ms.stats(),
            "safe_explore": _screen_counters(run)},
        "telemetry_records": run.telemetry.records, "telemetry_error": run.telemetry.error,
        "telemetry_missing": run.seq - run.telemetry.records,  # F2: > 0 means a gap in the record
        "config_sha256": _sha(run.dir / "config.yaml"), "seed": cfg.seed,
        "injected": run.injected,
        "startup_probe": run.probe,
        "driver": _describe(arm),
        "joint_names": list(loop.names) if loop is not None else None,
        "held_joints": [loop.all_names[i] for i in loop.extra] if loop is not None else None,
        "safety_spec": run.spec.to_dict() if getattr(run, "spec", None) is not None else None,
    }
    out.update(_hardware_facts(out["driver"], cfg))
    return out


def _hardware_facts(driver: dict[str, Any] | None, cfg: Any) -> dict[str, Any]:
    """F1: servo IDs/models/firmware and the latency settings, in the audit's field names."""
    if not driver:
        return {"servos": None, "latency_settings": None}
    servos = [{"id": m["id"], "secondary_id": m.get("secondary_id"), "name": m["name"],
               "model": m["model"], "firmware": m.get("firmware")} for m in driver.get("motors", [])]
    latency = {"usb_latency_timer_ms": driver.get("latency_timer_ms"),
               "return_delay_us": driver.get("return_delay_us"), "bus_watchdog_ms": driver.get("bus_watchdog_ms"),
               "baudrate": driver.get("baudrate"), "reply_timeout_s": cfg.bus_timeout_s,
               "retries": cfg.bus_retries}
    return {"servos": servos, "latency_settings": latency}


def _comm_faults(arm: Any) -> dict[str, int] | None:
    bus = getattr(arm, "bus", None)
    try:
        return dict(bus.fault_counts()) if bus is not None else None
    except Exception:  # noqa: BLE001 - a summary of a failed run must still be written
        return None


def _describe(arm: Any) -> dict[str, Any] | None:
    try:
        return arm.describe() if arm is not None and hasattr(arm, "describe") else None
    except Exception:  # noqa: BLE001 - a summary of a failed run must still be written
        return None


def _sha(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def _screen_counters(run: Any) -> dict[str, int] | None:
    """The safety critic's totals (decisions, rejections, recovery chunks, faults), or None without one."""
    inner = getattr(getattr(run, "injector", None), "policy", None)
    counters = getattr(inner, "counters", None)
    return counters() if callable(counters) else None

"""``capture_report.json`` / ``capture_report.md``, and scoring against a synthetic ground truth.

Positions in m in the robot base frame; times in s unless the key says ms.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from safetwin.safety.runio import atomic_write_json, atomic_write_text

from .objects import ObjectModel


def match_objects(centers_a: np.ndarray, centers_b: np.ndarray, max_distance: float) -> list[tuple[int, int]]:
    """Pairs (i, j) of a minimum-total-distance assignment between two sets of centres (m),
    keeping pairs closer than ``max_distance``."""
    if len(centers_a) == 0 or len(centers_b) == 0:
        return []
    cost = np.linalg.norm(np.asarray(centers_a)[:, None, :2] - np.asarray(centers_b)[None, :, :2], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    return [(int(i), int(j)) for i, j in zip(rows, cols, strict=True) if cost[i, j] <= max_distance]


def _extent_error(found: np.ndarray, truth: np.ndarray) -> float:
    """Largest relative extent error; the two footprint sides are compared sorted (a box's
    yaw is ambiguous by 90 deg)."""
    f = np.concatenate([np.sort(found[:2]), found[2:]])
    t = np.concatenate([np.sort(truth[:2]), truth[2:]])
    return float(np.max(np.abs(f - t) / t))


def score(objects: list[ObjectModel], truth: dict[str, Any], max_distance: float = 0.05) -> dict[str, Any]:
    """Compare reconstructed objects with ``ground_truth.json``: counts, per-object centroid error
    (m, 3-D) and relative extent error, and their maxima."""
    gt = truth["objects"]
    pairs = match_objects(np.array([o.center for o in objects]).reshape(-1, 3),
                          np.array([g["center"] for g in gt]).reshape(-1, 3), max_distance)
    per = []
    for i, j in pairs:
        err = float(np.linalg.norm(objects[i].center - np.asarray(gt[j]["center"])))
        per.append({"found": objects[i].name, "truth": gt[j]["name"], "centroid_err_m": err,
                    "extent_err_rel": _extent_error(objects[i].extents, np.asarray(gt[j]["extents"]))})
    return {"objects_expected": len(gt), "objects_found": len(objects), "objects_matched": len(pairs),
            "centroid_err_m": max((p["centroid_err_m"] for p in per), default=float("nan")),
            "extent_err_rel": max((p["extent_err_rel"] for p in per), default=float("nan")),
            "per_object": per}


def write_reports(folder: Path, report: dict[str, Any]) -> None:
    """Write ``capture_report.json`` and a human-readable ``capture_report.md``."""
    atomic_write_json(folder / "capture_report.json", report)
    atomic_write_text(folder / "capture_report.md", render_markdown(report))


def render_markdown(r: dict[str, Any]) -> str:
    frames = r["frames"]
    lines = [f"# Capture report: {r['scene']}", "",
             f"- input: {r['input']}",
             f"- template scene: {r['template']}",
             f"- frames used: {frames['used']} of {frames['total']} (poses: {r['pose_source']})",
             f"- registered to the robot base: {'yes' if r['registration']['registered'] else 'no'}"
             f" (board seen in {r['registration']['board_views']} frames)",
             f"- TSDF fusion: {r['timings']['fusion_s']:.2f} s ({r['fusion_ms_per_frame']:.1f} ms/frame), "
             f"mesh {r['mesh']['triangles']} triangles",
             f"- table: top at z = {r['table']['top_z']:.3f} m, size {r['table']['size'][0]:.3f} x "
             f"{r['table']['size'][1]:.3f} m", "",
             "| object | role | centre (m) | extents (m) | mass (kg, prior) | watertight | convex parts |",
             "|---|---|---|---|---|---|---|"]
    for o in r["objects"]:
        c = ", ".join(f"{v:.3f}" for v in o["center"])
        e = " x ".join(f"{v:.3f}" for v in o["extents"])
        lines.append(f"| {o['name']} | {o['role']} | {c} | {e} | {o['mass']:.3f} | {o['watertight']} | "
                     f"{o['convex_parts']} |")
    if r.get("score"):
        s = r["score"]
        lines += ["", "## Against the synthetic ground truth", "",
                  f"- objects: {s['objects_found']} found, {s['objects_expected']} expected, "
                  f"{s['objects_matched']} matched",
                  f"- worst centroid error: {s['centroid_err_m'] * 1000:.1f} mm",
                  f"- worst extent error: {s['extent_err_rel'] * 100:.1f} %"]
    lines += ["", "Mass, friction and restitution are priors until system identification replaces them.", ""]
    return "\n".join(lines)

"""Benchmark of the real-to-sim capture: the synthetic capture of a bundled scene, end to end.

Prints a table and writes ``benchmarks/results/capture.json`` (atomically) with
``tsdf_ms_per_frame``, ``capture_seconds`` (whole synthetic capture to twin scene),
``objects_expected``, ``objects_found``, ``centroid_err_m`` and ``extent_err_rel``.

    .venv/bin/python benchmarks/bench_capture.py [--scene tabletop_push] [--views 16]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from safetwin.safety.runio import atomic_write_json, run_metadata
from safetwin.twin.capture.pipeline import CaptureConfig, run_capture

RESULTS = Path(__file__).resolve().parent / "results" / "capture.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scene", default="tabletop_push")
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--voxel-size", type=float, default=0.004)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CaptureConfig(scene=args.scene, name="bench_capture", out_dir=tmp, views=args.views,
                            voxel_size=args.voxel_size, progress=False)
        t0 = time.perf_counter()
        folder = run_capture(cfg)
        seconds = time.perf_counter() - t0
        report = json.loads((folder / "capture_report.json").read_text())
    s = report["score"]
    result = {"scene": args.scene, "views": args.views, "voxel_size_m": args.voxel_size,
              "tsdf_ms_per_frame": report["fusion_ms_per_frame"], "capture_seconds": seconds,
              "objects_expected": s["objects_expected"], "objects_found": s["objects_found"],
              "centroid_err_m": s["centroid_err_m"], "extent_err_rel": s["extent_err_rel"],
              "timings": report["timings"], "meta": run_metadata()}
    atomic_write_json(RESULTS, result)
    rows = [("scene", args.scene), ("views", args.views), ("TSDF ms/frame", f"{result['tsdf_ms_per_frame']:.1f}"),
            ("capture s (synthetic -> twin)", f"{seconds:.2f}"),
            ("objects expected / found", f"{s['objects_expected']} / {s['objects_found']}"),
            ("worst centroid error (mm)", f"{1000 * s['centroid_err_m']:.2f}"),
            ("worst extent error (%)", f"{100 * s['extent_err_rel']:.1f}")]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()

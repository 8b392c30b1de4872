"""Record an RGB-D capture from an Intel RealSense camera (optional extra ``[realsense]``).

Writes the nerfstudio layout this package reads (``transforms.json``, ``rgb/``, ``depth/``):
depth aligned to the colour camera, uint16 PNG in the device's depth units with
``depth_unit_scale_factor`` = the device's depth scale (m per unit, usually 0.001), intrinsics of
the colour stream, and no poses (they are estimated by RGB-D odometry when the capture is read).
``pyrealsense2`` is imported only inside :func:`record`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from safetwin.safety.runio import atomic_write_bytes, atomic_write_json

from .formats import CaptureError, Intrinsics

logger = logging.getLogger(__name__)


@dataclass
class CaptureWriter:
    """Accumulates frames into a capture folder ``root``; :meth:`close` writes transforms.json.

    intrinsics: of the colour image (px); depth_scale: metres per raw depth unit.
    """

    root: Path
    intrinsics: Intrinsics
    depth_scale: float
    frames: list[dict] = field(default_factory=list)

    def add(self, color_rgb: np.ndarray, depth_raw: np.ndarray) -> None:
        """One frame: colour uint8 (H, W, 3) RGB and depth uint16 (H, W) raw units, aligned."""
        size = (self.intrinsics.height, self.intrinsics.width)
        if color_rgb.shape != (*size, 3) or color_rgb.dtype != np.uint8:
            raise CaptureError(f"frame {len(self.frames)}: colour must be uint8 {size[1]}x{size[0]}x3, "
                               f"got {color_rgb.dtype} {color_rgb.shape}")
        if depth_raw.shape != size or depth_raw.dtype != np.uint16:
            raise CaptureError(f"frame {len(self.frames)}: depth must be uint16 {size[1]}x{size[0]}, "
                               f"got {depth_raw.dtype} {depth_raw.shape}")
        i = len(self.frames)
        c_rel, d_rel = f"rgb/frame_{i:05d}.png", f"depth/frame_{i:05d}.png"
        atomic_write_bytes(self.root / c_rel, cv2.imencode(".png", cv2.cvtColor(color_rgb, cv2.COLOR_RGB2BGR))[1].tobytes())
        atomic_write_bytes(self.root / d_rel, cv2.imencode(".png", depth_raw)[1].tobytes())
        self.frames.append({"file_path": c_rel, "depth_file_path": d_rel})

    def close(self) -> Path:
        if not self.frames:
            raise CaptureError(f"{self.root}: no frames recorded")
        k = self.intrinsics
        doc = {"fl_x": k.fx, "fl_y": k.fy, "cx": k.cx, "cy": k.cy, "w": k.width, "h": k.height,
               "depth_unit_scale_factor": self.depth_scale, "frames": self.frames}
        doc.update(dict(zip(("k1", "k2", "p1", "p2", "k3"), k.distortion, strict=False)))
        atomic_write_json(self.root / "transforms.json", doc)
        return self.root


def record(out: Path, frames: int = 60, width: int = 640, height: int = 480, fps: int = 30,
           warmup: int = 30, every: int = 3) -> Path:
    """Record ``frames`` RGB-D frames (one every ``every`` camera frames, after ``warmup`` frames
    for auto-exposure) into ``out``. Raises RuntimeError naming the extra when pyrealsense2 is
    missing, and CaptureError when no device answers."""
    try:
        import pyrealsense2 as rs
    except ImportError as exc:
        raise RuntimeError("RealSense recording needs pyrealsense2: pip install 'safetwin[realsense]'") from exc
    pipe, cfg = rs.pipeline(), rs.config()
    cfg.enable_stream(rs.stream.depth, width, height, rs.format.z16, fps)
    cfg.enable_stream(rs.stream.color, width, height, rs.format.rgb8, fps)
    try:
        profile = pipe.start(cfg)
    except RuntimeError as exc:
        raise CaptureError(f"no RealSense device could be started: {exc}") from exc
    try:
        scale = profile.get_device().first_depth_sensor().get_depth_scale()
        ci = profile.get_stream(rs.stream.color).as_video_stream_profile().get_intrinsics()
        intr = Intrinsics(ci.width, ci.height, ci.fx, ci.fy, ci.ppx, ci.ppy, tuple(ci.coeffs[:5]))
        writer, align = CaptureWriter(Path(out), intr, float(scale)), rs.align(rs.stream.color)
        for _ in range(warmup):
            pipe.wait_for_frames()
        for k in tqdm(range(frames * every), desc="recording", unit="frame"):
            fs = align.process(pipe.wait_for_frames(timeout_ms=2000))
            if k % every == 0:
                writer.add(np.asanyarray(fs.get_color_frame().get_data()).copy(),
                           np.asanyarray(fs.get_depth_frame().get_data()).copy())
    finally:
        pipe.stop()
    logger.info("recorded %d frames to %s", frames, out)
    return writer.close()

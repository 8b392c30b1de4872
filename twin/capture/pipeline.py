"""``safetwin capture``: a capture folder (or none: a synthetic capture of a bundled scene) to a
twin scene folder ``<out_dir>/<name>/`` with ``scene.yaml``, ``meshes/``, ``urdf/``,
``capture_report.json`` and ``capture_report.md``.

Nothing is written to ``<out_dir>/<name>/`` unless the whole capture succeeds: the scene is built
in a temporary folder beside it and renamed into place at the end.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d

from safetwin.safety.runio import ConfigError, config_to_dict

from ..scene import SCENES_DIR
from .formats import CaptureError, read_capture, read_intrinsics_json
from .fusion import FusionResult
from .nerf import METHODS as NERF_METHODS
from .nerf import (
    NerfConfig,
    align_to_base,
    apply_similarity,
    check_available,
    load_exported_ply,
    run_nerfstudio,
)
from .objects import PhysicalPriors
from .odometry import OdometryConfig
from .reconstruct import Reconstruction, ReconstructionConfig, reconstruct, segment
from .registration import load_calibration
from .report import score, write_reports
from .sensor import DepthNoise
from .synthetic import CameraRing, write_synthetic_capture

logger = logging.getLogger(__name__)

INPUT_METHODS = ("rgbd", "nerf")


@dataclass
class CaptureConfig:
    """Real-to-sim capture.

    scene: template scene (bundled name or path to its YAML): the robot, task and safety blocks
        and the object roles come from it; with no input it is also the scene that is rendered.
    name: output scene name; the scene is written to <out_dir>/<name>/.
    input: capture folder (transforms.json or Open3D color/ depth/ layout); empty = synthetic.
    method: rgbd (depth images) or nerf (photos through nerfstudio; needs [nerf] and a GPU).
    out_dir: folder that receives the scene folder (empty: the repo's scenes/, where bundled
        scene names are looked up, so load_scene("<name>") finds the result).
    overwrite: replace an existing <out_dir>/<name>/ (only once the new one is complete).
    intrinsics: intrinsics JSON for the Open3D layout (empty: intrinsics.json in the folder).
    use_poses: use camera poses found in the capture; false = estimate them by RGB-D odometry.
    calibration: ChArUco calibration.yaml (empty: <input>/calibration.yaml when present).
    roles: object roles as name=role (e.g. object_0=fragile) or name=template_object (takes its
        name, role and labels); override what matching by position gave.
    mask_robot: drop reconstructed points inside the arm's collision spheres (registered
        captures only), so the arm is not taken for an object.
    robot_q: the arm's joint positions (rad) during the capture; empty = the template's home.
    voxel_size: TSDF voxel edge (m).
    depth_max: ignore depth beyond this (m).
    views: cameras of the synthetic capture.
    seed: seed of the synthetic sensor noise.
    density: density prior (kg/m^3) for object masses.
    friction: sliding-friction prior (-).
    restitution: restitution prior (-).
    nerf_method: nerfacto or splatfacto (method nerf only).
    progress: show progress bars.
    """

    scene: str = "tabletop_push"
    name: str = "captured_tabletop_push"
    input: str = ""
    method: str = "rgbd"
    out_dir: str = ""
    overwrite: bool = True
    intrinsics: str = ""
    use_poses: bool = True
    calibration: str = ""
    roles: tuple[str, ...] = ()
    mask_robot: bool = True
    robot_q: tuple[float, ...] = ()
    voxel_size: float = 0.004
    depth_max: float = 2.0
    views: int = 16
    seed: int = 0
    density: float = 400.0
    friction: float = 0.5
    restitution: float = 0.1
    nerf_method: str = "nerfacto"
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ConfigError(f"capture.name: must be a plain folder name, got {self.name!r}")
        if self.method not in INPUT_METHODS:
            raise ConfigError(f"capture.method: must be one of {INPUT_METHODS}, got {self.method!r}")
        if self.nerf_method not in NERF_METHODS:
            raise ConfigError(f"capture.nerf_method: must be one of {NERF_METHODS}, got {self.nerf_method!r}")
        if self.views < 3:
            raise ConfigError(f"capture.views: must be >= 3, got {self.views}")
        for key in ("voxel_size", "depth_max", "density"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"capture.{key}: must be > 0, got {getattr(self, key)}")
        if not self.friction >= 0 or not 0 <= self.restitution <= 1:
            raise ConfigError("capture.friction must be >= 0 and capture.restitution in [0, 1]")
        self.roles = tuple(self.roles)
        self.robot_q = tuple(float(v) for v in self.robot_q)
        for entry in self.roles:
            if entry.count("=") != 1 or not all(entry.split("=")):
                raise ConfigError(f"capture.roles: entries must be name=role, got {entry!r}")

    def role_overrides(self) -> dict[str, str]:
        return dict(entry.split("=") for entry in self.roles)

    def reconstruction(self) -> ReconstructionConfig:
        return ReconstructionConfig(voxel_size=self.voxel_size, depth_max=self.depth_max)

    def priors(self) -> PhysicalPriors:
        return PhysicalPriors(density=self.density, friction=self.friction, restitution=self.restitution)


def run_capture(cfg: CaptureConfig) -> Path:
    """Run the capture described by ``cfg``; returns the finished scene folder."""
    from . import scene_io

    start = time.perf_counter()
    if cfg.method == "nerf":
        if not cfg.input:
            raise ConfigError("capture.method nerf needs an input folder of photos")
        check_available()  # stop at once, before any work, naming what is missing
    out_dir = Path(cfg.out_dir) if cfg.out_dir else SCENES_DIR
    final = out_dir / cfg.name
    if final.exists() and not cfg.overwrite:
        raise CaptureError(f"{final}: already exists (set overwrite to replace it)")
    template = scene_io.load_template(cfg.scene)
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cfg.name}.", suffix=".partial", dir=out_dir))
    try:
        capture_dir, truth = _capture_source(cfg, template, staging)
        exclude = scene_io.robot_spheres(template, cfg.robot_q, grow=0.02) if cfg.mask_robot else []
        if cfg.method == "nerf":
            rec, frames_total = _reconstruct_nerf(cfg, capture_dir, staging, exclude)
        else:
            rec, frames_total = _reconstruct(cfg, capture_dir, exclude)
        report = scene_io.write_scene(staging, cfg, template, rec)
        report.update(_report_header(cfg, rec, frames_total))
        if truth is not None:
            report["score"] = score(rec.objects, truth)
        report["timings"]["capture_total_s"] = time.perf_counter() - start
        write_reports(staging, report)
        _commit(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("capture: %d objects -> %s (%.1f s)", len(rec.objects), final, time.perf_counter() - start)
    return final


def _capture_source(cfg: CaptureConfig, template, staging: Path) -> tuple[Path, dict | None]:
    """The capture folder to read, and the ground truth when it is synthetic."""
    from . import scene_io

    if cfg.input:
        if not Path(cfg.input).is_dir():
            raise CaptureError(f"{cfg.input}: capture folder does not exist")
        return Path(cfg.input), None
    if cfg.method != "rgbd":
        raise ConfigError("capture.method: the synthetic capture (no input) is RGB-D")
    world = scene_io.synthetic_world(template)
    folder = write_synthetic_capture(staging / "capture", world, synthetic_rings(world, cfg.views),
                                     DepthNoise(), seed=cfg.seed, progress=cfg.progress)
    return folder, json.loads((folder / "ground_truth.json").read_text())


def synthetic_rings(world, views: int) -> list[CameraRing]:
    """Two rings: ``views`` close views about the objects (detail) and half as many distant,
    higher ones about the table centre (its extent)."""
    t = world.table
    objs = [o.position for o in world.objects] or [t.position]
    cx, cy = np.mean(np.asarray(objs)[:, :2], axis=0)
    reach = float(np.linalg.norm(t.size[:2])) / 2
    return [CameraRing(views=views, radius=0.45, height=0.45, center=(cx, cy, world.table_top)),
            CameraRing(views=max(views // 2, 3), radius=reach + 0.2, height=0.9, height_jitter=0.0,
                       center=(t.position[0], t.position[1], world.table_top))]


def _reconstruct(cfg: CaptureConfig, folder: Path, exclude: list) -> tuple[Reconstruction, int]:
    intr = read_intrinsics_json(cfg.intrinsics) if cfg.intrinsics else None
    capture = read_capture(folder, intr, use_poses=cfg.use_poses)
    calibration = _calibration(cfg, folder)
    if calibration is None:
        logger.warning("%s: no calibration.yaml: the scene stays in the capture's world frame", folder)
    rec = reconstruct(capture, cfg.reconstruction(), calibration, cfg.priors(),
                      OdometryConfig(depth_max=cfg.depth_max), progress=cfg.progress, exclude=exclude)
    return rec, len(capture.frames)


def _calibration(cfg: CaptureConfig, folder: Path, required: bool = False):
    cal_path = Path(cfg.calibration) if cfg.calibration else folder / "calibration.yaml"
    if (cfg.calibration or required) and not cal_path.is_file():
        raise CaptureError(f"{cal_path}: calibration file not found")
    return load_calibration(cal_path) if cal_path.is_file() else None


def _reconstruct_nerf(cfg: CaptureConfig, photos: Path, staging: Path,
                      exclude: list) -> tuple[Reconstruction, int]:
    """Photos -> nerfstudio -> exported cloud, scaled into the base frame by the board -> step 2."""
    calibration = _calibration(cfg, photos, required=True)
    work = staging / "nerf"
    ply = run_nerfstudio(photos, work, NerfConfig(method=cfg.nerf_method))
    scale, rigid, views = align_to_base(work / "processed", calibration)
    t0 = time.perf_counter()
    cloud = apply_similarity(load_exported_ply(ply, voxel_size=0.0), scale, rigid).voxel_down_sample(cfg.voxel_size)
    fusion = FusionResult(mesh=o3d.geometry.TriangleMesh(), cloud=cloud, frames=views,
                          seconds=time.perf_counter() - t0)
    plane, objects = segment(fusion, cfg.reconstruction(), cfg.priors(), np.array([0.0, 0.0, 1.0]), exclude)
    total = sum(1 for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return Reconstruction(fusion=fusion, plane=plane, objects=objects, T_base_world=rigid, registered=True,
                          pose_source=f"nerfstudio {cfg.nerf_method} (scale {scale:.4f})", board_views=views,
                          timings={"ingest_s": fusion.seconds}), total


def _report_header(cfg: CaptureConfig, rec: Reconstruction, total: int) -> dict:
    return {"scene": cfg.name, "template": cfg.scene,
            "input": cfg.input or f"synthetic capture of {cfg.scene} (kept in capture/)",
            "config": config_to_dict(cfg),
            "frames": {"total": total, "used": rec.fusion.frames},
            "pose_source": rec.pose_source,
            "registration": {"registered": rec.registered, "board_views": rec.board_views,
                             "T_base_world": rec.T_base_world.tolist()},
            "fusion_ms_per_frame": rec.fusion.ms_per_frame,
            "mesh": {"triangles": len(rec.fusion.mesh.triangles), "points": len(rec.fusion.cloud.points)},
            "timings": dict(rec.timings)}


def _commit(staging: Path, final: Path) -> None:
    """Move the finished scene into place; an old one is replaced only after that succeeds."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{int(time.time() * 1000)}")
        final.rename(old)
    try:
        staging.rename(final)
    except BaseException:
        if old is not None:
            old.rename(final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


"""Photos without depth: drive nerfstudio (``ns-process-data``, ``ns-train``, ``ns-export``) and
ingest the exported geometry, after which the RGB-D pipeline continues at the support plane.

Needs the ``[nerf]`` extra (nerfstudio) and a CUDA GPU; :func:`check_available` stops at once
with a message naming what is missing. nerfstudio's own frame (COLMAP's, arbitrary scale) is
brought into the robot base frame with a similarity transform (scale, rotation, translation).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open3d as o3d

from .formats import CaptureError

logger = logging.getLogger(__name__)

METHODS = ("nerfacto", "splatfacto")
EXPORTS = ("pointcloud", "tsdf")


class NerfUnavailable(RuntimeError):
    """nerfstudio or a CUDA GPU is missing; the message says which and how to get it."""


@dataclass(frozen=True)
class NerfConfig:
    """nerfstudio run settings.

    method: ``nerfacto`` or ``splatfacto``.
    export: ``pointcloud`` (any method) or ``tsdf`` (a mesh; needs depth, nerfacto only).
    max_iterations: training iterations.
    num_points: points in an exported point cloud.
    """

    method: str = "nerfacto"
    export: str = "pointcloud"
    max_iterations: int = 30000
    num_points: int = 1_000_000

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"nerf method must be one of {METHODS}, got {self.method!r}")
        if self.export not in EXPORTS:
            raise ValueError(f"nerf export must be one of {EXPORTS}, got {self.export!r}")
        if self.export == "tsdf" and self.method != "nerfacto":
            raise ValueError("nerf export 'tsdf' needs method 'nerfacto'")
        if self.max_iterations < 1 or self.num_points < 1:
            raise ValueError("nerf max_iterations and num_points must be >= 1")


def check_available() -> None:
    """Raise NerfUnavailable naming every missing piece (the ns-* tools, a CUDA GPU)."""
    missing = [tool for tool in ("ns-process-data", "ns-train", "ns-export") if shutil.which(tool) is None]
    problems = []
    if missing:
        problems.append(f"nerfstudio command(s) {missing} not found: install the extra with "
                        f"pip install 'safetwin[nerf]'")
    try:
        import torch

        if not torch.cuda.is_available():
            problems.append("no CUDA GPU: nerfstudio training needs one (torch.cuda.is_available() is False)")
    except ImportError:
        problems.append("torch is not installed")
    if problems:
        raise NerfUnavailable("nerfstudio path unavailable: " + "; ".join(problems))


def process_command(images: Path, work: Path) -> list[str]:
    """``ns-process-data`` turning a folder of photos into a posed dataset (COLMAP)."""
    return ["ns-process-data", "images", "--data", str(images), "--output-dir", str(work / "processed")]


def train_command(cfg: NerfConfig, work: Path) -> list[str]:
    return ["ns-train", cfg.method, "--data", str(work / "processed"), "--output-dir", str(work / "outputs"),
            "--experiment-name", "capture", "--max-num-iterations", str(cfg.max_iterations),
            "--viewer.quit-on-train-completion", "True", "--vis", "tensorboard"]


def find_trained_config(work: Path) -> Path:
    """The newest ``config.yml`` ns-train wrote under ``work/outputs``."""
    configs = sorted((work / "outputs").glob("capture/*/*/config.yml"))
    if not configs:
        raise CaptureError(f"{work / 'outputs'}: ns-train wrote no config.yml")
    return configs[-1]


def export_command(cfg: NerfConfig, config_yml: Path, work: Path) -> list[str]:
    cmd = ["ns-export", cfg.export, "--load-config", str(config_yml), "--output-dir", str(work / "export")]
    if cfg.export == "pointcloud":
        cmd += ["--num-points", str(cfg.num_points), "--remove-outliers", "True",
                "--save-world-frame", "True"]
    return cmd


def _run(cmd: list[str], log: Path) -> None:
    logger.info("running %s", " ".join(cmd))
    with open(log, "a", encoding="utf-8") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise CaptureError(f"{cmd[0]} failed with exit code {proc.returncode}; see {log}")


def run_nerfstudio(images: Path, work: Path, cfg: NerfConfig) -> Path:
    """Process, train and export; returns the exported PLY. Raises NerfUnavailable first when
    nerfstudio or the GPU is missing."""
    check_available()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "nerfstudio.log"
    _run(process_command(images, work), log)
    _run(train_command(cfg, work), log)
    _run(export_command(cfg, find_trained_config(work), work), log)
    return find_export(work / "export")


def find_export(folder: Path) -> Path:
    plys = sorted(folder.glob("*.ply"))
    if not plys:
        raise CaptureError(f"{folder}: ns-export wrote no .ply file")
    return plys[0]


def load_exported_ply(path: Path, voxel_size: float = 0.004) -> o3d.geometry.PointCloud:
    """Point cloud of an exported PLY: its points, or a mesh's vertices plus uniform samples.
    Downsampled to ``voxel_size`` (m, in the PLY's units); CaptureError when empty/unreadable."""
    if not path.is_file():
        raise CaptureError(f"{path}: no such file")
    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) > 0:
        cloud = mesh.sample_points_uniformly(max(len(mesh.vertices), 10000))
        cloud.points.extend(mesh.vertices)
    else:
        cloud = o3d.io.read_point_cloud(str(path))
    if len(cloud.points) == 0:
        raise CaptureError(f"{path}: empty or unreadable PLY")
    return cloud.voxel_down_sample(voxel_size) if voxel_size > 0 else cloud


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray]:
    """Umeyama similarity mapping points ``src`` (N,3) onto ``dst``: (scale, 4x4 rigid part) so
    that ``dst ~ scale * R src + t`` is ``T @ [scale * src, 1]`` with ``T[:3,3] = t``."""
    if len(src) < 3:
        raise CaptureError(f"similarity fit needs >= 3 point pairs, got {len(src)}")
    ms, md = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - ms, dst - md
    u, d, vt = np.linalg.svd(xd.T @ xs / len(src))
    s = np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))])
    r = u @ s @ vt
    scale = float(np.trace(np.diag(d) @ s) / (xs ** 2).sum(axis=1).mean())
    t = np.eye(4)
    t[:3, :3] = r
    t[:3, 3] = md - scale * r @ ms
    return scale, t


def apply_similarity(cloud: o3d.geometry.PointCloud, scale: float, rigid: np.ndarray) -> o3d.geometry.PointCloud:
    pts = np.asarray(cloud.points) * scale
    return o3d.geometry.PointCloud(o3d.utility.Vector3dVector(pts @ rigid[:3, :3].T + rigid[:3, 3]))


def align_to_base(processed: Path, calibration, min_views: int = 3) -> tuple[float, np.ndarray, int]:
    """Similarity (scale, rigid 4x4) from nerfstudio's frame to the robot base frame.

    ``processed`` holds ns-process-data's ``transforms.json`` (camera poses in nerfstudio's
    arbitrary-scale frame) and its images. In every image where the ChArUco board of
    ``calibration`` is found, the metric camera centre in the base frame is
    ``T_base_board @ inv(T_cam_board)``; the similarity maps the nerfstudio camera centres onto
    those. Returns (scale, rigid, views used); CaptureError with fewer than ``min_views`` views.
    """
    from .formats import read_color, read_transforms_json
    from .registration import detect_board

    cap = read_transforms_json(processed)
    src, dst = [], []
    for frame in cap.frames:
        if frame.pose is None:
            continue
        t_cam_board = detect_board(read_color(frame.color_path), calibration.board, cap.intrinsics)
        if t_cam_board is None:
            continue
        src.append(frame.pose[:3, 3])
        dst.append((calibration.T_base_board @ np.linalg.inv(t_cam_board))[:3, 3])
    if len(src) < min_views:
        raise CaptureError(f"{processed}: ChArUco board found in {len(src)} posed images; scaling the "
                           f"nerfstudio reconstruction needs >= {min_views}")
    scale, rigid = similarity_fit(np.array(src), np.array(dst))
    return scale, rigid, len(src)

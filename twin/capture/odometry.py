"""Camera poses for captures that have none: frame-to-frame RGB-D odometry, loop closures and a
pose graph, after Open3D's reconstruction system (``make_fragments``).

Edges hold ``T_t_s`` (source-camera to target-camera, m); nodes hold camera-to-world poses with
frame 0 as the world (OpenCV camera convention). Loop-closure candidates get an initial guess
from ORB feature matches lifted to 3-D with the depth image and a RANSAC rigid fit, are refined
by RGB-D odometry and enter the graph as *uncertain* edges that the optimiser may prune.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d
from tqdm import tqdm

from .formats import Capture, CaptureError, Intrinsics, load_frame

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OdometryConfig:
    """Pose-estimation settings.

    depth_max: depth readings beyond this are ignored (m).
    depth_diff_max: largest depth difference of a correspondence in odometry (m).
    loop_stride: loop closures are tried between frames at least 2 apart, every ``loop_stride``-th
        frame against every other (1 = all pairs; small captures only).
    min_loop_inliers: 3-D feature inliers a loop-closure guess needs.
    max_correspondence_distance: pose-graph optimisation's outlier distance (m).
    """

    depth_max: float = 3.0
    depth_diff_max: float = 0.07
    loop_stride: int = 5
    min_loop_inliers: int = 20
    max_correspondence_distance: float = 0.03

    def __post_init__(self) -> None:
        if self.depth_max <= 0 or self.depth_diff_max <= 0 or self.loop_stride < 1:
            raise ValueError(f"odometry config out of range: {self}")


def _rgbd(color: np.ndarray, depth: np.ndarray, depth_max: float) -> o3d.geometry.RGBDImage:
    return o3d.geometry.RGBDImage.create_from_color_and_depth(
        o3d.geometry.Image(np.ascontiguousarray(color)), o3d.geometry.Image(np.ascontiguousarray(depth)),
        depth_scale=1.0, depth_trunc=depth_max, convert_rgb_to_intensity=True)


def _pinhole(intr: Intrinsics) -> o3d.camera.PinholeCameraIntrinsic:
    return o3d.camera.PinholeCameraIntrinsic(intr.width, intr.height, intr.fx, intr.fy, intr.cx, intr.cy)


def rigid_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares rigid transform (4x4) mapping points ``src`` (N,3) onto ``dst`` (Kabsch)."""
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    r = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    t = np.eye(4)
    t[:3, :3] = r
    t[:3, 3] = cd - r @ cs
    return t


def _lift(kps: list, depth: np.ndarray, intr: Intrinsics) -> np.ndarray:
    """3-D camera points (m) of keypoints; NaN rows where the depth is missing."""
    out = np.full((len(kps), 3), np.nan)
    for i, kp in enumerate(kps):
        u, v = int(round(kp.pt[0])), int(round(kp.pt[1]))
        z = depth[min(v, depth.shape[0] - 1), min(u, depth.shape[1] - 1)]
        if z > 0:
            out[i] = ((kp.pt[0] - intr.cx) * z / intr.fx, (kp.pt[1] - intr.cy) * z / intr.fy, z)
    return out


def feature_guess(src: tuple[np.ndarray, np.ndarray], dst: tuple[np.ndarray, np.ndarray],
                  intr: Intrinsics, min_inliers: int, seed: int = 0,
                  threshold: float = 0.02) -> np.ndarray | None:
    """``T_dst_src`` from ORB matches lifted to 3-D and a RANSAC rigid fit (inlier distance
    ``threshold`` m); None when fewer than ``min_inliers`` inliers support it."""
    orb = cv2.ORB_create(nfeatures=1000)
    kp_s, des_s = orb.detectAndCompute(cv2.cvtColor(src[0], cv2.COLOR_RGB2GRAY), None)
    kp_d, des_d = orb.detectAndCompute(cv2.cvtColor(dst[0], cv2.COLOR_RGB2GRAY), None)
    if des_s is None or des_d is None:
        return None
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(des_s, des_d)
    ps = _lift([kp_s[m.queryIdx] for m in matches], src[1], intr)
    pd = _lift([kp_d[m.trainIdx] for m in matches], dst[1], intr)
    ok = np.all(np.isfinite(ps), axis=1) & np.all(np.isfinite(pd), axis=1)
    ps, pd = ps[ok], pd[ok]
    if len(ps) < min_inliers:
        return None
    rng = np.random.default_rng(seed)
    best = np.zeros(len(ps), bool)
    for _ in range(300):
        pick = rng.choice(len(ps), 3, replace=False)
        t = rigid_fit(ps[pick], pd[pick])
        inl = np.linalg.norm(ps @ t[:3, :3].T + t[:3, 3] - pd, axis=1) < threshold
        if inl.sum() > best.sum():
            best = inl
    if best.sum() < min_inliers:
        return None
    return rigid_fit(ps[best], pd[best])


def _odometry(src, dst, pinhole, init: np.ndarray, cfg: OdometryConfig):
    option = o3d.pipelines.odometry.OdometryOption(depth_max=cfg.depth_max, depth_diff_max=cfg.depth_diff_max)
    return o3d.pipelines.odometry.compute_rgbd_odometry(
        src, dst, pinhole, init, o3d.pipelines.odometry.RGBDOdometryJacobianFromHybridTerm(), option)


def estimate_poses(capture: Capture, cfg: OdometryConfig | None = None,
                   progress: bool = True) -> list[np.ndarray]:
    """Camera-to-world poses (OpenCV camera, m; world = frame 0) of every frame of ``capture``.

    Raises CaptureError naming the frame pair when consecutive frames cannot be registered."""
    cfg = cfg or OdometryConfig()
    pinhole = _pinhole(capture.intrinsics)
    raw = [load_frame(capture, f) for f in tqdm(capture.frames, desc="loading frames", unit="frame",
                                                 disable=not progress)]
    rgbd = [_rgbd(c, d, cfg.depth_max) for c, d in raw]
    graph = o3d.pipelines.registration.PoseGraph()
    world_to_cam = np.eye(4)
    graph.nodes.append(o3d.pipelines.registration.PoseGraphNode(np.eye(4)))
    n = len(rgbd)
    for s in tqdm(range(n - 1), desc="RGB-D odometry", unit="pair", disable=not progress):
        ok, trans, info = _best_odometry(raw, rgbd, s, s + 1, capture.intrinsics, pinhole, cfg)
        if not ok:
            raise CaptureError(f"{capture.source}: odometry failed between frames {s} and {s + 1} "
                               f"({capture.frames[s].color_path.name}, {capture.frames[s + 1].color_path.name})")
        world_to_cam = trans @ world_to_cam
        graph.nodes.append(o3d.pipelines.registration.PoseGraphNode(np.linalg.inv(world_to_cam)))
        graph.edges.append(o3d.pipelines.registration.PoseGraphEdge(s, s + 1, trans, info, uncertain=False))
    loops = _add_loop_closures(graph, raw, rgbd, capture.intrinsics, pinhole, cfg)
    _optimise(graph, cfg)
    logger.info("pose graph: %d frames, %d loop closures", n, loops)
    return [np.asarray(node.pose).copy() for node in graph.nodes]


def _best_odometry(raw, rgbd, s: int, t: int, intr: Intrinsics, pinhole, cfg: OdometryConfig):
    """RGB-D odometry from frame ``s`` to ``t`` started at a feature-based guess (ORB + RANSAC),
    or at the identity when features do not give one. Starting at the guess matters for large
    motions, where the identity start converges to a wrong minimum on planar scenes."""
    guess = feature_guess(raw[s], raw[t], intr, cfg.min_loop_inliers)
    return _odometry(rgbd[s], rgbd[t], pinhole, np.eye(4) if guess is None else guess, cfg)


def _add_loop_closures(graph, raw, rgbd, intr: Intrinsics, pinhole, cfg: OdometryConfig) -> int:
    n, added = len(rgbd), 0
    for s in range(0, n, cfg.loop_stride if n > cfg.loop_stride else 1):
        for t in range(s + 2, n):
            guess = feature_guess(raw[s], raw[t], intr, cfg.min_loop_inliers)
            if guess is None:
                continue
            ok, trans, info = _odometry(rgbd[s], rgbd[t], pinhole, guess, cfg)
            if ok:
                graph.edges.append(o3d.pipelines.registration.PoseGraphEdge(s, t, trans, info, uncertain=True))
                added += 1
    return added


def _optimise(graph, cfg: OdometryConfig) -> None:
    reg = o3d.pipelines.registration
    option = reg.GlobalOptimizationOption(max_correspondence_distance=cfg.max_correspondence_distance,
                                          edge_prune_threshold=0.25, preference_loop_closure=0.1,
                                          reference_node=0)
    with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
        reg.global_optimization(graph, reg.GlobalOptimizationLevenbergMarquardt(),
                                reg.GlobalOptimizationConvergenceCriteria(), option)


def relative_pose_errors(est: list[np.ndarray], ref: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame translation (m) and rotation (deg) errors of ``est`` against ``ref`` after
    expressing both relative to their frame 0."""
    e0, r0 = np.linalg.inv(est[0]), np.linalg.inv(ref[0])
    trans, rot = [], []
    for e, r in zip(est, ref, strict=True):
        d = np.linalg.inv(r0 @ r) @ (e0 @ e)
        trans.append(np.linalg.norm(d[:3, 3]))
        rot.append(np.degrees(np.arccos(np.clip((np.trace(d[:3, :3]) - 1) / 2, -1, 1))))
    return np.array(trans), np.array(rot)

"""Depth-noise model of a structured-light RGB-D sensor (Kinect / RealSense class).

Applied to a perfect depth image (m) rendered by the twin:

* axial noise: Gaussian with sigma(z) = sigma0 + k * (z - z0)^2 (m), after Nguyen, Izadi and
  Lovell (2012), who measured sigma ~ 0.0012 + 0.0019 (z - 0.4)^2 for the Kinect;
* missing pixels where the surface is seen at a grazing angle (angle between the surface normal
  and the viewing ray above ``grazing_deg``) and along depth edges (jumps above ``edge_jump``);
* random dropout of ``dropout`` of the pixels, and quantisation to ``quantum`` (m).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .formats import Intrinsics


@dataclass(frozen=True)
class DepthNoise:
    """Parameters of the noise model (see the module docstring). Lengths in m, angles in deg."""

    sigma0: float = 0.0012
    k: float = 0.0019
    z0: float = 0.4
    grazing_deg: float = 78.0
    edge_jump: float = 0.03
    dropout: float = 0.005
    quantum: float = 0.001

    def __post_init__(self) -> None:
        if min(self.sigma0, self.k, self.edge_jump, self.quantum) < 0 or not 0 <= self.dropout < 1:
            raise ValueError(f"depth noise parameters out of range: {self}")
        if not 0 < self.grazing_deg <= 90:
            raise ValueError(f"grazing_deg must be in (0, 90], got {self.grazing_deg}")

    def sigma(self, z: np.ndarray) -> np.ndarray:
        """Axial standard deviation (m) at depth ``z`` (m)."""
        return self.sigma0 + self.k * (z - self.z0) ** 2


def backproject(depth: np.ndarray, intr: Intrinsics) -> np.ndarray:
    """Camera-frame points (H, W, 3) of a depth image (m), OpenCV camera (z forward)."""
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w), np.arange(h))
    x = (u - intr.cx) / intr.fx * depth
    y = (v - intr.cy) / intr.fy * depth
    return np.stack([x, y, depth], axis=-1)


def grazing_mask(depth: np.ndarray, intr: Intrinsics, max_deg: float) -> np.ndarray:
    """True where the surface normal makes more than ``max_deg`` with the viewing ray."""
    pts = backproject(depth, intr)
    du = np.gradient(pts, axis=1)
    dv = np.gradient(pts, axis=0)
    n = np.cross(du, dv)
    n_norm = np.linalg.norm(n, axis=-1)
    ray = pts / np.maximum(np.linalg.norm(pts, axis=-1, keepdims=True), 1e-9)
    cos = np.abs(np.sum(n * ray, axis=-1)) / np.maximum(n_norm, 1e-12)
    return (cos < np.cos(np.radians(max_deg))) | (n_norm < 1e-12)


def edge_mask(depth: np.ndarray, jump: float) -> np.ndarray:
    """True on pixels next to a depth discontinuity larger than ``jump`` (m)."""
    kernel = np.ones((3, 3), np.uint8)
    hi = cv2.dilate(depth, kernel)
    lo = cv2.erode(depth, kernel)
    return (hi - lo) > jump


def apply_noise(depth: np.ndarray, intr: Intrinsics, noise: DepthNoise,
                rng: np.random.Generator) -> np.ndarray:
    """Noisy copy of a perfect depth image (m, 0 = no return); the result is 0 where missing."""
    valid = depth > 0
    out = depth + rng.normal(size=depth.shape) * noise.sigma(depth)
    missing = ~valid | grazing_mask(depth, intr, noise.grazing_deg) | edge_mask(depth, noise.edge_jump)
    missing |= rng.random(depth.shape) < noise.dropout
    if noise.quantum > 0:
        out = np.round(out / noise.quantum) * noise.quantum
    out[missing] = 0.0
    return out.astype(np.float32)

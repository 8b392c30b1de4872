"""The policy side of a deploy run: timestamped action chunks, the policy thread, scripted policies.

A policy is any callable ``policy(obs) -> array (k, d)``; ``obs`` is a dict with ``q`` (n,) rad,
``dq`` (n,) rad/s, ``t_mono`` (s), ``proprio`` (float32), ``image`` (uint8 H x W x 3) and
``instruction`` (str). With ``action_space="ee_delta"`` each row is a normalised EE delta
``(dx, dy, dz, droll, dpitch, dyaw, gripper)`` in [-1, 1], base frame; with ``"joint"`` each row
holds absolute joint targets (n,) rad.

The :class:`PolicyThread` runs the policy at a fixed rate on the monotonic clock, stamps each
chunk with the time of the observation it used (the older of the state's ``t_mono`` and the
camera frame's ``t_image``, see :mod:`deploy_camera`), publishes only the newest chunk (older ones are
dropped, never queued for replay, A6) and beats the supervisor's ``"policy"`` heartbeat after each
successful inference (D3). An exception in the policy publishes nothing and sends no heartbeat.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .timing_stats import MsHistogram

logger = logging.getLogger(__name__)

PolicyFn = Callable[[Mapping[str, Any]], Any]


@dataclass(frozen=True)
class ActionChunk:
    """One policy output: ``actions`` (k, d), computed from the observation taken at ``t_obs``
    (monotonic s), ready at ``t_ready``; ``seq`` increases by one per chunk."""

    seq: int
    t_obs: float
    t_ready: float
    actions: Any


class ChunkMailbox:
    """Single-slot, thread-safe holder of the newest chunk (a newer one replaces it)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chunk: ActionChunk | None = None
        self.published = 0

    def put(self, chunk: ActionChunk) -> None:
        with self._lock:
            if self._chunk is None or chunk.seq > self._chunk.seq:
                self._chunk = chunk
                self.published += 1

    def latest(self) -> ActionChunk | None:
        with self._lock:
            return self._chunk


class StateBoard:
    """The newest measured state, written by the control loop, read by the policy thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, Any] | None = None

    def put(self, t_mono: float, q: np.ndarray, dq: np.ndarray) -> None:
        with self._lock:
            self._state = {"t_mono": t_mono, "q": np.array(q, dtype=float), "dq": np.array(dq, dtype=float)}

    def get(self) -> dict[str, Any] | None:
        with self._lock:
            return None if self._state is None else dict(self._state)


class PolicyThread(threading.Thread):
    """Run ``policy`` at ``hz`` on the newest state; publish chunks; beat the heartbeat.

    Args:
        policy: the policy callable.
        hz: inference rate (Hz).
        board: where the control loop posts the measured state.
        mailbox: where chunks go.
        heartbeat: called after each successful inference (the supervisor's ``heartbeat``).
        observe: turns the measured state into the policy's observation dict (it may read a
            camera: it runs here, never on the control thread, D1).
    """

    def __init__(self, policy: PolicyFn, hz: float, board: StateBoard, mailbox: ChunkMailbox,
                 heartbeat: Callable[[], None], observe: Callable[[dict[str, Any]], dict[str, Any]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name="policy", daemon=True)
        self.policy, self.period, self.board, self.mailbox = policy, 1.0 / hz, board, mailbox
        self.heartbeat, self.observe, self.clock = heartbeat, observe, clock
        self._stop_evt = threading.Event()
        self.latencies_ms = MsHistogram()  # constant memory over long runs (D6)
        self.errors = 0
        self.last_error = ""
        self._seq = 0

    def stop(self) -> None:
        self._stop_evt.set()

    def run(self) -> None:
        next_t = self.clock()
        while not self._stop_evt.is_set():
            state = self.board.get()
            if state is not None:
                self._infer(state)
            next_t += self.period
            delay = next_t - self.clock()
            if delay < 0:  # overran: start the next inference now, do not burst to catch up
                next_t, delay = self.clock(), 0.0
            self._stop_evt.wait(delay)

    def _infer(self, state: dict[str, Any]) -> None:
        t0 = self.clock()
        try:
            obs = self.observe(state)
            actions = self.policy(obs)
        except Exception as exc:  # noqa: BLE001 - a failing camera/policy publishes nothing (fail closed)
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            logger.error("policy inference failed: %s", self.last_error)
            return
        t1 = self.clock()
        self.latencies_ms.add((t1 - t0) * 1e3)
        self._seq += 1
        t_obs = state["t_mono"]
        if obs.get("t_image") is not None:  # a chunk is as old as the oldest input it saw (A6)
            t_obs = min(t_obs, float(obs["t_image"]))
        if isinstance(actions, ActionChunk):  # a policy may stamp its own chunk (fault injection)
            actions, t_obs = actions.actions, actions.t_obs
        self.mailbox.put(ActionChunk(self._seq, t_obs, t1, actions))
        self.heartbeat()


class ScriptedPolicy:
    """Deterministic joint-target policies for demos and tests (``action_space="joint"``).

    ``sine``: each joint follows ``q0 + amplitude * sin(2 pi f t)`` about the first pose seen;
    ``hold``: the first pose seen. Rows are ``chunk_dt`` s apart.
    """

    def __init__(self, kind: str, chunk_len: int, chunk_dt: float, amplitude: float = 0.3,
                 freq_hz: float = 0.25) -> None:
        if kind not in ("sine", "hold"):
            raise ValueError(f"unknown scripted policy {kind!r}; use sine|hold")
        self.kind, self.k, self.chunk_dt = kind, chunk_len, chunk_dt
        self.amplitude, self.freq = amplitude, freq_hz
        self.q0: np.ndarray | None = None
        self.t0: float | None = None

    def __call__(self, obs: Mapping[str, Any]) -> np.ndarray:
        q = np.asarray(obs["q"], dtype=float)
        if self.q0 is None:
            self.q0, self.t0 = q.copy(), float(obs["t_mono"])
        if self.kind == "hold":
            return np.tile(self.q0, (self.k, 1))
        t = float(obs["t_mono"]) - self.t0 + self.chunk_dt * np.arange(self.k)
        phase = np.sin(2 * np.pi * self.freq * t)[:, None]
        signs = np.where(np.arange(len(q)) % 2 == 0, 1.0, -1.0)[None, :]
        return self.q0[None, :] + self.amplitude * phase * signs


class InjectingPolicy:
    """Wraps a policy so faults can be switched on at run time (sim only).

    ``mode``: ``None`` (pass through), ``"nan"`` (NaN in every row, A1), ``"stale"`` (chunks
    stamped ``stale_by_s`` in the past, A6), ``"freeze"`` (inference blocks ``freeze_s``, A9/D3).
    """

    def __init__(self, policy: PolicyFn, stale_by_s: float = 10.0, freeze_s: float = 2.0) -> None:
        self.policy, self.stale_by_s, self.freeze_s = policy, stale_by_s, freeze_s
        self.mode: str | None = None

    def __call__(self, obs: Mapping[str, Any]) -> Any:
        if self.mode == "freeze":
            time.sleep(self.freeze_s)
        out = np.array(self.policy(obs), dtype=float)
        if self.mode == "nan":
            out[:, 0] = np.nan
        if self.mode == "stale":
            return ActionChunk(0, float(obs["t_mono"]) - self.stale_by_s, float(obs["t_mono"]), out)
        return out


def default_observe(instruction: str, image_shape: tuple[int, int, int] = (64, 64, 3),
                    gripper_opening: float = 1.0) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Observation builder in the twin's layout without a camera: ``proprio = [q (rad), dq (rad/s),
    gripper opening in [0, 1]]`` (float32; the constant ``gripper_opening``), a black ``image`` of
    ``image_shape`` and the instruction (see :class:`deploy_camera.Observer`, which adds cameras)."""
    from .deploy_camera import Observer

    return Observer(instruction, None, image_shape, opening=gripper_opening)

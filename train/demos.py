"""Scripted-expert demonstrations for behaviour cloning (an on-disk dataset).

Format of a dataset folder::

    metadata.json          {"format": "safetwin-demos/1", "env_id", "scene", "episodes": [
                              {"file", "seed", "instruction", "length", "success", "return",
                               "cost"}, ...], "image_shape", "proprio_dim", "privileged_dim",
                              "action_dim", "domain_randomization"}
    episode_00000.npz      one file per episode (numpy savez, no pickled objects):
        image       uint8   (T, 64, 64, 3)  front camera, before each action
        wrist_image uint8   (T, 64, 64, 3)  wrist camera (only when the env renders one)
        proprio     float32 (T, P)          proprio before each action
        privileged  float32 (T, D)          privileged twin state before each action
        actions     float32 (T, 7)          the expert's actions (EE deltas, base frame, [-1, 1])
        rewards     float32 (T,)            reward of each step
        costs       float32 (T,)            info["cost"] of each step (sum of indicators)
        instruction str     ()              the (paraphrased) instruction

Each episode runs the twin under domain randomization with its own seed; the env's instruction
is replaced by a paraphrase (synonyms and politeness prefixes) so the policy sees varied language.
With ``noise > 0`` the env executes the expert's action plus Gaussian noise on the six motion
components (DART-style noise injection) while the clean expert action is recorded as the label,
so the dataset also shows how the expert recovers from the small drifts a cloned policy makes.
"""

from __future__ import annotations

import io
import logging
import os
import re
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm import tqdm

from safetwin.safety.runio import atomic_write_bytes, atomic_write_json

from .envs import import_env_package

logger = logging.getLogger(__name__)
FORMAT = "safetwin-demos/1"

SYNONYMS: dict[str, tuple[str, ...]] = {
    "push": ("push", "shove", "slide", "nudge"),
    "move": ("move", "bring", "take", "carry"),
    "reach": ("reach", "go to", "move to"),
    "block": ("block", "cube", "box"),
    "target": ("target", "goal", "marker"),
    "goal": ("goal", "target", "goal region"),
    "avoid": ("avoid", "stay clear of", "keep away from"),
    "without touching": ("without touching", "without bumping into", "not touching"),
}
PREFIXES = ("", "please ", "now ", "carefully ", "robot, ")


def paraphrase(instruction: str, rng: np.random.Generator) -> str:
    """A random paraphrase of ``instruction`` (word-level synonyms + a prefix)."""
    text = instruction.strip()
    for word, options in SYNONYMS.items():
        pattern = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
        if pattern.search(text):
            choice = options[int(rng.integers(len(options)))]
            text = pattern.sub(choice, text)
    return PREFIXES[int(rng.integers(len(PREFIXES)))] + text


def _episode(env: gym.Env, seed: int, rng: np.random.Generator, paraphrased: bool,
             noise: float = 0.0) -> dict[str, Any]:
    obs, info = env.reset(seed=seed)
    instruction = paraphrase(str(obs["instruction"]), rng) if paraphrased else str(obs["instruction"])
    keys = ("image", "wrist_image", "proprio", "privileged", "actions", "rewards", "costs")
    rec: dict[str, list[Any]] = {k: [] for k in keys if k != "wrist_image" or k in obs}
    done = False
    while not done:
        action = np.asarray(env.unwrapped.expert_action(), dtype=np.float32)
        for key in ("image", "wrist_image"):
            if key in rec:
                rec[key].append(obs[key])
        rec["proprio"].append(obs["proprio"])
        rec["privileged"].append(np.asarray(info["privileged"], dtype=np.float32))
        executed = action.copy()
        if noise > 0:  # perturb the motion only (dx..dyaw); the label stays the clean action
            executed[:6] += rng.normal(0.0, noise, size=6).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(np.clip(executed, -1.0, 1.0))
        rec["actions"].append(np.clip(action, -1.0, 1.0))
        rec["rewards"].append(reward)
        rec["costs"].append(info["cost"])
        done = terminated or truncated
    out = {k: np.asarray(v, dtype=np.uint8 if k.endswith("image") else np.float32) for k, v in rec.items()}
    out["instruction"] = np.asarray(instruction)
    out["_success"] = bool(info.get("is_success", False))
    return out


def record_demos(env_id: str, env_kwargs: dict[str, Any], episodes: int, seed: int,
                 out_dir: str | os.PathLike[str], paraphrased: bool = True, progress: bool = True,
                 noise: float = 0.0) -> Path:
    """Record ``episodes`` expert episodes (seeds ``seed``, ``seed + 1``, ...) into ``out_dir``.

    ``noise``: std of the Gaussian perturbation of the executed motion components (normalised
    action units, i.e. fractions of the per-step limit); 0 records the clean expert.
    """
    if not noise >= 0:
        raise ValueError(f"record_demos: noise must be >= 0, got {noise}")
    out_dir = Path(out_dir)
    import_env_package(env_id)
    env = gym.make(env_id, **env_kwargs)
    rng = np.random.default_rng(seed)
    entries = []
    try:
        for i in tqdm(range(episodes), desc="expert demos", unit="ep", disable=not progress):
            ep = _episode(env, seed + i, rng, paraphrased, noise)
            success = ep.pop("_success")
            name = f"episode_{i:05d}.npz"
            buf = io.BytesIO()
            np.savez_compressed(buf, **ep)
            atomic_write_bytes(out_dir / name, buf.getvalue())
            entries.append({"file": name, "seed": seed + i, "instruction": str(ep["instruction"]),
                            "length": int(len(ep["actions"])), "success": success,
                            "return": float(ep["rewards"].sum()), "cost": float(ep["costs"].sum())})
            dims = {"image_shape": list(ep["image"].shape[1:]), "proprio_dim": int(ep["proprio"].shape[1]),
                    "privileged_dim": int(ep["privileged"].shape[1]), "action_dim": int(ep["actions"].shape[1])}
    finally:
        env.close()
    atomic_write_json(out_dir / "metadata.json", {
        "format": FORMAT, "env_id": env_id, "scene": str(env_kwargs.get("scene")),
        "domain_randomization": bool(env_kwargs.get("randomize", False)), "action_noise": float(noise),
        "episodes": entries, **dims})
    rate = np.mean([e["success"] for e in entries])
    logger.info("recorded %d expert episodes in %s (success %.0f%%)", episodes, out_dir, 100 * rate)
    return out_dir


def load_demos(dataset_dir: str | os.PathLike[str], successful_only: bool = True) -> list[dict[str, np.ndarray]]:
    """Episodes of a dataset folder (only successful, zero-cost ones unless told otherwise)."""
    dataset_dir = Path(dataset_dir)
    meta_path = dataset_dir / "metadata.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: demo dataset metadata not found")
    import json

    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    chosen = [e for e in meta["episodes"] if e["success"] and e["cost"] == 0.0] if successful_only else meta["episodes"]
    if not chosen:
        logger.warning("%s: no successful zero-cost episode; using all %d", dataset_dir, len(meta["episodes"]))
        chosen = meta["episodes"]
    episodes = []
    for entry in chosen:
        with np.load(dataset_dir / entry["file"], allow_pickle=False) as data:
            episodes.append({k: data[k] for k in data.files})
    return episodes

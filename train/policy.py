"""Vision-language-action policies: the ``VLAPolicy`` interface and the compact VLA.

Observation batches are dicts of numpy arrays (the twin's observation, batched):

* ``image``: uint8 (B, 64, 64, 3), front camera; optional ``wrist_image`` of the same shape;
* ``proprio``: float32 (B, P), the robot's proprioception as the twin defines it: joint positions
  (rad), joint velocities (rad/s) and the gripper opening in [0, 1], ``P = 2 n + 1``;
* ``instruction``: sequence of B strings;
* ``privileged`` (values only): float32 (B, D), the twin's privileged state (``info["privileged"]``).

Actions are chunks (B, k, 7) of the twin's action: end-effector deltas (dx, dy, dz, droll,
dpitch, dyaw, gripper) in the **base** frame, normalised to [-1, 1].
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from safetwin.safety.runio import ConfigError

from .language import EMBED_DIM, LanguageEncoder, shared_encoder
from .networks import FiLM, ImageEncoder, RunningMeanStd, mlp

ObsBatch = Mapping[str, Any]
_ATANH_EPS = 1e-6
MEAN_BOUND = 3.0
"""Pre-tanh means are soft-bounded to +-MEAN_BOUND (tanh(3) = 0.995): behaviour cloning on
expert actions at +-1 would otherwise push them towards infinity, where tanh saturates in
float32 and the log-probability of a stored chunk can no longer be recovered (PPO ratios explode)."""
LOG_STD_RANGE = (-5.0, 0.0)


def bounded_mean(raw: torch.Tensor) -> torch.Tensor:
    """``MEAN_BOUND * tanh(raw / MEAN_BOUND)``: identity near 0, bounded at +-MEAN_BOUND."""
    return MEAN_BOUND * torch.tanh(raw / MEAN_BOUND)


@dataclass
class PolicyConfig:
    """Hyper-parameters of a policy (stored in the checkpoint sidecar).

    proprio_dim: length of the proprio vector (from the env's observation space).
    privileged_dim: length of ``info["privileged"]`` for the asymmetric critic (0: none).
    chunk_len: k, actions per decision (the env executes them one after another).
    action_dim: size of one action (7 for the twin).
    image_size: square camera image side (pixels).
    use_wrist: also encode ``obs["wrist_image"]``.
    feat_dim: visual feature size (FiLM-modulated by the instruction).
    hidden: hidden width of the trunk and critic MLPs.
    init_log_std: initial log standard deviation of the pre-tanh Gaussian.
    residual_scale: ResidualPolicy only: bound on the residual per action component.
    """

    proprio_dim: int = 0
    privileged_dim: int = 0
    chunk_len: int = 4
    action_dim: int = 7
    image_size: int = 64
    use_wrist: bool = False
    feat_dim: int = 128
    hidden: int = 256
    init_log_std: float = -2.5
    residual_scale: float = 0.3

    def __post_init__(self) -> None:
        for name in ("proprio_dim", "privileged_dim"):
            if getattr(self, name) < 0:
                raise ConfigError(f"policy.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("chunk_len", "action_dim", "image_size", "feat_dim", "hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"policy.{name} must be >= 1, got {getattr(self, name)}")
        if not -5.0 <= self.init_log_std <= 0.0:
            raise ConfigError(f"policy.init_log_std must be in [-5, 0], got {self.init_log_std}")
        if not 0.0 < self.residual_scale <= 2.0:
            raise ConfigError(f"policy.residual_scale must be in (0, 2], got {self.residual_scale}")


def squashed_log_prob(u: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log p(tanh(u)) for u ~ N(mean, exp(log_std)), summed over the last dim.

    Change of variables: log p_a(a) = log p_u(u) - sum log(1 - tanh(u)^2), with the stable form
    log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u)).
    """
    gauss = torch.distributions.Normal(mean, log_std.exp()).log_prob(u).sum(-1)
    log_det = (2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))).sum(-1)
    return gauss - log_det


def squashed_entropy(mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """One-sample (reparameterised) estimate of the entropy of tanh(u), u ~ N(mean, std).

    H(a) = H(u) + E[sum log(1 - tanh(u)^2)]; H(u) is exact, the Jacobian term is sampled.
    """
    std = log_std.exp().expand_as(mean)
    u = mean + std * torch.randn_like(mean)
    gauss_h = (0.5 + 0.5 * math.log(2 * math.pi) + log_std).expand_as(mean).sum(-1)
    log_det = (2.0 * (math.log(2.0) - u - nn.functional.softplus(-2.0 * u))).sum(-1)
    return gauss_h + log_det


def atanh_clipped(a: torch.Tensor) -> torch.Tensor:
    return torch.atanh(a.clamp(-1.0 + _ATANH_EPS, 1.0 - _ATANH_EPS))


class VLAPolicy(nn.Module, abc.ABC):
    """Interface of every trainable policy.

    Subclasses implement :meth:`_dist_params` (pre-tanh Gaussian of the chunk) and the
    squashing map; the base class provides act/evaluate/values/predict, the running proprio
    and privileged normalisers (buffers, saved with the weights) and the asymmetric critic:
    the value heads for reward and cost see the twin's **privileged** state (plus proprio and
    the instruction), which the actor never sees, so they exist only in training.
    """

    def __init__(self, cfg: PolicyConfig, language: LanguageEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.language = language or shared_encoder()
        self.proprio_rms = RunningMeanStd(cfg.proprio_dim)
        self.priv_rms = RunningMeanStd(cfg.privileged_dim)
        critic_in = cfg.proprio_dim + cfg.privileged_dim + EMBED_DIM
        self.critic = mlp([critic_in, cfg.hidden, cfg.hidden], out_gain=2 ** 0.5)
        self.v_reward = mlp([cfg.hidden, 1], out_gain=1.0)
        self.v_cost = mlp([cfg.hidden, 1], out_gain=1.0)

    # ------------------------------------------------------------------ inputs
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def lang(self, obs: ObsBatch) -> torch.Tensor:
        texts = obs["instruction"]
        if isinstance(texts, str):
            raise ValueError("obs['instruction'] must be a sequence of strings for a batch")
        return torch.as_tensor(self.language.embed(list(texts)), device=self._device())

    def proprio(self, obs: ObsBatch) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(obs["proprio"], dtype=np.float32), device=self._device())
        if x.ndim != 2 or x.shape[1] != self.cfg.proprio_dim:
            raise ValueError(f"obs['proprio'] must be (B, {self.cfg.proprio_dim}), got {tuple(x.shape)}")
        return self.proprio_rms.normalize(x)

    def image(self, obs: ObsBatch, key: str = "image") -> torch.Tensor:
        img = np.asarray(obs[key])
        s = self.cfg.image_size
        if img.dtype != np.uint8 or img.ndim != 4 or img.shape[1:] != (s, s, 3):
            raise ValueError(f"obs[{key!r}] must be uint8 (B, {s}, {s}, 3), got {img.dtype} {img.shape}")
        return torch.as_tensor(img, device=self._device())

    @torch.no_grad()
    def update_normalizers(self, obs: ObsBatch, privileged: np.ndarray | None = None) -> None:
        """Update the running statistics with a batch of observations (training only)."""
        if self.cfg.proprio_dim:
            self.proprio_rms.update(torch.as_tensor(np.asarray(obs["proprio"], dtype=np.float64)))
        if privileged is not None and self.cfg.privileged_dim:
            self.priv_rms.update(torch.as_tensor(np.asarray(privileged, dtype=np.float64)))

    # ------------------------------------------------------------------ distribution
    @abc.abstractmethod
    def _dist_params(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        """Pre-tanh ``mean`` (B, k*7), ``log_std`` (k*7,) and context for the squashing map."""

    @abc.abstractmethod
    def _to_chunk(self, squashed: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        """Map tanh(u) (B, k*7) to the action chunk (B, k*7)."""

    @abc.abstractmethod
    def _from_chunk(self, chunk: torch.Tensor, ctx: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`_to_chunk`: (tanh(u), log|d chunk / d tanh(u)| summed)."""

    def act(self, obs: ObsBatch, deterministic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample (or take the mode of) a chunk: ``(chunk (B, k, 7), logp (B,))``."""
        mean, log_std, ctx = self._dist_params(obs)
        if not torch.isfinite(mean).all():
            raise FloatingPointError("policy produced a non-finite action mean (refusing to act)")
        u = mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)
        squashed = torch.tanh(u)
        chunk = self._to_chunk(squashed, ctx)
        _, log_scale = self._from_chunk(chunk, ctx)
        logp = squashed_log_prob(u, mean, log_std) - log_scale
        return chunk.reshape(-1, self.cfg.chunk_len, self.cfg.action_dim), logp

    def evaluate(self, obs: ObsBatch, chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logp (B,), entropy (B,))`` of given chunks (B, k, 7) under the current policy."""
        logp, entropy, _ = self.evaluate_with_mean(obs, chunks)
        return logp, entropy

    def evaluate_with_mean(self, obs: ObsBatch, chunks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`evaluate` plus the deterministic chunk (B, k, 7), from one forward pass."""
        mean, log_std, ctx = self._dist_params(obs)
        flat = torch.as_tensor(chunks, dtype=torch.float32, device=mean.device).reshape(mean.shape)
        squashed, log_scale = self._from_chunk(flat, ctx)
        u = atanh_clipped(squashed)
        logp = squashed_log_prob(u, mean, log_std) - log_scale
        entropy = squashed_entropy(mean, log_std) + log_scale
        mode = self._to_chunk(torch.tanh(mean), ctx).reshape(-1, self.cfg.chunk_len, self.cfg.action_dim)
        return logp, entropy, mode

    def mean_chunk(self, obs: ObsBatch) -> torch.Tensor:
        """The deterministic chunk (B, k, 7), differentiable (used by BC and the BC regulariser)."""
        mean, _, ctx = self._dist_params(obs)
        return self._to_chunk(torch.tanh(mean), ctx).reshape(-1, self.cfg.chunk_len, self.cfg.action_dim)

    def values(self, obs: ObsBatch, privileged: np.ndarray | torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Asymmetric critic: ``(v_reward (B,), v_cost (B,))`` from proprio, privileged, instruction."""
        parts = [self.proprio(obs)]
        if self.cfg.privileged_dim:
            if privileged is None:
                raise ValueError("values(): this critic needs the privileged state")
            priv = torch.as_tensor(np.asarray(privileged, dtype=np.float32), device=self._device())
            parts.append(self.priv_rms.normalize(priv))
        parts.append(self.lang(obs))
        h = self.critic(torch.cat(parts, dim=-1))
        return self.v_reward(h).squeeze(-1), self.v_cost(h).squeeze(-1)

    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters of the asymmetric critic (trunk and both value heads); the rest is the actor."""
        return [*self.critic.parameters(), *self.v_reward.parameters(), *self.v_cost.parameters()]

    @torch.no_grad()
    def predict(self, obs: Mapping[str, Any]) -> np.ndarray:
        """Deterministic chunk (k, 7) float32 for ONE unbatched twin observation."""
        batch = {key: np.asarray(value)[None] for key, value in obs.items()
                 if key in ("image", "wrist_image", "proprio")}
        batch["instruction"] = [str(obs["instruction"])]
        was_training = self.training
        self.eval()
        chunk, _ = self.act(batch, deterministic=True)
        self.train(was_training)
        out = chunk[0].cpu().numpy().astype(np.float32)
        if not np.isfinite(out).all():
            raise FloatingPointError("policy produced a non-finite action chunk")
        return out

    def hparams(self) -> dict[str, Any]:
        return asdict(self.cfg)


class VisionLanguageTrunk(nn.Module):
    """Image(s) -> CNN features, FiLM-modulated by the instruction, fused with proprio.

    Output (B, hidden). ``extra_dim`` adds a further input vector (e.g. a base policy's chunk).
    """

    def __init__(self, cfg: PolicyConfig, extra_dim: int = 0) -> None:
        super().__init__()
        self.front = ImageEncoder(cfg.image_size, out_dim=cfg.feat_dim)
        self.wrist = ImageEncoder(cfg.image_size, out_dim=cfg.feat_dim) if cfg.use_wrist else None
        vis_dim = cfg.feat_dim * (2 if cfg.use_wrist else 1)
        self.film = FiLM(EMBED_DIM, vis_dim)
        self.proprio_mlp = mlp([max(cfg.proprio_dim, 1), 64]) if cfg.proprio_dim else None
        fused = vis_dim + (64 if cfg.proprio_dim else 0) + extra_dim
        self.fuse = nn.Sequential(mlp([fused, cfg.hidden, cfg.hidden]), nn.ReLU())

    def forward(self, policy: VLAPolicy, obs: ObsBatch, extra: torch.Tensor | None = None) -> torch.Tensor:
        vis = self.front(policy.image(obs, "image"))
        if self.wrist is not None:
            vis = torch.cat([vis, self.wrist(policy.image(obs, "wrist_image"))], dim=-1)
        parts = [self.film(vis, policy.lang(obs))]
        if self.proprio_mlp is not None:
            parts.append(torch.relu(self.proprio_mlp(policy.proprio(obs))))
        if extra is not None:
            parts.append(extra)
        return self.fuse(torch.cat(parts, dim=-1))


class CompactVLA(VLAPolicy):
    """Compact VLA: small CNN (from scratch) + frozen MiniLM instruction embedding (FiLM) +
    proprio -> tanh-squashed Gaussian over a chunk of k 7-D actions, state-independent std."""

    def __init__(self, cfg: PolicyConfig, language: LanguageEncoder | None = None) -> None:
        super().__init__(cfg, language)
        n = cfg.chunk_len * cfg.action_dim
        self.trunk = VisionLanguageTrunk(cfg)
        self.mean_head = mlp([cfg.hidden, n], out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((n,), float(cfg.init_log_std)))

    def _dist_params(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
        mean = bounded_mean(self.mean_head(self.trunk(self, obs)))
        return mean, self.log_std.clamp(*LOG_STD_RANGE), {}

    def _to_chunk(self, squashed: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
        return squashed

    def _from_chunk(self, chunk: torch.Tensor, ctx: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return chunk, torch.zeros(chunk.shape[0], device=chunk.device)


def chunk_targets(actions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Chunked BC targets of one episode: ``(targets (T, k, A), mask (T, k))``.

    ``targets[t, j] = actions[t + j]``; past the episode end the last action is repeated and
    the mask is 0 there, so padded entries do not count in the loss.
    """
    actions = np.asarray(actions, dtype=np.float32)
    t_len = actions.shape[0]
    idx = np.arange(t_len)[:, None] + np.arange(k)[None, :]
    mask = (idx < t_len).astype(np.float32)
    return actions[np.minimum(idx, t_len - 1)], mask


def obs_slice(obs: ObsBatch, index: np.ndarray | slice | Sequence[int]) -> dict[str, Any]:
    """Select rows of an observation batch (arrays and the instruction list)."""
    out: dict[str, Any] = {}
    for key, value in obs.items():
        arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
        out[key] = arr[index]
    out["instruction"] = [str(s) for s in np.asarray(obs["instruction"], dtype=object)[index]]
    return out

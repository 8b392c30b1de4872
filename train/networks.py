"""Neural building blocks of the policies: image encoder, FiLM, MLPs, running normaliser.

Images enter as uint8 (B, H, W, 3) in [0, 255] (the twin's camera convention) and are scaled
to [0, 1] and permuted to (B, 3, H, W) here. All modules are plain ``torch.nn.Module`` so their
weights (and the normaliser statistics, registered as buffers) go into safetensors checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(sizes: list[int], activation: type[nn.Module] = nn.ReLU, out_gain: float = 1.0) -> nn.Sequential:
    """Linear layers of the given sizes with ``activation`` between them (not after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        lin = nn.Linear(sizes[i], sizes[i + 1])
        last = i == len(sizes) - 2
        nn.init.orthogonal_(lin.weight, gain=out_gain if last else 2 ** 0.5)
        nn.init.zeros_(lin.bias)
        layers.append(lin)
        if not last:
            layers.append(activation())
    return nn.Sequential(*layers)


class ImageEncoder(nn.Module):
    """Small CNN trained from scratch: uint8 (B, H, W, 3) -> features (B, out_dim).

    Three stride-2 convolutions (16, 32, 32 channels by default) then a linear layer.
    """

    def __init__(self, image_size: int = 64, channels: tuple[int, ...] = (16, 32, 32),
                 out_dim: int = 128) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(channels):
            convs += [nn.Conv2d(c_in, c, kernel_size=5 if i == 0 else 3, stride=2, padding=2 if i == 0 else 1),
                      nn.ReLU()]
            c_in = c
        self.convs = nn.Sequential(*convs)
        with torch.no_grad():
            n = self.convs(torch.zeros(1, 3, image_size, image_size)).numel()
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(n, out_dim), nn.ReLU())
        self.image_size = image_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.ndim != 4 or image.shape[-1] != 3:
            raise ValueError(f"ImageEncoder: expected (B, H, W, 3) images, got {tuple(image.shape)}")
        x = image.permute(0, 3, 1, 2).float() / 255.0
        return self.head(self.convs(x))


class FiLM(nn.Module):
    """Feature-wise linear modulation: ``(1 + gamma(z)) * x + beta(z)``.

    The conditioning ``z`` (the instruction embedding) scales and shifts every visual feature;
    initialised to the identity (gamma = beta = 0).
    """

    def __init__(self, cond_dim: int, feat_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * feat_dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(cond).chunk(2, dim=-1)
        return (1.0 + gamma) * x + beta


class RunningMeanStd(nn.Module):
    """Running mean/variance of a feature vector (parallel Welford/Chan update).

    Statistics are buffers (saved with the weights). ``normalize`` returns
    ``clip((x - mean) / sqrt(var + eps), -clip, clip)``.
    """

    def __init__(self, dim: int, clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("var", torch.ones(dim, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))
        self.clip, self.eps = clip, eps

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.mean.shape[0]).double()
        if x.shape[0] == 0 or not torch.isfinite(x).all():
            raise ValueError("RunningMeanStd.update: empty or non-finite batch")
        b_mean, b_var, b_n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = b_mean - self.mean, self.count + b_n
        m2 = self.var * self.count + b_var * b_n + delta.pow(2) * self.count * b_n / total
        self.mean.add_(delta * b_n / total)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean.shape[0] == 0:
            return x.float()
        z = (x.double() - self.mean) / torch.sqrt(self.var + self.eps)
        return z.clamp(-self.clip, self.clip).float()

    def stats(self) -> dict[str, list[float] | float]:
        return {"mean": self.mean.tolist(), "var": self.var.tolist(), "count": float(self.count)}

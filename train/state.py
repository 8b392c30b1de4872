"""Training state as tensors + JSON (for ``--resume``): optimiser moments, RNG states.

Everything goes into safetensors (tensors) and the JSON sidecar (ints, floats, lists); nothing
is pickled. ``torch.get_rng_state()`` is a uint8 tensor; the numpy ``Generator`` state is a
dict of (big) ints, which JSON stores exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def optimizer_to_tensors(optim: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors and a JSON-able remainder."""
    sd = optim.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = float(value)
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optim: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           meta: dict[str, Any], prefix: str) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            pid, key = name[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(pid), {})[key] = value.clone()
    for pid, st in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(st)
    optim.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_to_state(rng: np.random.Generator) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch CPU RNG (tensor) and the numpy generator's state (JSON)."""
    return {"rng.torch": torch.get_rng_state()}, {"numpy": rng.bit_generator.state}


def rng_from_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> np.random.Generator:
    torch.set_rng_state(tensors["rng.torch"])
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["numpy"]
    return rng

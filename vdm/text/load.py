"""Building a frozen text encoder from a config: the folder's encoder behind the embedding cache."""

from __future__ import annotations

from pathlib import Path

from vdm.errors import UserError
from vdm.text.cache import CachedTextEncoder
from vdm.text.pretrained import PretrainedTextEncoder, model_class, model_folders


def text_width(path: str | Path) -> int:
    """The token width of the text encoder in ``path``, read from its ``config.json`` (so the
    denoiser can be built before the weights load)."""
    folder, _, config = model_folders(path)
    kind, _ = model_class(folder, config)
    if kind == "t5":
        return int(config["d_model"])
    return int(config.get("text_config", config).get("hidden_size", config.get("hidden_size")))


def load_text_encoder(
    path: str | Path,
    max_length: int | None = None,
    dtype: str = "float32",
    cache: bool = True,
    dim: int | None = None,
    padding: str = "zeros",
) -> PretrainedTextEncoder | CachedTextEncoder:
    """The frozen T5 / CLIP of ``path`` (``text_encoder=t5`` or ``clip``), its embeddings cached
    under ``$VDM_CACHE_DIR/text/`` unless ``cache`` is false.

    Args:
        dim: the width the denoiser was built for (the config's ``text_encoder.dim``); must be
            the encoder's.
        padding: what the rows past a caption hold, ``zeros`` or ``encoded``
            (:class:`~vdm.text.pretrained.PretrainedTextEncoder`).
    """
    encoder = PretrainedTextEncoder(path, max_length=max_length, dtype=dtype, padding=padding)
    if dim is not None and dim != encoder.dim:
        raise UserError(
            f"text_encoder.dim={dim}, but the encoder in {path} is {encoder.dim} wide: leave "
            "text_encoder.dim=null (it is read from the folder)."
        )
    return CachedTextEncoder(encoder) if cache else encoder

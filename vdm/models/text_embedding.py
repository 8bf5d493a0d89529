"""TextEmbedding: what a text encoder gives a denoiser for a batch of captions."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TextEmbedding:
    """Encoded captions, padded to one length.

    Args:
        tokens: ``(B, L, D)`` per-token features.
        mask: bool ``(B, L)``, True for real tokens, False for padding (which attention skips).
        pooled: ``(B, D)`` one vector per caption (added to the time embedding).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: slice | torch.Tensor | list[int]) -> TextEmbedding:
        """The rows ``index`` (a slice, a list of rows or a bool / long tensor)."""
        return TextEmbedding(self.tokens[index], self.mask[index], self.pooled[index])

    def to(self, *args, **kwargs) -> TextEmbedding:
        """Move (``device``) or cast the float parts (``dtype``); the mask stays bool."""
        dtype = kwargs.pop("dtype", None)
        tokens, pooled = self.tokens.to(*args, **kwargs), self.pooled.to(*args, **kwargs)
        if dtype is not None:
            tokens, pooled = tokens.to(dtype), pooled.to(dtype)
        return TextEmbedding(tokens, self.mask.to(tokens.device), pooled)

    @staticmethod
    def cat(parts: list[TextEmbedding]) -> TextEmbedding:
        """The rows of ``parts`` one after another (all of one padded length)."""
        return TextEmbedding(
            torch.cat([p.tokens for p in parts]),
            torch.cat([p.mask for p in parts]),
            torch.cat([p.pooled for p in parts]),
        )

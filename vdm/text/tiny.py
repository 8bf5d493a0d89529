"""TinyTextEncoder: a small text encoder trained from scratch with the denoiser.

For the embedded shapes set and the tests: no files, no downloads. Captions are cut into
lower-case words (or UTF-8 bytes) and each word is hashed (CRC-32, stable across runs and
machines) into ``vocab_size`` buckets, so there is no vocabulary to build or ship; a few
pre-norm transformer layers then give every word a context-aware feature.
"""

from __future__ import annotations

import re
import zlib

import torch
from torch import nn

from vdm.errors import UserError
from vdm.models.text_embedding import TextEmbedding

TOKENIZERS = ("words", "bytes")
PAD, BOS = 0, 1  # ids 0 and 1 are reserved; words and bytes map to 2..vocab_size-1
WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def tokenize(caption: str, tokenizer: str, vocab_size: int, max_length: int) -> list[int]:
    """Token ids of ``caption``: BOS, then one id per word (or byte), cut at ``max_length``.

    BOS is always there, so the empty caption (the null prompt) still has one real token and
    attention over it is defined.
    """
    if tokenizer == "words":
        pieces = [zlib.crc32(w.encode()) for w in WORD.findall(caption.lower())]
    else:
        pieces = list(caption.encode())
    return [BOS, *(2 + p % (vocab_size - 2) for p in pieces)][:max_length]


class TinyTextEncoder(nn.Module):
    """Hashed-word (or byte) embeddings and ``depth`` pre-norm transformer layers.

    Example:
        >>> encoder = TinyTextEncoder(dim=64)
        >>> text = encoder.encode(["a red circle moves left", ""])
        >>> text.tokens.shape, text.mask.sum(1)
        (torch.Size([2, 32, 64]), tensor([6, 1]))

    Args:
        dim: token and pooled width ``D``.
        depth: transformer layers.
        heads: attention heads (``dim`` divisible by it).
        max_length: padded length ``L``; longer captions are cut.
        vocab_size: hash buckets (2 are reserved for padding and BOS).
        tokenizer: ``words`` (hashed lower-case words) or ``bytes`` (UTF-8 bytes).
    """

    trainable = True
    fingerprint = None  # trained with the run: its weights are in the checkpoint

    def __init__(
        self,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        max_length: int = 32,
        vocab_size: int = 4096,
        tokenizer: str = "words",
    ) -> None:
        super().__init__()
        if tokenizer not in TOKENIZERS:
            raise UserError(
                f"text_encoder.tokenizer={tokenizer!r}: use one of {', '.join(TOKENIZERS)}."
            )
        if tokenizer == "bytes" and vocab_size < 258:
            raise UserError(
                f"text_encoder.vocab_size={vocab_size} is too small for bytes: use >= 258."
            )
        self.dim, self.max_length = dim, max_length
        self.vocab_size, self.tokenizer = vocab_size, tokenizer
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.position = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def token_ids(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ids ``(B, L)`` and the bool mask of real tokens, on the encoder's device."""
        ids = torch.full((len(captions), self.max_length), PAD, dtype=torch.long)
        for row, caption in enumerate(captions):
            tokens = tokenize(caption, self.tokenizer, self.vocab_size, self.max_length)
            ids[row, : len(tokens)] = torch.tensor(tokens)
        ids = ids.to(self.position.device)
        return ids, ids != PAD

    def encode(self, captions: list[str]) -> TextEmbedding:
        """``captions`` → tokens ``(B, L, D)``, mask ``(B, L)`` and pooled ``(B, D)``: the mean
        of the real tokens (padding never enters: it is masked in attention and in the mean)."""
        ids, mask = self.token_ids(list(captions))
        x = self.embed(ids) + self.position
        x = self.norm(self.layers(x, src_key_padding_mask=~mask))
        x = x * mask[..., None]  # padded positions carry nothing
        pooled = x.sum(1) / mask.sum(1, keepdim=True)
        return TextEmbedding(x, mask, pooled)

    def forward(self, captions: list[str]) -> TextEmbedding:
        return self.encode(captions)

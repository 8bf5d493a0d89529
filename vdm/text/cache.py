"""A content-addressed disk cache of a frozen text encoder's embeddings: each caption is encoded
once, ever, per encoder; the null prompt ``""`` is always in it.

Layout: ``<root>/text/<encoder key>/<2 hex>/<sha256 of the caption>.pt``, where the encoder key
hashes what changes an embedding (the weights' and tokenizer's SHA-256, the padded length, the
dtype, the class, what the padding rows hold). An entry holds the rows the mask calls real
(padding comes back as zeros, as the mask says), so its size follows the caption's length, not
``max_length``; an encoder whose padding rows are encoded (``padding="encoded"``) marks every
row real, and its entries hold all ``max_length`` of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import torch

from vdm.data.index import default_cache_dir
from vdm.errors import UserError
from vdm.models.text_embedding import TextEmbedding

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when an entry's layout changes: old entries then live in another folder
KEY_PARTS = ("sha256", "max_length", "dtype", "class")
# Parts an encoder's fingerprint holds only when they differ from what every entry was before
# they existed (so that those entries keep their folder): the padding rows' content.
OPTIONAL_KEY_PARTS = ("padding",)


def encoder_key(fingerprint: dict) -> str:
    """The cache folder name of an encoder: a SHA-256 (20 hex digits) of its key parts."""
    parts = {name: fingerprint.get(name) for name in KEY_PARTS}
    parts.update((name, fingerprint[name]) for name in OPTIONAL_KEY_PARTS if name in fingerprint)
    text = json.dumps({"format": FORMAT_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def caption_key(caption: str) -> str:
    """SHA-256 of the caption's UTF-8 text: the same caption is the same entry in every run."""
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()


def save_atomically(obj, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: several ranks may write one entry, and a
    reader sees a whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(obj, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


class CachedTextEncoder:
    """A frozen text encoder whose embeddings are read from, and written to, a disk cache.

    ``encode`` looks every caption up, encodes the misses in one call of the wrapped encoder and
    stores them; :meth:`precompute` fills the cache for a data set before training. Embeddings
    come back on the CPU (what the disk holds), with the rows the mask calls padding zeroed.

    Example::

        text = CachedTextEncoder(PretrainedTextEncoder("~/models/t5-base"))
        text.precompute(dataset_captions)
        batch_text = text.encode(["a red ball", "two squares"])  # tokens (2, L, D)

    Args:
        encoder: a frozen encoder (``trainable`` False, a ``fingerprint`` naming its weights).
        root: vdm's cache root, default ``$VDM_CACHE_DIR`` (``~/.cache/vdm``); the entries go
            under ``<root>/text/``.
        in_memory: captions kept in memory once read, so a caption seen every epoch is read
            from disk once; 0 keeps none (a large T5's embeddings of a large data set would not
            fit).
    """

    trainable = False

    def __init__(self, encoder, root: str | Path | None = None, in_memory: int = 10_000):
        if getattr(encoder, "trainable", True) or not getattr(encoder, "fingerprint", None):
            raise UserError(
                f"{type(encoder).__name__} is trained with the run: only a frozen text encoder "
                "(text_encoder=pretrained) can have its embeddings cached."
            )
        self.encoder = encoder
        self.folder = Path(root or default_cache_dir()).expanduser() / "text"
        self.folder /= encoder_key(encoder.fingerprint)
        self.in_memory = in_memory
        self._move_to: tuple[tuple, dict] | None = None  # see to()
        self._memory: dict[str, TextEmbedding] = {}
        self._write_description()
        self._null = self.encode([""])  # always stored: guidance and caption dropout need it

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def max_length(self) -> int:
        return self.encoder.max_length

    @property
    def fingerprint(self) -> dict:
        return self.encoder.fingerprint

    def __deepcopy__(self, memo: dict) -> CachedTextEncoder:
        # Frozen: a copy of a module holding it (the EMA's averaged model) shares it rather
        # than holding a second T5 in memory.
        return self

    def to(self, *args, **kwargs) -> CachedTextEncoder:
        """Where misses are encoded: the wrapped encoder moves there at the first miss, not
        before, so a run whose captions are all cached never puts a large T5 on its GPU.
        Entries stay on the CPU."""
        self._move_to = (args, kwargs)
        return self

    @property
    def null(self) -> TextEmbedding:
        """The embedding of the null prompt ``""`` (batch 1)."""
        return self._null

    def entry_path(self, caption: str) -> Path:
        """Where ``caption``'s embedding is stored."""
        key = caption_key(caption)
        return self.folder / key[:2] / f"{key}.pt"

    def encode(self, captions: list[str]) -> TextEmbedding:
        """Embeddings of ``captions`` in their order: cached ones read, the others encoded in one
        call and stored.

        Args:
            captions: ``B`` strings.

        Returns:
            ``tokens (B, L, D)``, ``mask (B, L)``, ``pooled (B, D)`` on the CPU.
        """
        captions = list(captions)
        rows = {}
        for caption in dict.fromkeys(captions):  # each distinct caption once, in order
            row = self._read(caption)
            if row is not None:
                rows[caption] = row
        misses = [caption for caption in dict.fromkeys(captions) if caption not in rows]
        if misses:
            rows.update(self._encode_and_store(misses))
        return TextEmbedding.cat([rows[caption] for caption in captions])

    def precompute(self, captions: Iterable[str], batch_size: int = 64, log_every: int = 20) -> int:
        """Encode and store every caption not yet in the cache (run it once before training).

        Args:
            captions: the data set's captions (repeats are fine).
            batch_size: captions per call of the encoder.
            log_every: log the progress every this many batches.

        Returns:
            How many captions were encoded (0 when all were cached).
        """
        seen, pending, encoded, batches = set(), [], 0, 0
        for caption in captions:
            if caption in seen or self.entry_path(caption).is_file():
                continue
            seen.add(caption)
            pending.append(caption)
            if len(pending) == batch_size:
                self._encode_and_store(pending, keep=False)
                encoded, batches, pending = encoded + len(pending), batches + 1, []
                if batches % log_every == 0:
                    log.info("Text cache: %d captions encoded into %s", encoded, self.folder)
        if pending:
            self._encode_and_store(pending, keep=False)
            encoded += len(pending)
        log.info("Text cache: %d new captions encoded into %s", encoded, self.folder)
        return encoded

    def _write_description(self) -> None:
        """``encoder.json`` beside the entries: which encoder made them, for a person looking."""
        path = self.folder / "encoder.json"
        if not path.is_file():
            self.folder.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".encoder.json.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
            temporary.write_text(json.dumps(self.fingerprint, indent=1, sort_keys=True))
            os.replace(temporary, path)

    def _keep(self, caption: str, row: TextEmbedding) -> None:
        if len(self._memory) < self.in_memory:
            self._memory[caption] = row

    def _read(self, caption: str) -> TextEmbedding | None:
        """The cached row of ``caption``, or None (not cached, or damaged: then encoded again)."""
        if caption in self._memory:
            return self._memory[caption]
        path = self.entry_path(caption)
        if not path.is_file():
            return None
        try:
            row = self._unpack(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as error:  # a torn or foreign file: any failure means encode again
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            log.warning("Text cache entry %s is damaged (%s): encoding it again.", path, reason)
            return None
        self._keep(caption, row)
        return row

    def _unpack(self, entry: dict) -> TextEmbedding:
        """A batch-1 embedding from a stored entry, padding rows filled with zeros."""
        mask, real, pooled = entry["mask"], entry["tokens"], entry["pooled"]
        length, dim = self.max_length, self.dim
        if mask.dtype != torch.bool or mask.shape != (length,):
            raise ValueError(f"mask of shape {tuple(mask.shape)}, not ({length},)")
        if real.shape != (int(mask.sum()), dim) or pooled.shape != (dim,):
            raise ValueError(f"tokens {tuple(real.shape)}, pooled {tuple(pooled.shape)}")
        tokens = real.new_zeros(length, dim)
        tokens[mask] = real
        return TextEmbedding(tokens[None], mask[None], pooled[None])

    def _encode_and_store(self, captions: list[str], keep: bool = True) -> dict[str, TextEmbedding]:
        """Encode ``captions`` (distinct) in one call and store each row."""
        if self._move_to is not None:
            args, kwargs = self._move_to
            self.encoder.to(*args, **kwargs)
            self._move_to = None
        fresh = self.encoder.encode(captions).to("cpu")
        mask = fresh.mask.bool()
        tokens = fresh.tokens.masked_fill(~mask[..., None], 0)  # as a read entry has them
        rows = {}
        for i, caption in enumerate(captions):
            # clone: torch.save of a view would write the whole batch's storage
            entry = {"tokens": tokens[i][mask[i]].clone(), "mask": mask[i].clone(),
                     "pooled": fresh.pooled[i].clone()}  # fmt: skip
            save_atomically(entry, self.entry_path(caption))
            rows[caption] = TextEmbedding(
                tokens[i : i + 1], mask[i : i + 1], fresh.pooled[i : i + 1]
            )
            if keep:
                self._keep(caption, rows[caption])
        return rows

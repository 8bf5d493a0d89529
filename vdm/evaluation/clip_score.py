"""CLIP-score of videos against prompts: how well each clip's frames match its text, by a CLIP
model read from a local folder (nothing is downloaded).

The score of a frame is ``100 · max(cos(image embedding, text embedding), 0)`` (CLIPScore, Hessel
et al. 2021, with torchmetrics' weight of 100 in place of the paper's 2.5); a clip scores the mean
over its frames, as text-to-video papers report it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from vdm.errors import MissingFileError, UserError
from vdm.files.verify import sha256_of
from vdm.text.pretrained import import_transformers, weight_files

log = logging.getLogger(__name__)

KEY = "clip.path"
FIX = "save a CLIPModel with its processor and tokenizer there (save_pretrained), or clip.path=null"


class ClipScores(NamedTuple):
    """The mean over clips and the ``(N,)`` per-clip scores (each the mean over its frames)."""

    mean: float
    per_clip: torch.Tensor


def clip_folder(path: str | Path) -> Path:
    """``path`` checked to be a saved ``CLIPModel``: a folder with ``config.json`` of
    ``model_type`` ``clip`` (a text or vision tower alone cannot score) and a
    ``preprocessor_config.json``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise MissingFileError(f"{KEY}={folder} is not a folder: {FIX}.")
    if not (folder / "config.json").is_file():
        raise UserError(f"{KEY}={folder} has no config.json: {FIX}.")
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"{KEY}: {folder}/config.json is not readable JSON ({error}).") from None
    if config.get("model_type") != "clip":
        found = ", ".join(config.get("architectures") or []) or config.get("model_type")
        raise UserError(
            f"{KEY}={folder} holds {found}, not a CLIPModel (text and image towers): point it at "
            "a whole CLIP, e.g. openai/clip-vit-base-patch32 saved with save_pretrained."
        )
    if not (folder / "preprocessor_config.json").is_file():
        raise UserError(f"{KEY}={folder} has no preprocessor_config.json: {FIX}.")
    return folder


class ClipScore:
    """CLIP-score of uint8 videos against prompts, with the CLIP of a local folder.

    Each frame goes through the folder's image processor (resized and centre-cropped to CLIP's
    input, e.g. 224²) and image tower on its own; prompts through its tokenizer, truncated to the
    text tower's positions (77 for OpenAI's CLIP), and text tower. Each distinct prompt is encoded
    once.

    Example::

        clip = ClipScore("/models/clip-vit-base-patch32", device="cuda")
        scores = clip.score(to_uint8(videos), prompts)  # videos (N, C, T, H, W) in [-1, 1]
        scores.mean, scores.per_clip  # a float, (N,)

    Args:
        path: a folder a ``CLIPModel`` and its processor were saved to (``save_pretrained``:
            ``config.json``, weights, ``preprocessor_config.json`` and the tokenizer's files).
        frame_stride: score frames ``0, k, 2k, …`` of each clip; 1 scores all. Raise it to cut
            the cost on long clips: neighbouring frames score alike.
        batch_size: frames per pass of the image tower.
        device: where the model runs (:meth:`to` moves it later).
    """

    def __init__(
        self,
        path: str | Path,
        frame_stride: int = 1,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ):
        if frame_stride < 1:
            raise UserError(f"clip.frame_stride={frame_stride}: give 1 (every frame) or more.")
        self.folder = clip_folder(path)
        self.weights = weight_files(self.folder, key=KEY)
        transformers = import_transformers(f"{KEY} (CLIP-score)")
        load = dict(local_files_only=True)
        try:
            self.model = transformers.CLIPModel.from_pretrained(self.folder, **load)
            self.processor = transformers.AutoImageProcessor.from_pretrained(self.folder, **load)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.folder, **load)
        except (OSError, ValueError, TypeError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise UserError(f"{KEY}={self.folder} could not be loaded ({reason}): {FIX}.") from None
        self.model.requires_grad_(False).eval().to(device)
        self.frame_stride = frame_stride
        self.batch_size = batch_size
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        log.info("Loaded CLIP for CLIP-score from %s", self.folder)

    def to(self, device: str | torch.device) -> ClipScore:
        """Run the model on ``device``."""
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return next(self.model.parameters()).device

    def protocol(self) -> dict:
        """What a report records: the folder, the SHA-256 of each weight file (as the hub lists
        them), the frames scored and the definition."""
        return {
            "path": str(self.folder.resolve()),
            "sha256": {file.name: sha256_of(file) for file in self.weights},
            "frame_stride": self.frame_stride,
            "max_tokens": self.max_length,
            "score": "100·max(cos(frame, prompt), 0), mean over frames, then over clips",
        }

    @torch.no_grad()
    def image_embeds(self, frames: np.ndarray) -> torch.Tensor:
        """Unit-length image embeddings ``(F, D)`` of uint8 ``frames (F, H, W, 3)``."""
        out = []
        for i in range(0, len(frames), self.batch_size):
            pixels = self.processor(images=list(frames[i : i + self.batch_size]),
                                    return_tensors="pt")["pixel_values"]  # fmt: skip
            out.append(pooled(self.model.get_image_features(pixel_values=pixels.to(self.device))))
        return torch.nn.functional.normalize(torch.cat(out).float(), dim=-1)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        """Unit-length text embeddings ``(P, D)`` of ``prompts``."""
        lengths = [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]
        if max(lengths, default=0) > self.max_length:
            log.warning("Prompts longer than CLIP's %d tokens are cut there.", self.max_length)
        batch = self.tokenizer(list(prompts), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")  # fmt: skip
        features = self.model.get_text_features(
            input_ids=batch["input_ids"].to(self.device),
            attention_mask=batch["attention_mask"].to(self.device),
        )
        return torch.nn.functional.normalize(pooled(features).float(), dim=-1)

    def score(self, videos: np.ndarray | torch.Tensor, prompts: list[str]) -> ClipScores:
        """CLIP-score of each clip against its prompt.

        Args:
            videos: uint8 ``(N, T, H, W, 3)`` (:func:`vdm.files.video.to_uint8` of samples).
            prompts: ``N`` strings, one per clip.

        Returns:
            The mean over clips and the per-clip scores ``(N,)``, on the CPU.
        """
        videos = np.asarray(videos)
        if videos.ndim != 5 or videos.shape[-1] != 3 or videos.dtype != np.uint8:
            raise ValueError(f"expected uint8 (N, T, H, W, 3) videos, got {videos.dtype} "
                             f"{videos.shape}")  # fmt: skip
        if len(prompts) != len(videos):
            raise ValueError(f"{len(videos)} videos but {len(prompts)} prompts")
        frames = videos[:, :: self.frame_stride]
        n, t = frames.shape[:2]
        image = self.image_embeds(frames.reshape(n * t, *frames.shape[2:])).view(n, t, -1)
        row = {prompt: i for i, prompt in enumerate(dict.fromkeys(prompts))}
        text = self.text_embeds(list(row))[[row[prompt] for prompt in prompts]]
        cosine = torch.einsum("ntd,nd->nt", image, text)
        per_clip = (100 * cosine.clamp(min=0)).mean(dim=1).cpu()
        return ClipScores(float(per_clip.mean()) if n else float("nan"), per_clip)


def pooled(features) -> torch.Tensor:
    """The projected embeddings of ``get_image_features`` / ``get_text_features``: a tensor up to
    transformers 4.x, an output whose ``pooler_output`` holds them from 5.0."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output

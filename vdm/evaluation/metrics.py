"""Video metrics: Fréchet video distance (FVD) with a pluggable feature extractor, and per-frame
PSNR / SSIM (torchmetrics) for predictions that have ground-truth frames.

FVD (Unterthiner et al. 2018) is the Fréchet distance between Gaussians fitted to features of
real and generated clips. Papers disagree on the protocol (extractor, clip length, resolution,
sample counts), so :mod:`vdm.evaluate` writes it next to every number. The usual extractor is
the TorchScript I3D (Kinetics-400) that StyleGAN-V published as ``i3d_torchscript.pt``; vdm
never downloads it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics import Metric
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from vdm.errors import MissingFileError, UserError

I3D_FILE = "i3d_torchscript.pt"
I3D_FEATURES = 400
I3D_SOURCE = "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt (StyleGAN-V's FVD code)"


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> Tensor:
    """``‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½)`` in float64.

    ``Tr((Σ1 Σ2)^½)`` is the sum of the square roots of the eigenvalues of ``Σ1 Σ2``: they are
    real and ≥ 0 for covariance matrices (Σ1 Σ2 is similar to Σ1^½ Σ2 Σ1^½), so the real part
    drops only rounding noise.
    """
    mu1, mu2, sigma1, sigma2 = (x.double() for x in (mu1, mu2, sigma1, sigma2))
    mean_term = (mu1 - mu2).square().sum()
    sqrt_trace = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum()
    return mean_term + sigma1.trace() + sigma2.trace() - 2 * sqrt_trace


class TorchScriptI3D(nn.Module):
    """The TorchScript I3D of StyleGAN-V as an extractor: ``(N, C, T, H, W)`` in [-1, 1] → 400
    logits per clip. The network resizes frames to 224² itself (``resize=True``); the clips
    are already in [-1, 1] (``rescale=False``). Papers use 16-frame clips."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        path = Path(path).expanduser()
        if not path.is_file():
            raise MissingFileError(
                f"fvd.extractor={path} does not exist: FVD needs the TorchScript I3D file "
                f"{I3D_FILE} (download it yourself, e.g. from {I3D_SOURCE}) and its path."
            )
        try:
            with warnings.catch_warnings():  # the published I3D exists only as TorchScript
                warnings.simplefilter("ignore", DeprecationWarning)
                self.net = torch.jit.load(str(path), map_location="cpu").eval()
        except RuntimeError as error:
            reason = str(error).strip().splitlines()[0]
            raise UserError(
                f"fvd.extractor={path} is not a TorchScript file ({reason[:120]}): pass {I3D_FILE}."
            ) from None

    @torch.no_grad()
    def forward(self, videos: Tensor) -> Tensor:
        return self.net(videos, rescale=False, resize=True, return_features=True)


class FrechetVideoDistance(Metric):
    """FVD between the clips passed with ``real=True`` and those with ``real=False``.

    Features are accumulated as float64 sums and sums of outer products, so any split into
    batches (and across processes) gives the statistics of one big batch.

    Args:
        extractor: maps ``(N, C, T, H, W)`` clips in [-1, 1] to ``(N, feature_dim)`` features:
            a module or function, or the path of a TorchScript I3D file
            (:class:`TorchScriptI3D`).
        feature_dim: size of the features (400 for I3D's logits).
    """

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(
        self,
        extractor: nn.Module | Callable[[Tensor], Tensor] | str | Path,
        feature_dim: int = I3D_FEATURES,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(extractor, str | Path):
            extractor = TorchScriptI3D(extractor)
        self.extractor = extractor
        self.feature_dim = feature_dim
        for side in ("real", "fake"):
            zeros = torch.zeros(feature_dim, dtype=torch.float64)
            self.add_state(f"{side}_sum", zeros, dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", zeros.outer(zeros), dist_reduce_fx="sum")
            self.add_state(f"{side}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, videos: Tensor, real: bool) -> None:
        """Add ``videos`` ``(N, C, T, H, W)`` in [-1, 1] to the real or the generated set."""
        features = self.extractor(videos).double()
        if features.ndim != 2 or features.shape[1] != self.feature_dim:
            raise UserError(
                f"The FVD extractor gave features of shape {tuple(features.shape)}; expected "
                f"(N, {self.feature_dim}): set feature_dim to its feature size."
            )
        side = "real" if real else "fake"
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + features.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + features.T @ features)
        setattr(self, f"{side}_count", getattr(self, f"{side}_count") + len(features))

    def _gaussian(self, side: str) -> tuple[Tensor, Tensor]:
        n = int(getattr(self, f"{side}_count"))
        if n < 2:
            raise UserError(f"FVD needs at least 2 {side} clips; it has {n}.")
        mean = getattr(self, f"{side}_sum") / n
        cov = (getattr(self, f"{side}_outer") - n * mean.outer(mean)) / (n - 1)
        return mean, cov

    def compute(self) -> Tensor:
        return frechet_distance(*self._gaussian("real"), *self._gaussian("fake")).float()


def clip_psnr_ssim(prediction: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Per-clip PSNR (dB) and SSIM of ``(B, C, T, H, W)`` clips in [-1, 1]: each the mean over
    the clip's frames of the per-frame value (torchmetrics, data range 1 after mapping to
    [0, 1]). Returns ``{"psnr": (B,), "ssim": (B,)}``."""
    if prediction.shape != target.shape:
        raise UserError(
            f"PSNR/SSIM compare clips of one shape; got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}."
        )
    b, t = prediction.shape[0], prediction.shape[2]

    def frames(x: Tensor) -> Tensor:  # (B, C, T, H, W) in [-1, 1] → (B·T, C, H, W) in [0, 1]
        return ((x.float() + 1) / 2).transpose(1, 2).flatten(0, 1)

    pred, true = frames(prediction), frames(target)
    psnr = peak_signal_noise_ratio(pred, true, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(pred, true, data_range=1.0, reduction="none")
    return {"psnr": psnr.view(b, t).mean(1), "ssim": ssim.view(b, t).mean(1)}


def frame_psnr_ssim(prediction: Tensor, target: Tensor) -> dict[str, Tensor]:
    """Mean per-frame PSNR (dB) and SSIM of ``(B, C, T, H, W)`` clips in [-1, 1], for video
    prediction where the ground-truth frames exist (torchmetrics, data range 1 after mapping
    to [0, 1])."""
    return {name: values.mean() for name, values in clip_psnr_ssim(prediction, target).items()}

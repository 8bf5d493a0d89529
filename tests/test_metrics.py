"""FVD against a scipy reference, its batching, the TorchScript extractor, PSNR and SSIM."""

import numpy as np
import pytest
import scipy.linalg
import torch

from vdm.evaluation.metrics import (
    FrechetVideoDistance,
    TorchScriptI3D,
    frame_psnr_ssim,
    frechet_distance,
)

DIM = 6


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The textbook formula on two feature sets, with scipy's matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def gaussian_features(n: int, shift: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(DIM, DIM))
    return rng.normal(size=(n, DIM)) @ mixing + shift


def features_of(videos: torch.Tensor) -> torch.Tensor:
    """A stand-in extractor whose features are stored in the first DIM 'pixels'."""
    return videos.flatten(1)[:, :DIM]


def as_videos(features: np.ndarray) -> torch.Tensor:
    """Clips (N, 1, 1, 1, DIM) that ``features_of`` maps back to ``features``."""
    return torch.from_numpy(features).reshape(len(features), 1, 1, 1, DIM)


def test_frechet_distance_equals_the_scipy_reference_on_random_gaussians():
    a, b = gaussian_features(500, 0.0, 1), gaussian_features(400, 0.7, 2)
    mu1, mu2 = torch.from_numpy(a.mean(0)), torch.from_numpy(b.mean(0))
    s1 = torch.from_numpy(np.cov(a, rowvar=False))
    s2 = torch.from_numpy(np.cov(b, rowvar=False))
    ours = float(frechet_distance(mu1, s1, mu2, s2))
    assert ours == pytest.approx(scipy_frechet(a, b), rel=1e-9)
    assert ours > 1  # a real distance, not a degenerate zero


def test_closed_form_for_isotropic_gaussians():
    """N(0, I) vs N(m, 4 I): ‖m‖² + d·(1 + 4 − 2·2) = ‖m‖² + d."""
    m = torch.full((DIM,), 0.5, dtype=torch.float64)
    eye = torch.eye(DIM, dtype=torch.float64)
    assert float(frechet_distance(torch.zeros(DIM), eye, m, 4 * eye)) == pytest.approx(
        DIM * 0.25 + DIM, rel=1e-12
    )


def test_fvd_metric_matches_the_reference_and_a_set_against_itself_is_zero():
    a, b = gaussian_features(300, 0.0, 3), gaussian_features(300, 0.5, 4)
    fvd = FrechetVideoDistance(features_of, feature_dim=DIM)
    fvd.update(as_videos(a), real=True)
    fvd.update(as_videos(b), real=False)
    assert float(fvd.compute()) == pytest.approx(scipy_frechet(a, b), rel=1e-5)
    same = FrechetVideoDistance(features_of, feature_dim=DIM)
    same.update(as_videos(a), real=True)
    same.update(as_videos(a), real=False)
    assert abs(float(same.compute())) < 1e-6


def test_accumulating_over_batches_equals_one_big_batch():
    a, b = gaussian_features(257, 0.0, 5), gaussian_features(130, 1.0, 6)
    whole = FrechetVideoDistance(features_of, feature_dim=DIM)
    whole.update(as_videos(a), real=True)
    whole.update(as_videos(b), real=False)
    batched = FrechetVideoDistance(features_of, feature_dim=DIM)
    for chunk in np.array_split(a, 7):
        batched.update(as_videos(chunk), real=True)
    for chunk in np.array_split(b, 3):
        batched.update(as_videos(chunk), real=False)
    assert float(batched.compute()) == pytest.approx(float(whole.compute()), rel=1e-9)


def test_too_few_clips_and_wrong_feature_sizes_are_clear_errors():
    fvd = FrechetVideoDistance(features_of, feature_dim=DIM)
    fvd.update(as_videos(gaussian_features(1, 0.0, 7)), real=True)
    fvd.update(as_videos(gaussian_features(5, 0.0, 8)), real=False)
    with pytest.raises(ValueError, match="at least 2 real clips; it has 1"):
        fvd.compute()
    with pytest.raises(ValueError, match=r"features of shape \(3, 6\); expected \(N, 400\)"):
        FrechetVideoDistance(features_of).update(torch.zeros(3, 1, 1, 1, DIM), real=True)


class I3DStandIn(torch.nn.Module):
    """Same call signature as StyleGAN-V's i3d_torchscript.pt; echoes its flags as features."""

    def forward(
        self, x: torch.Tensor, rescale: bool = True, resize: bool = False,
        return_features: bool = False,
    ) -> torch.Tensor:  # fmt: skip
        flags = torch.tensor([float(rescale), float(resize), float(return_features)])
        return torch.cat([x.flatten(1)[:, :3], flags.expand(x.shape[0], 3)], dim=1)


def test_a_torchscript_file_is_called_the_way_fvd_papers_call_i3d(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(I3DStandIn()).save(str(path))
    fvd = FrechetVideoDistance(path, feature_dim=6)
    videos = torch.rand(2, 3, 4, 8, 8) * 2 - 1
    features = fvd.extractor(videos)
    torch.testing.assert_close(features[:, :3], videos.flatten(1)[:, :3])
    assert features[:, 3:].tolist() == [[0.0, 1.0, 1.0]] * 2  # rescale off, resize on, features


def test_a_missing_or_broken_extractor_file_says_what_is_needed(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist: FVD needs .*i3d_torchscript.pt"):
        TorchScriptI3D(tmp_path / "i3d_torchscript.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match=r"fvd.extractor=.*junk.pt is not a TorchScript file"):
        TorchScriptI3D(junk)


def test_psnr_follows_its_closed_form_and_ssim_is_one_for_identical_clips():
    target = torch.zeros(2, 3, 4, 16, 16)  # mid-grey in [-1, 1]
    prediction = target + 0.2  # 0.1 off in [0, 1]: MSE 0.01 → PSNR 20 dB
    scores = frame_psnr_ssim(prediction, target)
    assert float(scores["psnr"]) == pytest.approx(20.0, abs=1e-4)
    clip = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    assert float(frame_psnr_ssim(clip, clip)["ssim"]) == pytest.approx(1.0, abs=1e-6)
    assert float(frame_psnr_ssim(clip, -clip)["ssim"]) < 0.5
    with pytest.raises(ValueError, match="one shape"):
        frame_psnr_ssim(clip, clip[:, :, :2])

"""The autoencoder interface against diffusers itself (tiny models built from constructor
arguments), the causal frame rule, vdm's own VAE, and latent diffusion runs that record, check
and decode through their autoencoder."""

import csv
import re

import pytest
import torch
from conftest import compose_run, tiny_kl_vae, tiny_wan_vae, train_tiny

from vdm.autoencoders import (
    Autoencoder,
    PixelSpace,
    diffusers_geometry,
    load_diffusers_autoencoder,
    load_vdm_autoencoder,
)
from vdm.autoencoders.base import frame_count_near, latent_frame_count
from vdm.cli.checks import ConfigError, check_train_config
from vdm.cli.train import run
from vdm.errors import UserError
from vdm.files.checkpoint import load_checkpoint
from vdm.inference import load_run
from vdm.inference.build import fill_autoencoder_geometry
from vdm.inference.generation import sample_videos


@pytest.fixture(scope="module")
def kl_folder(tmp_path_factory):
    return tiny_kl_vae(tmp_path_factory.mktemp("kl"))


@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return tiny_wan_vae(tmp_path_factory.mktemp("wan"))


def video(b: int, t: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, t, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_an_image_vae_encodes_and_decodes_every_frame_as_diffusers_does(kl_folder):
    from diffusers import AutoencoderKL

    ae = load_diffusers_autoencoder(str(kl_folder), frame_chunk=3)
    reference = AutoencoderKL.from_pretrained(kl_folder).eval()
    x = video(2, 5)
    assert (ae.latent_channels, ae.spatial_factor, ae.temporal_factor, ae.causal) == (
        4,
        2,
        1,
        False,
    )
    latents = ae.encode(x)  # the posterior mean
    assert latents.shape == (2, 4, 5, 8, 8) == (2, *ae.latent_shape((3, 5, 16, 16)))
    with torch.no_grad():
        frame = x[1, :, 3][None]  # clip 1, frame 3
        mean = reference.encode(frame).latent_dist.mean[0]
        torch.testing.assert_close(latents[1, :, 3], mean * 0.18215, rtol=1e-5, atol=1e-6)
        decoded = reference.decode(latents[1, :, 3][None] / 0.18215).sample[0].clamp(-1, 1)
    torch.testing.assert_close(ae.decode(latents)[1, :, 3], decoded, rtol=1e-5, atol=1e-5)


def test_a_causal_video_vae_takes_1_plus_4k_frames_with_per_channel_normalisation(wan_folder):
    from diffusers import AutoencoderKLWan

    ae = load_diffusers_autoencoder(str(wan_folder))  # the pipeline folder: vae/ is found
    assert (ae.latent_channels, ae.spatial_factor, ae.temporal_factor, ae.causal) == (4, 8, 4, True)
    assert [ae.latent_frames_for(n) for n in (1, 5, 9, 17)] == [1, 2, 3, 5]
    assert [ae.frames_for(n) for n in (1, 2, 3, 5)] == [1, 5, 9, 17]
    with pytest.raises(UserError, match=r"1 \+ 4·k .*data.clip_len"):
        ae.latent_frames_for(8)
    x = video(1, 9)
    latents = ae.encode(x)
    assert latents.shape == (1, 4, 3, 2, 2)
    reference = AutoencoderKLWan.from_pretrained(wan_folder / "vae").eval()
    with torch.no_grad():
        raw = reference.encode(x).latent_dist.mean
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1)
    std = torch.tensor([2.0, 0.5, 1.0, 4.0]).view(1, 4, 1, 1, 1)
    torch.testing.assert_close(latents, (raw - mean) / std, rtol=1e-5, atol=1e-6)
    assert ae.decode(latents).shape == (1, 3, 9, 16, 16)
    # Cheap geometry (no weights read) agrees with the loaded model.
    assert diffusers_geometry(str(wan_folder)) == {
        "latent_channels": 4, "spatial_factor": 8, "temporal_factor": 4, "causal": True
    }  # fmt: skip


def test_a_latent_frame_is_given_when_all_its_frames_are():
    ae = Autoencoder(torch.nn.Linear(1, 1), 4, 8, 4, True, 0.0, 1.0, {"kind": "test"})
    mask = torch.tensor(
        [[1, 1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0, 1, 1]], dtype=torch.bool
    )
    assert ae.latent_mask(mask).tolist() == [[True, True, False], [True, False, False]]
    flat = Autoencoder(torch.nn.Linear(1, 1), 4, 8, 2, False, 0.0, 1.0, {"kind": "test"})
    assert flat.latent_mask(mask[:, 1:]).tolist() == [[True, True, False, False],
                                                      [True, False, False, True]]  # fmt: skip


def test_normalisation_round_trips_scalar_and_per_channel():
    class Raw(Autoencoder):
        def raw_posterior(self, x):
            return x[:, :2] * 3 + 1, torch.ones_like(x[:, :2])

        def raw_decode(self, z):
            return torch.cat([(z - 1) / 3, torch.zeros_like(z[:, :1])], 1)

    x = video(3, 2).clamp(-0.9, 0.9)
    x[:, 2] = 0
    for shift, scale in ((0.5, 0.18215), (torch.tensor([1.0, -2.0]), torch.tensor([0.5, 4.0]))):
        ae = Raw(
            torch.nn.Linear(1, 1), 2, 1, 1, False, shift, scale, {"kind": "test"}, batch_chunk=2
        )
        latents = ae.encode(x)
        expected = (
            x[:, :2] * 3 + 1 - torch.as_tensor(shift).view(1, -1, 1, 1, 1)
        ) * torch.as_tensor(scale).view(1, -1, 1, 1, 1)
        torch.testing.assert_close(latents, expected)
        torch.testing.assert_close(ae.decode(latents), x, rtol=1e-5, atol=1e-5)


def test_decoding_many_clips_calls_the_model_one_chunk_at_a_time(kl_folder):
    ae = load_diffusers_autoencoder(str(kl_folder), batch_chunk=2, frame_chunk=4)
    sizes = []
    decode = ae.network.decode
    ae.network.decode = lambda z: sizes.append(len(z)) or decode(z)
    ae.decode(torch.zeros(5, 4, 3, 4, 4))
    # 5 clips in chunks of 2 clips; each chunk's 6 (or 3) frames 4 at a time.
    assert sizes == [4, 2, 4, 2, 3]


def test_pixel_space_is_the_identity():
    x = video(2, 3)
    ae = PixelSpace(3)
    assert ae.encode(x, torch.Generator().manual_seed(0)) is x and ae.decode(x) is x
    assert ae.latent_shape((3, 3, 16, 16)) == (3, 3, 16, 16) and ae.fingerprint is None


def test_missing_or_wrong_folders_are_one_line(tmp_path, kl_folder):
    with pytest.raises(UserError, match="autoencoder.path=.*is not a folder"):
        load_diffusers_autoencoder(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="holds no diffusers autoencoder"):
        load_diffusers_autoencoder(str(tmp_path))
    with pytest.raises(UserError, match="autoencoder.dtype=float64"):
        load_diffusers_autoencoder(str(kl_folder), dtype="float64")
    with pytest.raises(UserError, match="autoencoder.ckpt_path=.*does not exist"):
        load_vdm_autoencoder(str(tmp_path / "vae.ckpt"))


def test_a_diffusion_checkpoint_is_not_a_vae(conditional_ckpt):
    with pytest.raises(UserError, match="not a checkpoint of vdm's VAE"):
        load_vdm_autoencoder(str(conditional_ckpt))


def test_vdm_vae_reconstruction_improves_on_shapes_in_a_few_dozen_steps(tmp_path):
    trainer = run(
        compose_run(
            tmp_path, "task=autoencoder", "trainer.max_steps=40", "trainer.val_check_interval=20",
            "trainer.limit_val_batches=2", "data.num_train=32", "data.batch_size=4",
            "lr_scheduler.warmup_steps=5", "optimizer.lr=2e-3",
        )
    )  # fmt: skip
    rows = [r for f in tmp_path.rglob("metrics.csv") for r in csv.DictReader(f.open())]
    values = [float(r["val/psnr"]) for r in rows if r.get("val/psnr")]
    assert trainer.global_step == 40 and len(values) == 2
    # The black background alone scores ~10.7 dB (where an L1 loss sat for 100 steps); an
    # untrained VAE ~8 dB.
    assert values[1] > values[0] and values[1] > 12.5, values
    panels = sorted((tmp_path / "samples" / "step_000040").glob("sample_*.mp4"))
    assert panels, "no reconstruction videos"
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert int(ckpt["state_dict"]["vae.stats_seen"]) == 40
    assert all(k.startswith("vae.") for k in ckpt["state_dict"])


def test_a_latent_run_records_its_autoencoder_and_samples_pixels(latent_ckpt, vae_ckpt):
    ckpt = load_checkpoint(latent_ckpt)
    assert ckpt["autoencoder"]["kind"] == "vdm" and len(ckpt["autoencoder"]["sha256"]) == 64
    assert not any(k.startswith(("vae.", "autoencoder.")) for k in ckpt["state_dict"])
    assert ckpt["hyper_parameters"]["model"]["in_channels"] == 4  # the VAE's latent channels
    loaded = load_run(latent_ckpt)
    videos = loaded.sample(num_samples=2, sampler=loaded.sampler(2), progress=False)
    assert videos.shape == (2, 3, 8, 32, 32) and videos.abs().max() <= 1
    # Given frames come back exactly; the others are decoded from latents.
    real = video(2, 8, size=32, seed=3)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[:, :3] = True
    given = (real * mask[:, None, :, None, None], mask)
    out = loaded.sample(num_samples=2, sampler=loaded.sampler(2), context=given, progress=False)
    assert torch.equal(out[:, :, :3], real[:, :, :3]) and not torch.equal(
        out[:, :, 3:], real[:, :, 3:]
    )


@pytest.mark.parametrize("latent", [True, False])
def test_x0_is_clamped_to_the_pixel_range_in_pixels_but_not_in_latents(
    latent, latent_ckpt, tmp_path, monkeypatch
):
    """Every x0 estimate is 3: DDIM (eta 0) ends on it exactly, unless the [-1, 1] clamp of pixel
    samplers cuts it to 1; normalised latents (unit std) must not be cut."""
    loaded = load_run(latent_ckpt if latent else train_tiny(tmp_path, 3))
    model = loaded.model
    monkeypatch.setattr(model.diffusion, "predict_x0", lambda x, t, out, kind=None: x * 0 + 3)
    decoded = []
    monkeypatch.setattr(model.autoencoder, "decode", lambda z: decoded.append(z) or z)
    sampler = loaded.sampler(4)
    assert sampler.clip_denoised  # the run's sampler config, as trained
    sample_videos(model, sampler, loaded.clip_shape(), None, 1, 1)
    expected = 3.0 if latent else 1.0
    assert torch.allclose(decoded[0], torch.full_like(decoded[0], expected), atol=1e-4)
    assert sampler.clip_denoised  # the caller's sampler is left as it was


def test_a_checkpoint_refuses_another_autoencoder_in_one_line(latent_ckpt, tmp_path, monkeypatch):
    ckpt = load_checkpoint(latent_ckpt)
    ckpt["autoencoder"] = {**ckpt["autoencoder"], "sha256": "0" * 64}
    other = tmp_path / "other.ckpt"
    torch.save(ckpt, other)
    with pytest.raises(UserError) as error:
        load_run(other)
    message = str(error.value)
    assert "\n" not in message and re.search(
        r"trained on the vdm autoencoder VideoVAE 000000000000, not on", message
    )
    pixel = {k: v for k, v in load_checkpoint(latent_ckpt).items() if k != "autoencoder"}
    torch.save(pixel, other)
    with pytest.raises(UserError, match="trained on pixels"):
        load_run(other)


def test_resuming_on_another_autoencoder_is_refused(latent_ckpt, tmp_path):
    with pytest.raises(
        UserError,
        match=r"ckpt_path=.*: trained on the vdm autoencoder VideoVAE \w{12}, not on pixels",
    ):
        run(compose_run(tmp_path, "data.num_classes=3", "context=mixed", f"ckpt_path={latent_ckpt}",
                        "trainer.max_steps=4", "~logger"))  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.size=36"], r"data.size=36: the autoencoder \(spatial factor 8\) needs a multiple"),
        (["data.clip_len=8"], r"data.clip_len=8: the causal autoencoder \(temporal factor 4\) "
                              r"takes 1 \+ 4·k frames: e.g. data.clip_len=5"),
        (["data.size=40", "data.clip_len=9", "model=transformer_tiny", "model.patch_size=2"],
         r"data.size=40: SpaceTimeTransformer needs a latent size that is a multiple of 2 .* is 5"),
    ],
)  # fmt: skip
def test_latent_geometry_is_checked_before_work_in_one_line(
    wan_folder, tmp_path, overrides, message
):
    cfg = compose_run(
        tmp_path, "autoencoder=diffusers", f"autoencoder.path={wan_folder}", *overrides
    )
    fill_autoencoder_geometry(cfg)
    assert cfg.autoencoder.temporal_factor == 4 and cfg.model.in_channels == 4
    with pytest.raises(ConfigError, match=message):
        check_train_config(cfg)


def test_a_pixel_space_checkpoint_is_as_before(conditional_ckpt):
    ckpt = load_checkpoint(conditional_ckpt)
    assert "autoencoder" not in ckpt
    assert {k.split(".")[0] for k in ckpt["state_dict"]} == {"denoiser"}


def test_sampling_through_an_image_vae_decodes_each_batch(kl_folder):
    from vdm.diffusion import DDIMSampler, GaussianDiffusion, NoiseSchedule
    from vdm.inference import DiffusionModel
    from vdm.models import UNet3D

    ae = load_diffusers_autoencoder(str(kl_folder))
    model = DiffusionModel(
        UNet3D(in_channels=4, out_channels=4, base_channels=8, channel_mult=(1, 2), heads=1,
               attention_resolutions=()),
        GaussianDiffusion(NoiseSchedule(num_steps=10)), ae,
    ).eval()  # fmt: skip
    decoded = []
    decode = ae.decode
    ae.decode = lambda z: decoded.append(tuple(z.shape)) or decode(z)
    videos = sample_videos(model, DDIMSampler(2), (3, 4, 16, 16), None, num_samples=3, batch_size=2)
    assert videos.shape == (3, 3, 4, 16, 16)
    assert decoded == [(2, 4, 4, 8, 8), (1, 4, 4, 8, 8)]


def test_a_moved_autoencoder_is_found_with_autoencoder_path_and_must_be_the_same(
    latent_ckpt, vae_ckpt, conditional_ckpt, tmp_path
):
    import shutil

    moved = tmp_path / "moved.ckpt"
    shutil.copy(vae_ckpt, moved)
    assert (
        load_run(latent_ckpt, autoencoder_path=str(moved)).model.autoencoder.fingerprint
        == (load_checkpoint(latent_ckpt)["autoencoder"])
    )
    other = load_checkpoint(vae_ckpt)
    other["state_dict"]["vae.dec_out.bias"] = other["state_dict"]["vae.dec_out.bias"] + 0.01
    torch.save(other, tmp_path / "other.ckpt")
    with pytest.raises(
        UserError, match=r"VideoVAE \w{12}, not on the vdm autoencoder VideoVAE \w{12}"
    ):
        load_run(latent_ckpt, autoencoder_path=str(tmp_path / "other.ckpt"))
    with pytest.raises(UserError, match="trained in pixel space"):
        load_run(conditional_ckpt, autoencoder_path=str(moved))


def test_a_checkpoint_from_before_autoencoders_loads_and_samples_in_pixels(
    conditional_ckpt, tmp_path
):
    old = load_checkpoint(conditional_ckpt)
    for key in ("autoencoder", "vae", "vae_loss", "latents", "task"):
        old["hyper_parameters"].pop(key, None)
    old["hyper_parameters"]["model"]["in_channels"] = 3  # as written then: ${data.channels}
    torch.save(old, tmp_path / "old.ckpt")
    loaded = load_run(tmp_path / "old.ckpt")
    assert isinstance(loaded.model.autoencoder, PixelSpace)
    videos = loaded.sample(num_samples=1, sampler=loaded.sampler(2), progress=False)
    assert videos.shape == (1, 3, 8, 32, 32)


def test_resuming_a_vae_run_checks_its_task_and_vae_config(vae_ckpt, tmp_path):
    with pytest.raises(UserError, match=r"is a task=autoencoder checkpoint: resume it with task="):
        run(compose_run(tmp_path / "a", f"ckpt_path={vae_ckpt}", "~logger"))
    with pytest.raises(UserError, match=r"holds another vae \(vae.base_channels differ"):
        run(compose_run(tmp_path / "b", "task=autoencoder", "vae.base_channels=8",
                        f"ckpt_path={vae_ckpt}", "~logger"))  # fmt: skip


def test_the_frame_rule_for_causal_and_plain_temporal_factors():
    assert [latent_frame_count(n, 4, True) for n in (1, 5, 17, 8, 0)] == [1, 2, 5, None, None]
    assert [latent_frame_count(n, 4, False) for n in (4, 8, 16, 6, 2)] == [1, 2, 4, None, None]
    assert [latent_frame_count(n, 1, c) for n in (1, 7) for c in (True, False)] == [1, 1, 7, 7]
    assert [frame_count_near(n, 4, True) for n in (8, 18, 2)] == [5, 17, 5]
    assert [frame_count_near(n, 4, False) for n in (6, 2, 17)] == [4, 4, 16]

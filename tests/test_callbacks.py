"""SampleVideos samples in chunks: the clips are the same whatever the chunk size."""

import numpy as np
import pytest
import torch

from vdm.diffusion import DDIMSampler
from vdm.inference import load_run
from vdm.training.callbacks import SampleVideos


@pytest.fixture(scope="module")
def module(context_ckpt):
    """A 3-class, frame-conditioned tiny U-Net (both of the callback's grids apply)."""
    return load_run(context_ckpt).model


def callback(tmp_path, batch_size: int) -> SampleVideos:
    samples = SampleVideos(
        DDIMSampler(steps=3), tmp_path, num_samples=2, guidance_scale=2.0, batch_size=batch_size
    )
    samples._clip_shape = (3, 8, 32, 32)
    generator = torch.Generator().manual_seed(5)
    samples._real = {
        "video": torch.rand(6, 3, 8, 32, 32, generator=generator) * 2 - 1,
        "label": torch.tensor([0, 1, 2, 0, 1, 2]),
    }
    return samples


def test_chunked_sampling_gives_the_clips_of_one_batch(module, tmp_path):
    whole, chunked = callback(tmp_path, batch_size=64), callback(tmp_path, batch_size=4)
    videos, labels, _ = whole.sample(module)
    chunked_videos, chunked_labels, _ = chunked.sample(module)
    assert videos.shape == (6, 8, 32, 32, 3)  # 2 per class, 3 classes
    assert labels.tolist() == [0, 0, 1, 1, 2, 2] == chunked_labels.tolist()
    np.testing.assert_array_equal(videos, chunked_videos)
    np.testing.assert_array_equal(whole.predict(module), chunked.predict(module))


def test_chunks_bound_the_batch_the_model_sees(module, tmp_path):
    seen = []
    hook = module.denoiser.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    try:
        callback(tmp_path, batch_size=4).sample(module)
    finally:
        hook.remove()
    # Guidance runs the conditional and unconditional branch in one batch: 2 × the chunk.
    assert max(seen) == 8 and sum(seen) == 2 * 6 * 3  # 6 clips, 3 steps


def test_a_batch_size_below_one_is_refused(tmp_path):
    with pytest.raises(ValueError, match="callbacks.sample_videos.batch_size=0"):
        SampleVideos(DDIMSampler(steps=3), tmp_path, batch_size=0)

"""Memory and time of one LoRA fine-tuning step of published video transformers on a GPU: the
arithmetic behind docs/cluster.md#fine-tuning-published-models, stated instead of guessed.

    python bench/finetune_estimate.py [--rows wan-1.3b-480 ...] [--peak-tflops 989 --mfu 0.35 0.5]

The recipe is ``experiment=finetune_wan``'s: batch 1, a bfloat16 base, float32 LoRA adapters
(rank 32 on the attention projections) trained with AdamW under bf16 autocast, gradient
checkpointing, captions and latents read from their caches. What each figure rests on:

- counted: parameters (each transformer built from its published config on the meta device: no
  weights), adapter parameters (peft on the same model), tokens per clip, and the model FLOPs of
  one step (forward, each block's recompute and backward; ``vdm.training.flops.count_flops`` on
  the meta device, the transformer called as vdm calls it);
- measured on this CPU: the bytes autograd keeps for backward, with ``bench/finetune.py``'s
  counter, on two of the transformer's blocks at its real width (the base in bfloat16, adapters
  in float32, bf16 autocast; layer norms in float32, as CUDA's autocast runs them), for clips of
  192 and 768 tokens: a straight line through the two gives bytes per token and per block, so
  one block's activations (held while backward recomputes it) and the blocks' inputs (kept by
  the checkpoints) scale to the real clip;
- assumed: the utilisation (``--mfu``) of the GPU's dense bf16 peak (``--peak-tflops``: 989 for
  an H100 SXM).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from finetune import Batch, kept_for_backward, loss_of  # bench/ is on sys.path

from vdm.models.text_embedding import TextEmbedding
from vdm.published.denoiser import DiffusersDenoiser
from vdm.published.families import family_of
from vdm.published.lora import add_lora, lora_config
from vdm.training.flops import count_flops

GB = 1e9
WAN_1_3B = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)  # fmt: skip
WAN_14B = WAN_1_3B | dict(num_attention_heads=40, ffn_dim=13824, num_layers=40)
COGVIDEOX_2B = dict(
    num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16,
    time_embed_dim=512, text_embed_dim=4096, num_layers=30, sample_width=90, sample_height=60,
    sample_frames=49, patch_size=2, max_text_seq_length=226,
    use_rotary_positional_embeddings=False,
)  # fmt: skip
COGVIDEOX_5B = COGVIDEOX_2B | dict(
    num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True
)
LTX_VIDEO = dict(
    in_channels=128, out_channels=128, patch_size=1, patch_size_t=1, num_attention_heads=32,
    attention_head_dim=64, cross_attention_dim=2048, num_layers=28, caption_channels=4096,
)  # fmt: skip
# The text encoders' configs (transformers): UMT5-XXL and T5-XXL v1.1, encoder only.
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", vocab_size=32128)  # fmt: skip
TEXT_ENCODERS = {"UMT5-XXL": T5_XXL | dict(vocab_size=256384), "T5-XXL": T5_XXL}


@dataclass(frozen=True)
class Row:
    """One model at one clip size."""

    name: str
    cls: str  # the diffusers transformer class
    config: dict
    frames: int  # video frames
    height: int
    width: int
    vae: str  # the diffusers VAE class, counted at its default config
    factors: tuple[int, int]  # the VAE's temporal and spatial factors (causal: 1 + (T - 1) / t)
    text_encoder: str
    text_tokens: int  # the pipeline's max_sequence_length
    patch: tuple[int, int] = (1, 2)  # the transformer's temporal and spatial patch
    latent_channels: int = 16
    lora_targets: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")

    @property
    def latent(self) -> tuple[int, int, int]:
        t, s = self.factors
        return 1 + (self.frames - 1) // t, self.height // s, self.width // s

    @property
    def tokens(self) -> int:
        frames, h, w = self.latent
        pt, ps = self.patch
        return math.ceil(frames / pt) * (h // ps) * (w // ps)


def wan(name, config, height, width):
    return Row(name, "WanTransformer3DModel", config, 81, height, width, "AutoencoderKLWan",
               (4, 8), "UMT5-XXL", 512)  # fmt: skip


def cogvideox(name, config, height, width):
    return Row(name, "CogVideoXTransformer3DModel", config, 49, height, width,
               "AutoencoderKLCogVideoX", (4, 8), "T5-XXL", 226)  # fmt: skip


def ltx(name, height, width):
    return Row(name, "LTXVideoTransformer3DModel", LTX_VIDEO, 121, height, width,
               "AutoencoderKLLTXVideo", (8, 32), "T5-XXL", 128, patch=(1, 1),
               latent_channels=128)  # fmt: skip


ROWS = {
    "wan-1.3b-480": wan("Wan 2.1 T2V 1.3B", WAN_1_3B, 480, 480),
    "wan-1.3b-832": wan("Wan 2.1 T2V 1.3B", WAN_1_3B, 480, 832),
    "wan-14b-480": wan("Wan 2.1 T2V 14B", WAN_14B, 480, 480),
    "wan-14b-832": wan("Wan 2.1 T2V 14B", WAN_14B, 480, 832),
    "cogvideox-2b-480": cogvideox("CogVideoX-2B", COGVIDEOX_2B, 480, 480),
    "cogvideox-2b-720": cogvideox("CogVideoX-2B", COGVIDEOX_2B, 480, 720),
    "cogvideox-5b-480": cogvideox("CogVideoX-5B", COGVIDEOX_5B, 480, 480),
    "cogvideox-5b-720": cogvideox("CogVideoX-5B", COGVIDEOX_5B, 480, 720),
    "ltx-512": ltx("LTX-Video 2B", 512, 512),
    "ltx-768": ltx("LTX-Video 2B", 512, 768),
}


def build(row: Row, device: str, layers: int | None = None, rank: int = 32):
    """``row``'s transformer with LoRA adapters and checkpointing, as vdm's denoiser: on the meta
    device, or (``layers`` blocks) on the CPU with a bfloat16 base as ``from_pretrained`` loads
    it (its ``_keep_in_fp32_modules`` in float32)."""
    import diffusers

    config = row.config | ({"num_layers": layers} if layers else {})
    torch.manual_seed(0)
    with torch.device(device):
        transformer = getattr(diffusers, row.cls)(**config)
    if device != "meta":
        keep = transformer._keep_in_fp32_modules or []
        for name, parameter in transformer.named_parameters():
            if not any(module in name.split(".") for module in keep):
                parameter.data = parameter.data.to(torch.bfloat16)
    transformer.enable_gradient_checkpointing()
    settings = {"rank": rank, "alpha": rank, "dropout": 0.0, "target_modules": row.lora_targets}
    add_lora(transformer, lora_config(**settings))
    return DiffusersDenoiser(transformer, family_of(row.cls, row.name), {"lora": settings})


def batch_for(row: Row, latent: tuple[int, int, int], device: str) -> Batch:
    shape = (1, row.latent_channels, *latent)
    tokens = torch.randn(1, row.text_tokens, 4096, device=device)
    mask = torch.ones(1, row.text_tokens, dtype=torch.bool, device=device)
    text = TextEmbedding(tokens, mask, tokens.mean(1))
    x0, noise = torch.randn(shape, device=device), torch.randn(shape, device=device)
    return Batch(x0, noise, torch.full((1,), 0.5, device=device), text)


def step_flops(row: Row, rank: int) -> tuple[int, int, int, int]:
    """Parameters, adapter parameters, and the model FLOPs of one step and of one forward, on
    the meta device at ``row``'s clip size."""
    model = build(row, "meta", rank=rank)
    batch = batch_for(row, row.latent, "meta")
    params = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)

    flops = count_flops(lambda: loss_of(model, batch).backward())
    with torch.no_grad():
        forward = count_flops(lambda: loss_of(model, batch))
    return params, adapters, flops, forward


def cuda_layer_norm(original):
    """``F.layer_norm`` as CUDA's autocast runs it (in float32, with a float32 output); the
    CPU's runs it in bfloat16."""

    def layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
        if not torch.is_autocast_enabled("cpu"):
            return original(x, shape, weight, bias, eps)
        with torch.autocast("cpu", enabled=False):
            w = None if weight is None else weight.float()
            b = None if bias is None else bias.float()
            return original(x.float(), shape, w, b, eps)

    return layer_norm


@dataclass
class PerToken:
    """Bytes kept for backward as ``per_token × tokens + constant``."""

    per_token: float
    constant: float

    def at(self, tokens: int) -> float:
        return self.per_token * tokens + self.constant


def line(a: tuple[int, float], b: tuple[int, float]) -> PerToken:
    slope = (b[1] - a[1]) / (b[0] - a[0])
    return PerToken(slope, a[1] - slope * a[0])


def activations(row: Row, rank: int, layers: int = 2) -> dict[str, PerToken]:
    """What a block keeps (``block``: held while backward recomputes it), what a checkpoint keeps
    per block (``inputs``) and what stays outside the blocks (``outside``, with the tensors all
    blocks share), each as bytes per token, measured on ``layers`` blocks at two clip sizes."""
    model = build(row, "cpu", layers, rank)
    transformer = model.transformer
    points: dict[str, list[tuple[int, float]]] = {"block": [], "inputs": [], "outside": []}
    pt, ps = row.patch
    original = F.layer_norm
    F.layer_norm = cuda_layer_norm(original)
    try:
        for side in (8, 16):  # 3 × 8² and 3 × 16² patches: 192 and 768 tokens
            latent = (3 * pt, side * ps, side * ps)
            batch = batch_for(row, latent, "cpu")
            tokens = 3 * side * side
            transformer.gradient_checkpointing = False
            plain = kept_for_backward(model, batch, True, 0)[0]
            transformer.gradient_checkpointing = True
            kept = kept_for_backward(model, batch, True, 0)[0]
            points["block"].append((tokens, max(plain.blocks)))
            points["inputs"].append((tokens, kept.block_inputs / layers))
            points["outside"].append((tokens, kept.outside + kept.shared_inputs))
    finally:
        F.layer_norm = original
    return {name: line(*values) for name, values in points.items()}


def meta_params(cls_name: str, module: str, config: dict | None = None) -> int:
    module = __import__(module, fromlist=[cls_name])
    with torch.device("meta"):
        if config is None:
            model = getattr(module, cls_name)()
        else:
            from transformers import T5Config

            model = getattr(module, cls_name)(T5Config(**config))
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16, per GPU")
    parser.add_argument("--mfu", type=float, nargs=2, default=[0.35, 0.5])
    args = parser.parse_args()
    low, high = args.mfu

    print("| row | transformer | tokens | base bf16 GB | LoRA params | adapters + grads + "
          "AdamW GB | block inputs kept GB | one block GB | outside GB | activations GB | "
          "total GB | text encoder bf16 GB | VAE fp32 GB | TFLOP/step | step/forward | "
          f"s/step at {low:.0%}–{high:.0%} |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    measured: dict[str, dict[str, PerToken]] = {}
    for key in args.rows:
        row = ROWS[key]
        params, adapters, flops, forward = step_flops(row, args.rank)
        if row.name not in measured:
            measured[row.name] = activations(row, args.rank)
        per = measured[row.name]
        n, layers = row.tokens, row.config["num_layers"]
        weights = params * 2
        lora = adapters * 16  # float32 weights, gradients and two AdamW moments
        inputs = per["inputs"].at(n) * layers
        block = per["block"].at(n)
        outside = per["outside"].at(n)
        acts = inputs + block + outside
        text = meta_params("T5EncoderModel", "transformers", TEXT_ENCODERS[row.text_encoder]) * 2
        vae = meta_params(row.vae, "diffusers") * 4
        seconds = [flops / (args.peak_tflops * 1e12 * u) for u in (low, high)]
        print(
            f"| {key} | {row.name} {row.frames} × {row.height}×{row.width} | {n} | "
            f"{weights / GB:.1f} | {adapters / 1e6:.1f} M | {lora / GB:.2f} | {inputs / GB:.1f} | "
            f"{block / GB:.1f} | {outside / GB:.2f} | {acts / GB:.1f} | "
            f"{(weights + lora + acts) / GB:.1f} | {text / GB:.1f} | {vae / GB:.2f} | "
            f"{flops / 1e12:.0f} | {flops / forward:.2f} | {seconds[0]:.2f}–{seconds[1]:.2f} |",
            flush=True,
        )
    print("\nBytes kept for backward per token (measured on CPU, bf16 autocast):\n")
    print("| transformer | one block, B/token | checkpoint input per block, B/token | outside "
          "the blocks, B/token |")  # fmt: skip
    print("|---|---:|---:|---:|")
    for name, per in measured.items():
        print(f"| {name} | {per['block'].per_token:.0f} | {per['inputs'].per_token:.0f} | "
              f"{per['outside'].per_token:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()

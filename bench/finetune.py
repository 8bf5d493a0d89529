"""Fine-tuning a published video transformer on this CPU: full fine-tuning and LoRA, each with and
without gradient checkpointing, side by side: step time and memory, in parts that carry over to a
GPU.

    python bench/finetune.py [--layers 4 --size 32 --rounds 6 --steps 1] [--no-bf16] [--threads 1]

A small ``WanTransformer3DModel`` is built from constructor arguments (seed 0), saved into a
temporary folder's ``transformer/`` and loaded by ``vdm.published.load_diffusers_denoiser`` as a
run loads it, once per configuration (LoRA: rank 16 on the attention projections, adapters
seeded alike). One training step is the flow-matching MSE of ``vdm.diffusion.flow`` on a fixed
batch (same times, noise and captions for every configuration), backward, and AdamW on the
trainable parameters. Rounds interleave the configurations, so drift on a shared machine hits
them alike; times are medians over all timed steps.

Memory is reported in parts, since that is the arithmetic that carries over to a GPU:
parameters, gradients and the AdamW moments (bytes of the tensors themselves), and the
activations kept for backward, counted at the end of the forward pass with
``torch.autograd.graph.saved_tensors_hooks`` (distinct storages, parameters excluded) plus, with
checkpointing, the blocks' inputs that the checkpoint holds for its recompute. With checkpointing,
backward recomputes one block at a time and holds its full activations meanwhile: the column
"one block" is what one block keeps without checkpointing. "Peak" is measured: the largest sum
of live CPU tensor bytes over one step after the warm-up (``torch.profiler``'s allocation
events, so allocator- and RSS-free), plus the parameters and AdamW state alive before it. FLOPs
are those executed (``vdm.training.flops.count_flops``), recomputation included.

Before timing, the script checks that the four step-0 losses are equal (same weights, same
batch; LoRA starts as the base) and that the adapters' gradients, and the full model's, agree
with and without checkpointing; it stops if they do not. ``--no-bf16`` skips the extra row with
the Wan preset's dtypes (bfloat16 base, float32 adapters, checkpointing), which is slow on CPUs
without bf16 matmul instructions.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import torch
from _machine import header, matmul_gflops  # bench/ is on sys.path: scripts run from it

from vdm.diffusion.flow import FlowMatching
from vdm.models.text_embedding import TextEmbedding
from vdm.published import load_diffusers_denoiser
from vdm.training.flops import count_flops


@dataclass(frozen=True)
class Config:
    checkpointing: bool
    lora: bool
    dtype: str = "float32"  # of the base weights (adapters are float32)
    mixed: bool = False  # bf16 autocast, as trainer.precision=bf16-mixed


# The first four are the comparison; the fifth is the finetune_wan preset's precision.
CONFIGS = {
    "full": Config(False, False),
    "LoRA": Config(False, True),
    "full + ckpt": Config(True, False),
    "LoRA + ckpt": Config(True, True),
    "LoRA + ckpt, bf16 base, bf16-mixed": Config(True, True, "bfloat16", mixed=True),
}
MAIN = list(CONFIGS)[:4]
PRESET = list(CONFIGS)[4]
MB = 2**20


@dataclass
class Sizes:
    """The transformer and the batch: Wan's layout at a width a CPU trains in under a second."""

    layers: int = 4
    heads: int = 4
    head_dim: int = 32
    ffn: int = 512
    text_dim: int = 64
    channels: int = 16  # latent channels, as Wan's VAE
    frames: int = 5  # latent frames (17 video frames through Wan's 4× causal VAE)
    size: int = 32  # latent height and width (256 px through its 8× VAE)
    batch: int = 2
    text_tokens: int = 32
    rank: int = 16

    @property
    def hidden(self) -> int:
        return self.heads * self.head_dim

    @property
    def tokens(self) -> int:
        """Video tokens per clip: Wan patches 1 × 2 × 2."""
        return self.frames * (self.size // 2) ** 2


def save_transformer(folder: Path, sizes: Sizes) -> Path:
    """A ``WanTransformer3DModel`` of ``sizes`` (seed 0) saved into ``folder/transformer``."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=sizes.heads, attention_head_dim=sizes.head_dim,
        in_channels=sizes.channels, out_channels=sizes.channels, text_dim=sizes.text_dim,
        freq_dim=64, ffn_dim=sizes.ffn, num_layers=sizes.layers, rope_max_seq_len=64,
    ).save_pretrained(folder / "transformer")  # fmt: skip
    return folder


def load(folder: Path, name: str, rank: int):
    """The denoiser of configuration ``name``, as ``model=diffusers`` loads it."""
    config = CONFIGS[name]
    torch.manual_seed(0)  # the adapters' A matrices: the same in every LoRA configuration
    settings = {"rank": rank, "alpha": rank, "dropout": 0.0} if config.lora else None
    return load_diffusers_denoiser(
        str(folder), config.dtype, config.checkpointing, settings
    ).train()


def autocast(mixed: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=mixed)


@dataclass
class Batch:
    x0: torch.Tensor
    noise: torch.Tensor
    t: torch.Tensor
    text: TextEmbedding

    @classmethod
    def make(cls, sizes: Sizes) -> Batch:
        g = torch.Generator().manual_seed(0)
        shape = (sizes.batch, sizes.channels, sizes.frames, sizes.size, sizes.size)
        tokens = torch.randn(sizes.batch, sizes.text_tokens, sizes.text_dim, generator=g)
        mask = torch.ones(sizes.batch, sizes.text_tokens, dtype=torch.bool)
        mask[0, sizes.text_tokens // 2 :] = False  # one short caption: padding rows are zeros
        text = TextEmbedding(tokens, mask, tokens.mean(1))
        return cls(
            torch.randn(shape, generator=g), torch.randn(shape, generator=g),
            torch.rand(sizes.batch, generator=g), text,
        )  # fmt: skip


FLOW = FlowMatching(timestep_sampling="uniform", shift=3.0)  # Wan's: σ uniform, then shifted


def loss_of(model, batch: Batch) -> torch.Tensor:
    return FLOW.training_loss(model, batch.x0, t=batch.t, noise=batch.noise, text=batch.text)[0]


@dataclass
class Kept:
    """What one forward pass keeps for backward, in bytes: autograd's saved tensors by block and
    outside the blocks, and with checkpointing the tensors each block is given (held for its
    recompute): its hidden states, and the caption, time and rotary tensors all blocks share."""

    blocks: list[int]
    outside: int = 0
    block_inputs: int = 0  # the hidden states entering checkpointed blocks
    shared_inputs: int = 0  # the other tensors given to checkpointed blocks
    ffn: int = 0  # of ``blocks``: tensors as wide as the feed-forward layer

    @property
    def total(self) -> int:
        return sum(self.blocks) + self.outside + self.block_inputs + self.shared_inputs


def blocks_of(transformer) -> torch.nn.ModuleList:
    """The transformer's blocks (Wan: ``blocks``; CogVideoX, LTX-Video: ``transformer_blocks``)."""
    blocks = getattr(transformer, "blocks", None)
    return blocks if blocks is not None else transformer.transformer_blocks


def kept_for_backward(model, batch: Batch, mixed: bool, ffn: int) -> tuple[Kept, torch.Tensor]:
    """Run ``model``'s forward and loss once (under bf16 autocast if ``mixed``), counting the
    distinct non-parameter storages that autograd saves (attributed to the block running, if
    any; those of width ``ffn`` also apart) and the tensors a checkpointed block is given.
    Returns the count and the loss (for backward)."""
    transformer = model.transformer
    blocks = blocks_of(transformer)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    kept = Kept(blocks=[0] * len(blocks))
    current: list[int | None] = [None]

    def add(tensor: torch.Tensor, where: str) -> None:
        storage = tensor.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if ptr in parameters or ptr in seen or nbytes == 0:
            return
        seen.add(ptr)  # saved tensors stay alive until backward: no two share an address
        if where != "saved":
            setattr(kept, where, getattr(kept, where) + nbytes)
        elif current[0] is None:
            kept.outside += nbytes
        else:
            kept.blocks[current[0]] += nbytes
            kept.ffn += nbytes if tensor.shape[-1] == ffn else 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        add(tensor, "saved")
        return tensor

    def enter(index: int):
        return lambda module, args: current.__setitem__(0, index)

    handles = [block.register_forward_pre_hook(enter(i)) for i, block in enumerate(blocks)]
    handles += [block.register_forward_hook(lambda *_: current.__setitem__(0, None))
                for block in blocks]  # fmt: skip
    checkpoint = transformer._gradient_checkpointing_func

    def counting_checkpoint(block, hidden_states, *args):
        add(hidden_states, "block_inputs")
        for arg in args:
            for tensor in arg if isinstance(arg, tuple | list) else (arg,):
                if isinstance(tensor, torch.Tensor):
                    add(tensor, "shared_inputs")
        return checkpoint(block, hidden_states, *args)

    if checkpoint is not None:
        transformer._gradient_checkpointing_func = counting_checkpoint
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast(mixed):
            loss = loss_of(model, batch)
    finally:
        for handle in handles:
            handle.remove()
        if checkpoint is not None:
            transformer._gradient_checkpointing_func = checkpoint
    return kept, loss


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_step_bytes(step) -> int:
    """The largest sum of live tensor bytes allocated during ``step()`` above what lived before
    it, from ``torch.profiler``'s allocation and free events (CPU tensors; no allocator or RSS
    effects)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]"
    )
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


@dataclass
class Run:
    """One configuration: its model, optimizer, step-0 results and measurements."""

    name: str
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    trainable: list[torch.Tensor]
    loss0: float = 0.0
    grads0: dict[str, torch.Tensor] = field(default_factory=dict)
    kept: Kept | None = None  # as the configuration runs
    plain: Kept | None = None  # with checkpointing off: what each block keeps
    flops: int = 0
    forward_flops: int = 0
    adam_bytes: int = 0
    grad_bytes: int = 0
    peak_step: int = 0
    times: list[float] = field(default_factory=list)

    @property
    def config(self) -> Config:
        return CONFIGS[self.name]

    def step(self, batch: Batch) -> None:
        with autocast(self.config.mixed):
            loss = loss_of(self.model, batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # gradients do not live through the forward

    @property
    def param_bytes(self) -> int:
        return tensor_bytes(self.model.parameters())

    @property
    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.trainable)

    @property
    def one_block(self) -> int:
        """What the largest block keeps for backward: with checkpointing, what backward holds
        while it recomputes that block."""
        return max(self.plain.blocks)

    @property
    def peak(self) -> int:
        """Measured: parameters and AdamW state, and the peak of one step above them."""
        return self.param_bytes + self.adam_bytes + self.peak_step


def prepare(folder: Path, name: str, sizes: Sizes, batch: Batch) -> Run:
    """Load configuration ``name`` and run its step 0, measured: activations kept, loss,
    gradients (kept for the checks), AdamW state; then the FLOPs and the peak of one more step."""
    model = load(folder, name, sizes.rank)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, weight_decay=1e-4)
    run = Run(name, model, optimizer, trainable)
    mixed = run.config.mixed
    run.kept, loss = kept_for_backward(model, batch, mixed, sizes.ffn)
    run.loss0 = loss.item()
    loss.backward()
    run.grads0 = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    run.grad_bytes = tensor_bytes(p.grad for p in trainable)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    run.adam_bytes = tensor_bytes(  # the two moments (the step counters are a float each)
        state[key] for state in optimizer.state.values() for key in ("exp_avg", "exp_avg_sq")
    )
    run.plain = run.kept
    if run.config.checkpointing:  # each block's own activations: a forward without it
        model.transformer.gradient_checkpointing = False
        run.plain = kept_for_backward(model, batch, mixed, sizes.ffn)[0]
        model.transformer.gradient_checkpointing = True
    run.flops = count_flops(lambda: run.step(batch))
    with torch.no_grad(), autocast(mixed):
        run.forward_flops = count_flops(lambda: loss_of(model, batch))
    run.peak_step = peak_step_bytes(lambda: run.step(batch))
    return run


def check(runs: dict[str, Run]) -> list[str]:
    """The step-0 losses of the four configurations are equal, and gradients agree with and
    without checkpointing (the adapters', and every weight's in full fine-tuning). Raises
    SystemExit otherwise; returns the lines to print."""
    lines = []
    losses = [runs[name].loss0 for name in MAIN]
    spread = max(losses) - min(losses)
    ok = spread <= 1e-6 * abs(losses[0])
    lines.append(f"# step-0 losses {', '.join(f'{x:.6f}' for x in losses)} ({', '.join(MAIN)}): "
                 f"largest difference {spread:.1e}, {'equal' if ok else 'NOT EQUAL'}")  # fmt: skip
    failures = [] if ok else ["losses"]
    for plain, ckpt in (("LoRA", "LoRA + ckpt"), ("full", "full + ckpt")):
        a, b = runs[plain].grads0, runs[ckpt].grads0
        if set(a) != set(b) or not a:
            lines.append(f"# {plain}: {len(a)} gradients without checkpointing, {len(b)} with")
            failures.append(f"{plain} gradients")
            continue
        worst = max((a[n] - b[n]).abs().max().item() / (a[n].abs().max().item() or 1) for n in a)
        nonzero = sum(bool(a[n].any()) for n in a)
        good = worst <= 1e-5
        lines.append(f"# {plain} gradients with and without checkpointing: {len(a)} tensors "
                     f"({nonzero} nonzero), largest difference {worst:.1e} of the tensor's "
                     f"largest, {'agree' if good else 'DIFFER'}")  # fmt: skip
        if not good:
            failures.append(f"{plain} gradients")
    if PRESET in runs:
        bf16 = runs[PRESET].loss0
        lines.append(f"# {PRESET}: step-0 loss {bf16:.6f} ({abs(bf16 - losses[0]) / losses[0]:.2%}"
                     " from float32's)")  # fmt: skip
    if failures:
        print("\n".join(lines))
        raise SystemExit(f"finetune: the configurations disagree ({', '.join(failures)})")
    return lines


def timed_rounds(runs: dict[str, Run], batch: Batch, rounds: int, steps: int) -> None:
    """``rounds`` rounds, each running ``steps`` timed steps of every configuration in turn."""
    for _ in range(rounds):
        for run in runs.values():
            for _ in range(steps):
                start = time.perf_counter()
                run.step(batch)
                run.times.append(time.perf_counter() - start)


def table(runs: dict[str, Run]) -> list[str]:
    """Markdown rows, one per configuration, with ratios to full fine-tuning."""
    full = runs["full"]
    full_time = statistics.median(full.times)
    lines = [
        "| configuration | trains | s/step | vs full | GFLOP/step | GFLOP/s | parameters MB | "
        "gradients MB | AdamW moments MB | kept for backward MB | one block MB | peak MB | "
        "peak vs full |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs.values():
        step = statistics.median(run.times)
        lines.append(
            f"| {run.name} | {run.trainable_count / 1e6:.3f} M | {step:.3f} | "
            f"{step / full_time:.2f}× | {run.flops / 1e9:.2f} | {run.flops / step / 1e9:.0f} | "
            f"{run.param_bytes / MB:.1f} | {run.grad_bytes / MB:.2f} | "
            f"{run.adam_bytes / MB:.2f} | {run.kept.total / MB:.2f} | {run.one_block / MB:.2f} "
            f"| {run.peak / MB:.1f} | {run.peak / full.peak:.2f}× |"
        )
    return lines


def details(runs: dict[str, Run], sizes: Sizes) -> list[str]:
    """What scales to other sizes: activations per video token and block, split into the part
    as wide as the feed-forward layer and the rest (per unit of width), and FLOPs per step
    against the forward's."""
    tokens = sizes.batch * sizes.tokens
    lines = [
        "",
        "| configuration | a block keeps, B per token | = B × hidden + B × ffn | checkpoint keeps "
        "per block, B per token | outside the blocks MB | step peak / parts | step FLOPs / "
        "forward FLOPs |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for run in runs.values():
        plain, kept = run.plain, run.kept
        block = sum(plain.blocks) / sizes.layers / tokens
        ffn = plain.ffn / sizes.layers / tokens
        inputs = kept.block_inputs / sizes.layers / tokens
        # What the step's peak should be: kept activations, gradients and, with checkpointing,
        # one block recomputed; the rest is backward's temporaries.
        parts = kept.total + run.grad_bytes + (run.one_block if run.config.checkpointing else 0)
        lines.append(
            f"| {run.name} | {block:.0f} | {(block - ffn) / sizes.hidden:.1f} × {sizes.hidden} + "
            f"{ffn / sizes.ffn:.1f} × {sizes.ffn} | {f'{inputs:.0f}' if inputs else '—'} | "
            f"{kept.outside / MB:.2f} | {run.peak_step / parts:.2f} | "
            f"{run.flops / run.forward_flops:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = Sizes()
    for name, value in vars(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=value)
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per round")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 preset's row")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 steadies timings on a shared CPU)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = Sizes(**{name: getattr(args, name) for name in vars(defaults)})

    print(f"{header()}, diffusers {version('diffusers')}, peft {version('peft')}")
    print(f"# matmul peak (1024², same run): fp32 {matmul_gflops(torch.float32):.0f}, bf16 "
          f"{matmul_gflops(torch.bfloat16):.0f} GFLOP/s")  # fmt: skip
    batch = Batch.make(sizes)
    names = MAIN if args.no_bf16 else list(CONFIGS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_transformer(Path(tmp), sizes)
        runs = {name: prepare(folder, name, sizes, batch) for name in names}
    params = sum(p.numel() for p in runs["full"].model.parameters())
    print(f"# WanTransformer3DModel {params / 1e6:.2f} M: {sizes.layers} layers, {sizes.heads} "
          f"heads × {sizes.head_dim} = {sizes.hidden} wide, ffn {sizes.ffn}, text {sizes.text_dim};"
          f" batch {sizes.batch} × {sizes.channels} × {sizes.frames} × {sizes.size}² latents "
          f"({sizes.tokens} tokens per clip) + {sizes.text_tokens} caption tokens; LoRA rank "
          f"{sizes.rank} on to_q, to_k, to_v, to_out.0")  # fmt: skip
    print("\n".join(check(runs)))
    timed_rounds(runs, batch, args.rounds, args.steps)
    print(f"# medians of {args.rounds} interleaved rounds × {args.steps} steps\n")
    print("\n".join(table(runs)))
    print("\n".join(details(runs, sizes)))


if __name__ == "__main__":
    main()

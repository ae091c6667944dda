"""Copy operators of one LoRA training step (forward and backward, bf16 autocast) with peft's casts of each
adapter's input to its fp32 weights, and with the trainer's `adapter_input_casts_off`, which turns them off; and
whether the two give the same loss and LoRA gradients (they must, bit for bit). Counts operators, not
time: a CPU run gives the launches a GPU step saves, not how much time that is. Beside them, the operators of a
full fine-tune's step (every UNet weight trained, fp32 under autocast): how many more a LoRA step dispatches.

    python benchmarks/lora_casts.py --arch sd14          # SD v1.4's UNet at random weights, 8x8 latents
"""

from __future__ import annotations

import argparse
from collections import Counter
from types import SimpleNamespace

import torch
from common import record  # benchmarks/ is on sys.path when run as a script
from diffusers import UNet2DConditionModel

from resurgence.finetune import train
from resurgence.finetune.config import FinetuneConfig
from resurgence.models.pipeline import ARCHITECTURES


def training_step_setup(arch: str, latent: int, method: str):
    """SD's UNet at random weights, set up as the trainer sets it up for ``method`` under bf16 mixed precision,
    and one batch of latents and text states in the UNet's dtype, as the trainer feeds it. Returns the pipe, its
    config, the trained parameters and the batch."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**ARCHITECTURES[arch].unet)
    pipe = SimpleNamespace(unet=unet, text_encoder=torch.nn.Identity(), vae=torch.nn.Identity())
    cfg = FinetuneConfig(steps=1, learning_rate=1e-4, batch_size=1, method=method, mixed_precision="bf16")
    params = train._setup_trainable(pipe, cfg, torch.device("cpu"))
    c = unet.config
    x = torch.randn(1, c.in_channels, latent, latent).to(unet.dtype)
    states = torch.randn(1, 77, c.cross_attention_dim).to(unet.dtype)
    return pipe, cfg, params, x, states


def profiled_step(unet, params, x, states) -> tuple[torch.Tensor, list[torch.Tensor], Counter]:
    """One training step (forward and backward under bf16 autocast) under the profiler: its loss, the trained
    parameters' gradients and the count of each operator."""
    for q in params:
        q.grad = None
    t = torch.tensor([500])  # made outside the profile: the step's operators only
    with torch.profiler.profile() as prof:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = unet(x, t, states, return_dict=False)[0].float().pow(2).mean()
        loss.backward()
    return loss.detach(), [q.grad.clone() for q in params], Counter(e.name for e in prof.events())


def full_step_operators(arch: str, latent: int) -> int:
    """Operators of one full fine-tune step, after a first step."""
    pipe, _, params, x, states = training_step_setup(arch, latent, "full")
    profiled_step(pipe.unet, params, x, states)
    return sum(profiled_step(pipe.unet, params, x, states)[2].values())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="sd14", choices=sorted(ARCHITECTURES))
    p.add_argument("--latent", type=int, default=8, help="latent side (the count does not depend on it)")
    args = p.parse_args(argv)
    pipe, cfg, params, x, states = training_step_setup(args.arch, args.latent, "lora")
    peft = profiled_step(pipe.unet, params, x, states)
    with train.adapter_input_casts_off(pipe, cfg):
        ours = profiled_step(pipe.unet, params, x, states)

    def counts(ops: Counter) -> dict[str, int]:
        back = sum(n for k, n in ops.items() if k.startswith("ToCopyBackward"))
        return dict(to_copy=ops["aten::_to_copy"], to_copy_backward=back, operators=sum(ops.values()))

    record(
        "lora_casts",
        dict(
            arch=args.arch,
            lora_parameters=len(params),
            with_peft_casts=counts(peft[2]),
            adapter_input_casts_off=counts(ours[2]),
            same_loss=bool(torch.equal(peft[0], ours[0])),
            same_gradients=all(torch.equal(a, b) for a, b in zip(peft[1], ours[1], strict=True)),
            full_step_operators=full_step_operators(args.arch, args.latent),
        ),
    )


if __name__ == "__main__":
    main()

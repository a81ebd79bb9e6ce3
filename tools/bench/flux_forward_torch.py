"""PyTorch/diffusers reference for benches/flux_forward.rs: the same medium FLUX configuration
(docs/benchmarks.md), one forward, f32, CPU, median of N runs.

    python tools/bench/flux_forward_torch.py --threads 2

Needs `torch` and `diffusers==0.42.1` in a virtual environment outside the repository.
"""
import argparse
import statistics
import time

import torch
from diffusers import FluxTransformer2DModel


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=64,
        num_attention_heads=8, joint_attention_dim=256, pooled_projection_dim=128,
        guidance_embeds=True, axes_dims_rope=(8, 28, 28),
    ).eval()
    params = sum(p.numel() for p in model.parameters())
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float()
    inputs = dict(
        hidden_states=torch.randn(1, 1024, 64),
        encoder_hidden_states=torch.randn(1, 64, 256),
        pooled_projections=torch.randn(1, 128),
        timestep=torch.tensor([0.7]),
        guidance=torch.tensor([3.5]),
        img_ids=img_ids,
        txt_ids=torch.zeros(64, 3),
        return_dict=False,
    )
    times = []
    with torch.inference_mode():
        model(**inputs)
        for _ in range(args.runs):
            start = time.perf_counter()
            model(**inputs)
            times.append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, diffusers FluxTransformer2DModel, {params:,} parameters, "
          f"{args.threads} threads: median {statistics.median(times) * 1000:.1f} ms over {args.runs} runs "
          f"(min {min(times) * 1000:.1f} ms)")


if __name__ == "__main__":
    main()

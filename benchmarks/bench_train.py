"""Training throughput of the WGAN-GP step: images/s per CPU core, default model vs the 2019 baseline.

Runs the trainer's own step (n_critic critic updates with the gradient penalty + one generator update) on
random conditions and synthetic images, with torch limited to ``--threads`` threads, and reports each
model's images/s (images passed through the critic per second, (n_critic + 1) x batch per step) and the
ratio to the baseline2019 generator measured in the same run.

    python benchmarks/bench_train.py [--steps 5] [--batch-size 64] [--threads 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from calogan.core.gan import gradient_penalty
from calogan.ecal.models import build_critic, build_generator, critic_features
from calogan.ecal.train import PRESETS, TrainConfig


def _conditions(n: int) -> torch.Tensor:
    xy = torch.randn(n, 2) * 2.7
    pxy = torch.randn(n, 2) * 3.0
    pz = torch.rand(n, 1) * 99 + 1
    return torch.cat([xy, pxy, pz, (torch.rand(n, 1) > 0.5).float()], dim=1)


def step_throughput(model: str, steps: int, batch: int, n_critic: int, sizes: dict) -> float:
    """Images/s of full WGAN-GP steps (after one warm-up step)."""
    torch.manual_seed(0)
    gen, critic = build_generator({"model": model, **sizes}), build_critic(sizes)
    opt_g = torch.optim.Adam(gen.parameters(), 1e-4, betas=(0.0, 0.9))
    opt_c = torch.optim.Adam(critic.parameters(), 1e-4, betas=(0.0, 0.9))
    real, cond = torch.rand(batch, 30, 30) * 50, _conditions(batch)

    def one_step() -> None:
        for _ in range(n_critic):
            with torch.no_grad():
                fake = gen(torch.randn(batch, gen.noise_dim), cond)
            fr, ff = critic_features(real, cond), critic_features(fake, cond)
            gp, _ = gradient_penalty(critic, fr, ff, cond)
            loss = critic(ff, cond).mean() - critic(fr, cond).mean() + gp
            opt_c.zero_grad()
            loss.backward()
            opt_c.step()
        loss_g = -critic(critic_features(gen(torch.randn(batch, gen.noise_dim), cond), cond), cond).mean()
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()

    one_step()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return steps * batch * (n_critic + 1) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--preset", default="quick", choices=list(PRESETS))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = TrainConfig(**PRESETS[args.preset])
    sizes = {
        k: getattr(cfg, k)
        for k in ("noise_dim", "latent", "gen_channels", "critic_channels", "critic_hidden")
    }
    results = {}
    for model in ("baseline2019", "shower"):
        model_sizes = {**sizes, "noise_dim": 10} if model == "baseline2019" else sizes
        ips = step_throughput(model, args.steps, args.batch_size, cfg.n_critic, model_sizes)
        results[model] = {"images_per_s": ips, "images_per_s_per_core": ips / args.threads}
    base = results["baseline2019"]["images_per_s"]
    for model, r in results.items():
        r["ratio_to_baseline2019"] = r["images_per_s"] / base
        print(
            f"{model:>13}: {r['images_per_s']:8.1f} images/s ({args.threads} thread(s)), x{r['ratio_to_baseline2019']:.2f}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()

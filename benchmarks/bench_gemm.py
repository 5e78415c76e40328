"""fp32 matrix multiplies on this CPU: torch's default path (MKL on x86 builds) against oneDNN's, side by side.

    PYTHONPATH=src python benchmarks/bench_gemm.py [--threads 1 2] [--scoring] [--sft]

The package runs every linear layer through torch's default fp32 GEMM. On some x86 CPUs that path is
far from what the cores can do (MKL picks a slower kernel on non-Intel processors), while oneDNN,
which torch also ships, dispatches on the CPU's features. This script measures both on the shapes the
project's models use, so a user can see which case their CPU is:

1. GEMM rate (GFLOP/s) of ``x @ w.T`` at the decoder's shapes (2,048 positions; the GSM8K workload of
   ``bench_dmc_scoring.py``: hidden 128, MLP 512, vocabulary 2,000; smol: hidden 576, MLP 1,536), and the
   largest difference of the two results relative to the largest output;
2. ``--scoring``: the DMC scorer on ``bench_dmc_scoring.py``'s GSM8K workload, the one-at-a-time loop and
   the shared path with the model's linear layers as they are and routed through oneDNN, alternating;
3. ``--sft``: 150 SFT steps of each tiny-profile lab student, as they are and through oneDNN (forward and
   backward), alternating, with the largest difference of the final weights.

oneDNN is reached through ``torch.ops.mkldnn._linear_pointwise`` (the op torch's compiler uses for CPU
linear layers), wrapped here in an autograd function; the package does not use it (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import time
from pathlib import Path
from types import SimpleNamespace

import torch

SHAPES = {"gsm8k": [(2048, 128, 512), (2048, 512, 128), (2048, 128, 128), (2048, 128, 2000)],
          "smol": [(2048, 576, 1536), (2048, 1536, 576), (2048, 576, 576), (2048, 576, 192)],
          "lab-m": [(1100, 96, 384), (1100, 384, 96), (1100, 96, 96)]}


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` computed by oneDNN (2-D ``x``)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDNNLinear(torch.autograd.Function):
    """A linear layer through oneDNN, forward and backward (the backward's GEMMs through oneDNN too)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return onednn_linear(x.reshape(-1, x.shape[-1]), weight, bias).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        g2, x2 = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        gx = onednn_linear(g2, weight.t().contiguous()).reshape(x.shape) if ctx.needs_input_grad[0] else None
        gw = onednn_linear(g2.t().contiguous(), x2.t().contiguous()) if ctx.needs_input_grad[1] else None
        gb = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gx, gw, gb


@contextlib.contextmanager
def linear_through_onednn():
    """Within the block, float32 CPU linear layers (``torch.nn.functional.linear``) run through oneDNN."""
    original = torch.nn.functional.linear

    def linear(x, weight, bias=None):
        if x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() >= 2 and x.numel():
            return OneDNNLinear.apply(x, weight, bias)
        return original(x, weight, bias)

    torch.nn.functional.linear = linear
    try:
        yield
    finally:
        torch.nn.functional.linear = original


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_rates(threads: int, calls: int) -> None:
    torch.set_num_threads(threads)
    print(f"\nGEMM x @ w.T, float32, {threads} thread(s), best of 3 x {calls} calls")
    print(f"{'model':<7}{'shape (M x K x N)':<20}{'default GFLOP/s':>17}{'oneDNN GFLOP/s':>16}{'ratio':>8}{'rel diff':>10}")
    for model, shapes in SHAPES.items():
        for m, k, n in shapes:
            gen = torch.Generator().manual_seed(0)
            x, w = torch.randn(m, k, generator=gen), torch.randn(n, k, generator=gen)
            flops = 2 * m * k * n * calls
            rates = []
            for fn in (lambda: torch.nn.functional.linear(x, w), lambda: onednn_linear(x, w)):
                fn()
                rates.append(flops / best_time(lambda: [fn() for _ in range(calls)], 3) / 1e9)
            ref = torch.nn.functional.linear(x, w)
            diff = float((onednn_linear(x, w) - ref).abs().max() / ref.abs().max())
            print(f"{model:<7}{f'{m} x {k} x {n}':<20}{rates[0]:>17.1f}{rates[1]:>16.1f}{rates[1] / rates[0]:>8.2f}{diff:>10.1e}")


def scoring(threads: int, repeats: int) -> None:
    import bench_dmc_scoring as B
    from syllabus.scoring import score_pairs, score_pairs_naive

    torch.set_num_threads(threads)
    args = SimpleNamespace(workload="gsm8k", pairs=160, vocab=2000, hidden=128, layers=4,
                           data_dir=Path(os.environ.get("SYLLABUS_DATA_DIR", B.ROOT.parent / "shared" / "data")))
    model, tok, pairs, what = B.gsm8k_workload(args)
    kw = {"batch_size": 64, "max_batch_tokens": 2048}
    naive = score_pairs_naive(model, tok, pairs)
    times = {"naive (one at a time)": [], "shared 64/2048": [], "shared 64/2048, oneDNN": []}
    diffs = {}
    for _ in range(repeats):  # alternating, so a change of the machine's speed hits every path alike
        for name in times:
            with linear_through_onednn() if "oneDNN" in name else contextlib.nullcontext():
                fn = (lambda: score_pairs_naive(model, tok, pairs)) if name.startswith("naive") else \
                    (lambda: score_pairs(model, tok, pairs, **kw))
                start = time.perf_counter()
                out = fn()
                times[name].append(time.perf_counter() - start)
            diffs[name] = float((out[B.NUMERIC] - naive[B.NUMERIC]).abs().to_numpy().max())
    base = min(times["naive (one at a time)"])
    print(f"\nDMC scoring, {what}, {len(pairs)} GSM8K pairs, {threads} thread(s), best of {repeats} alternating runs")
    print(f"{'path':<26}{'wall s':>8}{'x naive':>9}{'max |diff|':>12}")
    for name, walls in times.items():
        print(f"{name:<26}{min(walls):>8.2f}{base / min(walls):>9.2f}{diffs[name]:>12.1e}")


def sft(repeats: int) -> None:
    from bench_sft_step import lab_pairs
    from syllabus import models, params as P, train
    from syllabus.problems import pretrain_texts, tokenizer_texts

    torch.set_num_threads(1)  # as the tiny profile trains
    prof = P.load_profile("tiny")
    pairs = lab_pairs(2000, ("equations", "prose", "selfcheck"))
    print(f"\nSFT, tiny profile's lab students, 150 steps of 16 examples, 1 thread, best of {repeats} alternating runs")
    print(f"{'student':<9}{'default s':>11}{'oneDNN s':>10}{'ratio':>8}{'max |weight diff|':>19}")
    for spec in prof.students:
        tok = models.lab_tokenizer(tokenizer_texts(prof, pretrain_texts(prof, spec)))
        start_model = models.build_lab_model(spec.arch, tok, seed=0)
        walls, weights = {False: [], True: []}, {}
        for _ in range(repeats):
            for through in (False, True):
                model = copy.deepcopy(start_model)
                with linear_through_onednn() if through else contextlib.nullcontext():
                    start = time.perf_counter()
                    train.sft(model, tok, pairs, steps=150, cfg=prof.training, seed=0)
                    walls[through].append(time.perf_counter() - start)
                weights[through] = model.state_dict()
        diff = max(float((weights[True][k] - weights[False][k]).abs().max()) for k in weights[False])
        print(f"{spec.name:<9}{min(walls[False]):>11.2f}{min(walls[True]):>10.2f}"
              f"{min(walls[False]) / min(walls[True]):>8.2f}{diff:>19.1e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--scoring", action="store_true", help="also the DMC scorer on the GSM8K workload")
    ap.add_argument("--sft", action="store_true", help="also SFT of the tiny profile's lab students")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print(f"torch {torch.__version__}; {torch.backends.cpu.get_cpu_capability()} kernels; "
          f"BLAS: {'MKL' if torch.backends.mkl.is_available() else 'not MKL'}")
    for threads in args.threads:
        gemm_rates(threads, args.calls)
    if args.scoring:
        scoring(max(args.threads), args.repeats)
    if args.sft:
        sft(args.repeats)


if __name__ == "__main__":
    main()

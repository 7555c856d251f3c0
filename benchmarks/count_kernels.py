"""Operations per training epoch: what an epoch costs in GPU kernel launches.

On a GPU, a small problem's epoch is bound by kernel launches (each ~2–5 µs), not by
arithmetic. This counts, on the CPU, the PyTorch operators that would each launch a
CUDA kernel (views and allocations excluded) plus the Triton kernel launches, for one
epoch (forward, backward, fused Adam step) of a synthetic pseudo-Voigt forest in the paper's
setting shape, with the PyTorch kernel (the baseline) and with the Triton kernels
(run under Triton's interpreter, whose own bookkeeping is not counted). Counts do not
depend on the forest's size, only on its number of buckets.

    python benchmarks/count_kernels.py [--lines 770] [--pixels 33500]
"""

from __future__ import annotations

import argparse
import collections
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

import torch  # noqa: E402
from bench_epoch import synthetic_forest  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402

from blase_specutils.core import sparse, triton_kernels  # noqa: E402

#: Operators that do not launch a kernel (metadata, allocation, host scalars).
NO_KERNEL = {
    "aten::as_strided",
    "aten::view",
    "aten::empty",
    "aten::empty_strided",
    "aten::empty_like",
    "aten::result_type",
    "aten::is_same_size",
    "aten::lift_fresh",
    "aten::detach",
    "aten::alias",
    "aten::unsqueeze",
    "aten::slice",
    "aten::select",
    "aten::expand",
    "aten::reshape",
    "aten::_reshape_alias",
    "aten::_local_scalar_dense",
    "aten::set_",
}
TRITON_LAUNCH = "triton kernel launch"


class _Counted:
    """Wraps a Triton kernel so each launch is one profiler range."""

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            with record_function(TRITON_LAUNCH):
                return self.kernel[grid](*args, **kwargs)

        return launch


def _inside_launch(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == TRITON_LAUNCH:
            return True
        parent = parent.cpu_parent
    return False


def _scalar_copy(event) -> bool:
    # Python numbers wrapped as 0-d CPU tensors: kernel arguments on a GPU, not launches.
    shapes = [s for s in event.input_shapes if isinstance(s, list)]
    return event.name == "aten::copy_" and all(len(s) == 0 for s in shapes)


def count(kernel: str, forest, layout, target) -> tuple[int, int, collections.Counter]:
    default, sparse.PSEUDO_VOIGT_KERNEL = sparse.PSEUDO_VOIGT_KERNEL, kernel
    # fused Adam, as the library trains on CUDA (train.adam); the CPU runs the same kernel
    params = [p for p in forest.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=0.01, fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((torch.exp(forest.log_transmission(layout)) - target) ** 2)
        loss.backward()
        opt.step()

    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    ops = collections.Counter()
    launches = 0
    for event in prof.events():
        if event.name == TRITON_LAUNCH:
            launches += 1
        elif (
            event.name.startswith("aten::")
            and not event.cpu_children
            and event.name not in NO_KERNEL
            and not _inside_launch(event)
            and not _scalar_copy(event)
        ):
            ops[event.name] += 1
    sparse.PSEUDO_VOIGT_KERNEL = default
    return sum(ops.values()), launches, ops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=770)
    parser.add_argument("--pixels", type=int, default=33_500)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name in (
        "_forward_kernel",
        "_backward_kernel",
        "_coefficients_kernel",
        "_coefficients_backward_kernel",
    ):
        setattr(triton_kernels, name, _Counted(getattr(triton_kernels, name)))
    device = torch.device("cpu")
    print(f"\n## Kernel launches per epoch ({args.lines} lines, {args.pixels:,} px)\n")
    print("| kernel | bucket ratio | buckets | PyTorch operators | Triton launches | total |")
    print("|---|---|---|---|---|---|")
    forest, wl = synthetic_forest(args.lines, args.pixels, device, torch.float32)
    with torch.no_grad():
        target = forest(forest.make_layout(wl)) * 0.999
    for ratio in (2, 4):
        layout = forest.make_layout(wl, bucket_ratio=ratio)
        for kernel in ("torch", "triton"):
            ops, launches, _ = count(kernel, forest, layout, target)
            print(
                f"| {kernel} | {ratio} | {len(layout.buckets)} | {ops} | {launches} | "
                f"{ops + launches} |"
            )


if __name__ == "__main__":
    main()

"""The transition from the kernel side at initialisation: how far the empirical NTK of the study's MLPs
on MNIST is from its infinite-width limit, against width.

For each width n (8 ... 8192), depth L (3 and 4 Dense layers) and seed, the network and the NTK batch
are those of the protocol sweep's run (`mnist-protocol-depth{L}` with that width and seed:
`run_split`, `run_model`, 128 held-out samples, C = 10, float32). Measured at initialisation:

    d = ‖K₀ − K∞ ⊗ I_C‖_F / ‖K∞ ⊗ I_C‖_F   and   1 − A(K₀, K∞ ⊗ I_C),

with K₀ the exact empirical NTK (`ntkspec.ntk(...).dense()`, 1280 × 1280) and K∞ the width-aware
infinite-width NTK of those widths (`ntkspec.infinite.mlp_operator`). At large width the relative
fluctuations of the empirical NTK are O(n^-1/2) (Hanin & Nica 2019), so d should fall about as
n^-1/2; the misalignment is second order in the deviation orthogonal to K∞, so about as n^-1.
Power laws are fitted to the seed means with a seed-bootstrap interval (`ntkspec.experiments.fits`).

Usage: nice -n 10 python -m benchmarks.kernel_distance [--data-dir DIR] [--widths 8,...,8192]
    [--depths 3,4] [--seeds 5] [--out benchmarks/results/kernel_distance.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "kernel_distance.json"
WIDTHS = ",".join(str(2**k) for k in range(3, 14))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.kernel_distance", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with mnist/")
    parser.add_argument("--widths", default=WIDTHS)
    parser.add_argument("--depths", default="3,4", help="numbers of Dense layers L")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    import numpy as np

    import ntkspec
    from benchmarks._harness import machine, pyplot, save_figure, write_json
    from ntkspec.estimators import kernel_alignment, kernel_distance
    from ntkspec.experiments.config import load_config, run_model, run_split, runs
    from ntkspec.experiments.fits import fit_power_law
    from ntkspec.infinite import mlp_operator

    widths = tuple(int(w) for w in args.widths.split(","))
    dataset = ntkspec.data.load("mnist", args.data_dir)
    start = time.perf_counter()
    rows, fits = [], {}
    for depth in (int(d) for d in args.depths.split(",")):
        config = load_config(f"mnist-protocol-depth{depth}", widths=widths, seeds=args.seeds)
        for run in runs(config):
            tick = time.perf_counter()
            split = run_split(config, run, dataset)
            net = run_model(config, run, split)
            kernel = ntkspec.ntk(net, split.x_ntk).dense()
            sizes = (split.x_ntk.shape[1],) + (run.width,) * (depth - 1)  # (d_in, n_1, ..., n_{L-1})
            infinite = mlp_operator(split.x_ntk, sizes, split.num_classes).dense()
            row = {
                "depth": depth,
                "width": run.width,
                "seed": run.seed,
                "distance": float(kernel_distance(kernel, infinite).value),
                "misalignment": 1.0 - float(kernel_alignment(kernel, infinite).value),
                "seconds": time.perf_counter() - tick,
            }
            print(row, flush=True)
            rows.append(row)
        for quantity in ("distance", "misalignment"):
            mine = [r for r in rows if r["depth"] == depth]
            x, y, s = (np.array([r[k] for r in mine], float) for k in ("width", quantity, "seed"))
            fit = fit_power_law(x, y, s, rng=0)
            fits[f"{quantity}_depth{depth}"] = dataclasses.asdict(fit)
            # Above width 64 only: the asymptotic regime.
            fits[f"{quantity}_depth{depth}_from64"] = dataclasses.asdict(
                fit_power_law(x, y, s, rng=0, x_min=64)
            )
    result = {
        "benchmark": "kernel_distance",
        "configs": [f"mnist-protocol-depth{d}" for d in args.depths.split(",")],
        "n_ntk": 128,
        "seeds": args.seeds,
        "rows": rows,
        "fits": fits,
        "wall_seconds": time.perf_counter() - start,
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    _figure(result, args.out.with_suffix(".png"), pyplot(), save_figure, np)
    for name, fit in fits.items():
        print(f"{name}: exponent {fit['exponent']:.3f} [{fit['ci_low']:.3f}, {fit['ci_high']:.3f}]")
    print(args.out)


def _figure(result: dict, path: Path, plt, save_figure, np) -> None:
    """Distance and misalignment against width, per depth: seeds faint, means ± s.e., fits dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.8), sharex=True)
    labels = {
        "distance": r"$\|K_0 - K_\infty\|_F / \|K_\infty\|_F$",
        "misalignment": r"$1 - A(K_0, K_\infty)$",
    }
    for ax, (quantity, label) in zip(axes, labels.items(), strict=True):
        for color, depth in zip(("C0", "C1"), sorted({r["depth"] for r in result["rows"]}), strict=False):
            mine = [r for r in result["rows"] if r["depth"] == depth]
            x = np.array([r["width"] for r in mine], float)
            y = np.array([r[quantity] for r in mine], float)
            ax.plot(x, y, "o", color=color, alpha=0.25, ms=2.5, mew=0)
            groups = np.unique(x)
            means = np.array([y[x == g].mean() for g in groups])
            se = np.array([y[x == g].std(ddof=1) / np.sqrt((x == g).sum()) for g in groups])
            fit = result["fits"][f"{quantity}_depth{depth}_from64"]
            interval = f"[{fit['ci_low']:.2f}, {fit['ci_high']:.2f}]"
            text = f"L = {depth}: $\\propto n^{{{fit['exponent']:.2f}}}$ {interval}"
            ax.errorbar(groups, means, yerr=se, fmt="o", color=color, ms=3.5, capsize=2, label=text)
            xs = np.geomspace(fit["x_min"], fit["x_max"], 20)
            ax.plot(xs, fit["prefactor"] * xs ** fit["exponent"], "--", color=color, lw=1)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width n (hidden units per layer)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(f"MNIST, NTK batch of 128, at initialisation ({result['seeds']} seeds)", fontsize=9)
    save_figure(fig, path)


if __name__ == "__main__":
    main()

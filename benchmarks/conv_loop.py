"""A CNN's training epoch on the CPU: inside one compiled loop or one dispatch per epoch, and an
ensemble's networks vmapped or unrolled.

XLA:CPU runs a convolution inside a `while` loop body far slower than outside one
(jax-ml/jax#12868), so `train` dispatches a convolving network's epochs one by one on the CPU, its
minibatches unrolled (`train._epochs`); and it runs a vmapped convolution (a grouped one) several
times slower than the networks' convolutions side by side, so an ensemble's networks are unrolled
there (`ensemble.over_networks`). This times `train_ensemble` on the noise experiment's CNN
(`mnist4-noise` with `model = "cnn"`: MNIST digits 0-3, 2,000 training samples, SGD with momentum,
batches of 128) as the seconds per epoch between a 1-epoch and a (1 + `--epochs`)-epoch run, which
cancels compilation and evaluation: one network in the compiled loop and dispatched; the config's
3 seeds as one ensemble, vmapped and unrolled, both dispatched.

Usage: nice -n 10 python -m benchmarks.conv_loop [--data-dir DIR] [--epochs 2]
    [--out benchmarks/results/conv_loop.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results" / "conv_loop.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.conv_loop", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="folder with mnist/")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    import jax

    import ntkspec
    from benchmarks._harness import machine, write_json
    from ntkspec.experiments import ensemble
    from ntkspec.experiments import train as training
    from ntkspec.experiments.config import load_config, run_model, run_split, runs

    config = load_config("mnist4-noise", model="cnn", init="he_uniform", data_dir=str(args.data_dir))
    dataset = ntkspec.data.load("mnist", args.data_dir)
    seeds = runs(config)[: config.seeds]
    splits = [run_split(config, run, dataset) for run in seeds]
    optimizer = training.config_optimizer(config, config.lr)

    def seconds(count: int, epochs: int) -> float:
        tick = time.perf_counter()
        training.train_ensemble(
            [run_model(config, run, split) for run, split in zip(seeds[:count], splits, strict=False)],
            splits[:count],
            optimizer,
            [0, epochs],
            eval_every=epochs,
            batch_size=config.batch_size,
            orders=[run.order_key() for run in seeds[:count]],
        )
        return time.perf_counter() - tick

    def vmapped(fn, unrolled=False):
        return jax.vmap(fn)

    n = len(seeds)
    detect, mapping = ensemble.convolves_on_cpu, ensemble.over_networks
    variants = {  # name: (networks, what `train` uses in place of the detection and of the mapping)
        "compiled loop, 1 network": (1, lambda *a: False, mapping),
        "one dispatch per epoch, 1 network": (1, detect, mapping),
        f"one dispatch per epoch, {n} networks vmapped": (n, detect, vmapped),
        f"one dispatch per epoch, {n} networks unrolled": (n, detect, mapping),
    }
    rows = {}
    for name, (count, detection, mapped) in variants.items():
        training.convolves_on_cpu, training.over_networks = detection, mapped
        jax.clear_caches()  # the jitted epochs trace again with this mapping
        seconds(count, 1)  # compile
        rows[name] = (seconds(count, 1 + args.epochs) - seconds(count, 1)) / args.epochs
        print(name, f"{rows[name]:.2f} s per epoch", flush=True)
    training.convolves_on_cpu, training.over_networks = detect, mapping
    result = {
        "benchmark": "conv_loop",
        "config": "mnist4-noise, model = cnn",
        "seconds_per_epoch": rows,
        "loop_ratio": rows["compiled loop, 1 network"] / rows["one dispatch per epoch, 1 network"],
        "ensemble_ratio": rows[f"one dispatch per epoch, {n} networks vmapped"]
        / rows[f"one dispatch per epoch, {n} networks unrolled"],
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(f"loop ratio {result['loop_ratio']:.1f}, ensemble ratio {result['ensemble_ratio']:.1f}", args.out)


if __name__ == "__main__":
    main()

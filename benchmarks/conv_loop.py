"""A CNN's training epoch on the CPU: inside one compiled loop against one dispatch per epoch.

XLA:CPU runs a convolution inside a `while` loop body far slower than outside one
(jax-ml/jax#12868), so `train` dispatches a convolving network's epochs one by one on the CPU, its
minibatches unrolled (`train._epochs`). This times `train` both ways on the noise experiment's CNN
(`mnist4-noise` with `model = "cnn"`: MNIST digits 0-3, 2,000 training samples, SGD with momentum,
batches of 128) as the seconds per epoch between a 1-epoch and a (1 + `--epochs`)-epoch run, which
cancels compilation and evaluation. "compiled" forces the one-loop path.

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

    import ntkspec
    from benchmarks._harness import machine, write_json
    from ntkspec.experiments import train as training
    from ntkspec.experiments.config import load_config, run_model, run_split, runs

    config = load_config("mnist4-noise", model="cnn", init="he_uniform", data_dir=str(args.data_dir))
    run = runs(config)[0]
    split = run_split(config, run, ntkspec.data.load("mnist", args.data_dir))
    optimizer = training.config_optimizer(config, config.lr)

    def seconds(epochs: int) -> float:
        tick = time.perf_counter()
        training.train(
            run_model(config, run, split),
            split,
            optimizer,
            [0, epochs],
            eval_every=epochs,
            batch_size=config.batch_size,
            order=run.order_key(),
        )
        return time.perf_counter() - tick

    rows = {}
    detect = training._convolves_on_cpu
    for name, forced in (("one dispatch per epoch", None), ("compiled", lambda *a: False)):
        training._convolves_on_cpu = forced or detect
        seconds(1)  # compile
        rows[name] = (seconds(1 + args.epochs) - seconds(1)) / args.epochs
        print(name, f"{rows[name]:.2f} s per epoch", flush=True)
    training._convolves_on_cpu = detect
    result = {
        "benchmark": "conv_loop",
        "config": "mnist4-noise, model = cnn",
        "seconds_per_epoch": rows,
        "ratio": rows["compiled"] / rows["one dispatch per epoch"],
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(f"ratio {result['ratio']:.1f}", args.out)


if __name__ == "__main__":
    main()

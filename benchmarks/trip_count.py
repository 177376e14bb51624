"""The compiled training loop with one step count shared by an ensemble's networks, against a count
per network.

`train._compiled_epochs` maps one network's `fori_loop` over the ensemble with `jax.vmap`. With a
count per network (what `train_ensemble` needs once a network has stopped) the loop's condition is
batched, and every step ends with a select of each network's new or old state, parameters and Adam
moments included: one more pass over the whole state per step. While every network takes the same
steps, `train._epochs` passes one scalar count instead and the loop has no select. This times both
forms of the same call, full-batch Adam on the study's depth-3 MLP (784 -> w -> w -> 10, 100
samples of random inputs: the time does not depend on the values), as seconds per step over
`--steps` steps, each form compiled first, the two alternated `--repeats` times and the fastest kept
(the machine is shared: read the ratio). One network at every width, and `--networks` networks up
to `--ensemble-max-width` (their state must fit beside a running sweep).

Usage: nice -n 10 python -m benchmarks.trip_count [--widths 512 2048 8192] [--steps 10]
    [--repeats 3] [--networks 5] [--ensemble-max-width 2048] [--out benchmarks/results/trip_count.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "trip_count.json"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.trip_count", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--widths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--networks", type=int, default=5)
    parser.add_argument("--ensemble-max-width", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    import jax
    import numpy as np
    from flax import nnx

    from benchmarks._harness import machine, write_json
    from ntkspec import models
    from ntkspec.experiments import train as training

    optimizer = training.make_optimizer("adam", 1e-5)

    def timings(width: int, count: int) -> dict:
        nets = [
            models.build("mlp", (784,), 10, jax.random.key(s), width=width, depth=3) for s in range(count)
        ]
        graphdef, params = training._stack("models", [nnx.split(net) for net in nets])
        carry = (params, jax.vmap(optimizer.init)(params), np.ones(count, bool))
        x = np.asarray(jax.random.normal(jax.random.key(1), (count, 100, 784)), np.float32)
        y = np.tile(np.arange(100) % 10, (count, 1))
        data = (np.zeros(count, np.int64), jax.random.split(jax.random.key(0), count), x, y)
        statics = (graphdef, optimizer.update, None, False)
        forms = {"per network": np.full(count, args.steps), "shared": np.int64(args.steps)}

        def run(n_steps):
            return training._compiled_epochs(training._training_epoch, statics, carry, n_steps, *data)

        best = {}
        for n_steps in forms.values():
            jax.block_until_ready(run(n_steps))  # compile
        for _ in range(args.repeats):
            for name, n_steps in forms.items():
                tick = time.perf_counter()
                jax.block_until_ready(run(n_steps))
                best[name] = min(best.get(name, np.inf), (time.perf_counter() - tick) / args.steps)
        row = {"width": width, "networks": count, "seconds_per_step": best}
        row["speedup"] = best["per network"] / best["shared"]
        print(f"w = {width}, {count} network(s): {best}, shared {row['speedup']:.2f}x faster", flush=True)
        return row

    cases = [(w, 1) for w in args.widths]
    cases += [(w, args.networks) for w in args.widths if w <= args.ensemble_max_width and args.networks > 1]
    result = {
        "benchmark": "trip_count",
        "model": "MLP 784 -> w -> w -> 10, full-batch Adam, 100 samples",
        "steps": args.steps,
        "repeats": args.repeats,
        "rows": [timings(width, count) for width, count in cases],
        "machine": machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    print(args.out)


if __name__ == "__main__":
    main()

"""Checkpoints of a training in progress: where `train.train_ensemble` stood, as named host arrays.

An ensemble of the noise experiment's CNN trains for hours, longer than the machine may be held;
without a checkpoint a killed sweep would train it again from epoch 0. `train_ensemble` hands an
`EnsembleState` to its `checkpoint` callback every so often and goes on from one given as `resume`,
with the numbers of an uninterrupted run (an epoch is a pure function of the parameters, the
optimizer state and its number). The state is a flat mapping name -> NumPy array, so the store
(`store.write_checkpoint`) keeps it like any other arrays; pytrees go in with `tree_arrays` and come
back with `tree_from_arrays`, against a template of the same structure (e.g. the freshly initialised
networks).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ntkspec._errors import bad_value


@dataclasses.dataclass(frozen=True)
class EnsembleState:
    """Where `train.train_ensemble` stood after its evaluation at `epoch`.

    arrays : host arrays by name: "train/{i}", the leaves of the stacked (parameters, optimizer
        state) now and of those kept for the replay of the minimum; per network (axis 0)
        "best_loss", "best_epoch", "best_start", "active", "n_records", "stopped";
        "trajectory/{e}/{column}"; "measure/{e}/...", what network e's `Measure` keeps between
        records (`Measure.state`).
    messages : per network, why it diverged ("" while it has not).
    """

    epoch: int
    arrays: dict[str, np.ndarray]
    messages: tuple[str, ...]

    def under(self, prefix: str) -> dict[str, np.ndarray]:
        """The arrays named `prefix/...`, with the prefix taken off."""
        start = prefix + "/"
        return {name.removeprefix(start): a for name, a in self.arrays.items() if name.startswith(start)}


def tree_arrays(tree, prefix: str) -> dict[str, np.ndarray]:
    """The leaves of `tree` as host arrays named `prefix/0`, `prefix/1`, ... (flattening order)."""
    return {f"{prefix}/{i}": np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(tree))}


def tree_from_arrays(template, arrays: dict[str, np.ndarray], prefix: str):
    """The pytree of `template`'s structure whose leaves are `arrays[prefix/i]` (`tree_arrays`'s
    inverse), each checked against the template's leaf: a state of other networks is refused."""
    leaves, treedef = jax.tree.flatten(template)
    restored = []
    for i, leaf in enumerate(leaves):
        name = f"{prefix}/{i}"
        got = arrays.get(name)
        if got is None or got.shape != leaf.shape or got.dtype != leaf.dtype:
            shown = "no array" if got is None else f"shape {got.shape} {got.dtype}"
            raise bad_value(
                "resume",
                f"{name} with {shown}",
                f"shape {leaf.shape} {leaf.dtype}, as in the networks resumed",
                "A checkpoint resumes the same networks, data and optimizer only.",
            )
        restored.append(jnp.asarray(got))
    return jax.tree.unflatten(treedef, restored)

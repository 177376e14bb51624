"""The measurement of one recording epoch: operator -> spectra -> alignment -> `Record`.

At each recording epoch the NTK of the current network on the held-out NTK batch is built once
(`ntkspec.ntk`); when the spectrum is exact, K is formed once and serves the raw spectrum, the cosine
spectrum D^-1/2 K D^-1/2 and the alignment A(K₀, K) = ⟨K₀, K⟩_F / (‖K₀‖_F ‖K‖_F) with the first record's
kernel K₀ (the initialisation; 1 − A is how far the kernel has moved, Fort et al. 2020). Otherwise the
spectra are stochastic (`ntkspec.spectra`, diag K formed once) and A is matrix-free with
`ALIGNMENT_MATVECS` products per kernel and its standard error.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from ntkspec import data, models
from ntkspec._typing import Key
from ntkspec.estimators import DenseOperator, as_operator, kernel_alignment, kernel_alignment_stochastic
from ntkspec.experiments.config import SweepConfig, run_keys
from ntkspec.experiments.records import Record
from ntkspec.operator import ntk
from ntkspec.spectrum import Spectrum, choose_method, spectra

#: Matvecs per kernel of the matrix-free alignment with K₀ (about 0.1-1 % error on NTKs; see
#: tests/test_estimators_alignment.py).
ALIGNMENT_MATVECS = 100

# One compiled program per operator structure (the operators are pytree arguments): faster than
# eager dispatch, and on a mesh its collectives run inside one program.
_alignment_stochastic = jax.jit(kernel_alignment_stochastic, static_argnames=("num_matvecs", "n", "dtype"))


def _pad(values: np.ndarray, k: int) -> np.ndarray:
    out = np.full(k, np.nan)
    values = np.asarray(values, dtype=np.float64)[:k]
    out[: values.size] = values
    return out


class Measure:
    """Measures the NTK of a network at each recording epoch of one run; call it once per record.

    Parameters
    ----------
    x_ntk : the NTK batch (held out from training).
    key : PRNG key of the stochastic estimators, folded with the epoch at each record.
    top_k : top eigenvalues kept per record.
    method : spectrum method ("auto", "exact" or "stochastic"), as for `ntkspec.spectra`.
    mesh : a ("data", "model") mesh for the operator (see `ntkspec.ntk`).

    The first call's kernel is kept as K₀ for the alignment of every later record.
    """

    def __init__(self, x_ntk, key: Key, *, top_k: int = 10, method: str = "auto", mesh: Mesh | None = None):
        self.x_ntk = jnp.asarray(x_ntk)
        self.key = key
        self.top_k = top_k
        self.method = method
        self.mesh = mesh
        self.first = None

    def operator(self, model: nnx.Module):
        """The NTK of `model` on the NTK batch, as a dense operator when the spectrum will be exact."""
        op = ntk(model, self.x_ntk, mesh=self.mesh)
        return as_operator(op.dense()) if choose_method(op, self.method) == "exact" else op

    def spectra(self, op, epoch: int) -> tuple[Spectrum, Spectrum]:
        """Spectra of K and of its cosine kernel, with this record's probe key."""
        return spectra(op, method=self.method, key=jax.random.fold_in(self.key, epoch), top_k=self.top_k)

    def __call__(self, model: nnx.Module, epoch: int, metrics: dict[str, float]) -> Record:
        """The `Record` of `model` at `epoch`, given its losses and accuracies (`records.METRIC_FIELDS`)."""
        start = time.perf_counter()
        op = self.operator(model)
        raw, cosine = self.spectra(op, epoch)
        self.first = op if self.first is None else self.first
        alignment = self._alignment(op, jax.random.fold_in(jax.random.fold_in(self.key, epoch), 1))
        return Record(
            epoch=epoch,
            **metrics,
            trace=raw.trace,
            trace_stderr=raw.trace_stderr,
            entropy=raw.entropy,
            entropy_stderr=raw.entropy_stderr,
            effective_rank=raw.effective_rank,
            effective_rank_stderr=raw.effective_rank_stderr,
            cosine_entropy=cosine.entropy,
            cosine_entropy_stderr=cosine.entropy_stderr,
            cosine_effective_rank=cosine.effective_rank,
            cosine_effective_rank_stderr=cosine.effective_rank_stderr,
            top_eigenvalues=_pad(raw.eigenvalues, self.top_k),
            cosine_top_eigenvalues=_pad(cosine.eigenvalues, self.top_k),
            init_alignment=alignment[0],
            init_alignment_stderr=alignment[1],
            method=raw.method,
            spectrum_seconds=time.perf_counter() - start,
        )

    def _alignment(self, op, key: Key) -> tuple[float, float]:
        """A(K₀, K) and its standard error: exact between dense kernels, else matrix-free."""
        if isinstance(self.first, DenseOperator) and isinstance(op, DenseOperator):
            result = kernel_alignment(self.first.dense(), op.dense())
        else:
            result = _alignment_stochastic(self.first, op, key, num_matvecs=ALIGNMENT_MATVECS)
        return float(result.value), float(result.stderr)


def init_spectrum(config: SweepConfig, width: int, seed: int = 0, mesh: Mesh | None = None):
    """Spectra (raw, cosine) of the NTK at initialisation of one model of `config`'s kind.

    The same draw as the sweep's run with this seed and width: same NTK batch, same initialisation,
    same probes as its first record. Only the NTK batch is drawn (no training or test set is needed).
    """
    k_data, k_model, k_spectrum = run_keys(seed)
    split = data.split(
        data.load(config.dataset, config.data_dir),
        1,
        config.n_ntk,
        k_data,
        n_test=1,
        flatten=config.model == "mlp",
        dtype=np.dtype(config.dtype),
    )
    net = models.build(
        config.model,
        split.x_ntk.shape[1:],
        split.num_classes,
        k_model,
        width=width,
        depth=config.depth,
        param_dtype=jnp.dtype(config.dtype),
    )
    measure = Measure(split.x_ntk, k_spectrum, top_k=config.top_k, method=config.method, mesh=mesh)
    return measure.spectra(measure.operator(net), 0)

"""The measurement of one recording epoch: operator -> spectra -> alignments -> `Record`.

At each recording epoch the NTK of the current network on the held-out NTK batch is built once
(`ntkspec.ntk`); when the spectrum is exact, K is formed once and serves the raw spectrum, the cosine
spectrum D^-1/2 K D^-1/2, the alignment A(K₀, K) = ⟨K₀, K⟩_F / (‖K₀‖_F ‖K‖_F) with the first record's
kernel K₀ (the initialisation; 1 − A is how far the kernel has moved, Fort et al. 2020), the label
alignment A(K, yyᵀ) (Cristianini et al. 2001; the reference study's eq. 16) and the top-r eigenvectors
whose rotation between consecutive records is the study's eq. 17. Otherwise the spectra are
stochastic (`ntkspec.spectra`, diag K formed once), the alignments matrix-free with
`ALIGNMENT_MATVECS` products per kernel and their standard errors, and the eigenvectors the Ritz
vectors of thick-restarted block Lanczos (`ntkspec.estimators.top_eigenpairs`).

How the kernel moves (`records.Record` defines the fields): the kernel velocity 1 − A(K_prev, K)
with the previous record's kernel, kept like K₀ (dense or as the operator of that network); for an
MLP, the distance ‖K − K∞‖_F / ‖K∞‖_F and alignment A(K, K∞) with K∞ ⊗ I_C of its widths
(`ntkspec.infinite`), formed once per run on the NTK batch (matrix-free `mlp_operator` when K is;
both then from one pass of `kernel_comparison_stochastic`); and the test error of kernel regression
with K_t on the training set (Cholesky of the dense K(X, X), `ntkspec.regression.fit`), predicting
the NTK batch through one product with the cross kernel K(x_ntk, X) (`cross_kernel`), which is
never formed. On the study's MLPs (100 training samples, C = 10) the regression adds about 1.5 s to
a record at width 4096 on 2 CPU cores (the record itself takes 4-16 s; benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from flax import nnx
from jax.sharding import Mesh

from ntkspec import data, models
from ntkspec._typing import Key
from ntkspec.estimators import (
    DenseOperator,
    as_operator,
    kernel_alignment,
    kernel_comparison_stochastic,
    kernel_distance,
    kernel_target_alignment,
    kernel_target_alignment_stochastic,
    one_hot_targets,
    principal_angles,
    subspace_rank,
    top_eigenpairs,
)
from ntkspec.estimators._common import compiled
from ntkspec.experiments.checkpoint import tree_arrays, tree_from_arrays
from ntkspec.experiments.config import SweepConfig, run_keys
from ntkspec.experiments.ensemble import over_networks
from ntkspec.experiments.records import Record
from ntkspec.infinite import mlp_operator
from ntkspec.operator import ntk
from ntkspec.precision import full_precision
from ntkspec.regression import cross_kernel, fit
from ntkspec.spectrum import Spectrum, choose_method, spectra

#: Matvecs per kernel of the matrix-free alignment with K₀ (about 0.1-1 % error on NTKs; see
#: tests/test_estimators_alignment.py).
ALIGNMENT_MATVECS = 100
#: Least matvecs for the stochastic top-r eigenvectors of the rotation (4 k when larger, k ≥ r the
#: power of two the eigenpairs are computed for).
EIGENVECTOR_MATVECS = 400
#: Columns per block Lanczos step of those eigenvectors (≥ C: an NTK's top eigenvalues come in
#: multiplets of about C; 10 for the 10 classes of MNIST and digits).
EIGENVECTOR_BLOCK = 10
#: Ridge of the kernel regression relative to the mean diagonal: λ = RIDGE · tr K(X, X) / n (scale-
#: free across widths, and keeps the Cholesky factorisation well posed in float32).
RIDGE = 1e-4
_NAN2 = (float("nan"), float("nan"))

# One compiled program per operator structure (the operators are pytree arguments): faster than
# eager dispatch, and on a mesh its collectives run inside one program. The top eigenpairs loop over
# products, stepped from Python for an operator that asks for it (`compiled`).
_comparison_stochastic = jax.jit(kernel_comparison_stochastic, static_argnames=("num_matvecs", "n", "dtype"))
_label_alignment_stochastic = jax.jit(
    kernel_target_alignment_stochastic, static_argnames=("num_matvecs", "n", "dtype")
)
_top_eigenpairs = compiled(top_eigenpairs, static_argnames=("k", "block_size", "budget", "max_basis", "tol"))


def _pad(values: np.ndarray, k: int) -> np.ndarray:
    out = np.full(k, np.nan)
    values = np.asarray(values, dtype=np.float64)[:k]
    out[: values.size] = values
    return out


class Measure:
    """Measures the NTK of a network at each recording epoch of one run; call it once per record.

    Parameters
    ----------
    split : the run's samples: the NTK batch (`x_ntk`, held out from training), its labels, the
        number of classes C, and the training set (for the kernel regression).
    key : PRNG key of the stochastic estimators, folded with the epoch at each record.
    top_k : top eigenvalues kept per record.
    method : spectrum method ("auto", "exact" or "stochastic"), as for `ntkspec.spectra`.
    mesh : a ("data", "model") mesh for the operator (see `ntkspec.ntk`).

    The first call's kernel is kept as K₀ for the alignment of every later record (and K∞ is formed
    then), and each call's kernel and top eigenvectors for the velocity and the rotation at the next
    one. A call with `consecutive=False` (the measurement at the minimum test loss, between two
    records) uses them without replacing them. `state` and `restore` carry what it keeps across a
    checkpoint (`ntkspec.experiments.checkpoint`).
    """

    def __init__(
        self, split: data.Split, key: Key, *, top_k: int = 10, method: str = "auto", mesh: Mesh | None = None
    ):
        # Host arrays: placed on whatever mesh the operator computes on, when it does.
        self.x_ntk = np.asarray(split.x_ntk)
        self.labels = np.asarray(split.y_ntk)
        self.num_classes = split.num_classes
        self.targets = np.asarray(one_hot_targets(self.labels, split.num_classes))
        self.x_train = np.asarray(split.x_train)
        self.train_targets = np.asarray(one_hot_targets(np.asarray(split.y_train), split.num_classes))
        self.key_data = np.asarray(jax.random.key_data(key))
        self.top_k = top_k
        self.method = method
        self.mesh = mesh
        self.first = None
        self.infinite = None  # K∞ ⊗ I_C on the NTK batch, for an MLP (formed at the first call)
        self.previous = None  # kernel of the last consecutive record
        self.vectors = None  # its top eigenvectors

    def state(self) -> dict[str, np.ndarray]:
        """What the measure keeps between records, as host arrays: the leaves of K₀'s operator
        ("first/i") and of the last record's ("previous/i"), and that record's top eigenvectors
        ("vectors"). Empty before the first record."""
        arrays = {} if self.first is None else tree_arrays(self.first, "first")
        if self.previous is not None:
            arrays |= {**tree_arrays(self.previous, "previous"), "vectors": np.asarray(self.vectors)}
        return arrays

    def restore(self, model: nnx.Module, arrays: dict[str, np.ndarray]) -> None:
        """Take back what `state` gave, `model` any network of the run's architecture (the template
        of the operators' structure, and the widths of K∞)."""
        if not arrays:
            self.first = self.infinite = self.previous = self.vectors = None
            return
        template = self.operator(model)
        self.first = tree_from_arrays(template, arrays, "first")
        self.infinite = self._infinite(model, self.first)
        self.previous = self.vectors = None
        if "vectors" in arrays:
            self.previous = tree_from_arrays(template, arrays, "previous")
            self.vectors = arrays["vectors"]

    def operator(self, model: nnx.Module):
        """The NTK of `model` on the NTK batch, as a dense operator when the spectrum will be exact."""
        op = ntk(model, self.x_ntk, mesh=self.mesh)
        return as_operator(op.dense()) if choose_method(op, self.method) == "exact" else op

    def spectra(self, op, epoch: int) -> tuple[Spectrum, Spectrum]:
        """Spectra of K and of its cosine kernel, with this record's probe key."""
        return spectra(op, method=self.method, key=self._key(epoch), top_k=self.top_k)

    def _key(self, epoch: int) -> Key:
        """The probe key of the record at `epoch` (made where it is used: on the current mesh)."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.key_data), epoch)

    @full_precision
    def __call__(
        self, model: nnx.Module, epoch: int, metrics: dict[str, float], *, consecutive: bool = True
    ) -> Record:
        """The `Record` of `model` at `epoch`, given its losses and accuracies (`records.METRIC_FIELDS`)."""
        start = time.perf_counter()
        op = self.operator(model)
        raw, cosine = self.spectra(op, epoch)
        if self.first is None:
            self.first, self.infinite = op, self._infinite(model, op)
        key = self._key(epoch)
        alignment, _ = self._compare(self.first, op, jax.random.fold_in(key, 1))
        label = self._label_alignment(op, jax.random.fold_in(key, 2))
        velocity = _NAN2
        if self.previous is not None:
            velocity = self._compare(self.previous, op, jax.random.fold_in(key, 4))[0]
        infinite = (_NAN2, _NAN2)
        if self.infinite is not None:
            infinite = self._compare(op, self.infinite, jax.random.fold_in(key, 5))
        test_error, test_mse = self._regression(model)
        # Eq. 17: the previous record's top-r subspace against this one's of (about) its dimension,
        # each r moved past any multiplet it cuts (`subspace_rank`).
        previous = self.vectors
        wanted = [max(1, round(raw.effective_rank))] + ([] if previous is None else [previous.shape[1]])
        ranks, vectors = self._eigenvectors(op, wanted, jax.random.fold_in(key, 3))
        rotation = np.nan
        if previous is not None:
            rotation = 1.0 - float(principal_angles(previous, vectors[:, : ranks[1]]).overlap)
        if consecutive:
            self.previous, self.vectors = op, vectors[:, : ranks[0]]
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
            label_alignment=label[0],
            label_alignment_stderr=label[1],
            eigenvector_rotation=rotation,
            kernel_velocity=1.0 - velocity[0],
            kernel_velocity_stderr=velocity[1],
            infinite_distance=infinite[1][0],
            infinite_distance_stderr=infinite[1][1],
            infinite_alignment=infinite[0][0],
            infinite_alignment_stderr=infinite[0][1],
            regression_error=test_error,
            regression_mse=test_mse,
            method=raw.method,
            spectrum_seconds=time.perf_counter() - start,
        )

    def _compare(self, op1, op2, key: Key) -> tuple[tuple[float, float], tuple[float, float]]:
        """(A(K₁, K₂), its standard error) and (‖K₁ − K₂‖_F / ‖K₂‖_F, its standard error): exact
        between dense kernels, else from one matrix-free pass."""
        if isinstance(op1, DenseOperator) and isinstance(op2, DenseOperator):
            results = kernel_alignment(op1.dense(), op2.dense()), kernel_distance(op1.dense(), op2.dense())
        else:
            results = _comparison_stochastic(op1, op2, key, num_matvecs=ALIGNMENT_MATVECS)
        return tuple((float(r.value), float(r.stderr)) for r in results)

    def _infinite(self, model: nnx.Module, op):
        """K∞ ⊗ I_C of an MLP's widths on the NTK batch, dense if `op` is; None for other models and
        initialisers (K∞ is the LeCun-normal MLP's)."""
        if not isinstance(model, models.MLP) or model.init != "lecun_normal":
            return None
        infinite = mlp_operator(jnp.asarray(self.x_ntk, op.dtype), model.widths, self.num_classes)
        return as_operator(infinite.dense()) if isinstance(op, DenseOperator) else infinite

    def _regression(self, model: nnx.Module) -> tuple[float, float]:
        """Test error and MSE on the NTK batch of kernel regression with this K on the training set.

        NaN where K(X, X) is too large to form (`choose_method` would not form it) or its Cholesky
        factorisation fails in this precision.
        """
        train = ntk(model, self.x_train, mesh=self.mesh)
        if choose_method(train) != "exact":
            return _NAN2
        kernel = train.dense()
        ridge = RIDGE * float(jnp.trace(kernel)) / kernel.shape[0]
        try:
            fitted = fit(kernel, self.train_targets, ridge=ridge)
        except ValueError:
            return _NAN2
        predicted = np.asarray(fitted.predict(cross_kernel(train, self.x_ntk)), np.float64)
        predicted = predicted.reshape(-1, self.num_classes)
        error = np.mean(np.argmax(predicted, axis=1) != self.labels)
        mse = np.mean(np.sum((predicted - self.targets.reshape(predicted.shape)) ** 2, axis=1))
        return float(error), float(mse)

    def _label_alignment(self, op, key: Key) -> tuple[float, float]:
        """A(K, yyᵀ) and its standard error: exact for a dense kernel, else matrix-free."""
        if isinstance(op, DenseOperator):
            result = kernel_target_alignment(op.dense(), self.targets)
        else:
            result = _label_alignment_stochastic(op, self.targets, key, num_matvecs=ALIGNMENT_MATVECS)
        return float(result.value), float(result.stderr)

    def _eigenvectors(self, op, ranks: list[int], key: Key) -> tuple[list[int], np.ndarray]:
        """`subspace_rank` of each of `ranks` in K's spectrum, and K's top eigenvectors (n, m),
        descending, m at least the largest of those: `eigh` of the dense kernel, else Ritz vectors.
        C (the number of classes) more than the largest rank are computed, and twice as many while a
        multiplet reaches the last one."""
        n, b = op.shape[0], EIGENVECTOR_BLOCK
        m = min(n, max(ranks) + self.num_classes)
        kernel = None  # K in float64, formed once where `eigh` is used
        while True:
            # Ritz pairs for k = m rounded up to a power of two: one compiled program serves the
            # ranks of a whole run (r moves from record to record), not one per rank. A k too
            # close to n for a Krylov basis of k + 2 blocks means a small kernel: `eigh` it.
            k = 1 << (m - 1).bit_length()
            if isinstance(op, DenseOperator) or k + 3 * b > n:
                if kernel is None:
                    kernel = np.asarray(op.dense(), dtype=np.float64)
                values, vectors = scipy.linalg.eigh(kernel, subset_by_index=[n - m, n - 1], driver="evr")
                values, vectors = values[::-1], vectors[:, ::-1]
            else:
                budget = max(EIGENVECTOR_MATVECS, 4 * k)
                pairs = _top_eigenpairs(op, key, k=k, block_size=b, budget=budget)
                values, vectors = np.asarray(pairs.values), np.asarray(pairs.vectors)
            found = [subspace_rank(values, r) for r in ranks]
            if max(found) < values.size or values.size == n:
                return found, vectors
            m = min(n, 2 * values.size)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("mesh", "unrolled"))
def ntk_traces(graphdef, params, x_ntk, *, mesh: Mesh | None = None, unrolled: bool = False) -> jax.Array:
    """tr K of each network of an ensemble (`nnx.split` parameters stacked on axis 0) on its own NTK
    batch (`x_ntk` stacked likewise), from the exact diagonal (per-layer norms where structured),
    summed in float64 where x64 is on; one program over the ensemble (`ensemble.over_networks`)."""

    def one(params, x):
        diagonal = ntk(nnx.merge(graphdef, params), x, mesh=mesh).diagonal()
        return jnp.sum(diagonal.astype(jax.dtypes.canonicalize_dtype(jnp.float64)))

    return over_networks(one, unrolled)(params, x_ntk)


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
    measure = Measure(split, k_spectrum, top_k=config.top_k, method=config.method, mesh=mesh)
    return measure.spectra(measure.operator(net), 0)

"""What a sweep records: the per-record schema, the per-run attributes, and the table of sweep kinds.

Every other module of the experiment layer takes these names from here, so a field or a kind is
defined once. A *record* is what is measured at one recording epoch of one run; a *run* is one
training run (one swept value and one seed); a *sweep* is all runs of one config.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ntkspec._errors import bad_value


@dataclasses.dataclass(frozen=True)
class Record:
    """What is measured at one recording epoch (host values).

    `top_eigenvalues` has exactly `top_k` entries, NaN-padded when the kernel has fewer eigenvalues.
    `method` is the spectrum method used for the raw kernel ("exact" or "stochastic").
    `init_alignment` is A(K₀, K) = ⟨K₀, K⟩_F / (‖K₀‖_F ‖K‖_F) with the run's first record's kernel.
    `label_alignment` is A(K, yyᵀ) = yᵀKy / (‖K‖_F ‖y‖²) with the one-hot labels y of the NTK batch
    (sample-major; the reference study's eq. 16). `eigenvector_rotation` is 1 − ‖U_rᵀ U'_r‖_F² / r, the
    misalignment of the top-r eigenvectors U'_r of K with those U_r of the record before (r = the
    effective rank there, rounded; the study's eq. 17): 0 for the same subspace, 1 for orthogonal
    ones, NaN at the first record. Each r that cuts a multiplet of equal eigenvalues (to 1e-6 of the
    largest) is moved to the multiplet's end (`ntkspec.estimators.subspace_rank`), so that the
    subspace is unique; the norm is then divided by the smaller r.

    How the kernel moves (Fort et al. 2020; Vyas, Bansal & Nakkiran 2022): `kernel_velocity` is
    1 − A(K_prev, K) with the kernel K_prev of the record before (NaN at the first record; for the
    record at the minimum test loss, measured after training, K_prev is the run's last record, as for
    the rotation). `infinite_distance` is ‖K − K∞‖_F / ‖K∞‖_F and `infinite_alignment` A(K, K∞), with
    K∞ ⊗ I_C the width-aware infinite-width NTK of the run's MLP on the NTK batch
    (`ntkspec.infinite.mlp_ntk`; NaN for other models). `regression_error` and `regression_mse`
    are the classification error and the mean squared error Σ_c (f_c − y_c)² per sample, on the NTK
    batch, of kernel regression with K on the training set: f = K(x, X)(K(X, X) + λI)⁻¹ y with the
    one-hot (uncentred) training labels y and λ = 10⁻⁴ tr K(X, X) / (N C) (NaN where K(X, X) is too
    large to form). Every `*_stderr` is 0 where the value is exact (dense K), else the matrix-free
    estimate's standard error.
    """

    epoch: int
    train_loss: float
    test_loss: float
    train_accuracy: float
    test_accuracy: float
    trace: float
    trace_stderr: float
    entropy: float
    entropy_stderr: float
    effective_rank: float
    effective_rank_stderr: float
    cosine_entropy: float
    cosine_entropy_stderr: float
    cosine_effective_rank: float
    cosine_effective_rank_stderr: float
    top_eigenvalues: np.ndarray
    cosine_top_eigenvalues: np.ndarray
    init_alignment: float
    init_alignment_stderr: float
    label_alignment: float
    label_alignment_stderr: float
    eigenvector_rotation: float
    kernel_velocity: float
    kernel_velocity_stderr: float
    infinite_distance: float
    infinite_distance_stderr: float
    infinite_alignment: float
    infinite_alignment_stderr: float
    regression_error: float
    regression_mse: float
    method: str
    spectrum_seconds: float


#: Record fields stored as one float64 value per record.
SCALAR_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(Record)
    if f.name not in ("epoch", "method", "top_eigenvalues", "cosine_top_eigenvalues")
)
#: Record fields stored as `top_k` float64 values per record.
VECTOR_FIELDS = ("top_eigenvalues", "cosine_top_eigenvalues")
#: Record fields whose values come from the training loop rather than the kernel.
METRIC_FIELDS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")

#: Run statuses. A sweep skips finished runs; "running" (killed) and "failed" runs are redone.
#: "uncalibrated": no learning rate of the pilots put the minimum test loss in the window.
STATUSES = ("running", "complete", "diverged", "failed", "uncalibrated")
FINISHED = ("complete", "diverged", "uncalibrated")
#: Per-run attributes (besides status, message, n_records), from the config and the run.
RUN_FIELDS = (
    "kind",
    "width",
    "depth",
    "model",
    "seed",
    "dataset",
    "classes",
    "n_train",
    "n_ntk",
    "noise_fraction",
    "lr",
)


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of sweep: what it varies and how that is named, labelled and scaled.

    field : the config field holding the swept values.
    attribute : the run attribute (and analysis column) holding a run's value.
    dim : the dimension name of the swept values in `open_sweep`'s dataset.
    prefix : run names are `{prefix}{label}_s{seed}`.
    symbol, label : for figure and table labels.
    log : whether the values are positive and scale (log axes, power-law fits).
    """

    name: str
    field: str
    attribute: str
    dim: str
    prefix: str
    symbol: str
    label: str
    log: bool

    def run_name(self, value: float, seed: int) -> str:
        """`w64_s0`, `n1000_s3`, `p25_s1` (a noise fraction in percent)."""
        shown = f"{round(100 * value):g}" if self.name == "noise" else f"{int(value)}"
        return f"{self.prefix}{shown}_s{seed}"


KINDS: dict[str, Kind] = {
    "width": Kind("width", "widths", "width", "width", "w", "w", "width (hidden units per layer)", True),
    "data_size": Kind("data_size", "data_sizes", "n_train", "data_size", "n", "n", "training samples", True),
    "noise": Kind(
        "noise", "noise_fractions", "noise_fraction", "noise_fraction", "p", "p", "noisy-copy fraction", False
    ),
}


def kind(name: object) -> Kind:
    """The `Kind` called `name`, or an error naming the kinds there are."""
    if name not in KINDS:
        raise bad_value("kind", repr(name), f"one of {tuple(KINDS)}")
    return KINDS[str(name)]


#: Kernels a data-size sweep can fit kernel regression with beside its network (config `kernels`;
#: `against_kernels`): the eNTK at initialisation, of the network trained on k samples, of the trained
#: network, and the infinite-width NTK and NNGP of the MLP.
KERNELS = ("init", "pretrained", "final", "ntk_infinite", "nngp")

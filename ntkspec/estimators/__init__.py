"""Matrix-free spectral estimators: pure functions of a kernel operator (or array, or block matvec)
and an explicit PRNG key, each returning a NamedTuple with the value, a standard error and
diagnostics."""

from ntkspec.estimators._common import entropy_from_eigenvalues, entropy_from_traces, xlogx
from ntkspec.estimators.alignment import (
    AlignmentEstimate,
    DistanceEstimate,
    FrobeniusEstimate,
    Rotation,
    eigenvector_rotation,
    frobenius_norm_squared,
    kernel_alignment,
    kernel_alignment_stochastic,
    kernel_comparison_stochastic,
    kernel_distance,
    kernel_target_alignment,
    kernel_target_alignment_stochastic,
    one_hot_targets,
    principal_angles,
    subspace_rank,
)
from ntkspec.estimators.dense import DenseOperator, as_operator
from ntkspec.estimators.eigs import Eigenpairs, ritz_pairs, top_eigenpairs
from ntkspec.estimators.lanczos import LanczosDecomposition, block_lanczos
from ntkspec.estimators.quadrature import (
    KrylovSpectrum,
    QuadratureEstimate,
    krylov_spectrum,
    slq,
)
from ntkspec.estimators.trace import (
    LOO_STDERR_WIDENING,
    TraceEstimate,
    hutchinson,
    hutchpp,
    xnystrace,
    xtrace,
)

__all__ = [
    "LOO_STDERR_WIDENING",
    "AlignmentEstimate",
    "DenseOperator",
    "DistanceEstimate",
    "Eigenpairs",
    "FrobeniusEstimate",
    "KrylovSpectrum",
    "LanczosDecomposition",
    "QuadratureEstimate",
    "Rotation",
    "TraceEstimate",
    "as_operator",
    "block_lanczos",
    "eigenvector_rotation",
    "entropy_from_eigenvalues",
    "entropy_from_traces",
    "frobenius_norm_squared",
    "hutchinson",
    "hutchpp",
    "kernel_alignment",
    "kernel_alignment_stochastic",
    "kernel_comparison_stochastic",
    "kernel_distance",
    "kernel_target_alignment",
    "kernel_target_alignment_stochastic",
    "krylov_spectrum",
    "one_hot_targets",
    "principal_angles",
    "ritz_pairs",
    "slq",
    "subspace_rank",
    "top_eigenpairs",
    "xlogx",
    "xnystrace",
    "xtrace",
]

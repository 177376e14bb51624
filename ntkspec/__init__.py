"""ntkspec: spectra of the empirical neural tangent kernel of real networks, at any width."""

from ntkspec import estimators as estimators
from ntkspec import infinite as infinite
from ntkspec import memory as memory
from ntkspec import regression as regression
from ntkspec import sharding as sharding
from ntkspec.estimators import as_operator as as_operator
from ntkspec.estimators import eigenvector_rotation as eigenvector_rotation
from ntkspec.estimators import kernel_target_alignment as kernel_target_alignment
from ntkspec.estimators import krylov_spectrum as krylov_spectrum
from ntkspec.estimators import one_hot_targets as one_hot_targets
from ntkspec.estimators import principal_angles as principal_angles
from ntkspec.estimators import top_eigenpairs as top_eigenpairs
from ntkspec.experiments import open_sweep as open_sweep
from ntkspec.operator import NTKOperator as NTKOperator
from ntkspec.operator import ntk as ntk
from ntkspec.regression import cross_kernel as cross_kernel
from ntkspec.regression import pseudo_ntk as pseudo_ntk
from ntkspec.spectrum import Spectrum as Spectrum
from ntkspec.spectrum import spectra as spectra
from ntkspec.spectrum import spectrum as spectrum

__version__ = "0.1.0"

"""ntkspec: spectra of the empirical neural tangent kernel of real networks, at any width."""

from ntkspec.operator import NTKOperator as NTKOperator
from ntkspec.operator import ntk as ntk
from ntkspec.spectrum import Spectrum as Spectrum
from ntkspec.spectrum import spectrum as spectrum

__version__ = "0.1.0"

"""ntkspec: spectra of the empirical neural tangent kernel of real networks, at any width."""

__version__ = "0.1.0"

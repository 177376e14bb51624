"""spectrum(): auto picks exact or stochastic and says why; stochastic matches exact references."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ntkspec._testing import power_law, reference
from ntkspec.estimators import as_operator
from ntkspec.spectrum import Spectrum, spectrum


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _DiagonalOperator:
    """Test double: a diagonal kernel of huge declared size whose dense form must never be built."""

    values: jax.Array

    @property
    def shape(self):
        return (self.values.shape[0],) * 2

    @property
    def dtype(self):
        return self.values.dtype

    def matvec(self, v):
        return self.values[:, None] * v if v.ndim == 2 else self.values * v

    def diagonal(self):
        return self.values

    def dense(self):
        raise MemoryError("a dense kernel of this size must not be formed")


@pytest.mark.parametrize(
    "label, dtype",
    [(a, jnp.float32) for a in ("alpha=0.5", "alpha=1", "alpha=2", "ntk", "cosine")] + [("ntk", jnp.float64)],
)
def test_stochastic_matches_exact_at_default_budget(label, dtype):
    kernel, exact = reference(label)
    op = as_operator(jnp.asarray(kernel, dtype))
    result = spectrum(op, "stochastic", key=jax.random.key(2), top_k=5)
    assert result.method == "stochastic" and result.matvecs <= 400
    assert abs(result.trace / exact["trace"] - 1) < 5e-3
    assert abs(result.effective_rank / exact["erank"] - 1) < 1e-2
    np.testing.assert_allclose(result.eigenvalues, exact["eigenvalues"][:5], rtol=1e-4)
    assert np.all(result.eigenvalue_residuals <= 1e-4 * exact["eigenvalues"][0])
    assert abs(result.trace_check - result.trace) <= 4 * result.trace_check_stderr
    assert result.entropy_stderr > 0 and result.entropy_bias_bound >= 0


def test_auto_picks_exact_for_1280_rows():
    g = jax.random.normal(jax.random.key(1), (1280, 300), jnp.float32)
    result = spectrum(as_operator(g @ g.T / 300))
    assert result.method == "exact" and result.size == 1280
    assert result.reason.startswith("auto chose exact")
    assert len(result.eigenvalues) == 1280 and result.matvecs == 0


def test_auto_picks_stochastic_when_memory_is_short_and_needs_a_key():
    kernel = jnp.asarray(power_law(1.0, 300)[0])
    with pytest.raises(ValueError, match="key"):
        spectrum(kernel, memory_budget=1e5)
    result = spectrum(kernel, key=jax.random.key(0), memory_budget=1e5, budget=200)
    assert result.method == "stochastic" and "does not fit in memory" in result.reason
    assert isinstance(result, Spectrum)


def test_auto_never_forms_a_huge_kernel():
    n = 40_000
    lam = jnp.arange(1, n + 1, dtype=jnp.float32) ** -1.0
    op = _DiagonalOperator(jax.random.permutation(jax.random.key(3), lam))
    result = spectrum(op, key=jax.random.key(4), budget=200, top_k=3)
    assert result.method == "stochastic" and "does not fit in memory" in result.reason
    p = np.asarray(lam, np.float64) / np.sum(np.asarray(lam, np.float64))
    entropy = -np.sum(p * np.log(p))
    # 200 matvecs are few for n = 40 000: the reported SE and quadrature bias bound must say so.
    assert abs(result.entropy - entropy) <= 2 * result.entropy_stderr + result.entropy_bias_bound
    np.testing.assert_allclose(result.eigenvalues, [1.0, 0.5, 1 / 3], rtol=1e-4)


def test_exact_method_and_bad_arguments():
    kernel, lam = power_law(1.0, 200)
    result = spectrum(kernel, "exact")
    np.testing.assert_allclose(result.eigenvalues, lam, rtol=1e-10)
    assert result.reason == "method='exact' was asked for"
    with pytest.raises(ValueError, match="method"):
        spectrum(kernel, "fast")
    with pytest.raises(ValueError, match="budget"):
        spectrum(kernel, "stochastic", key=jax.random.key(0), budget=0)


def test_spectra_share_one_kernel_and_match_spectrum():
    from flax import nnx
    from reference_models import NNX_MODELS, inputs

    import ntkspec

    op = ntkspec.ntk(
        NNX_MODELS["relu_mlp"](nnx.Rngs(0), dtype=jnp.float64), inputs("relu_mlp", 0, 6, jnp.float64)
    )
    raw, cosine = ntkspec.spectra(op, method="exact")
    for got, want in (
        (raw, ntkspec.spectrum(op, "exact")),
        (cosine, ntkspec.spectrum(op.normalized(), "exact")),
    ):
        assert got.trace == pytest.approx(want.trace, rel=1e-10)
        assert got.entropy == pytest.approx(want.entropy, rel=1e-10)
        np.testing.assert_allclose(got.eigenvalues, want.eigenvalues, rtol=1e-8, atol=1e-12)
    assert cosine.trace == pytest.approx(op.shape[0], rel=1e-10)


def test_stochastic_spectra_form_the_diagonal_once_and_match_spectrum(monkeypatch):
    from flax import nnx
    from reference_models import NNX_MODELS, inputs

    import ntkspec
    from ntkspec import operator

    op = ntkspec.ntk(
        NNX_MODELS["relu_mlp"](nnx.Rngs(1), dtype=jnp.float64), inputs("relu_mlp", 1, 100, jnp.float64)
    )
    key = jax.random.key(3)
    raw_key, cosine_key = jax.random.split(key)
    want = (
        ntkspec.spectrum(op, "stochastic", key=raw_key, top_k=3),
        ntkspec.spectrum(op.normalized(), "stochastic", key=cosine_key, top_k=3),
    )
    calls = []
    real = operator._diagonal
    monkeypatch.setattr(operator, "_diagonal", lambda o, path: calls.append(1) or real(o, path))
    got = ntkspec.spectra(op, "stochastic", key=key, top_k=3)
    assert len(calls) == 1  # diag K once, for the trace and the cosine scaling
    for g, w in zip(got, want, strict=True):
        assert g.trace == pytest.approx(w.trace, rel=1e-12)
        assert g.entropy == pytest.approx(w.entropy, rel=1e-8)
        np.testing.assert_allclose(g.eigenvalues, w.eigenvalues, rtol=1e-8)

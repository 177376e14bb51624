"""Infinite-width NNGP and NTK of the ReLU MLP against float64 quadrature, against the seed-averaged
empirical NTK and output covariance of `models.build` networks, and K∞ ⊗ I_C as an operator."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import ntkspec
from ntkspec import infinite, models


def _relu_moments(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[relu(u) relu(v)] and E[1(u > 0) 1(v > 0)] for (u, v) ~ N(0, s), 2 x 2, by quadrature.

    With u = l_0 . z, v = l_1 . z, z ~ N(0, I_2) in polar form z = r (cos a, sin a), the radial
    integrals are closed (int r^3 e^{-r^2/2} dr = 2, int r e^{-r^2/2} dr = 1); the angular ones are
    integrated numerically, with the kinks (l_i . e_a = 0) given to `quad`.
    """
    rows = np.linalg.cholesky(s + 1e-300 * np.eye(2))
    kinks = []
    for row in rows:
        phi = np.arctan2(row[1], row[0])
        kinks += [(phi + np.pi / 2) % (2 * np.pi), (phi - np.pi / 2) % (2 * np.pi)]

    def integrate(f):
        return scipy.integrate.quad(f, 0, 2 * np.pi, points=sorted(kinks), epsabs=1e-14, epsrel=1e-13)[0]

    def proj(a, i):
        return rows[i, 0] * np.cos(a) + rows[i, 1] * np.sin(a)

    relu, step = np.zeros((2, 2)), np.zeros((2, 2))
    for i in range(2):
        for j in range(2):
            pair = (i, j)
            relu[pair] = integrate(lambda a, i=i, j=j: max(proj(a, i), 0) * max(proj(a, j), 0)) / np.pi
            step[pair] = integrate(lambda a, i=i, j=j: float(min(proj(a, i), proj(a, j)) > 0)) / (2 * np.pi)
    return relu, step


def _reference(x: np.ndarray, widths: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """NNGP Sigma_L and NTK sum_l (n_{l-1} Sigma_l + 1) prod_{m>=l} Edot_m for two inputs (rows of x)."""
    gram = x @ x.T
    sigmas, derivatives = [gram / widths[0]], []
    for _ in widths[1:]:
        relu, step = _relu_moments(sigmas[-1])
        derivatives.append(step)
        sigmas.append(relu)
    ntk = np.zeros((2, 2))
    for layer, n_in in enumerate(widths):
        product = np.ones((2, 2))
        for step in derivatives[layer:]:
            product = product * step
        ntk += (n_in * sigmas[layer] + 1) * product
    return sigmas[-1], ntk


@pytest.mark.parametrize("widths", [(3,), (3, 50), (3, 50, 70), (3, 20, 40, 10)])
def test_two_points_against_quadrature(widths):
    x = np.array([[0.3, -1.2, 0.8], [1.1, 0.4, -0.5]])
    nngp, ntk = _reference(x, widths)
    got_nngp = np.asarray(infinite.mlp_nngp(jnp.asarray(x), None, widths))
    got_ntk = np.asarray(infinite.mlp_ntk(jnp.asarray(x), None, widths))
    assert got_ntk.dtype == np.float64
    np.testing.assert_allclose(got_nngp, nngp, rtol=1e-10)
    np.testing.assert_allclose(got_ntk, ntk, rtol=1e-10)
    # the cross kernel K(x1, x2) is the off-diagonal entry
    cross = infinite.mlp_ntk(jnp.asarray(x[:1]), jnp.asarray(x[1:]), widths)
    np.testing.assert_allclose(cross, ntk[:1, 1:], rtol=1e-10)


def _entks(x, widths, n_outputs, seeds):
    d_in, width, depth = widths[0], widths[1], len(widths)
    kernels = []
    for seed in seeds:
        model = models.build(
            "mlp", (d_in,), n_outputs, jax.random.key(seed), width=width, depth=depth, param_dtype=jnp.float64
        )
        kernels.append(np.asarray(ntkspec.ntk(model, x).dense()))
    return np.array(kernels)


def test_ntk_is_the_seed_averaged_empirical_ntk():
    """Per-seed relative error of the eNTK falls about as width^-1/2; the seed mean is closer."""
    d_in, n_outputs, seeds = 32, 2, range(6)
    x = jax.random.normal(jax.random.key(7), (4, d_in), jnp.float64)
    widths_tried = (64, 256, 1024)
    per_seed, of_mean = [], []
    for width in widths_tried:
        widths = (d_in, width, width)
        want = np.kron(np.asarray(infinite.mlp_ntk(x, None, widths)), np.eye(n_outputs))
        kernels = _entks(x, widths, n_outputs, seeds)
        errors = [np.linalg.norm(k - want) / np.linalg.norm(want) for k in kernels]
        per_seed.append(np.mean(errors))
        of_mean.append(np.linalg.norm(kernels.mean(0) - want) / np.linalg.norm(want))
    slope = np.polyfit(np.log(widths_tried), np.log(per_seed), 1)[0]
    assert -0.75 < slope < -0.3, (slope, per_seed)
    assert all(m < 0.7 * s for m, s in zip(of_mean, per_seed, strict=True)), (of_mean, per_seed)
    assert of_mean[-1] < 0.05


def test_nngp_is_the_output_covariance():
    """E[f_c(x) f_c(x')] over seeds and outputs against Sigma_L, within 4 standard errors + O(1/n)."""
    d_in, width, n_outputs = 16, 512, 50
    widths = (d_in, width, width)
    x = jax.random.normal(jax.random.key(3), (3, d_in), jnp.float64)
    products = []
    for seed in range(20):
        model = models.build(
            "mlp", (d_in,), n_outputs, jax.random.key(seed), width=width, depth=3, param_dtype=jnp.float64
        )
        f = np.asarray(model(x))  # (3, C)
        products += [np.outer(f[:, c], f[:, c]) for c in range(n_outputs)]
    products = np.array(products)
    mean, stderr = products.mean(0), products.std(0, ddof=1) / np.sqrt(len(products))
    want = np.asarray(infinite.mlp_nngp(x, None, widths))
    assert np.all(np.abs(mean - want) < 4 * stderr + 4 / width * np.abs(want)), (mean, want, stderr)


def test_zero_input_matches_any_network_exactly():
    """x = 0 has h_l = 0 and relu'(0) = 0: only the output bias moves it, K(0, x) = 1 at any width."""
    d_in = 5
    x = jnp.concatenate([jnp.zeros((1, d_in)), jax.random.normal(jax.random.key(0), (2, d_in))])
    model = models.build("mlp", (d_in,), 1, jax.random.key(1), width=16, depth=3, param_dtype=jnp.float64)
    k = infinite.mlp_ntk(x, None, (d_in, 16, 16))
    np.testing.assert_allclose(k[0], 1.0)
    np.testing.assert_allclose(np.asarray(ntkspec.ntk(model, x).dense())[0], 1.0, rtol=1e-12)
    assert np.all(np.isfinite(infinite.mlp_nngp(x, None, (d_in, 16, 16))))


def test_float32_follows_the_inputs():
    x = jax.random.normal(jax.random.key(0), (6, 4), jnp.float64)
    widths = (4, 300, 200)
    k64 = infinite.mlp_ntk(x, None, widths)
    k32 = infinite.mlp_ntk(x.astype(jnp.float32), None, widths)
    assert k32.dtype == jnp.float32
    np.testing.assert_allclose(k32, k64, rtol=2e-5)
    np.testing.assert_allclose(jnp.diagonal(k32), jnp.diagonal(k64), rtol=1e-6)  # diagonal: no arccos


@pytest.fixture(scope="module")
def kernel_case():
    x = jax.random.normal(jax.random.key(0), (7, 4), jnp.float64)
    widths = (4, 30, 20)
    return x, widths, infinite.mlp_ntk(x, None, widths)


@pytest.mark.parametrize("kernel", ["ntk", "nngp"])
def test_operator_is_the_kronecker_product(kernel_case, kernel):
    x, widths, _ = kernel_case
    k = np.asarray((infinite.mlp_ntk if kernel == "ntk" else infinite.mlp_nngp)(x, None, widths))
    full = np.kron(k, np.eye(3))
    op = infinite.mlp_operator(x, widths, 3, kernel=kernel, block_rows=3)  # 7 rows: padded blocks
    assert op.shape == (21, 21) and op.dtype == jnp.float64
    v = np.random.default_rng(0).normal(size=(21, 4))
    np.testing.assert_allclose(op.dense(), full, rtol=1e-12)
    np.testing.assert_allclose(op.matvec(jnp.asarray(v)), full @ v, rtol=1e-12)
    np.testing.assert_allclose(op.matvec(jnp.asarray(v[:, 0])), full @ v[:, 0], rtol=1e-12)
    np.testing.assert_allclose(op.diagonal(), np.diag(full), rtol=1e-12)
    s = 1 / np.sqrt(np.diag(full))
    cosine = op.normalized()
    np.testing.assert_allclose(cosine.dense(), s[:, None] * full * s[None, :], rtol=1e-12)
    np.testing.assert_allclose(cosine.matvec(jnp.asarray(v)), (s[:, None] * full * s) @ v, rtol=1e-12)
    np.testing.assert_allclose(cosine.diagonal(), 1.0, rtol=1e-12)
    assert cosine.normalized() is cosine


def test_cross_operator(kernel_case):
    x, widths, k = kernel_case
    op = infinite.mlp_operator(x[:3], widths, 2, x2=x, block_rows=2)
    assert op.shape == (6, 14)
    v = np.random.default_rng(1).normal(size=(14, 2))
    want = np.kron(np.asarray(k)[:3], np.eye(2))
    np.testing.assert_allclose(op.dense(), want, rtol=1e-12)
    np.testing.assert_allclose(op.matvec(jnp.asarray(v)), want @ v, rtol=1e-12)
    with pytest.raises(ValueError, match="square kernel"):
        op.diagonal()


def test_spectrum_accepts_the_operator(kernel_case):
    x, widths, k = kernel_case
    op = infinite.mlp_operator(x, widths, 2)
    exact = ntkspec.spectrum(op, method="exact")
    lam = np.linalg.eigvalsh(np.kron(np.asarray(k), np.eye(2)))
    np.testing.assert_allclose(exact.trace, lam.sum(), rtol=1e-10)
    raw, cosine = ntkspec.spectra(op, method="exact")
    assert cosine.trace == pytest.approx(14.0)
    top = ntkspec.top_eigenpairs(op, jax.random.key(0), k=2, block_size=4, budget=40)
    np.testing.assert_allclose(top.values, lam[::-1][:2], rtol=1e-8)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda x: infinite.mlp_ntk(x, None, (5, 10)), "widths\\[0\\] = 5"),
        (lambda x: infinite.mlp_ntk(x, x[:, :3], (4, 10)), "`x2`"),
        (lambda x: infinite.mlp_ntk(x, None, (4, 0)), "`widths`"),
        (lambda x: infinite.mlp_ntk(x, None, ()), "`widths`"),
        (lambda x: infinite.mlp_ntk(x, None, (4.0, 10)), "`widths`"),
        (lambda x: infinite.mlp_nngp(x.at[0, 0].set(jnp.nan), None, (4, 10)), "non-finite"),
        (lambda x: infinite.mlp_ntk(x.astype(int), None, (4, 10)), "floating-point"),
        (lambda x: infinite.mlp_ntk(x[0], None, (4, 10)), "2-D array"),
        (lambda x: infinite.mlp_operator(x, (4, 10), 2, kernel="gp"), "`kernel`"),
        (lambda x: infinite.mlp_operator(x, (4, 10), 0), "`n_outputs`"),
        (lambda x: infinite.mlp_operator(x, (4, 10), 2, block_rows=0), "`block_rows`"),
        (lambda x: infinite.mlp_operator(x, (4, 10), 2).matvec(jnp.ones(3)), "`v`"),
    ],
)
def test_bad_input(call, match):
    x = jax.random.normal(jax.random.key(0), (3, 4), jnp.float64)
    with pytest.raises(ValueError, match=match):
        call(x)

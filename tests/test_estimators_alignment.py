"""Kernel-target and kernel-kernel alignment (exact and stochastic), eigenvector rotation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import ntkspec
from ntkspec._testing import digits_data, digits_ntk, exact_summary, power_law
from ntkspec.estimators import (
    eigenvector_rotation,
    kernel_alignment,
    kernel_alignment_stochastic,
    kernel_target_alignment,
    kernel_target_alignment_stochastic,
    one_hot_targets,
    principal_angles,
    subspace_rank,
    top_eigenpairs,
)
from ntkspec.models import build


def test_one_hot_targets_are_sample_major():
    y = one_hot_targets(jnp.array([2, 0]), 3)
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 0, 0])
    np.testing.assert_allclose(one_hot_targets(jnp.array([1]), 2, center=True), [-0.5, 0.5])


def test_exact_alignment_matches_definition():
    kernel = digits_ntk(num_samples=40)
    _, labels = digits_data(40)
    y = np.asarray(one_hot_targets(labels, 10))
    target = np.outer(y, y)
    expected = np.sum(kernel * target) / (np.linalg.norm(kernel) * np.linalg.norm(target))
    np.testing.assert_allclose(kernel_target_alignment(kernel, y).value, expected, rtol=1e-12)


def test_stochastic_alignment_is_calibrated_over_100_keys():
    kernel = jnp.asarray(digits_ntk(num_samples=40))
    _, labels = digits_data(40)
    y = one_hot_targets(labels, 10)
    exact = float(kernel_target_alignment(kernel, y).value)
    keys = jax.random.split(jax.random.key(5), 100)
    run = jax.jit(
        lambda k, ks: jax.lax.map(
            lambda key: kernel_target_alignment_stochastic(k, y, key, num_matvecs=45), ks
        )
    )
    result = jax.device_get(run(kernel, keys))
    assert np.mean(np.abs(result.value - exact) <= 2 * result.stderr) >= 0.85
    assert np.sqrt(np.mean((result.value / exact - 1) ** 2)) < 0.01


def test_exact_kernel_alignment_matches_definition():
    k1, k2 = power_law(1.0, 100, seed=0)[0], power_law(0.5, 100, seed=1)[0]
    expected = np.sum(k1 * k2) / (np.linalg.norm(k1) * np.linalg.norm(k2))
    np.testing.assert_allclose(kernel_alignment(k1, k2).value, expected, rtol=1e-12)
    np.testing.assert_allclose(kernel_alignment(k1, 3.0 * k1).value, 1.0, rtol=1e-12)


@pytest.mark.parametrize(
    "pair",
    [
        # two real NTKs: the same MLP from two initialisations (A ≈ 0.9)
        lambda: (digits_ntk(num_samples=40, seed=0), digits_ntk(num_samples=40, seed=1)),
        # power laws in unrelated bases (A ≈ 0.3): most of the inner product is in the probes' part
        lambda: (power_law(1.0, 400, seed=0)[0], power_law(0.5, 400, seed=1)[0]),
    ],
    ids=["ntk-two-inits", "power-laws-unrelated"],
)
def test_stochastic_kernel_alignment_is_calibrated_over_100_keys(pair):
    k1, k2 = (jnp.asarray(k) for k in pair())
    exact = float(kernel_alignment(k1, k2).value)
    keys = jax.random.split(jax.random.key(6), 100)
    run = jax.jit(
        lambda a, b, ks: jax.lax.map(lambda key: kernel_alignment_stochastic(a, b, key, num_matvecs=100), ks)
    )
    result = jax.device_get(run(k1, k2, keys))
    assert np.mean(np.abs(result.value - exact) <= 2 * result.stderr) >= 0.85
    assert np.sqrt(np.mean((result.value / exact - 1) ** 2)) < 0.02
    assert int(result.matvecs[0]) == 100


def test_stochastic_kernel_alignment_of_two_ntk_operators(key):
    x = jax.random.normal(jax.random.key(1), (12, 5), jnp.float64)
    models = [build("mlp", (5,), 3, jax.random.key(s), width=16, depth=3) for s in (0, 1)]
    ops = [ntkspec.ntk(m, x) for m in models]
    exact = float(kernel_alignment(ops[0].dense(), ops[1].dense()).value)
    estimate = kernel_alignment_stochastic(ops[0], ops[1], key, num_matvecs=32)
    assert abs(float(estimate.value) - exact) <= max(4 * float(estimate.stderr), 1e-6)


def test_kernel_alignment_bad_input_names_the_argument(key):
    with pytest.raises(ValueError, match="kernel2"):
        kernel_alignment(np.eye(3), np.eye(4))
    with pytest.raises(ValueError, match="kernel1"):
        kernel_alignment(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="op2"):
        kernel_alignment_stochastic(jnp.eye(30), jnp.eye(40), key, num_matvecs=20)
    with pytest.raises(ValueError, match="num_matvecs"):
        kernel_alignment_stochastic(jnp.eye(30), jnp.eye(30), key, num_matvecs=4)


def test_principal_angles_match_scipy(key):
    k1, k2 = jax.random.split(key)
    u1 = jnp.linalg.qr(jax.random.normal(k1, (50, 4)))[0]
    u2 = jnp.linalg.qr(jax.random.normal(k2, (50, 4)))[0]
    rotation = principal_angles(u1, u2)
    np.testing.assert_allclose(rotation.angles, np.sort(scipy.linalg.subspace_angles(u1, u2)), atol=1e-10)


def test_eigenvector_rotation_recovers_a_known_angle():
    kernel, lam = power_law(1.0, 200)
    vecs = exact_summary(kernel)["eigenvectors"]
    # Rotate eigenvector 3 towards eigenvector 150 by 0.3 rad: the top-r subspace turns by 0.3.
    angle = 0.3
    rotated = vecs.copy()
    rotated[:, 2] = np.cos(angle) * vecs[:, 2] + np.sin(angle) * vecs[:, 149]
    rotated[:, 149] = -np.sin(angle) * vecs[:, 2] + np.cos(angle) * vecs[:, 149]
    other = (rotated * lam) @ rotated.T
    result = eigenvector_rotation(kernel, other, rank=10)
    assert result.rank == 10
    np.testing.assert_allclose(result.angles[-1], angle, atol=1e-10)
    np.testing.assert_allclose(result.angles[:-1], 0.0, atol=1e-6)
    default = eigenvector_rotation(kernel, kernel)
    assert default.rank == round(exact_summary(kernel)["erank"])
    np.testing.assert_allclose(default.overlap, 1.0, atol=1e-6)


def test_principal_angles_between_subspaces_of_two_dimensions(key):
    k1, k2 = jax.random.split(key)
    u1 = jnp.linalg.qr(jax.random.normal(k1, (50, 3)))[0]
    u2 = jnp.linalg.qr(jax.random.normal(k2, (50, 6)))[0]
    for a, b in ((u1, u2), (u2, u1)):
        rotation = principal_angles(a, b)
        assert rotation.rank == 3 and rotation.angles.shape == (3,)
        np.testing.assert_allclose(rotation.angles, np.sort(scipy.linalg.subspace_angles(a, b)), atol=1e-10)
    inside = principal_angles(u2[:, :2], u2)  # a subspace of the other: no rotation
    np.testing.assert_allclose(inside.overlap, 1.0, atol=1e-12)
    with pytest.raises(ValueError, match="`u2`: got .* expected orthonormal columns with 50 rows"):
        principal_angles(u1, u2[:40])


def test_subspace_rank_moves_a_cut_multiplet_to_its_end():
    lam = np.array([9.0, 5.0, 3.0, 3.0, 3.0 * (1 - 1e-9), 2.0, 2.0])
    assert [subspace_rank(lam, r) for r in (1, 2, 3, 4, 5, 6, 7)] == [1, 2, 5, 5, 5, 7, 7]
    assert subspace_rank(lam, 3, rtol=1e-12) == 4  # 3(1 - 1e-9) is another eigenvalue at this tolerance
    assert subspace_rank(lam[:4], 3) == 4  # none known past the last
    with pytest.raises(ValueError, match="`r`"):
        subspace_rank(lam, 0)


def test_rotation_at_a_cut_multiplet_does_not_depend_on_its_basis(key):
    """A triple eigenvalue at positions 4-6 and r = 5: eigh returns some basis of the triple; a
    perturbation of 1e-9 (below the tolerance) makes it another. The rotation of the kernel against
    itself so perturbed is 0, as the subspaces are the same; cut at r = 5 it would not be."""
    n = 30
    basis = np.linalg.qr(np.asarray(jax.random.normal(key, (n, n), jnp.float64)))[0]
    lam = np.array([10.0, 8.0, 6.0, 5.0, 5.0, 5.0] + list(np.geomspace(2.0, 0.01, n - 6)))
    kernel = (basis * lam) @ basis.T
    mix = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    turned = basis[:, 3:6] @ mix  # another basis of the triple's eigenspace
    other = kernel + 1e-9 * (np.outer(turned[:, 0], turned[:, 0]) - np.outer(turned[:, 2], turned[:, 2]))
    rotation = eigenvector_rotation(kernel, other, rank=5)
    assert rotation.rank == 6
    np.testing.assert_allclose(rotation.overlap, 1.0, atol=1e-10)
    u, v = (np.linalg.eigh(k)[1][:, ::-1][:, :5] for k in (kernel, other))
    assert 1 - np.linalg.norm(u.T @ v) ** 2 / 5 > 1e-3  # the plain cut at r = 5 sees a rotation


def test_rotation_from_lanczos_eigenvectors(key):
    kernel, _ = power_law(1.0, 300)
    lanczos = top_eigenpairs(jnp.asarray(kernel, jnp.float32), key, k=5, budget=150)
    exact = exact_summary(kernel)["eigenvectors"][:, :5]
    rotation = principal_angles(lanczos.vectors.astype(jnp.float64), exact)
    assert float(jnp.max(rotation.angles)) < 1e-3


def test_bad_targets_are_explained():
    with pytest.raises(ValueError, match="one_hot_targets"):
        kernel_target_alignment(jnp.eye(6), jnp.ones(5))

"""The README's Python quickstart runs as written."""

import pathlib
import re

import jax.numpy as jnp

README = pathlib.Path(__file__).parents[1] / "README.md"


def test_quickstart_runs():
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["op"].shape == (1280, 1280)
    assert namespace["s"].method == "exact"
    exact, stochastic = namespace["s"].effective_rank, namespace["big"].effective_rank
    assert abs(stochastic - exact) < 0.01 * exact
    assert jnp.all(jnp.isfinite(namespace["kv"]))


def test_kernel_regression_section_runs():
    section = README.read_text().split("## Kernels and kernel regression", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    fit = namespace["fit"]
    assert fit.method == "pcg" and fit.converged
    assert namespace["accuracy"] > 0.85 and namespace["f_test"].shape == (500, 10)
    assert namespace["pseudo"].shape == (100, 100) and namespace["k_all"].shape == (1000, 1000)

"""Type aliases shared by the public API (shapes in jaxtyping notation)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import jax
from jaxtyping import Array, Float, PRNGKeyArray

PyTree: TypeAlias = Any
Params: TypeAlias = PyTree
Inputs: TypeAlias = Float[Array, " N *features"]
Outputs: TypeAlias = Float[Array, "N C"]
ApplyFn: TypeAlias = Callable[[Params, Inputs], Outputs]
Vector: TypeAlias = Float[Array, " n"]
Block: TypeAlias = Float[Array, "n k"]
Matvec: TypeAlias = Callable[[Block], Block]
Key: TypeAlias = PRNGKeyArray | jax.Array

__all__ = ["ApplyFn", "Block", "Inputs", "Key", "Matvec", "Outputs", "Params", "PyTree", "Vector"]

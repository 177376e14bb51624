"""Memory model: parameter counts against the real nnx MLP, monotone costs, the solvers invert them."""

import jax
import pytest
from flax import nnx

from ntkspec import memory
from ntkspec.models import build

# Shapes only: the MLPs below are built under nnx.eval_shape, so nothing large is allocated.


@pytest.mark.parametrize(
    ("width", "depth", "d_in", "n_outputs"), [(512, 3, 784, 10), (300, 4, 3072, 4), (7, 2, 5, 3)]
)
def test_parameter_count_matches_nnx(width, depth, d_in, n_outputs):
    model = nnx.eval_shape(
        lambda: build("mlp", (d_in,), n_outputs, jax.random.key(0), width=width, depth=depth)
    )
    real = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert memory.mlp_parameter_count(width, depth, d_in, n_outputs) == real


def test_costs_grow_with_width_and_batch_and_fall_with_devices():
    widths = [64, 128, 1024, 4096]
    for fn in (memory.training_bytes, memory.matvec_bytes, memory.exact_kernel_bytes):
        by_width = [fn(w, 512) for w in widths]
        assert by_width == sorted(by_width) and len(set(by_width)) == len(widths)
        by_n = [fn(256, n) for n in (16, 128, 1024)]
        assert by_n == sorted(by_n)
    for fn in (memory.training_bytes, memory.matvec_bytes):
        by_model = [fn(4096, 1024, devices_data=2, devices_model=m) for m in (1, 2, 4, 8)]
        assert by_model == sorted(by_model, reverse=True) and by_model[-1] < by_model[0] / 3
    for fn in (memory.training_bytes, memory.exact_kernel_bytes):
        by_data = [fn(1024, 4096, devices_data=d) for d in (1, 2, 4, 8)]
        assert by_data == sorted(by_data, reverse=True) and by_data[-1] < by_data[0] / 2
    # The kernel's rows split on "data" only; a "model" split adds an all-reduce buffer.
    assert memory.exact_kernel_bytes(256, 1024, devices_model=2) > memory.exact_kernel_bytes(256, 1024)
    # J^T V is summed over "data" and held whole on every data shard: one more buffer, not less.
    assert memory.matvec_bytes(4096, 1024, devices_data=8) > memory.matvec_bytes(4096, 1024)


def test_training_state_is_split_on_model():
    p = memory.mlp_parameter_count(4096)
    one = memory.training_bytes(4096, 1, devices_model=1)
    eight = memory.training_bytes(4096, 1, devices_model=8)
    assert one >= 16 * p
    # Everything but the 10 output biases (replicated: 10 does not split 8 ways) divides by 8.
    assert eight < one / 7.9


def test_exact_kernel_is_dominated_by_the_kernel():
    n = 2048
    bytes_ = memory.exact_kernel_bytes(256, n)
    assert 4 * 4 * (10 * n) ** 2 < bytes_ < 1.1 * 4 * 4 * (10 * n) ** 2
    assert memory.exact_kernel_bytes(256, n, devices_data=4) < bytes_ / 3.5


@pytest.mark.parametrize("model_devices", [1, 2, 8])
@pytest.mark.parametrize("workload", memory.WORKLOADS)
def test_largest_width_inverts_the_cost(workload, model_devices):
    budget = 24 * 10**9
    w = memory.largest_width(budget, model_devices, workload=workload, depth=4)
    assert w > 0 and w % model_devices == 0
    cost = {
        "training": lambda w: memory.training_bytes(w, 60_000, depth=4, devices_model=model_devices),
        "matvec": lambda w: memory.matvec_bytes(w, 128, depth=4, devices_model=model_devices),
        "exact": lambda w: memory.exact_kernel_bytes(w, 128, depth=4, devices_model=model_devices),
    }[workload]
    assert cost(w) <= budget < cost(w + model_devices)


def test_largest_ntk_batch_inverts_the_cost():
    budget = 80 * 10**9
    for data in (1, 8):
        n = memory.largest_ntk_batch(budget, 1024, devices_data=data)
        assert memory.exact_kernel_bytes(1024, n, devices_data=data) <= budget
        assert memory.exact_kernel_bytes(1024, n + 1, devices_data=data) > budget
    assert memory.largest_ntk_batch(budget, 1024, devices_data=8) > 2.5 * memory.largest_ntk_batch(
        budget, 1024
    )
    matvec = memory.largest_ntk_batch(budget, 1024, method="matvec")
    assert matvec > memory.largest_ntk_batch(budget, 1024)


def test_nothing_fits():
    assert memory.largest_width(1000, workload="training") == 0
    assert memory.largest_ntk_batch(1000, 4096) == 0


def test_bad_input():
    with pytest.raises(ValueError, match=r"`depth`: got 1, expected an integer >= 2"):
        memory.mlp_parameter_count(64, depth=1)
    with pytest.raises(ValueError, match=r"`workload`: got 'inference'"):
        memory.largest_width(10**9, workload="inference")
    with pytest.raises(ValueError, match=r"`method`: got 'lanczos'"):
        memory.largest_ntk_batch(10**9, 64, method="lanczos")
    with pytest.raises(ValueError, match=r"`devices_model`: got 0"):
        memory.training_bytes(64, 10, devices_model=0)
    with pytest.raises(ValueError, match=r"divisible by the model axis size 8"):
        memory.training_bytes(1001, 10, devices_model=8)

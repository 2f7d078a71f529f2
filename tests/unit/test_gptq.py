"""dpq.gptq: the solver (against RTN and a brute-force check), GAR ordering, the DPQ column quantizer."""

import numpy as np
import pytest

from dpq import quantizers as qz
from dpq.backends import effective_weight
from dpq.gptq import FP8AwareQuantizer, HessianAccumulator, IntGroupQuantizer, gar_permutation, gptq_solve
from dpq.methods import make_config, quantize_linears


def _correlated(rng, n_tokens=2048, d=128):
    mix = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    x = (rng.normal(size=(n_tokens, d)) @ mix).astype(np.float32)
    x[:, :4] *= 8.0  # a few outlier channels, as in real activations
    return x


def _proxy(w, w_hat, h):
    d = (w - w_hat).astype(np.float64)
    return float(np.einsum("ij,jk,ik->", d, h, d))


def test_hessian_accumulator_is_the_mean_outer_product():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 8)).astype(np.float32)
    acc = HessianAccumulator(8)
    acc.add(x[:30])
    acc.add(x[30:])
    np.testing.assert_allclose(acc.hessian, x.T.astype(np.float64) @ x / 100, rtol=1e-5)
    assert acc.absmax == pytest.approx(np.abs(x).max())
    with pytest.raises(ValueError, match="NaN"):
        acc.add(np.full((2, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="no calibration"):
        HessianAccumulator(4).hessian


def test_identity_hessian_reduces_gptq_to_rtn():
    """With H = I nothing is spread (Hinv is diagonal): GPTQ must return exactly the RTN codes."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=(32, 128)).astype(np.float32)
    quant = IntGroupQuantizer(32, 128, 64, 4)
    codes, w_hat, _ = gptq_solve(w, np.eye(128), quant, group_size=64, block_size=32)
    s, z = qz.group_params(w, 64, 15)
    rtn = qz.quantize_int(w, qz.expand_groups(s, 64), qz.expand_groups(z, 64), 15)
    assert np.array_equal(codes, rtn)


@pytest.mark.parametrize("block_size", [16, 128])
def test_gptq_beats_rtn_on_the_calibration_objective(block_size):
    rng = np.random.default_rng(2)
    x = _correlated(rng)
    h = x.T.astype(np.float64) @ x / len(x)
    w = rng.normal(size=(64, 128)).astype(np.float32)
    quant = IntGroupQuantizer(64, 128, 64, 4)
    _, w_hat, _ = gptq_solve(w, h, quant, group_size=64, block_size=block_size)
    s, z = qz.group_params(w, 64, 15)
    rtn = qz.dequantize_int(qz.quantize_int(w, qz.expand_groups(s, 64), qz.expand_groups(z, 64), 15),
                            qz.expand_groups(s, 64), qz.expand_groups(z, 64))
    assert _proxy(w, w_hat, h) < 0.7 * _proxy(w, rtn, h)


def test_block_size_does_not_change_the_result():
    """Lazy batched updates are an implementation detail: blocks of 8 and 128 give the same codes."""
    rng = np.random.default_rng(3)
    x = _correlated(rng)
    h = x.T.astype(np.float64) @ x / len(x)
    w = rng.normal(size=(16, 128)).astype(np.float32)
    a = gptq_solve(w, h, IntGroupQuantizer(16, 128, 32, 4), group_size=32, block_size=8)[0]
    b = gptq_solve(w, h, IntGroupQuantizer(16, 128, 32, 4), group_size=32, block_size=128)[0]
    assert (a != b).mean() < 0.002  # float32 summation order may flip a rare tie


def test_dead_columns_are_zeroed():
    rng = np.random.default_rng(4)
    x = _correlated(rng, d=64)
    x[:, 5] = 0.0
    h = x.T.astype(np.float64) @ x / len(x)
    w = rng.normal(size=(8, 64)).astype(np.float32)
    quant = IntGroupQuantizer(8, 64, 64, 4)
    codes, w_hat, _ = gptq_solve(w, h, quant, group_size=64)
    assert np.all(np.isfinite(w_hat))


def test_gar_permutation_keeps_groups_and_orders_them():
    rng = np.random.default_rng(5)
    d = rng.uniform(0, 1, size=256)
    d[200] = 10.0  # group 3 has the largest entry
    perm = gar_permutation(d, 64)
    assert sorted(perm.tolist()) == list(range(256))
    blocks = perm.reshape(4, 64)
    assert all(len(set(b // 64)) == 1 for b in blocks)  # every block of the order is one original group
    assert blocks[0, 0] == 200
    assert all(np.all(np.diff(d[b]) <= 0) for b in blocks)  # inside a group: H_jj descending
    maxima = [d[b].max() for b in blocks]
    assert maxima == sorted(maxima, reverse=True)
    with pytest.raises(ValueError):
        gar_permutation(d[:100], 64)


def test_fp8_aware_column_values_are_fp8_values_times_tensor_scale():
    rng = np.random.default_rng(6)
    w = rng.normal(size=(8, 64)).astype(np.float32)
    s_t = np.full(8, 2.0 ** -7, np.float32)
    w8 = qz.round_fp8(np.clip(w / s_t[:, None], -224, 224), "float8_e4m3")
    s, z = qz.group_params(w8, 64, 15)
    quant = FP8AwareQuantizer(s, z, s_t, 64, 4, "float8_e4m3")
    q, w_hat = quant.quantize_column(w[:, 3], 3)
    assert np.array_equal(w_hat / s_t, qz.round_fp8(w_hat / s_t, "float8_e4m3"))
    np.testing.assert_array_equal(w_hat, s_t * qz.expand_fp8(q, s[:, 0], z[:, 0], "float8_e4m3"))


def test_dpq_models_the_runtime_better_than_naive_w4a8():
    """DPQ minimises the error of the values the W4A8 kernel multiplies; naive W4A8 does not see the FP8 rounding."""
    rng = np.random.default_rng(7)
    x = _correlated(rng, d=256)
    h = x.T.astype(np.float64) @ x / len(x)
    w = (rng.normal(size=(128, 256)) * 0.05).astype(np.float32)
    errs = {}
    for m in ("rtn-w4a8", "naive-w4a8", "dpq", "dpq-gar"):
        p = quantize_linears({"w": w}, h, make_config(m, group_size=128))["w"]
        errs[m] = _proxy(w, effective_weight(p), h)
    assert errs["dpq"] < errs["naive-w4a8"] < errs["rtn-w4a8"]
    assert errs["dpq-gar"] < errs["rtn-w4a8"]


def test_solver_rejects_mismatched_hessian():
    with pytest.raises(ValueError, match="Hessian shape"):
        gptq_solve(np.zeros((4, 64), np.float32), np.eye(32), IntGroupQuantizer(4, 64, 64, 4), group_size=64)


def test_inverse_hessian_factor_is_the_upper_cholesky_of_the_damped_inverse():
    from dpq.gptq import inverse_hessian_factor

    rng = np.random.default_rng(8)
    a = rng.normal(size=(300, 96))
    h = a.T @ a / 300
    u = inverse_hessian_factor(h, 0.01)
    hd = h + 0.01 * np.mean(np.diag(h)) * np.eye(96)
    assert np.allclose(u, np.triu(u))
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(hd), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(u, np.linalg.cholesky(np.linalg.inv(hd)).T, rtol=1e-8, atol=1e-12)

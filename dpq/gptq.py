"""GPTQ solver with pluggable column quantization (plain INT, or DPQ's FP8-aware INT -> FP8) and GAR ordering.

Lifecycle as in GPTQ: observe (``HessianAccumulator.add`` sums x x^T over calibration inputs) -> solve
(``gptq_solve``: dead columns, optional reordering, damping, upper Cholesky factor of H^-1, blocks of columns with
lazy batched updates) -> release. The solver never knows the number format: a ``ColumnQuantizer`` returns, for one
column of the (error-updated) weights, its integer codes and the value the hardware will multiply, and the error
against *that* value is what gets spread over the columns not yet quantized. DPQ is this solver with a column
quantizer whose dequantization includes the FP8 rounding.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from dpq import quantizers as qz
from sim.formats import round_to_format


class HessianAccumulator:
    """Running H = mean over calibration tokens of x x^T for one linear input.

    ``add(x)`` with x (N, in_features) float32; ``hessian`` float64 (in_features, in_features); ``absmax``
    (max |x| seen, for static activation scales).
    """

    def __init__(self, in_features: int):
        self.in_features = in_features
        self.sum_xxt = np.zeros((in_features, in_features), dtype=np.float64)
        self.count = 0
        self.absmax = 0.0

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float32).reshape(-1, self.in_features)
        if not np.all(np.isfinite(x)):
            raise ValueError("calibration activations contain NaN or inf")
        self.sum_xxt += (x.T @ x).astype(np.float64)
        self.count += x.shape[0]
        self.absmax = max(self.absmax, float(np.abs(x).max(initial=0.0)))

    @property
    def hessian(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no calibration data was added to this Hessian")
        return self.sum_xxt / self.count


class ColumnQuantizer(Protocol):
    """Quantizes one column of weights (all rows) given its original column index."""

    def quantize_column(self, w: np.ndarray, column: int) -> tuple[np.ndarray, np.ndarray]:
        """w float32 (rows,) -> (codes float32 (rows,), w_hat float32 (rows,): the value the kernel multiplies,
        in the same (unscaled) units as w)."""

    def start_group(self, w_group: np.ndarray, group: int) -> None:
        """Called when the solver reaches the first column of ``group`` with the current (error-updated) weights of
        that group, float32 (rows, group_size); quantizers with fixed parameters ignore it."""


def gar_permutation(h_diag: np.ndarray, group_size: int) -> np.ndarray:
    """Group-aware reordering: inside each group columns by H_jj descending; groups by their largest H_jj descending.

    Returns perm (in_features,) int64: position i of the quantization order processes original column perm[i].
    Groups keep their members, so the exported checkpoint keeps plain contiguous groups (no g_idx).
    """
    n = h_diag.shape[0]
    if n % group_size:
        raise ValueError(f"group_size {group_size} does not divide in_features {n}")
    groups = h_diag.reshape(n // group_size, group_size)
    inner = np.argsort(-groups, axis=1, kind="stable")
    group_order = np.argsort(-groups.max(axis=1), kind="stable")
    base = np.arange(0, n, group_size)
    return (base[group_order, None] + inner[group_order]).reshape(-1).astype(np.int64)


def inverse_hessian_factor(h: np.ndarray, damp: float) -> np.ndarray:
    """Upper Cholesky factor U of (H + damp * mean(diag H) I)^-1 (H^-1 = U^T U), float64.

    One Cholesky and one triangular inverse: with J the exchange matrix and J H J = L L^T,
    H^-1 = (L^-1 J)^T (L^-1 J), so U = J L^-1 J (L^-1 flipped on both axes, upper triangular).
    If the damped H is still not positive definite (a rank-poor calibration set), damping is multiplied by 10 until
    it is, at most 4 times; then a ValueError is raised.
    """
    n = h.shape[0]
    mean_diag = float(np.mean(np.diag(h)))
    flipped = h[::-1, ::-1]
    for attempt in range(5):
        hd = flipped + (damp * 10 ** attempt) * mean_diag * np.eye(n)
        try:
            lower = np.linalg.cholesky(hd)
        except np.linalg.LinAlgError:
            continue
        lower_inv = np.linalg.inv(lower)
        return np.ascontiguousarray(np.triu(lower_inv[::-1, ::-1]))
    raise ValueError(f"Hessian is not positive definite even with damping {damp * 1e4} x mean(diag)")


def gptq_solve(w: np.ndarray, h: np.ndarray, quantizer: ColumnQuantizer, *, group_size: int, block_size: int = 128,
               damp: float = 0.01, perm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Quantize W column by column, spreading each column's error with the inverse Hessian (GPTQ).

    Args:
        w: float32 (rows, in_features) weights (not modified).
        h: float64 (in_features, in_features) Hessian of the layer input.
        quantizer: ColumnQuantizer producing (codes, w_hat) per column.
        group_size: columns per quantization group (start_group is called at each group's first column in the
            processing order; with GAR a group's columns are consecutive in that order).
        block_size: columns per lazy-update block.
        damp: relative damping (fraction of mean(diag H)).
        perm: processing order (in_features,) or None for natural order.
    Returns:
        codes float32 (rows, in_features) and w_hat float32 (rows, in_features), both in the original column order,
        and the GPTQ proxy loss sum((w - w_hat)^2 / Hinv_ii^2) / 2.
    """
    w = np.array(w, dtype=np.float32, copy=True)
    h = np.array(h, dtype=np.float64, copy=True)
    rows, cols = w.shape
    if h.shape != (cols, cols):
        raise ValueError(f"Hessian shape {h.shape} does not match in_features {cols}")
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    if perm is None:
        perm = np.arange(cols)
    w = w[:, perm]
    h = h[np.ix_(perm, perm)]
    u = inverse_hessian_factor(h, damp).astype(np.float32)

    codes = np.zeros_like(w)
    w_hat = np.zeros_like(w)
    loss = 0.0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        w1 = w[:, i1:i2].copy()
        err1 = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = int(perm[i1 + i])
            if (i1 + i) % group_size == 0:
                quantizer.start_group(_group_view(w, w1, i1, i, group_size), col // group_size)
            q, wq = quantizer.quantize_column(w1[:, i], col)
            codes[:, i1 + i] = q
            w_hat[:, i1 + i] = wq
            d = u1[i, i]
            e = (w1[:, i] - wq) / d
            loss += float(np.dot(e, e)) / 2.0
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err1[:, i] = e
        w[:, i1:i2] = w1
        if i2 < cols:
            w[:, i2:] -= err1 @ u[i1:i2, i2:]
    inv = np.argsort(perm)
    return codes[:, inv], w_hat[:, inv], loss


def _group_view(w: np.ndarray, w1: np.ndarray, i1: int, i: int, group_size: int) -> np.ndarray:
    """Current values of the group starting at processing position i1 + i (it may extend past this block)."""
    start = i1 + i
    in_block = w1[:, i:i + group_size]
    if in_block.shape[1] == group_size:
        return in_block
    return np.concatenate([in_block, w[:, start + in_block.shape[1]:start + group_size]], axis=1)


class IntGroupQuantizer:
    """Plain GPTQ: asymmetric INT groups, parameters from the current (error-updated) group weights, float
    dequantization (W4A16). ``scales``/``zeros`` (rows, groups) are filled as groups are reached."""

    def __init__(self, rows: int, in_features: int, group_size: int, bits: int):
        self.maxq = qz.max_code(bits)
        self.group_size = group_size
        self.scales = np.zeros((rows, in_features // group_size), dtype=np.float32)
        self.zeros = np.zeros_like(self.scales)

    def start_group(self, w_group: np.ndarray, group: int) -> None:
        s, z = qz.group_params(w_group, w_group.shape[1], self.maxq)
        self.scales[:, group], self.zeros[:, group] = s[:, 0], z[:, 0]

    def quantize_column(self, w: np.ndarray, column: int) -> tuple[np.ndarray, np.ndarray]:
        g = column // self.group_size
        s, z = self.scales[:, g], self.zeros[:, g]
        q = qz.quantize_int(w, s, z, self.maxq)
        return q, qz.dequantize_int(q, s, z)


class FP8AwareQuantizer:
    """DPQ's column quantizer: q = clip(round((w / s_t) / s_g) + z, 0, maxq), w_hat = s_t * FP8(s_g (q - z)).

    Group parameters are fixed up front from W8 = FP8(clip(W / s_t, -P, P)) of the *original* weights (DPQ step 5).
    The FP8 rounding is the runtime's saturating round-to-nearest-even, so w_hat is exactly what the W4A8 kernel
    multiplies (the authors' code also clips s_g (q - z) to +-P first; the two differ only for a code at the very
    top of a group's range, which can exceed P by at most s_g / 2 and still lies inside R).
    ``tensor_scale`` is per row (rows,) so that linears sharing one input (q/k/v) can be solved together while
    each keeps its own per-tensor scale.

    With ``protective_range`` set (an ablation, not the authors' algorithm), the group parameters are instead
    recomputed when the solver reaches each group, from FP8(clip(W / s_t, -P, P)) of the *error-updated* weights,
    as plain GPTQ does.
    """

    def __init__(self, scales: np.ndarray, zeros: np.ndarray, tensor_scale_per_row: np.ndarray, group_size: int,
                 bits: int, fmt_name: str, *, protective_range: float | None = None, pow2_scales: bool = False):
        self.scales, self.zeros = scales, zeros
        self.s_t = tensor_scale_per_row.astype(np.float32)
        self.group_size = group_size
        self.maxq = qz.max_code(bits)
        self.fmt = qz.fp8_format(fmt_name)
        self.fmt_name = fmt_name
        self.protective_range = protective_range
        self.pow2_scales = pow2_scales

    def start_group(self, w_group: np.ndarray, group: int) -> None:
        if self.protective_range is None:
            return
        p = self.protective_range
        w8 = qz.round_fp8(np.clip(w_group / self.s_t[:, None], -p, p), self.fmt_name)
        s, z = qz.group_params(w8, w8.shape[1], self.maxq, pow2_scales=self.pow2_scales)
        self.scales[:, group], self.zeros[:, group] = s[:, 0], z[:, 0]

    def quantize_column(self, w: np.ndarray, column: int) -> tuple[np.ndarray, np.ndarray]:
        g = column // self.group_size
        s, z = self.scales[:, g], self.zeros[:, g]
        q = np.clip(np.rint((w / self.s_t) / s) + z, 0, self.maxq).astype(np.float32)
        w8 = round_to_format((s * (q - z)).astype(np.float32), self.fmt, saturate=True)
        return q, self.s_t * w8

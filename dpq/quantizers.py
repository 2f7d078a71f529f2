"""Quantization primitives: INT asymmetric group parameters, FP8 per-tensor scales, the INT -> FP8 expansion.

Every function is small and pure, shaped like the DPQ paper / facts file:

* per-tensor scale  s_t = 2^ceil(log2(max|W| / P))             (``tensor_scale``; variants float, hw set)
* protective range  P   = R - R / maxq                          (``protective_range``; R = FP8 max of the chip)
* group parameters  lo = min(0, min g), hi = max(0, max g),
                    s_g = (hi - lo) / maxq, z = round(-lo / s_g) (``group_params``)
* INT codes         q   = clip(round(w / s_g) + z, 0, maxq)     (``quantize_int``)
* INT -> FP8        w8  = FP8(s_g * (q - z))                    (``expand_fp8``: what every W4A8 kernel does)

FP8 rounding always goes through ``sim.formats`` (the hardware's round-to-nearest-even with saturation), so the
quantizer sees exactly the values the emulated matrix engine multiplies.
"""

from __future__ import annotations

import math

import numpy as np

TENSOR_SCALE_MODES = ("pow2", "float", "hw")


def fp8_format(name: str):
    """The ``sim.formats`` FloatFormat called ``name`` (e.g. ``float8_e4m3`` Gaudi 2, ``float8_e4m3fn`` OCP)."""
    from sim.formats import get_format

    return get_format(name)


def fp8_max(name: str) -> float:
    """Largest finite value R of FP8 format ``name`` (240 for float8_e4m3, 448 for float8_e4m3fn)."""
    return float(fp8_format(name).max_finite)


def round_fp8(x: np.ndarray, name: str) -> np.ndarray:
    """x rounded to FP8 format ``name`` (nearest even, saturating), float32, same shape."""
    from sim.formats import round_to_format

    return round_to_format(np.asarray(x, dtype=np.float32), fp8_format(name), saturate=True)


def max_code(bits: int) -> int:
    """maxq = 2^bits - 1 (15 for INT4, 7 for INT3)."""
    return (1 << bits) - 1


def protective_range(fp8_max_value: float, maxq: int) -> float:
    """P = R - R / maxq: the largest |W / s_t| allowed so that the dequantized extremes cannot overflow R.

    The asymmetric grid reaches hi + s_g / 2 at worst (z is rounded), and s_g <= 2P / maxq, so
    P (1 + 1/maxq) <= R.
    """
    return fp8_max_value * (1.0 - 1.0 / maxq)


def tensor_scale(absmax: float, limit: float, mode: str = "pow2", hw_scales: tuple[float, ...] = ()) -> float:
    """Per-tensor scale s_t such that absmax / s_t <= limit.

    Args:
        absmax: max |W| of the tensor (>= 0, finite).
        limit: the target range (P for the INT4 cascade, R for plain FP8 weights).
        mode: ``pow2`` 2^ceil(log2(absmax / limit)) (exact rescaling, the DPQ default); ``float`` absmax / limit;
            ``hw`` the smallest value of ``hw_scales`` that fits (the largest when none fits: the tensor is then
            clipped), e.g. Gaudi 2's hardware scale set.
    Returns:
        float scale > 0 (1.0 for an all-zero tensor).
    """
    if mode not in TENSOR_SCALE_MODES:
        raise ValueError(f"tensor scale mode {mode!r} unknown (expected one of {TENSOR_SCALE_MODES})")
    if not (math.isfinite(absmax) and absmax >= 0):
        raise ValueError(f"absmax must be finite and >= 0, got {absmax}")
    if absmax == 0.0:
        return 1.0
    need = absmax / limit
    if mode == "float":
        return float(np.float32(need))
    if mode == "pow2":
        return math.ldexp(1.0, math.ceil(math.log2(need)))
    if not hw_scales:
        raise ValueError("tensor scale mode 'hw' needs the hardware's scale set (hw_scales)")
    fitting = [s for s in sorted(hw_scales) if s >= need]
    return float(fitting[0] if fitting else max(hw_scales))


def activation_scale(absmax: float, fp8_max_value: float, mode: str = "float") -> float:
    """Static per-tensor activation scale s_x = max|x| / R (``float``) or its power of two rounded up (``pow2``)."""
    if mode not in ("float", "pow2"):
        raise ValueError(f"activation scale mode {mode!r} unknown (expected 'float' or 'pow2')")
    return tensor_scale(absmax, fp8_max_value, mode)


def group_params(w: np.ndarray, group_size: int, maxq: int, *, pow2_scales: bool = False
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric min/max parameters per (row, group of ``group_size`` consecutive columns).

    Args:
        w: float32 (rows, in_features), in_features divisible by group_size.
        maxq: largest code (15 for INT4).
        pow2_scales: round s_g up to a power of two (DPQ-pow2: INT -> FP8 expansion becomes exact).
    Returns:
        scales float32 (rows, in_features // group_size), zeros float32 (same shape, integers in [0, maxq]).
        A group that is all zero gets the range [-1, 1].
    """
    rows, cols = w.shape
    if cols % group_size:
        raise ValueError(f"group_size {group_size} does not divide in_features {cols}")
    g = w.reshape(rows, cols // group_size, group_size)
    lo = np.minimum(g.min(axis=2), 0.0)
    hi = np.maximum(g.max(axis=2), 0.0)
    empty = (lo == 0) & (hi == 0)
    lo = np.where(empty, -1.0, lo)
    hi = np.where(empty, 1.0, hi)
    scale = ((hi - lo) / maxq).astype(np.float32)
    if pow2_scales:
        scale = np.exp2(np.ceil(np.log2(scale))).astype(np.float32)
    zero = np.clip(np.rint(-lo / scale), 0, maxq).astype(np.float32)
    return scale, zero


def quantize_int(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, maxq: int) -> np.ndarray:
    """q = clip(round(w / scale) + zero, 0, maxq) as float32 (broadcasting shapes)."""
    return np.clip(np.rint(w / scale) + zero, 0, maxq).astype(np.float32)


def dequantize_int(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """scale * (q - zero), float32 (the W4A16 dequantization)."""
    return (scale * (q - zero)).astype(np.float32)


def expand_fp8(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, fmt_name: str) -> np.ndarray:
    """w8 = FP8(scale * (q - zero)): the INT -> FP8 expansion of the W4A8 runtime, float32 values of FP8 codes."""
    return round_fp8(scale * (q - zero), fmt_name)


def expand_groups(a: np.ndarray, group_size: int) -> np.ndarray:
    """Repeat per-group values (rows, G) along columns -> (rows, G * group_size)."""
    return np.repeat(a, group_size, axis=1)


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """20 log10(||ref|| / ||ref - approx||) in dB (inf when equal)."""
    ref = np.asarray(reference, dtype=np.float64)
    err = np.linalg.norm(ref - np.asarray(approx, dtype=np.float64))
    return float("inf") if err == 0 else float(20.0 * np.log10(np.linalg.norm(ref) / err))

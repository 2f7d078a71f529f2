"""Bit-exact emulation of FP8 matrix engines: C = A @ B^T as a named chip computes it.

The datapath is data (``sim.datapath.NumericsSpec``, read from the hardware profile); one generic Numba kernel runs
it, and ``fp8_gemm_reference`` is its plain-Python twin (exact rational arithmetic, written from the definitions in
``sim.datapath``) that tests compare against.

Public API::

    fp8_gemm(a, b, *, hw, a_format=None, b_format=None, scale_a=1.0, scale_b=1.0, fast_accum=False, split_k=1,
             out_dtype="float32") -> float32 (M, N)
    fp8_gemm_reference(...)  same arguments, slow plain Python
    resolve_numerics(hw) -> NumericsSpec
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
from numba import njit, prange
from numba.cpython.unsafe.numbers import leading_zeros

from sim import formats
from sim.datapath import NumericsSpec

__all__ = ["fp8_gemm", "fp8_gemm_reference", "resolve_numerics", "prepare_operand"]

# Alignment exponent given to a zero operand: far below any real exponent, so a zero product never sets E and
# its term shifts out entirely. Sums of two stay well inside int32.
ZERO_EXPONENT = -30000
# float32's exponent range: the accumulator and partial sums live in it on every chip modelled.
_F32_MIN_NORMAL_EXP = -126
_F32_MAX_EXP = 127
_POW2_OFFSET = 1074
_POW2 = np.ldexp(1.0, np.arange(-_POW2_OFFSET, 1024)).astype(np.float64)


# ------------------------------------------------------------------------------------------- hardware resolution


def resolve_numerics(hw) -> NumericsSpec:
    """The NumericsSpec of ``hw``: a profile name or path (loaded with sim.profiles.load_profile), a loaded profile
    (anything with ``.numerics``) or a NumericsSpec."""
    if isinstance(hw, NumericsSpec):
        return hw
    if isinstance(hw, str):
        from sim.profiles import load_profile  # the profile loader sits above the numerics layer

        hw = load_profile(hw)
    numerics = getattr(hw, "numerics", None)
    if not isinstance(numerics, NumericsSpec):
        raise TypeError(f"hw: expected a profile name, a HardwareProfile with a numerics section or a NumericsSpec, "
                        f"got {type(hw).__name__}" + (" without numerics" if hasattr(hw, "numerics") else ""))
    return numerics


# ------------------------------------------------------------------------------------------- operand decoding


@dataclass(frozen=True)
class _OperandTables:
    """Per-code decode tables (256 entries) of one format for one chip's alignment."""

    significand: np.ndarray  # int8: signed integer significand s, value = s * 2^(exponent - mantissa_bits)
    exponent: np.ndarray  # int16: alignment exponent (floor(log2|x|), raised to the chip's floor); ZERO_EXPONENT
    valid: np.ndarray  # bool: False for NaN/inf codes


def _operand_tables(fmt: formats.FloatFormat, exponent_floor) -> _OperandTables:
    values = formats.decode_table(fmt).astype(np.float64)
    sig = np.zeros(256, np.int8)
    exp = np.full(256, ZERO_EXPONENT, np.int16)
    valid = np.isfinite(values)
    m = fmt.mantissa_bits
    for code in range(256):
        v = values[code]
        if not valid[code] or v == 0.0:
            continue
        e = math.frexp(abs(v))[1] - 1
        if exponent_floor is not None and e < exponent_floor:
            e = exponent_floor
        s = math.ldexp(abs(v), m - e)
        if s != int(s):  # the chip's exponent floor would need a fractional significand
            raise ValueError(f"format {fmt.name}: value {v!r} has no integer significand at the chip's operand "
                             f"exponent floor {exponent_floor}")
        sig[code] = -int(s) if v < 0 else int(s)
        exp[code] = e
    return _OperandTables(sig, exp, valid)


def prepare_operand(codes: np.ndarray, fmt: formats.FloatFormat, exponent_floor) -> tuple[np.ndarray, np.ndarray]:
    """(significands int8, exponents int16), both the shape of ``codes``: what the kernel reads per element."""
    t = _operand_tables(fmt, exponent_floor)
    return t.significand[codes], t.exponent[codes]


# ------------------------------------------------------------------------------------------- Numba kernel


@njit(cache=True, inline="always")
def _round_scaled(n, lsb_in, p, nearest_even, ftz):
    """Round the exact value n * 2^lsb_in (int64 n, |n| < 2^62) to p significant bits in float32's exponent range.

    Returns (s, lsb, overflow): the result is s * 2^lsb (s signed, |s| < 2^p; 0 for zero); overflow = +-1 when it
    exceeds float32's range (the caller turns that into +-inf).
    """
    if n == 0:
        return np.int64(0), np.int64(0), 0
    neg = n < 0
    mag = -n if neg else n
    top = 63 - leading_zeros(mag) + lsb_in  # floor(log2 |value|)
    lsb = top - (p - 1)
    lsb_min = _F32_MIN_NORMAL_EXP - (p - 1)
    if lsb < lsb_min:
        lsb = lsb_min
    shift = lsb - lsb_in
    if shift > 0:
        if shift > 62:
            q = np.int64(0)
        else:
            q = mag >> shift
            if nearest_even:
                rem = mag - (q << shift)
                half = np.int64(1) << (shift - 1)
                if rem > half or (rem == half and (q & 1) == 1):
                    q += 1
        if q >> p:
            q >>= 1
            lsb += 1
    else:
        q = mag << (-shift)
    if q == 0:
        return np.int64(0), np.int64(0), 0
    top = 63 - leading_zeros(q) + lsb
    if top > _F32_MAX_EXP:
        return np.int64(0), np.int64(0), (-1 if neg else 1)
    if ftz and top < _F32_MIN_NORMAL_EXP:
        return np.int64(0), np.int64(0), 0
    return (-q if neg else q), lsb, 0


@njit(cache=True, inline="always")
def _add_exact_and_round(s, s_lsb, acc, acc_lsb, p, nearest_even, ftz):
    """Round s * 2^s_lsb + acc * 2^acc_lsb (exact sum) once; same result convention as _round_scaled."""
    if acc == 0:
        return _round_scaled(s, s_lsb, p, nearest_even, ftz)
    if s == 0:
        return _round_scaled(acc, acc_lsb, p, nearest_even, ftz)
    s_top = 63 - leading_zeros(s if s > 0 else -s) + s_lsb
    acc_top = 63 - leading_zeros(acc if acc > 0 else -acc) + acc_lsb
    top = s_top if s_top > acc_top else acc_top
    lo = s_lsb if s_lsb < acc_lsb else acc_lsb
    if top - lo <= 60:
        return _round_scaled((s << (s_lsb - lo)) + (acc << (acc_lsb - lo)), lo, p, nearest_even, ftz)
    # Too wide for int64: keep 60 bits below the top; what falls below becomes a sticky half-unit, which rounds the
    # same way as the exact value since the result keeps at most 24 bits.
    base = top - 60
    total = np.int64(0)
    sticky = False
    if s_lsb >= base:
        total += s << (s_lsb - base)
    else:
        sh = base - s_lsb
        if sh > 62:
            total += -1 if s < 0 else 0
            sticky = True
        else:
            total += s >> sh  # floor
            sticky = sticky or (s - ((s >> sh) << sh)) != 0
    if acc_lsb >= base:
        total += acc << (acc_lsb - base)
    else:
        sh = base - acc_lsb
        if sh > 62:
            total += -1 if acc < 0 else 0
            sticky = True
        else:
            total += acc >> sh
            sticky = sticky or (acc - ((acc >> sh) << sh)) != 0
    return _round_scaled(2 * total + (1 if sticky else 0), base - 1, p, nearest_even, ftz)


@njit(cache=True)
def _chain(a_sig, a_exp, b_sig, b_exp, k0, k1, products_per_step, fraction_bits, product_shift, acc_in_alignment,
           acc_bits, nearest_even, ftz, promotion, exponent_floor, pow2):
    """One accumulation chain over K in [k0, k1) for one output; returns its float32 result.

    a_sig/a_exp and b_sig/b_exp are one row of A and of B^T (length K). product_shift = fraction_bits - m_a - m_b.
    """
    acc = np.int64(0)  # accumulator = acc * 2^acc_lsb
    acc_lsb = np.int64(0)
    acc_inf = 0
    promoted = np.float32(0.0)
    acc_shift = fraction_bits - (acc_bits - 1)
    k = k0
    while k < k1:
        k_end = k + products_per_step
        if k_end > k1:
            k_end = k1
        if acc_inf == 0:
            big_e = np.int32(ZERO_EXPONENT)
            acc_top = np.int64(0)
            if acc_in_alignment and acc != 0:
                acc_top = 63 - leading_zeros(acc if acc > 0 else -acc) + acc_lsb
                big_e = np.int32(acc_top)
            for j in range(k, k_end):
                e = np.int32(a_exp[j]) + np.int32(b_exp[j])
                if e > big_e:
                    big_e = e
            if big_e > ZERO_EXPONENT // 2:  # some term is non-zero
                if big_e < exponent_floor:
                    big_e = np.int32(exponent_floor)
                total = np.int64(0)
                for j in range(k, k_end):
                    prod = np.int32(a_sig[j]) * np.int32(b_sig[j])
                    d = big_e - (np.int32(a_exp[j]) + np.int32(b_exp[j]))
                    if d > 31:
                        d = 31
                    mag = ((prod if prod > 0 else -prod) << product_shift) >> d
                    total += -mag if prod < 0 else mag
                grid_lsb = np.int64(big_e) - fraction_bits
                if acc_in_alignment:
                    if acc != 0:
                        d = np.int64(big_e) - acc_top
                        if d > 62:
                            d = 62
                        mag = ((acc if acc > 0 else -acc) << acc_shift) >> d
                        total += -mag if acc < 0 else mag
                    acc, acc_lsb, acc_inf = _round_scaled(total, grid_lsb, acc_bits, nearest_even, ftz)
                else:
                    acc, acc_lsb, acc_inf = _add_exact_and_round(total, grid_lsb, acc, acc_lsb, acc_bits,
                                                                 nearest_even, ftz)
        if promotion > 0 and (k_end - k0) % promotion == 0:
            promoted = promoted + _to_float32(acc, acc_lsb, acc_inf, pow2)
            acc = np.int64(0)
            acc_lsb = np.int64(0)
            acc_inf = 0
        k = k_end
    if promotion > 0:
        return promoted + _to_float32(acc, acc_lsb, acc_inf, pow2)
    return _to_float32(acc, acc_lsb, acc_inf, pow2)


@njit(cache=True, inline="always")
def _to_float32(acc, acc_lsb, acc_inf, pow2):
    if acc_inf != 0:
        return np.float32(np.inf) if acc_inf > 0 else np.float32(-np.inf)
    if acc == 0:
        return np.float32(0.0)
    return np.float32(np.float64(acc) * pow2[acc_lsb + _POW2_OFFSET])  # exact: acc has at most 24 bits


@njit(cache=True, parallel=True)
def _gemm_kernel(a_sig, a_exp, b_sig, b_exp, out, products_per_step, fraction_bits, product_shift, acc_in_alignment,
                 acc_bits, nearest_even, ftz, promotion, exponent_floor, part_bounds, scale, pow2):
    """out[m, n] (float32) = the chip's A[m] . B[n]; rows of K along the last axis; parallel over columns n.

    part_bounds (int64, parts + 1): K is cut into chains [part_bounds[i], part_bounds[i+1]) summed in float32.
    """
    m_rows = a_sig.shape[0]
    n_cols = b_sig.shape[0]
    parts = part_bounds.shape[0] - 1
    for n in prange(n_cols):  # each n owns column n of out: independent outputs, B row reused from cache
        for m in range(m_rows):
            total = np.float32(0.0)
            for part in range(parts):
                value = _chain(a_sig[m], a_exp[m], b_sig[n], b_exp[n], part_bounds[part], part_bounds[part + 1],
                               products_per_step, fraction_bits, product_shift, acc_in_alignment, acc_bits,
                               nearest_even, ftz, promotion, exponent_floor, pow2)
                total = value if part == 0 else total + value
            result = total * scale
            if ftz and abs(result) < np.float32(1.1754943508222875e-38):
                result = np.float32(0.0)
            out[m, n] = result


# ------------------------------------------------------------------------------------------- public entry point


@dataclass(frozen=True)
class _Plan:
    """Validated arguments of one fp8_gemm call."""

    a_format: formats.FloatFormat
    b_format: formats.FloatFormat
    scale: np.float32
    promotion: int
    part_bounds: np.ndarray  # int64 (parts + 1,): K offsets where split-K chains start and end
    out_dtype: str


def _validate(a, b, spec: NumericsSpec, a_format, b_format, scale_a, scale_b, fast_accum, split_k, out_dtype):
    for name, arr in (("a", a), ("b", b)):
        if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or arr.ndim != 2:
            desc = f"{type(arr).__name__} {getattr(arr, 'dtype', '')} with shape {getattr(arr, 'shape', None)}"
            raise TypeError(f"{name}: expected a 2-D numpy uint8 array of FP8 codes, got {desc}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"K mismatch: a is (M, K) = {a.shape}, b is (N, K) = {b.shape} (b holds B transposed)")
    fa = formats.get_format(a_format if a_format is not None else spec.default_fp8_format)
    fb = formats.get_format(b_format if b_format is not None else spec.default_fp8_format)
    if fa.bits != 8 or fb.bits != 8:
        raise ValueError(f"a_format={fa.name!r}, b_format={fb.name!r}: expected FP8 formats")
    for name, s in (("scale_a", scale_a), ("scale_b", scale_b)):
        if isinstance(s, bool) or not isinstance(s, (int, float, np.floating, np.integer)) or not math.isfinite(s):
            raise ValueError(f"{name}: expected a finite number, got {s!r}")
    sa, sb = np.float32(scale_a), np.float32(scale_b)
    if not (np.isfinite(sa) and np.isfinite(sb)):
        raise ValueError(f"scale_a={scale_a!r}, scale_b={scale_b!r}: must be finite in float32")
    if spec.epilogue.scale_rule == "power_of_two_as_bias":
        fa, sa = _fold_scale_into_bias(spec, fa, sa)
        fb, sb = _fold_scale_into_bias(spec, fb, sb)
    spec.check_operand_formats(fa, fb)
    if not isinstance(fast_accum, (bool, np.bool_)):
        raise TypeError(f"fast_accum: expected a bool, got {fast_accum!r}")
    if fast_accum and not spec.datapath.supports_fast_accum:
        raise ValueError("fast_accum=True: this chip has no fast-accumulation mode")
    part_bounds = _split_bounds(split_k, a.shape[1])
    if out_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"out_dtype: expected 'float32' or 'bfloat16', got {out_dtype!r}")
    for name, arr, f in (("a", a, fa), ("b", b, fb)):
        tables = _operand_tables(f, spec.datapath.operand_exponent_floor)
        if arr.size and not tables.valid[arr].all():
            bad = int(arr[~tables.valid[arr]][0])
            raise ValueError(f"{name}: code 0x{bad:02x} is NaN or inf in {f.name}; the chip's handling of special "
                             f"values is not modelled")
    promotion = 0 if fast_accum else spec.datapath.promotion_interval_k
    with np.errstate(over="ignore", under="ignore"):
        scale = np.float32(sa * sb)  # one float32 multiply, as the epilogue does
    if not np.isfinite(scale):
        raise ValueError(f"scale_a * scale_b = {float(sa) * float(sb)!r} overflows float32")
    return _Plan(fa, fb, scale, promotion, part_bounds, out_dtype)


def _split_bounds(split_k, k_len: int) -> np.ndarray:
    """K offsets of the split-K parts: an int gives that many equal parts, a sequence gives the part lengths."""
    if isinstance(split_k, (int, np.integer)) and not isinstance(split_k, bool):
        if split_k < 1:
            raise ValueError(f"split_k: expected a positive integer, got {split_k!r}")
        if k_len % split_k:
            raise ValueError(f"split_k={split_k}: K={k_len} does not split into equal parts; pass the part "
                             f"lengths instead, e.g. split_k=(2816, 2816, 2560)")
        lengths = [k_len // split_k] * int(split_k)
    elif isinstance(split_k, (tuple, list)) and split_k:
        lengths = list(split_k)
        if any(isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1 for x in lengths):
            raise ValueError(f"split_k: part lengths must be positive integers, got {split_k!r}")
        if sum(lengths) != k_len:
            raise ValueError(f"split_k: part lengths {tuple(lengths)} sum to {sum(lengths)}, expected K={k_len}")
    else:
        raise ValueError(f"split_k: expected a positive integer or a sequence of part lengths, got {split_k!r}")
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _fold_scale_into_bias(spec: NumericsSpec, fmt: formats.FloatFormat, scale: np.float32):
    """A power-of-two scale 2^k becomes exponent bias (bias - k) when the chip allows that bias for the flavour."""
    mantissa, exponent = math.frexp(float(scale))
    if mantissa != 0.5:
        return fmt, scale
    k = exponent - 1
    new_bias = fmt.bias - k
    if not spec.allows_bias(fmt.base_name, new_bias):
        return fmt, scale
    return formats.get_format(f"{fmt.base_name}_b{new_bias}"), np.float32(1.0)


def fp8_gemm(a: np.ndarray, b: np.ndarray, *, hw, a_format=None, b_format=None, scale_a=1.0, scale_b=1.0,
             fast_accum: bool = False, split_k: int = 1, out_dtype: str = "float32") -> np.ndarray:
    """C = A @ B^T computed bit for bit as the chip ``hw`` does, accumulator starting at +0.

    Args:
        a: uint8 FP8 codes, shape (M, K).
        b: uint8 FP8 codes, shape (N, K): B transposed, laid out like a weight matrix (out_features x in_features).
        hw: profile name (``"h100"``, ``"gaudi3"``...), a loaded HardwareProfile, or a NumericsSpec.
        a_format, b_format: FP8 format names (``float8_e4m3fn``, ``float8_e4m3_b11``...); default: the chip's
            ``default_fp8_format``.
        scale_a, scale_b: per-tensor scales; out = float32(acc) * float32(scale_a * scale_b). On chips whose
            epilogue rule is ``power_of_two_as_bias`` a power-of-two scale becomes an exponent bias instead.
        fast_accum: Hopper's fast accumulation (no promotion into float32 every promotion_interval_k elements).
        split_k: K is cut into this many equal contiguous parts (or parts of the given lengths, e.g.
            ``(2816, 2816, 2560)``), each a full chain from zero, summed in float32 in order (what cuBLAS does for
            some small-M*N, large-K shapes).
        out_dtype: ``"float32"`` or ``"bfloat16"`` (returned as float32 holding bfloat16 values, rounded to nearest
            even).
    Returns:
        float32 array (M, N).
    Raises:
        TypeError/ValueError for bad arrays, shapes, formats the chip does not take, NaN/inf codes, bad options.
    """
    spec = resolve_numerics(hw)
    plan = _validate(a, b, spec, a_format, b_format, scale_a, scale_b, fast_accum, split_k, out_dtype)
    dp = spec.datapath
    a_sig, a_exp = prepare_operand(a, plan.a_format, dp.operand_exponent_floor)
    b_sig, b_exp = prepare_operand(b, plan.b_format, dp.operand_exponent_floor)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float32)
    product_shift = dp.alignment_fraction_bits - plan.a_format.mantissa_bits - plan.b_format.mantissa_bits
    exponent_floor = dp.alignment_exponent_floor if dp.alignment_exponent_floor is not None else ZERO_EXPONENT
    if out.size:
        _gemm_kernel(a_sig, a_exp, b_sig, b_exp, out, dp.products_per_step, dp.alignment_fraction_bits,
                     product_shift, dp.accumulator_in_alignment, dp.accumulator_significand_bits,
                     dp.step_rounding == "nearest_even", dp.flush_subnormals, plan.promotion, exponent_floor,
                     plan.part_bounds, plan.scale, _POW2)
    if plan.out_dtype == "bfloat16":
        out = formats.round_to_bfloat16(out)
    return out


# ------------------------------------------------------------------------------------------- plain-Python twin


def _floor_log2(x: Fraction) -> int:
    """floor(log2 x) for a positive rational, exactly."""
    e = x.numerator.bit_length() - x.denominator.bit_length()
    if Fraction(2) ** e > x:
        e -= 1
    return e


def _round_fraction(x: Fraction, p: int, nearest_even: bool, ftz: bool) -> Fraction:
    """x rounded to p significant bits in float32's exponent range (gradual underflow unless ftz); +-inf on
    overflow (returned as float)."""
    if x == 0:
        return Fraction(0)
    mag = abs(x)
    lsb = max(_floor_log2(mag) - (p - 1), _F32_MIN_NORMAL_EXP - (p - 1))
    units = mag / Fraction(2) ** lsb
    q = math.floor(units)
    if nearest_even:
        rest = units - q
        if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and q % 2 == 1):
            q += 1
    r = q * Fraction(2) ** lsb
    if r >= Fraction(2) ** (_F32_MAX_EXP + 1):
        return math.inf if x > 0 else -math.inf
    if ftz and 0 < r < Fraction(2) ** _F32_MIN_NORMAL_EXP:
        return Fraction(0)
    return r if x > 0 else -r


def _add_float32(x, y):
    """x + y rounded to nearest even in float32 (inf-aware), both float32 values given as Fractions or floats."""
    if isinstance(x, float) and math.isinf(x):
        return x
    if isinstance(y, float) and math.isinf(y):
        return y
    return _round_fraction(Fraction(x) + Fraction(y), 24, True, False)


def _chain_reference(a_vals, b_vals, dp, promotion: int):
    """One accumulation chain, straight from the definitions in sim.datapath, on exact rationals."""
    def exponent(v: Fraction) -> int:
        e = _floor_log2(abs(v))
        return max(e, dp.operand_exponent_floor) if dp.operand_exponent_floor is not None else e

    acc = Fraction(0)
    promoted = Fraction(0)
    k_len = len(a_vals)
    for start in range(0, k_len, dp.products_per_step):
        if not (isinstance(acc, float) and math.isinf(acc)):
            terms = [(a * b, exponent(a) + exponent(b)) for a, b in
                     zip(a_vals[start:start + dp.products_per_step], b_vals[start:start + dp.products_per_step])
                     if a != 0 and b != 0]
            exps = [e for _, e in terms]
            if dp.accumulator_in_alignment and acc != 0:
                exps.append(_floor_log2(abs(acc)))
            if exps:
                big_e = max(exps)
                if dp.alignment_exponent_floor is not None:
                    big_e = max(big_e, dp.alignment_exponent_floor)
                grid = Fraction(2) ** (big_e - dp.alignment_fraction_bits)

                def truncate(t: Fraction) -> Fraction:
                    q = math.floor(abs(t) / grid)
                    return q * grid if t > 0 else -q * grid

                total = sum((truncate(t) for t, _ in terms), Fraction(0))
                total += truncate(acc) if dp.accumulator_in_alignment else acc
                acc = _round_fraction(total, dp.accumulator_significand_bits, dp.step_rounding == "nearest_even",
                                      dp.flush_subnormals)
        if promotion and (min(start + dp.products_per_step, k_len)) % promotion == 0:
            promoted = _add_float32(promoted, acc)
            acc = Fraction(0)
    if promotion:
        return _add_float32(promoted, acc)
    return acc


def fp8_gemm_reference(a: np.ndarray, b: np.ndarray, *, hw, a_format=None, b_format=None, scale_a=1.0,
                       scale_b=1.0, fast_accum: bool = False, split_k: int = 1,
                       out_dtype: str = "float32") -> np.ndarray:
    """Plain-Python twin of :func:`fp8_gemm` (same arguments and result); slow, for tests on small shapes."""
    spec = resolve_numerics(hw)
    plan = _validate(a, b, spec, a_format, b_format, scale_a, scale_b, fast_accum, split_k, out_dtype)
    dp = spec.datapath
    a_vals = [[Fraction(float(v)) for v in row] for row in formats.decode(a, plan.a_format)]
    b_vals = [[Fraction(float(v)) for v in row] for row in formats.decode(b, plan.b_format)]
    bounds = plan.part_bounds.tolist()
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float32)
    for m, a_row in enumerate(a_vals):
        for n, b_row in enumerate(b_vals):
            total = None
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                sl = slice(lo, hi)
                value = _chain_reference(a_row[sl], b_row[sl], dp, plan.promotion)
                total = value if total is None else _add_float32(total, value)
            if isinstance(total, float) and math.isinf(total):
                result = total * float(plan.scale)
            else:
                result = _round_fraction(Fraction(total) * Fraction(float(plan.scale)), 24, True, False)
            result = float(result)
            if dp.flush_subnormals and abs(result) < 2.0**_F32_MIN_NORMAL_EXP:
                result = 0.0
            out[m, n] = result
    if plan.out_dtype == "bfloat16":
        out = formats.round_to_bfloat16(out)
    return out

"""Bit-exact emulation of FP8 matrix engines: C = A @ B^T as a named chip computes it.

The datapath is data (``sim.datapath.NumericsSpec``, read from the hardware profile); one generic Numba kernel runs
it, and ``fp8_gemm_reference`` is its plain-Python twin (exact rational arithmetic, written from the definitions in
``sim.datapath``) that tests compare against.

How the kernel stays exact and fast: vector lanes are 64 neighbouring outputs (columns of C), so no sum is ever
reassociated; per step, 2^E is the max of the products' exponent powers (a float32 max), each product is an exact
float32, its truncation is int(v * 2^(F - E)), the step sum is an integer, and the new accumulator is rounded by
editing its float64 bit pattern (RZ: clear the dropped bits; RNE: add half an ulp minus one plus the kept lsb, then
clear). Gaudi 2's accumulate-then-round uses an error-free float64 sum and falls back to integer arithmetic in the
rare case where the float64 sum is inexact.

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
from functools import lru_cache

import numpy as np
from numba import get_num_threads, njit, prange, types
from numba.cpython.unsafe.numbers import leading_zeros
from numba.extending import overload

from sim import formats
from sim.datapath import NumericsSpec

__all__ = ["fp8_gemm", "fp8_gemm_reference", "resolve_numerics", "operand_tables", "OperandTables"]

# float32's exponent range: the accumulator and partial sums live in it on every chip modelled.
_F32_MIN_NORMAL_EXP = -126
_F32_MAX_EXP = 127


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
class OperandTables:
    """Per-code tables (256 entries) of one FP8 format as one chip's alignment sees it.

    value: float32 decoded value (0 for NaN/inf codes). power: float32 2^(alignment exponent), the exponent being
    floor(log2|x|) raised to the chip's operand_exponent_floor; 0 for zeros and NaN/inf. valid: False for NaN/inf;
    invalid: its int64 complement, which the kernels sum to detect special codes.
    """

    value: np.ndarray
    power: np.ndarray
    valid: np.ndarray
    invalid: np.ndarray  # int64 0/1 of ~valid, summed by the kernels


@lru_cache(maxsize=None)
def operand_tables(fmt: formats.FloatFormat, exponent_floor) -> OperandTables:
    """Decode tables of ``fmt`` for a chip whose operand exponent floor is ``exponent_floor`` (None = none)."""
    values = formats.decode_table(fmt).astype(np.float64)
    valid = np.isfinite(values)
    power = np.zeros(256, np.float64)
    for code in range(256):
        v = values[code]
        if not valid[code] or v == 0.0:
            continue
        e = math.frexp(abs(v))[1] - 1
        if exponent_floor is not None and e < exponent_floor:
            e = exponent_floor
            significand = math.ldexp(abs(v), fmt.mantissa_bits - e)
            if significand != int(significand):  # the shifted significand would lose bits: not modelled
                raise ValueError(f"format {fmt.name}: value {v!r} loses bits when aligned at the chip's operand "
                                 f"exponent floor {exponent_floor}; not modelled")
        power[code] = math.ldexp(1.0, e)
    value = np.where(valid, values, 0.0).astype(np.float32)
    tables = OperandTables(value, power.astype(np.float32), valid, (~valid).astype(np.int64))
    for arr in (tables.value, tables.power, tables.valid, tables.invalid):
        arr.flags.writeable = False
    return tables


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
def _floor_to_lsb(v, v_lsb, base):
    """v * 2^v_lsb as a count of 2^base units, rounded down, and whether nonzero bits were dropped."""
    if v_lsb >= base:
        return v << (v_lsb - base), False
    sh = base - v_lsb
    if sh > 62:
        return np.int64(-1) if v < 0 else np.int64(0), True
    return v >> sh, (v - ((v >> sh) << sh)) != 0


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
    # same way as the exact value since the result keeps at most 24 bits. (Operands this far apart cannot cancel:
    # the result's top is within one bit of the larger one's, far above the sticky position.)
    base = top - 60
    s_part, s_sticky = _floor_to_lsb(s, s_lsb, base)
    acc_part, acc_sticky = _floor_to_lsb(acc, acc_lsb, base)
    total = s_part + acc_part
    sticky = s_sticky or acc_sticky
    return _round_scaled(2 * total + (1 if sticky else 0), base - 1, p, nearest_even, ftz)


@njit(cache=True)
def _add_and_round_exactly(x, y, p, nearest_even, ftz):
    """x + y (float64 values) rounded once to p bits in float32's range, through integers (the rare case where the
    float64 sum is inexact)."""
    mx, ex = math.frexp(x)
    my, ey = math.frexp(y)
    s, lsb, overflow = _add_exact_and_round(np.int64(math.ldexp(mx, 53)), np.int64(ex - 53),
                                            np.int64(math.ldexp(my, 53)), np.int64(ey - 53), p, nearest_even, ftz)
    if overflow != 0:
        return math.inf if overflow > 0 else -math.inf
    return math.ldexp(np.float64(s), lsb)


@njit(cache=True, parallel=True)
def _decode_rows(codes, lut_val, lut_pow, lut_bad, val, power):
    """val/power (float32, (R, K)) = the decode tables at codes (uint8, (R, K)); returns the NaN/inf count."""
    bad = 0
    for r in prange(codes.shape[0]):
        row = codes[r]
        row_val = val[r]
        row_pow = power[r]
        for k in range(row.shape[0]):
            c = row[k]
            row_val[k] = lut_val[c]
            row_pow[k] = lut_pow[c]
            bad += lut_bad[c]
    return bad


def _truncate_to(x, witness):
    """int(x) (toward zero) in witness's integer dtype; compiled per dtype by the overload below."""
    raise NotImplementedError  # only called from Numba code


@overload(_truncate_to)
def _truncate_to_overload(x, witness):
    if witness.dtype == types.int32:  # the narrow path: 16 lanes per AVX-512 register instead of 8
        return lambda x, witness: np.int32(x)
    return lambda x, witness: np.int64(x)


# Outputs per column chunk (vector lanes) and rows per tile: a chunk of B (P x LANES values per step) is reused
# from L1 by the rows of a tile.
_LANES = 64
_ROWS = 16
_F32_MIN_NORMAL = 2.0**_F32_MIN_NORMAL_EXP


@njit(cache=True, parallel=True)
def _gemm_kernel(a_val, a_pow, b_codes, lut_val, lut_pow, lut_bad, grid_witness,
                 sum_witness, bad_codes, out, products_per_step, fraction_bits,
                 acc_in_alignment, acc_bits, nearest_even, ftz, promotion, floor_pow, part_bounds, scale, workers):
    """out[m, n] = the chip's A[m] . B[n] (float32), for every datapath described by the arguments.

    a_val, a_pow: float32 (M, K): A's values and 2^(alignment exponent) (0 for zeros). b_codes: uint8 (N, K),
    decoded per column chunk through lut_val/lut_pow (float32, 256) the same way; lut_bad (int64, 256) flags NaN/inf
    codes, counted per chunk into bad_codes (int64, chunks). grid_witness: 1-element float32/float64 array holding
    2^fraction_bits; its dtype is the one of the alignment scale 2^(fraction_bits - E). sum_witness: int32/int64
    array whose dtype holds a step's truncated sum. part_bounds: int64 (parts + 1) K offsets of the split-K chains.
    workers: threads; column chunks are dealt round-robin, scratch is allocated once per worker.

    Exactness: FP8 values and their products are exact in float32 (at most 8 significant bits, exponents within
    2^-149..2^127 for biases 0..62); truncating to the grid 2^(E - fraction_bits) is trunc(v * 2^(fraction_bits - E)),
    a power-of-two scaling; the step sum is an integer below 2^(fraction_bits + 2 + log2(steps + 1)), exact in
    sum_witness's dtype (fp8_gemm picks the narrow pair only where that and the scale's range are guaranteed); the
    accumulator (at most 24 bits) lives exactly in float64 and is rounded by editing its float64 bit pattern.
    Lanes are independent outputs (columns); parallel over column chunks only; K runs in hardware order.
    """
    m_rows, k_len = a_val.shape
    n_cols = b_codes.shape[0]
    n_chunks = (n_cols + _LANES - 1) // _LANES
    parts = part_bounds.shape[0] - 1
    two_f_exact = grid_witness[0]  # 2^fraction_bits in the grid's dtype
    inv_two_f = 2.0**-fraction_bits
    drop = 53 - acc_bits
    low_bits = (np.int64(1) << drop) - 1
    half_minus_one = (np.int64(1) << (drop - 1)) - 1
    sub_scale = 2.0 ** (-_F32_MIN_NORMAL_EXP + acc_bits - 1)  # float32-subnormal grid of a p-bit accumulator
    sub_step = 1.0 / sub_scale
    overflow_at = 2.0 ** (_F32_MAX_EXP + 1)
    n_workers = min(workers, n_chunks)
    for worker in prange(n_workers):  # independent column chunks; scratch allocated once per worker
        b_val = np.zeros((k_len, _LANES), np.float32)  # this chunk of B, decoded once for all rows of A
        b_pow = np.zeros((k_len, _LANES), np.float32)
        acc = np.zeros((_ROWS, _LANES), np.float64)
        acc_bits_view = acc.view(np.int64)
        promoted = np.zeros((_ROWS, _LANES), np.float32)
        result = np.zeros((_ROWS, _LANES), np.float32)
        big = np.zeros(_LANES, np.float32)  # 2^E per lane
        grid = np.zeros(_LANES, grid_witness.dtype)  # 2^(fraction_bits - E)
        cell = np.zeros(_LANES, np.float64)
        total = np.zeros(_LANES, sum_witness.dtype)
        work = np.zeros(_LANES, np.float64)
        work_bits = work.view(np.int64)
        spare = np.zeros(_LANES, np.float64)
        spare_bits = spare.view(np.int64)
        for chunk in range(worker, n_chunks, n_workers):
            n0 = chunk * _LANES
            width = min(_LANES, n_cols - n0)
            if width < _LANES:  # lanes past N: zeros, which take no part
                b_val[:, width:] = 0.0
                b_pow[:, width:] = 0.0
            bad = 0
            for kb in range(0, k_len, _LANES):  # transposed to K-major in 64 x 64 blocks that stay in L1
                kb_end = min(kb + _LANES, k_len)
                for lane in range(width):
                    for k in range(kb, kb_end):
                        c = b_codes[n0 + lane, k]
                        b_val[k, lane] = lut_val[c]
                        b_pow[k, lane] = lut_pow[c]
                        bad += lut_bad[c]
            bad_codes[chunk] = bad
            for m0 in range(0, m_rows, _ROWS):
                rows = min(_ROWS, m_rows - m0)
                for part in range(parts):
                    k0 = part_bounds[part]
                    k1 = part_bounds[part + 1]
                    acc[:, :] = 0.0
                    promoted[:, :] = 0.0
                    k = k0
                    while k < k1:
                        k_end = min(k + products_per_step, k1)
                        for i in range(rows):
                            if acc_in_alignment:
                                for lane in range(_LANES):
                                    work_bits[lane] = acc_bits_view[i, lane] & 0x7FF0000000000000  # 2^floor(log2|acc|)
                                for lane in range(_LANES):
                                    big[lane] = np.float32(work[lane])
                            else:
                                for lane in range(_LANES):
                                    big[lane] = 0.0
                            for j in range(k, k_end):
                                for lane in range(_LANES):
                                    v = a_pow[m0 + i, j] * b_pow[j, lane]
                                    big[lane] = v if v > big[lane] else big[lane]
                            for lane in range(_LANES):
                                e = big[lane]
                                e = (e if e > floor_pow else floor_pow) if e > 0 else np.float32(0.0)  # floor E
                                big[lane] = e
                                grid[lane] = two_f_exact / e if e > 0 else 0.0  # exact: powers of 2
                                cell[lane] = np.float64(big[lane]) * inv_two_f  # 2^(E - fraction_bits)
                                total[lane] = 0
                            for j in range(k, k_end):
                                for lane in range(_LANES):
                                    total[lane] += _truncate_to(a_val[m0 + i, j] * b_val[j, lane] * grid[lane],
                                                                sum_witness)
                            if acc_in_alignment:
                                for lane in range(_LANES):
                                    t = np.float64(total[lane]) + np.trunc(acc[i, lane] * np.float64(grid[lane]))
                                    work[lane] = t * cell[lane]  # the step's exact sum
                            else:
                                inexact = False
                                for lane in range(_LANES):
                                    x = np.float64(total[lane]) * cell[lane]
                                    s = acc[i, lane] + x
                                    back = s - acc[i, lane]
                                    err = (acc[i, lane] - (s - back)) + (x - back)  # TwoSum: s + err = acc + x
                                    inexact |= err != 0.0
                                    work[lane] = s
                                    spare[lane] = x
                                if inexact:  # rare: redo those lanes exactly through integers
                                    for lane in range(_LANES):
                                        x = spare[lane]
                                        s = work[lane]
                                        back = s - acc[i, lane]
                                        old = acc[i, lane]
                                        if (old - (s - back)) + (x - back) != 0.0 and not math.isinf(old):
                                            work[lane] = _add_and_round_exactly(old, x, acc_bits, nearest_even, ftz)
                            # Is any lane outside float32's normal range, or already infinite? (Rare; those
                            # lanes take the careful path below.)
                            special = False
                            for lane in range(_LANES):
                                b = work_bits[lane]
                                e = (b >> 52) & 0x7FF
                                old_e = (acc_bits_view[i, lane] >> 52) & 0x7FF
                                special |= ((e < 1023 + _F32_MIN_NORMAL_EXP) & ((b & 0x7FFFFFFFFFFFFFFF) != 0)) | (
                                    e >= 1023 + _F32_MAX_EXP) | (old_e == 0x7FF)
                            if not special:
                                if acc_bits == 24 and nearest_even:  # float32's own rounding
                                    for lane in range(_LANES):
                                        acc[i, lane] = np.float64(np.float32(work[lane]))
                                else:
                                    # Round on the float64 pattern (RZ: drop the bits; RNE: add half an ulp minus
                                    # one plus the kept lsb, then drop).
                                    for lane in range(_LANES):
                                        b = work_bits[lane]
                                        up = (half_minus_one + ((b >> drop) & 1)) if nearest_even else 0
                                        acc_bits_view[i, lane] = (b + up) & ~low_bits
                            else:
                                for lane in range(_LANES):
                                    b = work_bits[lane]
                                    up = (half_minus_one + ((b >> drop) & 1)) if nearest_even else 0
                                    spare_bits[lane] = (b + up) & ~low_bits
                                for lane in range(_LANES):
                                    x = work[lane]
                                    r = spare[lane]
                                    y = x * sub_scale  # the float32-subnormal grid of a p-bit accumulator
                                    y = (np.rint(y) if nearest_even else np.trunc(y)) * sub_step
                                    y = 0.0 if ftz and abs(y) < _F32_MIN_NORMAL else y
                                    r = y if abs(x) < _F32_MIN_NORMAL else r
                                    r = math.copysign(math.inf, x) if abs(r) >= overflow_at else r
                                    acc[i, lane] = acc[i, lane] if math.isinf(acc[i, lane]) else r
                            if promotion > 0 and (k_end - k0) % promotion == 0:
                                for lane in range(_LANES):
                                    promoted[i, lane] = promoted[i, lane] + np.float32(acc[i, lane])
                                    acc[i, lane] = 0.0
                        k = k_end
                    for i in range(rows):
                        for lane in range(_LANES):
                            v = np.float32(acc[i, lane])
                            if promotion > 0:
                                v = promoted[i, lane] + v
                            result[i, lane] = v if part == 0 else result[i, lane] + v
                for i in range(rows):
                    for lane in range(width):
                        r = result[i, lane] * scale
                        if ftz and abs(r) < np.float32(_F32_MIN_NORMAL):
                            r = np.float32(0.0)
                        out[m0 + i, n0 + lane] = r


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
    for f in (fa, fb):
        operand_tables(f, spec.datapath.operand_exponent_floor)  # raises if the chip's alignment cannot hold f
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


def _raise_special_codes(name: str, codes: np.ndarray, fmt: formats.FloatFormat) -> None:
    bad = codes[~formats.decode_table(fmt)[codes].astype(np.float64).__abs__().__lt__(np.inf)]
    raise ValueError(f"{name}: {bad.size} codes (e.g. 0x{int(bad[0]):02x}) are NaN or inf in {fmt.name}; the chip's "
                     f"handling of special values is not modelled")


def _witnesses(dtypes: tuple, fraction_bits: int) -> tuple:
    """(grid witness holding 2^fraction_bits, step-sum witness) of the given dtypes."""
    return (np.array([math.ldexp(1.0, fraction_bits)], dtypes[0]), np.zeros(1, dtypes[1]))


_NARROW = (np.float32, np.int32)
_WIDE = (np.float64, np.int64)


def _step_sum_witness(dp, ta: OperandTables, tb: OperandTables, floor_pow: float) -> tuple:
    """(grid witness, sum witness) for _gemm_kernel: float32 scales and int32 sums (twice the SIMD width) when every
    step's scale 2^(F - E) is a normal float32 and its truncated sum fits 31 bits, else float64 and int64 (always
    exact: the datapath's validation keeps sums below 2^53)."""
    f = dp.alignment_fraction_bits
    sum_bits = f + 2 + (dp.products_per_step + 1).bit_length()
    powers_a, powers_b = ta.power[ta.power > 0], tb.power[tb.power > 0]
    if not (powers_a.size and powers_b.size):
        return _witnesses(_WIDE, f)
    lowest = max(float(powers_a.min()) * float(powers_b.min()), floor_pow)
    if dp.accumulator_in_alignment:  # a non-zero accumulator is at least one grid step of the smallest E
        lowest = lowest * 2.0**-f
    # The largest E is at most float32's 2^128 (an accumulator), so the grid's low end needs f >= 2 only.
    if sum_bits <= 31 and math.ldexp(1.0, f) / lowest < 2.0**127 and f >= 2:
        return _witnesses(_NARROW, f)
    return _witnesses(_WIDE, f)


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
    ta = operand_tables(plan.a_format, dp.operand_exponent_floor)
    tb = operand_tables(plan.b_format, dp.operand_exponent_floor)
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float32)
    floor_pow = 0.0 if dp.alignment_exponent_floor is None else math.ldexp(1.0, dp.alignment_exponent_floor)
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    a_val = np.empty(a.shape, np.float32)
    a_pow = np.empty(a.shape, np.float32)
    bad_a = _decode_rows(a, ta.value, ta.power, ta.invalid, a_val, a_pow) if a.size else 0
    bad_b = np.zeros((b.shape[0] + _LANES - 1) // _LANES, np.int64)
    if out.size and not bad_a:
        _gemm_kernel(a_val, a_pow, b, tb.value, tb.power, tb.invalid,
                     *_step_sum_witness(dp, ta, tb, floor_pow), bad_b, out, dp.products_per_step,
                     dp.alignment_fraction_bits, dp.accumulator_in_alignment, dp.accumulator_significand_bits,
                     dp.step_rounding == "nearest_even", dp.flush_subnormals, plan.promotion, np.float32(floor_pow),
                     plan.part_bounds, plan.scale, get_num_threads())
    for name, codes, fmt, bad in (("a", a, plan.a_format, bad_a), ("b", b, plan.b_format, bad_b.sum())):
        if bad:
            _raise_special_codes(name, codes, fmt)
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
    for name, codes, fmt in (("a", a, plan.a_format), ("b", b, plan.b_format)):
        if codes.size and not np.isfinite(formats.decode(codes, fmt)).all():
            _raise_special_codes(name, codes, fmt)
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

"""Number formats: FP8 flavours (named as in ml_dtypes), their exponent-bias variants, bfloat16/float16, INT4/INT8.

Float formats
-------------
A name is ``<base>`` or ``<base>_b<bias>``; the suffix replaces the base format's exponent bias (hardware such as
Gaudi 2 picks an E4M3 bias from {3, 7, 11, 15} per tensor; Gaudi 3 allows 0..62). Bases:

===================== ===== ==== ===== ============================================================
name                  E/M   bias max   special values
===================== ===== ==== ===== ============================================================
float8_e4m3fn         4/3   7    448   OCP E4M3: no inf; NaN = S.1111.111; -0 exists
float8_e4m3           4/3   7    240   IEEE-like (Gaudi "fp8_143"): inf = S.1111.000, NaN = S.1111.xxx
float8_e4m3fnuz       4/3   8    240   no inf, no -0; NaN = 0x80 only
float8_e4m3b11fnuz    4/3   11   30    as fnuz, bias 11
float8_e5m2           5/2   15   57344 IEEE: inf = S.11111.00, NaN = S.11111.xx
float8_e5m2fnuz       5/2   16   57344 no inf, no -0; NaN = 0x80 only
float8_e3m4           3/4   3    15.5  IEEE-like
float16               5/10  15   65504 IEEE binary16 (16-bit codes)
bfloat16              8/7   127  3.4e38 IEEE-like bfloat16 (16-bit codes)
===================== ===== ==== ===== ============================================================

With a ``_b<bias>`` suffix the special-value rules stay those of the base; the values scale by 2**(base_bias - bias).

Rounding
--------
``encode`` rounds to nearest, ties to even (or stochastically with an explicit seed). Inputs are first converted to
float32 (round to nearest even), exactly as ml_dtypes converts float64 arrays; so ``encode(x, f, saturate=False)``
is bit-for-bit ml_dtypes' ``x.astype(f)``: overflow gives inf where the format has one, NaN otherwise; NaN inputs
give the format's canonical quiet NaN with the input's sign (0x80 for fnuz formats). ``saturate=True`` (what hardware
converters do) maps overflow and +-inf to +-max finite and keeps NaN.

The per-element work runs in Numba kernels (``_encode_kernel``, ``_round_kernel``); ``encode_reference`` is their
slow plain-Python twin, written independently (nearest value in the decode table), for tests.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

import numpy as np
from numba import njit

__all__ = [
    "FloatFormat",
    "IntFormat",
    "FormatLike",
    "get_format",
    "get_int_format",
    "float_format_names",
    "decode",
    "encode",
    "round_to_format",
    "round_to_bfloat16",
    "encode_reference",
    "round_to_int",
]

# Special-value rules, as small ints so the Numba kernels can take them as arguments.
SPECIAL_IEEE = 0  # top exponent reserved: mantissa 0 = inf, otherwise NaN
SPECIAL_FN = 1  # finite + NaN only: top exponent with all-ones mantissa is NaN, no inf
SPECIAL_FNUZ = 2  # finite + NaN only: NaN is the negative-zero code, no -0
_SPECIAL_NAMES = {SPECIAL_IEEE: "ieee", SPECIAL_FN: "fn", SPECIAL_FNUZ: "fnuz"}


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format with sign, ``exponent_bits`` and ``mantissa_bits`` (implicit leading 1).

    Built by :func:`get_format`; every derived field is filled there, so instances are plain immutable records.

    Attributes:
        name: canonical name (``float8_e4m3_b11``; a suffix equal to the base bias is dropped).
        base_name: name without the bias suffix (``float8_e4m3``).
        bits: total code width (8 or 16).
        exponent_bits, mantissa_bits, bias: the layout; value = (-1)^s * 1.f * 2^(E - bias), subnormals at E = 0.
        special_values: ``"ieee"`` (inf and NaN in the top exponent), ``"fn"`` (NaN only, all-ones code) or
            ``"fnuz"`` (NaN only, as the -0 code; no -0).
        has_inf, has_negative_zero: as the special-value rule implies.
        max_finite, min_normal, min_subnormal: positive magnitudes (Python floats, exact in float32).
        max_code: code of +max_finite; also the largest magnitude code that is finite.
        inf_code: code of +inf, or -1 when the format has none.
        nan_code: the canonical quiet NaN code (positive sign) that encode produces.
        sign_mask: the sign bit of a code (0x80 or 0x8000).
        min_exponent: unbiased exponent of the smallest normal binade (1 - bias).
    """

    name: str
    base_name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int
    bias: int
    special_values: str
    has_inf: bool
    has_negative_zero: bool
    max_finite: float
    min_normal: float
    min_subnormal: float
    max_code: int
    inf_code: int
    nan_code: int
    sign_mask: int
    min_exponent: int

    @property
    def code_dtype(self) -> type:
        """numpy dtype of this format's codes (uint8 or uint16)."""
        return np.uint8 if self.bits == 8 else np.uint16

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class IntFormat:
    """An integer code range: ``min_code <= q <= max_code`` (two's complement when ``signed``)."""

    name: str
    bits: int
    signed: bool
    min_code: int
    max_code: int


FormatLike = Union[str, FloatFormat]

# name -> (exponent_bits, mantissa_bits, default bias, special rule, total bits)
_BASES: dict[str, tuple[int, int, int, int, int]] = {
    "float8_e4m3fn": (4, 3, 7, SPECIAL_FN, 8),
    "float8_e4m3": (4, 3, 7, SPECIAL_IEEE, 8),
    "float8_e4m3fnuz": (4, 3, 8, SPECIAL_FNUZ, 8),
    "float8_e4m3b11fnuz": (4, 3, 11, SPECIAL_FNUZ, 8),
    "float8_e5m2": (5, 2, 15, SPECIAL_IEEE, 8),
    "float8_e5m2fnuz": (5, 2, 16, SPECIAL_FNUZ, 8),
    "float8_e3m4": (3, 4, 3, SPECIAL_IEEE, 8),
    "float16": (5, 10, 15, SPECIAL_IEEE, 16),
    "bfloat16": (8, 7, 127, SPECIAL_IEEE, 16),
}
# Bias suffixes are offered for the 8-bit formats. The range keeps every value and every product of two values
# exactly representable in float64 and every value exact in float32 (the emulator relies on both).
MIN_BIAS = 0
MAX_BIAS = 62

_INT_FORMATS: dict[str, IntFormat] = {
    "int4": IntFormat("int4", 4, True, -8, 7),
    "uint4": IntFormat("uint4", 4, False, 0, 15),
    "int8": IntFormat("int8", 8, True, -128, 127),
    "uint8": IntFormat("uint8", 8, False, 0, 255),
}

_NAME_RE = re.compile(r"^(?P<base>[a-z0-9_]+?)(?:_b(?P<bias>\d+))?$")


def float_format_names() -> list[str]:
    """Names of the base float formats (each 8-bit one also takes a ``_b<bias>`` suffix)."""
    return list(_BASES)


def get_int_format(name: str) -> IntFormat:
    """The integer code range called ``name`` (``int4``, ``uint4``, ``int8``, ``uint8``)."""
    try:
        return _INT_FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown integer format {name!r}: expected one of {sorted(_INT_FORMATS)}") from None


def get_format(name: FormatLike) -> FloatFormat:
    """The float format called ``name`` (see the module docstring), or ``name`` itself if it is a FloatFormat.

    Raises:
        ValueError: unknown name, or a bias suffix outside 0..62 or on a 16-bit format.
        TypeError: ``name`` is neither a string nor a FloatFormat.
    """
    if isinstance(name, FloatFormat):
        return name
    if not isinstance(name, str):
        raise TypeError(f"format must be a name (str) or a FloatFormat, got {name!r} ({type(name).__name__})")
    return _format_by_name(name)


@lru_cache(maxsize=None)
def _format_by_name(name: str) -> FloatFormat:
    match = _NAME_RE.match(name)
    base = match.group("base") if match else None
    if base not in _BASES:
        raise ValueError(
            f"unknown float format {name!r}: expected one of {float_format_names()}, optionally with a "
            f"'_b<bias>' suffix (e.g. 'float8_e4m3_b11')"
        )
    exponent_bits, mantissa_bits, default_bias, special, bits = _BASES[base]
    bias = default_bias
    if match.group("bias") is not None:
        bias = int(match.group("bias"))
        if bits != 8:
            raise ValueError(f"format {name!r}: a bias suffix is only allowed on 8-bit formats")
        if not MIN_BIAS <= bias <= MAX_BIAS:
            raise ValueError(f"format {name!r}: bias {bias} outside the supported range {MIN_BIAS}..{MAX_BIAS}")
    return _build_format(base, exponent_bits, mantissa_bits, bias, special, bits)


def _build_format(base: str, e_bits: int, m_bits: int, bias: int, special: int, bits: int) -> FloatFormat:
    name = base if bias == _BASES[base][2] else f"{base}_b{bias}"
    top_exponent = (1 << e_bits) - 1
    sign_mask = 1 << (bits - 1)
    if special == SPECIAL_IEEE:
        max_code = ((top_exponent - 1) << m_bits) | ((1 << m_bits) - 1)
        inf_code = top_exponent << m_bits
        nan_code = (top_exponent << m_bits) | (1 << (m_bits - 1))
    elif special == SPECIAL_FN:
        max_code = (top_exponent << m_bits) | ((1 << m_bits) - 2)
        inf_code = -1
        nan_code = (top_exponent << m_bits) | ((1 << m_bits) - 1)
    else:
        max_code = sign_mask - 1
        inf_code = -1
        nan_code = sign_mask
    max_exponent = (max_code >> m_bits) - bias
    max_significand = (1 << m_bits) | (max_code & ((1 << m_bits) - 1))
    return FloatFormat(
        name=name,
        base_name=base,
        bits=bits,
        exponent_bits=e_bits,
        mantissa_bits=m_bits,
        bias=bias,
        special_values=_SPECIAL_NAMES[special],
        has_inf=special == SPECIAL_IEEE,
        has_negative_zero=special != SPECIAL_FNUZ,
        max_finite=math.ldexp(max_significand, max_exponent - m_bits),
        min_normal=math.ldexp(1.0, 1 - bias),
        min_subnormal=math.ldexp(1.0, 1 - bias - m_bits),
        max_code=max_code,
        inf_code=inf_code,
        nan_code=nan_code,
        sign_mask=sign_mask,
        min_exponent=1 - bias,
    )


# ------------------------------------------------------------------------------------------------ decoding


def _decode_code_py(code: int, fmt: FloatFormat) -> float:
    """Value of one code, straight from the format's definition (plain Python)."""
    m = fmt.mantissa_bits
    negative = bool(code & fmt.sign_mask)
    magnitude = code & (fmt.sign_mask - 1)
    biased_exponent = magnitude >> m
    fraction = magnitude & ((1 << m) - 1)
    top_exponent = (1 << fmt.exponent_bits) - 1
    if fmt.special_values == "fnuz" and code == fmt.sign_mask:
        return math.nan
    if fmt.special_values == "fn" and magnitude == fmt.nan_code:
        return math.nan
    if fmt.special_values == "ieee" and biased_exponent == top_exponent:
        if fraction:
            return math.nan
        return -math.inf if negative else math.inf
    if biased_exponent == 0:
        value = math.ldexp(fraction, 1 - fmt.bias - m)
    else:
        value = math.ldexp((1 << m) | fraction, biased_exponent - fmt.bias - m)
    return -value if negative else value


@lru_cache(maxsize=None)
def decode_table(fmt: FloatFormat) -> np.ndarray:
    """float32 array of ``2**fmt.bits`` values, indexed by code (read-only)."""
    table = np.array([_decode_code_py(c, fmt) for c in range(1 << fmt.bits)], dtype=np.float32)
    table.flags.writeable = False
    return table


def decode(codes: np.ndarray, fmt: FormatLike) -> np.ndarray:
    """Values of FP8 (or 16-bit) codes.

    Args:
        codes: integer array of any shape, each in ``0 .. 2**fmt.bits - 1`` (normally uint8).
        fmt: format name or FloatFormat.
    Returns:
        float32 array, same shape; NaN and inf where the codes are specials.
    """
    f = get_format(fmt)
    arr = np.asarray(codes)
    if arr.dtype.kind not in "ui":
        raise TypeError(f"decode: codes must be an integer array (uint8 for FP8), got dtype {arr.dtype}")
    if arr.dtype != np.uint8 and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= (1 << f.bits):
            raise ValueError(f"decode: codes must lie in 0..{(1 << f.bits) - 1} for {f.name}, got {lo}..{hi}")
    return decode_table(f)[arr]


# ------------------------------------------------------------------------------------------------ encoding


@njit(cache=True)
def _quantize_magnitude(a, m_bits, min_exponent, stochastic, u):
    """Magnitude code of ``a`` (finite, > 0, float64) rounded to ``m_bits`` fraction bits.

    The code is ``(e - min_exponent) * 2**m + n`` where e = max(floor(log2 a), min_exponent) and n = a / 2^(e-m)
    rounded: this is linear across binades and the subnormal range, so a carry into the next binade is just n + 1.
    The caller compares the result with the format's largest finite code to detect overflow.
    """
    _, exp2 = math.frexp(a)
    e = exp2 - 1
    if e < min_exponent:
        e = min_exponent
    t = math.ldexp(a, m_bits - e)  # exact: a power-of-two scaling within float64's range
    n = math.floor(t)
    rest = t - n
    if stochastic:
        if u < rest:
            n += 1
    elif rest > 0.5 or (rest == 0.5 and (n % 2.0) == 1.0):
        n += 1
    return ((e - min_exponent) << m_bits) + np.int64(n)


@njit(cache=True)
def _encode_kernel(x, x_bits, u, out, m_bits, min_exponent, max_code, inf_code, nan_code, sign_mask, fnuz, saturate,
                   stochastic, subnormal_adder, subnormal_code_scale):
    """Codes of float32 ``x`` (1-D; ``x_bits`` is the same memory as uint32) into ``out`` (uint8/uint16).

    Nearest-even rounding works on the float32 bit pattern: in the format's normal range the code is the float32
    pattern rounded at bit 23 - m and rebased (this is linear, so a carry into the next binade comes for free); below
    min normal one float32 add of ``subnormal_adder`` (= 2^(min_exponent - m + 23), whose ulp is the format's
    subnormal step) rounds to the subnormal grid. ``u`` holds stochastic thresholds.
    """
    shift = 23 - m_bits
    half_minus_one = (1 << (shift - 1)) - 1
    min_normal_bits = (127 + min_exponent) << 23
    code_offset = (126 + min_exponent) << m_bits
    for i in range(x.shape[0]):
        b = np.int64(x_bits[i])
        negative = b >= 0x80000000
        b_abs = b & 0x7FFFFFFF
        if b_abs > 0x7F800000:
            out[i] = nan_code if (fnuz or not negative) else nan_code | sign_mask
            continue
        if b_abs == 0x7F800000:
            mag = max_code + 1
        elif stochastic:
            mag = _quantize_magnitude(abs(np.float64(x[i])), m_bits, min_exponent, True, u[i])
        elif b_abs >= min_normal_bits:
            mag = ((b_abs + half_minus_one + ((b_abs >> shift) & 1)) >> shift) - code_offset
        else:
            r = (abs(x[i]) + subnormal_adder) - subnormal_adder
            mag = np.int64(np.float64(r) * subnormal_code_scale)
        if mag > max_code:
            if saturate:
                mag = max_code
            elif inf_code >= 0:
                mag = inf_code
            else:
                out[i] = nan_code if (fnuz or not negative) else nan_code | sign_mask
                continue
        if mag == 0 and fnuz:
            out[i] = 0
        elif negative:
            out[i] = mag | sign_mask
        else:
            out[i] = mag


@njit(cache=True)
def _round_kernel(x, out, m_bits, min_exponent, max_code, max_finite_bits, overflow_bits, fnuz, subnormal_adder):
    """float32 ``x`` (1-D) rounded to nearest even in the format, into float32 ``out`` (1-D).

    Same arithmetic as ``_encode_kernel``, but the result is written back as a float32 pattern; ``overflow_bits``
    is the pattern an overflow or +-inf gives (max finite when saturating, else inf or NaN).
    """
    x_bits = x.view(np.uint32)
    out_bits = out.view(np.uint32)
    shift = 23 - m_bits
    half_minus_one = (1 << (shift - 1)) - 1
    keep_mask = 0x7FFFFFFF ^ ((1 << shift) - 1)
    min_normal_bits = (127 + min_exponent) << 23
    for i in range(x.shape[0]):
        b = np.int64(x_bits[i])
        sign = b & 0x80000000
        b_abs = b & 0x7FFFFFFF
        if b_abs > 0x7F800000:
            out_bits[i] = x_bits[i]
        elif b_abs >= min_normal_bits:
            r = (b_abs + half_minus_one + ((b_abs >> shift) & 1)) & keep_mask
            if r > max_finite_bits:
                r = overflow_bits
            out_bits[i] = r | sign
        else:
            r32 = (abs(x[i]) + subnormal_adder) - subnormal_adder
            if sign and not (fnuz and r32 == 0):
                out[i] = -r32
            else:
                out[i] = r32


def _as_float32(x, what: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind in "fiub":
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes +-inf, then overflows as such
            return np.asarray(arr, dtype=np.float32, order="C")
    if arr.dtype.kind == "V":  # ml_dtypes scalars (bfloat16, float8_*) convert to float32 exactly
        try:
            return np.asarray(arr.astype(np.float32), order="C")
        except (TypeError, ValueError):
            pass
    raise TypeError(f"{what}: x must be a real numeric array, got dtype {arr.dtype}")


def _stochastic_thresholds(n: int, seed) -> np.ndarray:
    if seed is None:
        raise ValueError("encode: rounding='stochastic' needs an explicit seed (int or numpy.random.Generator)")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    # Thresholds on a 2^-32 grid: rounding up iff threshold < discarded fraction, i.e. with that probability.
    return rng.integers(0, 1 << 32, size=n, dtype=np.uint64).astype(np.float64) * 2.0**-32


def encode(x, fmt: FormatLike, *, saturate: bool = True, rounding: str = "nearest", seed=None) -> np.ndarray:
    """Codes of ``x`` in format ``fmt``.

    Args:
        x: real array of any shape (converted to float32 first, round to nearest even, as ml_dtypes does).
        fmt: format name or FloatFormat.
        saturate: True: overflow and +-inf give +-max finite (hardware converters). False: overflow gives inf if the
            format has it, else NaN (exactly ml_dtypes' cast).
        rounding: ``"nearest"`` (ties to even) or ``"stochastic"`` (round up with probability equal to the discarded
            fraction of an ulp, resolved on a 2^-32 grid; needs ``seed``).
        seed: int or numpy.random.Generator for stochastic rounding; same seed, same codes.
    Returns:
        uint8 array (uint16 for 16-bit formats), same shape as x.
    """
    f = get_format(fmt)
    if rounding not in ("nearest", "stochastic"):
        raise ValueError(f"encode: rounding must be 'nearest' or 'stochastic', got {rounding!r}")
    x32 = _as_float32(x, "encode")
    flat = x32.reshape(-1)
    out = np.empty(flat.shape, dtype=f.code_dtype)
    stochastic = rounding == "stochastic"
    u = _stochastic_thresholds(flat.size, seed) if stochastic else _EMPTY_F64
    _encode_kernel(flat, flat.view(np.uint32), u, out, f.mantissa_bits, f.min_exponent, f.max_code, f.inf_code,
                   f.nan_code, f.sign_mask, f.special_values == "fnuz", bool(saturate), stochastic,
                   np.float32(math.ldexp(1.0, f.min_exponent - f.mantissa_bits + 23)),
                   math.ldexp(1.0, f.mantissa_bits - f.min_exponent))
    return out.reshape(x32.shape)


_EMPTY_F64 = np.zeros(0, dtype=np.float64)


_ROUND_ARGS: dict = {}  # (format or name, saturate) -> kernel arguments; the hot path's only lookup


@lru_cache(maxsize=None)
def _round_args(fmt: FloatFormat, saturate: bool) -> tuple:
    max_finite_bits = int(np.array(fmt.max_finite, dtype=np.float32).view(np.uint32))
    if saturate:
        overflow_bits = max_finite_bits
    elif fmt.has_inf:
        overflow_bits = 0x7F800000
    else:
        overflow_bits = 0x7FC00000  # quiet NaN
    return (fmt.mantissa_bits, fmt.min_exponent, fmt.max_code, max_finite_bits, overflow_bits,
            fmt.special_values == "fnuz", np.float32(math.ldexp(1.0, fmt.min_exponent - fmt.mantissa_bits + 23)))


def round_to_format(x, fmt: FormatLike, *, saturate: bool = True) -> np.ndarray:
    """``decode(encode(x, fmt, saturate=saturate), fmt)`` in one pass: float32 values of x rounded into the format.

    Built for hot loops (a few microseconds per call on small vectors). Round to nearest even; -0 is kept
    (except in fnuz formats); NaN stays NaN.

    Args:
        x: real array of any shape (float32 preferred; anything else is converted to float32 first).
        fmt: format name or FloatFormat.
        saturate: as in :func:`encode`.
    Returns:
        float32 array, same shape as x.
    """
    try:
        args = _ROUND_ARGS.get((fmt, saturate))
    except TypeError:  # unhashable fmt: let get_format say what was expected
        args = _round_args(get_format(fmt), bool(saturate))
    if args is None:
        args = _ROUND_ARGS[(fmt, saturate)] = _round_args(get_format(fmt), bool(saturate))
    if type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 1 and x.flags.c_contiguous:
        out = np.empty_like(x)
        _round_kernel(x, out, *args)
        return out
    x32 = _as_float32(x, "round_to_format")
    out = np.empty(x32.shape, dtype=np.float32)
    _round_kernel(x32.reshape(-1), out.reshape(-1), *args)
    return out


def round_to_bfloat16(x) -> np.ndarray:
    """float32 array holding ``x`` rounded to bfloat16 (nearest even; overflow to inf; NaN kept), same shape."""
    return round_to_format(x, _BFLOAT16, saturate=False)


_BFLOAT16 = get_format("bfloat16")


def round_to_int(x, fmt: Union[str, IntFormat]) -> np.ndarray:
    """``x`` rounded to nearest even and clipped to the integer format's code range; float32, same shape.

    NaN inputs are rejected (ValueError): an integer code has no NaN.
    """
    f = fmt if isinstance(fmt, IntFormat) else get_int_format(fmt)
    x32 = _as_float32(x, "round_to_int")
    if np.isnan(x32).any():
        raise ValueError(f"round_to_int: x contains NaN; {f.name} has no NaN")
    return np.clip(np.rint(x32), f.min_code, f.max_code).astype(np.float32)


# ------------------------------------------------------------------------------------------------ reference twin


def encode_reference(x, fmt: FormatLike, *, saturate: bool = True, rounding: str = "nearest",
                     seed=None) -> np.ndarray:
    """Plain-Python twin of :func:`encode` (slow; for tests), written from the definition instead of bit tricks.

    Each float32 value is placed between its two nearest representable neighbours found in the sorted decode
    table (extended by one virtual step past max finite, to decide overflow like an unbounded exponent would);
    ties go to the even code. Stochastic rounding draws the same thresholds from the same seed as :func:`encode`.
    """
    f = get_format(fmt)
    x32 = _as_float32(x, "encode_reference")
    flat = x32.reshape(-1)
    thresholds = _stochastic_thresholds(flat.size, seed) if rounding == "stochastic" else None
    table = decode_table(f).astype(np.float64)
    positive = [(float(table[c]), c) for c in range(f.sign_mask) if np.isfinite(table[c]) and table[c] >= 0]
    positive.sort()
    m = f.mantissa_bits
    top_exp = math.floor(math.log2(f.max_finite))
    beyond_max = f.max_finite + math.ldexp(1.0, top_exp - m)  # the next value an unbounded exponent would have
    values = [v for v, _ in positive] + [beyond_max]
    codes = [c for _, c in positive] + [f.max_code + 1]
    out = np.empty(flat.shape, dtype=f.code_dtype)
    for i, xv in enumerate(flat.tolist()):
        negative = math.copysign(1.0, xv) < 0
        if math.isnan(xv):
            out[i] = f.nan_code if f.special_values == "fnuz" or not negative else f.nan_code | f.sign_mask
            continue
        a = abs(xv)
        if math.isinf(a):
            code = f.max_code + 1
        else:
            # Largest table value <= a (bisect by hand to keep this obviously independent of the kernel).
            lo, hi = 0, len(values) - 1
            if a >= values[-1]:
                lo = hi
            else:
                while hi - lo > 1:
                    mid = (lo + hi) // 2
                    if values[mid] <= a:
                        lo = mid
                    else:
                        hi = mid
            if a == values[lo] or lo == len(values) - 1:
                code = codes[lo] if a == values[lo] else f.max_code + 1
            else:
                below, above = values[lo], values[lo + 1]
                frac = (a - below) / (above - below)
                if thresholds is not None:
                    up = thresholds[i] < frac
                elif a - below != above - a:
                    up = a - below > above - a
                else:
                    up = codes[lo] % 2 == 1
                code = codes[lo + 1] if up else codes[lo]
        if code > f.max_code:
            if saturate:
                code = f.max_code
            elif f.has_inf:
                code = f.inf_code
            else:
                out[i] = f.nan_code if f.special_values == "fnuz" or not negative else f.nan_code | f.sign_mask
                continue
        if code == 0 and f.special_values == "fnuz":
            out[i] = 0
        else:
            out[i] = code | f.sign_mask if negative else code
    return out.reshape(x32.shape)

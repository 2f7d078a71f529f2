"""The numerics section of a hardware profile: which FP8 formats a matrix engine takes and how it adds products.

A matrix engine's FP8 datapath is a handful of named facts (the MMA-Sim view); ``sim.mac`` runs one generic kernel
parameterised by them. Per step of ``products_per_step`` products along K:

1. products are exact; each product's alignment exponent is the sum of its operands' exponents floor(log2|x|)
   (raised to ``operand_exponent_floor`` where the chip does that); zero products take no part;
2. E = max of those exponents (and of the accumulator's, when ``accumulator_in_alignment``), raised to
   ``alignment_exponent_floor`` where set;
3. every term in the alignment is truncated toward zero to a multiple of 2^(E - ``alignment_fraction_bits``);
4. the truncated terms are summed exactly (plus the exact accumulator when it is *not* in the alignment) and rounded
   once to ``accumulator_significand_bits`` bits with ``step_rounding``, in float32's exponent range
   (float32 subnormals flushed to zero when ``flush_subnormals``): that is the new accumulator;
5. with ``promotion_interval_k`` > 0 (and fast accumulation off), every that many elements of K the accumulator is
   added into a float32 register (round to nearest even) and restarts from zero;
6. epilogue: out = float32(acc) x float32(scale_a x scale_b), one float32 multiply; bfloat16 outputs round once more.

YAML shape (below the ``# === numerics ===`` marker of hw_profiles/<chip>.yaml)::

    numerics:
      default_fp8_format: float8_e4m3fn
      operand_formats:                  # flavour -> allowed exponent biases
        float8_e4m3fn: {biases: [7]}
        float8_e5m2: {biases: [15]}     # or {bias_min: 0, bias_max: 62}
      operands_same_flavour: false
      unsupported_format_pairs: [[float8_e5m2, float8_e5m2]]
      datapath: {products_per_step: 32, ...}      # every key of DatapathSpec
      epilogue: {...}                              # every key of EpilogueSpec
      provenance: {datapath: "...", operand_formats: "...", epilogue: "..."}

Public API: ``NumericsSpec``, ``DatapathSpec``, ``EpilogueSpec``, ``parse_numerics(mapping, *, source)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from sim import formats
from sim.errors import ConfigError, describe_value

__all__ = ["NumericsSpec", "DatapathSpec", "EpilogueSpec", "parse_numerics", "ROUNDING_MODES"]

ROUNDING_MODES = ("toward_zero", "nearest_even")
TERM_ROUNDING_MODES = ("toward_zero",)
SCALE_RULES = ("float32_multiply", "power_of_two_as_bias")
SPLIT_K_SUMS = ("float32_in_order",)

# The accumulator and every partial result live in float32's exponent range on all chips modelled so far.
_INT_LIMIT = 1 << 20


def _f(help_text: str, **limits) -> Any:
    return field(metadata={"help": help_text, **limits})


@dataclass(frozen=True)
class DatapathSpec:
    """How one matrix-engine step adds FP8 products into the accumulator (see the module docstring)."""

    products_per_step: int = _f("products consumed per step along K", lo=1, hi=1024)
    alignment_fraction_bits: int = _f("fraction bits kept below the step's max exponent E when terms are aligned",
                                      lo=1, hi=40)
    term_rounding: str = _f("how aligned terms drop bits below 2^(E - alignment_fraction_bits)",
                            choices=TERM_ROUNDING_MODES)
    accumulator_in_alignment: bool = _f("the running accumulator is a term of the step's alignment (else it is "
                                        "added exactly after the products are summed)")
    accumulator_significand_bits: int = _f("significand bits (with the leading one) of the step result",
                                           lo=2, hi=24)
    step_rounding: str = _f("rounding of the step result to accumulator_significand_bits", choices=ROUNDING_MODES)
    flush_subnormals: bool = _f("float32-subnormal accumulators and outputs become zero")
    promotion_interval_k: int = _f("elements of K after which the accumulator is added into a float32 register "
                                   "(round to nearest even) and reset; 0 = never", lo=0, hi=_INT_LIMIT)
    supports_fast_accum: bool = _f("the chip has a fast-accumulation mode (no promotion, one chain over K)")
    operand_exponent_floor: int | None = _f("an operand's alignment exponent is at least this (null = none)",
                                            lo=-200, hi=0, optional=True)
    alignment_exponent_floor: int | None = _f("the step's E is at least this (null = none)", lo=-300, hi=0,
                                              optional=True)
    split_k_sum: str = _f("how split-K partial results are combined", choices=SPLIT_K_SUMS)


@dataclass(frozen=True)
class EpilogueSpec:
    """What happens to the accumulator after the K loop."""

    scale_rule: str = _f("float32_multiply: out = f32(acc) * f32(scale_a * scale_b); power_of_two_as_bias: a "
                         "power-of-two operand scale becomes an exponent bias of that operand when the chip allows "
                         "it, the rest is a float32 multiply", choices=SCALE_RULES)


@dataclass(frozen=True)
class NumericsSpec:
    """A chip's FP8 numerics: formats it accepts and its matrix-engine datapath.

    Attributes:
        default_fp8_format: the FP8 format the chip uses by default (e.g. ``float8_e4m3`` on Gaudi 2, max 240).
        operand_biases: flavour (base format name) -> allowed exponent biases (frozenset of ints).
        operands_same_flavour: both operands must share a flavour (Gaudi 2).
        unsupported_format_pairs: (a flavour, b flavour) pairs the engine refuses.
        datapath, epilogue: see DatapathSpec / EpilogueSpec.
        provenance: dotted key -> where the fact comes from.
    """

    default_fp8_format: str
    operand_biases: Mapping[str, frozenset]
    operands_same_flavour: bool
    unsupported_format_pairs: frozenset
    datapath: DatapathSpec
    epilogue: EpilogueSpec
    provenance: Mapping[str, str]

    def check_operand_formats(self, a_format: formats.FloatFormat, b_format: formats.FloatFormat) -> None:
        """Raise ValueError if this chip cannot multiply an ``a_format`` operand by a ``b_format`` operand."""
        for which, f in (("a_format", a_format), ("b_format", b_format)):
            biases = self.operand_biases.get(f.base_name)
            if biases is None:
                raise ValueError(f"{which}={f.name!r}: the chip takes FP8 operands in "
                                 f"{sorted(self.operand_biases)} only")
            if f.bias not in biases:
                raise ValueError(f"{which}={f.name!r}: exponent bias {f.bias} not supported for {f.base_name} "
                                 f"(allowed: {_describe_biases(biases)})")
        if self.operands_same_flavour and a_format.base_name != b_format.base_name:
            raise ValueError(f"a_format={a_format.name!r}, b_format={b_format.name!r}: this chip needs both operands "
                             f"in the same FP8 flavour")
        if (a_format.base_name, b_format.base_name) in self.unsupported_format_pairs:
            raise ValueError(f"a_format={a_format.name!r} x b_format={b_format.name!r}: this pair of flavours is not "
                             f"supported by the chip's matrix engine")

    def allows_bias(self, base_name: str, bias: int) -> bool:
        return bias in self.operand_biases.get(base_name, ())


def _describe_biases(biases) -> str:
    b = sorted(biases)
    if len(b) > 4 and b == list(range(b[0], b[-1] + 1)):
        return f"{b[0]}..{b[-1]}"
    return str(b)


# ---------------------------------------------------------------------------------------------- parsing

_TOP_KEYS = ("default_fp8_format", "operand_formats", "operands_same_flavour", "unsupported_format_pairs",
             "datapath", "epilogue", "provenance")


def parse_numerics(mapping: Mapping, *, source: str) -> NumericsSpec:
    """Validate a profile's ``numerics`` mapping (as yaml.safe_load gives it) into a NumericsSpec.

    Raises:
        ConfigError(source, "numerics.<key>", message) for unknown or missing keys, wrong types (a YAML string where
        a number belongs, a bool where an int belongs), values out of range, unknown formats, missing provenance.
    """
    where = "numerics"
    if not isinstance(mapping, Mapping):
        raise ConfigError(source, where, f"value {describe_value(mapping)}: expected a mapping")
    _check_keys(mapping, _TOP_KEYS, _TOP_KEYS, source, where)

    operand_biases = _parse_operand_formats(mapping["operand_formats"], source, f"{where}.operand_formats")
    default = mapping["default_fp8_format"]
    key = f"{where}.default_fp8_format"
    if not isinstance(default, str):
        raise ConfigError(source, key, f"value {describe_value(default)}: expected a format name")
    try:
        default_fmt = formats.get_format(default)
    except ValueError as exc:
        raise ConfigError(source, key, str(exc)) from None
    if default_fmt.bits != 8 or not (default_fmt.base_name in operand_biases
                                     and default_fmt.bias in operand_biases[default_fmt.base_name]):
        raise ConfigError(source, key, f"value {default!r}: must be one of the operand_formats with an allowed bias")

    same = _bool(mapping["operands_same_flavour"], source, f"{where}.operands_same_flavour")
    pairs = _parse_pairs(mapping["unsupported_format_pairs"], operand_biases, source,
                         f"{where}.unsupported_format_pairs")
    datapath = _parse_dataclass(DatapathSpec, mapping["datapath"], source, f"{where}.datapath")
    epilogue = _parse_dataclass(EpilogueSpec, mapping["epilogue"], source, f"{where}.epilogue")
    _check_datapath_consistency(datapath, operand_biases, source, f"{where}.datapath")
    provenance = _parse_provenance(mapping["provenance"], source, f"{where}.provenance")
    return NumericsSpec(default_fp8_format=default_fmt.name, operand_biases=operand_biases,
                        operands_same_flavour=same, unsupported_format_pairs=pairs, datapath=datapath,
                        epilogue=epilogue, provenance=provenance)


def _check_keys(mapping: Mapping, allowed, required, source: str, where: str) -> None:
    for k in mapping:
        if k not in allowed:
            raise ConfigError(source, f"{where}.{k}", f"unknown key; expected one of {sorted(allowed)}")
    for k in required:
        if k not in mapping:
            raise ConfigError(source, f"{where}.{k}", "missing")


def _bool(value, source: str, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(source, key, f"value {describe_value(value)}: expected true or false")
    return value


def _int(value, source: str, key: str, lo=None, hi=None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        hint = " (write integers without quotes, exponent or decimal point)" if isinstance(value, (str, float)) else ""
        raise ConfigError(source, key, f"value {describe_value(value)}: expected an integer{hint}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(source, key, f"value {value}: expected an integer in {lo}..{hi}")
    return value


def _parse_operand_formats(value, source: str, where: str) -> dict:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(source, where, f"value {describe_value(value)}: expected a non-empty mapping "
                                         f"flavour -> {{biases: [...]}} or {{bias_min: .., bias_max: ..}}")
    out = {}
    for name, rule in value.items():
        key = f"{where}.{name}"
        try:
            fmt = formats.get_format(name) if isinstance(name, str) else None
        except ValueError as exc:
            raise ConfigError(source, key, str(exc)) from None
        if fmt is None or fmt.bits != 8 or fmt.name != fmt.base_name:
            raise ConfigError(source, key, f"expected an 8-bit float format name without a bias suffix, one of "
                                           f"{[n for n in formats.float_format_names() if n.startswith('float8')]}")
        if not isinstance(rule, Mapping):
            raise ConfigError(source, key, f"value {describe_value(rule)}: expected {{biases: [...]}} or "
                                           f"{{bias_min: .., bias_max: ..}}")
        if set(rule) == {"biases"}:
            items = rule["biases"]
            if not isinstance(items, list) or not items:
                raise ConfigError(source, f"{key}.biases", f"value {describe_value(items)}: expected a non-empty "
                                                           f"list of integers")
            biases = frozenset(_int(b, source, f"{key}.biases", formats.MIN_BIAS, formats.MAX_BIAS) for b in items)
        elif set(rule) == {"bias_min", "bias_max"}:
            lo = _int(rule["bias_min"], source, f"{key}.bias_min", formats.MIN_BIAS, formats.MAX_BIAS)
            hi = _int(rule["bias_max"], source, f"{key}.bias_max", formats.MIN_BIAS, formats.MAX_BIAS)
            if hi < lo:
                raise ConfigError(source, f"{key}.bias_max", f"value {hi}: expected >= bias_min ({lo})")
            biases = frozenset(range(lo, hi + 1))
        else:
            raise ConfigError(source, key, f"keys {sorted(rule)}: expected exactly 'biases' or exactly "
                                           f"'bias_min' and 'bias_max'")
        out[fmt.name] = biases
    return out


def _parse_pairs(value, operand_biases, source: str, where: str) -> frozenset:
    if not isinstance(value, list):
        raise ConfigError(source, where, f"value {describe_value(value)}: expected a list of [a, b] flavour pairs")
    pairs = set()
    for i, pair in enumerate(value):
        key = f"{where}[{i}]"
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(p, str) and p in operand_biases for p in pair)):
            raise ConfigError(source, key, f"value {describe_value(pair)}: expected [a, b] with both flavours "
                                           f"among operand_formats {sorted(operand_biases)}")
        pairs.add((pair[0], pair[1]))
    return frozenset(pairs)


def _parse_dataclass(cls, value, source: str, where: str):
    if not isinstance(value, Mapping):
        raise ConfigError(source, where, f"value {describe_value(value)}: expected a mapping")
    fields_ = dataclasses.fields(cls)
    names = [f.name for f in fields_]
    _check_keys(value, names, names, source, where)
    kwargs = {}
    for f in fields_:
        meta = f.metadata
        key = f"{where}.{f.name}"
        v = value[f.name]
        if meta.get("optional") and v is None:
            kwargs[f.name] = None
        elif "choices" in meta:
            if not isinstance(v, str) or v not in meta["choices"]:
                raise ConfigError(source, key, f"value {describe_value(v)}: expected one of {list(meta['choices'])}")
            kwargs[f.name] = v
        elif f.type == "bool":
            kwargs[f.name] = _bool(v, source, key)
        else:
            kwargs[f.name] = _int(v, source, key, meta.get("lo"), meta.get("hi"))
    return cls(**kwargs)


def _check_datapath_consistency(dp: DatapathSpec, operand_biases, source: str, where: str) -> None:
    # Every aligned product (significand < 2^(m_a + m_b + 2)) must keep its leading bits at the grid, and the
    # accumulator's significand must fit the alignment: the kernel works on integers of these widths.
    widest = max(2 * formats.get_format(name).mantissa_bits for name in operand_biases)
    if dp.alignment_fraction_bits < widest:
        raise ConfigError(source, f"{where}.alignment_fraction_bits",
                          f"value {dp.alignment_fraction_bits}: must be at least {widest} (the widest product's "
                          f"fraction bits) for these operand formats")
    if dp.accumulator_in_alignment and dp.accumulator_significand_bits - 1 > dp.alignment_fraction_bits:
        raise ConfigError(source, f"{where}.accumulator_significand_bits",
                          f"value {dp.accumulator_significand_bits}: with the accumulator in the alignment it may "
                          f"have at most alignment_fraction_bits + 1 = {dp.alignment_fraction_bits + 1} bits")
    if dp.alignment_fraction_bits + 2 + (dp.products_per_step + 1).bit_length() > 53:
        raise ConfigError(source, f"{where}.alignment_fraction_bits",
                          "too many fraction bits for products_per_step: a step's exact sum must fit the 53 bits "
                          "of a float64")
    if dp.promotion_interval_k and dp.promotion_interval_k % dp.products_per_step:
        raise ConfigError(source, f"{where}.promotion_interval_k",
                          f"value {dp.promotion_interval_k}: expected a multiple of products_per_step "
                          f"({dp.products_per_step}) or 0")


_PROVENANCE_GROUPS = ("operand_formats", "datapath", "epilogue")


def _parse_provenance(value, source: str, where: str) -> dict:
    if not isinstance(value, Mapping):
        raise ConfigError(source, where, f"value {describe_value(value)}: expected a mapping key -> source text")
    valid = set(_PROVENANCE_GROUPS) | {"default_fp8_format", "operands_same_flavour", "unsupported_format_pairs"}
    valid |= {f"datapath.{f.name}" for f in dataclasses.fields(DatapathSpec)}
    valid |= {f"epilogue.{f.name}" for f in dataclasses.fields(EpilogueSpec)}
    for k, text in value.items():
        if k not in valid:
            raise ConfigError(source, f"{where}.{k}", f"unknown key; expected a numerics key such as "
                                                      f"{list(_PROVENANCE_GROUPS)} or 'datapath.<field>'")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(source, f"{where}.{k}", f"value {describe_value(text)}: expected a non-empty "
                                                      f"source text (datasheet, paper, measured ..., assumed)")
    for group in _PROVENANCE_GROUPS:
        if group not in value:
            raise ConfigError(source, f"{where}.{group}", "missing: every numerics fact needs a source")
    return dict(value)

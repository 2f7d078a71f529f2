"""Quantization methods: one frozen config dataclass per method, and ``quantize_linears`` that turns float weights
(plus the Hessian of their shared input) into PackedLinear layers.

=============  ==========================================================================================
method         what it does
=============  ==========================================================================================
rtn-w4a16      INT asym groups by round-to-nearest; 16-bit activations
gptq-w4a16     GPTQ (error feedback against the float dequantization); 16-bit activations
rtn-w4a8       the DPQ cascade (W -> FP8 with a per-tensor scale -> INT groups) by round-to-nearest; FP8 acts
naive-w4a8     GPTQ W4A16 weights run on a W4A8 kernel: FP8 expansion and FP8 activations not modelled
fp8-w8a8       FP8 weights (per-tensor scale) and FP8 activations (static per-tensor scale)
dpq            GPTQ whose dequantization includes the FP8 rounding (DPQ), W4A8
dpq-gar        DPQ with group-aware reordering
dpq-pow2       DPQ with power-of-two group scales (our extension: INT -> FP8 expansion becomes exact)
dpq-dyn        ablation: DPQ with group parameters recomputed from the error-updated weights (as GPTQ does)
gptq-gar-w4a16 ablation: GPTQ W4A16 in GAR order (to separate the effect of the order from FP8-awareness)
naive-gar-w4a8 ablation: naive W4A8 whose GPTQ runs in GAR order
=============  ==========================================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from dpq import quantizers as qz
from dpq.gptq import FP8AwareQuantizer, IntGroupQuantizer, gar_permutation, gptq_solve
from dpq.packed import PackedLinear, pack_nibbles

DEFAULT_FP8_FORMAT = "float8_e4m3"  # Gaudi 2's E4M3 (max 240), what the authors' code assumes for every device


def _check_common(cfg) -> None:
    if cfg.weight_bits not in (2, 3, 4):
        raise ValueError(f"{cfg.method}: weight_bits must be 2, 3 or 4, got {cfg.weight_bits!r}")
    if not isinstance(cfg.group_size, int) or cfg.group_size <= 0 or cfg.group_size % 2:
        raise ValueError(f"{cfg.method}: group_size must be a positive even int, got {cfg.group_size!r}")


def _check_gptq(cfg) -> None:
    if not (0 < cfg.damp < 1):
        raise ValueError(f"{cfg.method}: damp must be in (0, 1), got {cfg.damp!r}")
    if cfg.block_size <= 0:
        raise ValueError(f"{cfg.method}: block_size must be > 0, got {cfg.block_size!r}")


def _check_fp8(cfg) -> None:
    qz.fp8_format(cfg.fp8_format)  # raises on unknown names
    if cfg.tensor_scale not in qz.TENSOR_SCALE_MODES:
        raise ValueError(f"{cfg.method}: tensor_scale must be one of {qz.TENSOR_SCALE_MODES}, got {cfg.tensor_scale!r}")
    if cfg.tensor_scale == "hw" and not cfg.hw_scales:
        raise ValueError(f"{cfg.method}: tensor_scale='hw' needs hw_scales (the chip's scale set)")
    if cfg.act_scale not in ("float", "pow2"):
        raise ValueError(f"{cfg.method}: act_scale must be 'float' or 'pow2', got {cfg.act_scale!r}")


@dataclass(frozen=True)
class RTNConfig:
    """rtn-w4a16: round-to-nearest INT asym groups, 16-bit activations."""

    weight_bits: int = 4
    group_size: int = 128

    method = "rtn-w4a16"
    uses_hessian = False
    quantizes_activations = False

    def __post_init__(self):
        _check_common(self)


@dataclass(frozen=True)
class GPTQConfig:
    """gptq-w4a16: GPTQ with asym groups (parameters from the error-updated weights), 16-bit activations."""

    weight_bits: int = 4
    group_size: int = 128
    damp: float = 0.01
    block_size: int = 128
    gar: bool = False

    uses_hessian = True
    quantizes_activations = False

    @property
    def method(self) -> str:
        return "gptq-gar-w4a16" if self.gar else "gptq-w4a16"

    def __post_init__(self):
        _check_common(self)
        _check_gptq(self)


@dataclass(frozen=True)
class RTNW4A8Config:
    """rtn-w4a8: W8 = FP8(clip(W / s_t, -P, P)), INT groups of W8 by round-to-nearest; FP8 activations."""

    weight_bits: int = 4
    group_size: int = 128
    fp8_format: str = DEFAULT_FP8_FORMAT
    tensor_scale: str = "pow2"
    act_scale: str = "float"
    hw_scales: tuple = ()

    method = "rtn-w4a8"
    uses_hessian = False
    quantizes_activations = True

    def __post_init__(self):
        _check_common(self)
        _check_fp8(self)


@dataclass(frozen=True)
class NaiveW4A8Config:
    """naive-w4a8: GPTQ against the float dequantization, then run as W4A8 (FP8 cast at run time, unmodelled)."""

    weight_bits: int = 4
    group_size: int = 128
    damp: float = 0.01
    block_size: int = 128
    fp8_format: str = DEFAULT_FP8_FORMAT
    tensor_scale: str = "pow2"
    act_scale: str = "float"
    hw_scales: tuple = ()
    gar: bool = False

    uses_hessian = True
    quantizes_activations = True

    @property
    def method(self) -> str:
        return "naive-gar-w4a8" if self.gar else "naive-w4a8"

    def __post_init__(self):
        _check_common(self)
        _check_gptq(self)
        _check_fp8(self)


@dataclass(frozen=True)
class FP8Config:
    """fp8-w8a8: FP8 weights with a per-tensor scale (max|W| / R by default), FP8 activations."""

    fp8_format: str = DEFAULT_FP8_FORMAT
    tensor_scale: str = "float"
    act_scale: str = "float"
    hw_scales: tuple = ()

    method = "fp8-w8a8"
    uses_hessian = False
    quantizes_activations = True
    weight_bits = 8

    @property
    def group_size(self) -> int:
        return 0  # per tensor

    def __post_init__(self):
        _check_fp8(self)


@dataclass(frozen=True)
class DPQConfig:
    """dpq / dpq-gar / dpq-pow2: GPTQ with the FP8 rounding inside its error feedback (facts file, steps 0-8)."""

    weight_bits: int = 4
    group_size: int = 128
    damp: float = 0.01
    block_size: int = 128
    fp8_format: str = DEFAULT_FP8_FORMAT
    tensor_scale: str = "pow2"
    act_scale: str = "float"
    hw_scales: tuple = ()
    gar: bool = False
    pow2_group_scales: bool = False
    group_params_from: str = "original"  # "original" (DPQ step 5) or "updated" (GPTQ-style ablation)

    uses_hessian = True
    quantizes_activations = True

    @property
    def method(self) -> str:
        parts = ["dpq"] + (["gar"] if self.gar else []) + (["pow2"] if self.pow2_group_scales else []) + \
            (["dyn"] if self.group_params_from == "updated" else [])
        return "-".join(parts)

    def __post_init__(self):
        _check_common(self)
        _check_gptq(self)
        _check_fp8(self)
        if self.group_params_from not in ("original", "updated"):
            raise ValueError(f"{self.method}: group_params_from must be 'original' or 'updated', got "
                             f"{self.group_params_from!r}")


METHODS = {
    "rtn-w4a16": (RTNConfig, {}),
    "gptq-w4a16": (GPTQConfig, {}),
    "rtn-w4a8": (RTNW4A8Config, {}),
    "naive-w4a8": (NaiveW4A8Config, {}),
    "fp8-w8a8": (FP8Config, {}),
    "dpq": (DPQConfig, {}),
    "dpq-gar": (DPQConfig, {"gar": True}),
    "dpq-pow2": (DPQConfig, {"pow2_group_scales": True}),
    "dpq-dyn": (DPQConfig, {"group_params_from": "updated"}),
    "gptq-gar-w4a16": (GPTQConfig, {"gar": True}),
    "naive-gar-w4a8": (NaiveW4A8Config, {"gar": True}),
}


def make_config(method: str, **overrides):
    """Config for ``method`` (a key of METHODS) with keyword overrides that the method accepts.

    Overrides the method does not have (e.g. ``weight_bits`` for fp8-w8a8) are ignored only when they are None.
    """
    try:
        cls, preset = METHODS[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r} (expected one of {list(METHODS)})") from None
    names = {f.name for f in fields(cls)}
    kw = dict(preset)
    for k, v in overrides.items():
        if v is None:
            continue
        if k not in names:
            raise ValueError(f"method {method!r} has no option {k!r} (options: {sorted(names)})")
        kw[k] = v
    return cls(**kw)


def config_to_dict(cfg) -> dict:
    d = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    d["method"] = cfg.method
    d["hw_scales"] = list(d.get("hw_scales", ()))
    return d


def _validate_weights(weights: dict, hessian: np.ndarray | None, cfg) -> int:
    if not weights:
        raise ValueError("no weights to quantize")
    in_features = None
    for name, w in weights.items():
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            raise ValueError(f"{name}: weight must be a 2-D numpy array (out_features, in_features)")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"{name}: weight contains NaN or inf")
        if in_features is None:
            in_features = w.shape[1]
        elif w.shape[1] != in_features:
            raise ValueError(f"{name}: in_features {w.shape[1]} differs from {in_features} of the other linears "
                             f"sharing this input")
    if cfg.group_size and in_features % cfg.group_size:
        raise ValueError(f"{', '.join(weights)}: group_size {cfg.group_size} does not divide in_features "
                         f"{in_features}")
    if cfg.uses_hessian:
        if hessian is None:
            raise ValueError(f"{cfg.method} needs the Hessian of the layer input")
        if hessian.shape != (in_features, in_features):
            raise ValueError(f"Hessian shape {hessian.shape} does not match in_features {in_features}")
        if not np.all(np.isfinite(hessian)):
            raise ValueError("Hessian contains NaN or inf")
    return in_features


def quantize_linears(weights: dict, hessian: np.ndarray | None, cfg) -> dict:
    """Quantize linears that share one input (e.g. q/k/v) with ``cfg``; returns name -> PackedLinear.

    Args:
        weights: name -> float32 (out_features_k, in_features); all share in_features.
        hessian: float64 (in_features, in_features) from HessianAccumulator, or None for RTN / FP8 methods.
        cfg: a method config (see METHODS).
    Activation scales are left NaN here; ``with_act_scale`` sets them after the activation pass.
    """
    _validate_weights(weights, hessian, cfg)
    weights = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    if isinstance(cfg, FP8Config):
        return {k: _fp8_linear(k, w, cfg) for k, w in weights.items()}
    bits, gs = cfg.weight_bits, cfg.group_size
    maxq = qz.max_code(bits)
    names = list(weights)
    rows = [weights[k].shape[0] for k in names]
    w_all = np.concatenate([weights[k] for k in names], axis=0)

    if isinstance(cfg, RTNConfig):
        s, z = qz.group_params(w_all, gs, maxq)
        q = qz.quantize_int(w_all, qz.expand_groups(s, gs), qz.expand_groups(z, gs), maxq)
        return _split(names, rows, q, s, z, np.ones(len(names)), cfg, expansion="float")

    if isinstance(cfg, RTNW4A8Config):
        s_t, w8 = _fp8_image(weights, names, cfg, maxq)
        s, z = qz.group_params(w8, gs, maxq)
        q = qz.quantize_int(w8, qz.expand_groups(s, gs), qz.expand_groups(z, gs), maxq)
        return _split(names, rows, q, s, z, s_t, cfg, expansion="fp8")

    if isinstance(cfg, (GPTQConfig, NaiveW4A8Config)):
        quantizer = IntGroupQuantizer(w_all.shape[0], w_all.shape[1], gs, bits)
        perm = gar_permutation(np.diag(hessian).copy(), gs) if cfg.gar else None
        q, w_hat, _ = gptq_solve(w_all, hessian, quantizer, group_size=gs, block_size=cfg.block_size, damp=cfg.damp,
                                 perm=perm)
        s, z = quantizer.scales, quantizer.zeros
        if isinstance(cfg, GPTQConfig):
            return _split(names, rows, q, s, z, np.ones(len(names)), cfg, expansion="float")
        # Naive W4A8: move the finished W4A16 grid into the FP8 domain with a power-of-two tensor scale so that the
        # largest dequantized value fits R; the FP8 rounding of s_g (q - z) then happens, unmodelled, at run time.
        r = qz.fp8_max(cfg.fp8_format)
        s_t = []
        for k, part in zip(names, np.split(w_hat, np.cumsum(rows)[:-1], axis=0)):
            s_t.append(qz.tensor_scale(float(np.abs(part).max()), r, cfg.tensor_scale, cfg.hw_scales))
        s_row = np.repeat(np.asarray(s_t, dtype=np.float32), rows)[:, None]
        return _split(names, rows, q, s / s_row, z, np.asarray(s_t), cfg, expansion="fp8")

    if isinstance(cfg, DPQConfig):
        s_t, w8 = _fp8_image(weights, names, cfg, maxq)
        s, z = qz.group_params(w8, gs, maxq, pow2_scales=cfg.pow2_group_scales)
        s_row = np.repeat(np.asarray(s_t, dtype=np.float32), rows)
        dynamic = cfg.group_params_from == "updated"
        limit = qz.protective_range(qz.fp8_max(cfg.fp8_format), maxq)
        quantizer = FP8AwareQuantizer(s, z, s_row, gs, bits, cfg.fp8_format,
                                      protective_range=limit if dynamic else None, pow2_scales=cfg.pow2_group_scales)
        perm = gar_permutation(np.diag(hessian).copy(), gs) if cfg.gar else None
        q, _, _ = gptq_solve(w_all, hessian, quantizer, group_size=gs, block_size=cfg.block_size, damp=cfg.damp,
                             perm=perm)
        return _split(names, rows, q, s, z, s_t, cfg, expansion="fp8")
    raise TypeError(f"not a method config: {type(cfg).__name__}")


def _fp8_image(weights: dict, names: list, cfg, maxq: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-linear s_t and the stacked W8 = FP8(clip(W / s_t, -P, P)) (DPQ steps 3-4)."""
    limit = qz.protective_range(qz.fp8_max(cfg.fp8_format), maxq)
    s_t, parts = [], []
    for k in names:
        w = weights[k]
        st = qz.tensor_scale(float(np.abs(w).max()), limit, cfg.tensor_scale, cfg.hw_scales)
        s_t.append(st)
        parts.append(qz.round_fp8(np.clip(w / np.float32(st), -limit, limit), cfg.fp8_format))
    return np.asarray(s_t, dtype=np.float64), np.concatenate(parts, axis=0)


def _split(names, rows, q, s, z, s_t, cfg, *, expansion: str) -> dict:
    out = {}
    starts = np.concatenate([[0], np.cumsum(rows)])
    a16 = not cfg.quantizes_activations
    for i, k in enumerate(names):
        sl = slice(starts[i], starts[i + 1])
        out[k] = PackedLinear(
            name=k, in_features=q.shape[1], out_features=rows[i], weight_bits=cfg.weight_bits,
            group_size=cfg.group_size, weight_encoding="int_asym", expansion=expansion,
            codes=pack_nibbles(q[sl].astype(np.uint8)), group_scales=np.ascontiguousarray(s[sl], dtype=np.float32),
            zeros=np.ascontiguousarray(z[sl]).astype(np.uint8), tensor_scale=float(s_t[i]), act_scale=math.nan,
            fp8_format="" if (a16 and expansion == "float") else cfg.fp8_format)
    return out


def _fp8_linear(name: str, w: np.ndarray, cfg: FP8Config) -> PackedLinear:
    from sim.formats import encode

    r = qz.fp8_max(cfg.fp8_format)
    s_t = qz.tensor_scale(float(np.abs(w).max()), r, cfg.tensor_scale, cfg.hw_scales)
    codes = encode(w / np.float32(s_t), cfg.fp8_format, saturate=True)
    empty_f = np.zeros((w.shape[0], 0), dtype=np.float32)
    return PackedLinear(name=name, in_features=w.shape[1], out_features=w.shape[0], weight_bits=8,
                        group_size=w.shape[1], weight_encoding="fp8", expansion="none", codes=codes.astype(np.uint8),
                        group_scales=empty_f, zeros=np.zeros((w.shape[0], 0), dtype=np.uint8), tensor_scale=s_t,
                        act_scale=math.nan, fp8_format=cfg.fp8_format)


def with_act_scale(lin: PackedLinear, absmax: float, cfg) -> PackedLinear:
    """Set the static activation scale s_x from the observed max|x| (A8 methods); A16 methods are returned as is."""
    from dataclasses import replace

    if not cfg.quantizes_activations:
        return lin
    return replace(lin, act_scale=qz.activation_scale(absmax, qz.fp8_max(cfg.fp8_format), cfg.act_scale))

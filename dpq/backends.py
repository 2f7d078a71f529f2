"""How a quantized linear executes. Every backend reads a PackedLinear unchanged.

Interface: ``get_backend(name, hw=None)`` returns a Backend with ``linear(packed) -> callable`` where the callable
maps x float32 (N, in_features) -> y float32 (N, out_features).

* ``reference`` — float32 numpy. W4A8: w8 = FP8(s_g (q - z)) and x8 = FP8(x / s_x) rounded by sim.formats, then
  (x8 @ w8^T) * (s_x s_t) in float32 (the FP8 products are exact in float32; only the accumulation order and width
  differ from a chip). W4A16: x @ (s_t s_g (q - z))^T in float32.
* ``emulated`` — the chip's matrix engine, bit-exact: FP8 codes of x / s_x and of s_g (q - z) (the chip's
  round-to-nearest-even with saturation), ``sim.mac.fp8_gemm`` with the profile's accumulation and epilogue, and
  the scales s_x, s_t applied in its epilogue. FP8 layers only (A16 layers have no FP8 GEMM to emulate).
* ``torch`` — real kernels on CUDA/HPU (``dpq.torch_backend``: cuBLAS ``_scaled_mm`` or the fused Triton W4A8
  kernel, bit-equal to ``emulated`` on Hopper); device from $DPQ_TORCH_DEVICE or auto, kernel from
  $DPQ_TORCH_KERNEL.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from dpq import quantizers as qz
from dpq.packed import PackedLinear

BACKEND_NAMES = ("reference", "emulated", "torch")


def dequantized_operand(p: PackedLinear) -> np.ndarray:
    """The weight operand the kernel multiplies, float32 (out, in), before the tensor scale s_t.

    int_asym + fp8 expansion: FP8(s_g (q - z)); int_asym + float: s_g (q - z); fp8: decode(codes).
    """
    if p.weight_encoding == "fp8":
        from sim.formats import decode

        return decode(p.codes, p.fp8_format).astype(np.float32)
    q = p.int_codes().astype(np.float32)
    s = qz.expand_groups(p.group_scales, p.group_size)
    z = qz.expand_groups(p.zeros.astype(np.float32), p.group_size)
    if p.expansion == "fp8":
        return qz.expand_fp8(q, s, z, p.fp8_format)
    return qz.dequantize_int(q, s, z)


def effective_weight(p: PackedLinear) -> np.ndarray:
    """s_t * operand: the float weight a quantized layer stands for, float32 (out, in)."""
    return dequantized_operand(p) * np.float32(p.tensor_scale)


class ReferenceLinear:
    """Float32 execution of one PackedLinear (see module docstring)."""

    def __init__(self, p: PackedLinear):
        self.packed = p
        self.in_features, self.out_features = p.in_features, p.out_features
        op = dequantized_operand(p)
        if p.quantizes_activations:
            self._w_t = np.ascontiguousarray(op.T)
            self._out_scale = np.float32(p.act_scale * p.tensor_scale)
        else:
            self._w_t = np.ascontiguousarray((op * np.float32(p.tensor_scale)).T)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = self.packed
        if p.quantizes_activations:
            x8 = qz.round_fp8(x / np.float32(p.act_scale), p.fp8_format)
            return (x8 @ self._w_t) * self._out_scale
        return x @ self._w_t


class EmulatedLinear:
    """Bit-exact execution of one FP8 PackedLinear on hardware profile ``hw`` through sim.mac.fp8_gemm."""

    def __init__(self, p: PackedLinear, hw, out_dtype: str = "bfloat16"):
        if not p.quantizes_activations or (p.weight_encoding == "int_asym" and p.expansion != "fp8"):
            raise ValueError(f"emulated backend: layer {p.name!r} is not an FP8 GEMM (weights {p.weight_encoding}/"
                             f"{p.expansion}, activations {'FP8' if p.quantizes_activations else '16-bit'}); "
                             f"W4A16 methods run on the reference backend")
        from sim.formats import encode

        self.packed, self.hw, self.out_dtype = p, hw, out_dtype
        self.in_features, self.out_features = p.in_features, p.out_features
        if p.weight_encoding == "fp8":
            self._b_codes = np.ascontiguousarray(p.codes)
        else:
            q = p.int_codes().astype(np.float32)
            s = qz.expand_groups(p.group_scales, p.group_size)
            z = qz.expand_groups(p.zeros.astype(np.float32), p.group_size)
            self._b_codes = encode((s * (q - z)).astype(np.float32), p.fp8_format, saturate=True)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        from sim.formats import encode
        from sim.mac import fp8_gemm

        p = self.packed
        a_codes = encode(np.asarray(x, dtype=np.float32) / np.float32(p.act_scale), p.fp8_format, saturate=True)
        return fp8_gemm(a_codes, self._b_codes, hw=self.hw, a_format=p.fp8_format, b_format=p.fp8_format,
                        scale_a=float(p.act_scale), scale_b=float(p.tensor_scale),
                        out_dtype=self.out_dtype).astype(np.float32)


class Backend:
    """A named way to run PackedLinear layers. ``linear(p)`` -> callable x (N, in) -> y (N, out), float32."""

    def __init__(self, name: str, factory: Callable[[PackedLinear], Callable], hw=None):
        self.name, self._factory, self.hw = name, factory, hw

    def linear(self, p: PackedLinear) -> Callable:
        return self._factory(p)


def get_backend(name: str, hw=None, *, out_dtype: str = "bfloat16", device: str | None = None) -> Backend:
    """Backend by name.

    Args:
        hw: hardware profile (name or loaded profile), required by ``emulated``.
        out_dtype: GEMM output of ``emulated``/``torch``: ``bfloat16`` (the W4A8 runtime) or ``float32``.
        device: ``torch`` only: cuda, hpu or cpu (None: auto).
    """
    if name == "reference":
        return Backend(name, ReferenceLinear)
    if name == "emulated":
        if hw is None:
            raise ValueError("backend 'emulated' needs a hardware profile (hw='gaudi2', 'gaudi3', 'h100', ...)")
        profile = _load_profile(hw)
        return Backend(name, lambda p: EmulatedLinear(p, profile, out_dtype), profile)
    if name == "torch":
        from dpq.torch_backend import torch_linear_factory

        return Backend(name, torch_linear_factory(device, out_dtype=out_dtype))
    raise ValueError(f"unknown backend {name!r} (expected one of {BACKEND_NAMES})")


def _load_profile(hw):
    if not isinstance(hw, str):
        return hw
    from sim.profiles import load_profile

    return load_profile(hw)


def fp8_format_for_hw(hw) -> str:
    """The FP8 format a chip's matrix engine uses by default (profile numerics.default_fp8_format)."""
    return _load_profile(hw).numerics.default_fp8_format

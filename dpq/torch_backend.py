"""The ``torch`` backend: a packed W4A8 / FP8 linear on real hardware (CUDA or Gaudi HPU), read unchanged.

Runtime of one W4A8 layer (``dpq.packed``): w8 = FP8(s_g (q - z)); x8 = FP8(x / s_x); y = (x8 @ w8^T) * (s_x s_t).
Every rounding step is the one the emulator models, so on a Hopper card the CUDA path equals
``sim.mac.fp8_gemm(hw="h100" | "h200", out_dtype=...)`` bit for bit:

* s_g (q - z) is one float32 multiply (round to nearest even), exactly as ``dpq.quantizers.expand_fp8`` computes it;
* the FP8 casts are round-to-nearest-even after clamping to the format's largest finite value (the saturating cast
  of ``sim.formats.encode(..., saturate=True)``; torch's own cast would give NaN on overflow);
* x / s_x is an IEEE float32 division;
* ``torch._scaled_mm`` with per-tensor scales s_x and s_t, ``use_fast_accum=False`` (cuBLAS promotes the tensor
  core accumulator into float32 every 128 elements of K; the epilogue multiplies by float32(s_x * s_t)).

Kernels (``kernel=``):

* ``cublas``: expand the whole weight to FP8 once when the layer is built, then ``torch._scaled_mm`` per call.
* ``triton``: the fused W4A8 kernels of ``dpq.kernels`` (packed INT4 read per call, expanded on chip); their
  numerics are the profile ``h100-triton-w4a8`` (no promotion, split-K parts added in order).
  ``triton_variant`` (else $DPQ_TRITON_VARIANT, else the card's measured best, ``default_variant_for``: "v6" on an
  H100, "v4" on an H200, "v5" on other cards): "v6" (v5's layout; at decode the Gluon kernel, which expands each
  row into shared memory), "v5" (tables built in the loop from the group's scale and zero, in registers), "v4" or
  "lut" (tables precomputed, read from memory), "v2" (float32 arithmetic per weight) or "fp8" (weights expanded
  once, the same loop); all give the same bits. From ``expand_from_tokens`` tokens per call (by
  default the card's measured crossover, ``fused_kernel.expand_from_tokens`` of its profile) a v6/v5/v4 weight runs
  the prefill path instead: one kernel expands it to FP8 (a temporary N x K buffer), then ``torch._scaled_mm`` -
  the ``cublas`` kernel's numerics (``prefill_path(m)`` tells which a call of m tokens gets).
* on HPU: ``torch.ops.hpu.cast_to_fp8_v2`` and ``torch.ops.hpu.fp8_gemm_v2`` (Gaudi 2 takes its FP8 values in
  the e4m3 range of +-240, which are a subset of torch's float8_e4m3fn codes, bit pattern for bit pattern).
* on CPU: float32 matmul of the same FP8 values (the ``reference`` backend's arithmetic, not a chip's).

Device choice: the ``device`` argument, else the environment variable ``DPQ_TORCH_DEVICE``, else auto
(hpu if ``habana_frameworks`` imports and reports a device, else cuda, else cpu). torch, triton and
``habana_frameworks`` are imported only when this backend is used.
"""

from __future__ import annotations

import importlib
import math
import os
from typing import Callable

import numpy as np

from dpq.packed import PackedLinear

DEVICE_ENV = "DPQ_TORCH_DEVICE"
DEVICES = ("cuda", "hpu", "cpu")
KERNELS = ("cublas", "triton")
OUT_DTYPES = ("bfloat16", "float32")
_INSTALL_HINT = 'pip install -e ".[torch]"'


def import_torch():
    """The torch module, or ImportError telling how to install the optional extra."""
    try:
        return importlib.import_module("torch")
    except ImportError as exc:
        raise ImportError(f"backend 'torch' needs PyTorch, which is not installed: {_INSTALL_HINT} "
                          f"(or install a torch build for your accelerator)") from exc


def _hpu_available() -> bool:
    try:
        importlib.import_module("habana_frameworks.torch.core")
    except ImportError:
        return False
    torch = import_torch()
    hpu = getattr(torch, "hpu", None)
    return bool(hpu is not None and hpu.is_available())


def resolve_device(device: str | None = None) -> str:
    """'cuda', 'hpu' or 'cpu': ``device``, else $DPQ_TORCH_DEVICE, else auto (hpu > cuda > cpu).

    Raises ValueError for an unknown name and RuntimeError when the named device is not present.
    """
    source = "device"
    if device is None:
        device = os.environ.get(DEVICE_ENV) or None
        source = f"${DEVICE_ENV}"
    torch = import_torch()
    if device is None:
        if _hpu_available():
            return "hpu"
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in DEVICES:
        raise ValueError(f"{source}={device!r}: expected one of {DEVICES}")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{source}='cuda' but torch.cuda.is_available() is False on this machine")
    if device == "hpu" and not _hpu_available():
        raise RuntimeError(f"{source}='hpu' but habana_frameworks is not installed or sees no Gaudi device")
    return device


# ------------------------------------------------------------------------------------------- input preparation


def fp8_max(fp8_format: str) -> float:
    """Largest finite value of the packed layer's FP8 format (448 float8_e4m3fn, 240 float8_e4m3)."""
    from sim.formats import get_format

    return float(get_format(fp8_format).max_finite)


def _check_torch_format(fp8_format: str) -> None:
    """torch has float8_e4m3fn only; float8_e4m3 (Gaudi 2) values up to 240 share its bit patterns."""
    from sim.formats import get_format

    fmt = get_format(fp8_format)
    if fmt.base_name not in ("float8_e4m3fn", "float8_e4m3") or fmt.bias != 7:
        raise ValueError(f"fp8_format {fp8_format!r}: the torch backend runs E4M3 with bias 7 "
                         f"(float8_e4m3fn, or float8_e4m3 within +-240)")


def unpack_int_codes(codes):
    """uint8 torch tensor (out, in / 2), low nibble = even column -> int32 codes (out, in)."""
    torch = import_torch()
    c = codes.to(torch.int32)
    return torch.stack((c & 0x0F, c >> 4), dim=-1).reshape(codes.shape[0], codes.shape[1] * 2)


def expanded_weight_values(codes, group_scales, zeros, group_size: int, fp8_format: str):
    """float32 (out, in): s_g (q - z) as one float32 multiply, clamped to the FP8 format's range.

    Casting the result to ``torch.float8_e4m3fn`` (round to nearest even) gives the codes of
    ``sim.formats.encode(s_g (q - z), fp8_format, saturate=True)``.
    """
    torch = import_torch()
    q = unpack_int_codes(codes)
    out_f, in_f = q.shape
    z = zeros.to(torch.int32).repeat_interleave(group_size, dim=1)
    s = group_scales.to(torch.float32).repeat_interleave(group_size, dim=1)
    w = (q - z).to(torch.float32) * s
    r = fp8_max(fp8_format)
    return w.clamp_(-r, r).reshape(out_f, in_f)


def weight_fp8(p: PackedLinear, device: str):
    """The FP8 weight operand (out, in) torch.float8_e4m3fn on ``device``, bit-equal to the emulator's codes."""
    torch = import_torch()
    _check_torch_format(p.fp8_format)
    if p.weight_encoding == "fp8":
        return torch.from_numpy(np.ascontiguousarray(p.codes)).to(device).view(torch.float8_e4m3fn)
    if p.expansion != "fp8":
        raise ValueError(f"torch backend: layer {p.name!r} expands INT weights to {p.expansion!r}; only W4A8 "
                         f"(expansion 'fp8') and FP8 weights run here")
    codes = torch.from_numpy(np.ascontiguousarray(p.codes)).to(device)
    scales = torch.from_numpy(np.ascontiguousarray(p.group_scales)).to(device)
    zeros = torch.from_numpy(np.ascontiguousarray(p.zeros)).to(device)
    w = expanded_weight_values(codes, scales, zeros, p.group_size, p.fp8_format)
    return w.to(torch.float8_e4m3fn).contiguous()


def activation_fp8(x, act_scale: float, fp8_format: str):
    """x8 = FP8(x / s_x): x float32 torch (N, in) -> torch.float8_e4m3fn (N, in), saturating at the format's max."""
    torch = import_torch()
    r = fp8_max(fp8_format)
    y = x.to(torch.float32) / torch.tensor(np.float32(act_scale), device=x.device)
    return y.clamp_(-r, r).to(torch.float8_e4m3fn)


def epilogue_scales(p: PackedLinear) -> tuple[np.float32, np.float32]:
    """(s_x, s_t) as float32: the per-tensor scales the GEMM's epilogue multiplies by (as their float32 product)."""
    return np.float32(p.act_scale), np.float32(p.tensor_scale)


# ------------------------------------------------------------------------------------------- the linear layer


class TorchLinear:
    """One FP8 PackedLinear on ``device``; call with x (N, in) float32 numpy or torch -> y (N, out) float32 numpy.

    ``run(x)`` keeps everything on the device: x torch float (N, in) -> torch ``out_dtype`` (N, out).
    """

    def __init__(self, p: PackedLinear, device: str | None = None, *, kernel: str = "cublas",
                 out_dtype: str = "bfloat16", triton_config=None, triton_variant: str | None = None,
                 expand_from_tokens="card"):
        if not p.quantizes_activations or (p.weight_encoding == "int_asym" and p.expansion != "fp8"):
            raise ValueError(f"torch backend: layer {p.name!r} is not an FP8 GEMM (weights {p.weight_encoding}/"
                             f"{p.expansion}, activations {'FP8' if p.quantizes_activations else '16-bit'}); "
                             f"W4A16 methods run on the reference backend")
        if kernel not in KERNELS:
            raise ValueError(f"kernel={kernel!r}: expected one of {KERNELS}")
        if out_dtype not in OUT_DTYPES:
            raise ValueError(f"out_dtype={out_dtype!r}: expected one of {OUT_DTYPES}")
        _check_torch_format(p.fp8_format)
        self.torch = torch = import_torch()
        self.packed, self.kernel, self.out_dtype = p, kernel, out_dtype
        self.device = resolve_device(device)
        self.in_features, self.out_features = p.in_features, p.out_features
        self._torch_out = torch.bfloat16 if out_dtype == "bfloat16" else torch.float32
        s_x, s_t = epilogue_scales(p)
        self._scale_a = torch.tensor(s_x, device=self.device)
        self._scale_b = torch.tensor(s_t, device=self.device)
        if kernel == "triton":
            if self.device != "cuda":
                raise ValueError(f"kernel='triton' needs device 'cuda', got {self.device!r}")
            if p.weight_encoding != "int_asym":
                raise ValueError(f"kernel='triton' runs packed INT weights; layer {p.name!r} has FP8 weights")
            from dpq.kernels.w4a8_triton import PackedW4A8Weight, default_variant_for

            variant = (triton_variant or os.environ.get("DPQ_TRITON_VARIANT")
                       or default_variant_for(torch.cuda.get_device_name(self.device)))
            self._triton_weight = PackedW4A8Weight.from_packed(p, self.device, variant)
            self._triton_config = triton_config
            self._expand_from_tokens = expand_from_tokens
            self.prefill_path(1)  # checks expand_from_tokens
        else:
            self._w8 = weight_fp8(p, self.device)

    def run(self, x):
        """x torch float (N, in) on the device -> y torch (N, out) in ``out_dtype``."""
        p = self.packed
        x8 = activation_fp8(x, p.act_scale, p.fp8_format)
        if self.kernel == "triton":
            from dpq.kernels.w4a8_triton import w4a8_linear

            return w4a8_linear(x8, self._triton_weight, float(p.act_scale), out_dtype=self.out_dtype,
                               config=self._triton_config, expand_from_tokens=self._expand_from_tokens)
        if self.device == "cuda":
            return self.torch._scaled_mm(x8, self._w8.t(), scale_a=self._scale_a, scale_b=self._scale_b,
                                         out_dtype=self._torch_out, use_fast_accum=False)
        if self.device == "hpu":
            return self.torch.ops.hpu.fp8_gemm_v2(x8, False, self._w8, True, None, self._torch_out,
                                                  self._scale_a, self._scale_b, None, False)
        # CPU: the FP8 values multiplied in float32 (no chip's accumulation order), then the same epilogue.
        scale = self._scale_a * self._scale_b
        y = (x8.to(self.torch.float32) @ self._w8.to(self.torch.float32).t()) * scale
        return y.to(self._torch_out)

    def prefill_path(self, m: int) -> bool:
        """Whether a call of m tokens runs the prefill path (expansion kernel + cuBLAS: the numerics of
        ``sim.mac.fp8_gemm(hw="h100"/"h200")``); False for the fused kernel and for the ``cublas`` kernel."""
        if self.kernel != "triton":
            return False
        from dpq.kernels.w4a8_triton import uses_prefill_path

        return uses_prefill_path(m, self._triton_weight, self._expand_from_tokens)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
        return self.run(xt).to(torch.float32).cpu().numpy()


def torch_linear_factory(device: str | None = None, *, kernel: str | None = None,
                         out_dtype: str = "bfloat16") -> Callable[[PackedLinear], TorchLinear]:
    """PackedLinear -> TorchLinear factory for ``dpq.backends.get_backend('torch')``.

    ``kernel``: 'cublas' or 'triton'; None reads $DPQ_TORCH_KERNEL, default 'cublas'.
    """
    dev = resolve_device(device)
    kern = kernel or os.environ.get("DPQ_TORCH_KERNEL") or "cublas"
    if kern not in KERNELS:
        raise ValueError(f"kernel {kern!r} (argument or $DPQ_TORCH_KERNEL): expected one of {KERNELS}")
    return lambda p: TorchLinear(p, dev, kernel=kern, out_dtype=out_dtype)


def emulator_inputs(p: PackedLinear, x: np.ndarray) -> dict:
    """The sim.mac.fp8_gemm arguments that reproduce this layer on x (N, in) float32 (for bit-exact checks)."""
    from sim.formats import encode

    q = p.int_codes().astype(np.float32)
    s = np.repeat(p.group_scales, p.group_size, axis=1)
    z = np.repeat(p.zeros.astype(np.float32), p.group_size, axis=1)
    b = encode((s * (q - z)).astype(np.float32), p.fp8_format, saturate=True) if p.weight_encoding == "int_asym" \
        else np.ascontiguousarray(p.codes)
    a = encode(np.asarray(x, dtype=np.float32) / np.float32(p.act_scale), p.fp8_format, saturate=True)
    s_x, s_t = epilogue_scales(p)
    return {"a": a, "b": b, "a_format": p.fp8_format, "b_format": p.fp8_format, "scale_a": float(s_x),
            "scale_b": float(s_t)}


def is_finite_scale(v: float) -> bool:
    return math.isfinite(v) and v > 0

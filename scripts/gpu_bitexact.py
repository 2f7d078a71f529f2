"""Bit-equality of the torch backend (cuBLAS and the fused Triton W4A8 kernel) with the emulator, on real layers.

Three steps, so that the GPU machine needs only torch (no numba, no model assets):

1. ``prepare`` (here): quantize the embedded model (SmolLM2-135M) with DPQ for Hopper (float8_e4m3fn), run the
   quantized model on real text and keep ``--tokens`` real input rows of every linear; write one compressed
   ``.npz`` (packed fields + activations) per chunk of layers into ``--out``.
2. ``run`` (GPU): for every linear, the torch backend's output with kernel=cublas and kernel=triton (default tile
   heuristic at M = tokens, plus the variants of ``TRITON_VARIANTS``: the default kernel unsplit, the lut (v3),
   fp8 (no expansion) and v2 variants),
   as raw bf16 bits; also a crafted probe of the Triton dot's accumulation (``PROBE_VARIANTS``). Writes
   ``gpu_<path>.npz`` and ``gpu_meta.json``.
3. ``compare`` (here): ``sim.mac.fp8_gemm`` with hw=h100/h200 (cuBLAS path) and hw=h100-triton-w4a8 (Triton path,
   with the kernel's split-K part lengths) on the same inputs; counts equal bf16 bit patterns per path. Writes a
   JSON summary (``--summary``).

Usage::

    python scripts/gpu_bitexact.py prepare --out gpu_inputs --tokens 32
    python scripts/gpu_bitexact.py run --inputs gpu_inputs --out $OUT           # on the GPU machine
    (inputs larger than the device tool's 64 MiB working tree are split into parts: prepare --layers-per-file 15
    and one ``run`` per part directory, each with its own index.json)
    python scripts/gpu_bitexact.py compare --inputs gpu_inputs --outputs <dir> --summary results/gpu/bitexact.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_PACKED_FIELDS = ("codes", "group_scales", "zeros")
_SCALARS = ("in_features", "out_features", "weight_bits", "group_size", "tensor_scale", "act_scale")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ prepare


def prepare(out_dir: Path, tokens: int, calib_sequences: int, calib_tokens: int, layers_per_file: int,
            method: str, seed: int, group_size: int) -> None:
    from dpq import assets
    from dpq.calibrate import quantize_model
    from dpq.methods import make_config
    from dpq.model import LlamaModel
    from dpq.tokenizer import BPETokenizer
    from dpq.gguf import GGUFFile

    gguf_path = assets.asset_path("smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    model = LlamaModel.from_gguf(gguf_path)
    tok = BPETokenizer.from_gguf(GGUFFile(gguf_path))
    text = assets.asset_path("cal-data", "wiki.utf8").read_text(encoding="utf-8")
    ids = np.asarray(tok.encode(text[:20_000]), dtype=np.int64)
    rng = np.random.default_rng(seed)
    need = calib_sequences * calib_tokens
    start = int(rng.integers(0, len(ids) - need - tokens - 1))
    calib = ids[start:start + need].reshape(calib_sequences, calib_tokens)
    cfg = make_config(method, fp8_format="float8_e4m3fn", group_size=group_size)
    log(f"[prepare] quantizing {model.name} with {method} on {calib.shape} calibration tokens")
    ckpt = quantize_model(model, cfg, calib)
    from dpq.calibrate import apply_checkpoint

    qmodel = apply_checkpoint(model, ckpt, backend="reference")
    # real activations: the quantized model on a held-out stretch of text, inputs of every linear
    eval_ids = ids[start + need:start + need + tokens].reshape(1, tokens)
    captured = {}
    groups = {"attn_in": ("attn_q", "attn_k", "attn_v"), "attn_out": ("attn_output",),
              "mlp_in": ("ffn_gate", "ffn_up"), "mlp_down": ("ffn_down",)}

    def observe(i, g, h):
        for nm in groups[g]:
            captured[f"blk.{i}.{nm}"] = np.asarray(h, dtype=np.float32).reshape(-1, h.shape[-1]).copy()
    qmodel.hidden_states(eval_ids, observer=observe)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(ckpt.linears)
    n_layers = len(qmodel.layers)
    files = []
    for first in range(0, n_layers, layers_per_file):
        arrays, meta = {}, {}
        for name in names:
            if not (first <= int(name.split(".")[1]) < first + layers_per_file):
                continue
            p = ckpt.linears[name]
            for f in _PACKED_FIELDS:
                arrays[f"{name}/{f}"] = getattr(p, f)
            arrays[f"{name}/x"] = captured[name]
            meta[name] = {k: getattr(p, k) for k in _SCALARS} | {"fp8_format": p.fp8_format,
                                                                 "weight_encoding": p.weight_encoding,
                                                                 "expansion": p.expansion}
        path = out_dir / f"layers_{first:02d}.npz"
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez_compressed(path, **arrays)
        files.append(path.name)
    (out_dir / "index.json").write_text(json.dumps({"files": files, "model": model.name, "method": method,
                                                     "tokens": tokens, "seed": seed, "group_size": group_size,
                                                     "calibration": list(calib.shape)}, indent=1))
    log(f"[prepare] wrote {len(names)} linears into {len(files)} files under {out_dir}")


def load_inputs(in_dir: Path):
    """Yield (name, PackedLinear, x float32 (T, in)) for every linear in ``in_dir``."""
    from dpq.packed import PackedLinear

    index = json.loads((in_dir / "index.json").read_text())
    for fname in index["files"]:
        with np.load(in_dir / fname) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            for name, m in meta.items():
                p = PackedLinear(name=name, codes=z[f"{name}/codes"], group_scales=z[f"{name}/group_scales"],
                                 zeros=z[f"{name}/zeros"], **m)
                yield name, p, z[f"{name}/x"]


# ------------------------------------------------------------------------------------------------ run (GPU)

PROBE_VARIANTS = {  # Triton configurations run on the crafted probe (M=16, N=256, K=8192, groups of 128)
    "default": {},
    "split1": {"split_k": 1},
    "split3": {"split_k": 3},
    "bn128_bt32": {"block_n": 128, "block_t": 32, "split_k": 1},
    "bn64_w8": {"block_n": 64, "num_warps": 8, "split_k": 2},
    "gps2_split3": {"variant": "v4", "groups_per_step": 2, "split_k": 3},
    "split3_reduce_in_kernel": {"split_k": 3, "reduce_in_kernel": True},
    "v5_default": {"variant": "v5"},
    "v5_split3": {"variant": "v5", "split_k": 3},
    "v5_bn64_w8": {"variant": "v5", "block_n": 64, "num_warps": 8, "split_k": 2},
    "v5_split3_reduce_in_kernel": {"variant": "v5", "split_k": 3, "reduce_in_kernel": True},
    "v5_split3_maxnreg64": {"variant": "v5", "split_k": 3, "maxnreg": 64},
    "v5_split3_pdl_pf2": {"variant": "v5", "split_k": 3, "pdl": True, "l2_prefetch_steps": 2},
    "v6_default": {"variant": "v6"},
    "v6_split3": {"variant": "v6", "split_k": 3},
    "v6_split3_st2_2a": {"variant": "v6", "split_k": 3, "num_stages": 2, "a_buffers": 2},
    "v4_split3_pdl_pf2_reduce_in_kernel": {"variant": "v4", "split_k": 3, "pdl": True, "l2_prefetch_steps": 2,
                                           "reduce_in_kernel": True},
    "v4_default": {"variant": "v4"},
    "lut_default": {"variant": "lut"},
    "fp8_default": {"variant": "fp8"},
    "v2_default": {"variant": "v2"},
}


def make_probe(seed: int = 7):
    """A layer whose result depends on the accumulation rules: long K, weights and activations over a wide range of
    binades (group scales 2^-6..2^4, activations scaled by 2^-4..2^4 element by element)."""
    from dpq.packed import PackedLinear

    rng = np.random.default_rng(seed)
    n, k, m, gs = 256, 8192, 16, 128
    x = (rng.standard_normal((m, k)) * np.exp2(rng.uniform(-4, 4, (m, k)))).astype(np.float32)
    p = PackedLinear(name="probe", in_features=k, out_features=n, weight_bits=4, group_size=gs,
                     weight_encoding="int_asym", expansion="fp8",
                     codes=rng.integers(0, 256, (n, k // 2), dtype=np.uint8),
                     group_scales=np.exp2(rng.uniform(-6, 4, (n, k // gs))).astype(np.float32),
                     zeros=rng.integers(0, 16, (n, k // gs), dtype=np.uint8),
                     tensor_scale=0.5, act_scale=float(np.float32(np.abs(x).max() / 448.0)),
                     fp8_format="float8_e4m3fn")
    return p, x

# Variants of the Triton kernel run on every linear: name -> KernelConfig overrides (None = the default heuristic).
TRITON_VARIANTS = {  # "variant" picks the kernel variant (default: the card's, default_variant_for)
    "default": None,
    "split1": {"split_k": 1},
    "reduce_in_kernel": {"reduce_in_kernel": True},
    "v5_default": {"variant": "v5"},
    "v5_reduce_in_kernel": {"variant": "v5", "reduce_in_kernel": True},
    "v5_old_rule": {"variant": "v5", "old_rule": True},  # v5's split rule before the wave rule
    "v5_split2": {"variant": "v5", "split_k": 2},
    "v5_split3": {"variant": "v5", "split_k": 3},
    "v5_split4": {"variant": "v5", "split_k": 4},
    "v5_maxnreg64": {"variant": "v5", "maxnreg": 64},
    "v6_default": {"variant": "v6"},
    "v6_split3": {"variant": "v6", "split_k": 3},
    "v6_split1_st3_2a": {"variant": "v6", "split_k": 1, "num_stages": 3, "a_buffers": 2},
    "v6_reduce_in_kernel": {"variant": "v6", "reduce_in_kernel": True},
    "pdl": {"pdl": True},  # programmatic dependent launch (main and reduction kernels)
    "nowait": {"mma_wait_each_step": False},  # Triton's wgmma pipelining as is (register hazard: issue 9433)
    "pdl_pf2": {"pdl": True, "l2_prefetch_steps": 2},
    "pdl_pf2_reduce_in_kernel": {"pdl": True, "l2_prefetch_steps": 2, "reduce_in_kernel": True},
    "v4_pdl_pf2": {"variant": "v4", "pdl": True, "l2_prefetch_steps": 2},
    "v5_pdl_pf2": {"variant": "v5", "pdl": True, "l2_prefetch_steps": 2},
    "v4_default": {"variant": "v4"},
    "lut_default": {"variant": "lut"},
    "fp8_default": {"variant": "fp8"},
    "v2_default": {"variant": "v2"},
}


def triton_setup(over, m, n, k, limits, group_size):
    """(kernel variant, KernelConfig) of one named variant: what ``w4a8_matmul`` runs without a configuration (the
    card's tuned configuration of the GEMM, else the heuristic with the card's SMLimits; the heuristic without them
    for ``old_rule``) with the overrides applied."""
    import torch

    from dpq.kernels.w4a8_triton import KernelConfig, default_config, default_variant_for, launch_config_for

    over = dict(over or {})
    name = torch.cuda.get_device_name()
    variant = over.pop("variant", None) or default_variant_for(name)
    if over.pop("old_rule", False):
        base = default_config(m, n, k, limits.num_sms, group_size, variant)
    else:
        base = launch_config_for(name, limits, m, n, k, group_size, variant)
    return variant, KernelConfig(**(base.__dict__ | over))


def run(in_dir: Path, out_dir: Path, variants: list[str] | None = None) -> None:
    """variants: names of TRITON_VARIANTS to run (None = all); the probe always runs all of PROBE_VARIANTS."""
    import torch

    from dpq.kernels.w4a8_triton import SMLimits, split_k_parts
    from dpq.torch_backend import TorchLinear, activation_fp8

    out_dir.mkdir(parents=True, exist_ok=True)
    dev = torch.cuda.get_device_properties(0)
    limits = SMLimits.of_device(0)
    results, meta = {}, {"device": dev.name, "sms": dev.multi_processor_count, "torch": torch.__version__,
                         "cuda": torch.version.cuda, "variants": {}}
    try:
        import triton
        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    t0 = time.perf_counter()
    n = 0
    for name, p, x in load_inputs(in_dir):
        xt = torch.from_numpy(x).cuda()
        lin = TorchLinear(p, "cuda", kernel="cublas", out_dtype="bfloat16")
        results[f"{name}/cublas"] = lin.run(xt).view(torch.int16).cpu().numpy()
        for vname, over in TRITON_VARIANTS.items():
            if variants is not None and vname not in variants:
                continue
            try:
                variant, cfg = triton_setup(over, x.shape[0], p.out_features, p.in_features, limits,
                                            p.group_size)
                # expand_from_tokens=None: the fused kernel at every M (its numerics are what is compared here)
                tl = TorchLinear(p, "cuda", kernel="triton", out_dtype="bfloat16", triton_config=cfg,
                                 triton_variant=variant, expand_from_tokens=None)
                y1 = tl.run(xt)
                y2 = tl.run(xt)
                if not torch.equal(y1.view(torch.int16), y2.view(torch.int16)):
                    raise RuntimeError(f"{name} triton {vname}: two runs differ (race?)")
                results[f"{name}/triton_{vname}"] = y1.view(torch.int16).cpu().numpy()
                meta["variants"][f"{name}/triton_{vname}"] = {"config": cfg.__dict__, "variant": variant,
                                                              "split_k_parts": list(split_k_parts(p.in_features, cfg,
                                                                                                p.group_size))}
            except Exception as exc:  # noqa: BLE001 - keep the other paths; the error goes into the meta file
                meta.setdefault("errors", []).append(f"{name} {vname}: {type(exc).__name__}: {exc}")
                log(f"[run] {name} {vname}: triton failed: {type(exc).__name__}: {exc}")
        n += 1
    # crafted probe: the inputs travel back with the outputs so that compare needs nothing else
    try:
        p, x = make_probe()
        for f in _PACKED_FIELDS:
            results[f"probe/in_{f}"] = getattr(p, f)
        results["probe/in_x"] = x
        meta["probe"] = {k: getattr(p, k) for k in _SCALARS} | {"fp8_format": p.fp8_format, "variants": {}}
        xt = torch.from_numpy(x).cuda()
        for fast in (False, True):
            lin = TorchLinear(p, "cuda", kernel="cublas")
            x8 = activation_fp8(xt, p.act_scale, p.fp8_format)
            y = torch._scaled_mm(x8, lin._w8.t(), scale_a=lin._scale_a, scale_b=lin._scale_b, out_dtype=torch.bfloat16,
                                 use_fast_accum=fast)
            results[f"probe/cublas_fast{int(fast)}"] = y.view(torch.int16).cpu().numpy()
        for vname, over in PROBE_VARIANTS.items():
            variant, cfg = triton_setup(over, x.shape[0], p.out_features, p.in_features, limits, p.group_size)
            try:
                y = TorchLinear(p, "cuda", kernel="triton", triton_config=cfg, triton_variant=variant,
                                expand_from_tokens=None).run(xt)
            except Exception as exc:  # noqa: BLE001
                meta.setdefault("errors", []).append(f"probe {vname}: {type(exc).__name__}: {exc}")
                continue
            results[f"probe/triton_{vname}"] = y.view(torch.int16).cpu().numpy()
            meta["probe"]["variants"][vname] = {"config": cfg.__dict__, "variant": variant,
                                                "split_k_parts": list(split_k_parts(p.in_features, cfg, p.group_size))}
    except Exception as exc:  # noqa: BLE001
        meta.setdefault("errors", []).append(f"probe: {type(exc).__name__}: {exc}")
        log(f"[run] probe failed: {type(exc).__name__}: {exc}")
    torch.cuda.synchronize()
    meta["linears"] = n
    meta["seconds"] = round(time.perf_counter() - t0, 2)
    # one file per path (the device tool brings back files of at most 16 MiB)
    by_path = {}
    for key, arr in results.items():
        head, tail = key.split("/", 1)
        group = "probe" if head == "probe" else tail
        by_path.setdefault(group, {})[key] = arr
    for group, arrays in by_path.items():
        np.savez_compressed(out_dir / f"gpu_{group}.npz", **arrays)
    (out_dir / "gpu_meta.json").write_text(json.dumps(meta, indent=1))
    log(f"[run] {n} linears on {dev.name} in {meta['seconds']} s")


# ------------------------------------------------------------------------------------------------ compare


def bf16_bits(y_f32: np.ndarray) -> np.ndarray:
    """float32 holding bfloat16 values -> the int16 bit patterns torch gives with .view(torch.int16)."""
    return (np.ascontiguousarray(y_f32, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.int16)


def compare(in_dir: Path, gpu_dir: Path, hw_cublas: str, hw_triton: str, summary: Path | None) -> dict:
    from dpq.torch_backend import emulator_inputs
    from sim.mac import fp8_gemm, resolve_numerics

    triton_spec = resolve_numerics(hw_triton)

    gpu = {}
    for f in sorted(gpu_dir.glob("gpu_*.npz")):
        with np.load(f) as z:
            gpu.update({k: z[k] for k in z.files})
    meta = json.loads((gpu_dir / "gpu_meta.json").read_text())
    paths = {}
    worst = {}
    for name, p, x in load_inputs(in_dir):
        args = emulator_inputs(p, x)
        emu = {"cublas": bf16_bits(fp8_gemm(hw=hw_cublas, out_dtype="bfloat16", **args))}
        for vname in TRITON_VARIANTS:
            key = f"{name}/triton_{vname}"
            if key not in meta["variants"]:
                continue
            v = meta["variants"][key]
            hw = triton_spec
            emu[f"triton_{vname}"] = bf16_bits(fp8_gemm(hw=hw, out_dtype="bfloat16",
                                                        split_k=tuple(v["split_k_parts"]), **args))
        for path, e in emu.items():
            g = gpu[f"{name}/{path}"]
            st = paths.setdefault(path, {"outputs": 0, "equal": 0, "linears": 0, "linears_all_equal": 0})
            eq = int(np.count_nonzero(g == e))
            st["outputs"] += g.size
            st["equal"] += eq
            st["linears"] += 1
            st["linears_all_equal"] += int(eq == g.size)
            if eq != g.size and path not in worst:
                idx = np.argwhere(g != e)[0]
                worst[path] = {"linear": name, "index": idx.tolist(), "gpu_bits": int(g[tuple(idx)]),
                               "emulator_bits": int(e[tuple(idx)])}
    probe = compare_probe(gpu, meta, hw_cublas, triton_spec) if "probe" in meta else {}
    res = {"device": meta["device"], "torch": meta["torch"], "triton": meta.get("triton"), "cuda": meta["cuda"],
           "emulator_profiles": {"cublas": hw_cublas, "triton (promote_k=0)": hw_triton,
                                 },
           "paths": paths, "first_mismatch": worst, "probe": probe}
    if summary:
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(json.dumps(res, indent=1) + "\n")
    for path, st in paths.items():
        print(f"{path:22s} {st['equal']:>10d}/{st['outputs']:<10d} outputs equal; "
              f"{st['linears_all_equal']}/{st['linears']} linears bit-exact")
    return res


def compare_probe(gpu, meta, hw_cublas: str, triton_spec) -> dict:
    """Each probe output against several candidate rule sets: which one the GPU follows, and that the others differ."""
    from dataclasses import replace

    from dpq.packed import PackedLinear
    from dpq.torch_backend import emulator_inputs
    from sim.mac import fp8_gemm, resolve_numerics

    pm = dict(meta["probe"])
    variants = pm.pop("variants")
    pm.pop("fp8_format")
    p = PackedLinear(name="probe", codes=gpu["probe/in_codes"], group_scales=gpu["probe/in_group_scales"],
                     zeros=gpu["probe/in_zeros"], fp8_format="float8_e4m3fn", weight_encoding="int_asym",
                     expansion="fp8", **pm)
    args = emulator_inputs(p, gpu["probe/in_x"])

    def with_promotion(spec, k):
        return replace(spec, datapath=replace(spec.datapath, promotion_interval_k=k))
    cub = resolve_numerics(hw_cublas)
    out = {}
    for fast in (0, 1):
        g = gpu[f"probe/cublas_fast{fast}"]
        cands = {f"{hw_cublas} fast_accum={bool(fast)}": fp8_gemm(hw=cub, fast_accum=bool(fast), out_dtype="bfloat16",
                                                                  **args)}
        out[f"cublas_fast{fast}"] = {c: int(np.count_nonzero(g == bf16_bits(e))) for c, e in cands.items()}
        out[f"cublas_fast{fast}"]["outputs"] = int(g.size)
    for vname, v in variants.items():
        g = gpu[f"probe/triton_{vname}"]
        parts = tuple(v["split_k_parts"])
        cands = {"promotion 0": with_promotion(triton_spec, 0), "promotion 32": with_promotion(triton_spec, 32),
                 "promotion 64": with_promotion(triton_spec, 64), "promotion 128": with_promotion(triton_spec, 128)}
        row = {"config": v["config"], "split_k_parts": list(parts), "outputs": int(g.size)}
        for cname, spec in cands.items():
            row[cname] = int(np.count_nonzero(g == bf16_bits(fp8_gemm(hw=spec, split_k=parts, out_dtype="bfloat16",
                                                                      **args))))
        row["promotion 0, no split"] = int(np.count_nonzero(g == bf16_bits(fp8_gemm(
            hw=triton_spec, out_dtype="bfloat16", **args))))
        out[f"triton_{vname}"] = row
    for name, row in out.items():
        print(f"probe {name}: " + ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("config",)))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--tokens", type=int, default=32)
    a.add_argument("--calib-sequences", type=int, default=8)
    a.add_argument("--calib-tokens", type=int, default=128)
    a.add_argument("--layers-per-file", type=int, default=30)
    a.add_argument("--method", default="dpq")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--group-size", type=int, default=64,
                   help="INT4 group size (SmolLM2-135M: d_model 576 = 9 x 64, so 128 does not divide it)")
    b = sub.add_parser("run")
    b.add_argument("--inputs", type=Path, required=True)
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--variants", default=None,
                   help=f"comma list of Triton paths to run (default: all of {', '.join(TRITON_VARIANTS)})")
    c = sub.add_parser("compare")
    c.add_argument("--inputs", type=Path, required=True)
    c.add_argument("--outputs", type=Path, required=True)
    c.add_argument("--hw", default="h200", help="profile of the card the cuBLAS outputs came from")
    c.add_argument("--hw-triton", default="h100-triton-w4a8")
    c.add_argument("--summary", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        prepare(args.out, args.tokens, args.calib_sequences, args.calib_tokens, args.layers_per_file, args.method,
                args.seed, args.group_size)
    elif args.cmd == "run":
        chosen = None if args.variants is None else args.variants.split(",")
        if chosen is not None and not set(chosen) <= set(TRITON_VARIANTS):
            raise SystemExit(f"--variants: unknown {sorted(set(chosen) - set(TRITON_VARIANTS))} "
                             f"(expected names of {list(TRITON_VARIANTS)})")
        run(args.inputs, args.out, chosen)
    else:
        compare(args.inputs, args.outputs, args.hw, args.hw_triton, args.summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

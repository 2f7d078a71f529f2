"""Compile the fused W4A8 Triton kernel for sm_90 on any machine (no GPU needed) and count its SASS instructions.

Uses Triton's own ptxas and cuobjdump (shipped in the triton wheel). Prints the instruction mix of the whole kernel
and of its main loop (the largest backward branch's body), and the loop's instructions per weight element
(weights per loop iteration = BLOCK_N x group size, divided over the program's threads), and the main loop's writes
to registers that a register-A warpgroup MMA may still be reading (``wgmma_register_hazards``: Triton 3.6's wgmma
pipelining allows them, triton-lang/triton issue 9433). ``--dump DIR`` writes the TTGIR, PTX and SASS.

    python scripts/kernel_sass.py --variant v5 --block-n 128 --block-t 16 --split-k 4 --warps 4 --stages 3 \
        [--maxnreg 64] [--pdl --prefetch-steps 2] [--no-mma-wait]
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dpq.kernels.sass import wgmma_register_hazards  # noqa: E402

_INSN = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+)[\s.;]")


def _cubin_sass(k, name: str):
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"w4a8_{name}.cubin"
    tmp.write_bytes(k.asm["cubin"])
    sass = subprocess.run([cuobjdump, "--dump-sass", str(tmp)], capture_output=True, text=True, check=True).stdout
    res = subprocess.run([cuobjdump, "--dump-resource-usage", str(tmp)], capture_output=True, text=True).stdout
    usage = re.search(r"REG:\d+.*", res)
    return sass, usage.group(0) if usage else "?"


def _compile_gluon_v6(block_t: int, block_k: int, split_k: int, stages: int, a_buffers: int, maxnreg: int | None,
                      reduce_in_kernel: bool = False, pdl: bool = False, groups_per_step: int = 1):
    """The "v6" Gluon kernel (dpq/kernels/w4a8_gluon.py) for sm_90, with the TMA descriptors' types of a launch."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon._runtime import GluonASTSource

    from dpq.kernels import w4a8_gluon as G

    nvmma = gl.NVMMASharedLayout
    bn = G.V6_BLOCK_N

    def desc(dtype, shape, layout):
        return f"tensordesc<{dtype}[{', '.join(map(str, shape))}],{layout!r}>"
    sig = {"x_desc": desc("fp8e4nv", [block_t, block_k], nvmma(G._swizzle_bytes(block_k), 8)),
           "w_desc": desc("i32", [bn, block_k // 8], nvmma(G._swizzle_bytes(block_k // 2), 32)),
           "s_desc": desc("fp32", [bn], nvmma(0, 32, rank=1)), "z_desc": desc("u8", [bn], nvmma(0, 8, rank=1)),
           "out_ptr": "*bf16", "part_ptr": "*fp32", "count_ptr": "*i32", "M": "i32", "N": "i32", "stride_zg": "i32",
           "stride_om": "i32", "out_scale": "fp32", "k_steps": "i32", "k_steps_per_split": "i32", "n_parts": "i32"}
    consts = dict(BLOCK_N=bn, BLOCK_T=block_t, GROUP=block_k, STAGES=stages, A_BUFS=a_buffers,
                  SPLIT_K=min(split_k, 2), OUT_BF16=True, FP8_MAX=448.0, REDUCE=split_k > 1 and reduce_in_kernel,
                  PDL=pdl, GPS=groups_per_step, num_warps=G.V6_NUM_WARPS)
    for c in consts:
        sig[c] = "constexpr"
    names = list(sig)
    attrs = {(names.index(d),): [["tt.divisibility", 16]] for d in ("out_ptr", "part_ptr", "N", "stride_zg",
                                                                    "stride_om")}
    k = triton.compile(GluonASTSource(fn=G._gluon_kernels()["v6"], signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": G.V6_NUM_WARPS, "maxnreg": maxnreg or G.V6_DEFAULT_MAXNREG,
                                "launch_pdl": pdl})
    return (k, *_cubin_sass(k, "v6"))


def compile_kernel(variant: str, block_n: int, block_t: int, block_k: int, split_k: int, warps: int, stages: int,
                   groups_per_step: int = 1, reduce_in_kernel: bool = False, maxnreg: int | None = None,
                   pdl: bool = False, prefetch_steps: int = 0, mma_wait: bool = True, pdl_trigger: str = "start",
                   a_buffers: int = 1):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from dpq.kernels import w4a8_triton as W

    if variant == "v6":
        return _compile_gluon_v6(block_t, block_k, split_k, stages, a_buffers, maxnreg, reduce_in_kernel, pdl,
                                 groups_per_step)
    fn = W._kernels()[variant]
    if variant == "v5":
        sig = {"x_ptr": "*fp8e4nv", "w_ptr": "*i16", "s_ptr": "*fp32", "z_ptr": "*u8",
               "out_ptr": "*bf16", "part_ptr": "*fp32", "count_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32",
               "stride_xm": "i32", "stride_om": "i32", "stride_zg": "i32", "out_scale": "fp32",
               "k_steps_per_split": "i32",
               "n_parts": "i32"}
        consts = dict(BLOCK_N=block_n, BLOCK_T=block_t, GROUP=block_k, SPLIT_K=min(split_k, 2),
                      OUT_BF16=True, EVEN_N=True, REDUCE=split_k > 1 and reduce_in_kernel, FP8_MAX=448.0,
                      MMA_WAIT=mma_wait)
        div = ["x_ptr", "w_ptr", "s_ptr", "z_ptr", "out_ptr", "part_ptr", "K", "N", "stride_xm", "stride_om",
               "stride_zg"]
    elif variant in ("v4", "fp8"):
        sig = {"x_ptr": "*fp8e4nv", "w_ptr": "*i16" if variant == "v4" else "*u8", "lut_ptr": "*i32",
               "out_ptr": "*bf16", "part_ptr": "*fp32", "count_ptr": "*i32", "M": "i32", "N": "i32", "K": "i32",
               "stride_xm": "i32", "stride_om": "i32", "out_scale": "fp32", "k_steps_per_split": "i32",
               "n_parts": "i32"}
        consts = dict(BLOCK_N=block_n, BLOCK_T=block_t, GROUP=block_k, GPS=groups_per_step, SPLIT_K=min(split_k, 2),
                      OUT_BF16=True, EVEN_N=True, FP8_W=variant == "fp8",
                      REDUCE=split_k > 1 and reduce_in_kernel, MMA_WAIT=mma_wait and variant != "fp8")
        div = ["x_ptr", "w_ptr", "lut_ptr", "out_ptr", "part_ptr", "K", "N", "stride_xm", "stride_om"]
    elif variant == "lut":
        sig = {"x_ptr": "*fp8e4nv", "codes_ptr": "*u8", "lut_ptr": "*i32", "out_ptr": "*bf16", "part_ptr": "*fp32",
               "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_cw": "i32", "stride_om": "i32",
               "out_scale": "fp32", "k_tiles_per_split": "i32"}
        consts = dict(BLOCK_N=block_n, BLOCK_T=block_t, BLOCK_K=block_k, SPLIT_K=split_k, OUT_BF16=True, EVEN_N=True,
                      MMA_WAIT=mma_wait)
        div = ["x_ptr", "codes_ptr", "lut_ptr", "out_ptr", "part_ptr", "K", "N", "stride_xm", "stride_cw", "stride_om"]
    else:
        sig = {"x_ptr": "*fp8e4nv", "codes_ptr": "*u8", "scales_ptr": "*fp32", "zeros_ptr": "*u8", "out_ptr": "*bf16",
               "part_ptr": "*fp32", "M": "i32", "N": "i32", "K": "i32", "stride_xm": "i32", "stride_cn": "i32",
               "stride_sn": "i32", "stride_zn": "i32", "stride_om": "i32", "out_scale": "fp32",
               "k_tiles_per_split": "i32"}
        consts = dict(BLOCK_N=block_n, BLOCK_T=block_t, BLOCK_K=block_k, SPLIT_K=split_k, FP8_MAX=448.0,
                      OUT_BF16=True)
        div = ["x_ptr", "codes_ptr", "scales_ptr", "zeros_ptr", "out_ptr", "part_ptr", "K", "N", "stride_xm",
               "stride_cn", "stride_om"]
    if pdl:
        if variant not in ("v5", "v4", "fp8"):
            raise SystemExit(f"--pdl: variant {variant!r} has no dependent-launch support")
        consts.update(PDL=True, PREFETCH=prefetch_steps, PDL_LATE=pdl_trigger == "after_loop")
    for c in consts:
        sig[c] = "constexpr"
    names = list(sig)
    attrs = {(names.index(d),): [["tt.divisibility", 16]] for d in div}
    options = {"num_warps": warps, "num_stages": stages}
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    if pdl:
        options["launch_pdl"] = True
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", 90, 32), options=options)
    return (k, *_cubin_sass(k, variant))


def loop_mix(sass: str):
    """(all instructions, main-loop instructions) as Counters; the main loop: ``main_loop_range``."""
    from scripts.fused_kernel_structure import main_loop_range

    insns = [(int(a, 16), op) for a, op in _INSN.findall(sass)]
    best = main_loop_range(sass)
    total = collections.Counter(op for _, op in insns)
    loop = collections.Counter(op for a, op in insns if best and best[0] <= a <= best[1])
    return total, loop


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="v5", help="v6 (Gluon; block_n 128, 4 MMA warps), v5, v4, fp8, lut or v2")
    ap.add_argument("--block-n", type=int, default=64)
    ap.add_argument("--block-t", type=int, default=16)
    ap.add_argument("--block-k", type=int, default=128, help="= the group size")
    ap.add_argument("--groups-per-step", type=int, default=1, help="v4/fp8: groups per K step")
    ap.add_argument("--reduce-in-kernel", action="store_true", help="v4/fp8: split-K parts added in the kernel")
    ap.add_argument("--split-k", type=int, default=4)
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--maxnreg", type=int, default=None, help="register cap per thread (Triton launch option)")
    ap.add_argument("--pdl", action="store_true", help="v5/v4/fp8: programmatic dependent launch (KernelConfig.pdl)")
    ap.add_argument("--prefetch-steps", type=int, default=0,
                    help="with --pdl: K steps prefetched to L2 before the wait")
    ap.add_argument("--pdl-trigger", choices=("start", "after_loop"), default="start",
                    help="with --pdl: where a program lets the next kernel start (KernelConfig.pdl_trigger)")
    ap.add_argument("--no-mma-wait", action="store_true",
                    help="v5/v4/lut: without the wait for each K step's wgmmas (KernelConfig.mma_wait_each_step=False; "
                         "fp8 never waits: its A operand is in shared memory)")
    ap.add_argument("--a-buffers", type=int, default=1, help="v6: expanded A tiles in shared memory (1 or 2)")
    ap.add_argument("--dump", type=Path)
    a = ap.parse_args(argv)
    if (a.prefetch_steps or a.pdl_trigger != "start") and not a.pdl:
        raise SystemExit("--prefetch-steps / --pdl-trigger: need --pdl")
    k, sass, usage = compile_kernel(a.variant, a.block_n, a.block_t, a.block_k, a.split_k, a.warps, a.stages,
                                    a.groups_per_step, a.reduce_in_kernel, a.maxnreg, a.pdl, a.prefetch_steps,
                                    not a.no_mma_wait, a.pdl_trigger, a.a_buffers)
    total, loop = loop_mix(sass)
    weights_per_thread = a.block_n * a.block_k * a.groups_per_step / (32 * a.warps)
    print(f"{a.variant} BLOCK_N={a.block_n} BLOCK_T={a.block_t} BLOCK_K={a.block_k}x{a.groups_per_step} "
          f"warps={a.warps} stages={a.stages} maxnreg={a.maxnreg} pdl={a.pdl} prefetch={a.prefetch_steps}: {usage}")
    print(f"kernel: {sum(total.values())} instructions")
    n = sum(loop.values())
    print(f"main loop: {n} instructions per iteration per thread, {weights_per_thread:.0f} weights per thread "
          f"-> {n / weights_per_thread:.2f} instructions per weight")
    print("loop mix:", ", ".join(f"{op} {c}" for op, c in loop.most_common(30)))
    hazards = wgmma_register_hazards(sass)
    first = f" (first: {hazards[0][1]} {hazards[0][2]} at {hazards[0][0]}, MMA at {hazards[0][3]})" if hazards else ""
    print(f"writes to A registers of wgmmas possibly in flight: {len(hazards)}{first}")
    if a.dump:
        a.dump.mkdir(parents=True, exist_ok=True)
        (a.dump / f"{a.variant}.ttgir").write_text(k.asm["ttgir"])
        (a.dump / f"{a.variant}.ptx").write_text(k.asm["ptx"])
        (a.dump / f"{a.variant}.sass").write_text(sass)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The structure of a fused Triton GEMM kernel's main loop, read from its SASS (no GPU needed).

For a compiled kernel (Triton 3.6's own ptxas for sm_90, disassembled with its cuobjdump) this finds the main loop
(the largest backward branch holding a warpgroup MMA) and counts, per thread and iteration, its SASS
instructions by *issue class* (which SM pipe issues them: the counts sim/perf/fused_kernel.py turns into cycles
with the profile's datasheet rates) and the shared-memory wavefronts of its shared-memory instructions (one per
128 bytes a warp moves: LDS.128 = 4, LDSM.16.M88.4 = 4, LDGSTS.128 = 4, a 32-bit or narrower access = 1).

Classes: ``fp32`` the FMA pipe (FADD/FMUL/FFMA/FMNMX/FSEL/FSETP and the IMAD/VIADD integer forms ptxas places on
it), ``int`` the ALU pipe (integer add/logic/shift/permute/compare/select), ``conversion`` F2F/F2FP/I2F/F2I,
``uniform`` the uniform datapath (U*),
``shared`` shared-memory and cp.async instructions (LDS/STS/LDSM/LDGSTS), ``other`` (moves, branches, barriers,
wgmma and its fences).

It also reads how the loop waits on its tensor-core work: ``mma_instructions`` (warpgroup MMAs, QGMMA/HGMMA, per
thread and iteration), ``mma_macs_per_instruction`` (m x n x k of their shape) and ``waited_mma_instructions``, the
MMAs of groups that the loop waits on to completion right away (``WARPGROUP.DEPBAR.LE gsb0, 0x0`` closing the
group: the MMA's latency is on the loop's critical path). Groups closed by a wait for ``<= j`` outstanding groups,
j >= 1, overlap the work that follows (Triton's pipelined wgmma); of those, ``register_a_mma_instructions`` take
their A operand from registers (``QGMMA Rd, Ra, gdesc``: the fused kernels' expanded weights), so each waits for
its expansion and the next iteration's expansion waits for them.

    python scripts/fused_kernel_structure.py --variant v4 --block-n 128 --block-t 16 --warps 4 --stages 4
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ISSUE_CLASSES = ("fp32", "int", "conversion", "uniform", "shared", "other")
_FULL = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z0-9]+(?:\.[A-Za-z0-9_]+)*)[\s;]")
# the FMA pipe: float32 arithmetic, and the integer multiply-adds / adds ptxas puts there to offload the ALU pipe
_FP32 = {"FADD", "FMUL", "FFMA", "FMNMX", "FSEL", "FSETP", "FADD32I", "FMUL32I", "FFMA32I", "IMAD", "IMAD32I",
         "VIADD", "IMUL"}
_INT = {"IADD3", "LOP3", "SHF", "PRMT", "ISETP", "SEL", "LEA", "IMNMX", "IABS", "BMSK", "SGXT",
        "IADD", "LOP", "SHL", "SHR", "POPC", "FLO", "BREV", "VIMNMX", "IDP", "IADD32I", "LOP32I",
        "ISCADD", "BFE", "BFI", "PLOP3", "P2R", "R2P", "CSEL"}
_CONV = {"F2F", "F2FP", "I2F", "F2I", "I2FP", "F2IP", "FRND"}
_SHARED = {"LDS", "STS", "LDSM", "LDGSTS", "STSM", "ATOMS"}


def issue_class(opcode: str) -> str:
    """Issue class of one SASS opcode with its modifiers (e.g. 'LDS.U16', 'IMAD.MOV.U32')."""
    base = opcode.split(".")[0]
    if base in _SHARED:
        return "shared"
    if base in _FP32:
        return "fp32"
    if base in _CONV:
        return "conversion"
    if base in _INT:
        return "int"
    if base.startswith("U"):
        return "uniform"
    return "other"


def shared_wavefronts(opcode: str) -> int:
    """Shared-memory wavefronts (128-byte transfers) of one warp-wide shared-memory instruction."""
    parts = opcode.split(".")
    if parts[0] not in _SHARED:
        return 0
    if parts[0] in ("LDSM", "STSM"):  # LDSM.16.M88.4: four 8x8 matrices (512 bytes per warp)
        return int(parts[-1]) if parts[-1] in ("2", "4") else 1
    for p in parts[1:]:
        if p == "128":
            return 4
        if p == "64":
            return 2
    return 1


_MMA = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?[QH]GMMA\.(\d+)x(\d+)x(\d+)[\w.]*\s+R\d+,\s*(R\d+,)?")
_MMA_WAIT = re.compile(r"/\*([0-9a-f]{4,})\*/\s+WARPGROUP\.DEPBAR\.LE\s+gsb0,\s*0x([0-9a-f]+)")


def main_loop_range(sass: str) -> tuple[int, int] | None:
    """(first, last) address of the main loop: the smallest backward branch whose body holds every warpgroup MMA
    (the K loop: a split-K reduction loop in the epilogue has none, and in a warp-specialized kernel a spin loop of
    another partition can jump back across the MMA partition's code), else the largest backward branch."""
    mma_at = [int(a, 16) for a, *_ in _MMA.findall(sass)]
    best = best_mma = None
    for here_hex, target_hex in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?BRA\s+0x([0-9a-f]+)", sass):
        here, target = int(here_hex, 16), int(target_hex, 16)
        if target < here and (best is None or here - target > best[1] - best[0]):
            best = (target, here)
        if target < here and mma_at and all(target <= a <= here for a in mma_at) and (
                best_mma is None or here - target < best_mma[1] - best_mma[0]):
            best_mma = (target, here)
    return best_mma or best


def mma_waits(sass: str, lo: int, hi: int) -> dict:
    """Warpgroup MMAs in [lo, hi] and how many of them the loop waits on to completion at once (their group is
    closed by WARPGROUP.DEPBAR.LE gsb0, 0x0)."""
    events = [(int(a, 16), "mma", (int(m) * int(n) * int(k), bool(reg_a))) for a, m, n, k, reg_a in _MMA.findall(sass)]
    events += [(int(a, 16), "wait", int(v, 16)) for a, v in _MMA_WAIT.findall(sass)]
    events = sorted(e for e in events if lo <= e[0] <= hi)
    mmas = [e for e in events if e[1] == "mma"]
    waited = register_a = 0
    pending: list = []
    for _, kind, value in events:
        if kind == "mma":
            pending.append(value)
        else:
            if value == 0:
                waited += len(pending)
            else:
                register_a += sum(reg for _, reg in pending)
            pending = []
    register_a += sum(reg for _, reg in pending)  # a group closed only after the loop's branch
    return {"mma_instructions": len(mmas), "waited_mma_instructions": waited,
            "register_a_mma_instructions": register_a, "mma_macs_per_instruction": mmas[0][2][0] if mmas else 0}


def loop_structure(sass: str) -> dict:
    """Main-loop counts per thread and iteration: instructions by issue class, shared-memory wavefronts and the
    warpgroup MMAs with how many of them are waited on at once."""
    insns = [(int(a, 16), op) for a, op in _FULL.findall(sass)]
    best = main_loop_range(sass)
    loop = [op for a, op in insns if best and best[0] <= a <= best[1]]
    by_class = collections.Counter(issue_class(op) for op in loop)
    out = {f"{c}_instructions": by_class.get(c, 0) for c in ISSUE_CLASSES}
    out["loop_instructions_per_thread"] = len(loop)
    out["shared_wavefronts_per_warp"] = sum(shared_wavefronts(op) for op in loop)
    out.update(mma_waits(sass, *best) if best else {"mma_instructions": 0, "waited_mma_instructions": 0,
                                                    "register_a_mma_instructions": 0, "mma_macs_per_instruction": 0})
    return out


def compiled_structure(kernel, sass: str, usage: str) -> dict:
    """Registers, shared memory and the loop structure of a compiled Triton kernel."""
    out = {"registers_per_thread": int(re.search(r"REG:(\d+)", usage).group(1)),
           "shared_bytes_per_program": int(kernel.metadata.shared)}
    out.update(loop_structure(sass))
    return out


def w4a8_structure(variant: str, block_n: int, block_t: int, warps: int, stages: int,
                   groups_per_step: int = 1, group_size: int = 128) -> dict:
    """Structure of dpq/kernels/w4a8_triton.py's kernel ``variant`` at one launch configuration."""
    from scripts.kernel_sass import compile_kernel

    extra = (groups_per_step,) if groups_per_step != 1 or variant in ("v4", "fp8") else ()
    k, sass, usage = compile_kernel(variant, block_n, block_t, group_size, 2, warps, stages, *extra)
    return compiled_structure(k, sass, usage)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="v4")
    ap.add_argument("--block-n", type=int, default=128)
    ap.add_argument("--block-t", type=int, default=16)
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--stages", type=int, default=4)
    ap.add_argument("--groups-per-step", type=int, default=1)
    a = ap.parse_args(argv)
    st = w4a8_structure(a.variant, a.block_n, a.block_t, a.warps, a.stages, a.groups_per_step)
    for key, value in st.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

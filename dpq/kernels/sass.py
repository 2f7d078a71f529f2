"""SASS checks of the fused W4A8 kernels: disassembly of a compiled kernel (Triton's bundled cuobjdump) and the
register-A warpgroup-MMA hazard of Triton 3.6's wgmma pipelining (triton-lang/triton issue 9433).

    disassemble(cubin) -> SASS text;  wgmma_register_hazards(sass) -> [(address, opcode, register, MMA address)]
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile


def cuobjdump_path() -> str | None:
    """Triton's bundled cuobjdump, or None where this Triton has none."""
    try:
        import triton
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    return path if os.path.exists(path) else None


def disassemble(cubin: bytes) -> str:
    """SASS of a cubin (``CompiledKernel.asm["cubin"]``)."""
    tool = cuobjdump_path()
    if tool is None:
        raise RuntimeError("no cuobjdump in this Triton installation (triton/backends/nvidia/bin)")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool, "--dump-sass", f.name], capture_output=True, text=True, check=True).stdout


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);")
# opcodes that write no general register (stores, barriers, branches, fences, prefetches; the MMAs write their
# accumulator, which the pipeline owns)
_NO_REGISTER_DEST = {"ST", "STS", "STG", "STL", "LDGSTS", "BAR", "BRA", "WARPGROUP", "DEPBAR", "LDGDEPBAR", "EXIT",
                     "UBLKPF", "CCTL", "RED", "REDG", "MEMBAR", "NOP", "ACQBULK", "QGMMA", "HGMMA", "IGMMA", "ARRIVES",
                     "SYNCS", "FENCE", "ERRBAR", "CALL", "RET", "BSYNC", "BSSY", "WARPSYNC"}


def _written_registers(opcode: str, operands: list[str]) -> set:
    """General registers an instruction writes: its first R operand after any leading predicate destinations
    (``SHFL.IDX PT, R46, ...``, ``ATOMG.E.ADD PT, R3, ...``), widened by the opcode's data width."""
    if opcode.split(".")[0] in _NO_REGISTER_DEST:
        return set()
    dest = None
    for o in operands:
        if re.fullmatch(r"!?U?P(?:T|\d+)", o):
            continue
        dest = re.fullmatch(r"R(\d+)(?:\.\w+)?", o)
        break
    if dest is None:
        return set()
    parts = opcode.split(".")
    if ".128" in opcode or "X4" in parts or "x4" in parts or parts[0] == "HMMA":
        width = 4
    elif (".64" in opcode or ".WIDE" in opcode or "X2" in parts or "x2" in parts
          or (parts[0] == "CS2R" and ".32" not in opcode)):
        width = 2
    else:
        width = 1
    return set(range(int(dest.group(1)), int(dest.group(1)) + width))


def wgmma_register_hazards(sass: str) -> list[tuple[str, str, str, str]]:
    """Writes, in the main loop, to a register holding the A operand (the expanded FP8 weights) of a warpgroup MMA
    that may still be in flight: (address, opcode, register written, address of that MMA).

    A register-A ``QGMMA`` reads its 4 A registers asynchronously from its issue until a ``WARPGROUP.DEPBAR.LE gsb0,
    n`` leaves at most n newer MMA groups in flight (a group ends at the MMA marked ``gsb0``); writing them before
    that is undefined (PTX ISA, wgmma.wait_group). The loop body is scanned twice, since groups stay in flight across
    the back edge. Only the main loop is scanned (the kernels' prologue issues no MMA; the epilogue starts with a
    wait for 0).
    """
    ins = [(int(a, 16), op, [o.strip() for o in ops.split(",")] if ops.strip() else [])
           for a, op, ops in _SASS_LINE.findall(sass)]
    loop = None
    for a, op, ops in ins:
        m = re.search(r"0x([0-9a-f]+)", " ".join(ops)) if op.startswith("BRA") else None
        if m and int(m.group(1), 16) < a and (loop is None or a - int(m.group(1), 16) > loop[1] - loop[0]):
            loop = (int(m.group(1), 16), a)
    if loop is None:
        return []
    body = [x for x in ins if loop[0] <= x[0] <= loop[1]]
    found, pending, open_group = set(), [], []  # pending: closed groups in flight; open_group: MMAs of the open one
    for _ in range(2):
        for a, op, ops in body:
            if op.startswith(("QGMMA", "HGMMA", "IGMMA")):
                m = re.fullmatch(r"R(\d+)", ops[1]) if len(ops) > 1 else None
                if m:
                    open_group.append((set(range(int(m.group(1)), int(m.group(1)) + 4)), a))
                if "gsb0" in ops:
                    pending.append(open_group)
                    open_group = []
            elif op.startswith("WARPGROUP.DEPBAR"):
                keep = int(ops[-1], 16)
                pending = pending[max(0, len(pending) - keep):] if keep else []
            elif ops:
                written = _written_registers(op, ops)
                for regs, mma in [x for g in pending for x in g] + open_group:
                    if written & regs:
                        found.add((hex(a), op, ops[0] if written else "", hex(mma)))
    return sorted(found)

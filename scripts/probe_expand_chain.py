"""Probe (GPU): is the prefill path slower in a layer chain than GEMM by GEMM because of the expansion kernel's row
tile? Runs scripts/bench_gpu.py for Llama-2-70B twice in one process, with ``expand_to_fp8``'s default block_n set
to 64 and to 128: per GEMM at M = 1024 (fp8, w4a8_expand) and whole layers at M = 1024 and 4096 (fp8, auto).

    python3 scripts/probe_expand_chain.py <out dir>     # writes <out>/b64/ and <out>/b128/
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dpq.kernels import w4a8_triton as W  # noqa: E402
from scripts import bench_gpu  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit(__doc__)
    for block_n in (64, 128):
        W.expand_to_fp8.__kwdefaults__["block_n"] = block_n
        print(f"=== expansion block_n={block_n}", flush=True)
        bench_gpu.main(["--out", f"{argv[0]}/b{block_n}", "--models", "llama-2-70b", "--m", "1024",
                        "--schemes", "fp8,w4a8_expand", "--quick", "--layer-chain", "--chain-m", "1024,4096",
                        "--chain-schemes", "fp8,auto"])
    return 0


if __name__ == "__main__":
    sys.exit(main())

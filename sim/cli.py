"""`simulate`: performance and capacity of BF16 / FP8 / W4A16 / W4A8 serving on a chosen accelerator.

    simulate --profile gaudi3                    # default `run`: llama-2-7b, every scheme, one table
    simulate run --profile h100 --model llama-2-70b --tp 4 --batch 1,16,64 --format json
    simulate profiles list | show NAME | validate [FILE ...]
    simulate models list
    simulate capacity --model llama-2-70b --tokens-per-s 5000 --ttft-ms 2000 --tpot-ms 50
    simulate plot DIR                            # re-draw the figures of a `--out DIR` without re-running

Results go to stdout, logs to stderr. Exit codes: 0 success, 1 error (bad file, value, or name), 2 usage.
The CLI is a thin layer: the work is done by sim.perf.simulate, sim.capacity and sim.plots.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from sim.argtypes import name_list, positive_float, positive_int, positive_int_list
from sim.errors import DpqsimError

DEFAULT_PROFILE = "gaudi3"
DEFAULT_MODEL = "llama-2-7b"
DEFAULT_SCHEMES = ("bf16", "fp8", "w4a16", "w4a8")
DEFAULT_BATCH = (16,)
DEFAULT_INPUT_LEN = 1024
DEFAULT_OUTPUT_LEN = 256
SUBCOMMANDS = ("run", "profiles", "models", "capacity", "plot")


def _flatten(groups: Sequence[Sequence]) -> list:
    out: list = []
    for group in groups:
        for item in group:
            if item not in out:
                out.append(item)
    return out


# ------------------------------------------------------------------------------------------------ parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="simulate",
        description="Predict BF16 / FP8 / W4A16 / W4A8 (DPQ) LLM serving speed and memory on Gaudi 2, Gaudi 3, "
                    "H100, H200. With no subcommand, `run` is implied.",
    )
    sub = parser.add_subparsers(dest="command", metavar="{run,profiles,models,capacity,plot}")

    run = sub.add_parser("run", help="simulate prefill and decode for each scheme (the default)")
    _add_workload_args(run)
    run.add_argument("--profile", type=name_list, action="append", metavar="NAME[,NAME]",
                     help=f"hardware profile name or YAML path (default {DEFAULT_PROFILE})")
    run.add_argument("--batch", type=positive_int_list, action="append", metavar="B[,B]",
                     help=f"batch size(s) (default {','.join(map(str, DEFAULT_BATCH))})")
    run.add_argument("--tp", type=positive_int, default=1, help="tensor-parallel degree (default 1)")
    run.add_argument("--layers", action="store_true",
                     help="also print the per-op speedups of W4A8 over BF16 when the table has several batches")
    _add_output_args(run)

    profiles = sub.add_parser("profiles", help="list, show or validate hardware profiles")
    psub = profiles.add_subparsers(dest="action", metavar="{list,show,validate}")
    psub.required = True
    psub.add_parser("list", help="list the shipped profiles")
    show = psub.add_parser("show", help="print a resolved profile (after `extends` and --set)")
    show.add_argument("name", help="profile name or YAML path")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    show.add_argument("--format", choices=("yaml", "json"), default="yaml")
    validate = psub.add_parser("validate", help="validate profile files (all shipped ones by default)")
    validate.add_argument("files", nargs="*", help="profile names or YAML paths")

    models = sub.add_parser("models", help="list the shipped model architectures")
    msub = models.add_subparsers(dest="action", metavar="{list}")
    msub.required = True
    msub.add_parser("list", help="list the shipped models with their sizes")

    cap = sub.add_parser("capacity", help="fewest devices and the batch that meet a traffic and latency target")
    cap.add_argument("--model", default="llama-2-70b", help="model name or YAML path (default llama-2-70b)")
    cap.add_argument("--profile", type=name_list, action="append", metavar="NAME[,NAME]",
                     help="profiles to compare (default gaudi2,gaudi3,h100,h200)")
    cap.add_argument("--scheme", type=name_list, action="append", metavar="S[,S]",
                     help="schemes to compare (default bf16,fp8,w4a8)")
    target = cap.add_mutually_exclusive_group(required=True)
    target.add_argument("--tokens-per-s", type=positive_float, help="target output tokens/s of the whole system")
    target.add_argument("--requests-per-s", type=positive_float,
                        help="target requests/s (each --input-len in, --output-len out)")
    cap.add_argument("--input-len", type=positive_int, default=2048, help="input tokens per request (2048)")
    cap.add_argument("--output-len", type=positive_int, default=256, help="output tokens per request (256)")
    cap.add_argument("--ttft-ms", type=positive_float, default=2000.0, help="time-to-first-token limit (2000)")
    cap.add_argument("--tpot-ms", type=positive_float, default=50.0, help="time-per-output-token limit (50)")
    cap.add_argument("--tp", type=positive_int_list, action="append", metavar="N[,N]",
                     help="tensor-parallel degrees to consider (default 1,2,4,8)")
    cap.add_argument("--max-devices", type=positive_int, default=1024, help="give up above this many devices")
    cap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="profile override applied to every profile")
    _add_output_args(cap)

    plot = sub.add_parser("plot", help="re-draw the figures of a `--out` directory from its saved results")
    plot.add_argument("dir", help="a directory written by `simulate run --out`")
    return parser


def _add_workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or YAML path (default {DEFAULT_MODEL})")
    p.add_argument("--scheme", type=name_list, action="append", metavar="S[,S]",
                   help="scheme(s) among bf16, fp8, w4a16, w4a8 (default all)")
    p.add_argument("--input-len", type=positive_int, default=DEFAULT_INPUT_LEN,
                   help=f"prompt tokens per sequence (default {DEFAULT_INPUT_LEN})")
    p.add_argument("--output-len", type=positive_int, default=DEFAULT_OUTPUT_LEN,
                   help=f"generated tokens per sequence (default {DEFAULT_OUTPUT_LEN})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile value, e.g. --set dequant.placement=vector_pass")


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "json", "csv"), default="table", help="stdout format")
    p.add_argument("--out", metavar="DIR", help="write resolved config, results (CSV, JSON) and plots here")
    p.add_argument("--quiet", action="store_true", help="no progress or notes on stderr")


# ---------------------------------------------------------------------------------------------- commands

def cmd_run(args: argparse.Namespace) -> int:
    from sim import runs

    request = runs.RunRequest(
        profiles=tuple(_flatten(args.profile or [[DEFAULT_PROFILE]])),
        model=args.model,
        schemes=tuple(_flatten(args.scheme or [DEFAULT_SCHEMES])),
        batches=tuple(_flatten(args.batch or [DEFAULT_BATCH])),
        input_len=args.input_len,
        output_len=args.output_len,
        tp=args.tp,
        overrides=tuple(args.overrides),
    )
    result = runs.run(request, progress=None if args.quiet else _progress)
    if args.format == "json":
        print(runs.render_json(result))
    elif args.format == "csv":
        print(runs.render_csv(result), end="")
    else:
        print(runs.render_table(result, layers=args.layers or len(request.batches) == 1))
    if args.out:
        written = runs.write_out_dir(result, Path(args.out))
        _note(args, f"wrote {len(written)} files to {args.out}")
    return 0


def cmd_profiles(args: argparse.Namespace) -> int:
    from sim import profiles

    if args.action == "list":
        for name in profiles.list_profiles():
            p = profiles.load_profile(name)
            print(f"{name:22s} {p.description}")
        return 0
    if args.action == "show":
        import yaml

        overrides = profiles.parse_overrides(args.overrides)
        p = profiles.load_profile(args.name, overrides)
        data = p.to_dict()
        if p.numerics is not None and hasattr(p.numerics, "to_dict"):
            data["numerics"] = p.numerics.to_dict()
        elif p.raw is not None and "numerics" in p.raw:
            data["numerics"] = p.raw["numerics"]
        if args.format == "json":
            from sim.report import to_json

            print(to_json(data))
        else:
            print(yaml.safe_dump(data, sort_keys=False, width=120), end="")
        return 0
    names = args.files or profiles.list_profiles()
    failures = 0
    for name in names:
        try:
            p = profiles.load_profile(name)
        except DpqsimError as exc:
            print(f"FAIL {name}: {exc}")
            failures += 1
        else:
            print(f"ok   {name} ({p.source})")
    return 1 if failures else 0


def cmd_models(args: argparse.Namespace) -> int:
    from sim.models import list_models, load_model
    from sim.report import Column, format_table

    rows = []
    for name in list_models():
        m = load_model(name)
        rows.append({"name": name, "params_b": m.num_parameters() / 1e9, "layers": m.num_layers,
                     "hidden": m.hidden_size, "heads": f"{m.num_attention_heads}/{m.num_key_value_heads}",
                     "ffn": m.intermediate_size, "vocab": m.vocab_size,
                     "tied": "yes" if m.tie_word_embeddings else "no"})
    cols = [Column("name", "model", align="<"), Column("params_b", "params (B)", lambda v: f"{v:.2f}"),
            Column("layers", "layers"), Column("hidden", "hidden"), Column("heads", "heads q/kv"),
            Column("ffn", "ffn"), Column("vocab", "vocab"), Column("tied", "tied emb")]
    print(format_table(rows, cols))
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    from sim import capacity

    target = capacity.CapacityTarget(
        output_tokens_per_s=args.tokens_per_s,
        requests_per_s=args.requests_per_s,
        input_len=args.input_len,
        output_len=args.output_len,
        ttft_s=args.ttft_ms / 1e3,
        tpot_s=args.tpot_ms / 1e3,
    )
    plans = capacity.plan(
        args.model,
        profiles=_flatten(args.profile or [capacity.DEFAULT_PROFILES]),
        schemes=_flatten(args.scheme or [capacity.DEFAULT_SCHEMES]),
        target=target,
        tp_options=_flatten(args.tp or [capacity.DEFAULT_TP]),
        max_devices=args.max_devices,
        overrides=tuple(args.overrides),
        progress=None if args.quiet else _progress,
    )
    rows = [p.to_row() for p in plans]
    if args.format == "json":
        from sim.report import to_json

        print(to_json({"model": args.model, "target": target.to_dict(), "plans": rows}))
    elif args.format == "csv":
        from sim.report import to_csv

        print(to_csv(rows), end="")
    else:
        print(capacity.render_table(plans, target, args.model))
    if args.out:
        written = capacity.write_out_dir(plans, target, args.model, Path(args.out))
        _note(args, f"wrote {len(written)} files to {args.out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from sim import runs

    written = runs.plot_out_dir(Path(args.dir))
    for path in written:
        print(path)
    return 0


# ------------------------------------------------------------------------------------------------- main

def _progress(done: int, total: int, what: str) -> None:
    """A one-line progress counter on stderr, drawn only on a terminal and erased when done."""
    if total < 2 or not sys.stderr.isatty():
        return
    line = f"[{done}/{total}] {what}"[:78]
    print(f"\r{line:78s}", end="", file=sys.stderr, flush=True)
    if done == total:
        print("\r" + " " * 78 + "\r", end="", file=sys.stderr, flush=True)


def _note(args: argparse.Namespace, text: str) -> None:
    if not getattr(args, "quiet", False):
        print(text, file=sys.stderr)


def _normalise_argv(argv: list[str]) -> list[str]:
    """`simulate --profile gaudi3` means `simulate run --profile gaudi3`."""
    if not argv or argv[0] in ("-h", "--help"):
        return argv if argv else ["run"]
    if argv[0] in SUBCOMMANDS:
        return argv
    return ["run", *argv]


def main(argv: Sequence[str] | None = None) -> int:
    argv = _normalise_argv(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0)
    handlers = {"run": cmd_run, "profiles": cmd_profiles, "models": cmd_models, "capacity": cmd_capacity,
                "plot": cmd_plot}
    try:
        return handlers[args.command](args)
    except (DpqsimError, ValueError, FileNotFoundError) as exc:
        print(f"simulate: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""Layer-by-layer calibration and quantization of a decoder (GPTQ's sequential scheme), and applying a checkpoint.

For block i: (1) run the float block on the calibration activations (the outputs of the already-quantized blocks
0..i-1) and accumulate one Hessian per input group (q/k/v share one, gate/up share one); (2) quantize the block's
linears; (3) run the quantized block (16-bit activations) to get the next block's inputs and record max|x| per
linear input, from which the static FP8 activation scales are set (DPQ step 8: statistics of the 4-bit model).
Only one block's activations live in memory at a time: memory ~ calibration tokens x d_model x 4 bytes plus one
block's Hessians.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np

from dpq.backends import get_backend
from dpq.gptq import HessianAccumulator
from dpq.methods import config_to_dict, quantize_linears, with_act_scale
from dpq.model import INPUT_GROUPS, DecoderLayer, LlamaModel
from dpq.packed import Checkpoint

INPUT_GROUP_OF = {name: group for group, names in INPUT_GROUPS.items() for name in names}


def _batches(n: int, batch_size: int):
    for i in range(0, n, batch_size):
        yield slice(i, min(i + batch_size, n))


def _progress(msg: str, stream) -> None:
    stream = sys.stderr if stream == "stderr" else stream
    if stream is not None:
        print(msg, file=stream, flush=True)


def quantize_model(model: LlamaModel, config, calib_ids: np.ndarray, *, batch_size: int = 8,
                   progress="stderr", metadata: dict | None = None) -> Checkpoint:
    """Quantize every linear of ``model`` with ``config``; embeddings and lm_head stay in float.

    Args:
        model: the float model (not modified).
        config: a method config from dpq.methods.
        calib_ids: int (n_sequences, tokens) calibration token ids.
        batch_size: sequences per forward batch.
        progress: stream for per-layer progress lines (None: silent).
        metadata: extra entries stored in the checkpoint's metadata.
    Returns:
        Checkpoint with keys ``blk.{i}.{linear}``.
    """
    calib_ids = np.asarray(calib_ids)
    if calib_ids.ndim != 2 or calib_ids.size == 0:
        raise ValueError(f"calibration ids must be a non-empty (sequences, tokens) array, got shape {calib_ids.shape}")
    t0 = time.perf_counter()
    reference = get_backend("reference")
    x = model.embed_tokens(calib_ids)
    n = x.shape[0]
    linears = {}
    d_in = {"attn_in": model.config.d_model, "attn_out": model.config.d_model, "mlp_in": model.config.d_model,
            "mlp_down": model.config.d_ff}
    for i, layer in enumerate(model.layers):
        hess = None
        if config.uses_hessian:
            hess = {g: HessianAccumulator(d_in[g]) for g in INPUT_GROUPS}
            for sl in _batches(n, batch_size):
                model.forward_layer(i, x[sl], observer=lambda _i, g, h: hess[g].add(h))
        packed = {}
        for group, names in INPUT_GROUPS.items():
            weights = {nm: layer.linears[nm].weight for nm in names}
            packed.update(quantize_linears(weights, hess[group].hessian if hess else None, config))
        qlayer = DecoderLayer(layer.attn_norm, layer.ffn_norm, {nm: reference.linear(p) for nm, p in packed.items()})
        absmax = dict.fromkeys(INPUT_GROUPS, 0.0)

        def record(_i, g, h):
            absmax[g] = max(absmax[g], float(np.abs(h).max(initial=0.0)))
        for sl in _batches(n, batch_size):
            x[sl] = model.forward_layer(i, x[sl], layer=qlayer, observer=record)
        for nm, p in packed.items():
            linears[f"blk.{i}.{nm}"] = with_act_scale(p, absmax[INPUT_GROUP_OF[nm]], config)
        _progress(f"[quantize] {config.method} W{getattr(config, 'weight_bits', 8)}: layer {i + 1}/"
                  f"{len(model.layers)} done, {time.perf_counter() - t0:.1f} s", progress)
    meta = {"method": config.method, "config": config_to_dict(config), "base_model": model.name,
            "calibration": {"sequences": int(calib_ids.shape[0]), "tokens_per_sequence": int(calib_ids.shape[1])},
            "quantize_seconds": round(time.perf_counter() - t0, 2)}
    meta.update(metadata or {})
    return Checkpoint(linears=linears, metadata=meta)


def apply_checkpoint(model: LlamaModel, ckpt: Checkpoint, backend: str = "reference", hw=None,
                     **backend_options) -> LlamaModel:
    """A model running ``ckpt``'s quantized linears on ``backend`` (norms, embeddings and head from ``model``).

    ``backend_options`` go to ``dpq.backends.get_backend`` (e.g. ``out_dtype="float32"``).
    """
    be = get_backend(backend, hw, **backend_options)
    layers = []
    for i, layer in enumerate(model.layers):
        lin = {}
        for nm in layer.linears:
            key = f"blk.{i}.{nm}"
            if key not in ckpt.linears:
                raise ValueError(f"checkpoint has no linear {key!r} (was it made for another model?)")
            p = ckpt.linears[key]
            w = layer.linears[nm]
            if (p.out_features, p.in_features) != (w.out_features, w.in_features):
                raise ValueError(f"checkpoint linear {key!r} has shape {(p.out_features, p.in_features)}, the model "
                                 f"has {(w.out_features, w.in_features)}")
            lin[nm] = be.linear(p)
        layers.append(replace(layer, linears=lin))
    return model.with_layers(layers)

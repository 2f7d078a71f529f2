"""dpq: DPQ (FP8-aware GPTQ with group-aware reordering), its baselines, packed W4A8 checkpoints, accuracy.

Public entry points (imported lazily so that ``dpq.assets`` stays usable with the standard library alone):

    from dpq import make_config, quantize, load_default_model
    model, tok = load_default_model()                    # SmolLM2-135M-Instruct (Q4_1-dequantized), cached assets
    ckpt = quantize(model, make_config("dpq", group_size=64), calib_ids)   # calib_ids: int (sequences, tokens)
"""

_LAZY = {
    "quantize": ("dpq.calibrate", "quantize_model"),
    "apply_checkpoint": ("dpq.calibrate", "apply_checkpoint"),
    "make_config": ("dpq.methods", "make_config"),
    "METHODS": ("dpq.methods", "METHODS"),
    "load_default_model": ("dpq.pipeline", "load_default_model"),
    "save_checkpoint": ("dpq.packed", "save_checkpoint"),
    "load_checkpoint": ("dpq.packed", "load_checkpoint"),
    "get_backend": ("dpq.backends", "get_backend"),
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dpq' has no attribute {name!r}")

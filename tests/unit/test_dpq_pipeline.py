"""The whole pipeline on the real model, on a small slice: calibrate -> DPQ -> packed checkpoint -> reference and
emulated backends -> perplexity. Skipped (with the fetch command) when the assets are not cached.

To stay within the test-time budget on 2 cores, the Hessian-based methods run on the first 8 of the 30 blocks
(the real weights, the real head); RTN and FP8 run on the whole model. The full-size run is
scripts/eval_accuracy.py."""

import numpy as np
import pytest

from dpq.calibrate import apply_checkpoint, quantize_model
from dpq.eval import compare_backends, perplexity
from dpq.methods import make_config
from dpq.packed import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def data(smollm2, require_asset):
    require_asset("cal-data")
    from dpq.data import calibration_ids, load_documents, split_documents, token_windows

    _, tok = smollm2
    calib = calibration_ids(tok, 4, 64)
    windows = token_windows(tok, split_documents(load_documents("wiki"), "eval"), 64, 2)
    return calib, windows


N_BLOCKS = 8


@pytest.fixture(scope="module")
def model8(smollm2):
    model, _ = smollm2
    return model.with_layers(model.layers[:N_BLOCKS])


@pytest.fixture(scope="module")
def dpq_ckpt(model8, data):
    return quantize_model(model8, make_config("dpq-gar", group_size=64), data[0], progress=None)


def test_dpq_checkpoint_covers_every_linear(dpq_ckpt):
    assert len(dpq_ckpt.linears) == N_BLOCKS * 7
    p = dpq_ckpt.linears[f"blk.{N_BLOCKS - 1}.ffn_down"]
    assert (p.out_features, p.in_features, p.group_size, p.fp8_format) == (576, 1536, 64, "float8_e4m3")
    assert np.isfinite(p.act_scale) and p.act_scale > 0
    assert dpq_ckpt.metadata["calibration"] == {"sequences": 4, "tokens_per_sequence": 64}


def test_quantized_model_stays_close_to_the_reference(model8, data, dpq_ckpt, tmp_path):
    model = model8
    windows = data[1]
    ref = perplexity(model, windows, progress=None)["ppl"]
    q = perplexity(apply_checkpoint(model, dpq_ckpt), windows, progress=None)["ppl"]
    assert ref < q < 1.5 * ref  # W4A8 g64 costs some perplexity, not the model
    back = load_checkpoint(save_checkpoint(tmp_path / "m.dpq", dpq_ckpt))
    a = apply_checkpoint(model, dpq_ckpt).forward(windows[:1, :16])
    b = apply_checkpoint(model, back).forward(windows[:1, :16])
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("hw", ["gaudi2"])
def test_emulated_backend_runs_the_checkpoint(model8, data, dpq_ckpt, hw):
    model = model8
    r = compare_backends(apply_checkpoint(model, dpq_ckpt), apply_checkpoint(model, dpq_ckpt, "emulated", hw),
                         data[1][:1, :24], progress=None)
    assert r["argmax_agreement"] > 0.7
    assert abs(np.log(r["ppl_b"] / r["ppl_a"])) < 0.1


def test_rtn_and_fp8_methods_run_end_to_end(smollm2, data):
    model, _ = smollm2
    ref = perplexity(model, data[1], progress=None)["ppl"]
    for cfg, bound in ((make_config("rtn-w4a8", group_size=64), 1.6), (make_config("fp8-w8a8"), 1.1)):
        ck = quantize_model(model, cfg, data[0][:2, :32], progress=None)
        ppl = perplexity(apply_checkpoint(model, ck), data[1], progress=None)["ppl"]
        assert ref < ppl < bound * ref


def test_checkpoint_for_another_shape_is_rejected(model8, dpq_ckpt):
    from dataclasses import replace

    from dpq.packed import Checkpoint

    model = model8
    broken = dict(dpq_ckpt.linears)
    del broken["blk.3.attn_q"]
    with pytest.raises(ValueError, match="no linear 'blk.3.attn_q'"):
        apply_checkpoint(model, Checkpoint(broken, dpq_ckpt.metadata))
    swapped = dict(dpq_ckpt.linears)
    swapped["blk.0.attn_q"] = replace(dpq_ckpt.linears["blk.0.attn_k"], name="blk.0.attn_q")
    with pytest.raises(ValueError, match="has shape"):
        apply_checkpoint(model, Checkpoint(swapped, dpq_ckpt.metadata))

import pytest

from sim.perf.engine import run_kernel
from sim.perf.gemm import gemm_op
from sim.perf.kernels import stream_plan
from sim.perf import predict_gemm
from sim.profiles import load_profile
from sim.roofline import RooflineRates, roofline_gemm, roofline_op

# Stated margin: where the roofline is exact (a long pure stream at the curve's plateau, a large square GEMM
# without wave tails) the event model agrees with it within 5 %.
MARGIN = 0.05


@pytest.mark.parametrize("name", ["h100", "h200", "gaudi2", "gaudi3"])
def test_event_model_matches_roofline_on_a_pure_stream(name):
    hw = load_profile(name)
    nbytes = 4.0e9
    event = run_kernel(stream_plan(hw, "copy", nbytes, nbytes, 0.0)).time_s
    rates = RooflineRates.from_profile(hw)
    roof = rates.launch_s + 2 * nbytes / (hw.memory.hbm_bandwidth_bytes_per_s *
                                          hw.memory.hbm_efficiency_by_transfer_bytes(2 * nbytes))
    assert event == pytest.approx(roof, rel=MARGIN)


@pytest.mark.parametrize("name", ["h100", "gaudi3"])
@pytest.mark.parametrize("scheme", ["bf16", "fp8"])
def test_event_model_matches_roofline_on_a_large_gemm(name, scheme):
    hw = load_profile(name)
    m = n = k = 16384
    event = predict_gemm(hw, m, n, k, scheme)
    me = hw.matrix_engine
    flops = 2.0 * m * n * k
    best_tile = max(t[2] for t in me.tile_shapes)
    roof = hw.kernel.launch_overhead_s + flops / (me.peak_flops_per_s[scheme] *
                                                  me.efficiency_by_flops[scheme](flops) * best_tile)
    assert event == pytest.approx(roof, rel=MARGIN)


def test_roofline_is_a_lower_bound_shape():
    hw = load_profile("h100")
    assert roofline_gemm(hw, 1, 4096, 4096, "bf16") < roofline_gemm(hw, 1, 4096, 4096, "bf16") * 1.0001
    rates = RooflineRates.from_profile(hw)
    op = gemm_op(1, 12288, 4096, "bf16")
    assert roofline_op(rates, op) == pytest.approx(rates.launch_s + op.bytes / rates.hbm_bytes_per_s)

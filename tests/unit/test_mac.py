"""sim.mac: the generic FP8 matrix-engine kernel against golden vectors (zero tolerance) and its Python twin."""

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from sim import formats
from sim.mac import fp8_gemm, fp8_gemm_reference, resolve_numerics

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

# Hopper fast-accumulation runs where cuBLAS splits K into contiguous parts, each a full chain, the parts added in
# float32 in order. The partitions were measured with scripts/probe_split_k.py (tests/golden/hopper_split_k_probe.npz,
# H200); test_split_k_probe_implies_these_partitions re-derives them from that file.
HOPPER_SPLITS = {
    "e4e4_normal_16x16x8192": (2816, 2816, 2560),
    "e4e4_normal_16x16x14336": (2944,) * 4 + (2560,),
    "e4e4_normal_16x16x16384": (2816,) * 5 + (2304,),
    "e4e4_normal_16x16x28672": (2688,) * 10 + (1792,),
}


def _same_bits(x, y):
    return np.array_equal(np.asarray(x, np.float32).view(np.uint32), np.asarray(y, np.float32).view(np.uint32))


def _load(name):
    data = np.load(GOLDEN / name)
    return data, json.loads(str(data["meta"]))


# ------------------------------------------------------------------ golden vectors


@pytest.mark.parametrize("chip", ["gaudi2", "gaudi3"])
def test_gaudi_golden_vectors_bit_exact(chip):
    data, meta = _load(f"{chip}_mme.npz")
    compared = 0
    for name, s in meta["sets"].items():
        out = fp8_gemm(data[f"{name}_a"], data[f"{name}_b"], hw=chip, a_format=s["a_format"],
                       b_format=s["b_format"])
        expected = data[f"{name}_out"]
        assert out.shape == expected.shape
        assert _same_bits(out, expected), f"{chip} {name}: {np.sum(out != expected)} outputs differ"
        compared += expected.size
    assert compared == 7680


def _hopper_runs():
    data, meta = _load("hopper_scaled_mm.npz")
    for name, s in meta["sets"].items():
        for run, r in s["runs"].items():
            yield pytest.param(name, run, id=f"{name}-{run}")


@pytest.fixture(scope="module")
def hopper_data():
    return _load("hopper_scaled_mm.npz")


@pytest.mark.parametrize("name,run", list(_hopper_runs()))
def test_hopper_scaled_mm_vectors_bit_exact(hopper_data, name, run):
    data, meta = hopper_data
    s, r = meta["sets"][name], meta["sets"][name]["runs"][run]
    split = HOPPER_SPLITS.get(name, 1) if r["fast_accum"] else 1
    out = fp8_gemm(data[f"{name}_a"][: r["m_rows"]], data[f"{name}_b"], hw="h100", a_format=s["a_format"],
                   b_format=s["b_format"], scale_a=r["scale_a"], scale_b=r["scale_b"], fast_accum=r["fast_accum"],
                   split_k=split, out_dtype=r["out_dtype"])
    expected = data[f"{name}__{run}_out"]
    assert _same_bits(out, expected), f"{np.sum(out != expected)} of {expected.size} outputs differ"


def _partition_from_probe(positions, out00, k, tiny, large):
    """Contiguous K parts implied by a split-K probe sweep (see scripts/probe_split_k.py).

    out00(p) = large + tiny * (K - |part(p)|) + (tiny terms of part(p) before p, truncated), so at the first step of
    a part the value is large + tiny * (K - |part|), and a part starts wherever the value drops.
    """
    counts = (out00.astype(np.float64) - large) / tiny
    starts = [0] + [i for i in range(1, len(counts)) if counts[i] < counts[i - 1]]
    bounds = [int(positions[i]) for i in starts] + [k]
    parts = tuple(b - a for a, b in zip(bounds, bounds[1:]))
    for i, size in zip(starts, parts):
        assert counts[i] == k - size  # the value at a part's first step names that part's length
    return parts


def test_split_k_probe_implies_these_partitions():
    data, meta = _load("hopper_split_k_probe.npz")
    checked = 0
    for m, n, k in meta["shapes"]:
        tag = f"m{m}_n{n}_k{k}"
        parts = _partition_from_probe(data[f"{tag}_positions"], data[f"{tag}_out00"], k, meta["tiny_product"],
                                      meta["large_product"])
        assert parts == HOPPER_SPLITS[f"e4e4_normal_16x16x{k}"], tag
        if f"{tag}_other_rows" in data.files:  # rows without the large term: every chain sums its tiny terms exactly
            assert np.all(data[f"{tag}_other_rows"] == k * meta["tiny_product"])
        checked += 1
    assert checked == 7


def test_hopper_vectors_cover_what_the_issue_asks(hopper_data):
    _, meta = hopper_data
    runs = [(s, r) for s in meta["sets"].values() for r in s["runs"].values()]
    assert {r["fast_accum"] for _, r in runs} == {False, True}
    assert {r["out_dtype"] for _, r in runs} == {"float32", "bfloat16"}
    assert {(s["a_format"], s["b_format"]) for s, _ in runs} >= {("float8_e4m3fn", "float8_e5m2"),
                                                                 ("float8_e5m2", "float8_e4m3fn")}
    assert {r["m_rows"] for _, r in runs} >= {1, 2, 4, 8, 16}
    assert any(r["scale_a"] != 1.0 for _, r in runs)
    assert all(r["repeatable"] for _, r in runs)
    assert sum(np.prod([r["m_rows"], s["shape"][1]]) for s, r in runs) == 280640


def test_torch_cast_matches_encode(hopper_data):
    data, meta = hopper_data
    x = data["cast_x"]
    for fmt in meta["cast"]["formats"]:
        ours, gpu = formats.encode(x, fmt, saturate=False), data[f"cast_{fmt}"]
        same_value = (ours == gpu) | (np.isnan(formats.decode(ours, fmt)) & np.isnan(formats.decode(gpu, fmt)))
        assert same_value.all(), fmt  # torch writes NaN as 0x7f for e5m2 where ml_dtypes writes 0x7e


# ------------------------------------------------------------------ kernel vs plain-Python twin


def _codes(rng, shape, fmt_name, dist):
    fmt = formats.get_format(fmt_name)
    if dist == "wide":  # every finite code, subnormals and zeros included
        table = formats.decode_table(fmt)
        finite = np.nonzero(np.isfinite(table))[0].astype(np.uint8)
        return rng.choice(finite, size=shape)
    x = rng.standard_normal(shape) * np.exp2(rng.integers(-6, 7, size=shape))
    return formats.encode(x.astype(np.float32) * np.float32(fmt.max_finite / 64), fmt)


TWIN_CASES = [
    # chip, a_format, b_format, kwargs
    ("h100", "float8_e4m3fn", "float8_e4m3fn", {}),
    ("h100", "float8_e4m3fn", "float8_e4m3fn", {"fast_accum": True}),
    ("h100", "float8_e4m3fn", "float8_e5m2", {"scale_a": 0.0123, "scale_b": 3.7, "out_dtype": "bfloat16"}),
    ("h100", "float8_e5m2", "float8_e4m3fn", {"fast_accum": True, "split_k": (96, 64, 64)}),
    ("h100", "float8_e4m3fn", "float8_e4m3fn", {"split_k": 2}),
    ("gaudi2", "float8_e4m3", "float8_e4m3", {}),
    ("gaudi2", "float8_e4m3_b15", "float8_e4m3_b15", {}),  # operand exponent floor, float32 flush to zero
    ("gaudi2", "float8_e4m3_b3", "float8_e4m3_b11", {"scale_a": 0.3}),
    ("gaudi2", "float8_e5m2", "float8_e5m2", {"out_dtype": "bfloat16"}),
    ("gaudi3", "float8_e4m3fn", "float8_e4m3fn", {}),
    ("gaudi3", "float8_e4m3fn", "float8_e5m2", {"scale_b": 1.7}),
    ("gaudi3", "float8_e4m3fn_b62", "float8_e4m3_b60", {}),  # float32-subnormal accumulators
    ("gaudi3", "float8_e4m3_b0", "float8_e4m3fn_b1", {}),
]


@pytest.mark.parametrize("chip,fa,fb,kwargs", TWIN_CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}-{i}"
                                                              for i, c in enumerate(TWIN_CASES)])
@pytest.mark.parametrize("dist", ["wide", "spread"])
def test_kernel_equals_python_twin(chip, fa, fb, kwargs, dist):
    rng = np.random.default_rng(abs(hash((chip, fa, fb, dist))) % 2**32)
    a = _codes(rng, (3, 224), fa, dist)  # K=224: 7 Hopper steps, not a multiple of the 128-element promotion
    b = _codes(rng, (4, 224), fb, dist)
    args = dict(hw=chip, a_format=fa, b_format=fb, **kwargs)
    assert _same_bits(fp8_gemm(a, b, **args), fp8_gemm_reference(a, b, **args))


def test_result_does_not_depend_on_tiling():
    # N and M not multiples of the kernel's column chunk and row tile: every output equals its own 1 x 1 product.
    rng = np.random.default_rng(4)
    a = _codes(rng, (19, 96), "float8_e4m3fn", "wide")
    b = _codes(rng, (70, 96), "float8_e4m3fn", "wide")
    for chip in ("h100", "gaudi3"):
        full = fp8_gemm(a, b, hw=chip)
        single = np.array([[fp8_gemm(a[i:i + 1], b[j:j + 1], hw=chip)[0, 0] for j in range(0, 70, 23)]
                           for i in range(0, 19, 6)])
        assert _same_bits(full[::6, ::23], single)


@pytest.mark.slow
@pytest.mark.parametrize("chip,fmt", [("h100", "float8_e4m3fn"), ("gaudi2", "float8_e4m3"),
                                      ("gaudi3", "float8_e4m3fn")])
@pytest.mark.parametrize("dist", ["wide", "spread"])
def test_kernel_equals_python_twin_large(chip, fmt, dist):
    rng = np.random.default_rng(11)
    a = _codes(rng, (8, 1024), fmt, dist)
    b = _codes(rng, (8, 1024), fmt, dist)
    for kwargs in ({}, {"scale_a": 0.37, "out_dtype": "bfloat16"}):
        if chip == "h100":
            kwargs = dict(kwargs, fast_accum=True, split_k=(640, 384))
        assert _same_bits(fp8_gemm(a, b, hw=chip, **kwargs), fp8_gemm_reference(a, b, hw=chip, **kwargs))


def test_kernel_equals_twin_on_cancellation():
    # Rows whose products cancel exactly or nearly: the accumulator's own truncation decides the low bits.
    rng = np.random.default_rng(5)
    half = _codes(rng, (4, 64), "float8_e4m3fn", "spread")
    a = np.concatenate([half, half], axis=1)
    b = np.concatenate([half, half ^ np.uint8(0x80)], axis=1)
    b[:, -1] ^= np.uint8(0x01)
    for chip in ("h100", "gaudi3"):
        assert _same_bits(fp8_gemm(a, b, hw=chip), fp8_gemm_reference(a, b, hw=chip))
        assert np.all(fp8_gemm(a[:, :64], a[:, :64] ^ np.uint8(0x80), hw=chip).diagonal() < 0)


def test_tiny_addends_after_large_accumulator():
    # e5m2: acc ~ 2^31 from one product, then steps of products down to 2^-32: on Gaudi 2 the exact sum of the
    # accumulator and a step spans more than float64's 53 bits, which the kernel rounds through its integer path.
    rng = np.random.default_rng(9)
    tiny = rng.choice([-1, 1], size=(4, 255)) * np.exp2(rng.integers(-16, -8, size=(4, 255)))
    tiny = formats.encode(tiny.astype(np.float32), "float8_e5m2")
    big = formats.encode(np.array([57344.0, -49152.0, 40960.0, 57344.0], np.float32), "float8_e5m2")[:, None]
    a = np.concatenate([big, tiny], axis=1)
    b = np.concatenate([big, tiny[::-1]], axis=1)
    va, vb = formats.decode(a, "float8_e5m2"), formats.decode(b, "float8_e5m2")
    acc = Fraction(float(va[0, 0]) * float(vb[0, 0]))
    step2 = sum(Fraction(float(x)) * Fraction(float(y)) for x, y in zip(va[0, 16:32], vb[0, 16:32]))
    assert Fraction(float(acc) + float(step2)) != acc + step2  # the case really needs more than float64
    for chip in ("gaudi2", "gaudi3"):
        args = dict(hw=chip, a_format="float8_e5m2", b_format="float8_e5m2")
        assert _same_bits(fp8_gemm(a, b, **args), fp8_gemm_reference(a, b, **args))


def test_overflow_to_inf_matches_twin():
    a = np.full((2, 32), formats.encode(np.array([448.0]), "float8_e4m3fn")[0], np.uint8)
    args = dict(hw="gaudi3", scale_a=1e30, scale_b=1e3)
    out = fp8_gemm(a, a, **args)
    assert np.isinf(out).all() and _same_bits(out, fp8_gemm_reference(a, a, **args))


# ------------------------------------------------------------------ semantics


def test_result_close_to_exact_product():
    rng = np.random.default_rng(1)
    a = _codes(rng, (8, 512), "float8_e4m3fn", "spread")
    b = _codes(rng, (8, 512), "float8_e4m3fn", "spread")
    exact = formats.decode(a, "float8_e4m3fn").astype(np.float64) @ formats.decode(b, "float8_e4m3fn").T
    for chip, rel in (("gaudi3", 1e-6), ("h100", 1e-3)):
        err = np.abs(fp8_gemm(a, b, hw=chip) - exact) / np.abs(exact).max()
        assert err.max() < rel


def test_zero_inputs_give_positive_zero_and_shapes_are_kept():
    z = np.zeros((5, 64), np.uint8)
    neg_zero = np.full((3, 64), 0x80, np.uint8)
    for chip in ("h100", "gaudi2", "gaudi3"):
        out = fp8_gemm(neg_zero, z, hw=chip)
        assert out.shape == (3, 5) and _same_bits(out, np.zeros((3, 5), np.float32))
    assert fp8_gemm(np.zeros((0, 64), np.uint8), z, hw="h100").shape == (0, 5)


def test_gaudi_power_of_two_scale_becomes_bias():
    rng = np.random.default_rng(2)
    a = _codes(rng, (4, 256), "float8_e4m3", "spread")
    b = _codes(rng, (4, 256), "float8_e4m3", "spread")
    # 2^-4 on a -> bias 11 (allowed); 2^4 on b -> bias 3 (allowed); 2^8 would need bias -1: a float32 multiply.
    assert _same_bits(fp8_gemm(a, b, hw="gaudi2", scale_a=2.0**-4, scale_b=2.0**4),
                      fp8_gemm(a, b, hw="gaudi2", a_format="float8_e4m3_b11", b_format="float8_e4m3_b3"))
    assert _same_bits(fp8_gemm(a, b, hw="gaudi2", scale_a=2.0**-4, scale_b=2.0**8),
                      fp8_gemm(a, b, hw="gaudi2", a_format="float8_e4m3_b11", scale_b=2.0**8))


def test_hw_may_be_a_profile_or_a_numerics_spec():
    from sim.profiles import load_profile

    profile = load_profile("h100")
    assert resolve_numerics(profile) is profile.numerics
    assert resolve_numerics(profile.numerics) is profile.numerics
    rng = np.random.default_rng(3)
    a = _codes(rng, (2, 64), "float8_e4m3fn", "spread")
    assert _same_bits(fp8_gemm(a, a, hw=profile), fp8_gemm(a, a, hw=profile.numerics))
    assert _same_bits(fp8_gemm(a, a, hw="h200"), fp8_gemm(a, a, hw="h100"))
    assert formats.get_format(profile.numerics.default_fp8_format).max_finite == 448.0


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("kwargs,exc,text", [
    (dict(a=np.zeros((2, 32), np.int8)), TypeError, "uint8"),
    (dict(a=np.zeros(32, np.uint8)), TypeError, "2-D"),
    (dict(b=np.zeros((2, 16), np.uint8)), ValueError, "K mismatch"),
    (dict(a_format="float8_e4m4"), ValueError, "unknown float format"),
    (dict(a_format="float8_e4m3"), ValueError, "takes FP8 operands"),
    (dict(a_format="float8_e5m2", b_format="float8_e5m2"), ValueError, "not supported"),
    (dict(hw="gaudi2", a_format="float8_e4m3", b_format="float8_e5m2"), ValueError, "same FP8 flavour"),
    (dict(hw="gaudi2", a_format="float8_e4m3_b5", b_format="float8_e4m3"), ValueError, "bias 5"),
    (dict(hw="gaudi2", fast_accum=True), ValueError, "no fast-accumulation"),
    (dict(a=np.full((2, 32), 0x7F, np.uint8)), ValueError, "NaN or inf"),
    (dict(split_k=3), ValueError, "equal parts"),
    (dict(split_k=(16, 8)), ValueError, "sum to 24"),
    (dict(split_k=0), ValueError, "positive"),
    (dict(out_dtype="float16"), ValueError, "out_dtype"),
    (dict(scale_a=float("nan")), ValueError, "finite"),
    (dict(scale_a=1e30, scale_b=1e30), ValueError, "overflows float32"),
    (dict(fast_accum="yes"), TypeError, "fast_accum"),
    (dict(hw=42), TypeError, "hw"),
])
def test_clear_errors(kwargs, exc, text):
    args = dict(a=np.zeros((2, 32), np.uint8), b=np.zeros((3, 32), np.uint8), hw="h100")
    args.update(kwargs)
    a, b = args.pop("a"), args.pop("b")
    with pytest.raises(exc, match=text):
        fp8_gemm(a, b, **args)

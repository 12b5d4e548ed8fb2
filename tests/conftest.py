"""Shared test setup: tolerances, the device fixture, NaN poisoning, seeding and input makers.

Every test compares an op with reference.py run in float64 on the same inputs upcast. Inputs are fresh
random tensors (never zeros or ones), each dimension gets its own size so that a swapped stride cannot
cancel out, and op outputs are NaN-filled before the kernel runs (`ops.set_poison`) so an element the
kernel forgets to write fails the comparison.

Helpers here are imported by the test files (`from conftest import ...`: tests/ is on sys.path under
pytest's default import mode).
"""
import os
import zlib

import pytest
import torch

from jamba_ext import ops, reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
LOW_DTYPES = [torch.bfloat16, torch.float16]
DTYPE_IDS = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}

# Tolerance of an op's output against the float64 reference, per activation dtype. fp32: the kernels
# accumulate in fp32 (a few ulp of 1.2e-7 per op). bf16 / fp16: the output is rounded once (half an ulp:
# 2e-3 / 5e-4 relative), rms_norm rounds twice by contract. An op that needs looser bounds overrides
# them in its test file and says why.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.bfloat16: dict(rtol=1e-2, atol=1e-2),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
}

# fp32 recurrent states computed from low-precision inputs are compared with fp32 accuracy.
STATE_TOL = dict(rtol=1e-5, atol=1e-5)

HAS_GPU = torch.cuda.is_available()


def dtype_params(dtypes=DTYPES):
    return [pytest.param(d, id=DTYPE_IDS[d]) for d in dtypes]


# The directory that holds the jamba_ext these tests imported: the checkout (pip install -e) or site-packages (a
# wheel). Subprocesses (the CLI, the benchmark scripts) get it first on PYTHONPATH and run in it, so they import the
# same package, and an unbuilt checkout cannot shadow an installed one.
import jamba_ext as _pkg  # noqa: E402

PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(_pkg.__file__)))


def package_env(**extra) -> dict:
    """os.environ for a subprocess that must import this process's jamba_ext (run it with cwd=PACKAGE_PARENT)"""
    return dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def hopper_code() -> bool:
    """The current GPU is a Hopper (sm_90) and the build holds sm_90 code, so the Hopper-only engines (wgmma, W8A8) run;
    not so in a PTX build for sm_80 (JAMBA_EXT_ARCHS=80 JAMBA_EXT_PTX=1), which runs the sm_80 paths on a Hopper."""
    return HAS_GPU and torch.cuda.get_device_capability()[0] == 9 and 90 in ops.cuda_archs()


def transformers_usable() -> bool:
    """transformers is installed and can build its models with this torch (transformers 5 needs torch >= 2.6)"""
    try:
        import transformers
    except ImportError:
        return False
    return transformers.utils.is_torch_available()


def import_transformers():
    """transformers, or a skip of the calling test (or module): not installed, or a release that cannot use the
    installed torch (transformers 5 needs torch >= 2.6 and then offers no models: with torch 2.4 / 2.5 install
    "transformers<5")."""
    tf = pytest.importorskip("transformers")
    if not transformers_usable():
        pytest.skip(f"transformers {tf.__version__} cannot use torch {torch.__version__} (with torch < 2.6: "
                    "pip install 'transformers<5')", allow_module_level=True)
    return tf


# ---- markers / collection ----------------------------------------------------------------------------
def pytest_collection_modifyitems(config, items):
    """`slow` tests run only with JAMBA_SLOW=1 or when the -m expression names `slow`."""
    if os.environ.get("JAMBA_SLOW") == "1" or "slow" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="slow: run with JAMBA_SLOW=1 or -m slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


# ---- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(params=["cpu", pytest.param("cuda", marks=[
    pytest.mark.cuda, pytest.mark.skipif(not HAS_GPU, reason="no CUDA GPU")])])
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _poison_outputs():
    """Every output the ops allocate is NaN-filled before the kernel runs."""
    ops.set_poison(True)
    yield
    ops.set_poison(False)


@pytest.fixture
def sentinel_outputs(monkeypatch):
    """Op outputs pre-filled with 7777 instead of the tests' NaN poison, so a NaN in them is the kernel's own."""
    real = ops._alloc

    def alloc(shape, dtype, device):
        out = real(shape, dtype, device)
        return out.fill_(7777.0) if dtype.is_floating_point else out

    monkeypatch.setattr(ops, "_alloc", alloc)


@pytest.fixture(autouse=True)
def _seed(request):
    """Fresh random inputs per test, reproducible from the test id."""
    seed = zlib.crc32(request.node.nodeid.encode())
    torch.manual_seed(seed)
    return seed


# ---- input makers ------------------------------------------------------------------------------------
def randn(*shape, device="cpu", dtype=torch.float32, scale=1.0, shift=0.0):
    """Normal random tensor made in fp32, then rounded to dtype (so .double() is the exact input)."""
    t = torch.randn(*shape, device=device, dtype=torch.float32) * scale + shift
    return t.to(dtype)


def uniform(*shape, lo, hi, device="cpu", dtype=torch.float32):
    t = torch.rand(*shape, device=device, dtype=torch.float32) * (hi - lo) + lo
    return t.to(dtype)


def norm_weight(dim, device, dtype):
    """Random RMSNorm weight around 1 (never all ones)."""
    return randn(dim, device=device, dtype=dtype, scale=0.4, shift=1.0)


def make_A(d_inner, d_state, device):
    """A = -exp(A_log) with random A_log, fp32 (the only dtype the ops accept for A)."""
    A_log = torch.log(uniform(d_inner, d_state, lo=0.5, hi=12.0, device=device))
    return -torch.exp(A_log)


def channel_sliced(batch, d_inner, seqlen, device, dtype):
    """u and z as channel slices of one (B, 2*DI, L) in_proj-like output: unit stride along L, channel
    stride L, batch stride 2*DI*L."""
    xz = randn(batch, 2 * d_inner, seqlen, device=device, dtype=dtype)
    return xz[:, :d_inner], xz[:, d_inner:]


def x_proj_BC(batch, d_state, seqlen, device, dtype, dt_rank=3):
    """B and C as strided views of an x_proj-like output (B*L, R + 2N): shape (B, N, L), strides
    (L*(R+2N), 1, R+2N), i.e. not unit-stride along L."""
    w = dt_rank + 2 * d_state
    xp = randn(batch * seqlen, w, device=device, dtype=dtype)
    Bm = xp[:, dt_rank:dt_rank + d_state].view(batch, seqlen, d_state).transpose(1, 2)
    Cm = xp[:, dt_rank + d_state:].view(batch, seqlen, d_state).transpose(1, 2)
    return Bm, Cm


def up(t):
    """Float64 copy of an optional tensor (the oracle's input)."""
    return None if t is None else t.detach().double()


def assert_close(actual, expected, **tol):
    """Compares in float64; NaN anywhere fails (poisoned outputs)."""
    assert not torch.isnan(actual).any(), "output has NaN (an element was not written?)"
    torch.testing.assert_close(actual.double(), expected.double(), **tol)


def ratio_check(ours, lowref, ref64, slack=1e-6):
    """flash-attention style: our max error against fp64 is at most twice the error of reference.py run
    on the low-precision inputs (fp32 compute, one rounding of the output), plus a tiny absolute slack.
    The low-dtype reference is the best a kernel with fp32 math and a low-dtype output can do, so this
    catches kernels that accumulate or round intermediates in bf16/fp16."""
    err = (ours.double() - ref64.double()).abs().max().item()
    err_ref = (lowref.double() - ref64.double()).abs().max().item()
    assert err_ref > 0, "degenerate case: the low-precision reference is exact"
    assert err <= 2 * err_ref + slack, f"error {err:.3e} > 2 x low-precision reference error {err_ref:.3e}"


# ---- torch.compile -------------------------------------------------------------------------------------
_COMPILE_PROBE = {}


def compile_or_skip(fn, backend):
    """torch.compile(fn, fullgraph=True, backend=backend). Skips when this machine cannot run that backend
    at all (probed on a plain torch function, e.g. inductor without a working C++ compiler); failures
    of our ops under a backend that works are test failures."""
    import torch._dynamo

    if backend not in _COMPILE_PROBE:
        torch._dynamo.reset()
        try:
            probe = torch.compile(lambda t: torch.sin(t) * 2.0 + 1.0, fullgraph=True, backend=backend)
            probe(torch.randn(5))
            _COMPILE_PROBE[backend] = None
        except Exception as e:  # noqa: BLE001 -- any failure here is the environment's, not ours
            _COMPILE_PROBE[backend] = f"{type(e).__name__}: {e}"[:300]
    if _COMPILE_PROBE[backend] is not None:
        pytest.skip(f"torch.compile backend {backend!r} does not work here: {_COMPILE_PROBE[backend]}")
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=backend)



# ---- CUDA-only helpers ---------------------------------------------------------------------------------
def to_device(obj, device):
    """Copies the tensors of a tensor / dict / tuple / list to device with the same shapes and strides (a
    strided view arrives as a tensor with those strides, so layout coverage carries over)."""
    if isinstance(obj, torch.Tensor):
        out = torch.empty_strided(obj.shape, obj.stride(), dtype=obj.dtype, device=device)
        out.copy_(obj)
        return out
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def cuda_kernel_names(fn):
    """Names of the CUDA kernels fn() launches (torch.profiler), to check which kernel a call took."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.key for e in prof.key_averages()}


def graph_replays(fn, static_inputs, new_inputs):
    """Captures fn(*static_inputs) in a CUDA graph (after one eager warm-up call on a side stream, which
    does run: in-place states advance once), then for each tuple in new_inputs copies its tensors into the
    static inputs (None: keep) and replays. Returns the outputs of each replay (cloned)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn(*static_inputs)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = fn(*static_inputs)
    static_out = static_out if isinstance(static_out, tuple) else (static_out,)
    results = []
    for new in new_inputs:
        for dst, src in zip(static_inputs, new):
            if isinstance(dst, torch.Tensor) and src is not None:
                dst.copy_(src)
        g.replay()
        torch.cuda.synchronize()
        results.append(tuple(o.clone() for o in static_out))
    return results


def builtin_model(device="cpu"):
    """The CLI's built-in small random Jamba (jamba_ext.__main__.DEFAULT_CONFIG, seed 0) in fp32."""
    from jamba_ext.__main__ import DEFAULT_CONFIG
    from jamba_ext.modeling_jamba import JambaConfig, JambaForCausalLM
    return JambaForCausalLM.from_config(JambaConfig(**DEFAULT_CONFIG), dtype="float32", device=device, seed=0)


TRAIN_TEXT = "the quick brown fox jumps over the lazy dog. " * 20   # the CLI training tests' text file


@pytest.fixture
def text(tmp_path):
    """A UTF-8 text file holding TRAIN_TEXT, for `train --text-file` (test_train_cli, test_cli_lora)."""
    f = tmp_path / "t.txt"
    f.write_text(TRAIN_TEXT, encoding="utf-8")
    return str(f)


def refuse_weights(monkeypatch):
    """From here on, building or reading a model's weights (JambaForCausalLM.from_config / from_pretrained) fails the
    test: for the CLI checks that must come before the weights load."""
    from jamba_ext.modeling_jamba import JambaForCausalLM

    def refuse(*a, **k):
        raise AssertionError("the weights were loaded before the check")
    monkeypatch.setattr(JambaForCausalLM, "from_config", refuse)
    monkeypatch.setattr(JambaForCausalLM, "from_pretrained", refuse)


@pytest.fixture
def no_weights(monkeypatch):
    """Building or reading the weights fails the test: the check under test must come first (refuse_weights)."""
    refuse_weights(monkeypatch)

"""The built extension: importable, abi3 (limited API), torch-free, and honest about its CUDA kernels."""
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import jamba_ext
from jamba_ext import _C, ops

SO = _C.__file__
OP_NAMES = ["rms_norm", "add_rms_norm", "causal_conv1d", "causal_conv1d_update", "selective_scan",
            "selective_state_update"]


def _tool(*cmd):
    if shutil.which(cmd[0]) is None:
        pytest.skip(f"{cmd[0]} not available")
    r = subprocess.run(list(cmd), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_import_and_ops_registered():
    assert isinstance(jamba_ext.__version__, str)
    for name in OP_NAMES:
        assert hasattr(torch.ops.jamba, name), name
        assert callable(getattr(ops, name))
    import inspect   # help() and IDEs see each op's own arguments through its eager fast path
    assert "delta_softplus" in inspect.signature(ops.selective_scan).parameters


def test_C_is_abi3_extension():
    assert os.path.basename(SO).endswith(".abi3.so"), SO


def test_C_links_no_torch_and_no_shared_cudart():
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _tool("readelf", "-d", SO))
    assert needed, "readelf found no NEEDED entries"
    for lib in needed:
        assert not re.search(r"torch|c10|libcudart|python", lib), f"_C links {lib}"


def test_C_needs_no_torch_symbols_and_only_limited_api():
    """No undefined symbol from libtorch/c10/ATen (mangled C++ namespaces), and the only private CPython
    symbols referenced are those the stable ABI exports (so the module really is limited-API)."""
    undef = [ln.split()[-1].split("@")[0] for ln in _tool("nm", "-D", "--undefined-only", SO).splitlines()
             if ln.strip()]
    torch_syms = [s for s in undef if re.match(r"_ZN(K)?\d*(c10|at|torch|caffe2)", s) or "torch" in s.lower()]
    assert not torch_syms, torch_syms
    stable_private = re.compile(r"_Py_(NoneStruct|TrueStruct|FalseStruct|NotImplementedStruct|EllipsisObject|"
                                r"Dealloc|IncRef|DecRef)$|_PyArg_\w+_SizeT$")
    private = [s for s in undef if s.startswith("_Py") and not stable_private.match(s)]
    assert not private, f"non-limited-API CPython symbols: {private}"


def test_C_loads_without_torch():
    """_C imports in a fresh interpreter with torch never imported (it is a plain C extension)."""
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('jamba_ext._C', {SO!r})\n"
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
            "assert 'torch' not in sys.modules\n"
            "print(bool(m.has_cuda()))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(ops.has_cuda_kernels())


def test_has_cuda_kernels_reflects_build():
    """has_cuda_kernels() is True exactly when the CUDA runtime / fatbinaries were linked into _C."""
    assert isinstance(jamba_ext.has_cuda_kernels(), bool)
    assert jamba_ext.has_cuda_kernels() == ops.has_cuda_kernels() == bool(_C.has_cuda())
    syms = _tool("nm", SO)
    if not syms.strip():
        pytest.skip("_C is stripped")
    linked = bool(re.search(r"\b(__cudaRegisterFatBinary|cudaLaunchKernel|cudaGetLastError)\b", syms))
    assert jamba_ext.has_cuda_kernels() == linked


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_tensor_without_cuda_kernels_is_a_clear_error():
    if ops.has_cuda_kernels():
        pytest.skip("built with CUDA kernels")
    x = torch.randn(2, 8, device="cuda")
    with pytest.raises(RuntimeError, match="without CUDA"):
        ops.rms_norm(x, torch.randn(8, device="cuda"))


# ---- the raw _C calling convention is robust (other front ends may call it) ------------------------------
def _desc(t):
    return (t.data_ptr(), {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}[t.dtype], tuple(t.shape),
            tuple(t.stride()))


def test_C_missing_required_tensor_is_value_error():
    w = torch.randn(8)
    out = torch.empty(2, 8)
    with pytest.raises(ValueError, match="x"):
        _C.rms_norm(0, 0, 0, _desc(out), None, None, None, _desc(w), 1e-6)


def test_C_malformed_arguments_raise():
    x = torch.randn(2, 8)
    with pytest.raises(TypeError):
        _C.rms_norm(0, 0, 0)                                             # wrong argument count
    with pytest.raises(TypeError):
        _C.rms_norm(0, 0, 0, _desc(x), (1, 2), None, None, _desc(x), 1e-6)   # bad tensor tuple
    five = (x.data_ptr(), 0, (1, 1, 1, 2, 8), (16, 16, 16, 8, 1))
    with pytest.raises(ValueError):
        _C.rms_norm(0, 0, 0, _desc(x), five, None, None, _desc(x[0]), 1e-6)   # > 4 dims
    with pytest.raises(ValueError):
        _C.rms_norm(0, 0, 0, _desc(x), (x.data_ptr(), 0, (2, 8), (8,)), None, None, _desc(x[0]), 1e-6)


# ---- source rules the GPU cannot check for us ------------------------------------------------------------
CUDA_SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "cuda")


def _cuda_sources():
    if not os.path.isdir(CUDA_SRC):
        pytest.skip("no csrc/cuda next to the tests (installed without sources)")
    files = sorted(f for f in os.listdir(CUDA_SRC) if f.endswith((".cu", ".cuh")))
    assert files
    return {f: open(os.path.join(CUDA_SRC, f)).read() for f in files}


def _strip_comments(s):
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", "", s, flags=re.S))


def test_every_kernel_starts_with_pdl_wait():
    """Launches may carry programmatic dependent launch (common.cuh): a kernel may then start while the
    stream's previous kernel still runs, so each must wait (jamba_pdl_begin) before it touches memory (or, marked
    by jamba_pdl_weights_first, before it touches anything but weights), and
    every launch must go through jamba_kernel_launch (a <<<>>> launch would bypass the rule's bookkeeping)."""
    kernels = 0
    for name, src in _cuda_sources().items():
        code = _strip_comments(src)
        assert "<<<" not in code, f"{name}: launch with <<<>>>; use jamba_kernel_launch"
        for m in re.finditer(r"__global__", code):
            brace, semi = code.find("{", m.end()), code.find(";", m.end())
            if semi != -1 and semi < brace:
                continue  # a declaration
            first = code[brace + 1:].lstrip()
            if first.startswith("jamba_pdl_weights_first();"):  # weights first, then the wait (common.cuh)
                body = code[brace:code.find("\n}", brace)]
                assert "jamba_pdl_begin();" in body, \
                    f"{name}: kernel at offset {m.start()} reads weights first but never waits (jamba_pdl_begin)"
            else:
                assert first.startswith("jamba_pdl_begin();"), \
                    f"{name}: kernel at offset {m.start()} does not start with jamba_pdl_begin(): {first[:60]!r}"
            kernels += 1
    assert kernels >= 20  # the test found the kernels (23 when written)


def test_cuda_archs_and_compatibility(monkeypatch):
    """ops.cuda_archs() reports the build's architectures ([] without CUDA kernels), and cuda_arch_runs follows
    the machine-code rule: sm_XY code runs on sm_XZ for Z >= Y, never on another major; PTX builds run on any newer
    GPU."""
    archs = ops.cuda_archs()
    assert (archs == []) == (not ops.has_cuda_kernels()), archs
    monkeypatch.setattr(ops._C, "cuda_archs", lambda: "80;90a")
    assert ops.cuda_archs() == [80, 90]
    assert [ops.cuda_arch_runs(c) for c in [(8, 0), (8, 6), (8, 9), (9, 0), (7, 5), (10, 0), (12, 0)]] == \
        [True, True, True, True, False, False, False]
    monkeypatch.setattr(ops._C, "cuda_archs", lambda: "86")
    assert not ops.cuda_arch_runs((8, 0)) and ops.cuda_arch_runs((8, 9))
    monkeypatch.setattr(ops._C, "cuda_archs", lambda: "80+ptx")  # JAMBA_EXT_PTX=1: PTX runs on newer GPUs too
    assert ops.cuda_archs() == [80] and ops.cuda_ptx()
    assert [ops.cuda_arch_runs(c) for c in [(7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0)]] == \
        [False, True, True, True, True, True]
    monkeypatch.setattr(ops._C, "cuda_archs", lambda: "")
    assert ops.cuda_archs() == [] and not ops.cuda_arch_runs((9, 0)) and not ops.cuda_ptx()


def test_every_env_switch_is_documented():
    """Every JAMBA_EXT_* variable the build, the C/CUDA sources, the package or the benchmarks read has a row in
    docs/SWITCHES.md, and every switch the table lists is still read somewhere (no stale rows)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    read = set()
    pat = re.compile(r'(?:getenv|environ\.get|environ\[)\(?\s*"(JAMBA_EXT_[A-Z0-9_]+)"')
    for top in ("csrc", "jamba_ext", "setup.py", "benchmarks"):
        path = os.path.join(root, top)
        files = [path] if os.path.isfile(path) else [os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs
                                                      if f.endswith((".c", ".h", ".cu", ".cuh", ".py"))]
        for f in files:
            with open(f, encoding="utf-8") as fh:
                read |= set(pat.findall(fh.read()))
    with open(os.path.join(root, "docs", "SWITCHES.md"), encoding="utf-8") as fh:
        doc = fh.read()
    listed = set(re.findall(r"^\| `(JAMBA_EXT_[A-Z0-9_]+)", doc, re.M))
    assert len(read) >= 20, sorted(read)
    assert not read - listed, f"switches read but not in docs/SWITCHES.md: {sorted(read - listed)}"
    assert not listed - read, f"docs/SWITCHES.md lists switches nothing reads: {sorted(listed - read)}"


def test_sdist_carries_every_source_file(tmp_path):
    """A source distribution (what pip builds from where no wheel fits) holds every file under csrc/: the headers and
    the CUDA sources included (MANIFEST.in; without it the sdist had only the .c files setup.py names, and building it
    failed at `#include "common.h"`)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "setup.py")):
        pytest.skip("not a source checkout")
    cmd = [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "--dist-dir",
           str(tmp_path)]
    r = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAMBA_EXT_CUDA="0"))
    assert r.returncode == 0, r.stderr[-2000:]
    import tarfile
    (tar,) = [p for p in os.listdir(tmp_path) if p.endswith(".tar.gz")]
    with tarfile.open(tmp_path / tar) as tf:
        inside = {n.split("/", 1)[1] for n in tf.getnames() if "/" in n}
    want = {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(os.path.join(root, "csrc"))
            for f in fs if f.endswith((".c", ".h", ".cu", ".cuh"))}
    assert want and not want - inside, f"missing from the sdist: {sorted(want - inside)}"
    assert {"setup.py", "pyproject.toml", "README.md", "jamba_ext/ops.py"} <= inside


def test_written_schemas_match_the_signatures():
    """moe_experts and dequant_fp8 register their schemas written out, since torch 2.4 (our oldest) infers none for a
    str or dtype default. On torch >= 2.5 each must equal the schema torch infers from the function's signature, so a
    changed argument cannot leave a stale schema behind."""
    infer = getattr(torch.library, "infer_schema", None)
    if infer is None:
        pytest.skip("torch.library.infer_schema is new in torch 2.5")
    for f, written in ((ops.moe_experts, ops._MOE_EXPERTS_SCHEMA), (ops.dequant_fp8, ops._DEQUANT_FP8_SCHEMA)):
        inferred = infer(f.custom_op._init_fn, mutates_args=())
        parse = torch._C.parse_schema  # dequant_fp8's dtype default reads "bfloat16" inferred, "15" written
        assert str(parse("f" + inferred)) == str(parse("f" + written)), (f.__name__, inferred, written)
        assert str(getattr(torch.ops.jamba, f.__name__).default._schema) == str(parse("jamba::" + f.__name__ + written))


def test_cuda_note_says_why_a_build_has_no_cuda_kernels():
    """_C.cuda_note(): empty exactly when the CUDA kernels are in; otherwise the reason the build recorded."""
    assert (ops.cuda_build_note() == "") == ops.has_cuda_kernels()


def test_failed_nvcc_gives_a_cpu_build_that_says_why(tmp_path):
    """JAMBA_EXT_CUDA unset and nvcc failing on the kernels (here: an architecture no nvcc knows, as a toolkit too old
    for ours fails) leave a CPU-only build with a warning; its cuda_build_note() names the nvcc release and the
    failure, which every op on a GPU tensor repeats. With JAMBA_EXT_CUDA=1 the same build is an error."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, "setup.py")):
        pytest.skip("not a source checkout")
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        pytest.skip("no nvcc: nothing to fail")
    for name in ("setup.py", "pyproject.toml", "README.md", "csrc"):
        src = os.path.join(root, name)
        (shutil.copytree if os.path.isdir(src) else shutil.copy)(src, tmp_path / name)
    shutil.copytree(os.path.join(root, "jamba_ext"), tmp_path / "jamba_ext",
                    ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k != "JAMBA_EXT_CUDA"}
    env.update(JAMBA_EXT_ARCHS="999", PYTHONPATH=str(tmp_path))
    build = [sys.executable, "setup.py", "build_ext", "--inplace"]
    r = subprocess.run(build, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "building WITHOUT the CUDA kernels" in r.stderr and "C only (no CUDA)" in r.stderr, r.stderr[-3000:]
    q = subprocess.run([sys.executable, "-c", "from jamba_ext import ops; print(ops.has_cuda_kernels()); "
                        "print(ops.cuda_build_note())"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env=env)
    assert q.returncode == 0, q.stderr[-2000:]
    has, note = q.stdout.splitlines()[-2:]
    assert has == "False" and re.search(r"^nvcc \d+\.\d+ at .* failed on the CUDA kernels \(nvcc failed on: csrc/cuda/",
                                        note), note
    r = subprocess.run(build, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                       env=dict(env, JAMBA_EXT_CUDA="1"))
    assert r.returncode != 0 and "nvcc failed on" in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize("cmd", [["dev/mutation_check.py", "--list"], ["dev/mutation_cuda.py", "--list"]],
                         ids=["c_and_python", "cuda"])
def test_mutation_lists_match_the_source(cmd):
    """Every mutant of the mutation tools (C and Python: dev/mutation_check.py, which checks both lists; CUDA:
    dev/mutation_cuda.py) still finds its original snippet exactly once in its file. A kernel rewritten without
    re-pointing its mutants makes --list fail (session 61 found three CUDA mutants stale that way)."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(repo, cmd[0])):
        pytest.skip("dev/ not in this tree (an sdist)")
    r = subprocess.run([sys.executable, *cmd], cwd=repo, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]

"""Build of jamba_ext._C: C sources (-O3 -fopenmp; without OpenMP when the compiler lacks it) and, when a CUDA toolkit is found, the .cu sources
compiled by nvcc (sm_80 + sm_90, sm_90a for files that ask for it) in parallel and linked in with a
static cudart. No torch header, no libtorch: the build needs only a C compiler (and nvcc for CUDA).

Environment:
  JAMBA_EXT_CUDA=0        CPU only, even when nvcc is present
  JAMBA_EXT_CUDA=1        CUDA required: a missing toolkit, or nvcc failing on a kernel, is an error
  (unset)                 CUDA kernels when a toolkit is found; when there is none, or nvcc fails (e.g. a toolkit
                          too old for the kernels), a CPU-only build with a warning: the reason is compiled in
                          (jamba_ext.ops.cuda_build_note()) and every op on a GPU tensor names it in its error
  JAMBA_EXT_ARCHS="80;90" CUDA architectures (default 80 and 90)
  JAMBA_EXT_PTX=1         embed PTX for those architectures instead of machine code (the driver compiles it for
                          the GPU at first use): e.g. JAMBA_EXT_ARCHS=80 JAMBA_EXT_PTX=1 runs the sm_80 code paths on
                          a Hopper GPU (a test build; the default ships machine code only)
  JAMBA_EXT_PTXAS_V=1     print registers / shared memory / spills of every kernel
  JAMBA_EXT_JOBS=N        parallel nvcc jobs (default: number of CPUs)
  JAMBA_EXT_REUSE_OBJECTS=1  keep a .cu file's object from an earlier build in the same build directory when it is
                          newer than the file and every header and was compiled by the same nvcc command (a
                          developer's `python3 setup.py build_ext --inplace` after editing one kernel; pip builds in
                          a fresh directory, where it changes nothing)
"""
import concurrent.futures
import glob
import os
import shutil
import subprocess
import sys
import time

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _is_toolkit(home):
    return bool(home) and os.path.exists(os.path.join(home, "bin", "nvcc")) and any(
        os.path.exists(os.path.join(home, sub, "libcudart_static.a"))
        for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                    os.path.join("targets", "sbsa-linux", "lib")))


def find_cuda_home():
    """A CUDA toolkit root holding bin/nvcc and libcudart_static.a. `nvcc` on PATH may be a wrapper script
    (e.g. /usr/local/bin/nvcc exec'ing the real one), so its parent is only one candidate among others."""
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        try:  # a wrapper: ask nvcc itself where it lives
            out = subprocess.run([nvcc, "--dryrun", "--version"], capture_output=True, text=True, timeout=30)
            for line in (out.stdout + out.stderr).splitlines():
                if "TOP=" in line:
                    cands.append(os.path.normpath(line.split("TOP=", 1)[1].strip().strip('"')))
        except (OSError, subprocess.SubprocessError):
            pass
    cands += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in cands:
        if _is_toolkit(c):
            return c
    return None


def want_cuda():
    flag = os.environ.get("JAMBA_EXT_CUDA", "").strip()
    home = find_cuda_home()
    if flag == "0":
        return None
    if flag == "1" and home is None:
        raise RuntimeError("JAMBA_EXT_CUDA=1 but no CUDA toolkit was found (set CUDA_HOME or put nvcc on PATH)")
    return home


def nvcc_release(home):
    """'13.0' from `nvcc --version` ('?' when it does not say)"""
    try:
        out = subprocess.run([os.path.join(home, "bin", "nvcc"), "--version"], capture_output=True, text=True,
                             timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    for line in out.splitlines():
        if "release" in line:
            return line.split("release", 1)[1].split(",")[0].strip()
    return "?"


def c_string(text):
    """text as a C string literal for a -D macro: printable ASCII, no quotes or backslashes"""
    return '"' + "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "'" if ch == '"' else " "
                         for ch in text)[:400] + '"'


def cudart_static_dir(home):
    for sub in ("lib64", "lib", os.path.join("targets", "x86_64-linux", "lib"),
                os.path.join("targets", "sbsa-linux", "lib")):
        d = os.path.join(home, sub)
        if os.path.exists(os.path.join(d, "libcudart_static.a")):
            return d
    raise RuntimeError(f"libcudart_static.a not found under {home}")


def rel(paths):
    return [os.path.relpath(p, ROOT) for p in paths]


C_SOURCES = rel([os.path.join(ROOT, "csrc", "common.c")]
                + sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.c")))
                + [os.path.join(ROOT, "csrc", "python", "module.c")])
CU_SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))
CUDA_HOME = want_cuda()


def _compiler_takes_openmp(compiler, tmp):
    """True when the C compiler compiles and links with -fopenmp (Apple's clang without libomp does not)."""
    src = os.path.join(tmp, "omp_probe.c")
    with open(src, "w") as f:
        f.write("int main(void) {\n    int s = 0;\n#pragma omp parallel for reduction(+ : s)\n"
                "    for (int i = 0; i < 4; i++) s += i;\n    return s != 6;\n}\n")
    try:
        objs = compiler.compile([src], output_dir=tmp, extra_postargs=["-fopenmp"])
        compiler.link_executable(objs, "omp_probe", output_dir=tmp, extra_postargs=["-fopenmp"])
        return True
    except Exception:  # distutils' CompileError / LinkError, or a missing compiler: the build decides below
        return False


def _cmd_stamp(cmd) -> str:
    """an nvcc command as its object's .cmd stamp: the checkout's path left out, so a copy of the tree with its build
    directory (dev/mutation_cuda.py) matches"""
    return " ".join(cmd).replace(ROOT, "<root>")


def _object_current(obj: str, cmd, deps) -> bool:
    """obj exists, was compiled by cmd (its .cmd stamp) and is newer than every file in deps"""
    try:
        with open(obj + ".cmd") as f:
            same = f.read() == _cmd_stamp(cmd)
        t = os.path.getmtime(obj)
        return same and all(os.path.getmtime(d) <= t for d in deps)
    except OSError:
        return False


class BuildExt(build_ext):
    def build_extension(self, ext):
        t0 = time.time()
        os.makedirs(self.build_temp, exist_ok=True)
        if not _compiler_takes_openmp(self.compiler, self.build_temp):
            # the CPU kernels' "#pragma omp" loops then run on one thread (same results)
            print("jamba_ext: the C compiler does not take -fopenmp; building the CPU kernels single-threaded "
                  "(for OpenMP on macOS: brew install libomp)", file=sys.stderr)
            ext.extra_compile_args = [a for a in ext.extra_compile_args if a != "-fopenmp"] + ["-Wno-unknown-pragmas"]
            ext.extra_link_args = [a for a in ext.extra_link_args if a != "-fopenmp"]
        home, flag, note = CUDA_HOME, os.environ.get("JAMBA_EXT_CUDA", "").strip(), ""
        if home is not None and CU_SOURCES:
            try:
                cu_objs = self.compile_cuda(home)
                ext.extra_objects = list(ext.extra_objects or []) + cu_objs
                ext.depends = list(ext.depends or []) + cu_objs  # relink when only a CUDA object changed
            except RuntimeError as e:
                if flag == "1":
                    raise
                note = f"nvcc {nvcc_release(home)} at {home} failed on the CUDA kernels ({e}); the kernels are " \
                       "built and tested with CUDA 13.0"
                print("\n" + "=" * 100 + f"\njamba_ext: WARNING: building WITHOUT the CUDA kernels: {note}.\n"
                      "Ops on GPU tensors will raise an error that says so. JAMBA_EXT_CUDA=1 makes this an error; "
                      "CUDA_HOME picks another toolkit.\n" + "=" * 100, file=sys.stderr)
                home = None
        elif home is None:
            note = "JAMBA_EXT_CUDA=0 at build time" if flag == "0" else "no CUDA toolkit (nvcc) was found at build time"
        if note:
            ext.define_macros = list(ext.define_macros or []) + [("JAMBA_CUDA_NOTE", c_string(note))]
        super().build_extension(ext)
        kind = f"C + CUDA ({len(CU_SOURCES)} .cu files)" if home else "C only (no CUDA)"
        print(f"jamba_ext: built _C, {kind}, in {time.time() - t0:.1f} s", file=sys.stderr)

    def compile_cuda(self, home):
        nvcc = os.path.join(home, "bin", "nvcc")
        archs = [a.strip() for a in os.environ.get("JAMBA_EXT_ARCHS", "80;90").split(";") if a.strip()]
        ptx = os.environ.get("JAMBA_EXT_PTX") == "1"
        out_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(out_dir, exist_ok=True)

        def cmd_for(src, obj):
            with open(src) as f:
                head = f.read(4096)
            gencode = []
            for a in archs:
                # a file that uses Hopper-only instructions (wgmma, setmaxnreg) says "jamba-build: sm90a"
                # in its header and gets compute_90a instead of compute_90.
                aa = "90a" if (a == "90" and "jamba-build: sm90a" in head) else a
                code = f"compute_{aa}" if ptx else f"sm_{aa}"
                gencode += [f"-gencode=arch=compute_{aa},code={code}"]
            cmd = [nvcc, "-c", src, "-o", obj, "-O3", "-std=c++17", "-lineinfo", "-DJAMBA_WITH_CUDA",
                   "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden", "--expt-relaxed-constexpr",
                   "-I", os.path.join(ROOT, "csrc")] + gencode
            if os.environ.get("JAMBA_EXT_PTXAS_V") == "1":
                cmd += ["-Xptxas", "-v"]
            return cmd

        jobs, reused = [], []
        reuse = os.environ.get("JAMBA_EXT_REUSE_OBJECTS") == "1"
        headers = glob.glob(os.path.join(ROOT, "csrc", "*.h")) + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cuh"))
        for src in CU_SOURCES:
            obj = os.path.join(out_dir, os.path.basename(src) + ".o")
            cmd = cmd_for(src, obj)
            if reuse and _object_current(obj, cmd, [src] + headers):
                reused.append(obj)
            else:
                jobs.append((src, obj, cmd))
        if reused:
            print(f"jamba_ext: JAMBA_EXT_REUSE_OBJECTS=1: {len(reused)} of {len(CU_SOURCES)} CUDA objects kept from "
                  "the last build", file=sys.stderr)

        def run(job):
            src, obj, cmd = job
            t = time.time()
            r = subprocess.run(cmd, capture_output=True, text=True)
            return src, obj, cmd, r, time.time() - t

        n = int(os.environ.get("JAMBA_EXT_JOBS", "0")) or os.cpu_count() or 1
        objs, failed = [], []
        with concurrent.futures.ThreadPoolExecutor(max_workers=n) as ex:
            for src, obj, cmd, r, dt in ex.map(run, jobs):
                name = os.path.relpath(src, ROOT)
                if r.stdout or r.stderr:
                    sys.stderr.write(r.stdout + r.stderr)
                if r.returncode != 0:
                    failed.append(name)
                else:
                    print(f"jamba_ext: nvcc {name} {dt:.1f} s", file=sys.stderr)
                    objs.append(obj)
                    with open(obj + ".cmd", "w") as f:  # what JAMBA_EXT_REUSE_OBJECTS compares
                        f.write(_cmd_stamp(cmd))
        if failed:
            raise RuntimeError("nvcc failed on: " + (", ".join(failed) if len(failed) <= 3 else
                                                      f"{failed[0]}, {failed[1]} and {len(failed) - 2} more of "
                                                      f"{len(jobs)} .cu files"))
        ext.define_macros = list(ext.define_macros or []) + [("JAMBA_WITH_CUDA", "1"),
                                                             ("JAMBA_CUDA_ARCHS", '"' + ";".join(
                                                                 a + ("+ptx" if ptx else "") for a in archs) + '"')]
        ext.library_dirs = list(ext.library_dirs or []) + [cudart_static_dir(home)]
        ext.libraries = list(ext.libraries or []) + ["cudart_static", "stdc++", "rt", "pthread", "dl"]
        return sorted(objs + reused)


ext = Extension(
    "jamba_ext._C",
    sources=C_SOURCES,
    include_dirs=["csrc"],
    define_macros=[("Py_LIMITED_API", "0x03090000")],
    extra_compile_args=["-O3", "-std=c11", "-fopenmp", "-fno-trapping-math", "-fno-math-errno", "-fvisibility=hidden", "-Wall", "-Wno-unused-function"],
    libraries=["m"],
    extra_link_args=["-fopenmp"],
    py_limited_api=True,
)

setup(
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)

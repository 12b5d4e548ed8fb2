"""SASS statistics of one kernel without a GPU: compile a .cu file to a cubin, disassemble, count.

    python3 dev/sass_stats.py csrc/cuda/selective_scan.cu selective_scan_pc_kernel --match nv_bfloat16
    python3 dev/sass_stats.py csrc/cuda/moe_wgmma.cu moe_wgmma_kernel --match bfloat16Lb0 \
        --diff-rev 4824cc8 --old-match bfloat16Ev

Prints, per matching kernel: the instruction count, the most common opcodes, the MUFU / shuffle / shared /
global / tensor-core (HGMMA, HMMA) counts, and the lines between the first and the last MUFU.EX2 (a rough
size of an exponential-heavy inner loop). --diff-rev REV compiles the file as it was at git revision REV too
(in that revision's csrc tree, so with its own headers: a change that also edits a header compiles on both sides)
and says whether the two instruction streams are equal with registers, predicates and constants masked (the check
docs/CONTRIBUTING.md asks for when code moves after its last GPU round).
Needs nvcc (CUDA 12+) and cuobjdump; the VM's toolkit has no cuobjdump: see docs/CONTRIBUTING.md for the pip
wheels that carry it (put their bin/ on PATH or pass --cuobjdump).
"""
import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSN = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(.*?)\s*;")


def cubin(src_text, name, arch, tmp, root=ROOT):
    """src_text compiled as a file of root/csrc/cuda (its includes resolve to that tree's headers)"""
    src = os.path.join(root, "csrc", "cuda", f"_sass_{os.getpid()}_{name}.cu")
    with open(src, "w") as f:
        f.write(src_text)
    out = os.path.join(tmp, name + ".cubin")
    try:
        subprocess.run(["nvcc", "-cubin", "-O3", "-std=c++17", "-DJAMBA_WITH_CUDA", "-I", os.path.join(root, "csrc"),
                        f"-gencode=arch=compute_{arch},code=sm_{arch}", "-o", out, src], check=True)
    finally:
        os.remove(src)
    return out


def tree_at(rev, tmp):
    """csrc/ as it was at git revision rev, exported under tmp/old (so that an old file meets its own headers)"""
    root = os.path.join(tmp, "old")
    os.makedirs(root)
    archive = subprocess.run(["git", "archive", rev, "csrc"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", root], input=archive, check=True)
    return root


def kernels(cubin_path, cuobjdump, pattern, match):
    text = subprocess.run([cuobjdump, "-sass", cubin_path], check=True, capture_output=True, text=True).stdout
    found, cur = {}, None
    for line in text.splitlines():
        m = re.search(r"Function : (\S+)", line)
        if m:
            cur = m.group(1) if (pattern in m.group(1) and (match is None or match in m.group(1))) else None
            if cur:
                found[cur] = []
            continue
        m = INSN.match(line)
        if cur and m:
            found[cur].append(m.group(1))
    return found


def opcode(ins):
    return re.sub(r"^@!?U?P[T0-9]+\s+", "", ins).split()[0]


def masked(ins):
    return re.sub(r"\bU?R[0-9Z]+\b|\bU?P[0-9T]\b|0x[0-9a-f]+|-?\d+\.\d+(e[-+]?\d+)?", "_", ins)


def report(name, ins):
    ops = [opcode(i) for i in ins]
    base = collections.Counter(o.split(".")[0] for o in ops)
    print(f"{name}: {len(ins)} instructions")
    print("  top:", ", ".join(f"{k} {v}" for k, v in base.most_common(14)))
    groups = {"MUFU": ["MUFU"], "shuffle": ["SHFL"], "shared": ["LDS", "STS", "LDSM"], "global": ["LDG", "STG", "LDGSTS"],
              "tensor": ["HGMMA", "HMMA"], "barrier": ["BAR", "SYNCS"]}
    print("  " + ", ".join(f"{g} {sum(base[k] for k in ks)}" for g, ks in groups.items()))
    ex2 = [i for i, o in enumerate(ops) if o.startswith("MUFU.EX2")]
    if ex2:
        print(f"  first..last MUFU.EX2: instructions {ex2[0]}..{ex2[-1]} ({ex2[-1] - ex2[0] + 1})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cu", help="the .cu file (path from the repository root)")
    ap.add_argument("kernel", help="substring of the mangled kernel name")
    ap.add_argument("--match", default=None, help="a second substring the name must contain (a dtype, ...)")
    ap.add_argument("--arch", default=None, help="90a for files marked 'jamba-build: sm90a', else 90 (default)")
    ap.add_argument("--diff-rev", default=None, help="git revision to compare the instruction streams against")
    ap.add_argument("--old-match", default=None, help="--match for the kernel at --diff-rev (renamed templates)")
    ap.add_argument("--cuobjdump", default=shutil.which("cuobjdump") or "cuobjdump")
    args = ap.parse_args()
    path = os.path.join(ROOT, args.cu)
    with open(path) as f:
        text = f.read()
    arch = args.arch or ("90a" if "jamba-build: sm90a" in text[:4096] else "90")
    with tempfile.TemporaryDirectory() as tmp:
        now = kernels(cubin(text, "now", arch, tmp), args.cuobjdump, args.kernel, args.match)
        if not now:
            sys.exit(f"no kernel matching {args.kernel!r} in {args.cu}")
        for name, ins in now.items():
            report(name, ins)
        if args.diff_rev:
            old_text = subprocess.run(["git", "show", f"{args.diff_rev}:{args.cu}"], cwd=ROOT, check=True,
                                      capture_output=True, text=True).stdout
            old = kernels(cubin(old_text, "old", arch, tmp, tree_at(args.diff_rev, tmp)), args.cuobjdump, args.kernel,
                          args.old_match if args.old_match is not None else args.match)
            for name, ins in now.items():
                oname = name if name in old else (next(iter(old)) if len(old) == 1 else None)
                if oname is None:
                    print(f"{name}: not in {args.diff_rev} (and no single kernel there to compare with)")
                    continue
                if oname != name:
                    print(f"{name}: compared with {oname} of {args.diff_rev}")
                a, b = [masked(i) for i in old[oname]], [masked(i) for i in ins]
                same = a == b
                print(f"{name}: {'same instruction stream as' if same else 'differs from'} {args.diff_rev} "
                      f"({len(a)} vs {len(b)} instructions)")


if __name__ == "__main__":
    main()

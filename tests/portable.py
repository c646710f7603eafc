"""``make test-portable``: rerun the numerically sensitive tests under other CPU kernels, on this one machine.

Another CPU rounds differently: its GEMM and convolution kernels block and vectorise sums in another order, and
another thread count splits reductions elsewhere. A test whose tolerance holds only for this machine's rounding
passes here and fails there. This script reruns ``pytest -m numerics`` once per configuration, an
instruction-set level times a thread count, each in a fresh process whose environment selects the kernels of
every numerical library the tests go through:

    level    torch (ATEN_CPU_CAPABILITY)  MKL_ENABLE_INSTRUCTIONS  ONEDNN_MAX_CPU_ISA  OPENBLAS_CORETYPE  numpy
    default  default (no SIMD)            SSE4_2                   SSE41               Nehalem            x86-64-v2
    avx2     avx2                         AVX2                     AVX2                Haswell            x86-64-v3
    avx512   avx512                       AVX512                   AVX512_CORE         SkylakeX           x86-64-v4

(torch's elementwise and reduction kernels; MKL: matmul and linear algebra; oneDNN: convolutions; OpenBLAS:
numpy/scipy, e.g. FID's ``sqrtm``; numpy: its SIMD ufunc loops.) Threads: ``OMP_NUM_THREADS`` (torch, oneDNN,
OpenBLAS) and ``MKL_NUM_THREADS``. Inside each child, before any test runs, the kernels actually in use are read
back (torch's capability, the ISA MKL and oneDNN name in verbose mode, OpenBLAS's core, numpy's enabled
features, torch's and OpenBLAS's thread counts); a child whose request did not take effect fails ("not
applied") rather than silently testing the native kernels. Levels the CPU lacks are reported as skipped. One
line per configuration; exit status 1 if any failed. Each child's full pytest output is kept in ``--log-dir``.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LEVELS = ("default", "avx2", "avx512")  # in increasing order: a CPU that runs one runs those before it
# What each level sets, and what must then be read back (substrings of what the library reports).
ENV = {
    "default": {"ATEN_CPU_CAPABILITY": "default", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
                "ONEDNN_MAX_CPU_ISA": "SSE41", "OPENBLAS_CORETYPE": "Nehalem",
                "NPY_DISABLE_CPU_FEATURES": "X86_V3 X86_V4 AVX512_ICL AVX512_SPR"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2",
             "OPENBLAS_CORETYPE": "Haswell", "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR"},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "MKL_ENABLE_INSTRUCTIONS": "AVX512",
               "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "OPENBLAS_CORETYPE": "SkylakeX",
               "NPY_DISABLE_CPU_FEATURES": "AVX512_ICL AVX512_SPR"},
}  # fmt: skip
EXPECT = {
    "default": {"torch": "DEFAULT", "mkl": "SSE4.2", "onednn": "SSE4.1", "openblas": "Nehalem", "numpy": "X86_V2"},
    "avx2": {"torch": "AVX2", "mkl": "AVX2", "onednn": "AVX2", "openblas": "Haswell", "numpy": "X86_V3"},
    "avx512": {"torch": "AVX512", "mkl": "AVX-512", "onednn": "AVX-512", "openblas": "SkylakeX", "numpy": "X86_V4"},
}  # fmt: skip
KNOBS = {k for env in ENV.values() for k in env} | {
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
}
NOT_APPLIED = 7  # exit status of a child whose kernels are not the requested ones (pytest uses 0-5)
DEFAULT_PYTEST = ["-m", "numerics", "-p", "no:cacheprovider"]
# The instruction-set knobs other than torch's name x86 kernels; elsewhere only torch's capability is checked.
X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


# ------------------------------------------------------------------------------------ inside a child process
def _stdout_of(fn) -> str:
    """What ``fn`` writes to file descriptor 1 (MKL and oneDNN print their verbose lines from C)."""
    sys.stdout.flush()
    libc = ctypes.CDLL(None)
    saved = os.dup(1)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 1)
        try:
            fn()
        finally:
            libc.fflush(None)
            os.dup2(saved, 1)
            os.close(saved)
        tmp.seek(0)
        return tmp.read().decode(errors="replace")


def _mkl_isa() -> str | None:
    import torch

    if not torch.backends.mkl.is_available():
        return None

    def gemm():
        with torch.backends.mkl.verbose(torch.backends.mkl.VERBOSE_ON):
            a = torch.ones(64, 64)
            a @ a  # sgemm through MKL; its first verbose line names the instruction set in use

    line = next((s for s in _stdout_of(gemm).splitlines() if s.startswith("MKL_VERBOSE oneMKL")), "")
    return line.split(" architecture ", 1)[-1].split(" enabled processors")[0].split(", Lnx")[0] or "unknown"


def _onednn_isa() -> str | None:
    import torch

    if not torch.backends.mkldnn.is_available():
        return None

    def conv():
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            torch.nn.functional.conv2d(torch.ones(2, 16, 16, 16), torch.ones(16, 16, 3, 3))  # a oneDNN conv

    line = next((s for s in _stdout_of(conv).splitlines() if ",info,cpu,isa:" in s), "")
    return line.split("isa:", 1)[-1] or "unknown"


def _openblas() -> tuple[str | None, int | None]:
    """Core type and thread count of the OpenBLAS numpy's wheel bundles (None, None for another BLAS)."""
    import numpy

    for lib in sorted(
        glob.glob(os.path.join(os.path.dirname(numpy.__path__[0]), "numpy.libs", "*openblas*"))
    ):
        handle = ctypes.CDLL(lib)
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""), ("openblas", "")):
            core = getattr(handle, f"{prefix}_get_corename{suffix}", None)
            threads = getattr(handle, f"{prefix}_get_num_threads{suffix}", None)
            if core is not None and threads is not None:
                core.restype = ctypes.c_char_p
                return core().decode(), int(threads())
    return None, None


def _numpy_level() -> str:
    from numpy._core._multiarray_umath import __cpu_features__ as features

    return next((lv for lv in ("X86_V4", "X86_V3", "X86_V2") if features.get(lv)), "baseline")


def probe() -> dict:
    """The kernels this process actually uses (None where a library is absent)."""
    import torch

    core, blas_threads = _openblas()
    return {
        "torch": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "mkl": _mkl_isa(),
        "onednn": _onednn_isa(),
        "openblas": core,
        "openblas_threads": blas_threads,
        "numpy": _numpy_level(),
    }


def mismatches(found: dict, level: str, threads: int) -> list[str]:
    """What did not take effect: requested level/threads against ``probe()``."""
    wrong = [
        f"{key} {found[key]} (asked {threads})"
        for key in ("threads", "openblas_threads")
        if found[key] is not None and found[key] != threads
    ]
    for key, want in EXPECT[level].items():
        got = found[key]
        if key != "torch" and not X86:
            continue
        if got is not None and (got != want if key in ("torch", "numpy") else want not in got):
            wrong.append(f"{key} {got!r} (asked {want})")
    return wrong


def child(level: str, threads: int, pytest_args: list[str]) -> int:
    """Check that the environment selected the kernels of ``level``, then run pytest in this process."""
    found = probe()
    wrong = mismatches(found, level, threads)
    print(f"portable: {level}, {threads} thread(s): {json.dumps(found)}", flush=True)
    if wrong:
        print(f"portable: the request did not take effect: {'; '.join(wrong)}", flush=True)
        return NOT_APPLIED
    import pytest

    return int(pytest.main(pytest_args))


# -------------------------------------------------------------------------------------------- the parent
def native() -> dict:
    """``probe()`` in a child with none of the knobs set: the CPU's best kernels."""
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    out = subprocess.run(
        [sys.executable, __file__, "--probe"], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def supported(level: str, best: dict) -> bool:
    """Whether the CPU runs ``level``: torch's native capability is at least it (non-x86: default only)."""
    rank = {"DEFAULT": 0, "AVX2": 1, "AVX512": 2}
    return LEVELS.index(level) <= rank.get(best["torch"], 0)


def run_one(level: str, threads: int, pytest_args: list[str], log: Path, timeout: float) -> tuple[str, float]:
    """One configuration in a fresh process (the knobs are read at library load): its status and seconds."""
    env = {k: v for k, v in os.environ.items() if k not in KNOBS}
    env.update(ENV[level], OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--child", level, "--threads", str(threads), "--", *pytest_args]
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            code = subprocess.run(
                cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    seconds = time.perf_counter() - start
    status = {0: "passed", NOT_APPLIED: "not applied", 5: "no tests"}.get(code, f"failed ({code})")
    return status, seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=f"Arguments after -- replace the pytest arguments (default: {' '.join(DEFAULT_PYTEST)}). "
        "Example: python tests/portable.py --levels default avx512 -- tests/test_metrics_fid.py -q",
    )
    p.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS), help="instruction-set levels")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="thread counts (default: 1 2)")
    p.add_argument("--log-dir", type=Path, default=REPO / "outputs" / "test-portable", help="one log per run")
    p.add_argument("--timeout", type=float, default=600, help="seconds per configuration before it fails")
    # internal: what the parent runs inside one configuration
    p.add_argument("--child", choices=LEVELS, help=argparse.SUPPRESS)
    p.add_argument("--probe", action="store_true", help="print the kernels this process uses (JSON) and exit")
    argv = sys.argv[1:] if argv is None else argv
    ours, rest = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, None)
    args = p.parse_args(ours)
    args.pytest_args = DEFAULT_PYTEST if rest is None else rest
    if any(n < 1 for n in args.threads):
        p.error("--threads must be at least 1")
    return args


def main(args: argparse.Namespace) -> int:
    """Every requested configuration, one line each; 1 if any failed (or its request did not take effect)."""
    if args.probe:
        print(json.dumps(probe()))
        return 0
    if args.child:
        return child(args.child, args.threads[0], args.pytest_args)
    best = native()
    args.log_dir.mkdir(parents=True, exist_ok=True)
    print(f"native kernels: {json.dumps(best)}; pytest {' '.join(args.pytest_args)}; logs in {args.log_dir}")
    print(f"{'capability':<11}{'MKL_ENABLE_INSTRUCTIONS':<25}{'threads':>7}  {'result':<14}{'seconds':>8}")
    failed, total = [], time.perf_counter()
    for level in args.levels:
        for threads in args.threads:
            row = f"{level:<11}{ENV[level]['MKL_ENABLE_INSTRUCTIONS']:<25}{threads:>7}  "
            if not supported(level, best):
                print(f"{row}{'skipped':<14}{'-':>8}  (this CPU's best is {best['torch']})", flush=True)
                continue
            log = args.log_dir / f"{level}-{threads}threads.log"
            status, seconds = run_one(level, threads, args.pytest_args, log, args.timeout)
            print(f"{row}{status:<14}{seconds:>8.1f}", flush=True)
            if status != "passed":
                failed.append(log)
                lines = log.read_text(errors="replace").splitlines()
                summary = [s for s in lines if s.startswith(("FAILED", "ERROR", "portable:"))] or lines[-15:]
                print("\n".join(f"    {s}" for s in summary[-20:]), flush=True)
    print(
        f"total {time.perf_counter() - total:.0f} s; "
        + (f"{len(failed)} failed (see {', '.join(map(str, failed))})" if failed else "all passed")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))

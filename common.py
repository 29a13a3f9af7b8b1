"""Small pieces every module of the toolkit shares.

* ``UsageError``: bad input found before any heavy work. Entry points turn it into one line on stderr and exit
  status 2, never a traceback.
* ``atomic_path`` / ``write_json``: every output file is written under a temporary name in its own directory and
  renamed into place only when complete, so a crash or Ctrl-C never leaves a file that looks finished.
* ``available_cores`` / ``num_gpus``: what this machine offers, asked the way the rest of the toolkit needs it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

EXIT_USAGE = 2
FP16_NEEDS_GPU = ("--dtype float16 needs a GPU (MXNet's CPU backend has no FP16 convolution or GEMM); "
                  "use --dtype float32 on CPU")
BF16_NEEDS_CPU = ("--dtype bfloat16 is for CPU devices (MXNet 1.9 has no bfloat16 GPU kernels); use --dtype float16 "
                  "on GPUs")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
# glibc malloc settings for CPU scoring (the runner sets them with --only-inference): one arena, no mmap for big
# blocks, no trimming, so freed memory is kept and reused. By default every block over 32 MiB (oneDNN's reorder
# buffers: 51 MB per ResNet-50 scoring step at batch 32) is a fresh mmap whose 12,545 page faults are paid again on
# every step; that cost scoring 4-6% on 2 cores. Training gains nothing from them (224 px, synthetic data), and the
# 32 px digits demo, with DALI's threads allocating beside MXNet's, trained 4-6% slower with them.
MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 << 30)}


def cpu_bf16_flags() -> list[str]:
    """The CPU features that give oneDNN native bfloat16 math (AVX512_BF16, AMX-BF16) found in /proc/cpuinfo (or
    the file ``RN50_CPUINFO`` names, to check another machine's)."""
    try:
        text = Path(os.environ.get("RN50_CPUINFO", "/proc/cpuinfo")).read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return [f for f in BF16_CPU_FLAGS if f in flags]


def enable_amx() -> bool:
    """Let oneDNN use AMX (the bfloat16 tile units of recent Xeons) in this process; call before MXNet runs.

    MXNet 1.9.1's oneDNN (2.4.4) stops at AVX512-BF16 unless ``DNNL_MAX_CPU_ISA=AVX512_CORE_AMX`` is set, and with it
    set it dies of SIGILL at the first AMX instruction unless the process has asked Linux for the AMX tile state
    (``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``), which that oneDNN does not do. With both, bfloat16
    convolutions run about twice as fast (measured: 222 against 120 GFLOP/s for one ResNet-50 1x1 convolution on 2
    cores); float32 work is unaffected. Returns whether AMX is enabled."""
    if "amx_bf16" not in cpu_bf16_flags() or os.environ.get("DNNL_MAX_CPU_ISA", "AVX512_CORE_AMX") != \
            "AVX512_CORE_AMX":
        return False
    import ctypes

    try:
        ok = ctypes.CDLL(None, use_errno=True).syscall(158, 0x1023, 18) == 0  # SYS_arch_prctl, REQ_XCOMP_PERM, 18
    except (OSError, AttributeError):
        ok = False
    if ok:
        os.environ["DNNL_MAX_CPU_ISA"] = "AVX512_CORE_AMX"
    return ok


def check_bf16_cpu() -> None:
    if not cpu_bf16_flags():
        raise UsageError("--dtype bfloat16 needs a CPU with AVX512_BF16 or AMX-BF16 (none in /proc/cpuinfo here; "
                         "oneDNN would emulate it, slower than float32); use --dtype float32")


class UsageError(Exception):
    """Bad input: the message names the flag or file, what was wrong, and the fix."""


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: "1,2,4" -> (1, 2, 4)."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def float_list(text: str) -> tuple[float, ...]:
    """argparse type: "30,60,80" -> (30.0, 60.0, 80.0); "" -> ()."""
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (what was wrong and where to look), exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)`` and turn a ``UsageError`` into one line on stderr and exit status 2."""
    prog = Path(sys.argv[0]).name or "toolkit"
    try:
        return main(argv)
    except UsageError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block ends without error.

    On an exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_temp_dir(beside: Path) -> Path:
    """A new temporary directory next to ``beside`` (same file system, so it can be renamed onto it)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", dir=beside.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def write_json(path: os.PathLike | str, obj) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n")


def available_cores() -> int:
    """Cores this process may run on (affinity-aware), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def num_gpus() -> int:
    """Number of GPUs the installed MXNet build can use; 0 for a CPU build or when no driver is present."""
    import mxnet as mx

    try:
        return int(mx.context.num_gpus())
    except Exception:  # a CUDA build on a machine without a driver raises here
        return 0

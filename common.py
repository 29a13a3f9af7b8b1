"""Small pieces every module of the toolkit shares.

* ``ToolkitError`` and its kinds ``UsageError`` (exit status 2), ``DataError`` (4) and ``OutputError`` (5): faults
  a user can fix. Entry points turn them into one line on stderr with their status, never a traceback
  (``run_main``).
* ``atomic_path`` / ``write_json``: every output file is written under a temporary name in its own directory and
  renamed into place only when complete, so a crash or Ctrl-C never leaves a file that looks finished; a full disk
  becomes an ``OutputError`` naming the file.
* ``StopFlag``: SIGINT/SIGTERM become a flag that long loops read between steps; ``Children``, the same for a
  process that starts others: the signal is passed on to their process groups, and it exits once they have ended.
* ``config_from``: a frozen config dataclass filled from parsed flags of the same names (only ``train.py`` and the
  command-line entry points hold an ``argparse.Namespace``).
* ``available_cores`` / ``num_gpus``: what this machine offers, asked the way the rest of the toolkit needs it.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

EXIT_USAGE = 2
EXIT_DIVERGED = 3  # the loss became NaN or infinite
EXIT_DATA = 4  # a record of the data set cannot be read or decoded
EXIT_OUTPUT = 5  # an output could not be written (no space left, permissions)
EXIT_ABORTED = 6  # MLPerf mode: the epochs ran out before an evaluation reached --target-accuracy
EXIT_NOT_STARTED = 7  # a job of several processes did not come together within --dist-start-timeout
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


def check_dtype(dtype: str, device_type: str) -> None:
    """The one rule of precision against device: float16 needs a GPU, bfloat16 a CPU with AVX512_BF16 or AMX-BF16,
    int8 a CPU; a ``UsageError`` naming ``--dtype`` otherwise."""
    if dtype == "float16" and device_type == "cpu":
        raise UsageError(FP16_NEEDS_GPU)
    if dtype == "int8" and device_type != "cpu":
        raise UsageError("--dtype int8 is for CPUs (MXNet's INT8 is oneDNN's); on a GPU use --dtype float16")
    if dtype == "bfloat16":
        if device_type != "cpu":
            raise UsageError(BF16_NEEDS_CPU)
        check_bf16_cpu()


INT8_SCORES_ONLY = ("--dtype int8 scores an INT8 checkpoint (tools/quantize.py writes it): add --only-inference and "
                    "--load-epoch; training runs in float32, bfloat16 or float16")


def check_image_shape(shape, min_side: int = 1) -> tuple[int, int, int]:
    """``--image-shape`` as (C, H, W): C 3 (or 4, NVIDIA's padded FP16 input) and sides of at least ``min_side``
    (ResNet's five halvings need 32; a data pipeline alone takes any); a ``UsageError`` naming the flag."""
    shape = tuple(shape)
    if len(shape) != 3 or shape[0] not in (3, 4) or min(shape[1:]) < min_side:
        sides = f" and H, W at least {min_side}, e.g. 3,224,224" if min_side > 1 else ""
        raise UsageError(f"--image-shape {','.join(map(str, shape))}: expected C,H,W with C 3 or 4{sides}")
    return shape


def check_bf16_cpu() -> None:
    if not cpu_bf16_flags():
        raise UsageError("--dtype bfloat16 needs a CPU with AVX512_BF16 or AMX-BF16 (none in /proc/cpuinfo here; "
                         "oneDNN would emulate it, slower than float32); use --dtype float32")


class ToolkitError(Exception):
    """A fault the toolkit reports in one line (``run_main``) with its own exit status; never a traceback."""

    exit_status = 1


class UsageError(ToolkitError):
    """Bad input: the message names the flag or file, what was wrong, and the fix."""

    exit_status = EXIT_USAGE


class DataError(ToolkitError):
    """A fault in the data found while the run was reading it (a record that does not decode): the message names
    the file, the record, and how to find and fix such records."""

    exit_status = EXIT_DATA


class OutputError(ToolkitError):
    """An output that could not be written (no space left, no permission): the message names the path."""

    exit_status = EXIT_OUTPUT


def no_space(err: BaseException) -> bool:
    """Whether ``err`` is a full disk or quota. MXNet reports any failed write as ``FileStream.Write incomplete``
    (its errno is lost), which counts here as a write failure of either kind."""
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    return "Write incomplete" in str(err)


def output_error(path: os.PathLike | str, err: BaseException, what: str = "writing it") -> OutputError:
    """The one-line ``OutputError`` for a failed write of ``path``."""
    if no_space(err) and (isinstance(err, OSError) or _nearly_full(path)):
        return OutputError(f"{path}: no space left on device while {what}; free some space or choose another "
                           "folder (the last complete files are kept)")
    reason = err.strerror if isinstance(err, OSError) and err.strerror else last_line(err)
    return OutputError(f"{path}: cannot be written ({reason})")


def _nearly_full(path: os.PathLike | str) -> bool:
    import shutil

    try:
        return shutil.disk_usage(Path(path).parent).free < (1 << 20)
    except OSError:
        return False


def check_writable(path: os.PathLike | str, flag: str) -> None:
    """Make sure a file can be created at ``path`` (its folder is created if needed): a usage error naming ``flag``
    now, instead of a failure after the first epoch."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{flag} {path}: is a directory; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise UsageError(f"{flag} {path}: cannot write there ({err.strerror or err}); choose a writable "
                         "folder") from None


def finite_float(text: str) -> float:
    """argparse type: a finite float (no nan, no inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got '{text}'")
    return value


def path_arg(text: str) -> Path:
    """argparse type: a non-empty path."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a path, got an empty string")
    return Path(text)


def prefix_arg(text: str) -> Path:
    """argparse type: a file-name prefix (a folder and the start of a name, e.g. ``runs/model``); one ending in
    ``/`` names a folder, and the files would land beside it as ``runs-0001.params``."""
    if text.endswith("/"):
        raise argparse.ArgumentTypeError(f"'{text}' ends in '/', a folder; give the folder and a name, e.g. "
                                         f"{text}model")
    return path_arg(text)


LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """The toolkit's log lines on stderr: time, level, message (a distributed worker adds its rank)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)


def last_line(err: BaseException | str) -> str:
    """The last non-empty line of an error's text (MXNet's errors end with the message, after a stack)."""
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else (type(err).__name__ if isinstance(err, BaseException) else "")


def use_project_python(script: str) -> None:
    """Re-run ``script`` with the project's ``.venv`` Python (``make install``) when another one runs it, unless
    ``RUNNER_NO_VENV`` is set; call before anything but the standard library is imported."""
    root = Path(script).resolve().parent
    venv = root / ".venv"
    python = venv / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != venv.resolve() and "RUNNER_NO_VENV" not in os.environ:
        os.execv(str(python), [str(python), script, *sys.argv[1:]])


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def config_from(cls, ns: argparse.Namespace, **overrides):
    """``cls`` (a frozen dataclass) with every field taken from the parsed flag of the same name, unless given in
    ``overrides``; fields without a flag keep their defaults."""
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
    values.update(overrides)
    return cls(**values)


class Stopped(Exception):
    """Raised by ``StopFlag.check`` where a long step (a scan of every record) polls for a signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopFlag:
    """SIGINT/SIGTERM set ``signum``, which long loops read between steps (a batch, a file), so the process can
    finish the step, write what it must and exit with 128 + the signal. A second signal ends the process at once:
    the temporary files of writes in flight are removed and it exits with 128 + that signal, saying so."""

    def __init__(self, prog: str | None = None):
        self.signum = None
        self.prog = prog or Path(sys.argv[0]).name or "toolkit"
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            return
        for tmp in list(_IN_FLIGHT):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        sys.stderr.write(f"{self.prog}: second {signal.Signals(signum).name}: stopped at once; files being "
                         "written were removed\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def check(self, *_) -> None:
        """Raise ``Stopped`` if a signal has come (usable as a progress callback)."""
        if self.signum is not None:
            raise Stopped(self.signum)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to the process group that ``proc`` leads (a child started in a session of its own)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def end_groups(procs: Sequence[subprocess.Popen], grace: float) -> None:
    """End the groups of ``procs`` still running: SIGTERM, then SIGKILL to those left after ``grace`` seconds;
    returns once every one has been reaped (a group member that outlives its leader is killed with it)."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(p.poll() is None for p in alive):
        time.sleep(0.05)
    for p in procs:
        signal_group(p, signal.SIGKILL)  # the leader's exit does not end the rest of its group
    for p in alive:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)


class Children(StopFlag):
    """``StopFlag`` for a process that starts others (the launcher, ``benchmark.py``, the drivers and bench tools).

    Every child leads a session of its own, so a terminal's Ctrl-C reaches this process alone, and SIGINT/SIGTERM
    are passed on from here to the group of every running child started with ``forward=True``; ``run`` waits for
    the child and raises ``Stopped`` once it has ended, so the caller exits 128 + the signal with nothing left
    running (``run_main`` says so in one line). A second signal kills every child's group and exits at once. On
    leaving the block, children still running are ended (SIGTERM, then SIGKILL after ``grace`` seconds)."""

    active: "Children | None" = None  # the innermost entered one (``run_child`` starts its children there)

    def __init__(self, prog: str | None = None, grace: float = 10.0):
        super().__init__(prog)
        self.grace = grace
        self.procs: list[subprocess.Popen] = []
        self._forward: set[int] = set()
        self._outer: Children | None = None

    def __enter__(self):
        self._outer, Children.active = Children.active, self
        return super().__enter__()

    def popen(self, cmd: Sequence[str], forward: bool = True, **kwargs) -> subprocess.Popen:
        """Start ``cmd`` (``subprocess.Popen``'s keywords) in a session of its own; a signal that came before is
        passed on to it at once."""
        proc = subprocess.Popen([str(c) for c in cmd], start_new_session=True, **kwargs)
        self.procs.append(proc)
        if forward:
            self._forward.add(proc.pid)
            if self.signum is not None:
                signal_group(proc, self.signum)
        return proc

    def run(self, cmd: Sequence[str], timeout: float | None = None, check: bool = False,
            capture_output: bool = False, **kwargs) -> subprocess.CompletedProcess:
        """``subprocess.run`` through ``popen``: a signal is passed on to the child, and ``Stopped`` raised once it
        has ended; at ``timeout`` its group is ended and ``subprocess.TimeoutExpired`` raised."""
        if capture_output:
            kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc = self.popen(cmd, **kwargs)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            end_groups([proc], grace=5.0)
            raise
        finally:
            if proc.poll() is not None:
                self.procs.remove(proc)
        self.check()
        if check and proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, out, err)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def _handle(self, signum, frame):
        if self.signum is None:
            self.signum = signum
            for proc in self.procs:
                if proc.pid in self._forward and proc.poll() is None:
                    signal_group(proc, signum)
            return
        for proc in self.procs:
            signal_group(proc, signal.SIGKILL)
        super()._handle(signum, frame)

    def end(self, grace: float | None = None) -> None:
        """End every child still running (``end_groups``)."""
        end_groups(self.procs, self.grace if grace is None else grace)
        self.procs = [p for p in self.procs if p.poll() is None]

    def __exit__(self, *exc):
        try:
            self.end()
        finally:
            Children.active = self._outer
            super().__exit__(*exc)


def run_child(cmd: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` for the tools: through the entered ``Children`` (signals passed on, ``Stopped`` once the
    child has ended), or plainly where none is entered. Keywords: ``Children.run``'s and ``Popen``'s."""
    if Children.active is not None:
        return Children.active.run(cmd, **kwargs)
    return subprocess.run([str(c) for c in cmd], **kwargs)


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


class HelpFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to a flag's help once: not when the help already speaks of its default, nor for
    defaults that say nothing (None, False, a store_true switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        default = action.default
        if isinstance(default, (tuple, list)):
            default = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default)
        return f"{text} (default: {default})"


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (what was wrong and where to look), exit status 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Call ``main(argv)``; a ``ToolkitError`` becomes one line on stderr and its exit status, ``Stopped`` (a
    signal passed on to the children, which have ended) one line and 128 + the signal, and SIGINT before ``main``
    handles signals itself one line and 130."""
    prog = Path(sys.argv[0]).name or "toolkit"
    try:
        return main(argv)
    except ToolkitError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return err.exit_status
    except Stopped as stop:
        print(f"{prog}: stopped by {stop}; the processes it started have ended", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (SIGINT)", file=sys.stderr)
        return 128 + signal.SIGINT


_IN_FLIGHT: set[str] = set()  # temporary files being written (removed by StopFlag on a second signal)


@contextlib.contextmanager
def atomic_path(path: os.PathLike | str, what: str = "writing it") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block ends without error.

    On an exception (KeyboardInterrupt included) the temporary file is removed and ``path`` is left as it was; a
    full disk (or any other failed write, OSError or MXNet's) becomes an ``OutputError`` naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise output_error(path, err, what) from None
    os.close(fd)
    tmp = Path(tmp)
    _IN_FLIGHT.add(str(tmp))
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # MXNetError is a RuntimeError
        if not (isinstance(err, OSError) or no_space(err)):
            raise
        raise output_error(path, err, what) from None
    finally:
        _IN_FLIGHT.discard(str(tmp))
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


def write_json(path: os.PathLike | str, obj, what: str = "writing it") -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    with atomic_path(path, what) as tmp:
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


def rotated(items: Sequence, r: int) -> list:
    """``items`` in the order of round ``r`` of a benchmark: rotated by ``r``, so that no candidate always runs
    first or last (the bench tools report medians over rounds)."""
    k = r % len(items)
    return list(items[k:]) + list(items[:k])


def run_tool(main: Callable[[Sequence[str] | None], int], prog: str) -> int:
    """``run_main(main)`` for a tool that starts processes (``run_child``): inside ``Children(prog)``, so that a
    signal reaches the process it runs, and that process ends with the tool."""
    with Children(prog):
        return run_main(main)


def add_rounds_arg(parser: argparse.ArgumentParser, help: str = "rounds; medians are reported") -> None:
    """A bench tool's ``--rounds`` (each round runs every candidate once, in the ``rotated`` order); its old name
    ``--repeats`` is still accepted, unlisted."""
    parser.add_argument("--rounds", type=int, default=3, help=help)
    parser.add_argument("--repeats", dest="rounds", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)

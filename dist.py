"""Training across processes on MXNet's parameter server (ps-lite, kvstore ``dist_sync``), and the launcher that
starts and supervises such a job.

MXNet 1.9.1's engine has no failure detection: when one process of a job dies, every other one waits forever (in a
push, a barrier, or the kvstore's exit barrier), and its own launcher binds the machine's external address. So the
runner starts the job itself (``launch``): a scheduler, servers and workers, every address 127.0.0.1 on one host; it
watches them all, and when one exits non-zero or dies it ends the rest within ``--dist-timeout`` seconds, naming the
rank and the cause in one line.

Design (see the README's "Multi-node training"):

* ``MXNET_UPDATE_ON_KVSTORE=0``: the servers only sum the gradients; every worker runs the optimizer itself on the
  summed gradients, so every worker holds the optimizer state (momentum) and rank 0 can checkpoint it, which MXNet
  refuses when the servers hold it (``save_optimizer_states``: "Cannot save states for distributed training").
  Module then does not pull the initial weights, so ``broadcast_params`` gives every worker rank 0's.
* Ranks come from the scheduler (sorted by address, not launch order); each worker writes its rank to the job
  folder (``RN50_DIST_DIR``) so that the launcher can name it.
* A worker that fails exits at once (``hard_exit``) instead of waiting in the kvstore's exit barrier; a worker that
  succeeds leaves normally, which is what stops the servers and the scheduler.
* SIGINT/SIGTERM to the runner go to rank 0 only (the children have their own sessions, so a terminal's Ctrl-C
  reaches the runner alone): rank 0 stops after its batch, checkpoints and exits; the launcher then ends the rest.
  Over ssh, rank 0 is the worker whose output first says ``[rank 0]``, and it gets a Ctrl-C through its terminal.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
PORT_TRIES = 5  # the scheduler's port is picked free and may be taken before ps-lite binds it: retried


# --- worker side ---------------------------------------------------------------------------------------------------

def in_worker() -> bool:
    """Whether this process is a worker of a distributed job (the launcher set ``DMLC_ROLE``, or Horovod's launcher
    ``HOROVOD_RANK``)."""
    return os.environ.get("DMLC_ROLE") == "worker" or "HOROVOD_RANK" in os.environ


class HorovodComm:
    """A Horovod job's worker, in the kvstore's terms the rest of the toolkit uses (``rank``, ``num_workers``,
    ``type``): gradients are averaged by allreduce inside the optimizer (``hvd.DistributedOptimizer``), so Module
    gets no kvstore at all."""

    type = "horovod"

    def __init__(self):
        import horovod.mxnet as hvd

        hvd.init()
        self.hvd = hvd
        self.rank, self.num_workers, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()

    def optimizer(self, opt):
        """``opt`` wrapped so that its updates average the gradients over the workers first."""
        return _distributed_optimizer(self.hvd)(opt)

    def allreduce(self, arr, name: str):
        return self.hvd.allreduce(arr, average=False, name=name)


def _distributed_optimizer(hvd):
    class Distributed(hvd.DistributedOptimizer):
        """Horovod's optimizer, with the allreduce skipped on a step whose gradients ``exchange`` already averaged
        (the step's exchange is then timed alone)."""

        exchanged = False

        def _do_allreduce(self, index, grad):
            if not self.exchanged:
                super()._do_allreduce(index, grad)

    return Distributed


def create_kvstore(kind: str = "dist_sync"):
    """The job's kvstore (blocks until every process of the job has registered with the scheduler), or a Horovod
    job's ``HorovodComm``; the worker's rank is written where the launcher looks for it."""
    import mxnet as mx

    kv = HorovodComm() if kind == "horovod" else mx.kv.create(kind)
    _KEEP.append(kv)  # see release()
    folder, index = os.environ.get("RN50_DIST_DIR"), os.environ.get("RN50_DIST_INDEX")
    if folder and index is not None:
        path = Path(folder) / f"rank-{index}"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(str(kv.rank))
        os.replace(tmp, path)
    return kv


_KEEP: list = []


def release() -> None:
    """Free the kvstore, after a run that succeeded: its destructor waits in the exit barrier for every worker, and
    rank 0's then stops the servers and the scheduler. Until then the kvstore is kept here, so that a run that fails
    never frees it on the way out (it would wait there forever) and ``hard_exit`` leaves without it."""
    import gc

    _KEEP.clear()
    gc.collect()


def label_logs(rank: int) -> None:
    """Every log line of a worker says its rank; ranks other than 0 log warnings and errors only (rank 0 speaks for
    the job: the workers train in lockstep)."""
    root = logging.getLogger()
    for h in root.handlers:
        fmt = h.formatter._fmt if h.formatter is not None else "%(message)s"
        h.setFormatter(logging.Formatter(fmt.replace("%(levelname)s", f"[rank {rank}] %(levelname)s", 1)))
    if rank != 0:
        root.setLevel(logging.WARNING)


def broadcast_params(kv, mod) -> None:
    """Every worker takes rank 0's parameters and batchnorm statistics (``MXNET_UPDATE_ON_KVSTORE=0``: Module
    initializes the kvstore without pulling them back; Horovod has no kvstore)."""
    args, auxs = mod.get_params()
    for prefix, params in (("bcast_arg_", args), ("bcast_aux_", auxs)):
        for name in sorted(params):
            if isinstance(kv, HorovodComm):
                kv.hvd.broadcast_(params[name], root_rank=0, name=prefix + name)
            else:
                kv.broadcast(prefix + name, params[name], out=params[name])
    mod.set_params(args, auxs, allow_missing=False, force_init=True)


_SUM_KEYS: set[str] = set()


def allreduce_sum(kv, key: str, values: list[float]) -> list[float]:
    """The sum over all workers of ``values`` (float64 on the way: counts of up to 2^53 stay exact)."""
    import mxnet as mx

    arr = mx.nd.array(values, dtype="float64")
    name = "sum_" + key
    if isinstance(kv, HorovodComm):
        return [float(v) for v in kv.allreduce(arr, name).asnumpy()]
    if name not in _SUM_KEYS:
        kv.init(name, mx.nd.zeros(arr.shape, dtype="float64"))
        _SUM_KEYS.add(name)
    out = mx.nd.zeros(arr.shape, dtype="float64")
    kv.push(name, arr)
    kv.pull(name, out=out)
    return [float(v) for v in out.asnumpy()]


def average_aux(kv, mod) -> dict:
    """The batchnorm statistics averaged over the workers (every worker calls it). Each worker keeps its own, as
    each device of one process does; a checkpoint holds their average, as ``Module.get_params`` averages the
    devices'."""
    import mxnet as mx

    _, auxs = mod.get_params()
    out = {}
    for name in sorted(auxs):
        key = "avg_aux_" + name
        if isinstance(kv, HorovodComm):
            out[name] = kv.allreduce(auxs[name], key) / kv.num_workers
            continue
        if key not in _SUM_KEYS:
            kv.init(key, mx.nd.zeros(auxs[name].shape, dtype=auxs[name].dtype))
            _SUM_KEYS.add(key)
        total = mx.nd.zeros(auxs[name].shape, dtype=auxs[name].dtype)
        kv.push(key, auxs[name])
        kv.pull(key, out=total)
        out[name] = total / kv.num_workers
    return out


def weight_checksums(kv, mod) -> list[float]:
    """Each worker's checksum of its parameters, in rank order: equal when the workers hold the same weights (a
    float64 sum over every value, weighted by its position, and of the squares). Batchnorm statistics are left out:
    each worker's are its own, as each device's are in one process."""
    import numpy as np

    args, _ = mod.get_params()
    total = 0.0
    for name in sorted(args):
        w = args[name].asnumpy().astype(np.float64).ravel()
        total += float(w @ (1.0 + (np.arange(w.size) % 7) / 7.0) + w @ w)
    return allreduce_sum(kv, "checksums", [total if r == kv.rank else 0.0 for r in range(kv.num_workers)])


EXCHANGE_EVERY = 20  # one step in this many times its gradient exchange alone (synchronized: no overlap)


class StepTimer:
    """``Module.update`` for a distributed job, timing the gradient exchange (push + pull of every gradient, or
    Horovod's allreduce) alone on one step in ``EXCHANGE_EVERY``, from an epoch's third on: that step waits for the
    backward pass to finish, exchanges the gradients, waits for the exchange, then runs the optimizer on them.
    The other steps run ``Module.update`` unchanged, where MXNet's engine overlaps the exchange with the backward
    pass. ``bytes`` is what one step pushes (and pulls back) per worker: one copy of every gradient."""

    def __init__(self, kv, mod):
        import numpy as np

        self.kv, self.mod = kv, mod
        self.calls, self.times = 0, []
        group = mod._exec_group
        self.bytes = sum(g[0].size * np.dtype(g[0].dtype).itemsize for g in group.grad_arrays if g[0] is not None)

    def update(self) -> None:
        import mxnet as mx

        self.calls += 1
        if self.calls < 3 or (self.calls - 3) % EXCHANGE_EVERY:
            self.mod.update()
            return
        mx.nd.waitall()
        t0 = time.perf_counter()
        self._exchange()
        mx.nd.waitall()
        self.times.append(time.perf_counter() - t0)
        self._optimize()

    def _exchange(self) -> None:
        group = self.mod._exec_group
        for i, (name, grads) in enumerate(zip(group.param_names, group.grad_arrays)):
            if grads[0] is None:
                continue
            if isinstance(self.kv, HorovodComm):
                self.mod._optimizer._do_allreduce(i, grads[0])  # one device per process
            else:  # what Module.update does with the kvstore (mxnet.model._update_params)
                self.kv.pushpull(name, grads, priority=-i)

    def _optimize(self) -> None:
        from mxnet.model import _update_params

        mod = self.mod
        horovod = isinstance(self.kv, HorovodComm)
        if horovod:
            mod._optimizer.exchanged = True  # the gradients are averaged already
        try:
            _update_params(mod._exec_group.param_arrays, mod._exec_group.grad_arrays, updater=mod._updater,
                           num_device=len(mod._context), kvstore=None)
        finally:
            if horovod:
                mod._optimizer.exchanged = False
        mod._params_dirty = True


def per_worker(kv, values: list[float]) -> list[list[float]]:
    """Every worker's ``values`` (the same count on each), in rank order; every worker calls it."""
    n = len(values)
    slots = [0.0] * (n * kv.num_workers)
    slots[kv.rank * n:(kv.rank + 1) * n] = values
    flat = allreduce_sum(kv, f"per_worker_{n}", slots)
    return [flat[r * n:(r + 1) * n] for r in range(kv.num_workers)]


def hard_exit(code: int) -> None:
    """Leave now with ``code``: a failing worker would otherwise block in the kvstore's exit barrier, waiting for
    workers that wait for it."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# --- launcher side -------------------------------------------------------------------------------------------------

def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Member:
    role: str  # scheduler, server, worker
    index: int  # launch order within the role
    proc: subprocess.Popen
    log_path: Path | None = None
    rc: int | None = None
    host: str | None = None  # started over ssh on this host

    def name(self, folder: Path) -> str:
        if self.host is not None:
            return f"{self.role} on {self.host} (ssh pid {self.proc.pid})"
        if self.role == "worker":
            rank = folder / f"rank-{self.index}"
            if rank.exists():
                return f"worker rank {rank.read_text().strip()} (pid {self.proc.pid})"
            return f"worker {self.index} (pid {self.proc.pid}, before it had a rank)"
        return f"{self.role} {self.index} (pid {self.proc.pid})" if self.role == "server" else \
            f"scheduler (pid {self.proc.pid})"

    def cause(self) -> str:
        rc = self.rc
        if rc is not None and rc < 0:
            try:
                return f"was killed by {signal.Signals(-rc).name}"
            except ValueError:
                return f"was killed by signal {-rc}"
        text = f"exited with status {rc}"
        if self.log_path is not None and self.log_path.exists():
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
            if lines:
                text += f" ({lines[-1][:300]})"
        return text


EXTERNAL_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def likely_cause(m: "Member") -> int:
    """Of several failures seen in the same poll, the one to name comes first: a process killed from outside, then
    one that crashed (a signal of its own), then one that exited with an error, which is most often the others'
    lost connection (a Horovod peer whose partner was killed fails within milliseconds: "Connection reset by
    peer")."""
    if m.rc is not None and m.rc < 0:
        return 0 if -m.rc in EXTERNAL_SIGNALS else 1
    return 2


def exit_status(rc: int) -> int:
    return 128 - rc if rc < 0 else rc


@dataclass
class Job:
    """A running job: its members and the folder of their logs and rank files."""
    folder: Path
    members: list[Member] = field(default_factory=list)

    def workers(self) -> list[Member]:
        return [m for m in self.members if m.role == "worker"]

    def rank0(self) -> Member | None:
        for m in self.workers():
            path = self.folder / f"rank-{m.index}"
            if path.exists() and path.read_text().strip() == "0":
                return m
        return None

    def poll(self) -> None:
        for m in self.members:
            if m.rc is None:
                m.rc = m.proc.poll()

    def end(self, grace: float) -> None:
        """SIGTERM to every process still running, SIGKILL to those left after ``grace`` seconds."""
        alive = [m for m in self.members if m.proc.poll() is None]
        for m in alive:
            _signal_group(m.proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(m.proc.poll() is None for m in alive):
            time.sleep(0.05)
        for m in alive:
            if m.proc.poll() is None:
                _signal_group(m.proc, signal.SIGKILL)
        for m in alive:
            try:
                m.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover (SIGKILL'd)
                pass
        self.poll()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # each member leads its own session (and so its own process group)
    except (ProcessLookupError, PermissionError):
        pass


def base_env(env: dict, port: int, workers: int, servers: int, addr: str = LOOPBACK) -> dict:
    """The ps-lite environment of every member: the scheduler at ``addr`` (127.0.0.1 on one host; on several, the
    address the user gives), never guessed from the network."""
    out = {k: v for k, v in env.items() if not k.startswith("DMLC_")}
    out.update(DMLC_PS_ROOT_URI=addr, DMLC_PS_ROOT_PORT=str(port), DMLC_NODE_HOST=addr,
               DMLC_NUM_WORKER=str(workers), DMLC_NUM_SERVER=str(servers))
    return out


def _start_scheduler(job: Job, env: dict, workers: int, servers: int, addr: str = LOOPBACK) -> dict:
    """Start the scheduler on a free port of ``addr``, retrying when ps-lite reports "bind failed"."""
    for attempt in range(PORT_TRIES):
        port = free_port(addr)
        penv = base_env(env, port, workers, servers, addr)
        log_path = job.folder / f"scheduler-{attempt}.log"
        with open(log_path, "wb") as f:
            proc = subprocess.Popen([sys.executable, "-c", "import mxnet"], env=dict(penv, DMLC_ROLE="scheduler"),
                                    stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 1.0  # ps-lite binds at once and aborts at once when it cannot
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        if proc.poll() is None:
            job.members.append(Member("scheduler", 0, proc, log_path))
            return penv
        if "bind failed" not in log_path.read_text(errors="replace"):
            job.members.append(Member("scheduler", 0, proc, log_path, proc.returncode))
            return penv
        log.warning("the scheduler could not bind %s:%d (taken meanwhile); trying another port", addr, port)
    raise RuntimeError(f"the scheduler could not bind a port on {addr} in {PORT_TRIES} tries")


def launch(worker_argv: list[str], env: dict, workers: int, servers: int, timeout: float,
           worker_threads: int) -> int:
    """Run a job of ``workers`` workers (``worker_argv``, train.py) and ``servers`` servers on this host, all on
    127.0.0.1; return the runner's exit status (0, or the status of the member that failed; 128 + N when the
    runner got signal N)."""
    with _running_job(timeout) as (job, got):
        folder = job.folder
        penv = _start_scheduler(job, env, workers, servers)
        if job.members[0].rc is not None:
            return _scheduler_failed(job)
        for i in range(servers):
            log_path = folder / f"server-{i}.log"
            with open(log_path, "wb") as f:
                proc = subprocess.Popen([sys.executable, "-c", "import mxnet"],
                                        env=dict(penv, DMLC_ROLE="server", OMP_NUM_THREADS="1"),
                                        stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            job.members.append(Member("server", i, proc, log_path))
        for i in range(workers):
            wenv = dict(penv, DMLC_ROLE="worker", RN50_DIST_DIR=str(folder), RN50_DIST_INDEX=str(i),
                        OMP_NUM_THREADS=str(worker_threads), MXNET_UPDATE_ON_KVSTORE="0")
            proc = subprocess.Popen(worker_argv, env=wenv, start_new_session=True)
            job.members.append(Member("worker", i, proc))
        return supervise(job, timeout, got)


def launch_horovod(worker_argv: list[str], env: dict, procs: int, timeout: float) -> int:
    """Run a Horovod job of ``procs`` processes (``worker_argv``, train.py) on this host, as horovodrun's Gloo
    launcher does but with its rendezvous server on 127.0.0.1 (horovodrun's binds every interface) and the
    processes supervised as ``launch``'s: one that fails ends the rest within ``timeout`` seconds."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

    with _running_job(timeout) as (job, got):
        server = RendezvousHTTPServer((LOOPBACK, 0), RendezvousHandler, 0)
        plan = get_host_assignments(parse_hosts(f"localhost:{procs}"), procs)
        server.init(plan)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            base = {k: v for k, v in env.items() if not k.startswith("HOROVOD_")}
            port = str(server.server_address[1])
            base.update(HOROVOD_GLOO_RENDEZVOUS_ADDR=LOOPBACK, HOROVOD_GLOO_RENDEZVOUS_PORT=port,
                        HOROVOD_CONTROLLER="gloo", HOROVOD_CPU_OPERATIONS="gloo", HOROVOD_GLOO_IFACE="lo",
                        NCCL_SOCKET_IFNAME="lo", RN50_DIST_DIR=str(job.folder))
            for slot in plan:
                wenv = dict(base, HOROVOD_HOSTNAME=slot.hostname, HOROVOD_RANK=str(slot.rank),
                            HOROVOD_SIZE=str(slot.size), HOROVOD_LOCAL_RANK=str(slot.local_rank),
                            HOROVOD_LOCAL_SIZE=str(slot.local_size), HOROVOD_CROSS_RANK=str(slot.cross_rank),
                            HOROVOD_CROSS_SIZE=str(slot.cross_size), RN50_DIST_INDEX=str(slot.rank))
                proc = subprocess.Popen(worker_argv, env=wenv, start_new_session=True)
                job.members.append(Member("worker", slot.rank, proc))
            return supervise(job, timeout, got)
        finally:
            server.shutdown()
            server.server_close()


@contextlib.contextmanager
def _running_job(timeout: float):
    """A job's folder and its SIGINT/SIGTERM record (``(job, got)``); on the way out every member still running is
    ended, the handlers are put back and the folder is removed."""
    job = Job(Path(tempfile.mkdtemp(prefix="rn50-dist-")))
    got: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: got.append(signum)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield job, got
    finally:
        job.end(grace=min(timeout, 5.0))
        for s, h in old.items():
            signal.signal(s, h)
        for p in job.folder.iterdir():
            p.unlink()
        job.folder.rmdir()


def _scheduler_failed(job: Job) -> int:
    m = job.members[0]
    log.error("dist: the %s %s; nothing was started", m.name(job.folder), m.cause())
    return exit_status(m.rc) or 1


def read_hostfile(path: Path) -> list[str]:
    """The hosts of a host file: one per line, ``host`` or ``host slots=N`` (mpirun's and horovodrun's format; the
    slots are ignored: one worker per host drives its -n devices), ``#`` comments."""
    from common import UsageError

    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise UsageError(f"--hostfile {path}: cannot read it ({err.strerror or err})") from None
    hosts = []
    for n, line in enumerate(lines, 1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if any(not f.startswith("slots=") for f in fields[1:]) or not fields[0].replace("-", "").replace(
                ".", "").replace("_", "").replace(":", "").isalnum():
            raise UsageError(f"--hostfile {path}: line {n}: expected 'host' or 'host slots=N', got {line.strip()!r}")
        hosts.append(fields[0])
    if not hosts:
        raise UsageError(f"--hostfile {path}: no hosts in it")
    return hosts


def remote_command(host_env: dict, cwd: str, argv: list[str]) -> str:
    """The shell command run on a host: the environment given explicitly (nothing else of ours crosses), in the
    toolkit's folder."""
    import shlex

    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(host_env.items()))
    return f"cd {shlex.quote(cwd)} && exec env {env} {' '.join(shlex.quote(a) for a in argv)}"


def launch_hosts(hosts: list[str], addr: str, worker_argv: list[str], env_add: dict, timeout: float,
                 ssh: list[str], remote_dir: str) -> int:
    """One worker and one server per host over ssh, the scheduler here on ``addr``; supervised as ``launch``.
    ``env_add``: what the runner sets (OpenMP, MXNet); with the DMLC variables it is all the hosts get."""
    with _running_job(timeout) as (job, got):
        folder = job.folder
        penv = _start_scheduler(job, dict(os.environ), len(hosts), len(hosts), addr)
        if job.members[0].rc is not None:
            return _scheduler_failed(job)
        dmlc = {k: v for k, v in penv.items() if k.startswith("DMLC_")}
        for role in ("server", "worker"):
            for i, host in enumerate(hosts):
                henv = {**env_add, **dmlc, "DMLC_ROLE": role, "DMLC_NODE_HOST": host, "PYTHONUNBUFFERED": "1"}
                argv = [worker_argv[0], "-c", "import mxnet"] if role == "server" else list(worker_argv)
                if role == "worker":
                    henv["MXNET_UPDATE_ON_KVSTORE"] = "0"
                cmd = [*ssh, host, remote_command(henv, remote_dir, argv)]
                log_path = folder / f"{role}-{i}.log" if role == "server" else None
                if log_path is not None:
                    with open(log_path, "wb") as f:
                        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                                stdin=subprocess.DEVNULL)
                else:  # its terminal's output is relayed (and read for the rank); its input can send Ctrl-C
                    proc = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                    threading.Thread(target=_relay, args=(proc.stdout, folder / f"rank-{i}"), daemon=True).start()
                job.members.append(Member(role, i, proc, log_path, host=host))
        return supervise(job, timeout, got)


RANK_IN_LOG = re.compile(rb"\[rank (\d+)\]")


def _relay(stream, rank_file: Path) -> None:
    """Copy a remote worker's output (its ssh terminal: stdout and stderr) to ours, writing its rank to
    ``rank_file`` from the first log line that names it (rank 0 logs from the start; the others only warnings)."""
    for line in iter(stream.readline, b""):
        if not rank_file.exists():
            found = RANK_IN_LOG.search(line)
            if found:
                tmp = rank_file.with_suffix(".tmp")
                tmp.write_text(found.group(1).decode())
                os.replace(tmp, rank_file)
        try:
            sys.stderr.buffer.write(line)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def _interrupt(member: Member, sig: int) -> None:
    """Pass ``sig`` on to one member: a signal to a local process's group; over ssh (a terminal, -tt), Ctrl-C typed
    into it, which the host's terminal turns into SIGINT for the remote process."""
    if member.host is None:
        _signal_group(member.proc, sig)
        return
    try:
        member.proc.stdin.write(b"\x03")
        member.proc.stdin.flush()
    except (OSError, ValueError):
        pass


def supervise(job: Job, timeout: float, got: list[int]) -> int:
    """Watch the job until it ends; see ``launch``."""
    folder, forwarded, servers_done = job.folder, None, None
    while True:
        job.poll()
        workers = job.workers()
        if got and forwarded is None:
            forwarded = got[0]
            target = job.rank0()
            if target is None or target.rc is not None:  # rank 0 unknown yet (start-up): nothing to save
                log.error("dist: %s before training started; ending the job", signal.Signals(forwarded).name)
                job.end(timeout)
                return 128 + forwarded
            log.info("dist: %s goes to %s, which checkpoints and stops; the rest are ended then",
                     signal.Signals(forwarded).name if target.host is None else "SIGINT (Ctrl-C over ssh)",
                     target.name(folder))
            _interrupt(target, forwarded)
            deadline = time.monotonic() + timeout + 600  # rank 0 finishes its batch and writes a checkpoint
        if forwarded is not None:
            target = job.rank0()
            if (target is not None and target.rc is not None) or time.monotonic() > deadline:
                job.end(timeout)
                return 128 + forwarded
            time.sleep(0.1)
            continue
        failed = [m for m in workers if m.rc not in (None, 0)]
        failed += [m for m in job.members if m.role != "worker" and m.rc not in (None, 0)]
        others = [m for m in job.members if m.role != "worker"]  # servers and scheduler (none for Horovod)
        if not failed and others and all(m.rc == 0 for m in others) and any(m.rc is None for m in workers):
            # the servers stop when rank 0 has passed the exit barrier; the other workers are leaving too
            servers_done = servers_done or time.monotonic()
            if time.monotonic() - servers_done > timeout:
                left = [m for m in workers if m.rc is None]
                log.error("dist: %s still running %.0f s after the servers stopped; ended",
                          ", ".join(m.name(folder) for m in left), timeout)
                job.end(timeout)
                return 1
        if failed:
            m = min(failed, key=likely_cause)
            log.error("dist: %s %s; ending the job's %d other process(es)", m.name(folder), m.cause(),
                      sum(1 for x in job.members if x.rc is None))
            t0 = time.monotonic()
            job.end(timeout)
            log.info("dist: the job ended %.1f s after the failure was seen", time.monotonic() - t0)
            return exit_status(m.rc) or 1
        if all(m.rc == 0 for m in workers):
            deadline = time.monotonic() + timeout  # the servers and the scheduler stop once rank 0 tells them
            while time.monotonic() < deadline and any(m.proc.poll() is None for m in job.members):
                time.sleep(0.05)
            job.poll()
            left = [m for m in job.members if m.rc is None]
            if left:
                log.warning("dist: %s still running %.0f s after the workers finished; ended",
                            ", ".join(m.name(folder) for m in left), timeout)
            return 0
        time.sleep(0.1)

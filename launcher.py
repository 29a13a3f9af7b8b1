"""The launcher of a job of several processes: it starts them (on this host, over ssh, or Horovod's), supervises them
and ends them; used by ``runner`` alone. What a worker does is ``dist.py``'s.

MXNet 1.9.1's engine has no failure detection: when one process of a job dies, every other one waits forever (in a
push, a barrier, or the kvstore's exit barrier), and its own launcher binds the machine's external address. So the
runner starts the job itself: a scheduler, servers and workers (all on 127.0.0.1 on one host, or one server and one
worker per host over ssh with the scheduler on ``--dist-addr``), and watches them all. The guarantees:

* **Start-up.** Every worker must register with the job (its rank known) within ``--dist-start-timeout`` seconds;
  otherwise the job ends with one line naming the processes, and over ssh the hosts, that never started or never
  registered (exit status 7). Over ssh a host that answers says so first (a marker line), so a host that never
  answers is told apart from one whose process cannot reach the scheduler.
* **A process dies.** The supervisor names it and its cause in one line. Rank 0, if it is alive, is told (SIGUSR1,
  or Ctrl-\\ typed into its ssh terminal, which the host turns into SIGQUIT): it saves a checkpoint where its weights
  are consistent and marks its report ``failed`` (``dist.LostGuard``), within ``--dist-timeout`` seconds. Then the
  rest are ended, the report (where the runner can read it) names the dead process, the checkpoint ``--resume``
  takes and the command that resumes, and the runner exits with the dead process's status.
* **SIGINT/SIGTERM** go to rank 0 only (the children have their own sessions, so a terminal's Ctrl-C reaches the
  runner alone): rank 0 stops after its batch, checkpoints, writes its report and exits; the others, which then wait
  on it forever, are ended at once (they have nothing to save), so the runner exits 130/143 within a step and a
  checkpoint of the signal. A signal before rank 0 is known ends the job at once.
* Nothing is left running: every member leads its own process group, and each group is ended (SIGTERM, then
  SIGKILL) when the job ends, whichever way. The runner's own signals go through ``common.Children``.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import EXIT_NOT_STARTED, Children, UsageError, end_groups, signal_group

log = logging.getLogger("dist")

LOOPBACK = "127.0.0.1"
PORT_TRIES = 5  # the scheduler's port is picked free and may be taken before ps-lite binds it: retried
STOP_GRACE = 1.0  # seconds the other workers get once rank 0 has stopped on a signal (they have nothing to save)
ANSWERED = "rn50-dist: answered"  # the first line a host's shell prints, before Python starts
LOST_SIGNAL = signal.SIGUSR1  # to rank 0 on this host: another process of the job died


@dataclass(frozen=True)
class Supervision:
    """How a job is watched: ``timeout`` (``--dist-timeout``) for a failure or a stop to end the job,
    ``start_timeout`` (``--dist-start-timeout``) for every worker to register; the run's report and checkpoint
    prefix, and the command that resumes it, for what the runner says when a process dies."""
    timeout: float = 30.0
    start_timeout: float = 120.0
    report: Path | None = None
    model_prefix: Path | None = None
    resume_cmd: tuple[str, ...] = ()


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_addr(addr: str) -> None:
    """``--dist-addr`` must be an IPv4 address of this host (the scheduler binds it): a ``UsageError`` naming the
    flag otherwise, before any process starts. Only a bind is tried: nothing is sent anywhere."""
    try:
        ipaddress.IPv4Address(addr)
    except ValueError:
        raise UsageError(f"--dist-addr {addr}: not an IPv4 address; give this host's address that the other hosts "
                         "reach (e.g. from 'ip -4 addr')") from None
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((addr, 0))
    except OSError as err:
        raise UsageError(f"--dist-addr {addr}: not an address of this host ({err.strerror or err}); give this "
                         "host's address that the other hosts reach (e.g. from 'ip -4 addr')") from None


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
        if self.host is not None and rc == 255:
            text += " (ssh could not connect or lost the connection)"
        if self.log_path is not None and self.log_path.exists():
            lines = [ln.strip() for ln in self.log_path.read_text(errors="replace").splitlines()
                     if ln.strip() and ln.strip() != ANSWERED]
            if lines:
                text += f" ({lines[-1][:300]})"
        return text

    def answered(self, folder: Path) -> bool:
        """Over ssh: whether the host ran the command (its marker line came back)."""
        if self.log_path is not None:
            return self.log_path.exists() and ANSWERED in self.log_path.read_text(errors="replace")
        return (folder / f"answered-{self.index}").exists()


EXTERNAL_SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def likely_cause(m: Member) -> int:
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
    """A running job: its members, the folder of their logs and rank files, and the runner's signals."""
    folder: Path
    members: list[Member] = field(default_factory=list)
    kids: Children | None = None

    def start(self, member_args: tuple, cmd: list[str], **kwargs) -> Member:
        """Start ``cmd`` as a member (``member_args``: role, index and the rest of ``Member``'s fields) in a
        session of its own; the runner's signals are not forwarded to it (``supervise`` decides)."""
        popen = self.kids.popen if self.kids is not None else (
            lambda c, forward, **kw: subprocess.Popen(c, start_new_session=True, **kw))
        member = Member(member_args[0], member_args[1], popen(cmd, forward=False, **kwargs), *member_args[2:])
        self.members.append(member)
        return member

    def workers(self) -> list[Member]:
        return [m for m in self.members if m.role == "worker"]

    def rank_of(self, m: Member) -> int | None:
        path = self.folder / f"rank-{m.index}"
        try:
            return int(path.read_text().strip()) if m.role == "worker" else None
        except (OSError, ValueError):
            return None

    def rank0(self) -> Member | None:
        for m in self.workers():
            if self.rank_of(m) == 0:
                return m
        return None

    def poll(self) -> None:
        for m in self.members:
            if m.rc is None:
                m.rc = m.proc.poll()

    def end(self, grace: float) -> None:
        """SIGTERM to every member still running, SIGKILL to those left after ``grace`` seconds."""
        end_groups([m.proc for m in self.members], grace)
        self.poll()


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
            m = job.start(("scheduler", 0, log_path), [sys.executable, "-c", "import mxnet"],
                          env=dict(penv, DMLC_ROLE="scheduler"), stdout=f, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 1.0  # ps-lite binds at once and aborts at once when it cannot
        while time.monotonic() < deadline and m.proc.poll() is None:
            time.sleep(0.05)
        if m.proc.poll() is None or "bind failed" not in log_path.read_text(errors="replace"):
            m.rc = m.proc.poll()
            return penv
        job.members.remove(m)
        log.warning("the scheduler could not bind %s:%d (taken meanwhile); trying another port", addr, port)
    raise RuntimeError(f"the scheduler could not bind a port on {addr} in {PORT_TRIES} tries")


def launch(worker_argv: list[str], env: dict, workers: int, servers: int, sup: Supervision,
           worker_threads: int) -> int:
    """Run a job of ``workers`` workers (``worker_argv``, train.py) and ``servers`` servers on this host, all on
    127.0.0.1; return the runner's exit status (0, or the status of the member that failed; 128 + N when the
    runner got signal N)."""
    with _running_job(sup) as job:
        folder = job.folder
        penv = _start_scheduler(job, env, workers, servers)
        if job.members[0].rc is not None:
            return _scheduler_failed(job)
        for i in range(servers):
            log_path = folder / f"server-{i}.log"
            with open(log_path, "wb") as f:
                job.start(("server", i, log_path), [sys.executable, "-c", "import mxnet"],
                          env=dict(penv, DMLC_ROLE="server", OMP_NUM_THREADS="1"), stdout=f,
                          stderr=subprocess.STDOUT)
        for i in range(workers):
            wenv = dict(penv, DMLC_ROLE="worker", RN50_DIST_DIR=str(folder), RN50_DIST_INDEX=str(i),
                        OMP_NUM_THREADS=str(worker_threads), MXNET_UPDATE_ON_KVSTORE="0")
            job.start(("worker", i), worker_argv, env=wenv)
        return supervise(job, sup)


def launch_horovod(worker_argv: list[str], env: dict, procs: int, sup: Supervision) -> int:
    """Run a Horovod job of ``procs`` processes (``worker_argv``, train.py) on this host, as horovodrun's Gloo
    launcher does but with its rendezvous server on 127.0.0.1 (horovodrun's binds every interface) and the
    processes supervised as ``launch``'s."""
    from horovod.runner.common.util.hosts import get_host_assignments, parse_hosts
    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

    with _running_job(sup) as job:
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
                job.start(("worker", slot.rank), worker_argv, env=wenv)
            return supervise(job, sup)
        finally:
            server.shutdown()
            server.server_close()


class _running_job:
    """A job's folder and the runner's signals (``common.Children``, nothing forwarded but what ``supervise``
    passes on); on the way out every member still running is ended, the handlers are put back and the folder is
    removed."""

    def __init__(self, sup: Supervision):
        self.sup = sup

    def __enter__(self) -> Job:
        self.job = Job(Path(tempfile.mkdtemp(prefix="rn50-dist-")), kids=Children("runner", grace=STOP_GRACE))
        self.job.kids.__enter__()
        return self.job

    def __exit__(self, *exc):
        job = self.job
        try:
            job.end(grace=min(self.sup.timeout, 5.0))
            job.kids.__exit__(*exc)
        finally:
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
    """The shell command run on a host: a marker line saying the host answered, then the command with the
    environment given explicitly (nothing else of ours crosses), in the toolkit's folder."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(host_env.items()))
    return (f"echo {shlex.quote(ANSWERED)} && cd {shlex.quote(cwd)} && exec env {env} "
            f"{' '.join(shlex.quote(a) for a in argv)}")


def launch_hosts(hosts: list[str], addr: str, worker_argv: list[str], env_add: dict, sup: Supervision,
                 ssh: list[str], remote_dir: str) -> int:
    """One worker and one server per host over ssh, the scheduler here on ``addr``; supervised as ``launch``.
    ``env_add``: what the runner sets (OpenMP, MXNet); with the DMLC variables it is all the hosts get."""
    with _running_job(sup) as job:
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
                if role == "server":
                    log_path = folder / f"server-{i}.log"
                    with open(log_path, "wb") as f:
                        job.start(("server", i, log_path, None, host), cmd, stdout=f, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
                else:  # its terminal's output is relayed (and read for the rank); its input can send Ctrl-C
                    m = job.start(("worker", i, None, None, host), cmd, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                    threading.Thread(target=_relay, args=(m.proc.stdout, folder, i), daemon=True).start()
        return supervise(job, sup)


RANK_IN_LOG = re.compile(rb"\[rank (\d+)\]")


def _relay(stream, folder: Path, index: int) -> None:
    """Copy a remote worker's output (its ssh terminal: stdout and stderr) to ours: its marker line becomes the
    file ``answered-<index>``, and its rank, from the first line that names it (every worker says when it has
    registered), the file ``rank-<index>``."""
    rank_file = folder / f"rank-{index}"
    for line in iter(stream.readline, b""):
        if line.strip() == ANSWERED.encode():
            (folder / f"answered-{index}").touch()
            continue
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


def _tell(member: Member, sig: int) -> None:
    """Pass ``sig`` on to one member: a signal to a local process's group; over ssh (a terminal, -tt), the key
    that the host's terminal turns into it: Ctrl-C for SIGINT (and SIGTERM), Ctrl-\\ for the lost-worker word."""
    if member.host is None:
        signal_group(member.proc, sig)
        return
    try:
        member.proc.stdin.write(b"\x1c" if sig == LOST_SIGNAL else b"\x03")
        member.proc.stdin.flush()
    except (OSError, ValueError):
        pass


def _not_started(job: Job) -> list[str]:
    """The members that have not registered: hosts that never answered first, then processes without a rank."""
    out = []
    for m in job.members:
        if m.host is not None and m.rc is None and not m.answered(job.folder):
            out.append(f"{m.role} on {m.host} (no answer over ssh)")
    for m in job.workers():
        if job.rank_of(m) is None and not any(m.host and m.host in x and m.role in x for x in out):
            where = f"on {m.host}, which answered" if m.host is not None else f"pid {m.proc.pid}"
            out.append(f"worker {m.index} ({where}; not registered with the scheduler)")
    return out


def supervise(job: Job, sup: Supervision) -> int:
    """Watch the job until it ends; see the module docstring."""
    folder, t_start = job.folder, time.monotonic()
    while True:
        job.poll()
        workers = job.workers()
        signum = job.kids.signum if job.kids is not None else None
        if signum is not None:
            return _stop(job, sup, signum)
        failed = [m for m in job.members if m.rc not in (None, 0)]
        if failed:
            return _failed(job, sup, min(failed, key=likely_cause))
        if any(job.rank_of(m) is None for m in workers) and time.monotonic() - t_start > sup.start_timeout:
            log.error("dist: the job did not start within %.0f s (--dist-start-timeout): %s; ending it",
                      sup.start_timeout, ", ".join(_not_started(job)))
            job.end(STOP_GRACE)
            return EXIT_NOT_STARTED
        if all(m.rc == 0 for m in workers):
            return _finished(job, sup)
        others = [m for m in job.members if m.role != "worker"]  # servers and scheduler (none for Horovod)
        if others and all(m.rc == 0 for m in others):
            # the servers stop when rank 0 has passed the exit barrier; the other workers are leaving too
            deadline = time.monotonic() + sup.timeout
            while time.monotonic() < deadline and any(m.proc.poll() is None for m in workers):
                time.sleep(0.05)
            job.poll()
            if any(m.rc not in (None, 0) for m in workers):
                continue
            left = [m for m in workers if m.rc is None]
            if left:
                log.error("dist: %s still running %.0f s after the servers stopped; ended",
                          ", ".join(m.name(folder) for m in left), sup.timeout)
                job.end(sup.timeout)
                return 1
        time.sleep(0.1)


def _stop(job: Job, sup: Supervision, signum: int) -> int:
    """SIGINT/SIGTERM to the runner: rank 0 checkpoints and stops; then the rest are ended at once."""
    name = signal.Signals(signum).name
    target = job.rank0()
    if target is None or target.rc is not None:  # rank 0 unknown yet (start-up): nothing to save
        log.error("dist: %s before training started; ending the job", name)
        job.end(STOP_GRACE)
        return 128 + signum
    log.info("dist: %s goes to %s, which checkpoints and stops; the rest are ended then",
             name if target.host is None else "SIGINT (Ctrl-C over ssh)", target.name(job.folder))
    _tell(target, signum)
    deadline = time.monotonic() + sup.timeout + 600  # rank 0 finishes its batch and writes a checkpoint
    while target.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.end(STOP_GRACE)
    return 128 + signum


def _failed(job: Job, sup: Supervision, m: Member) -> int:
    """A member died: rank 0 saves what it can, the rest are ended, and the report says how to resume."""
    folder = job.folder
    line = f"{m.name(folder)} {m.cause()}"
    log.error("dist: %s; ending the job's %d other process(es)", line, sum(1 for x in job.members if x.rc is None))
    t0 = time.monotonic()
    rank0 = job.rank0()
    if rank0 is not None and rank0.rc is None:
        log.info("dist: %s saves its report and, with --model-prefix, a checkpoint where its weights are "
                 "consistent first", rank0.name(folder))
        _tell(rank0, LOST_SIGNAL)
        deadline = time.monotonic() + sup.timeout
        while rank0.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    job.end(sup.timeout)
    log.info("dist: the job ended %.1f s after the failure was seen", time.monotonic() - t0)
    _amend_report(sup, line)
    return exit_status(m.rc) or 1


def _finished(job: Job, sup: Supervision) -> int:
    deadline = time.monotonic() + sup.timeout  # the servers and the scheduler stop once rank 0 tells them
    while time.monotonic() < deadline and any(m.proc.poll() is None for m in job.members):
        time.sleep(0.05)
    job.poll()
    left = [m for m in job.members if m.rc is None]
    if left:
        log.warning("dist: %s still running %.0f s after the workers finished; ended",
                    ", ".join(m.name(job.folder) for m in left), sup.timeout)
    return 0


def resume_point(prefix: Path | None) -> tuple[str | None, str | None]:
    """(the newest complete checkpoint, the one ``--resume`` takes: it may be a newer partial one) under
    ``prefix``."""
    if prefix is None:
        return None, None
    import checkpoint

    good = [c for c in checkpoint.listing(prefix) if checkpoint.problem(c) is None]
    complete = [c for c in good if not c.partial]
    return (complete[-1].name if complete else None), (good[-1].name if good else None)


def _amend_report(sup: Supervision, line: str) -> None:
    """After a process died: the report says ``failed``, names it, the checkpoint ``--resume`` takes and the
    command; the same in one log line. The report is amended only where the runner can read it (this host, or a
    shared folder)."""
    complete, resume_from = resume_point(sup.model_prefix)
    cmd = list(sup.resume_cmd) + ([] if "--resume" in sup.resume_cmd else ["--resume"])
    failure = {"process": line, "last_complete_checkpoint": complete, "resume_from": resume_from,
               "resume": shlex.join(cmd) if resume_from else None}
    if resume_from:
        log.info("dist: --resume continues from %s (newest complete checkpoint: %s): %s", resume_from,
                 complete or "none", failure["resume"])
    elif sup.model_prefix is not None:
        log.info("dist: no checkpoint under %s to resume from; run the same command again to start afresh",
                 sup.model_prefix)
    if sup.report is None or not Path(sup.report).is_file():
        return
    try:
        report = json.loads(Path(sup.report).read_text())
    except (OSError, ValueError):
        return
    from common import OutputError, write_json

    report["status"] = "failed"
    report["error"] = f"dist: {line}"
    report.setdefault("dist", {})["failure"] = failure
    try:
        write_json(sup.report, report, "writing the report")
    except OutputError as err:
        log.warning("the report could not be amended (%s)", err)

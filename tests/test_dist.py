"""A job of several processes on MXNet's parameter server (``./runner --workers``, dist.py), on 127.0.0.1 only:
the same weights on every worker and as one process with the same global batch and data, a worker killed mid-epoch,
a signal to the runner, resume from the job's checkpoint, and where the sockets listen. Every run is bounded in time;
the launcher ends its job by itself."""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import PY, ROOT, run

SMALL = ["--data-backend", "synthetic", "--image-shape", "3,32,32", "--num-classes", "10", "--no-val", "--seed", "3",
         "--disp-batches", "1"]


def runner(*args, timeout=300):
    return run([ROOT / "runner", *args], timeout=timeout)


def params(path: Path) -> dict:
    import mxnet as mx

    return {k: v.asnumpy() for k, v in mx.nd.load(str(path)).items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


def children(pid: int) -> list[int]:
    """The processes ``pid`` started (the launcher's job)."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def alive(pids) -> list[int]:
    left = []
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                if f.read().split()[2] != "Z":
                    left.append(p)
        except FileNotFoundError:
            pass
    return left


def listening(pids) -> list[str]:
    """The local addresses of the TCP sockets ``pids`` listen on (from /proc)."""
    inodes = set()
    for p in pids:
        try:
            for fd in os.listdir(f"/proc/{p}/fd"):
                try:
                    link = os.readlink(f"/proc/{p}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except FileNotFoundError:
            pass
    out = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            f = row.split()
            if f[3] == "0A" and f[9] in inodes:  # LISTEN
                host, port = f[1].split(":")
                addr = ".".join(str(int(host[i:i + 2], 16)) for i in (6, 4, 2, 0)) if not v6 else f"[{host}]"
                out.append(f"{addr}:{int(port, 16)}")
    return out


@pytest.fixture(scope="module")
def equivalence(tmp_path_factory):
    """2 workers x 1 device x batch 8 (and 1 server) against one process with 2 devices x batch 8: the same global
    batch (16), the same images (synthetic image j of the global batch is the same however the batch is split)."""
    d = tmp_path_factory.mktemp("dist")
    common = ["-b", "8", "-e", "2", "--benchmark-iters", "3", *SMALL]
    job = runner("-n", "1", "--workers", "2", "--servers", "1", *common, "--model-prefix", d / "w", "--report",
                 d / "w.json")
    ref = runner("-n", "2", *common, "--model-prefix", d / "r", "--report", d / "r.json")
    return d, job, ref


@pytest.mark.e2e
def test_two_workers_match_one_process(equivalence):
    d, job, ref = equivalence
    assert job.returncode == 0, job.stderr
    assert ref.returncode == 0, ref.stderr
    report = json.loads((d / "w.json").read_text())
    assert report["dist"]["workers"] == 2 and report["dist"]["servers"] == 1
    assert report["dist"]["weights_identical"] is True, report["dist"]  # every worker holds the same weights
    assert report["global_batch_size"] == 16 and report["status"] == "completed"
    assert report["metrics"]["train.iters"] == [3, 3]
    # per worker and epoch: the median step and the gradient exchange alone (the third step of each epoch timed it)
    assert report["dist"]["bytes_pushed_per_step"] == 4 * sum(v.size for k, v in params(d / "w-0002.params").items()
                                                              if k.startswith("arg:"))
    for epoch in report["metrics"]["train.workers"]:
        assert [w["rank"] for w in epoch] == [0, 1]
        for w in epoch:
            assert w["exchange_samples"] == 1 and 0 < w["exchange_ms"] < w["step_ms"], w
            assert w["exchange_share"] == pytest.approx(w["exchange_ms"] / w["step_ms"])
    # ... and they are one process's, with the same global batch and the same images, to float rounding
    assert max_diff(params(d / "w-0002.params"), params(d / "r-0002.params")) < 1e-5
    assert "[rank 0]" in job.stderr and "[rank 1] INFO" not in job.stderr  # rank 0 speaks for the job
    assert not list(d.glob("*.tmp")) and not (d / "w-0003.params").exists()


@pytest.mark.e2e
def test_resume_from_the_jobs_checkpoint(equivalence, tmp_path):
    """Epoch 2 resumed from the job's epoch-1 checkpoint ends where the uninterrupted job did."""
    d, job, _ = equivalence
    for f in ("w-symbol.json", "w-0001.params", "w-0001.states", "w-0001.json"):
        (tmp_path / f).write_bytes((d / f).read_bytes())
    res = runner("-n", "1", "--workers", "2", "-b", "8", "-e", "2", "--benchmark-iters", "3", *SMALL,
                 "--model-prefix", tmp_path / "w", "--load-epoch", "1")
    assert res.returncode == 0, res.stderr
    assert "resuming from" in res.stderr
    assert max_diff(params(tmp_path / "w-0002.params"), params(d / "w-0002.params")) < 1e-5


@pytest.mark.e2e
def test_readme_command_and_loopback_only(tmp_path):
    """The README's command, while every socket of the job is watched: all listen on 127.0.0.1."""
    p = subprocess.Popen([str(ROOT / "runner"), "-n", "1", "-b", "8", "--workers", "2", "--data-backend", "synthetic",
                          "--image-shape", "3,32,32", "-e", "1", "--no-val", "--benchmark-iters", "6"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen, err = [], []
    deadline = time.monotonic() + 300
    try:
        for line in p.stderr:
            err.append(line)
            if "trains 6 batches per epoch" in line:  # every process of the job is up and connected
                seen = listening(children(p.pid))
        rc = p.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if p.poll() is None:
            p.kill()
    assert rc == 0, "".join(err)
    assert len(seen) >= 4 and all(a.startswith("127.0.0.1:") for a in seen), seen  # scheduler, servers, workers


@pytest.mark.e2e
def test_a_killed_worker_ends_the_job(tmp_path):
    """SIGKILL to one worker mid-epoch: the others would wait forever in ps-lite; the runner ends them within
    --dist-timeout, names the worker and the cause in one line, exits non-zero, and leaves nothing running."""
    p = subprocess.Popen([str(ROOT / "runner"), "-n", "1", "-b", "8", "--workers", "2", "-e", "1",
                          "--benchmark-iters", "500", *SMALL, "--dist-timeout", "5"],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err, job, killed_at = [], [], None
    try:
        for line in p.stderr:
            err.append(line)
            if killed_at is None and "Batch[2/500]" in line:  # mid-epoch
                job = children(p.pid)
                workers = [c for c in job if "train.py" in Path(f"/proc/{c}/cmdline").read_text()]
                assert len(job) == 5 and len(workers) == 2, job  # scheduler, 2 servers, 2 workers
                os.kill(workers[1], signal.SIGKILL)
                killed_at = time.monotonic()
        rc = p.wait(timeout=60)
        ended = time.monotonic() - killed_at
    finally:
        if p.poll() is None:
            p.kill()
    assert killed_at is not None, "".join(err)
    assert rc == 128 + signal.SIGKILL, "".join(err)
    failure = [ln for ln in err if "ERROR dist:" in ln]
    assert len(failure) == 1 and "was killed by SIGKILL" in failure[0] and "worker" in failure[0], "".join(err)
    assert ended < 5 + 10, ended  # --dist-timeout, and the polling around it
    assert alive(job) == []


def watch_job(argv, trigger: str, act, timeout=180, env=None):
    """Run the runner with ``argv``; when its output shows ``trigger``, call ``act(runner, job pids)`` once; return
    (exit status, output, job pids, seconds from the act to the runner's exit). Bounded: killed at ``timeout``."""
    p = subprocess.Popen([str(ROOT / "runner"), *map(str, argv)], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, env=env)
    err, job, acted = [], [], None
    try:
        for line in p.stderr:
            err.append(line)
            if acted is None and trigger in line:
                job = [c for pid in children(p.pid) for c in [pid, *children(pid)]]
                act(p, job)
                acted = time.monotonic()
        rc = p.wait(timeout=timeout)
        took = time.monotonic() - acted if acted else None
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return rc, "".join(err), job, took


@pytest.mark.e2e
def test_sigterm_checkpoints_on_rank_0_and_ends_the_job(tmp_path):
    """SIGTERM to the runner: rank 0 stops after its batch and checkpoints, the other worker (which would wait on it
    forever) is ended at once: exit 143 well within docker's 10 s grace, whatever --dist-timeout (30 s here)."""
    rc, text, job, took = watch_job(
        ["-n", "1", "-b", "8", "--workers", "2", "-e", "1", "--benchmark-iters", "500", *SMALL, "--model-prefix",
         tmp_path / "m", "--report", tmp_path / "r.json"], "Batch[2/500]", lambda p, job: p.send_signal(
            signal.SIGTERM))
    assert rc == 128 + signal.SIGTERM, text
    assert took < 10, took
    assert (tmp_path / "m-0001-partial.params").is_file() and (tmp_path / "m-0001-partial.json").is_file(), text
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "interrupted"
    assert "goes to worker rank 0" in text
    assert alive(job) == []


def kill_rank_1(p, job):
    workers = [c for c in job if "train.py" in Path(f"/proc/{c}/cmdline").read_text()]
    assert len(workers) == 2, job
    ranks = {int(f.read_text()): int(f.name.split("-")[1]) for f in Path("/tmp").glob("rn50-dist-*/rank-*")}
    os.kill(workers[ranks.get(1, 1)] if len(ranks) == 2 else workers[1], signal.SIGKILL)


@pytest.mark.e2e
def test_a_dead_worker_leaves_a_consistent_checkpoint_and_the_way_to_resume(tmp_path):
    """A worker killed mid-epoch: rank 0, waiting on it forever inside a gradient exchange, saves a partial
    checkpoint of its weights after a whole step (they equal one process's after as many steps, same global batch
    and images), the report says failed and names the dead worker and the command that resumes from it."""
    common = ["-b", "8", "-e", "1", "--warmup-epochs", "0", *SMALL]  # the LR of a step: not of the epoch's length
    rc, text, job, took = watch_job(
        ["-n", "1", "--workers", "2", "--servers", "1", *common, "--benchmark-iters", "500", "--dist-timeout", "20",
         "--model-prefix", tmp_path / "m", "--report", tmp_path / "r.json"], "Batch[3/500]", kill_rank_1)
    assert rc == 128 + signal.SIGKILL, text
    assert alive(job) == [] and took < 20 + 10, took
    [failure] = [ln for ln in text.splitlines() if "ERROR dist:" in ln]
    assert "was killed by SIGKILL" in failure, text
    manifest = json.loads((tmp_path / "m-0001-partial.json").read_text())
    steps = manifest["batch"]
    assert 3 <= steps <= 5 and manifest["step"] == steps, manifest
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "failed" and "was killed by SIGKILL" in report["error"], report
    f = report["dist"]["failure"]
    assert f["resume_from"] == str(tmp_path / "m-0001-partial") and f["last_complete_checkpoint"] is None, f
    assert f["resume"].endswith("--resume") and f"--model-prefix {tmp_path / 'm'}" in f["resume"], f
    ref = runner("-n", "2", *common, "--benchmark-iters", str(steps), "--model-prefix", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    mine, theirs = params(tmp_path / "m-0001-partial.params"), params(tmp_path / "ref-0001.params")
    weights = [k for k in mine if k.startswith("arg:")]
    assert max_diff({k: mine[k] for k in weights}, {k: theirs[k] for k in weights}) < 1e-5
    import checkpoint

    assert checkpoint.for_resume(tmp_path / "m", None, {}).name == f["resume_from"]


STAND_IN_SSH = {
    "never_connects": "#!/usr/bin/env bash\nexec sleep 600\n",
    "fails": "#!/usr/bin/env bash\necho 'ssh: connect to host h1 port 22: Connection refused' >&2\nexit 255\n",
}


@pytest.mark.e2e
def test_hosts_that_never_answer_end_the_job_at_the_start_deadline(tmp_path):
    """A stand-in ssh that never connects (it only sleeps; nothing is sent anywhere): after --dist-start-timeout the
    job ends with one line naming every host that never answered, exit 7, and the ssh processes are gone."""
    ssh = tmp_path / "ssh"
    ssh.write_text(STAND_IN_SSH["never_connects"])
    ssh.chmod(0o755)
    (tmp_path / "hosts").write_text("h1\nh2\n")
    t0 = time.monotonic()
    p = subprocess.Popen([str(ROOT / "runner"), "-n", "1", "-b", "8", "--hostfile", str(tmp_path / "hosts"),
                          "--dist-addr", "127.0.0.1", "--ssh", str(ssh), "--dist-start-timeout", "3", *SMALL],
                         cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    job = []
    while time.monotonic() - t0 < 10 and len(job) < 5 and p.poll() is None:
        job = [c for pid in children(p.pid) for c in [pid, *children(pid)]]
        time.sleep(0.1)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 7, err
    assert time.monotonic() - t0 < 3 + 10
    [line] = [ln for ln in err.splitlines() if "ERROR" in ln]
    assert "did not start within 3 s (--dist-start-timeout)" in line, err
    for role in ("server", "worker"):
        for host in ("h1", "h2"):
            assert f"{role} on {host} (no answer over ssh)" in line, line
    assert len(job) >= 5 and alive(job) == []  # the scheduler and the four ssh processes


@pytest.mark.e2e
def test_an_ssh_that_fails_ends_the_job_naming_the_host(tmp_path):
    ssh = tmp_path / "ssh"
    ssh.write_text(STAND_IN_SSH["fails"])
    ssh.chmod(0o755)
    (tmp_path / "hosts").write_text("h1\n")
    res = run([ROOT / "runner", "-n", "1", "-b", "8", "--hostfile", tmp_path / "hosts", "--dist-addr", "127.0.0.1",
               "--ssh", ssh, *SMALL], timeout=120)
    assert res.returncode == 255, res.stderr
    [line] = [ln for ln in res.stderr.splitlines() if "ERROR" in ln]
    assert " on h1 (ssh pid " in line and "exited with status 255 (ssh could not connect" in line, line


@pytest.mark.e2e
def test_workers_that_do_not_register_in_time_end_the_job(tmp_path):
    """--workers on this host with a start deadline shorter than MXNet's import: the workers are named (no rank
    yet), exit 7, nothing left running."""
    rc, text, job, _ = watch_job(["-n", "1", "-b", "8", "--workers", "2", "--dist-start-timeout", "0.5", *SMALL],
                                 "did not start", lambda p, job: None, timeout=120)
    assert rc == 7, text
    [line] = [ln for ln in text.splitlines() if "ERROR" in ln]
    assert "worker 0 (pid " in line and "worker 1 (pid " in line and "not registered" in line, line
    time.sleep(0.5)
    assert alive(job) == []


@pytest.mark.parametrize("addr,message", [
    ("192.0.2.1", "--dist-addr 192.0.2.1: not an address of this host"),  # TEST-NET-1: bound, never reached
    ("node1", "--dist-addr node1: not an IPv4 address"),
])
def test_dist_addr_is_checked_before_any_process_starts(tmp_path, addr, message, capsys):
    from test_config import call, runner_module

    (tmp_path / "hosts").write_text("h1\n")
    argv = ["-n", "1", "-b", "8", "--hostfile", str(tmp_path / "hosts"), "--dist-addr", addr, "--ssh", "false"]
    assert call(runner_module().main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("flags,message", [
    (["--workers", "0"], "--workers 0: must be at least 1"),
    (["--servers", "2"], "--servers 2: at least 1, and only with --workers 2 or more"),
    (["--workers", "2", "--dist-timeout", "0"], "--dist-timeout 0: must be positive"),
    (["--workers", "3"], "--workers 3 x -n 1: more CPU devices than cores (2)"),
])
def test_runner_dist_flag_errors(flags, message):
    from test_config import runner_module

    r = runner_module()
    args, extra = r.build_parser().parse_known_args(["-n", "1", "-b", "8", *flags])
    from common import UsageError

    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        r.build_command(args, extra, gpus=0, cores=2)


def test_runner_splits_the_batch_and_threads_over_workers():
    from test_config import runner_module

    r = runner_module()
    args, extra = r.build_parser().parse_known_args(["-n", "1", "-b", "8", "--workers", "2", "-l", "0.256"])
    argv, env = r.build_command(args, extra, gpus=0, cores=2)
    assert argv[argv.index("--batch-size") + 1] == "8"  # per worker; the LR is the global batch's (16)
    assert float(argv[argv.index("--lr") + 1]) == pytest.approx(0.016)
    assert argv[argv.index("--kv-store") + 1] == "dist_sync" and env["OMP_NUM_THREADS"] == "1"


def test_train_refuses_a_dist_kvstore_outside_a_job(capsys):
    from test_config import call, train_main

    code = call(train_main(), ["--kv-store", "dist_sync", "--data-backend", "synthetic", "--cpu-devices", "1"])
    assert code == 2 and "a distributed job is started by the runner: ./runner --workers W" in capsys.readouterr().err


FAKE_SSH = """#!/usr/bin/env bash
# ssh's stand-in: logs its arguments, skips the options, runs the command on this machine; with -tt in a terminal of
# its own (script(1)), as ssh -tt runs it on the host, so that a Ctrl-C written to its input interrupts the command
echo "$@" >> "$FAKE_SSH_LOG"
tty=
while [[ $# -gt 0 && "$1" == -* ]]; do
  if [[ "$1" == -tt ]]; then tty=1; fi
  if [[ "$1" == -o ]]; then shift; fi
  shift
done
shift  # the host
if [[ -n "$tty" ]]; then exec script -qefc "$*" /dev/null; fi
exec bash -c "$*"
"""


def fake_hosts(tmp_path: Path) -> tuple[Path, Path]:
    ssh = tmp_path / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 slots=8\n# the second host\n127.0.0.1\n")
    return ssh, hosts


@pytest.mark.e2e
def test_hostfile_over_ssh(tmp_path):
    """--hostfile: one server and one worker per host over ssh (here a stand-in that runs the command locally, both
    "hosts" being 127.0.0.1), the environment passed explicitly, the scheduler on --dist-addr."""
    ssh, hosts = fake_hosts(tmp_path)
    res = run([ROOT / "runner", "-n", "1", "-b", "8", "--hostfile", hosts, "--dist-addr", "127.0.0.1", "--ssh",
               f"{ssh} -o BatchMode=yes -tt", "-e", "1", "--benchmark-iters", "2", *SMALL, "--report",
               tmp_path / "r.json"], env={"FAKE_SSH_LOG": str(tmp_path / "ssh.log"), "OMP_NUM_THREADS": "1"},
              timeout=300)
    assert res.returncode == 0, res.stderr
    calls = (tmp_path / "ssh.log").read_text().splitlines()
    assert len(calls) == 4 and all(c.startswith("-o BatchMode=yes -tt 127.0.0.1 echo 'rn50-dist: answered' && cd ")
                                   for c in calls), calls
    assert sum("DMLC_ROLE=worker" in c for c in calls) == 2 and all("DMLC_PS_ROOT_URI=127.0.0.1" in c for c in calls)
    assert all("OMP_NUM_THREADS=1" in c for c in calls)
    assert json.loads((tmp_path / "r.json").read_text())["dist"]["weights_identical"] is True


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("script") is None, reason="script(1) (util-linux) gives the stand-in ssh a terminal")
def test_hostfile_sigterm_checkpoints_on_rank_0(tmp_path):
    """SIGTERM to the runner of a --hostfile job: rank 0 (known from its output) gets a Ctrl-C through its ssh
    terminal, writes a partial checkpoint and stops; the runner ends the rest and leaves nothing running."""
    ssh, hosts = fake_hosts(tmp_path)
    env = dict(os.environ, FAKE_SSH_LOG=str(tmp_path / "ssh.log"), OMP_NUM_THREADS="1")
    p = subprocess.Popen([str(ROOT / "runner"), "-n", "1", "-b", "8", "--hostfile", hosts, "--dist-addr", "127.0.0.1",
                          "--ssh", f"{ssh} -o BatchMode=yes -tt", "-e", "1", "--benchmark-iters", "500", *SMALL,
                          "--dist-timeout", "5", "--model-prefix", tmp_path / "m"], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err, job = [], []
    try:
        for line in p.stderr:
            err.append(line)
            if not job and "Batch[2/500]" in line:
                job = [c for pid in children(p.pid) for c in [pid, *children(pid)]]
                p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
    text = "".join(err)
    assert rc == 128 + signal.SIGTERM, text
    assert "SIGINT (Ctrl-C over ssh) goes to worker on 127.0.0.1" in text, text
    assert (tmp_path / "m-0001-partial.params").is_file() and (tmp_path / "m-0001-partial.json").is_file(), text
    time.sleep(1)
    assert alive(job) == []


def descendants(pid: int) -> list[int]:
    out = []
    for c in children(pid):
        out += [c, *descendants(c)]
    return out


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("script") is None, reason="script(1) (util-linux) gives the stand-in ssh a terminal")
def test_hostfile_dead_process_rank_0_saves_over_ssh(tmp_path):
    """--hostfile: a server on one host killed; rank 0, waiting on it, is told through its ssh terminal (Ctrl-\\,
    SIGQUIT there), saves a partial checkpoint and stops; the job ends with the dead process named."""
    ssh, hosts = fake_hosts(tmp_path)
    env = dict(os.environ, FAKE_SSH_LOG=str(tmp_path / "ssh.log"), OMP_NUM_THREADS="1")

    def kill_a_server(p, job):
        servers = [d for d in descendants(p.pid) if Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")[1:3] ==
                   [b"-c", b"import mxnet"] and b"DMLC_ROLE=server" in Path(f"/proc/{d}/environ").read_bytes()]
        assert len(servers) == 2, servers
        os.kill(servers[1], signal.SIGKILL)

    rc, text, job, took = watch_job(
        ["-n", "1", "-b", "8", "--hostfile", hosts, "--dist-addr", "127.0.0.1", "--ssh",
         f"{ssh} -o BatchMode=yes -tt", "-e", "1", "--benchmark-iters", "500", *SMALL, "--dist-timeout", "20",
         "--model-prefix", tmp_path / "m"], "Batch[3/500]", kill_a_server, env=env)
    assert rc != 0 and took < 20 + 10, text
    assert "ERROR dist: server on 127.0.0.1 (ssh pid" in text, text
    assert "another process of the job died (the launcher says)" in text, text
    assert json.loads((tmp_path / "m-0001-partial.json").read_text())["batch"] >= 3
    time.sleep(1)
    assert alive(job) == []


@pytest.mark.parametrize("hostfile,flags,message", [
    ("h1\nh2\n", [], "--hostfile needs --dist-addr"),
    ("h1 slots=2 extra\n", ["--dist-addr", "10.0.0.1"], "line 1: expected 'host' or 'host slots=N'"),
    ("# nobody\n", ["--dist-addr", "10.0.0.1"], "no hosts in it"),
    (None, ["--dist-addr", "10.0.0.1"], "--dist-addr is the scheduler's address for --hostfile"),
    ("h1\n", ["--dist-addr", "10.0.0.1", "--workers", "2"], "--hostfile starts one worker per host"),
])
def test_hostfile_errors(tmp_path, hostfile, flags, message, capsys):
    from test_config import call, runner_module

    r = runner_module()
    argv = ["-n", "1", "-b", "8", "--dry-run", *flags]
    if hostfile is not None:
        (tmp_path / "hosts").write_text(hostfile)
        argv += ["--hostfile", str(tmp_path / "hosts")]
    assert call(r.main, argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_hostfile_dry_run(tmp_path, capsys):
    from test_config import runner_module

    r = runner_module()
    (tmp_path / "hosts").write_text("node1 slots=8\nnode2 slots=8\n")
    assert r.main(["-n", "8", "-b", "208", "--hostfile", str(tmp_path / "hosts"), "--dist-addr", "10.0.0.1",
                   "--dry-run", "--assume-gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "one worker and one server on each of node1, node2" in out and "--kv-store dist_device_sync" in out
    assert "over ssh -o BatchMode=yes -o ConnectTimeout=15 " in out  # a host that never answers fails in 15 s
    assert "--batch-size 1664" in out  # per worker: 8 GPUs x 208; the LR is for 2 x 1664


@pytest.mark.e2e
def test_benchmark_sweeps_workers(tmp_path):
    """benchmark.py --workers 1,2: each cell a job; weak scaling against 1 worker x 1 device; workers x devices."""
    out = tmp_path / "w.json"
    res = run([ROOT / "benchmark.py", "-n", "1", "-b", "4", "--workers", "1,2", "-i", "3", "-e", "2", "-w", "1",
               "--data-backend", "synthetic", "--image-shape", "3,32,32", "--num-classes", "10", "-o", out],
              timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    s = json.loads(out.read_text())
    assert s["workers"] == [1, 2] and s["devices_total"] == {"1": {"1": 1}, "2": {"1": 2}}
    one, two = (s["metrics_by_workers"]["default"][w]["1"]["4"]["train.total_ips"] for w in ("1", "2"))
    assert one > 0 and two > 0
    assert s["weak_scaling_by_workers"]["default"]["2"]["1"]["4"] == pytest.approx(two / one)
    assert s["metrics"]["1"]["4"]["train.total_ips"] == one  # NVIDIA's shape: the first worker count
    assert "| 2 x 1 |" in res.stdout
    report = json.loads(Path(s["runs"]["default"]["1"]["4"]["report"]).read_text())
    assert "dist" not in report


def test_scaling_model_by_hand(capsys):
    from tools import scaling_model as sm

    # one node exchanges nothing over its link; 2 nodes send half of 2 x P fp16 values each way
    assert sm.weak_scaling(1, 3399.0, 408, 100.0) == pytest.approx(1.0)
    compute, exchange = sm.step_times(2, 3399.0, 408, 100.0)
    assert compute == pytest.approx(408 / 3399) and exchange == pytest.approx(2 * 25_557_032 * 2 * 0.5 * 8 / 100e9)
    assert sm.weak_scaling(2, 3399.0, 408, 100.0) == pytest.approx(2 * compute / (compute + exchange))
    assert sm.main(["--nodes", "2,8", "--links", "100"]) == 0
    out = capsys.readouterr().out
    assert "| A100 (3,399, 408) | 100 Gb/s | 1.93 (97%) | 7.55 (94%) |" in out and "102 MB pushed" in out


def test_a_killed_process_is_named_before_the_peer_it_took_down(tmp_path, caplog):
    """Two failures seen in the same poll (a Horovod peer fails within milliseconds of its partner's SIGKILL): the
    supervisor names the killed process and exits with its status, not the peer's error exit."""
    import launcher

    killed = subprocess.Popen(["sleep", "60"])
    peer = subprocess.Popen([PY, "-c", "import sys; sys.exit(1)"])
    peer.wait()
    killed.kill()
    killed.wait()
    job = launcher.Job(tmp_path, [launcher.Member("worker", 0, peer), launcher.Member("worker", 1, killed)])
    with caplog.at_level("ERROR", logger="dist"):
        assert launcher.supervise(job, launcher.Supervision(timeout=5)) == 128 + signal.SIGKILL
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith(f"dist: worker 1 (pid {killed.pid}, before it had a rank) was killed by SIGKILL"), line


@functools.lru_cache(maxsize=None)
def horovod_imports() -> bool:
    """Whether ``horovod.mxnet`` imports here, asked of another process: Horovod's libraries loaded into this one
    would make a later in-process DALI pipeline abort it (see ``dali.preload``)."""
    res = subprocess.run([PY, "-c", "import horovod.mxnet"], capture_output=True, timeout=120)
    return res.returncode == 0


def test_horovod_missing_is_a_clear_usage_error(capsys, monkeypatch):
    """Where horovod.mxnet does not import (None in sys.modules makes Python refuse the import, as it does where
    Horovod is not installed, whether it is here or not), one line says how to build it."""
    import sys

    from test_config import call, runner_module

    monkeypatch.setitem(sys.modules, "horovod.mxnet", None)
    assert call(runner_module().main, ["-n", "1", "-b", "8", "--kv-store", "horovod"]) == 2
    err = capsys.readouterr().err
    assert "--kv-store horovod: horovod.mxnet does not import here" in err and "HOROVOD_WITH_MXNET=1" in err
    assert len(err.splitlines()) == 1, err


def test_horovod_dry_runs(tmp_path, capsys):
    """One process per device, on this host (the rendezvous on 127.0.0.1) or through horovodrun on a host file's
    hosts; the batch is per process and the LR the global batch's."""
    from test_config import runner_module

    r = runner_module()
    assert r.main(["-n", "2", "-b", "8", "-l", "0.256", "--kv-store", "horovod", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "2 Horovod processes on 127.0.0.1" in out and "--cpu-devices 1" in out and "OMP_NUM_THREADS=1" in out
    assert "--batch-size 8 " in out and "--lr 0.016 " in out and "--kv-store horovod" in out
    (tmp_path / "hosts").write_text("node1 slots=8\nnode2 slots=8\n")
    assert r.main(["-n", "8", "-b", "208", "--kv-store", "horovod", "--hostfile", str(tmp_path / "hosts"),
                   "--dry-run", "--assume-gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "horovodrun --gloo -np 16 -H node1:8,node2:8 " in out and "MXNET_UPDATE_ON_KVSTORE=0" in out
    assert "--batch-size 208 " in out and "--gpus 0,1,2,3,4,5,6,7" in out  # each takes its local rank's GPU
    assert f"--lr {0.1 * 16 * 208 / 256!r} " in out


needs_horovod = pytest.mark.skipif(not horovod_imports(), reason="horovod.mxnet does not import here (Horovod is "
                                                                  "not installed; see the README)")


@pytest.mark.e2e
@needs_horovod
def test_horovod_matches_one_process(equivalence, tmp_path):
    """--kv-store horovod: 2 processes of batch 8 (allreduce, Gloo on 127.0.0.1) end with the weights of one
    process with 2 devices x batch 8, as the parameter-server job does."""
    d, _, ref = equivalence
    job = runner("-n", "2", "--kv-store", "horovod", "-b", "8", "-e", "2", "--benchmark-iters", "3", *SMALL,
                 "--model-prefix", tmp_path / "h", "--report", tmp_path / "h.json")
    assert job.returncode == 0, job.stderr
    report = json.loads((tmp_path / "h.json").read_text())
    assert report["dist"]["kv_store"] == "horovod" and report["dist"]["workers"] == 2
    assert report["dist"]["weights_identical"] is True and report["global_batch_size"] == 16
    assert all(w["exchange_ms"] > 0 for epoch in report["metrics"]["train.workers"] for w in epoch)
    assert max_diff(params(tmp_path / "h-0002.params"), params(d / "r-0002.params")) < 1e-5


@pytest.mark.e2e
@needs_horovod
def test_horovod_job_reads_dali_data(demo_root, tmp_path):
    """A Horovod job on the dali-cpu backend (DALI loaded before Horovod: the other order aborts every process)."""
    job = runner("-n", "2", "--kv-store", "horovod", "-b", "8", "-e", "1", "--benchmark-iters", "2", "--no-val",
                 "--data-root", demo_root, "--data-backend", "dali-cpu", "--image-shape", "3,32,32", "--num-classes",
                 "10", "--report", tmp_path / "h.json")
    assert job.returncode == 0, job.stderr
    report = json.loads((tmp_path / "h.json").read_text())
    assert report["status"] == "completed" and report["metrics"]["train.iters"] == [2]


@pytest.mark.e2e
@needs_horovod
def test_horovod_killed_worker_ends_the_job(tmp_path):
    """A Horovod process killed: its peer's allreduce fails at once; rank 0 saves a partial checkpoint of its
    weights after a whole step and its report says failed, naming the dead process and how to resume."""
    seen = []

    def kill_rank_1(p, job):
        seen.extend(listening([p.pid, *job]))
        os.kill(children(p.pid)[1], signal.SIGKILL)

    rc, text, job, took = watch_job(
        ["-n", "2", "-b", "8", "--kv-store", "horovod", "-e", "1", "--benchmark-iters", "500", *SMALL,
         "--dist-timeout", "5", "--model-prefix", tmp_path / "m", "--report", tmp_path / "r.json"], "Batch[2/500]",
        kill_rank_1, timeout=60)
    assert rc == 128 + signal.SIGKILL, text
    [failure] = [ln for ln in text.splitlines() if "ERROR dist:" in ln]
    assert "was killed by SIGKILL" in failure, text
    assert took < 5 + 10 and alive(job) == []
    assert seen and all(a.startswith("127.0.0.1:") for a in seen), seen  # the rendezvous and Gloo's sockets
    assert json.loads((tmp_path / "m-0001-partial.json").read_text())["batch"] >= 2
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "failed" and report["dist"]["failure"]["resume"].endswith("--resume"), report


@pytest.mark.e2e
@needs_horovod
def test_horovod_sigterm_checkpoints_and_exits_within_10_s(tmp_path):
    rc, text, job, took = watch_job(
        ["-n", "2", "-b", "8", "--kv-store", "horovod", "-e", "1", "--benchmark-iters", "500", *SMALL,
         "--model-prefix", tmp_path / "m", "--report", tmp_path / "r.json"], "Batch[2/500]",
        lambda p, job: p.send_signal(signal.SIGTERM))
    assert rc == 128 + signal.SIGTERM and took < 10, (took, text)
    assert (tmp_path / "m-0001-partial.json").is_file(), text
    assert json.loads((tmp_path / "r.json").read_text())["status"] == "interrupted"
    assert alive(job) == []

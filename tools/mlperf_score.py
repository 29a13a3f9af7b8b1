#!/usr/bin/env python3
"""Score an MLPerf Training ResNet-50 result set, or run the toolkit N times to make one and then score it.

    python tools/mlperf_score.py results/<system>/resnet [--json score.json]
    python tools/mlperf_score.py results/<system>/resnet --runs 5 [--log-dir logs] -- -n 8 -b 408 ...

It reads ``DIR/result_<i>.txt``, logs of any submitter's code (a prefix before ``:::MLLOG``, other output between
the records, one ``init_start`` per rank, block or epoch keys), checks each with mlperf-logging's compliance checker
and scores them the way MLPerf's result summarizer does. A run's time is run_stop - run_start in minutes; a run
converged when its run_stop status is ``success`` and the checker passes it (in the closed division the checker asks
for an eval_accuracy >= 0.759). The score is the olympic mean: drop the fastest and the slowest converged times,
average the rest. One run that did not converge counts as the slowest (the fastest and it are dropped).

A set is a valid MLPerf result only when all of these hold, checked in this order (the result line and ``reason``
give every rule that fails, the first one first):

1. every log is compliant: the checker passes it, or its run stopped without success (a run_stop status other than
   ``success``, such as ``aborted`` when the epochs ran out) and the checker's only complaint is the quality target
   (no eval_accuracy reached it); any other failure, a crash of the checker included, makes the set invalid, named
   by its file and the checker's first message;
2. every run logs an integer seed (its first ``seed`` record), and no two runs log the same one;
3. at most one run did not converge, and an olympic mean exists (3 converged runs, or 2 and one that did not);
4. exactly 5 runs (ResNet; another count is still scored, with no score below 3 runs);
5. all runs have one division, global batch and optimizer.

This is stricter than mlperf-logging's package checker, which accepts any one log that fails the compliance checker
(it cannot tell an aborted run from a broken log) and checks seeds in the closed division only.

The score is printed whenever it exists, valid or not. A closed-division set also goes through mlperf-logging's RCP
checker; its verdict is reported and does not change the exit status (a set that fails it can be submitted with
--rcp-bypass and is then reviewed).

Exit status: 0 a valid result; 1 an invalid one (any of the rules above); 2 bad input (flags, DIR, a garbled log).
With ``--runs`` also: a run's usage error stops the driver with 2; a run killed by a signal or failing otherwise stops
it with that status (exit 6, the epochs ran out, is an aborted run and the driver goes on); SIGINT/SIGTERM reach the
running child, and the driver exits 128 + the signal once it has ended.
"""
from __future__ import annotations

import codecs
import importlib.util
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import (EXIT_ABORTED, EXIT_USAGE, Children, Parser, UsageError, available_cores,  # noqa: E402
                    check_writable, int_list, path_arg, run_main, write_json)

SCHEMA = "rn50-mlperf-score/1"
TOKEN = ":::MLLOG"
RESULT_RE = re.compile(r"result_(\d+)\.txt")
REQUIRED_RUNS = 5  # ResNet in MLPerf Training (rules' results table; mlperf_logging.benchmark_meta)
MAX_NOT_CONVERGED = 1  # result summarizer: one run that did not converge may be the dropped slowest
CHECK_TIMEOUT_S = 300
TARGET_CHECK = "Failed checks for eval_accuracy :"  # the checker's message when no eval_accuracy reached the target
MESSAGE_SEP = "-" * 30  # the line between two of the checker's messages
MAX_SEED = 2 ** 31  # the toolkit's --seed takes 0 <= seed < 2^31


@dataclass
class Run:
    """What one result file says, and the compliance checker's verdict on it."""
    file: str
    minutes: float | None = None
    epochs: float | None = None
    status: str = "missing"  # run_stop's metadata.status; "missing" without run_stop (or without a status)
    best_accuracy: float | None = None
    division: str | None = None
    benchmark: str | None = None
    global_batch_size: int | None = None
    opt_name: str | None = None
    seed: int | None = None
    checker: str = "FAIL"
    checker_reason: str | None = None  # the checker's first message that makes the log non-compliant, else its first
    compliant: bool = False  # see judge()

    @property
    def converged(self) -> bool:
        return self.status == "success" and self.checker == "PASS" and self.minutes is not None


# --- reading the logs ------------------------------------------------------------------------------------------------

def package_dir() -> Path:
    spec = importlib.util.find_spec("mlperf_logging")
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"mlperf-logging is not installed for {sys.executable} (pip install -r requirements.txt)")
    return Path(list(spec.submodule_search_locations)[0])


def resnet_rulesets() -> list[str]:
    """The training rulesets of the installed mlperf-logging that check ResNet logs (0.7.0 up to 4.0.0)."""
    found = package_dir().glob("compliance_checker/training_*/closed_resnet.yaml")
    return sorted((p.parent.name.split("_", 1)[1] for p in found), key=lambda v: tuple(map(int, v.split("."))))


def result_files(folder: Path) -> list[Path]:
    """``folder``'s ``result_<i>.txt`` files, by index."""
    if not folder.is_dir():
        raise UsageError(f"{folder}: {'not a folder' if folder.exists() else 'no such folder'}; give the folder "
                         "of the result_<i>.txt files (results/<system>/resnet)")
    found = {}
    for path in folder.glob("result_*.txt"):
        m = RESULT_RE.fullmatch(path.name)
        if not m:
            raise UsageError(f"{path}: not named result_<integer>.txt; rename or move it (MLPerf's checkers read "
                             "every result_*.txt of the folder)")
        index = int(m.group(1))
        if index in found:
            raise UsageError(f"{path} and {found[index]}: two files for run {index}; keep one")
        found[index] = path
    if not found:
        raise UsageError(f"{folder}: no result_<i>.txt files (MLPerf logs) in it")
    return [found[i] for i in sorted(found)]


def mllog_records(path: Path) -> list[dict]:
    """The ``:::MLLOG`` records of a log, in file order; whatever precedes the token on a line is ignored."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as err:
        raise UsageError(f"{path}: cannot be read ({err.strerror or err})") from None
    records = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if TOKEN not in line:
            continue
        body = line.rpartition(TOKEN)[2].strip()  # the checkers keep what follows the last token too
        try:
            rec = json.loads(body)
        except ValueError as err:
            raise UsageError(f"{path}: line {lineno}: the {TOKEN} record is not valid JSON ({err.msg} at column "
                             f"{err.colno})") from None
        missing = [k for k in ("key", "time_ms", "value", "metadata") if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise UsageError(f"{path}: line {lineno}: the {TOKEN} record has no {', '.join(missing)}")
        if not isinstance(rec["key"], str) or not isinstance(rec["metadata"], (dict, type(None))):
            raise UsageError(f"{path}: line {lineno}: the {TOKEN} record's key or metadata has the wrong type")
        try:
            rec["time_ms"] = float(rec["time_ms"])
        except (TypeError, ValueError):
            rec["time_ms"] = math.nan
        if not math.isfinite(rec["time_ms"]):
            raise UsageError(f"{path}: line {lineno}: time_ms is not a number") from None
        rec["metadata"] = rec["metadata"] or {}
        records.append(rec)
    if not records:
        raise UsageError(f"{path}: no {TOKEN} lines; not an MLPerf log")
    return records


def read_run(path: Path) -> Run:
    """The facts of one log that scoring needs (the checker's verdict comes later)."""
    run = Run(file=path.name)
    start = stop = None
    last_eval_epoch = None
    accuracies = []
    first = {}
    for rec in mllog_records(path):
        key, value, meta = rec["key"], rec["value"], rec["metadata"]
        if key in ("submission_division", "submission_benchmark", "global_batch_size", "opt_name", "seed"):
            first.setdefault(key, value)
        if stop is not None:
            continue  # nothing after run_stop counts
        if key == "run_start":
            start = rec["time_ms"]  # as the result summarizer reads them: the run_start before the first run_stop
        elif key == "run_stop":
            stop = rec["time_ms"]
            run.status = str(meta.get("status") or "missing")
        elif key == "eval_accuracy":
            last_eval_epoch = meta.get("epoch_num")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                accuracies.append(float(value))
    if start is not None and stop is not None:
        run.minutes = (stop - start) / 60_000
    run.epochs = last_eval_epoch
    run.best_accuracy = max(accuracies) if accuracies else None
    run.division = _text(first.get("submission_division"))
    run.benchmark = _text(first.get("submission_benchmark"))
    run.opt_name = _text(first.get("opt_name"))
    run.global_batch_size = _integer(first.get("global_batch_size"))
    run.seed = _seed(first.get("seed"))
    return run


def _text(v):
    return str(v) if v is not None else None


def _seed(v):
    """A seed as MLPerf's seed checker reads it (int(value)): an integer, a whole float or a decimal string."""
    if isinstance(v, str) and re.fullmatch(r"\s*[-+]?\d+\s*", v):
        return int(v)
    return _integer(v)


def _integer(v):
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return None


# --- the checkers (subprocesses of this Python) ----------------------------------------------------------------------

def _run_checker(args: list[str], what: str) -> tuple[int | None, str]:
    """Run ``python -m <args>`` in a scratch folder (the checkers write their own log to the current folder):
    (exit status or None when it could not run, output)."""
    with tempfile.TemporaryDirectory(prefix="mlperf-check-") as tmp:
        cmd = [sys.executable, "-m", *args, "--log_output", str(Path(tmp) / "checker.log")]
        try:
            res = subprocess.run(cmd, cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 errors="replace", timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return None, f"the {what} did not finish in {CHECK_TIMEOUT_S} s"
        except OSError as err:
            return None, f"the {what} could not start ({err.strerror or err})"
    return res.returncode, res.stdout


def compliance(path: Path, ruleset: str) -> tuple[str, list[str]]:
    """mlperf-logging's compliance checker on one log: ("PASS", []) or ("FAIL", its messages, one line each, in the
    order it printed them; never empty).

    ``--quiet`` leaves out its warnings (a key repeated with the same value, and so on), which never fail a log,
    so every message it prints is a failure."""
    rc, out = _run_checker(["mlperf_logging.compliance_checker", "--usage", "training", "--ruleset", ruleset,
                            "--quiet", str(path.resolve())], "compliance checker")
    if rc == 0 and "SUCCESS" in out:
        return "PASS", []
    if rc is None:
        return "FAIL", [out]
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    if "Traceback (most recent call last)" in out:
        return "FAIL", [f"the compliance checker crashed (exit {rc}): {lines[-1]}"]
    return "FAIL", checker_messages(lines) or [f"the compliance checker failed (exit {rc})"
                                               + (f": {lines[-1]}" if lines else "")]


def checker_messages(lines: list[str]) -> list[str]:
    """The failures in the compliance checker's output ``lines`` (stripped, none empty), one line each. It prints
    them last, as one ``WARNING -`` record with a line of dashes between two messages; a message that ends with ':'
    gets its "failed test:" line ("CHECK for 'key' failed in line N:", N counting the log's MLLOG records from 0),
    or else its next line ("Failed executing CHECK code:")."""
    first = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith("INFO - ")), -1) + 1
    if first >= len(lines) or not lines[first].startswith("WARNING - "):
        return []
    block = [lines[first].split(" - ", 1)[1].strip()]
    for ln in lines[first + 1:]:
        if ln.startswith(("ERROR - ", "INFO - ", "** ")):
            break
        block.append(ln)
    messages, current = [], []
    for ln in block + [MESSAGE_SEP]:
        if ln != MESSAGE_SEP:
            current.append(ln)
            continue
        if current:
            head = current[0]
            if head.endswith(":") and len(current) > 1:
                head += " " + next((x for x in current[1:] if x.startswith("failed test:")), current[1])
            messages.append(head)
        current = []
    return messages


def judge(run: Run, verdict: str, messages: list[str]) -> None:
    """Record the checker's verdict on ``run``. The log is compliant when the checker passes it, or when its run
    stopped without success and every message is the quality target's (that run did not converge, which the olympic
    mean allows once); ``checker_reason`` is the first message that makes it non-compliant, else the first."""
    excused = [m for m in messages if run.status != "success" and m.startswith(TARGET_CHECK)]
    blocking = [m for m in messages if m not in excused]
    run.checker = verdict
    run.compliant = verdict == "PASS" or (bool(messages) and not blocking)
    run.checker_reason = (blocking or messages or [None])[0]


def check_all(files: list[Path], ruleset: str) -> list[tuple[str, list[str]]]:
    """The compliance checker on every file, as many at once as there are cores."""
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), available_cores()))) as pool:
        return list(pool.map(lambda f: compliance(f, ruleset), files))


# --- the score -------------------------------------------------------------------------------------------------------

@dataclass
class Score:
    minutes: float | None
    valid: bool
    reason: str | None
    counted: list[str]
    dropped: list[str]  # "file (why)"


def log_problems(runs: list[Run]) -> list[str]:
    """Why the logs themselves make the set invalid, in file order: every log the checker fails (other than for the
    quality target of a run that stopped without success), then every run without an integer seed or with the seed
    of an earlier run."""
    reasons = [f"{r.file} fails the compliance checker: {r.checker_reason}" for r in runs if not r.compliant]
    seen: dict[int, str] = {}
    for r in runs:
        if r.seed is None:
            reasons.append(f"{r.file} logs no integer seed (MLPerf wants one in every run)")
        elif r.seed in seen:
            reasons.append(f"{seen[r.seed]} and {r.file} log the same seed {r.seed} (MLPerf wants a different seed "
                           "in every run)")
        else:
            seen[r.seed] = r.file
    return reasons


def olympic(runs: list[Run]) -> Score:
    """The olympic mean as MLPerf's result summarizer computes it: the converged times sorted, the fastest dropped,
    the slowest dropped too unless a run that did not converge already took its place; with two or more such runs,
    no score. ``valid`` and ``reason`` apply every rule of a valid result (the module's list), in its order."""
    good = sorted((r for r in runs if r.converged), key=lambda r: r.minutes)
    bad = [r for r in runs if not r.converged]
    reasons, minutes, counted, dropped = log_problems(runs), None, [], [f"{r.file} (did not converge)" for r in bad]
    if len(bad) > MAX_NOT_CONVERGED:
        reasons.append(f"{len(bad)} runs did not converge ({', '.join(r.file for r in bad)}); MLPerf allows at most "
                       f"{MAX_NOT_CONVERGED}")
    else:
        end = len(good) - (1 - len(bad))  # a run that did not converge already stands for the slowest
        keep = good[1:end]
        if keep:
            minutes = sum(r.minutes for r in keep) / len(keep)
            counted = [r.file for r in keep]
            dropped = ([f"{good[0].file} (fastest)"] + [f"{r.file} (slowest)" for r in good[end:]]
                       + [f"{r.file} (did not converge: the dropped slowest)" for r in bad])
        else:
            reasons.append(f"no olympic mean of {len(good)} converged run{'s' * (len(good) != 1)}: it needs at "
                           f"least {3 - len(bad)}")
    if len(runs) != REQUIRED_RUNS:
        reasons.append(f"not a valid MLPerf result: {len(runs)} runs (ResNet needs exactly {REQUIRED_RUNS}"
                       + ("; the rules let you run more and submit the 5 consecutive runs closest to the median, "
                          "chosen objectively)" if len(runs) > REQUIRED_RUNS else ")"))
    for field, label in (("division", "division"), ("global_batch_size", "global batch"), ("opt_name", "optimizer")):
        values = sorted({str(getattr(r, field)) for r in runs if getattr(r, field) is not None})
        if len(values) > 1:
            reasons.append(f"the runs differ in {label} ({', '.join(values)}); one result is one configuration")
    return Score(minutes, not reasons, "; ".join(reasons) or None, counted, dropped)


# --- RCPs -------------------------------------------------------------------------------------------------------------

def rcp_check(folder: Path, runs: list[Run], ruleset: str) -> dict:
    """mlperf-logging's RCP checker on the folder, when it applies (a closed-division ResNet set of one global
    batch, a ruleset with ResNet RCPs); otherwise why not."""
    out = {"applicable": False, "verdict": None, "message": None, "reason": None, "note": None,
           "global_batch_size": None, "rcp_batch_sizes": None, "submission_mean_epochs": None,
           "rcp_mean_epochs": None, "min_epochs": None, "score_factor": None}
    divisions = {r.division for r in runs}
    batches = {r.global_batch_size for r in runs}
    rcp_file = package_dir() / "rcp_checker" / f"training_{ruleset}" / "rcps_resnet.json"
    if divisions != {"closed"}:
        out["reason"] = ("open division (RCPs bind the closed division only)" if divisions == {"open"} else
                         f"the runs' divisions are {sorted(map(str, divisions))}, not all closed")
    elif {r.benchmark for r in runs} != {"resnet"}:
        out["reason"] = "not every run says submission_benchmark resnet"
    elif None in batches or len(batches) > 1:
        out["reason"] = ("a run has no integer global_batch_size" if None in batches else
                         f"the runs differ in global batch ({', '.join(map(str, sorted(batches)))})")
    elif not rcp_file.is_file():
        out["reason"] = f"mlperf-logging has no ResNet RCPs for ruleset {ruleset} (they start at 1.0.0)"
    if out["reason"]:
        return out
    bs = batches.pop()
    try:
        sizes = sorted({int(rec["BS"]) for rec in json.loads(rcp_file.read_text()).values()})
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{rcp_file}: cannot be read as RCPs ({err}); reinstall mlperf-logging") from None
    out.update(applicable=True, global_batch_size=bs, rcp_batch_sizes=sizes)
    if bs < sizes[0]:
        out["note"] = (f"global batch {bs} is below the smallest RCP batch ({sizes[0]}): the checker holds the "
                       f"runs to the {sizes[0]} RCP, and they pass when they converge no faster than it allows")
    elif bs > sizes[-1]:
        out["note"] = (f"global batch {bs} is above the largest RCP batch ({sizes[-1]}): no RCP covers it; the "
                       "submitter has to provide one")
    rc, text = _run_checker(["mlperf_logging.rcp_checker", "--rcp_usage", "training", "--rcp_version", ruleset,
                             str(folder.resolve())], "RCP checker")
    final = [ln for ln in text.splitlines() if "RCP test PASSED" in ln or "RCP test FAILED" in ln]
    if rc == 0 and final and "PASSED" in final[-1]:
        out["verdict"] = "PASS"
    else:
        out["verdict"] = "FAIL"
    if final:
        out["message"] = re.sub(r"^\w+ - ", "", final[-1]).split(", RCP test")[0].strip()
    elif rc is None:
        out["message"] = text
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        out["message"] = f"the RCP checker failed (exit {rc})" + (f": {lines[-1]}" if lines else "")
    if out["message"].startswith("RCP Interpolation"):
        out["note"] = (f"the RCP of global batch {bs} is pruned (it converges slower than its neighbours' "
                       "envelope): the checker interpolates between them" if bs in sizes else
                       f"global batch {bs} lies between RCP batches: the checker interpolates")
    number = r"(?:np\.float64\()?([-+0-9.eE]+)"
    for key, pattern in (("submission_mean_epochs", r"Submission mean epochs: " + number),
                         ("rcp_mean_epochs", r"'RCP Mean': " + number), ("min_epochs", r"'Min Epochs': " + number),
                         ("score_factor", r"normalized by factor of [^=]*= " + number)):
        m = re.search(pattern, text)
        if m:
            try:
                out[key] = float(m.group(1))
            except ValueError:
                pass
    return out


# --- output ----------------------------------------------------------------------------------------------------------

def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_report(runs: list[Run], score: Score, rcp: dict, ruleset: str) -> None:
    width = max(12, *(len(r.file) for r in runs))
    print(f"{'run':<{width}}  {'minutes':>8}  {'epochs':>6}  {'status':<8}  {'checker':<7}  {'best top-1':>10}  seed")
    for r in runs:
        epochs = f"{r.epochs:g}" if isinstance(r.epochs, (int, float)) else _fmt(r.epochs, "")
        print(f"{r.file:<{width}}  {_fmt(r.minutes, '.3f'):>8}  {epochs:>6}  {r.status:<8}  {r.checker:<7}  "
              f"{_fmt(r.best_accuracy, '.5f'):>10}  {_fmt(r.seed, 'd')}")
    for r in runs:
        if r.checker == "FAIL":
            why = f" (the quality target only, in a run that stopped {r.status}: not converged)" if r.compliant else ""
            print(f"{r.file}: compliance checker FAIL: {r.checker_reason}{why}")
    if score.minutes is not None:
        line = f"score: {score.minutes:.3f} min, olympic mean of {', '.join(score.counted)}"
        if score.dropped:
            line += f" (dropped: {', '.join(score.dropped)})"
    else:
        line = "score: none"
    print(line)
    print(f"result: {'valid' if score.valid else 'INVALID: ' + score.reason}")
    divisions = sorted({str(r.division) for r in runs})
    batches = sorted({str(r.global_batch_size) for r in runs})
    opts = sorted({str(r.opt_name) for r in runs})
    print(f"division {', '.join(divisions)}, global batch {', '.join(batches)}, optimizer {', '.join(opts)}, "
          f"ruleset {ruleset}")
    if not rcp["applicable"]:
        print(f"RCP check: not applicable: {rcp['reason']}")
        return
    if rcp["note"]:
        print(f"RCP note: {rcp['note']}")
    numbers = []
    if rcp["submission_mean_epochs"] is not None:
        numbers.append(f"runs' olympic mean {rcp['submission_mean_epochs']:.2f} epochs")
    if rcp["rcp_mean_epochs"] is not None:
        numbers.append(f"RCP mean {rcp['rcp_mean_epochs']:.2f}")
    if rcp["min_epochs"] is not None:
        numbers.append(f"fastest allowed {rcp['min_epochs']:.2f}")
    print(f"RCP check: {rcp['verdict']}: {rcp['message']}" + (f" ({', '.join(numbers)})" if numbers else ""))
    if rcp["verdict"] == "PASS" and rcp["score_factor"] and rcp["score_factor"] > 1 and score.minutes is not None:
        print(f"RCP scaling: the runs converged faster than the RCP mean; the package checker writes "
              f"scaling.json with {rcp['score_factor']:.4f}, which the result summarizer applies: "
              f"{score.minutes * rcp['score_factor']:.3f} min")


def to_json(runs: list[Run], score: Score, rcp: dict, ruleset: str, folder: Path) -> dict:
    """The ``--json`` file. Fields:

    ``schema`` ``"rn50-mlperf-score/1"``; ``dir`` the folder scored; ``ruleset``;
    ``score_minutes`` the olympic mean (null when there is none); ``valid`` whether it is a valid MLPerf result;
    ``reason`` why not (null when valid); ``counted`` / ``dropped`` the files averaged and those left out (why);
    ``runs`` one object per file: ``file``, ``minutes`` (run_stop - run_start), ``epochs`` (epoch_num of the last
    eval_accuracy before run_stop), ``status`` (run_stop's: success / aborted / missing), ``converged``,
    ``checker`` (PASS / FAIL), ``checker_reason`` (the checker's first message that makes the log non-compliant, else
    its first), ``compliant`` (the checker passes it, or fails only the quality target of a run without success),
    ``best_accuracy``, ``division``, ``benchmark``, ``global_batch_size``, ``opt_name``, ``seed``;
    ``rcp`` the RCP check: ``applicable``, ``reason`` (why not), ``verdict`` (PASS / FAIL), ``message`` (the
    checker's), ``note``, ``global_batch_size``, ``rcp_batch_sizes``, ``submission_mean_epochs``,
    ``rcp_mean_epochs``, ``min_epochs``, ``score_factor`` (the RCP normalization of a faster-than-mean set)."""
    return {"schema": SCHEMA, "dir": str(folder), "ruleset": ruleset, "score_minutes": score.minutes,
            "valid": score.valid, "reason": score.reason, "counted": score.counted, "dropped": score.dropped,
            "runs": [{**asdict(r), "converged": r.converged} for r in runs], "rcp": rcp}


def score_dir(folder: Path, ruleset: str, json_path: Path | None) -> int:
    files = result_files(folder)
    runs = [read_run(f) for f in files]  # a garbled log is a usage error before any checker starts
    others = sorted({r.benchmark for r in runs if r.benchmark not in (None, "resnet")})
    if others:
        raise UsageError(f"{folder}: submission_benchmark {', '.join(others)}; this tool scores ResNet-50 sets")
    for run, (verdict, messages) in zip(runs, check_all(files, ruleset)):
        judge(run, verdict, messages)
    score = olympic(runs)
    rcp = rcp_check(folder, runs, ruleset)
    print_report(runs, score, rcp, ruleset)
    if json_path is not None:
        write_json(json_path, to_json(runs, score, rcp, ruleset, folder))
    return 0 if score.valid else 1


# --- the driver ------------------------------------------------------------------------------------------------------

def _forbidden_runner_args(runner_args: Sequence[str]) -> list[str]:
    """The runner arguments that would clash with the driver's own --seed and --mlperf-log, with their values."""
    found = []
    for i, a in enumerate(runner_args):
        if a.split("=", 1)[0] in ("--seed", "--mlperf-log"):
            found.append(a if "=" in a or i + 1 == len(runner_args) else f"{a} {runner_args[i + 1]}")
    return found


def draw_seeds(n: int) -> list[int]:
    seeds: list[int] = []
    while len(seeds) < n:
        s = int.from_bytes(os.urandom(4), "little") % (MAX_SEED - 1) + 1
        if s not in seeds:
            seeds.append(s)
    return seeds


def _run_one(cmd: list[str], log_path: Path | None, kids: Children) -> int:
    """Run one toolkit process in a session of its own (a Ctrl-C reaches it once, through the driver), its output
    streamed to the console and, with ``log_path``, to that file too."""
    sys.stdout.flush()
    try:
        if log_path is None:
            child = kids.popen(cmd)
        else:
            child = kids.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as err:
        raise UsageError(f"{cmd[1]}: cannot start ({err.strerror or err})") from None
    if log_path is not None:
        console = getattr(sys.stdout, "buffer", None)  # None where stdout is a text stream (a StringIO in tests)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        with open(log_path, "wb") as log:
            while chunk := _read(child.stdout.fileno()):
                log.write(chunk)
                log.flush()
                if console is not None:
                    console.write(chunk)
                else:
                    sys.stdout.write(decoder.decode(chunk))
                sys.stdout.flush()
        child.stdout.close()
    rc = child.wait()
    return rc if rc >= 0 else 128 - rc


def _read(fd: int) -> bytes:
    while True:
        try:
            return os.read(fd, 65536)
        except InterruptedError:  # pragma: no cover (PEP 475 retries; a handler that raises would land here)
            continue


def drive(folder: Path, runs: int, seeds: Sequence[int], runner: Path, log_dir: Path | None,
          runner_args: Sequence[str]) -> int | None:
    """Run the toolkit ``runs`` times into ``folder``; None when every run ended with 0 or 6, else the driver's
    exit status."""
    with Children("mlperf_score.py") as fwd:
        for i, seed in enumerate(seeds):
            if fwd.signum is not None:  # a signal between two runs
                print(f"mlperf_score.py: {signal.Signals(fwd.signum).name}: stopped before run {i}; the set in "
                      f"{folder} is incomplete and was not scored", file=sys.stderr)
                return 128 + fwd.signum
            result = folder / f"result_{i}.txt"
            cmd = [sys.executable, str(runner), *runner_args, "--mlperf", "--seed", str(seed), "--mlperf-log",
                   str(result)]
            print(f"mlperf_score.py: run {i} ({i + 1} of {runs}), seed {seed} -> {result}", file=sys.stderr,
                  flush=True)
            rc = _run_one(cmd, log_dir / f"result_{i}.log" if log_dir else None, fwd)
            if fwd.signum is not None:
                name = signal.Signals(fwd.signum).name
                print(f"mlperf_score.py: {name}: stopped during run {i} (exit {rc}); the set in {folder} is "
                      "incomplete and was not scored", file=sys.stderr)
                return 128 + fwd.signum
            if rc == EXIT_USAGE:
                print(f"mlperf_score.py: error: run {i}: the runner refused its arguments (its message is above)",
                      file=sys.stderr)
                return EXIT_USAGE
            if rc > 128:
                name = signal.Signals(rc - 128).name if rc - 128 in signal.valid_signals() else f"signal {rc - 128}"
                print(f"mlperf_score.py: run {i} was stopped by {name} (exit {rc}); not scored", file=sys.stderr)
                return rc
            if rc not in (0, EXIT_ABORTED):
                print(f"mlperf_score.py: run {i} failed with exit {rc} (its output is above"
                      + (f" and in {log_dir / f'result_{i}.log'}" if log_dir else "") + "); not scored",
                      file=sys.stderr)
                return rc
            if not result.is_file():
                print(f"mlperf_score.py: run {i} exited {rc} but wrote no {result}; not scored", file=sys.stderr)
                return 1
            if rc == EXIT_ABORTED:
                print(f"mlperf_score.py: run {i} ran out of epochs before the target (aborted); going on",
                      file=sys.stderr)
    return None


def prepare_driver(args, runner_args: list[str]) -> list[int]:
    """Check the driver's flags and DIR before any run; returns the seeds. Stale result files are refused, or removed
    with --overwrite."""
    if args.runs is None:
        extra = [f for f, v in (("--seeds", args.seeds), ("--log-dir", args.log_dir),
                                ("--overwrite", args.overwrite), ("--runner", args.runner)) if v]
        if extra or runner_args:
            raise UsageError(f"{', '.join(extra) or 'arguments after --'}: only with --runs N (the driver)")
        return []
    if args.runs < 1:
        raise UsageError(f"--runs {args.runs}: must be at least 1 (an MLPerf ResNet result is {REQUIRED_RUNS} runs)")
    bad = _forbidden_runner_args(runner_args)
    if bad:
        raise UsageError(f"{' '.join(bad)}: the driver sets --seed and --mlperf-log for every run; remove it from the "
                         "runner's arguments (use --seeds)")
    if args.seeds:
        seeds = list(args.seeds)
        if len(seeds) != args.runs:
            raise UsageError(f"--seeds {','.join(map(str, seeds))}: {len(seeds)} seeds for --runs {args.runs}; give "
                             "one per run")
        if len(set(seeds)) != len(seeds):
            raise UsageError(f"--seeds {','.join(map(str, seeds))}: a seed repeats; MLPerf wants a different seed "
                             "in every run")
        out = [s for s in seeds if not 0 <= s < MAX_SEED]
        if out:
            raise UsageError(f"--seeds: {out[0]} is out of range; seeds are 0 <= seed < 2^31")
    else:
        seeds = draw_seeds(args.runs)
    runner = args.runner or ROOT / "runner"
    if not runner.is_file():
        raise UsageError(f"--runner {runner}: no such file")
    if args.dir.exists() and not args.dir.is_dir():
        raise UsageError(f"{args.dir}: not a folder")
    stale = sorted(args.dir.glob("result_*.txt")) if args.dir.is_dir() else []
    if stale and not args.overwrite:
        raise UsageError(f"{args.dir}: holds {len(stale)} result file(s) ({stale[0].name}, ...) from earlier runs; "
                         "move them away, or pass --overwrite to delete them (a stale run must not be scored "
                         "with new ones)")
    check_writable(args.dir / "result_0.txt", "DIR")
    if args.log_dir:
        check_writable(args.log_dir / "result_0.log", "--log-dir")
    for path in stale:
        try:
            path.unlink()
        except OSError as err:
            raise UsageError(f"{path}: cannot be removed ({err.strerror or err})") from None
    return seeds


# --- command line ----------------------------------------------------------------------------------------------------

def build_parser() -> Parser:
    p = Parser(prog="mlperf_score.py",
               usage="%(prog)s [-h] DIR [--json FILE] [--ruleset R] [--runs N [--seeds S1,S2,...] [--runner PATH] "
                     "[--log-dir D] [--overwrite] -- RUNNER_ARGS...]",
               description="Score an MLPerf Training ResNet-50 result set (olympic mean, "
                                                  "compliance and RCP checks), or run the toolkit N times first.")
    p.add_argument("dir", type=path_arg, metavar="DIR",
                   help="folder of the result_<i>.txt logs (MLPerf's results/<system>/resnet)")
    p.add_argument("--json", type=path_arg, metavar="FILE", help="also write the score as JSON, atomically")
    p.add_argument("--ruleset", choices=resnet_rulesets(), default="4.0.0",
                   help="mlperf-logging ruleset of the checks (4.0.0, ResNet's last round, by default)")
    g = p.add_argument_group("driver", "run the toolkit N times into DIR, then score it; arguments after -- go to "
                                       "the runner (the driver adds --mlperf --seed S --mlperf-log DIR/result_<i>.txt)")
    g.add_argument("--runs", type=int, metavar="N", help="number of runs, one after the other")
    g.add_argument("--seeds", type=int_list, metavar="S1,S2,...",
                   help="one distinct seed per run (default: drawn from os.urandom, 1 <= seed < 2^31)")
    g.add_argument("--runner", type=path_arg, metavar="PATH", help=f"the launcher (default: {ROOT / 'runner'})")
    g.add_argument("--log-dir", type=path_arg, metavar="D",
                   help="also write each run's output (stdout and stderr) to D/result_<i>.log")
    g.add_argument("--overwrite", action="store_true",
                   help="delete DIR's result_*.txt before the runs (without it, existing ones are refused)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    runner_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, runner_args = argv[:cut], argv[cut + 1:]
    args = build_parser().parse_args(argv)
    if args.json is not None:
        check_writable(args.json, "--json")
    seeds = prepare_driver(args, runner_args)
    if seeds:
        args.dir.mkdir(parents=True, exist_ok=True)
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
        status = drive(args.dir, args.runs, seeds, args.runner or ROOT / "runner", args.log_dir, runner_args)
        if status is not None:
            return status
    return score_dir(args.dir, args.ruleset, args.json)


if __name__ == "__main__":
    sys.exit(run_main(main))

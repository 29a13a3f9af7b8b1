"""LoadGen's text logs read back: ``mlperf_log_summary.txt`` as a dict, the error and warning messages of
``mlperf_log_detail.txt``, and top-1 from ``mlperf_log_accuracy.json``. Plain text and JSON in, Python values out:
neither LoadGen nor MXNet is imported, so the logs of any run can be read anywhere.

``parse_summary`` keeps what ``loadgen.py``'s ``summary.json`` reports (its schema is documented there): the
scenario, mode and result ("Result is"), each "... satisfied" line as a boolean with the unsatisfied ones as
``invalid_reasons``, the bullet points under "Recommendations:" and "Early Stopping Result:" (a bullet's wrapped
lines joined), the early-stopping latency estimates, the latencies in nanoseconds (``min``, ``max``, ``mean``,
``p50`` ... ``p99.9``), the "Test Parameters Used" section with units moved into the keys (``min_duration_ms``), the
warning and error counts, and the scenario's metric with the samples and queries per second.

The answer of each sample is its predicted class as one ``RESPONSE_DTYPE`` value, what MLPerf's reference writes
and its ``tools/accuracy-imagenet.py`` reads by default; ``accuracy`` counts as that tool does (the first answer of
each sample).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

RESPONSE_DTYPE = np.float32  # what accuracy-imagenet.py reads by default (--dtype float32), as the reference writes
LOADGEN_LOGS = ("mlperf_log_summary.txt", "mlperf_log_detail.txt", "mlperf_log_accuracy.json",
                "mlperf_log_trace.json")

_NUM = re.compile(r"^-?\d+(\.\d+)?([eE][-+]?\d+)?$")
_LATENCY = re.compile(r"^(Min|Max|Mean|(\d+\.\d+) percentile) latency \(ns\)$")
_COUNTS = re.compile(r"^(No|\d+) (warnings?|ERRORS?) encountered", re.I)


def _number(text: str):
    if not _NUM.match(text):
        return text
    return int(text) if re.match(r"^-?\d+$", text) else float(text)


def parse_summary(text: str) -> dict:
    """LoadGen's ``mlperf_log_summary.txt`` as a dict: scenario, mode, result and why, metric, rates, latencies
    (ns), the test parameters used, the warning and error counts."""
    out = {"scenario": None, "mode": None, "result": None, "constraints": {}, "invalid_reasons": [],
           "recommendations": [], "early_stopping": [], "latency_ns": {}, "settings": {},
           "loadgen": {"warnings": 0, "errors": 0}}
    values = _read_lines(text.splitlines(), out)
    out["scenario"], out["mode"], out["result"] = values.get("Scenario"), values.get("Mode"), values.get("Result is")
    out["invalid_reasons"] = [f"{k}: NO" for k, ok in out["constraints"].items() if not ok]
    for key, value in values.items():
        m = _LATENCY.match(key)
        if m:
            name = m[1].lower() if m[2] is None else "p" + f"{float(m[2]):g}"
            out["latency_ns"][name] = _number(value)
    out["early_stopping_ns"] = {m[1]: int(m[2]) for m in (re.search(r"Early stopping (\S+) percentile estimate: (\d+)",
                                                                   b) for b in out["early_stopping"]) if m}
    _metrics(out, values)
    return out


def _read_lines(lines: list[str], out: dict) -> dict:
    """Fill ``out``'s counts, bullet lists, constraints and settings from the summary's ``lines``; the other
    ``key : value`` lines, the first of each key."""
    values, section, bullets = {}, "", None
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line.startswith("====="):  # a section's title stands between two such rules
            bullets = None
            if i + 2 < len(lines) and lines[i + 2].startswith("====="):
                section = lines[i + 1].strip()
            continue
        m = _COUNTS.match(line)
        if m:
            out["loadgen"]["errors" if m[2].lower().startswith("error") else "warnings"] = \
                0 if m[1] == "No" else int(m[1])
            continue
        if line in ("Recommendations:", "Early Stopping Result:"):
            bullets = out["recommendations" if line.startswith("Rec") else "early_stopping"]
            continue
        if bullets is not None:
            if line.startswith("* "):
                bullets.append(line[2:])
                continue
            if line and raw.startswith(" ") and bullets:
                bullets[-1] += " " + line
                continue
            bullets = None
        if ":" not in line:
            continue
        key, value = (t.strip() for t in line.split(":", 1))
        if section == "Test Parameters Used":
            out["settings"][key.replace(" (ns)", "_ns").replace(" (ms)", "_ms").replace(" ", "_")] = _number(value)
        elif key.endswith("satisfied"):
            out["constraints"][key] = value.lower() == "yes"
        else:
            values.setdefault(key, value)
    return values


def _metrics(out: dict, values: dict) -> None:
    scenario = out["scenario"]
    num = {k: _number(v) for k, v in values.items()}
    target = next((k for k in num if re.match(r"^\d+(\.\d+)?th percentile latency \(ns\)$", k)), None)
    sps = qps = None
    metric = None
    if scenario == "SingleStream":
        qps = sps = num.get("QPS w/ loadgen overhead")
        if target:
            metric = {"name": target.replace(" (ns)", ""), "value": num[target], "unit": "ns"}
    elif scenario == "MultiStream":
        mean = out["latency_ns"].get("mean")
        per_query = out["settings"].get("samples_per_query")
        if isinstance(mean, (int, float)) and mean > 0:
            qps = 1e9 / mean
            sps = qps * per_query if isinstance(per_query, int) else None
        if target:
            metric = {"name": target.replace(" (ns)", ""), "value": num[target], "unit": "ns"}
    elif scenario == "Server":
        sps = qps = num.get("Completed samples per second")
        out["scheduled_samples_per_second"] = num.get("Scheduled samples per second")
        if sps is not None:
            metric = {"name": "Completed samples per second", "value": sps, "unit": "samples/s"}
    elif scenario == "Offline":
        sps = num.get("Samples per second")
        if sps is not None:
            metric = {"name": "Samples per second", "value": sps, "unit": "samples/s"}
    out["metric"], out["samples_per_second"], out["queries_per_second"] = metric, sps, qps


def detail_messages(path: Path) -> dict:
    """The error and warning messages of LoadGen's detail log (``is_error``/``is_warning`` lines)."""
    errors, warnings = [], []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"error_messages": [], "warning_messages": []}
    for line in lines:
        if not line.startswith(":::MLLOG"):
            continue
        try:
            rec = json.loads(line[len(":::MLLOG"):])
        except ValueError:
            continue
        meta = rec.get("metadata", {})
        text = f"{rec.get('key')}: {rec.get('value')}"
        if meta.get("is_error"):
            errors.append(text)
        elif meta.get("is_warning"):
            warnings.append(text)
    return {"error_messages": errors, "warning_messages": warnings}


def accuracy(path: Path, labels: np.ndarray) -> dict:
    """Top-1 from ``mlperf_log_accuracy.json`` as MLPerf's ``accuracy-imagenet.py`` computes it (first answer of
    each qsl_idx, decoded with ``RESPONSE_DTYPE``), against the records' labels."""
    entries = json.loads(path.read_text())
    seen, good = set(), 0
    for e in entries:
        idx = e["qsl_idx"]
        if idx in seen:
            continue
        seen.add(idx)
        data = np.frombuffer(bytes.fromhex(e["data"]), RESPONSE_DTYPE)
        if len(data) and int(data[0]) == labels[idx]:
            good += 1
    total = len(seen)
    return {"top1": 100.0 * good / total if total else None, "good": good, "total": total,
            "missing": len(labels) - total, "dtype": np.dtype(RESPONSE_DTYPE).name}

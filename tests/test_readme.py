"""The manual cannot drift: each command of the README and of docs/ is run here, each --flag they and tests/README.md
name exists in a parser, each report field is documented, and each of their links reaches a file and a heading."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from conftest import PY, ROOT, run

README = (ROOT / "README.md").read_text()
DOCS = {p.name: p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))}
TESTS_README = (ROOT / "tests" / "README.md").read_text()
PAGES = {ROOT / "README.md": README, **{ROOT / "docs" / name: text for name, text in DOCS.items()},
         ROOT / "tests" / "README.md": TESTS_README}
MANUAL = "\n".join(PAGES.values())  # the README, docs/ and tests/README.md: all are checked
# In this order: the README's commands first (the docs' build on its training run), then docs/ by file name.
COMMANDS = [line.strip() for text in PAGES.values() for block in re.findall(r"```bash\n(.*?)```", text, re.S)
            for line in block.splitlines() if line.strip() and not line.startswith("#")]
README_MAX_LINES = 550  # a manual: commands, flags, guarantees; measurements and investigations go to docs/
# Flags of other programs the README mentions by name (im2rec.py's, NVIDIA's --test-io, docker's, the MLPerf
# compliance checker's --usage, horovodrun's --gloo).
EXTERNAL_FLAGS = {"--list", "--recursive", "--pass-through", "--test-io", "--rm", "--ipc", "--build-arg", "--usage",
                  "--gloo"}


def runner_parser():
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.SourceFileLoader("runner_module", str(ROOT / "runner"))
    spec = importlib.util.spec_from_loader("runner_module", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod.build_parser()


def all_parser_flags() -> set[str]:
    import data
    import train
    import benchmark
    import loadgen
    from tools import (bench_data, bench_dist, bench_infer, bench_loadgen, bench_memory, bench_optim,
                       bench_runtimes, bench_train, check_rec, export_onnx, make_demo_data, mlperf_score, pick_dtype,
                       plot_report, prepare_dataset, quantize, scaling_model)

    flags = set()
    for parser in (data.build_parser(), prepare_dataset.build_parser(), make_demo_data.build_parser(),
                   bench_data.build_parser(), bench_train.build_parser(), plot_report.build_parser(),
                   benchmark.build_parser(), bench_infer.build_parser(), check_rec.build_parser(),
                   bench_memory.build_parser(), train.build_parser(), runner_parser(), mlperf_score.build_parser(),
                   bench_optim.build_parser(), scaling_model.build_parser(), bench_dist.build_parser(),
                   loadgen.build_parser(), export_onnx.build_parser(), bench_loadgen.build_parser(),
                   bench_runtimes.build_parser(), quantize.build_parser(), pick_dtype.build_parser()):
        for action in parser._actions:
            flags.update(s for s in action.option_strings if s.startswith("--"))
    return flags


def test_readme_flags_exist():
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9](?![\w*-])", MANUAL))
    assert named - all_parser_flags() - EXTERNAL_FLAGS == set()


def test_docs_are_linked_from_the_readme():
    for name in DOCS:
        assert f"docs/{name}" in README, name
    assert "tests/README.md" in README


def test_readme_is_a_manual():
    assert len(README.splitlines()) <= README_MAX_LINES


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_links_reach_a_file_and_a_heading():
    bad = []
    for page, text in PAGES.items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                bad.append(f"{page.name}: {target} (no such file)")
            elif anchor and anchor not in anchors(dest.read_text()):
                bad.append(f"{page.name}: {target} (no such heading)")
    assert bad == []


def test_readme_documents_every_report_field():
    import report

    keys = [f"train.{k}" for k in report.TRAIN_KEYS] + [f"val.{k}" for k in report.VAL_KEYS]
    keys += ["model", "ngpus", "total_duration", "cmd", "metrics", "schema", "status", "device", "dtype",
             "global_batch_size", "config", "versions", "epochs", "checkpoints"]
    missing = [k for k in keys if f"`{k}`" not in README]
    assert missing == []
    src = (ROOT / "report.py").read_text()
    assert [k for k in keys if f"``{k}``" not in src and f"``{k.split('.')[0]}." not in src] == []


def test_readme_opens_with_the_two_setup_commands():
    assert COMMANDS[:2] == ["make demo", "make test"]
    assert "make test" in (ROOT / ".ci" / "run").read_text()  # `make test` itself is what CI runs


def _prepare(cmd, ctx):
    tree, _ = ctx["mixed_tree"]
    out = ctx["tmp"] / "imagenet"
    cmd = (cmd.replace("/data/imagenet/raw/train", str(tree / "train"))
              .replace("/data/imagenet/raw/val", str(tree / "val"))
              .replace("/data/imagenet/train-val-recordio-passthrough", str(out)))
    run(shlex.split(cmd.replace("python", PY, 1)), check=True)
    assert {p.name for p in out.iterdir()} >= {"train.rec", "train.idx", "val.rec", "val.idx", "classes.txt"}


def _make_demo_data(cmd, ctx):
    out = ctx["tmp"] / "demo"
    run(shlex.split(cmd.replace("python", PY, 1).replace("data/demo", str(out))), check=True)
    assert (out / "val.rec").is_file() and (out / "classes.txt").is_file()


def _data_py(cmd, ctx):
    res = run(shlex.split(cmd.replace("python", PY, 1).replace("data/demo", str(ctx["demo_root"]))) + ["-i", "3"],
              check=True)
    assert "img/s" in res.stdout


def _make_demo(cmd, ctx):
    out, runs = ctx["tmp"] / "made_demo", ctx["tmp"] / "runs"
    res = run(shlex.split(cmd) + [f"DEMO={out}", f"RUNS={runs}", "DEMO_ARGS=-e 1 --benchmark-iters 2"], check=True)
    assert (out / "train.rec").is_file() and (out / "val.idx").is_file()
    assert (runs / "model-0001.params").is_file() and (runs / "curves.png").stat().st_size > 10000
    for line in ("val top-1:", f"report: {runs}/report.json", f"checkpoints: {runs}/model-symbol.json",
                 f"curves: {runs}/curves.png"):
        assert line in res.stdout


def _make_bench_data(cmd, ctx):
    out = ctx["tmp"] / "bench.json"
    res = run(shlex.split(cmd) + [f"BENCH_DATA_ARGS=--images 64 --iters 2 --repeats 1 -b 16 -o {out}"],
              check=True)
    assert "| dali-cpu |" in res.stdout and "| im2rec.py |" in res.stdout
    assert set(json.loads(out.read_text())["pipelines_img_per_s"]) >= {"dali-cpu", "mxnet"}


def _make_bench(cmd, ctx):
    """`make bench` is the six benchmarks in a row; each runs for real under its own README command, so here
    make's dry run shows the six tools called with the arguments given."""
    res = run(shlex.split(cmd) + ["-n", "BENCH_TRAIN_ARGS=--repeats 1", "BENCH_INFER_ARGS=--rounds 1",
                                  "BENCH_GLUON_ARGS=-b 1", "BENCH_DATA_ARGS=--images 8", "BENCH_OPTIM_ARGS=--rounds 1",
                                  "BENCH_LOADGEN_ARGS=--rounds 1", f"DEMO={ctx['demo_root']}"], check=True)
    calls = [ln for ln in res.stdout.splitlines() if "tools/bench_" in ln]
    assert [c.split("tools/")[1].split()[0] for c in calls] == ["bench_train.py", "bench_runtimes.py",
                                                                "bench_infer.py", "bench_data.py", "bench_optim.py",
                                                                "bench_loadgen.py"], res.stdout
    assert calls[1].endswith("--rounds 1") and calls[2].endswith("bench_infer.py -b 1"), calls


def _make_bench_infer(cmd, ctx):
    """The table on the README's training run: two rows (MXNet and OpenVINO INT8) at 32 px, one short round."""
    out = ctx["tmp"] / "runtimes.json"
    args = (f"--load-epoch 3 --image-size 32 --rows mxnet:int8,openvino:int8 --rounds 1 --seconds 0.5 --time 0.5 "
            f"--calib-images 8 -o {out}")
    res = run(shlex.split(cmd) + [f"BENCH_INFER_MODEL={_quick_runs(['runs/quick/model'])[0]}",
                                  f"DEMO={ctx['demo_root']}", f"BENCH_INFER_ARGS={args}"], check=True, timeout=900)
    assert "| mxnet | int8 |" in res.stdout and "| openvino | int8 |" in res.stdout and "fastest: " in res.stdout
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {"mxnet:int8", "openvino:int8"}
    for row in rows.values():  # LoadGen's AccuracyOnly top-1 is what scoring gave on the same images
        assert row["top1_loadgen"] == pytest.approx(row["top1_scoring"], abs=1e-3), row


def _make_bench_gluon(cmd, ctx):
    out = ctx["tmp"] / "infer.json"
    res = run(shlex.split(cmd) + [f"BENCH_GLUON_ARGS=--repeats 1 -i 3 --image-size 32 -b 2 -o {out}"], check=True)
    assert "| 2 | runner, MXNET_SUBGRAPH_BACKEND=NONE |" in res.stdout
    assert "| 2 | Gluon, the same with the runner's malloc settings |" in res.stdout
    assert set(json.loads(out.read_text())["median"]) == {"2"}


def _pick_dtype(cmd, ctx):
    """Measured once: the second call answers from the cache (a CPU without bfloat16 answers float32 at once)."""
    import common

    cache = ctx["tmp"] / "dtype.json"
    argv = shlex.split(cmd.replace("python", PY, 1).replace("runs/mlperf-demo/dtype.json", str(cache)))
    first = run(argv + ["--iters", "3"], check=True, timeout=600)
    second = run(argv, check=True)
    assert first.stdout == second.stdout and first.stdout.strip() in ("float32", "bfloat16")
    if common.cpu_bf16_flags():
        entry = next(iter(json.loads(cache.read_text()).values()))
        ips = entry["img_per_s"]
        assert entry["dtype"] == first.stdout.strip() == max(ips, key=ips.get)
        assert "measured now" in first.stderr and "measured before" in second.stderr
    else:
        assert "neither AVX512_BF16 nor AMX-BF16" in first.stderr and not cache.exists()


def _quantize(cmd, ctx):
    """The README's and docs' quantize commands on the README's training run. Its model (a few iterations) may lose
    more than 1% of its (low) top-1 in INT8: then the refusal is checked (one line, exit 1, nothing written) and the
    command is run again with --accept-accuracy-loss, so that the commands after it have their model."""
    argv = _quick_runs(shlex.split(cmd.replace("python", PY, 1).replace("data/demo", str(ctx["demo_root"]))))
    runs = Path(RUNS["dir"])
    before = sorted(p.name for p in runs.iterdir())
    res = run(argv, timeout=600)
    if res.returncode == 1:
        assert res.stderr.strip().splitlines()[-1].startswith("quantize.py: error: INT8 top-1 "), res.stderr
        assert sorted(p.name for p in runs.iterdir()) == before
        res = run(argv + ["--accept-accuracy-loss"], timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("wrote ") and "INT8 top-1" in res.stdout
    backend = argv[argv.index("--backend") + 1] if "--backend" in argv else "mxnet"
    made = {"mxnet": "model-int8-0003.json", "onnxruntime": "model-0003-int8.onnx.json",
            "openvino": "model-0003-int8.xml.json"}[backend]
    assert json.loads((runs / made).read_text())["precision"] == "int8"


def _make_bench_train(cmd, ctx):
    out = ctx["tmp"] / "train.json"
    res = run(shlex.split(cmd) + [f"BENCH_TRAIN_ARGS=--repeats 1 -i 2 --image-size 32 -b 4 -o {out}"], check=True)
    assert "| runner -n 2 (2 CPU devices) |" in res.stdout


def _make_bench_optim(cmd, ctx):
    out = ctx["tmp"] / "optim.json"
    res = run(shlex.split(cmd) + [f"BENCH_OPTIM_ARGS=--image-size 32 -b 4 --update-iters 2 --step-iters 1 --rounds 1 "
                                  f"-o {out}"], check=True, timeout=900)
    assert "| sgd | " in res.stdout and "| lars host | " in res.stdout and out.is_file()


def _make_bench_loadgen(cmd, ctx):
    """The whole benchmark at 32 px with one round and one Server run of a second each."""
    out = ctx["tmp"] / "loadgen.json"
    res = run(shlex.split(cmd) + [f"BENCH_LOADGEN_ARGS=--image-size 32 --images 8 -b 4 --time 0.5 --rounds 1 "
                                  f"--server-steps 1 -o {out}"], check=True, timeout=900)
    r = json.loads(out.read_text())
    assert "Offline / --only-inference: " in res.stdout and "| SingleStream (p90 latency) |" in res.stdout
    assert r["overhead"]["ratio_of_medians"] > 0 and set(r["scenarios"]) == {"mxnet", "onnxruntime"}
    assert len(r["scenarios"]["mxnet"]["Server"]["tried"]) == 1


MLPERF = {}


def _make_mlperf_demo(cmd, ctx):
    """The whole procedure (5 runs, the checker, the score) with runs cut to one short epoch and a target any model
    reaches (later flags win); the recipe's convergence is what `make mlperf-demo` itself shows."""
    out = ctx["tmp_factory"].mktemp("mlperf_demo")
    res = run(shlex.split(cmd) + [f"DEMO={ctx['demo_root']}", f"MLPERF_OUT={out}",
                                  "MLPERF_ARGS=--num-layers 18 -e 1 --num-examples 64 --target-accuracy 0.01"],
              check=True, timeout=900)
    results = out / "results" / "1xCPU" / "resnet"
    assert sorted(p.name for p in results.iterdir()) == [f"result_{i}.txt" for i in range(5)]
    rows = [ln.split() for ln in res.stdout.splitlines() if re.match(r"result_\d\.txt ", ln)]
    assert [(r[3], r[4]) for r in rows] == [("success", "PASS")] * 5 and "result: valid" in res.stdout, res.stdout
    assert json.loads((out / "score.json").read_text())["valid"] is True
    MLPERF["results"] = results


def _mlperf_score(cmd, ctx):
    results = MLPERF.get("results")
    assert results is not None, "the README's make mlperf-demo comes before the scoring command"
    out = results.parents[2]
    res = run(shlex.split(cmd.replace("python", PY, 1).replace("runs/mlperf-demo", str(out))), check=True)
    score = json.loads((out / "score.json").read_text())
    assert len(score["runs"]) == 5 and score["score_minutes"] > 0 and "result: valid" in res.stdout


def _bench_dist(cmd, ctx):
    out = ctx["tmp"] / "dist.json"
    res = run(shlex.split(cmd.replace("python", PY, 1).replace("bench-out/dist.json", str(out))) +
              ["--steps", "2", "--warmup", "0"], check=True, timeout=300)
    r = json.loads(out.read_text())
    assert r["tensors"] == 161 and r["values"] == 25_557_032 and len(r["exchange_ms"]) == 2
    assert "102.2 MB pushed and 102.2 MB pulled" in res.stdout


def _scaling_model(cmd, ctx):
    res = run(shlex.split(cmd.replace("python", PY, 1)), check=True)
    assert res.stdout.count("Gb/s |") == 4, res.stdout  # docs/multinode.md's table is this output
    for row in res.stdout.splitlines():
        if row.startswith("| A100") or row.startswith("| H100"):
            assert row in DOCS["multinode.md"], row


def _benchmark(cmd, ctx):
    """The README's sweep, at 32 px and 2 iterations per epoch so that it stays quick (later flags win)."""
    out = ctx["tmp"] / "out.json"
    argv = shlex.split(cmd.replace("python", PY, 1).replace("out.json", str(out)))
    res = run(argv + ["-i", "2", "--image-shape", "3,32,32", "--num-classes", "10"], check=True, timeout=900)
    s = json.loads(out.read_text())
    assert s["errors"] == {"default": {}} and out.with_suffix(".png").is_file() and "weak scaling" in res.stdout


def _example(cmd, ctx):
    """examples/ scripts: with --dry-run as written; otherwise for real, with tiny settings appended."""
    argv = shlex.split(cmd.replace("data/demo", str(ctx["demo_root"])))
    script, tmp = ROOT / argv[0], ctx["tmp"]
    tiny = ["--image-shape", "3,32,32", "--num-classes", "10"]
    if "LOADGEN" in script.name:
        _loadgen_example(script, argv, ctx)
    elif "--dry-run" in argv:
        res = run([script, *argv[1:]], check=True)
        assert "train.py" in res.stdout or "runner" in res.stdout
    elif "SCORE" in script.name:
        runs = RUNS.get("dir")
        assert runs is not None, "the README's training commands come before the scoring example"
        res = run([script, *[a.replace("runs/quick", str(runs)) for a in argv[1:]]], check=True, timeout=900)
        assert "Score[0]: top-1" in res.stderr
    elif "BENCHMARK" in script.name:
        res = run([script, *argv[1:], "-b", "2", "-i", "2", "-o", tmp / "b.json", *tiny], check=True, timeout=900)
        assert json.loads((tmp / "b.json").read_text())["errors"] == {"float32": {}}
    else:
        res = run([script, *argv[1:], "-e", "1", "--benchmark-iters", "2", "--no-val", "--model-prefix", tmp / "m"],
                  check=True, timeout=900)
        assert (tmp / "m-0001.params").is_file()


RUNS = {}


def _quick_runs(argv):
    runs = RUNS.get("dir")
    assert runs is not None, "the README's training commands come before the commands that use runs/quick"
    return [str(a).replace("runs/quick", str(runs)) for a in argv]


def _loadgen_example(script, argv, ctx):
    """The GPU scripts by dry run (the loadgen.py commands they would run), the CPU one for real: its performance
    run and its accuracy run, in OUT."""
    out = ctx["tmp"] / "loadgen_example"
    res = run([script, *_quick_runs(argv[1:])], env={"OUT": str(out)}, check=True, timeout=600)
    if "--dry-run" in argv:
        assert "loadgen.py" in res.stdout and "--dtype float16" in res.stdout
        return
    scenario = argv[1]
    perf = json.loads((out / "performance" / "summary.json").read_text())
    acc = json.loads((out / "accuracy" / "summary.json").read_text())
    assert (perf["scenario"], perf["mode"], perf["status"]) == (scenario, "PerformanceOnly", "completed")
    assert acc["mode"] == "AccuracyOnly" and acc["accuracy"]["total"] == 360


def _loadgen(cmd, ctx):
    argv = shlex.split(cmd.replace("python", PY, 1).replace("data/demo", str(ctx["demo_root"])))
    argv = [a.replace("runs/loadgen", str(ctx["tmp"] / "loadgen")) for a in _quick_runs(argv)]
    res = run(argv, check=True, timeout=600)
    s = json.loads((Path(argv[argv.index("--output") + 1]) / "summary.json").read_text())
    if "--accuracy" in argv:
        assert s["accuracy"]["total"] == 360 and s["model"]["backend"] == argv[argv.index("--backend") + 1], s
        assert "Offline AccuracyOnly: top-1" in res.stderr
    else:
        assert s["status"] == "completed" and list(s["scenarios"]) == ["SingleStream", "MultiStream", "Server",
                                                                       "Offline"]
        for name, sc in s["scenarios"].items():
            assert sc["exit_status"] == 0 and sc["metric"]["value"] > 0, (name, sc)


def _export_onnx(cmd, ctx):
    argv = _quick_runs(shlex.split(cmd.replace("python", PY, 1).replace("data/demo", str(ctx["demo_root"]))))
    res = run(argv, check=True, timeout=600)
    assert (RUNS["dir"] / "model-0003.onnx").is_file() and "top-1 agrees" in res.stdout + res.stderr


def _runner(cmd, ctx):
    """The README's runner commands build on each other (train, resume, score): they share one runs/ folder."""
    runs = RUNS.setdefault("dir", ctx["tmp_factory"].mktemp("readme_runs"))
    argv = shlex.split(cmd.replace("data/demo", str(ctx["demo_root"])).replace("runs/quick", str(runs)))
    extra = [] if "--dry-run" in argv or "--benchmark-iters" in argv else ["--benchmark-iters", "2"]
    if "horovod" in argv:  # a Horovod job where Horovod is built (make install-horovod), one line where it is not
        from test_dist import horovod_imports

        if not horovod_imports():
            res = run([ROOT / "runner", *argv[1:], *extra])
            assert res.returncode == 2 and "horovod.mxnet does not import here" in res.stderr, res.stderr
            return
    res = run([ROOT / "runner", *argv[1:], *extra], check=True)
    if "--workers" in argv or "horovod" in argv:  # a distributed job (tests/test_dist.py has the rest)
        workers = argv[argv.index("--workers" if "--workers" in argv else "-n") + 1]
        assert f"the {workers} workers hold the same weights" in res.stderr
    elif "--only-inference" in argv:
        assert "Score[1]: top-1" in res.stderr
    elif "--dry-run" in argv:
        assert "--batch-size 64" in res.stdout and "--cpu-devices 2" in res.stdout
    else:
        epochs = int(argv[argv.index("-e") + 1])
        assert (runs / f"model-{epochs:04d}.params").is_file()
        report = json.loads((runs / "report.json").read_text())
        assert report["status"] == "completed" and report["epochs"][-1] == epochs - 1


def _plot(cmd, ctx):
    runs = RUNS.get("dir")
    assert runs is not None, "the README's training commands come before the plot command"
    res = run(shlex.split(cmd.replace("python", PY, 1).replace("runs/quick", str(runs))), check=True)
    assert (runs / "curves.png").stat().st_size > 10000 and "val top-1:" in res.stdout


def _train_help(cmd, ctx):
    out = run(shlex.split(cmd.replace("python", PY, 1)), check=True).stdout
    assert "--lr-step-epochs" in out and "--data-backend" in out


def _make_install_horovod(cmd, ctx):
    res = run(shlex.split(cmd) + ["-n"], check=True)  # dry run: the build takes minutes (and is run where it is used)
    assert "HOROVOD_WITH_MXNET=1" in res.stdout and "--no-build-isolation" in res.stdout
    assert "horovod==0.28.1" in res.stdout


def _make_install_gpu(cmd, ctx):
    res = run(shlex.split(cmd) + ["-n"], check=True)  # dry run: the GPU wheel needs CUDA 11 and is ~1 GB
    assert "mxnet-cu112==1.9.1" in res.stdout and "uninstall" in res.stdout


def _make_test(cmd, ctx):
    pytest.skip("`make test` is the command running this suite")


def _make_test_fast(cmd, ctx):
    """The in-process tier: `make -n` shows its pytest call, and that call selects only tests without the e2e
    marker (collected here, not run: the suite runs them itself)."""
    res = run(shlex.split(cmd) + ["-n"], check=True)
    assert '-m "not e2e"' in res.stdout
    listed = run([PY, "-m", "pytest", "--collect-only", "-q", "-m", "not e2e"], check=True).stdout
    assert "test_faults.py" not in listed and "tests/test_recfile.py::" in listed


def _check_rec(cmd, ctx):
    res = run(shlex.split(cmd.replace("python", PY, 1).replace("data/demo", str(ctx["demo_root"]))), check=True)
    assert res.stdout.splitlines()[-1].startswith(f"{ctx['demo_root']}/train.rec: 1437 records, 0 bad "
                                                  "(every image decoded, labels 0 to 9")


def _bench_memory(cmd, ctx):
    out = ctx["tmp"] / "memory.json"
    argv = shlex.split(cmd.replace("python", PY, 1).replace("memory.json", str(out)).replace("--quick", ""))
    res = run(argv + ["--configs", "train:18:32:4"], check=True)
    rows = json.loads(out.read_text())
    assert "| train" in res.stdout and rows


HANDLERS = {
    "make demo": _make_demo,
    "make test": _make_test,
    "make test-fast": _make_test_fast,
    "python tools/check_rec.py": _check_rec,
    "python tools/bench_memory.py": _bench_memory,
    "make install-gpu": _make_install_gpu,
    "make install-horovod": _make_install_horovod,
    "make bench-data": _make_bench_data,
    "make bench": _make_bench,
    "make bench-infer": _make_bench_infer,
    "make bench-gluon": _make_bench_gluon,
    "python tools/quantize.py": _quantize,
    "python tools/pick_dtype.py": _pick_dtype,
    "make bench-train": _make_bench_train,
    "make bench-optim": _make_bench_optim,
    "make bench-loadgen": _make_bench_loadgen,
    "python loadgen.py": _loadgen,
    "python tools/export_onnx.py": _export_onnx,
    "make mlperf-demo": _make_mlperf_demo,
    "python tools/mlperf_score.py": _mlperf_score,
    "python tools/scaling_model.py": _scaling_model,
    "python tools/bench_dist.py": _bench_dist,
    "python benchmark.py": _benchmark,
    "examples/": _example,
    "./runner": _runner,
    "python tools/plot_report.py": _plot,
    "python train.py": _train_help,
    "python tools/prepare_dataset.py": _prepare,
    "python tools/make_demo_data.py": _make_demo_data,
    "python data.py": _data_py,
}


def handler_for(cmd):
    for prefix, fn in HANDLERS.items():
        if cmd == prefix or cmd.startswith(prefix + " ") or (prefix.endswith("/") and cmd.startswith(prefix)):
            return fn
    return None


@pytest.mark.parametrize("cmd", COMMANDS)
@pytest.mark.e2e
def test_readme_command_runs(cmd, tmp_path, tmp_path_factory, mixed_tree, demo_root):
    fn = handler_for(cmd)
    assert fn is not None, f"README command not exercised by any test: {cmd}"
    fn(cmd, {"tmp": tmp_path, "tmp_factory": tmp_path_factory, "mixed_tree": mixed_tree, "demo_root": demo_root})

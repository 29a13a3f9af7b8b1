"""The README cannot drift: each of its commands is run here, and each --flag it names exists in a parser."""
from __future__ import annotations

import json
import re
import shlex

import pytest

from conftest import PY, ROOT, run

README = (ROOT / "README.md").read_text()
COMMANDS = [line.strip() for block in re.findall(r"```bash\n(.*?)```", README, re.S)
            for line in block.splitlines() if line.strip() and not line.startswith("#")]
# Flags of other programs the README mentions by name (im2rec.py's, NVIDIA's --test-io).
EXTERNAL_FLAGS = {"--list", "--recursive", "--pass-through", "--test-io"}


def all_parser_flags() -> set[str]:
    import data
    from tools import bench_data, make_demo_data, prepare_dataset

    flags = set()
    for parser in (data.build_parser(), prepare_dataset.build_parser(), make_demo_data.build_parser(),
                   bench_data.build_parser()):
        for action in parser._actions:
            flags.update(s for s in action.option_strings if s.startswith("--"))
    return flags


def test_readme_flags_exist():
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*[a-z0-9](?![\w*-])", README))
    assert named - all_parser_flags() - EXTERNAL_FLAGS == set()


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
    out = ctx["tmp"] / "made_demo"
    res = run(shlex.split(cmd) + [f"DEMO={out}"], check=True)
    assert (out / "train.rec").is_file() and (out / "val.idx").is_file() and "demo data set ready" in res.stdout


def _make_bench_data(cmd, ctx):
    out = ctx["tmp"] / "bench.json"
    res = run(shlex.split(cmd) + [f"BENCH_DATA_ARGS=--images 64 --iters 2 --repeats 1 -b 16 -o {out}"],
              check=True)
    assert "| dali-cpu |" in res.stdout and "| im2rec.py |" in res.stdout
    assert set(json.loads(out.read_text())["pipelines_img_per_s"]) >= {"dali-cpu", "mxnet"}


def _make_install_gpu(cmd, ctx):
    res = run(shlex.split(cmd) + ["-n"], check=True)  # dry run: the GPU wheel needs CUDA 11 and is ~1 GB
    assert "mxnet-cu112==1.9.1" in res.stdout and "uninstall" in res.stdout


def _make_test(cmd, ctx):
    pytest.skip("`make test` is the command running this suite")


HANDLERS = {
    "make demo": _make_demo,
    "make test": _make_test,
    "make install-gpu": _make_install_gpu,
    "make bench-data": _make_bench_data,
    "python tools/prepare_dataset.py": _prepare,
    "python tools/make_demo_data.py": _make_demo_data,
    "python data.py": _data_py,
}


def handler_for(cmd):
    for prefix, fn in HANDLERS.items():
        if cmd == prefix or cmd.startswith(prefix + " "):
            return fn
    return None


@pytest.mark.parametrize("cmd", COMMANDS)
def test_readme_command_runs(cmd, tmp_path, mixed_tree, demo_root):
    fn = handler_for(cmd)
    assert fn is not None, f"README command not exercised by any test: {cmd}"
    fn(cmd, {"tmp": tmp_path, "mixed_tree": mixed_tree, "demo_root": demo_root})

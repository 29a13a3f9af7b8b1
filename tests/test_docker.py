"""The Dockerfile cannot be built here (no Docker engine); check that it installs the project's pins and copies
files that exist, all the toolkit's modules among them."""
from __future__ import annotations

import re

from conftest import ROOT

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def pins(text: str) -> dict:
    return {m.group(1).lower(): m.group(2) for m in re.finditer(r"(?<![\w.-])([A-Za-z][\w.-]*)==([\w.]+)", text)}


def test_pins_match_the_project():
    project = pins((ROOT / "constraints.txt").read_text())
    project.update(pins((ROOT / "requirements.txt").read_text()))
    project.update(pins((ROOT / "Makefile").read_text()))  # install-gpu: mxnet-cu112
    docker = pins(DOCKERFILE)
    assert {"mxnet-cu112", "mxnet", "nvidia-dali-cuda120"} <= set(docker)
    assert {k: v for k, v in docker.items() if project.get(k) != v} == {}
    assert "-r requirements.txt -c constraints.txt" in DOCKERFILE


def test_copied_files_exist_and_cover_the_toolkit():
    copied = []
    for line in DOCKERFILE.splitlines():
        if line.startswith("COPY "):
            copied += line.split()[1:-1]
    assert copied and all((ROOT / c).exists() for c in copied), [c for c in copied if not (ROOT / c).exists()]
    modules = {p.name for p in ROOT.glob("*.py")} | {"runner"}
    assert modules <= set(copied)
    assert {"tools/", "examples/"} <= set(copied)


def test_cuda_base_and_data_mount():
    assert "nvidia/cuda:11.2.2-cudnn8-runtime" in DOCKERFILE
    assert 'VOLUME ["/data/imagenet/train-val-recordio-passthrough"]' in DOCKERFILE
    assert "WORKDIR /workspace/rn50" in DOCKERFILE and "--build-arg" in DOCKERFILE

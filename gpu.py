"""What the GPU path can run on this machine, checked before any work and without importing MXNet.

The GPU build this stack targets, ``mxnet-cu112==1.9.1``, links dynamically to CUDA 11 libraries and carries machine
code for a fixed set of GPU architectures (sm_50, 60, 70, 80, 86 in the PyPI wheels) and no PTX. Started on a machine
that lacks one of those libraries, ``import mxnet`` fails with a loader error; on a GPU it has no kernels for (Hopper,
sm_90) the first kernel launch fails deep inside a CUDA stack trace. ``check()`` turns both into one line that says
what is wrong and what to do, so ``runner`` and ``train.py`` can exit with status 2 first.

Sources, all read without MXNet:

* the build: ``mxnet/libmxnet.so`` of the installed package; its ELF dynamic section lists the libraries it needs
  (``DT_NEEDED``), and its ``.nv_fatbin`` section the GPU architectures it has code for (no section: a CPU build);
* the GPUs: the CUDA driver (``libcuda.so.1``: count, names, compute capabilities), which needs no CUDA toolkit.

For diagnostics, and for tests on machines without a GPU, three variables override what is read:
``RN50_MXNET_LIB`` (the library to inspect), ``RN50_GPU_CAPABILITY`` (pretend one GPU of this capability, e.g. 9.0)
and ``RN50_MXNET_CUDA_ARCHS`` (the build's architectures, e.g. 50,60,70,80,86).
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path

# The NGC container for GPUs the PyPI wheels cannot serve: MXNet 1.9.1 built for CUDA 12.4, Hopper included.
NGC_IMAGE = "nvcr.io/nvidia/mxnet:24.06-py3"
DOCKER_RUN = (f"docker run --gpus all --rm -it --ipc=host -v /data/imagenet:/data/imagenet -v $PWD:/workspace/rn50 "
              f"-w /workspace/rn50 {NGC_IMAGE} ./runner -n 1 -b 192")

# CUDA libraries a GPU build of MXNet may need, and where to get them (pip packages for CUDA 11, or the container).
CUDA_LIB_SOURCES = {
    "libcudart.so": "nvidia-cuda-runtime-cu11",
    "libcublas.so": "nvidia-cublas-cu11",
    "libcublasLt.so": "nvidia-cublas-cu11",
    "libcudnn.so": "nvidia-cudnn-cu11",
    "libnccl.so": "nvidia-nccl-cu11",
    "libcufft.so": "nvidia-cufft-cu11",
    "libcurand.so": "nvidia-curand-cu11",
    "libcusolver.so": "nvidia-cusolver-cu11",
    "libcusparse.so": "nvidia-cusparse-cu11",
    "libnvrtc.so": "nvidia-cuda-nvrtc-cu11",
    "libnvToolsExt.so": "nvidia-nvtx-cu11",
}


@dataclass(frozen=True)
class Build:
    lib: Path | None
    archs: tuple          # sm numbers with machine code, e.g. (50, 60, 70, 80, 86); () for a CPU build
    ptx: tuple            # sm numbers with PTX (JIT-compilable for newer GPUs)
    needed: tuple         # DT_NEEDED library names

    @property
    def cuda(self) -> bool:
        return bool(self.archs or self.ptx)


def mxnet_lib() -> Path | None:
    """Path of the installed MXNet's libmxnet.so (or ``RN50_MXNET_LIB``), without importing MXNet."""
    if os.environ.get("RN50_MXNET_LIB"):
        return Path(os.environ["RN50_MXNET_LIB"])
    spec = importlib.util.find_spec("mxnet")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(list(spec.submodule_search_locations)[0]) / "libmxnet.so"
    return lib if lib.is_file() else None


def _sections(f) -> dict:
    """ELF64 little-endian section headers: name -> (offset, size, type, link)."""
    head = f.read(64)
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", head, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 0x3A)
    f.seek(shoff)
    raw = f.read(shentsize * shnum)
    secs = [struct.unpack_from("<IIQQQQIIQQ", raw, i * shentsize) for i in range(shnum)]
    f.seek(secs[shstrndx][4])
    names = f.read(secs[shstrndx][5])
    out = {}
    for name_off, typ, _flags, _addr, off, size, link, _info, _align, _entsize in secs:
        name = names[name_off:names.index(b"\0", name_off)].decode()
        out[name] = (off, size, typ, link)
    return out


def fatbin_archs(path: Path) -> tuple[tuple, tuple]:
    """(sm numbers with machine code, sm numbers with PTX) in the ``.nv_fatbin`` section of an ELF shared library.

    A fatbin is a run of blobs (magic 0xBA55ED50, u16 version, u16 header size, u64 payload size), each a run of
    entries (u16 kind: 1 PTX, 2 ELF; u16; u32 header size; u64 payload size; ...; u32 sm number at offset 28)."""
    sass, ptx = set(), set()
    with open(path, "rb") as f:
        secs = _sections(f)
        if ".nv_fatbin" not in secs:
            return (), ()
        start, size, _, _ = secs[".nv_fatbin"]
        pos, end = start, start + size
        while pos + 16 <= end:
            f.seek(pos)
            magic, _ver, hsize, fsize = struct.unpack("<IHHQ", f.read(16))
            if magic != 0xBA55ED50:
                pos += 8  # blobs are 8-byte aligned; skip padding
                continue
            entry, blob_end = pos + hsize, pos + hsize + fsize
            while entry + 32 <= blob_end:
                f.seek(entry)
                kind, _u, ehsize, esize, _c, _u2, _minor, _major, arch = struct.unpack("<HHIQIIHHI", f.read(32))
                if ehsize == 0:
                    break
                (ptx if kind == 1 else sass).add(arch)
                entry += ehsize + esize
            pos = blob_end
    return tuple(sorted(sass)), tuple(sorted(ptx))


def needed_libs(path: Path) -> tuple:
    """DT_NEEDED entries of an ELF shared library."""
    with open(path, "rb") as f:
        secs = _sections(f)
        if ".dynamic" not in secs or ".dynstr" not in secs:
            return ()
        off, size, _, _ = secs[".dynamic"]
        f.seek(off)
        dyn = f.read(size)
        soff, ssize, _, _ = secs[".dynstr"]
        f.seek(soff)
        strtab = f.read(ssize)
    out = []
    for i in range(0, len(dyn) - 15, 16):
        tag, val = struct.unpack_from("<qQ", dyn, i)
        if tag == 0:
            break
        if tag == 1:  # DT_NEEDED
            out.append(strtab[val:strtab.index(b"\0", val)].decode())
    return tuple(out)


def read_build(lib: Path | None = None) -> Build:
    lib = lib if lib is not None else mxnet_lib()
    if os.environ.get("RN50_MXNET_CUDA_ARCHS"):
        archs = tuple(int(a) for a in os.environ["RN50_MXNET_CUDA_ARCHS"].split(",") if a)
        needed = needed_libs(lib) if lib is not None and lib.is_file() else ()
        return Build(lib, archs, (), needed)
    if lib is None or not lib.is_file():
        return Build(lib, (), (), ())
    archs, ptx = fatbin_archs(lib)
    return Build(lib, archs, ptx, needed_libs(lib))


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple     # (major, minor)

    @property
    def sm(self) -> int:
        return self.capability[0] * 10 + self.capability[1]


def visible_gpus() -> list[Gpu]:
    """GPUs the CUDA driver sees (``RN50_GPU_CAPABILITY`` pretends one); [] without a driver."""
    fake = os.environ.get("RN50_GPU_CAPABILITY")
    if fake:
        major, minor = (int(x) for x in fake.split("."))
        return [Gpu(0, f"GPU of compute capability {fake}", (major, minor))]
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return []
    if cuda.cuInit(0) != 0:
        return []
    count = ctypes.c_int()
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    gpus = []
    for i in range(count.value):
        dev, major, minor = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
        name = ctypes.create_string_buffer(256)
        cuda.cuDeviceGet(ctypes.byref(dev), i)
        cuda.cuDeviceGetName(name, 256, dev)
        cuda.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
        cuda.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # ..._MINOR
        gpus.append(Gpu(i, name.value.decode(errors="replace"), (major.value, minor.value)))
    return gpus


def missing_cuda_libs(build: Build) -> list[str]:
    """The CUDA libraries the build needs that the dynamic loader cannot find."""
    missing = []
    for name in build.needed:
        if not any(name.startswith(k) for k in CUDA_LIB_SOURCES) and not name.startswith("libcuda.so"):
            continue
        try:
            ctypes.CDLL(name)
        except OSError:
            missing.append(name)
    return missing


def _sm_list(sms) -> str:
    return ", ".join(f"sm_{s}" for s in sms)


def check(ngpus: int | None = None, build: Build | None = None, gpus: list[Gpu] | None = None) -> str | None:
    """The one-line reason the GPU path cannot run here, or None. ``ngpus``: GPUs asked for (None: any visible)."""
    build = build if build is not None else read_build()
    if not build.cuda:
        return None  # a CPU build: the toolkit runs on CPU devices, nothing GPU-specific to check
    missing = missing_cuda_libs(build)
    if missing:
        pkgs = sorted({CUDA_LIB_SOURCES[k] for m in missing for k in CUDA_LIB_SOURCES if m.startswith(k)})
        where = f"pip install {' '.join(pkgs)} and add their lib folders to LD_LIBRARY_PATH" if pkgs else \
            "install the NVIDIA driver"
        return (f"the GPU build of MXNet ({build.lib}) needs {', '.join(missing)}, which the loader cannot find: "
                f"{where}, or run in the CUDA 11.2 + cuDNN 8 image of ./Dockerfile")
    gpus = gpus if gpus is not None else visible_gpus()
    if ngpus is not None and gpus and ngpus > len(gpus):
        return f"-n {ngpus}: only {len(gpus)} GPU(s) visible"
    for g in gpus[:ngpus if ngpus is not None else len(gpus)]:
        runs = g.sm in build.archs or any(p <= g.sm for p in build.ptx) or any(
            a // 10 == g.capability[0] and a <= g.sm for a in build.archs)  # same-major binary compatibility
        if runs:
            continue
        hint = (f"Hopper needs an NGC MXNet container: {DOCKER_RUN}" if g.capability[0] == 9 else
                f"use an MXNet build for sm_{g.sm}, e.g. the NGC container {NGC_IMAGE}")
        ptx = f", PTX for {_sm_list(build.ptx)}" if build.ptx else " and no PTX"
        return (f"GPU {g.index} ({g.name}) has compute capability {g.capability[0]}.{g.capability[1]} (sm_{g.sm}); "
                f"this MXNet build has kernels for {_sm_list(build.archs)}{ptx}, so it cannot run there. {hint}")
    return None

"""Checkpoints: MXNet's own files plus a manifest that makes them trustworthy.

A complete checkpoint after epoch N (``NNNN`` = N, four digits) is

* ``<prefix>-symbol.json``: the model, MXNet's format (one file for all epochs);
* ``<prefix>-NNNN.params``: the weights (``arg:``/``aux:`` keys; ``mx.model.load_checkpoint(prefix, N)`` reads them);
* ``<prefix>-NNNN.states``: the optimizer state (momentum; fp32 master weights in float16);
* ``<prefix>-NNNN.json``: the manifest, written last: where the run was (epoch, iteration, LR step, loss scale), the
  model the weights belong to (depth, version, classes, input channels, dtype), and the size and SHA-256 of the
  params and states files.

A partial checkpoint, written when a signal stops a run in the middle of epoch N, has the same files named
``<prefix>-NNNN-partial.*``, so plain-MXNet loaders never take it for a complete epoch.

Writing order: the manifest of the same name is removed first, then the symbol, params and states are written (each
under a temporary name, then renamed), then the manifest. A checkpoint therefore counts only when its manifest exists
and every file it lists has the size and hash it records: a save that was interrupted (the process killed, the disk
full) leaves no manifest, and a resume falls back to the newest complete checkpoint before it, saying so. A manifest
whose files do not match (a file truncated or changed afterwards), or that names another model than the flags
describe, stops the run with one line naming the file and the flag.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import mxnet as mx
import numpy as np

from common import OutputError, UsageError, atomic_path, last_line, write_json

log = logging.getLogger(__name__)

# model field of the manifest -> the flag that sets it
MODEL_FLAGS = {"num_layers": "--num-layers", "resnet_version": "--resnet-version", "num_classes": "--num-classes",
               "image_channels": "--image-shape", "dtype": "--dtype"}


@dataclass(frozen=True)
class Checkpoint:
    prefix: Path
    epoch: int  # the number in the file names: epochs done, or for a partial one the epoch it stopped in
    partial: bool
    meta: dict  # the manifest ({} for weights without one)

    @property
    def files(self) -> dict:
        return paths(self.prefix, self.epoch, self.partial)

    @property
    def name(self) -> str:
        return name(self.prefix, self.epoch, self.partial)

    @property
    def position(self) -> tuple:
        """Sort key in training order: after epoch N-1 come the partial N, then the complete N."""
        return (self.epoch, 0 if self.partial else 1)


def name(prefix: Path, epoch: int, partial: bool = False) -> str:
    """``<prefix>-NNNN`` or ``<prefix>-NNNN-partial``: the checkpoint's files without their suffixes."""
    return f"{prefix}-{epoch:04d}{'-partial' if partial else ''}"


def paths(prefix: Path, epoch: int, partial: bool = False) -> dict:
    stem = name(prefix, epoch, partial)
    return {"symbol": Path(f"{prefix}-symbol.json"), "params": Path(f"{stem}.params"),
            "states": Path(f"{stem}.states"), "manifest": Path(f"{stem}.json")}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _describe(path: Path) -> dict:
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256(path)}


def save(prefix: Path, epoch: int, partial: bool, *, symbol: mx.sym.Symbol, params: dict,
         write_states: Callable[[str], None] | None, meta: dict, model: dict) -> Checkpoint:
    """Write one checkpoint in the order the module docstring gives. ``params`` maps ``arg:``/``aux:`` names to
    NDArrays; ``write_states(path)`` writes the optimizer state. A full disk raises ``OutputError`` and leaves the
    checkpoints written before as they were."""
    p = paths(prefix, epoch, partial)
    _check_space(p["params"], _bytes_needed(params, write_states is not None))
    p["manifest"].unlink(missing_ok=True)
    with atomic_path(p["symbol"], "writing a checkpoint") as tmp:
        symbol.save(str(tmp))
    with atomic_path(p["params"], "writing a checkpoint") as tmp:
        mx.nd.save(str(tmp), params)
    files = {"params": _describe(p["params"])}
    if write_states is not None:
        with atomic_path(p["states"], "writing a checkpoint") as tmp:
            write_states(str(tmp))
        files["states"] = _describe(p["states"])
    else:
        p["states"].unlink(missing_ok=True)
    manifest = {"epoch": epoch, "partial": partial, **meta, "model": model, "files": files}
    write_json(p["manifest"], manifest)
    return Checkpoint(Path(prefix), epoch, partial, manifest)


def _bytes_needed(params: dict, with_states: bool) -> int:
    """Bytes of the params file and, with states, the optimizer state: an fp32 momentum per weight, plus an fp32
    master copy of each fp16 weight."""
    total = 0
    for name, v in params.items():
        total += v.size * np.dtype(v.dtype).itemsize
        if with_states and name.startswith("arg:"):
            total += v.size * 4 * (2 if v.dtype == np.float16 else 1)
    return total


def check_space(prefix: Path, epoch: int, arrays: dict, when: str) -> None:
    """An ``OutputError`` unless the folder of ``prefix`` has room for checkpoint ``epoch`` of ``arrays`` (the params
    file and the optimizer state); ``when`` says where the run is (for the message)."""
    _check_space(paths(prefix, epoch)["params"], _bytes_needed(arrays, True), f"; checked {when}")


def _check_space(path: Path, need: int, when: str = "") -> None:
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else path.parent.parent).free
    except OSError:
        return
    if free < need:
        raise OutputError(f"{path}: no space left on device for a checkpoint (about {need / 2**20:.0f} MiB needed, "
                          f"{free / 2**20:.0f} MiB free{when}); free some space or choose another --model-prefix "
                          "(the last complete checkpoint is kept)")


# --------------------------------------------------------------------------------------------------------------------
# Finding and checking


def listing(prefix: Path) -> list[Checkpoint]:
    """Every checkpoint name under ``prefix`` that has a params file, complete or not, in training order (the
    manifest is read later; ``meta`` is empty here)."""
    prefix = Path(prefix)
    pattern = re.compile(re.escape(prefix.name) + r"-(\d{4,})(-partial)?\.params$")
    found = []
    if prefix.parent.is_dir():
        for f in prefix.parent.iterdir():
            m = pattern.match(f.name)
            if m:
                found.append(Checkpoint(prefix, int(m[1]), bool(m[2]), {}))
    return sorted(found, key=lambda c: c.position)


def remove_stale_temporaries(prefix: Path) -> list[str]:
    """Delete the temporary files a killed process left while writing checkpoints of ``prefix`` (only names of
    the form ``.<prefix name>-*.tmp`` that ``common.atomic_path`` makes); returns their names."""
    prefix = Path(prefix)
    stale = []
    if prefix.parent.is_dir():
        for f in prefix.parent.glob(f".{glob.escape(prefix.name)}-*.tmp"):
            f.unlink(missing_ok=True)
            stale.append(f.name)
    return stale


def problem(ckpt: Checkpoint, with_states: bool = True) -> tuple[str, str] | None:
    """Why ``ckpt`` cannot be trusted, or None: (``incomplete`` | ``corrupt``, the reason naming the file)."""
    p = ckpt.files
    if not p["manifest"].is_file():
        return "incomplete", f"{p['manifest']} is missing (its save did not finish, or another tool wrote it)"
    try:
        meta = json.loads(p["manifest"].read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return "corrupt", f"{p['manifest']} is not a readable manifest ({type(err).__name__})"
    for kind in ("params", "states") if with_states else ("params",):
        if kind not in files:
            continue
        path = p[kind]
        if not path.is_file():
            return "corrupt", f"{path} is missing, though {p['manifest'].name} lists it"
        want = files[kind]
        size = path.stat().st_size
        if size != want.get("bytes"):
            return "corrupt", f"{path} has {size} bytes, {p['manifest'].name} says {want.get('bytes')} (truncated?)"
        if sha256(path) != want.get("sha256"):
            return "corrupt", f"{path} does not match the SHA-256 in {p['manifest'].name} (changed or corrupted)"
    return None


def _with_meta(ckpt: Checkpoint) -> Checkpoint:
    return Checkpoint(ckpt.prefix, ckpt.epoch, ckpt.partial, json.loads(ckpt.files["manifest"].read_text()))


def check_model(ckpt: Checkpoint, model: dict) -> None:
    """A ``UsageError`` naming the flag when the manifest's model differs from the one the flags describe."""
    saved = ckpt.meta.get("model") or {}
    for key, flag in MODEL_FLAGS.items():
        if key in saved and key in model and saved[key] != model[key]:
            raise UsageError(f"{ckpt.files['manifest']}: the checkpoint is of a model with {key} {saved[key]}, the "
                             f"flags give {model[key]}; set {flag} as it was trained, or choose another "
                             "--model-prefix")


def for_resume(prefix: Path, epoch: int | None, model: dict) -> Checkpoint | None:
    """The checkpoint a run resumes from: ``epoch`` (``--load-epoch``: the complete one, else the partial one of
    that number) or, when ``epoch`` is None (``--resume``), the newest. An incomplete one is passed over for the
    newest trustworthy one before it, with a warning; a corrupt one or another model is a ``UsageError``. None when
    ``--resume`` finds nothing, or only incomplete checkpoints (a warning names them: the run starts afresh)."""
    found = listing(prefix)
    flag = "--resume" if epoch is None else f"--load-epoch {epoch}"
    if epoch is not None:
        same = [c for c in found if c.epoch == epoch]
        if not same:
            have = ", ".join(c.files["params"].name for c in found) or "none"
            raise UsageError(f"{flag}: {paths(prefix, epoch)['params']} not found (checkpoints with that "
                             f"prefix: {have})")
        found = [c for c in found if c.position <= same[-1].position]
    elif not found:
        return None
    skipped, reasons = [], []
    for ckpt in reversed(found):
        why = problem(ckpt)
        if why is None:
            ckpt = _with_meta(ckpt)
            check_model(ckpt, model)
            if skipped:
                log.warning("%s: %s skipped (%s); resuming from %s, the newest complete checkpoint before it",
                            flag, ", ".join(skipped), "; ".join(reasons), ckpt.name)
            return ckpt
        kind, reason = why
        if kind == "corrupt":
            raise UsageError(f"{flag}: {reason}; resume from another checkpoint with --load-epoch, or delete this "
                             "one")
        skipped.append(ckpt.name)
        reasons.append(reason)
    if epoch is None:  # a requeued job whose first save was cut: it starts afresh, as it would with nothing there
        log.warning("--resume: no complete checkpoint under %s (%s); starting afresh", prefix, "; ".join(reasons))
        return None
    raise UsageError(f"{flag}: no complete checkpoint to resume from ({'; '.join(reasons)})")


SCORES_ALIKE = {"float32", "bfloat16"}  # checkpoints of either dtype hold float32 weights: scored in either


def for_scoring(prefix: Path, epoch: int, model: dict) -> Checkpoint:
    """The weights ``--only-inference --load-epoch`` scores: the complete checkpoint (else the partial one) of that
    number. Its params must match the manifest (a float32 or bfloat16 checkpoint is scored in either dtype); weights
    without a manifest (plain MXNet) are scored with a warning."""
    same = [c for c in listing(prefix) if c.epoch == epoch]
    if not same:
        found = ", ".join(c.files["params"].name for c in listing(prefix)) or "none"
        raise UsageError(f"--load-epoch {epoch}: {paths(prefix, epoch)['params']} not found (checkpoints with "
                         f"that prefix: {found})")
    ckpt = same[-1]
    why = problem(ckpt, with_states=False)
    if why is None:
        ckpt = _with_meta(ckpt)
        check_precision(ckpt, model.get("dtype"))
        saved = ckpt.meta.get("model", {}).get("dtype")
        if {saved, model.get("dtype")} <= SCORES_ALIKE:  # float32 master weights either way
            model = {k: v for k, v in model.items() if k != "dtype"}
        check_model(ckpt, model)
    elif why[0] == "corrupt":
        raise UsageError(f"--load-epoch {epoch}: {why[1]}")
    else:
        check_precision(ckpt, model.get("dtype"))
        log.warning("%s: no manifest, so its completeness cannot be checked; scoring the weights as they are",
                    ckpt.files["params"])
    return ckpt


def check_precision(ckpt: Checkpoint, dtype: str | None) -> None:
    """An INT8 checkpoint (``tools/quantize.py``: its manifest has ``quantization``) is scored with ``--dtype int8``,
    and only it: a ``UsageError`` naming the file otherwise."""
    int8 = bool(ckpt.meta.get("quantization"))
    if dtype == "int8" and not ckpt.meta:
        raise UsageError(f"{ckpt.files['params']}: --dtype int8 takes an INT8 checkpoint with its manifest, and this "
                         "one has none; make one with tools/quantize.py --backend mxnet")
    if dtype == "int8" and not int8:
        raise UsageError(f"{ckpt.files['manifest']}: a {ckpt.meta.get('model', {}).get('dtype', 'float32')} "
                         "checkpoint, not an INT8 one; make its INT8 form with tools/quantize.py --backend mxnet and "
                         "score that (<prefix>-int8)")
    if int8 and dtype != "int8":
        raise UsageError(f"{ckpt.files['manifest']}: an INT8 checkpoint (tools/quantize.py); score it with --dtype "
                         "int8")


def int8_symbol(ckpt: Checkpoint) -> mx.sym.Symbol:
    """The INT8 checkpoint's own graph (the quantized one, not one the flags build)."""
    try:
        return mx.sym.load(str(ckpt.files["symbol"]))
    except (mx.base.MXNetError, OSError) as err:
        raise UsageError(f"{ckpt.files['symbol']}: cannot be read as an MXNet symbol ({last_line(err)[:200]})") \
            from None


def int8_model(ckpt: Checkpoint, data_shape: tuple) -> tuple:
    """(symbol, arg params, aux params) of the INT8 checkpoint ``ckpt``, checked against its graph."""
    sym = int8_symbol(ckpt)
    return (sym, *load_for_inference(ckpt, sym, data_shape))


def load_params(ckpt: Checkpoint) -> tuple[dict, dict]:
    """(arg params, aux params) of ``ckpt``; an unreadable file is a ``UsageError`` naming it."""
    path = ckpt.files["params"]
    try:
        saved = mx.nd.load(str(path))
    except (mx.base.MXNetError, OSError, ValueError) as err:
        raise UsageError(f"{path}: cannot be read as MXNet parameters ({last_line(err)[:200]})") from None
    if not isinstance(saved, dict):
        raise UsageError(f"{path}: holds a list of arrays, not named parameters")
    arg = {k[4:]: v for k, v in saved.items() if k.startswith("arg:")}
    aux = {k[4:]: v for k, v in saved.items() if k.startswith("aux:")}
    return arg, aux


def load_for_inference(ckpt: Checkpoint, sym: mx.sym.Symbol, data_shape: tuple,
                       convert: Callable | None = None) -> tuple[dict, dict]:
    """A model from a checkpoint: the weights of ``ckpt`` (``for_scoring``'s) for the network ``sym``, as (arg
    params, aux params), each array passed through ``convert(name, array)`` first when given (an export's dtype and
    layout), then checked against the shapes ``sym`` infers for an input of ``data_shape`` (``check_shapes``: a
    one-line ``UsageError`` naming the flag that differs). A weight the graph declares in bfloat16 (the scoring
    graph's, ``resnet.get_symbol``'s ``bf16_weights``) is cast to it. Training's resume and scoring
    (``fit.load_weights``), LoadGen's mxnet runtime and the ONNX export load their weights through it."""
    arg, aux = load_params(ckpt)
    if convert is not None:
        arg = {k: convert(k, v) for k, v in arg.items()}
        aux = {k: convert(k, v) for k, v in aux.items()}
    arg = to_declared_dtypes(sym, arg)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=data_shape)
    want_arg = {n: s for n, s in zip(sym.list_arguments(), arg_shapes) if n not in ("data", "softmax_label")}
    check_shapes(ckpt.files["params"], arg, aux, want_arg, dict(zip(sym.list_auxiliary_states(), aux_shapes)))
    return arg, aux


def to_declared_dtypes(sym: mx.sym.Symbol, arg: dict) -> dict:
    """``arg`` with each array the graph declares as a bfloat16 variable cast to bfloat16 (checkpoints hold float32
    master weights)."""
    from mxnet.contrib.amp.amp import bfloat16

    declared = {name: attrs["__dtype__"] for name, attrs in sym.attr_dict().items() if "__dtype__" in attrs}
    want = {name for name, code in declared.items() if int(code) == 12}  # 12: MXNet's type flag of bfloat16
    return {k: mx.nd.amp_cast(v, dtype=bfloat16) if k in want and v.dtype != bfloat16 else v for k, v in arg.items()}


def check_shapes(path: Path, arg: dict, aux: dict, expected_arg: dict, expected_aux: dict) -> None:
    """A ``UsageError`` naming the flag that most likely differs when saved parameters do not fit the model the
    flags build (needed for weights without a manifest; the manifest check names the flag directly)."""
    saved = {**arg, **aux}
    want = {**expected_arg, **expected_aux}
    missing = sorted(set(want) - set(saved))
    extra = sorted(set(saved) - set(want))
    if missing or extra:
        sample = (extra or missing)[0]
        raise UsageError(f"{path}: its parameters are not this model's ({len(missing)} missing, {len(extra)} "
                         f"unexpected, e.g. {sample}); was it trained with another --num-layers?")
    for name, shape in want.items():
        got = tuple(saved[name].shape)
        if got == tuple(shape):
            continue
        if name == "fc_weight" or name == "fc_bias":
            flag = f"--num-classes (it was trained for {got[0]} classes)"
        elif name == "stem_conv_weight" and got[1] != shape[1]:
            flag = f"--image-shape (it was trained on {got[1]}-channel input)"
        else:
            flag = "the model flags"
        raise UsageError(f"{path}: parameter {name} has shape {got}, this model needs {tuple(shape)}; check "
                         f"{flag}")




# --------------------------------------------------------------------------------------------------------------------
# Retention


def remove(ckpt: Checkpoint) -> None:
    """Delete a checkpoint, manifest first (an interrupted deletion leaves an incomplete checkpoint, never one that
    looks complete)."""
    for kind in ("manifest", "params", "states"):
        ckpt.files[kind].unlink(missing_ok=True)


def prune(prefix: Path, newest: Checkpoint, keep: int | None) -> list[str]:
    """After the complete checkpoint ``newest`` was written: remove the partial ones it supersedes and, with
    ``keep``, all but the ``keep`` newest complete ones. Returns the names removed."""
    removed = []
    complete = []
    for ckpt in listing(prefix):
        if ckpt.position > newest.position:
            continue
        if ckpt.partial:
            remove(ckpt)
            removed.append(ckpt.name)
        else:
            complete.append(ckpt)
    if keep:
        for ckpt in complete[:-keep]:
            remove(ckpt)
            removed.append(ckpt.name)
    return removed


def states_loader(path: Path) -> Callable[[mx.mod.Module], None]:
    """A function that loads the optimizer state at ``path`` into a module, a ``UsageError`` naming the file if it
    does not fit."""
    def load(mod: mx.mod.Module) -> None:
        try:
            mod.load_optimizer_states(str(path))
        except Exception as err:  # MXNet raises MXNetError, pickle errors, KeyError, ... for a state that does not fit
            raise UsageError(f"{path}: cannot be loaded as this run's optimizer state ({last_line(err)[:200]}); was it "
                             "written with another --dtype?") from None
    return load

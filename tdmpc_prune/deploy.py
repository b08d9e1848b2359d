"""ONNX export shared by the TD-MPC2 and SB3 paths: write a graph, run it with ONNX Runtime, compare.

Every exported graph is checked against the PyTorch code it came from on random inputs
(`check`: max abs difference <= `ATOL`). Graphs are written to a `staging` directory first and
moved into place only once all of them passed, so a failed export never clobbers an earlier one. Needs the `deploy` extra (`pip install tdmpc-prune[deploy]`).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from typing import TYPE_CHECKING, Dict, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from .errors import ExportError

if TYPE_CHECKING:
    import onnxruntime

ATOL = 1e-5  # max abs difference between ONNX Runtime and PyTorch accepted at export
OPSET = 18
Arrays = Mapping[str, Union[np.ndarray, torch.Tensor]]


def require_onnx() -> None:
    """Raise one clear error when the deployment packages are missing."""
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"exporting needs {', '.join(missing)}: pip install 'tdmpc-prune[deploy]'")


def writable_dir(path: Union[str, os.PathLike]) -> str:
    """Create directory `path` if needed and check that files can be written in it."""
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ExportError(f"output path {path} is a file, not a directory; give a directory for the exported graphs")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ExportError(f"cannot write to output directory {path} ({e.strerror}); choose a writable location") from None
    return path


def writable_file(path: Union[str, os.PathLike], suffix: str = ".onnx") -> str:
    """Check that file `path` can be written (its directory is created); `suffix` is appended if missing."""
    path = os.fspath(path)
    if os.path.isdir(path) or os.path.isdir(path + suffix):
        raise ExportError(f"output path {path} is a directory; give a file name such as {os.path.join(path, 'policy' + suffix)}")
    if not path.endswith(suffix):
        path += suffix
    writable_dir(os.path.dirname(os.path.abspath(path)))
    return path


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints, log lines and warnings (errors still propagate)."""
    log = logging.getLogger("torch.onnx")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


@contextlib.contextmanager
def staging(out_dir: str) -> Iterator[str]:
    """A temporary directory inside `out_dir`; when the block succeeds, its files replace their
    namesakes in `out_dir` (each by `os.replace`); when it fails, nothing in `out_dir` changes."""
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as stage:
        yield stage
        for name in sorted(os.listdir(stage)):
            os.replace(os.path.join(stage, name), os.path.join(out_dir, name))


def export_onnx(
    module: nn.Module,
    args: Sequence[torch.Tensor],
    path: str,
    input_names: Sequence[str],
    output_names: Sequence[str],
    batch_inputs: Sequence[str] = (),
) -> str:
    """Export `module(*args)` (in eval mode, without autograd) to ONNX at `path`; `batch_inputs` get a dynamic dim 0.

    Uses the TorchScript exporter (`dynamo=False`): it traces a 5M TD-MPC2 planner, whose MPPI
    iterations unroll into ~2,000 nodes, in seconds where the dynamo exporter takes minutes. Inputs
    the graph does not read (e.g. critic draws of a two-critic ensemble) are dropped from it.
    """
    require_onnx()
    _register_symbolics()
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad(), _quiet():
            torch.onnx.export(
                module, tuple(args), path, input_names=list(input_names), output_names=list(output_names),
                dynamic_axes={n: {0: "batch"} for n in batch_inputs}, opset_version=OPSET, dynamo=False,
                do_constant_folding=True,
            )
    finally:
        for m, mode in modes:  # each module's own mode (the exporter's module.train(x) would set them all alike)
            m.training = mode
    return path


_SYMBOLICS_DONE = False


def _register_symbolics() -> None:
    """ONNX translations of ops our models use that the TorchScript exporter lacks (or, for a stable sort, mis-reads)."""
    global _SYMBOLICS_DONE
    if _SYMBOLICS_DONE:
        return
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx import symbolic_helper

    dtypes = {"Float": torch.float32, "Double": torch.float64, "Half": torch.float16, "BFloat16": torch.bfloat16}

    def const(g, value: float, like):
        """A scalar constant of `like`'s dtype (typed at export: a CastLike node would run at every call)."""
        dtype = dtypes.get(like.type().scalarType()) if like.type().kind() == "TensorType" else None
        if dtype is None:
            return g.op("CastLike", g.op("Constant", value_t=torch.tensor(value)), like)
        return g.op("Constant", value_t=torch.tensor(value, dtype=dtype))

    def expm1(g, x):  # symexp in the two-hot decoding
        return g.op("Sub", g.op("Exp", x), const(g, 1.0, x))

    def addcdiv(g, x, t1, t2, value):  # the cheaper inference Mish
        q = g.op("Div", t1, t2)
        v = float(symbolic_helper._maybe_get_const(value, "f"))
        return g.op("Add", x, q if v == 1.0 else g.op("Mul", q, const(g, v, q)))

    def sort(g, x, *args):  # aten::sort(x, dim, descending) and sort.stable(x, stable, dim, descending)
        dim, descending = args[-2:]
        dim = symbolic_helper._get_const(dim, "i", "dim")
        size = g.op("Gather", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([dim])))
        # ONNX TopK orders equal values by index, as a stable sort does
        return g.op("TopK", x, size, axis_i=dim, largest_i=int(symbolic_helper._get_const(descending, "b", "descending")),
                    sorted_i=1, outputs=2)

    register_custom_op_symbolic("aten::sort", sort, OPSET)
    register_custom_op_symbolic("aten::expm1", expm1, OPSET)
    register_custom_op_symbolic("aten::addcdiv", addcdiv, OPSET)
    _SYMBOLICS_DONE = True


def input_names(path: str) -> List[str]:
    """The inputs a graph reads (the exporter drops inputs it does not use)."""
    import onnx

    return [i.name for i in onnx.load(path, load_external_data=False).graph.input]


def session(path: str, threads: int = 1) -> "onnxruntime.InferenceSession":
    """An ONNX Runtime CPU session running on `threads` intra-op threads (one: inline in the caller)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])


def profile(path: str, inputs: Arrays, runs: int = 3, threads: int = 1) -> Dict[str, Dict[str, Union[str, float]]]:
    """Per-node kernel time of the graph at `path` on ONNX Runtime (`SessionOptions.enable_profiling`).

    Runs it once to warm up (not counted), then `runs` times; returns {node name: {"op": op type,
    "us": median microseconds over the runs}} for the nodes of the optimised graph (the profiler
    clocks wall time: the median keeps a node that another process preempted once from counting).
    """
    import json

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as tmp:
        opts.enable_profiling, opts.profile_file_prefix = True, os.path.join(tmp, "profile")
        sess = ort.InferenceSession(path, sess_options=opts, providers=["CPUExecutionProvider"])
        feed = {i.name: _numpy(inputs[i.name]) for i in sess.get_inputs()}
        for _ in range(runs + 1):
            sess.run(None, feed)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    timed = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= starts[1]]
    ops: Dict[str, str] = {}
    durations: Dict[str, List[float]] = {}
    for e in timed:
        name = e["name"][: -len("_kernel_time")]
        ops[name] = e["args"]["op_name"]
        durations.setdefault(name, []).append(float(e["dur"]))
    return {name: {"op": ops[name], "us": float(np.median(d))} for name, d in durations.items()}


def _numpy(x: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def run(sess: "onnxruntime.InferenceSession", inputs: Arrays) -> Dict[str, np.ndarray]:
    """Run `sess` on named inputs (tensors or arrays; those the graph does not read are skipped); outputs by name."""
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(names, {k: _numpy(v) for k, v in inputs.items() if k in wanted})))


def check(path: str, inputs: Arrays, expected: Arrays, atol: float = ATOL, what: Optional[str] = None) -> float:
    """Run the graph at `path` on `inputs` and compare every output with `expected` (PyTorch's).

    Returns the max abs difference; when it exceeds `atol`, an `ExportError` names the output.
    """
    got = run(session(path), inputs)
    worst = 0.0
    for name, ref in expected.items():
        ref = _numpy(ref)
        out = got[name]
        if out.shape != ref.shape:
            bad = f"output {name!r} has shape {out.shape}, PyTorch {ref.shape}"
        else:
            diff = float(np.max(np.abs(out.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
            worst = max(worst, diff)
            bad = f"output {name!r} differs from PyTorch by {diff:.3g} > {atol:g}" if not diff <= atol else None
        if bad:
            raise ExportError(f"the exported {what or os.path.basename(path)} graph does not match PyTorch: {bad}")
    return worst

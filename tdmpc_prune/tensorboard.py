"""The shared `prune/*` TensorBoard view, written through any sink (SummaryWriter, SB3's logger).

Tags (CleanRL-style namespaces; `tdmpc_prune.driver.TAGS` is the list every integration writes):
    prune/sparsity, prune/params, prune/params_ratio, prune/flops, prune/flops_ratio,
    prune/skipped_steps, prune/events                      scalars
    prune/importance/<group id>                            scalar, mean importance of every group
    prune/lambda/<group id>                                scalar, the group's current L1 pressure (l1 > 0)
    prune/plan_ms                                          scalar, one decision of the controller (driver)
    prune/importance_hist/<component>                      histogram of unit importances
    prune/importance_heatmap                               image: groups x logged steps
    prune/summary                                          text: the closing summary of a run (driver)
    prune/importance_by/<criterion>/<kind>/<group id>      scalar, when the pruner observes other criteria
                                                           (observe=[...]): each gradient criterion's mean
                                                           score of every group (kind: component | coupling),
                                                           for the importance dynamics
                                                           (scripts/plot_importance_dynamics.py)
"""
from __future__ import annotations

import importlib.util
import io
import warnings
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence, Union

import numpy as np
import torch

from .config import PruneConfig
from .pruner import Pruner


class Sink(Protocol):
    def scalar(self, tag: str, value: float, step: int) -> None: ...

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None: ...

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None: ...

    def text(self, tag: str, text: str, step: int) -> None: ...

    # optional: `shows_media = False` when histograms, images and text reach nothing that shows them
    # (an SB3 logger without TensorBoard): they are then not computed (no heatmap is rendered)


def shows_media(sink: Any) -> bool:
    return bool(getattr(sink, "shows_media", True))


class WriterSink:
    """A `Sink` over `torch.utils.tensorboard.SummaryWriter`."""

    def __init__(self, writer):
        self.writer = writer

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.writer.add_scalar(tag, value, step)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        self.writer.add_histogram(tag, values, step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)


class OncePerStep:
    """A `Sink` that passes each tag on at most once per step (the first value wins)."""

    def __init__(self, sink: Sink):
        self.sink = sink
        self.writer = getattr(sink, "writer", None)
        self._step: Optional[int] = None
        self._tags: set = set()

    @property
    def shows_media(self) -> bool:
        return shows_media(self.sink)

    def _fresh(self, tag: str, step: int) -> bool:
        if step != self._step:
            self._step, self._tags = step, set()
        if tag in self._tags:
            return False
        self._tags.add(tag)
        return True

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self._fresh(tag, step):
            self.sink.scalar(tag, value, step)

    def histogram(self, tag: str, values: np.ndarray, step: int) -> None:
        if self._fresh(tag, step):
            self.sink.histogram(tag, values, step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        if self._fresh(tag, step):
            self.sink.image(tag, image_hwc, step)

    def text(self, tag: str, text: str, step: int) -> None:
        if self._fresh(tag, step):
            self.sink.text(tag, text, step)


def prune_scalars(
    pruner: Pruner,
    with_flops: bool = True,
    scores: Optional[Mapping[str, torch.Tensor]] = None,
    metrics: Optional[Mapping[str, float]] = None,
) -> Dict[str, float]:
    """Every `prune/*` scalar of the current state (`scores`, `metrics`: already computed ones)."""
    metrics = pruner.metrics(with_flops=with_flops) if metrics is None else metrics
    out = {f"prune/{k}": float(v) for k, v in metrics.items()}
    scores = pruner.scores() if scores is None else scores
    for g in pruner.groups:
        if bool((~torch.isnan(scores[g.id])).any()):
            out[f"prune/importance/{g.id}"] = float(torch.nanmean(scores[g.id]))
    if pruner.lasso is not None and pruner.lasso.lam_max > 0:
        for gid, lam in pruner.lasso.lambdas(pruner.clock).items():
            out[f"prune/lambda/{gid}"] = lam
    return out


DYNAMICS_CRITERIA = ("grad", "fisher", "bayes")


def criterion_importance(pruner: Pruner, names: Sequence[str] = DYNAMICS_CRITERIA) -> Dict[str, float]:
    """`prune/importance_by/<criterion>/<kind>/<group>`: the mean score of every group under each criterion
    of `names` whose statistics the pruner gathers (its own and those of `observe`)."""
    from .criteria import get_criterion

    ranking = pruner.criterion
    out: Dict[str, float] = {}
    try:
        for name in names:
            criterion = get_criterion(name)
            if not set(criterion.needs) <= set(pruner.stats.needs):
                continue
            pruner.criterion = criterion  # scores() ranks by `pruner.criterion`; restored below
            scores = pruner.scores()
            for g in pruner.groups:
                if (~torch.isnan(scores[g.id])).any():
                    out[f"prune/importance_by/{name}/{g.kind}/{g.id}"] = float(torch.nanmean(scores[g.id]))
    finally:
        pruner.criterion = ranking
    return out


def importance_by_component(pruner: Pruner, scores: Optional[Mapping[str, torch.Tensor]] = None) -> Dict[str, np.ndarray]:
    scores = pruner.scores() if scores is None else scores
    parts: Dict[str, List[np.ndarray]] = {}
    for g in pruner.groups:
        s = scores[g.id]
        s = s[~torch.isnan(s)].numpy()
        for comp in g.components if g.kind == "component" else ("coupling",):
            parts.setdefault(comp, []).append(s)
    return {c: np.concatenate(v) for c, v in parts.items() if sum(len(x) for x in v)}


class ImportanceHeatmap:
    """Mean importance per group over time, rendered as an image (rows: groups, columns: log steps)."""

    RENDERERS = ("matplotlib", "PIL")  # optional (the `plot` extra): without them the image is skipped

    def __init__(self, max_columns: int = 200):
        self.columns: List[np.ndarray] = []
        self.steps: List[int] = []
        self.max_columns = max_columns
        self.labels: List[str] = []
        self._missing: Optional[List[str]] = None

    def can_render(self) -> bool:
        """Whether matplotlib and Pillow are installed; the first time they are not, one warning says so."""
        if self._missing is None:
            self._missing = [m for m in self.RENDERERS if importlib.util.find_spec(m) is None]
            if self._missing:
                warnings.warn(
                    f"prune/importance_heatmap is skipped: {' and '.join(self._missing)} not installed "
                    "(pip install matplotlib, or tdmpc-prune[plot]); every other prune/* tag is still logged",
                    stacklevel=3,
                )
        return not self._missing

    def add(self, pruner: Pruner, step: int, scores: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        scores = pruner.scores() if scores is None else scores
        col = np.array([float(torch.nanmean(scores[g.id])) if (~torch.isnan(scores[g.id])).any() else np.nan for g in pruner.groups])
        self.columns.append(col)
        self.steps.append(step)
        self.labels = group_labels(pruner)
        if len(self.columns) > self.max_columns:  # keep every other column when full
            self.columns, self.steps = self.columns[::2], self.steps[::2]

    # TensorBoard shows an image scaled to its card (about 500 px wide by default): render 600 px wide with
    # 13 px text, one 26 px row per group, so that the labels stay readable at that size.
    WIDTH_IN, DPI, ROW_IN, FONT_PT = 6.0, 100, 0.26, 9.5

    def render(self, labels: Optional[List[str]] = None) -> np.ndarray:
        """The heatmap as an RGB array: one named row per group (`labels`, default the names `add` saw),
        log10 of its mean importance per logged step."""
        labels = list(self.labels if labels is None else labels)
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        data = np.stack(self.columns, 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.log10(np.clip(data, 1e-30, None))
        height = self.ROW_IN * len(labels) + 1.1
        fig, ax = plt.subplots(figsize=(self.WIDTH_IN, height), dpi=self.DPI)
        im = ax.imshow(z, aspect="auto", interpolation="nearest", cmap="viridis")
        ax.set_yticks(range(len(labels)), labels, fontsize=self.FONT_PT)
        ticks = np.unique(np.linspace(0, len(self.steps) - 1, min(5, len(self.steps))).astype(int))
        ax.set_xticks(ticks, [_short_step(self.steps[i]) for i in ticks], fontsize=self.FONT_PT)
        ax.set_xlabel("env step", fontsize=self.FONT_PT)
        bar = fig.colorbar(im, ax=ax, pad=0.02)
        bar.set_label("log10 importance", fontsize=self.FONT_PT)
        bar.ax.tick_params(labelsize=self.FONT_PT - 1)
        fig.tight_layout(pad=0.4)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        buf.seek(0)
        from PIL import Image

        return np.asarray(Image.open(buf).convert("RGB"))


def _short_step(step: int) -> str:
    """12000 -> '12k', 1500000 -> '1.5M' (tick labels that fit)."""
    for div, unit in ((1_000_000, "M"), (1_000, "k")):
        if abs(step) >= div:
            return f"{step / div:.3g}{unit}"
    return str(step)


def group_labels(pruner: Pruner) -> List[str]:
    """One short name per group for the heatmap rows: its module path and what it is (`_pi.0 · policy`,
    `encoder.state.1 · shared by 5`: a coupling group)."""
    out = []
    for g in pruner.groups:
        what = f"shared by {len(g.components)}" if g.kind == "coupling" else ", ".join(g.components)
        out.append(f"{g.id.lstrip('_')} · {what}")
    return out


def log_pruner(
    sink: Sink,
    pruner: Pruner,
    step: int,
    heatmap: Optional[ImportanceHeatmap] = None,
    with_flops: bool = True,
    metrics: Optional[Mapping[str, float]] = None,
) -> Dict[str, float]:
    """Write the whole `prune/*` view at `step` (the scores computed once); returns the scalars written."""
    scores = pruner.scores()
    scalars = prune_scalars(pruner, with_flops=with_flops, scores=scores, metrics=metrics)
    if pruner.config.observe:
        scalars.update(criterion_importance(pruner))
    for tag, value in scalars.items():
        sink.scalar(tag, value, step)
    media = shows_media(sink)
    for comp, values in (importance_by_component(pruner, scores) if media else {}).items():
        sink.histogram(f"prune/importance_hist/{comp}", values, step)
    if heatmap is not None:
        heatmap.add(pruner, step, scores)
        if media and len(heatmap.columns) >= 2 and heatmap.can_render():
            sink.image("prune/importance_heatmap", heatmap.render(), step)
    return scalars


def prune_hparams(config: Union[PruneConfig, Pruner]) -> Dict[str, object]:
    """The prune options (of a config or a pruner) flattened for TensorBoard hparams (`prune.<option>`)."""
    config = config.config if isinstance(config, Pruner) else config
    out: Dict[str, object] = {}
    for k, v in config.to_dict().items():
        if isinstance(v, dict):
            for kk, vv in v.items():
                out[f"prune.budgets.{kk}"] = float(vv)
        elif isinstance(v, (list, tuple)):
            out[f"prune.{k}"] = ",".join(map(str, v))
        elif v is None:
            out[f"prune.{k}"] = "none"
        else:
            out[f"prune.{k}"] = v
    return out


def logged_steps(directory: str) -> Dict[str, List[int]]:
    """Every scalar, histogram and image tag of the event files in `directory` with its steps, as
    TensorBoard shows them (steps purged by a resumed writer's `purge_step` are gone)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(directory, size_guidance={"scalars": 0, "histograms": 0, "images": 0, "tensors": 0})
    ea.Reload()
    tags = ea.Tags()
    out = {t: [e.step for e in ea.Scalars(t)] for t in tags["scalars"]}
    out.update({t: [e.step for e in ea.Histograms(t)] for t in tags["histograms"]})
    out.update({t: [e.step for e in ea.Images(t)] for t in tags["images"]})
    return out


def repeated_steps(directory: str) -> Dict[str, List[int]]:
    """Tags whose steps repeat or go back (empty for a clean run), with their steps."""
    return {t: s for t, s in logged_steps(directory).items() if s != sorted(set(s))}

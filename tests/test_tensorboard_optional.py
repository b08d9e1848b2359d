"""No optional package can crash a run: without matplotlib the heatmap is skipped with one warning."""
from __future__ import annotations

import sys
import warnings

import pytest
import torch
import torch.nn as nn
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from tdmpc_prune import Pruner
from tdmpc_prune.tensorboard import ImportanceHeatmap, WriterSink, log_pruner


def _logged(tmp_path, steps: int = 3):
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    pruner = Pruner(model, {"model": ""}, example_inputs=(torch.randn(3, 4),), criterion="magnitude", sparsity=0.5)
    writer, heatmap = SummaryWriter(str(tmp_path)), ImportanceHeatmap()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(steps):
            log_pruner(WriterSink(writer), pruner, step, heatmap)
    writer.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0, "histograms": 0})
    acc.Reload()
    return acc, [str(w.message) for w in caught if "importance_heatmap" in str(w.message)]


def test_without_matplotlib_the_heatmap_is_skipped_with_one_warning(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails as if not installed
    acc, messages = _logged(tmp_path)
    assert len(messages) == 1 and "matplotlib" in messages[0] and "tdmpc-prune[plot]" in messages[0]
    assert acc.Tags()["images"] == []
    assert [e.step for e in acc.Scalars("prune/sparsity")] == [0, 1, 2]  # everything else is logged
    assert "prune/params_ratio" in acc.Tags()["scalars"] and acc.Tags()["histograms"]


def test_with_matplotlib_the_heatmap_is_written(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    acc, messages = _logged(tmp_path)
    assert messages == [] and acc.Tags()["images"] == ["prune/importance_heatmap"]

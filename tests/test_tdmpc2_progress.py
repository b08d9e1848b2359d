"""`tdmpc-prune train` talks while it works: evaluation episodes report progress, the final bar shows
the final evaluation, and on a CPU a slow model size is named up front with its measured cost."""
from __future__ import annotations

import re

from tdmpc_prune.tdmpc2.train import train
from test_tdmpc2_train import tokens


def test_evaluation_reports_progress_and_the_final_bar_shows_the_final_eval(tmp_path, capsys) -> None:
    trainer = train(tokens(tmp_path, "bar", 100, 50, 100, "progress=true", "eval_episodes=2"))
    err = capsys.readouterr().err
    for step in (0, 50, 100):  # every evaluation has its own bar, counting agent steps of its episodes
        assert f"eval at step {step}:" in err, err[-2000:]
    assert re.search(r"eval at step 100: .*episode=2/2", err)
    main_bar = [line for line in re.split(r"[\r\n]", err) if "sps=" in line]
    assert main_bar and f"eval={trainer.last_eval_reward:.1f}" in main_bar[-1], main_bar[-1:]


def test_a_slow_model_size_on_the_cpu_is_named_with_its_measured_cost(tmp_path, capsys) -> None:
    train(tokens(tmp_path, "slow", 50, 50, 50, "model_size=1", "enc_dim=32", "mlp_dim=32", "latent_dim=16"))
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "on the CPU is slow" in line)
    assert line.startswith("[tdmpc-prune] model_size=1 on the CPU is slow: one update ")
    assert re.search(r"one update \d+\.\d\d s \+ one plan \d+\.\d\d s \(measured now\)", line)
    assert "of evaluation" in line and "model_size=cpu" in line
    train(tokens(tmp_path, "fast", 50, 50, 50))  # the CPU preset says nothing of the kind
    assert "on the CPU is slow" not in capsys.readouterr().out

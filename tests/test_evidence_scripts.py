"""The evidence scripts on a real MuJoCo task: rows, resumption, the `command` contract, rliable report."""
from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import results  # noqa: E402
import sb3_tasks  # noqa: E402
import sensitivity  # noqa: E402

TINY = ["--algo", "ppo", "--env", "HalfCheetah-v5", "--steps", "2048", "--seeds", "0", "--episodes", "1", "--calibration", "64"]


def test_sensitivity_rows_resume_and_rerun_from_their_command(tmp_path, capsys) -> None:
    csv_path, work = tmp_path / "sens.csv", tmp_path / "work"
    args = TINY + ["--criteria", "bayes,magnitude", "--sparsities", "0.9", "--finetune", "0.5", "--workdir", str(work), "--csv", str(csv_path)]
    sensitivity.main(args)
    rows = results.read(csv_path)
    assert [(r["criterion"], r["protocol"]) for r in rows] == [
        ("dense", "dense"), ("bayes", "oneshot"), ("magnitude", "oneshot"), ("bayes", "compensated"),
        ("magnitude", "compensated"), ("bayes", "finetune"), ("magnitude", "finetune"),
    ]
    assert list(rows[0]) == results.COLUMNS and all(r["commit"] for r in rows)
    first = {results.key(r): r["eval_return"] for r in rows}
    capsys.readouterr()
    sensitivity.main(args)  # everything is there: nothing re-runs
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval_return"] is None
    assert {results.key(r): r["eval_return"] for r in results.read(csv_path)} == first
    # rows are keyed without the fine-tune length or the episodes: other values are refused before anything runs, not skipped
    for flag, value, there in (("--finetune", "0.25", "0.5"), ("--episodes", "3", "1")):
        changed = args + [flag, value]
        with pytest.raises(SystemExit, match=f"already holds seed 0 .*{flag} {there} there, {value} here.*another --csv"):
            sensitivity.main(changed)
    sensitivity.main(args + ["--finetune", "0.25", "--protocols", "dense,oneshot"])  # protocols that do not fine-tune ignore it
    assert {results.key(r): r["eval_return"] for r in results.read(csv_path)} == first

    # a row's command re-runs exactly that row (here from this checkout, its dense agent trained again)
    row = next(r for r in rows if r["protocol"] == "oneshot" and r["criterion"] == "bayes")
    cmd = shlex.split(row["command"])
    assert cmd[:2] == ["python", "scripts/sensitivity.py"]
    out = subprocess.run(
        [sys.executable, *cmd[1:], "--calibration", "64", "--workdir", str(tmp_path / "fresh")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    again = json.loads(out.stdout.strip().splitlines()[-1])
    assert again["eval_return"] == pytest.approx(float(row["eval_return"]), abs=1e-3)

    # the report aggregates with rliable and writes the table and plots
    sensitivity.main(["--report", str(csv_path), "--out", str(tmp_path)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary) == {"ppo/HalfCheetah-v5/oneshot", "ppo/HalfCheetah-v5/compensated", "ppo/HalfCheetah-v5/finetune",
                            "ppo/HalfCheetah-v5/finetune_diagnostics"}
    assert summary["ppo/HalfCheetah-v5/finetune_diagnostics"]["0.9"]["cells"] == 2
    assert "IQM" in (tmp_path / "sensitivity.md").read_text()
    assert (tmp_path / "sensitivity_ppo_HalfCheetah-v5_oneshot.png").stat().st_size > 0

    # the layer-by-layer analysis of the same dense agent: every hidden layer, every criterion
    import analyse_criteria

    analyse_criteria.main(["--checkpoint", str(work / "ppo-HalfCheetah-v5-s0-2048" / "dense"), "--observations", "64"])
    layers = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(layers) == {f"mlp_extractor.{n}.{i}" for n in ("policy_net", "value_net") for i in (0, 2)}
    for r in layers.values():
        assert set(r["spearman_vs_damage"]) == set(analyse_criteria.CRITERIA) and r["width"] == 64


def test_sac_sensitivity_runs_every_protocol(tmp_path, capsys) -> None:
    # SAC's 10k random steps before learning (rl-zoo3's MuJoCo setting), then 400 updates
    csv_path = tmp_path / "sac.csv"
    sensitivity.main(["--algo", "sac", "--env", "HalfCheetah-v5", "--steps", "10400", "--seeds", "0", "--episodes", "1", "--calibration", "64",
                      "--criteria", "fisher,magnitude", "--sparsities", "0.75", "--finetune", "0.02", "--workdir", str(tmp_path / "w"), "--csv", str(csv_path)])
    rows = results.read(csv_path)
    assert [(r["protocol"], r["criterion"]) for r in rows] == [("dense", "dense")] + [
        (p, c) for p in ("oneshot", "compensated", "finetune") for c in ("fisher", "magnitude")]
    assert all(r["algo"] == "sac" and "--algo sac" in r["command"] for r in rows)
    assert len({r["eval_return"] for r in rows}) == len(rows)  # each cell is its own policy
    pruned_all = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the last row: finetune, magnitude
    # opt-in: only the actor pruned before the fine-tune, the critics keep every unit
    sensitivity.main(["--algo", "sac", "--env", "HalfCheetah-v5", "--steps", "10400", "--seeds", "0", "--episodes", "1", "--criteria", "magnitude",
                      "--sparsities", "0.75", "--finetune", "0.02", "--protocols", "finetune_actor", "--workdir", str(tmp_path / "w"), "--csv", str(csv_path)])
    actor_only = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "finetune_actor" not in sensitivity.protocols_of("sac") and "--protocols finetune_actor" in actor_only["command"]
    assert pruned_all["params_ratio"] < 0.15 < 0.5 < actor_only["params_ratio"] < 1.0  # the critics hold most of SAC's weights
    assert actor_only["eval_return"] != pruned_all["eval_return"]
    # opt-in: the actor frozen for the whole fine-tune keeps its one-shot policy; frozen for half of it, it learns after
    oneshot = {r["criterion"]: float(r["eval_return"]) for r in rows if r["protocol"] == "oneshot"}
    warm = {}
    for warmup in (1.0, 0.5):
        sensitivity.main(["--algo", "sac", "--env", "HalfCheetah-v5", "--steps", "10400", "--seeds", "0", "--episodes", "1", "--criteria", "magnitude",
                          "--sparsities", "0.75", "--finetune", "0.02", "--protocols", "finetune_warmup", "--warmup", str(warmup),
                          "--workdir", str(tmp_path / "w"), "--csv", str(tmp_path / f"warmup{warmup}.csv")])
        warm[warmup] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "finetune_warmup" not in sensitivity.protocols_of("sac") and "--warmup 0.5" in warm[0.5]["command"]
    assert warm[1.0]["eval_return"] == pytest.approx(oneshot["magnitude"], abs=5e-4)  # the CSV keeps 3 decimals
    assert warm[0.5]["eval_return"] not in (oneshot["magnitude"], pruned_all["eval_return"])
    dense = tmp_path / "w" / "sac-HalfCheetah-v5-s0-10400" / "dense"

    # how far one-shot pruning moves the actor and the critics, from the same checkpoint and its buffer
    import analyse_sac_pruning

    analyse_sac_pruning.main(["--checkpoint", str(dense), "--criteria", "fisher,random", "--sparsities", "0.5", "--samples", "256"])
    far = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(far) == {"fisher@0.5", "random@0.5"}
    for d in far.values():
        assert d["actor_rms"] > 0 and d["critic_rel_rms"] > 0 and -1 <= d["dq_da_cos"] < 1 and d["dq_da_norm_ratio"] > 0

    model, _ = sb3_tasks.load("sac", "HalfCheetah-v5", 0, dense, training=True)
    import torch

    obs, act = (torch.as_tensor(x[:256, 0], dtype=torch.float32) for x in (model.replay_buffer.observations, model.replay_buffer.actions))
    same = analyse_sac_pruning.distances(model, model, obs, act)  # an unpruned agent is at distance 0 from itself
    assert same["actor_rms"] == same["critic_rel_rms"] == 0 and same["dq_da_cos"] == pytest.approx(1) and same["dq_da_norm_ratio"] == 1
    assert model.replay_buffer.size() == 10400  # the fine-tune continues from the dense run's buffer
    (dense / sb3_tasks.REPLAY_BUFFER).unlink()
    assert sb3_tasks.load("sac", "HalfCheetah-v5", 0, dense, training=False)[0].replay_buffer.size() == 0
    with pytest.raises(SystemExit, match="replay_buffer.pkl is missing.*--protocols dense,oneshot,compensated"):
        sensitivity.main(["--algo", "sac", "--env", "HalfCheetah-v5", "--steps", "10400", "--seeds", "0", "--criteria", "fisher",
                          "--sparsities", "0.5", "--protocols", "finetune", "--workdir", str(tmp_path / "w"), "--csv", str(csv_path)])


def test_finetune_explore_is_opt_in_and_changes_the_fine_tune(tmp_path, capsys) -> None:
    csv_path = tmp_path / "sens.csv"
    base = TINY + ["--criteria", "magnitude", "--sparsities", "0.5", "--finetune", "0.5", "--workdir", str(tmp_path / "w"), "--csv", str(csv_path)]
    sensitivity.main(base + ["--protocols", "dense,finetune,finetune_explore"])
    rows = {r["protocol"]: r for r in results.read(csv_path)}
    assert set(rows) == {"dense", "finetune", "finetune_explore"} and "finetune_explore" not in sensitivity.protocols_of("ppo")
    assert rows["finetune"]["eval_return"] != rows["finetune_explore"]["eval_return"]  # std 1 instead of the trained one
    assert "--protocols finetune_explore" in rows["finetune_explore"]["command"]
    with pytest.raises(SystemExit, match="finetune_explore"):
        sensitivity.main(base + ["--protocols", "finetune_explor"])  # a typo names the protocols there are


def test_finetune_diagnostics_separate_the_start_the_seed_and_the_criterion() -> None:
    # fine-tuned = one-shot + a seed effect (large) + a criterion effect (small): a perfect rank
    # correlation at 50 %, none at 75 % (fine-tuned constant per seed), seed variance above criterion's
    seed_fx, crit_fx = {0: 0.0, 1: 0.4, 2: 0.8}, {"bayes": 0.05, "magnitude": 0.0}
    rows, dense = [], {s: 1000.0 for s in seed_fx}
    for s in seed_fx:
        for c in crit_fx:
            for sp, one in ((0.5, 0.1 * s + crit_fx[c]), (0.75, 0.3 - 0.1 * s)):
                ft = (one + seed_fx[s] + crit_fx[c]) if sp == 0.5 else (0.9 + seed_fx[s])
                for protocol, v in (("oneshot", one), ("finetune", ft)):
                    ret = -280.178953 + v * (1000.0 + 280.178953)  # dense-normalised score v
                    rows.append(dict(env="HalfCheetah-v5", criterion=c, sparsity=str(sp), seed=str(s), protocol=protocol, eval_return=str(ret)))
    lines, out = sensitivity.finetune_diagnostics(rows, dense)
    assert out["0.5"]["cells"] == 6 and out["0.5"]["spearman"] == pytest.approx(1.0)
    assert out["0.5"]["var_seed_means"] > 10 * out["0.5"]["var_criterion_means"]
    assert out["0.75"]["var_criterion_means"] == pytest.approx(0.0, abs=1e-12)
    assert out["finetune_50_below_75"] == [6, 6] and any("6 of 6" in line for line in lines)


@pytest.mark.parametrize("algo,steps", [("ppo", 4096), ("sac", 400)])
def test_observe_only_training_is_the_dense_training(algo: str, steps: int) -> None:
    # the sensitivity grid's observed agents serve as the during-training grid's dense twins (`--dense-from`):
    # observing (statistics only) must leave the trained weights and the evaluation bit-for-bit unchanged
    import torch

    import sb3_tasks
    from tdmpc_prune.sb3 import get_pruner, wrap

    trained = {}
    for observed in (False, True):
        torch.manual_seed(0)
        model, venv = sb3_tasks.make_model(algo, "HalfCheetah-v5", 0)
        model.learning_starts = min(getattr(model, "learning_starts", 0), 100)  # SAC: 300 real updates, not none
        if observed:
            model = wrap(model, **sensitivity.OBSERVER)
        model.learn(steps)
        trained[observed] = ({k: v.clone() for k, v in model.policy.state_dict().items()}, sb3_tasks.evaluate(model, "HalfCheetah-v5", 0, venv, 1))
    (dense_w, dense_ret), (obs_w, obs_ret) = trained[False], trained[True]
    assert get_pruner(model).observed()  # the observer saw real gradients
    assert dense_w.keys() == obs_w.keys() and all(torch.equal(dense_w[k], obs_w[k]) for k in dense_w)
    assert obs_ret == dense_ret


def test_iqm_intervals_come_from_rliable() -> None:
    import numpy as np

    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0, -50.0, 2.5, 3.5])
    iqm, lo, hi = results.iqm_ci({"x": x})["x"]
    assert iqm == pytest.approx(np.mean(np.sort(x)[2:6]))  # the middle half of 8 runs
    assert lo <= iqm <= hi
    p, plo, phi = results.probability_of_improvement(x + 10, x)
    assert 0.5 < p <= 1.0 and plo <= p <= phi


def test_reports_give_the_probability_of_improvement_over_each_baseline() -> None:
    dense = {s: 1000.0 for s in range(4)}
    rows = [dict(env="HalfCheetah-v5", criterion=c, sparsity="0.5", seed=str(s), eval_return=str(ret + s))
            for s in range(4) for c, ret in (("bayes", 900.0), ("magnitude", 500.0), ("random", 100.0))]
    lines = results.improvement_table(rows, dense, lambda r: r["criterion"], [0.5], "magnitude", ["bayes", "random"])
    cells = {line.split(" | ")[0].strip("| "): line.split(" | ")[1] for line in lines if line.startswith("| bayes") or line.startswith("| random")}
    assert cells["bayes"].startswith("1.00") and cells["random"].startswith("0.00")  # always above / always below
    assert "magnitude" not in cells and lines[0].startswith("P(row > magnitude)")
    assert results.improvement_table(rows, dense, lambda r: r["criterion"], [0.5], "taylor") == []  # no such baseline


def test_during_training_grid_runs_seed_by_seed() -> None:
    import argparse

    import compare_sb3

    args = argparse.Namespace(seeds=[4, 5], sparsities=[0.9], method=["bayes"], l1s=[0.0, 1e-5], baselines=["random"], no_dense=True)
    assert compare_sb3.runs(args) == [(4, "bayes", 0.9, 0.0), (4, "bayes", 0.9, 1e-5), (4, "random", 0.9, 0.0),
                                      (5, "bayes", 0.9, 0.0), (5, "bayes", 0.9, 1e-5), (5, "random", 0.9, 0.0)]
    args.no_dense = False
    assert [r[:2] for r in compare_sb3.runs(args)][::4] == [(4, "dense"), (5, "dense")]


def test_during_training_grid_rows_and_rerun(tmp_path, capsys) -> None:
    import compare_sb3

    csv_path = tmp_path / "during.csv"
    args = ["--algo", "ppo", "--env", "HalfCheetah-v5", "--steps", "4096", "--seeds", "0", "--episodes", "1", "--method", "bayes",
            "--l1s", "0,1e-5", "--baselines", "random", "--sparsities", "0.75", "--csv", str(csv_path), "--logdir", str(tmp_path / "tb")]
    compare_sb3.main(args)
    rows = results.read(csv_path)
    assert [(r["criterion"], float(r["l1"])) for r in rows] == [("dense", 0.0), ("bayes", 0.0), ("bayes", 1e-5), ("random", 0.0)]
    assert len({r["eval_return"] for r in rows}) == 4  # pruning and the lasso changed each run
    with pytest.raises(SystemExit, match=r"already holds seed 0 during dense 0.0, .*--steps 4096 there, 2048 here"):
        compare_sb3.main(args + ["--steps", "2048"])  # rows are keyed without the training length: refused, not skipped
    row = rows[2]
    cmd = shlex.split(row["command"])
    out = subprocess.run([sys.executable, *cmd[1:], "--logdir", str(tmp_path / "tb2")], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["eval_return"] == pytest.approx(float(row["eval_return"]), abs=1e-3)
    capsys.readouterr()
    compare_sb3.main(["--report", str(csv_path), "--out", str(tmp_path)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["ppo/HalfCheetah-v5"]) == {"bayes l1=0", "bayes l1=1e-05", "random l1=0"}
    report_md = (tmp_path / "during.md").read_text()  # named after the CSV, so two grids' reports never overwrite each other
    assert "P(row > random l1=0)" in report_md and "P(row > bayes l1=0)" in report_md
    assert (tmp_path / "during_ppo_HalfCheetah-v5.png").exists()

    # the same grid without its dense row, the dense twin taken from a sensitivity CSV instead: the same report
    pruned_only, twin_csv = tmp_path / "pruned_only.csv", tmp_path / "sens.csv"
    for r in rows:
        if r["criterion"] != "dense":
            results.append(pruned_only, r)
    results.append(twin_csv, {**rows[0], "protocol": "dense"})
    results.append(twin_csv, {**rows[0], "seed": "1", "protocol": "dense", "eval_return": "-1e9"})  # a seed the grid lacks: unused
    compare_sb3.main(["--report", str(pruned_only), "--out", str(tmp_path), "--dense-from", str(twin_csv)])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary
    assert "Dense twins of seeds 0 from" in (tmp_path / "pruned_only.md").read_text()
    compare_sb3.main(["--report", str(pruned_only), "--out", str(tmp_path), "--dense-from", str(twin_csv), "--seeds", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {}  # seed 1 has no rows: nothing to aggregate


# ------------------------------------------------------------------------------------ TD-MPC2
# a tiny TD-MPC2 agent on dm-control cartpole-balance (25-step episodes: a run of 100 env steps takes seconds)
SMALL = ["enc_dim=32", "mlp_dim=32", "latent_dim=16", "episode_length=25", "batch_size=8", "num_samples=16",
         "num_elites=4", "num_pi_trajs=2", "iterations=1", "log_freq=10"]
SETS = [a for t in SMALL for a in ("--set", t)]


def test_tdmpc2_comparison_rows_resume_rerun_and_report(tmp_path, capsys) -> None:
    import compare_tdmpc2

    csv_path, logdir = tmp_path / "compare.csv", tmp_path / "runs"
    args = ["--task", "cartpole-balance", "--steps", "100", "--seed-steps", "50", "--eval-freq", "50", "--episodes", "1",
            "--seeds", "1", "--criteria", "bayes", "--sparsities", "0.5", "--csv", str(csv_path), "--logdir", str(logdir), *SETS]
    compare_tdmpc2.main(args)
    rows = results.read(csv_path)
    assert [(r["algo"], r["criterion"], float(r["sparsity"]), r["protocol"]) for r in rows] == [
        ("tdmpc2", "dense", 0.0, "during"), ("tdmpc2", "bayes", 0.5, "during")]
    assert list(rows[0]) == results.COLUMNS and all(float(r["seconds"]) > 0 for r in rows)
    assert len(list(logdir.glob("cartpole-balance/*/seed-1/events.out.tfevents.*"))) == 2  # one TensorBoard tree
    capsys.readouterr()
    compare_tdmpc2.main(args)  # resumes: every row is there, nothing runs
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["eval_return"] is None
    with pytest.raises(SystemExit, match=r"already holds seed 1 during dense 0.0, .*--set .*batch_size=8 .* there, .*batch_size=16 here"):
        compare_tdmpc2.main(args + ["--set", "batch_size=16"])  # another override: refused before anything runs
    assert results.read(csv_path) == rows

    cmd = shlex.split(rows[1]["command"])
    assert cmd[:2] == ["python", "scripts/compare_tdmpc2.py"]
    out = subprocess.run([sys.executable, *cmd[1:], "--logdir", str(tmp_path / "fresh")], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1])["eval_return"] == pytest.approx(float(rows[1]["eval_return"]), abs=1e-3)

    capsys.readouterr()
    compare_tdmpc2.main(["--report", str(csv_path), "--logdir", str(logdir), "--out", str(tmp_path)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary["tdmpc2/cartpole-balance"]) == {"bayes"}
    text = (tmp_path / "compare_tdmpc2.md").read_text()
    assert "IQM" in text and "wall-clock / dense twin" in text
    assert (tmp_path / "compare_tdmpc2_cartpole-balance_curves.png").stat().st_size > 0


def test_tdmpc2_sensitivity_with_planning_and_with_the_policy_prior(tmp_path, capsys) -> None:
    csv_path = tmp_path / "sens.csv"
    args = ["--algo", "tdmpc2", "--env", "cartpole-balance", "--steps", "100", "--seeds", "1", "--episodes", "1",
            "--criteria", "bayes,magnitude", "--sparsities", "0.5", "--workdir", str(tmp_path / "work"), "--csv", str(csv_path),
            *SETS, "--set", "seed_steps=50"]
    sensitivity.main(args)
    rows = results.read(csv_path)
    assert [(r["criterion"], r["protocol"]) for r in rows] == [
        ("dense", "dense"), ("dense", "dense_prior"), ("bayes", "oneshot"), ("magnitude", "oneshot"),
        ("bayes", "oneshot_prior"), ("magnitude", "oneshot_prior")]
    assert len(list((tmp_path / "work").glob("cartpole-balance/observed/seed-1/checkpoint.pt"))) == 1  # one dense run serves all
    cmd = shlex.split(rows[4]["command"])
    assert cmd[:4] == ["python", "scripts/sensitivity.py", "--algo", "tdmpc2"] and "--set" in cmd
    capsys.readouterr()
    sensitivity.main(["--report", str(csv_path), "--out", str(tmp_path)])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary) == {"tdmpc2/cartpole-balance/oneshot", "tdmpc2/cartpole-balance/oneshot_prior"}


def test_importance_dynamics_figure_from_a_runs_events(tmp_path, capsys) -> None:
    import plot_importance_dynamics

    from tdmpc_prune.tdmpc2.train import train

    trainer = train(["task=cartpole-balance", "model_size=cpu", *SMALL, "seed_steps=50", "steps=200", "eval_freq=25",
                     "eval_episodes=1", "progress=false", "threads=1", f"logdir={tmp_path}", "--prune", "prune.observe=[all]"])
    capsys.readouterr()
    plot_importance_dynamics.main([trainer.directory, "--out", str(tmp_path / "dynamics.png")])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary) == {"grad", "fisher", "bayes"}
    for criterion in summary.values():  # every group of the world model, the coupling latent among them
        assert len(criterion["final_ranking"]) == 10 and "_encoder.state.1" in criterion["final_ranking"]
        assert criterion["crossovers"] >= 0
    assert (tmp_path / "dynamics.png").stat().st_size > 0

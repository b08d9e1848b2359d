# CleanRL-style single-file SAC (continuous actions) with pruning during training.
# The algorithm follows CleanRL's sac_continuous_action.py (Haarnoja et al. 2018, auto-tuned entropy,
# twin Q with target networks, delayed policy updates); the lines marked `# [tdmpc-prune]` are all
# that pruning adds, using only the core adapter contract (`Wiring`) and driver (`PruneDriver`).
#
#   python plugins/cleanrl/sac_continuous_action_pruned.py --env-id Pendulum-v1 --total-timesteps 20000
#   tensorboard --logdir runs
import argparse
import dataclasses
import random
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.tensorboard import SummaryWriter

from tdmpc_prune import PruneDriver, Wiring  # [tdmpc-prune]


@dataclass
class Args:
    exp_name: str = "sac_continuous_action_pruned"
    seed: int = 1
    torch_deterministic: bool = True
    cuda: bool = True
    env_id: str = "Pendulum-v1"
    total_timesteps: int = 20_000
    buffer_size: int = 1_000_000
    gamma: float = 0.99
    tau: float = 0.005
    batch_size: int = 256
    learning_starts: int = 5_000
    policy_lr: float = 3e-4
    q_lr: float = 1e-3
    policy_frequency: int = 2
    target_network_frequency: int = 1
    alpha: float = 0.2
    autotune: bool = True
    hidden: int = 256
    logdir: str = "runs"
    # pruning (any tdmpc_prune.PruneConfig option could be added the same way)
    prune_sparsity: float = 0.5  # [tdmpc-prune]
    prune_criterion: str = "bayes"  # [tdmpc-prune]
    prune_iterations: int = 4  # [tdmpc-prune]
    prune_l1: float = 0.0  # [tdmpc-prune] cosine group-lasso pressure (0: off, the package default)


def parse_args() -> Args:
    parser = argparse.ArgumentParser()
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=f.default)
        else:
            parser.add_argument(flag, type=type(f.default), default=f.default)
    return Args(**vars(parser.parse_args()))


class SoftQNetwork(nn.Module):
    def __init__(self, env, hidden):
        super().__init__()
        obs_dim, act_dim = np.prod(env.observation_space.shape), np.prod(env.action_space.shape)
        self.fc1 = nn.Linear(int(obs_dim + act_dim), hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, 1)

    def forward(self, x, a):
        x = torch.cat([x, a], 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


LOG_STD_MAX = 2
LOG_STD_MIN = -5


class Actor(nn.Module):
    def __init__(self, env, hidden):
        super().__init__()
        obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))
        self.fc1 = nn.Linear(obs_dim, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc_mean = nn.Linear(hidden, act_dim)
        self.fc_logstd = nn.Linear(hidden, act_dim)
        high, low = env.action_space.high, env.action_space.low
        self.register_buffer("action_scale", torch.tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        mean = self.fc_mean(x)
        log_std = torch.tanh(self.fc_logstd(x))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (log_std + 1)
        return mean, log_std

    def get_action(self, x):
        mean, log_std = self(x)
        std = log_std.exp()
        normal = torch.distributions.Normal(mean, std)
        x_t = normal.rsample()
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = normal.log_prob(x_t)
        log_prob -= torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)
        log_prob = log_prob.sum(1, keepdim=True)
        mean = torch.tanh(mean) * self.action_scale + self.action_bias
        return action, log_prob, mean


class ReplayBuffer:
    def __init__(self, size, obs_dim, act_dim, device):
        self.obs = np.zeros((size, obs_dim), np.float32)
        self.next_obs = np.zeros((size, obs_dim), np.float32)
        self.actions = np.zeros((size, act_dim), np.float32)
        self.rewards = np.zeros((size, 1), np.float32)
        self.dones = np.zeros((size, 1), np.float32)
        self.size, self.ptr, self.full, self.device = size, 0, False, device

    def add(self, obs, next_obs, action, reward, done):
        i = self.ptr
        self.obs[i], self.next_obs[i], self.actions[i], self.rewards[i], self.dones[i] = obs, next_obs, action, reward, done
        self.ptr = (i + 1) % self.size
        self.full = self.full or self.ptr == 0

    def sample(self, batch_size):
        idx = np.random.randint(0, self.size if self.full else self.ptr, size=batch_size)
        t = lambda a: torch.as_tensor(a[idx], device=self.device)  # noqa: E731
        return t(self.obs), t(self.actions), t(self.next_obs), t(self.dones), t(self.rewards)


def evaluate(actor, env_id, seed, device, episodes=3):
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + 100 + i)
        done, total = False, 0.0
        while not done:
            with torch.no_grad():
                _, _, action = actor.get_action(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])
            obs, reward, terminated, truncated, _ = env.step(action[0].cpu().numpy())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def main(args: Args) -> dict:
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"
    writer = SummaryWriter(f"{args.logdir}/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    env = gym.wrappers.RecordEpisodeStatistics(gym.make(args.env_id))
    env.action_space.seed(args.seed)
    assert isinstance(env.action_space, gym.spaces.Box), "only continuous action space is supported"
    obs_dim, act_dim = int(np.prod(env.observation_space.shape)), int(np.prod(env.action_space.shape))

    actor = Actor(env, args.hidden).to(device)
    qf1, qf2 = SoftQNetwork(env, args.hidden).to(device), SoftQNetwork(env, args.hidden).to(device)
    qf1_target, qf2_target = SoftQNetwork(env, args.hidden).to(device), SoftQNetwork(env, args.hidden).to(device)
    qf1_target.load_state_dict(qf1.state_dict())
    qf2_target.load_state_dict(qf2.state_dict())
    q_optimizer = optim.Adam(list(qf1.parameters()) + list(qf2.parameters()), lr=args.q_lr)
    actor_optimizer = optim.Adam(list(actor.parameters()), lr=args.policy_lr)

    if args.autotune:
        target_entropy = -torch.prod(torch.Tensor(env.action_space.shape).to(device)).item()
        log_alpha = torch.zeros(1, requires_grad=True, device=device)
        alpha = log_alpha.exp().item()
        a_optimizer = optim.Adam([log_alpha], lr=args.q_lr)
    else:
        alpha = args.alpha

    # [tdmpc-prune] the networks, how to trace them, who trains them, and the target copies
    adapter = Wiring(  # [tdmpc-prune]
        nn.ModuleDict({"actor": actor, "qf1": qf1, "qf2": qf2}),  # [tdmpc-prune] one module, three components
        components={"actor": "actor", "qf1": "qf1", "qf2": "qf2"},  # [tdmpc-prune]
        example_inputs=(torch.zeros(2, obs_dim, device=device), torch.zeros(2, act_dim, device=device)),  # [tdmpc-prune]
        forward_fn=lambda m, x: [*m["actor"](x[0]), m["qf1"](*x), m["qf2"](*x)],  # [tdmpc-prune] the heads
        optimizers=[q_optimizer, actor_optimizer],  # [tdmpc-prune] in the order they step
        mirrors=[(qf1, qf1_target), (qf2, qf2_target)],  # [tdmpc-prune] sliced like their online nets
    )  # [tdmpc-prune]
    pruner = adapter.build(criterion=args.prune_criterion, sparsity=args.prune_sparsity,  # [tdmpc-prune]
                           schedule="iterative", iterations=args.prune_iterations, start=0.2, end=0.6,  # [tdmpc-prune]
                           l1=args.prune_l1)  # [tdmpc-prune]
    adapter.attach(pruner, total_steps=args.total_timesteps, first_step=args.learning_starts)  # [tdmpc-prune]
    driver = PruneDriver(pruner, adapter, sink=writer, log_every=1000)  # [tdmpc-prune]
    driver.start(0)  # [tdmpc-prune]

    rb = ReplayBuffer(min(args.buffer_size, args.total_timesteps), obs_dim, act_dim, device)
    start_time = time.time()
    obs, _ = env.reset(seed=args.seed)
    for global_step in range(args.total_timesteps):
        if global_step < args.learning_starts:
            action = env.action_space.sample()
        else:
            with torch.no_grad():
                action, _, _ = actor.get_action(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])
            action = action[0].cpu().numpy()

        next_obs, reward, terminated, truncated, info = env.step(action)
        if "episode" in info:
            print(f"global_step={global_step}, episodic_return={float(info['episode']['r'])}")
            writer.add_scalar("charts/episodic_return", float(info["episode"]["r"]), global_step)
            writer.add_scalar("charts/episodic_length", float(info["episode"]["l"]), global_step)
        rb.add(obs, next_obs, action, reward, float(terminated))
        obs = next_obs
        if terminated or truncated:
            obs, _ = env.reset()

        if global_step > args.learning_starts:
            data_obs, data_actions, data_next_obs, data_dones, data_rewards = rb.sample(args.batch_size)
            with torch.no_grad():
                next_state_actions, next_state_log_pi, _ = actor.get_action(data_next_obs)
                qf1_next_target = qf1_target(data_next_obs, next_state_actions)
                qf2_next_target = qf2_target(data_next_obs, next_state_actions)
                min_qf_next_target = torch.min(qf1_next_target, qf2_next_target) - alpha * next_state_log_pi
                next_q_value = data_rewards.flatten() + (1 - data_dones.flatten()) * args.gamma * min_qf_next_target.view(-1)

            qf1_a_values = qf1(data_obs, data_actions).view(-1)
            qf2_a_values = qf2(data_obs, data_actions).view(-1)
            qf1_loss = F.mse_loss(qf1_a_values, next_q_value)
            qf2_loss = F.mse_loss(qf2_a_values, next_q_value)
            qf_loss = qf1_loss + qf2_loss
            q_optimizer.zero_grad()
            qf_loss.backward()
            q_optimizer.step()

            if global_step % args.policy_frequency == 0:
                for _ in range(args.policy_frequency):
                    pi, log_pi, _ = actor.get_action(data_obs)
                    min_qf_pi = torch.min(qf1(data_obs, pi), qf2(data_obs, pi))
                    actor_loss = ((alpha * log_pi) - min_qf_pi).mean()
                    actor_optimizer.zero_grad()
                    actor_loss.backward()
                    actor_optimizer.step()
                    if args.autotune:
                        with torch.no_grad():
                            _, log_pi, _ = actor.get_action(data_obs)
                        alpha_loss = (-log_alpha.exp() * (log_pi + target_entropy)).mean()
                        a_optimizer.zero_grad()
                        alpha_loss.backward()
                        a_optimizer.step()
                        alpha = log_alpha.exp().item()

            if global_step % args.target_network_frequency == 0:
                for param, target_param in zip(qf1.parameters(), qf1_target.parameters()):
                    target_param.data.copy_(args.tau * param.data + (1 - args.tau) * target_param.data)
                for param, target_param in zip(qf2.parameters(), qf2_target.parameters()):
                    target_param.data.copy_(args.tau * param.data + (1 - args.tau) * target_param.data)

            driver.step(global_step)  # [tdmpc-prune] clock, pruning events, prune/* logs

            if global_step % 100 == 0:
                writer.add_scalar("losses/qf1_values", qf1_a_values.mean().item(), global_step)
                writer.add_scalar("losses/qf2_values", qf2_a_values.mean().item(), global_step)
                writer.add_scalar("losses/qf1_loss", qf1_loss.item(), global_step)
                writer.add_scalar("losses/qf2_loss", qf2_loss.item(), global_step)
                writer.add_scalar("losses/qf_loss", qf_loss.item() / 2.0, global_step)
                writer.add_scalar("losses/actor_loss", actor_loss.item(), global_step)
                writer.add_scalar("losses/alpha", alpha, global_step)
                writer.add_scalar("charts/SPS", int(global_step / (time.time() - start_time)), global_step)
                if args.autotune:
                    writer.add_scalar("losses/alpha_loss", alpha_loss.item(), global_step)

    eval_return = evaluate(actor, args.env_id, args.seed, device)
    writer.add_scalar("eval/episodic_return", eval_return, args.total_timesteps)
    summary = driver.finish(args.total_timesteps, eval_return, "eval return (mean of 3 episodes)",  # [tdmpc-prune]
                            logdir=f"{args.logdir}/{run_name}", tensorboard_logdir=args.logdir)  # [tdmpc-prune]
    env.close()
    writer.close()
    return {"run_dir": f"{args.logdir}/{run_name}", "eval_return": eval_return, "params": summary.params,
            "dense_params": summary.dense_params, "events": summary.events}


if __name__ == "__main__":
    main(parse_args())

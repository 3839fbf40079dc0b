"""`sql diagnose`: a trained network against the exact answers of a known-answer game.

For a synthetic game (`sqlcli_core.synthetic`) everything a learner should reach is known:
- Q*: value iteration over the game's positions with the run's discount (`chain.optimal_q`);
- the data's own n-step fixed point: Q(s, a) = mean over the data's (s, a) samples of the n-step
  return + gamma^n max_a' Q(s', a') (a' among the actions the data shows at s'; 0 after a terminal).
  Offline n-step Q-learning converges to this, not to Q*, when n > 1 (the returns follow the
  behaviour policy) or when the data ends episodes at a cap;
- the optimal return, random play's return and the data's own return.

The network is evaluated on each position's frame stack as the advancing path reaches it
(`ChainSpec.canonical_stacks`); its greedy return is one episode played greedily in the game.
Errors are taken over the (position, action) pairs the data visits.
"""

from __future__ import annotations

import numpy as np

from sqlcli_core.acting.protocol import PROTOCOLS
from sqlcli_core.data.view import open_run_set
from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.games.catalog import Game, canonical_name, game_index
from sqlcli_core.provenance import provenance
from sqlcli_core.synthetic.chain import ACTION_NAMES, ChainSpec, chain_spec, optimal_q, optimal_return, random_return

READ_ROWS = 8192  # frames decoded per read (84*84 bytes each)
TIE = 1e-9


def read_data(store, spec: ChainSpec) -> dict[str, np.ndarray]:
    """Positions (-1 on padding rows), actions, rewards and terminals of every run of the game in the store,
    concatenated with a padding row between runs (so no n-step window crosses them)."""
    run_set = open_run_set(store, games=[spec.name])
    run_set.check_games([spec.name])
    parts: dict[str, list[np.ndarray]] = {"positions": [], "actions": [], "rewards": [], "terminals": []}
    for view in run_set.runs_of(spec.name):
        a = view.arrays
        positions = np.concatenate([spec.decode(a["frames"][lo:min(lo + READ_ROWS, view.rows)])
                                    for lo in range(0, view.rows, READ_ROWS)] or [np.zeros(0, np.int64)])
        parts["positions"] += [positions, np.array([-1])]
        parts["actions"] += [np.asarray(a["actions"][:view.rows], np.int64), np.array([0])]
        parts["rewards"] += [np.asarray(a["rewards"][:view.rows], np.float64), np.array([0.0])]
        parts["terminals"] += [np.asarray(a["terminals"][:view.rows], bool), np.array([False])]
    if not parts["positions"]:
        raise DataError(f"the store holds no rows of {spec.name}", hint="collect and shard data of that game")
    return {k: np.concatenate(v) for k, v in parts.items()}


def n_step_samples(data: dict[str, np.ndarray], n: int, gamma: float) -> dict[str, np.ndarray]:
    """Every (state, action) sample the data gives an n-step target for: the discounted reward sum over up to n
    rows (stopping at a terminal), the bootstrap discount (gamma^n, or 0 after a terminal) and the state n
    rows on. Samples whose window leaves the data (a run's end, padding) are dropped, as the sampler does."""
    pos, act, rew, term = data["positions"], data["actions"], data["rewards"], data["terminals"]
    rows = len(pos)
    starts = np.flatnonzero(pos >= 0)
    ret = np.zeros(len(starts))
    discount = np.ones(len(starts))
    alive = np.ones(len(starts), bool)  # no terminal yet
    ok = np.ones(len(starts), bool)
    for k in range(n):
        i = starts + k
        inside = i < rows
        ok &= ~alive | (inside & (pos[np.minimum(i, rows - 1)] >= 0))
        i = np.minimum(i, rows - 1)
        ret += np.where(alive, discount * rew[i], 0.0)
        discount = np.where(alive, discount * gamma, discount)
        alive &= ~term[i]
    nxt_i = np.minimum(starts + n, rows - 1)
    nxt = np.where(alive, pos[nxt_i], -1)
    ok &= ~alive | ((starts + n < rows) & (nxt >= 0))
    return {"state": pos[starts][ok], "action": act[starts][ok], "return": ret[ok],
            "discount": np.where(alive, discount, 0.0)[ok], "next": nxt[ok]}


def data_fixed_point(samples: dict[str, np.ndarray], num_states: int, num_actions: int,
                     tolerance: float = 1e-10, max_iterations: int = 100_000) -> np.ndarray:
    """(S, A) fixed point of the data's n-step targets; NaN where the data has no sample of (s, a)."""
    key = samples["state"] * num_actions + samples["action"]
    counts = np.bincount(key, minlength=num_states * num_actions).reshape(num_states, num_actions)
    seen = counts > 0
    q = np.zeros((num_states, num_actions))
    nxt = np.maximum(samples["next"], 0)
    for _ in range(max_iterations):
        v = np.where(seen, q, -np.inf).max(axis=1)
        v = np.where(np.isfinite(v), v, 0.0)
        target = samples["return"] + samples["discount"] * v[nxt]
        updated = np.bincount(key, weights=target, minlength=num_states * num_actions).reshape(q.shape)
        updated = np.divide(updated, counts, out=np.zeros_like(updated), where=seen)
        if np.max(np.abs(updated - q)) <= tolerance:
            q = updated
            break
        q = updated
    return np.where(seen, q, np.nan)


def _errors(q_hat: np.ndarray, reference: np.ndarray, visited: np.ndarray) -> dict:
    diff = np.abs(q_hat - reference)[visited & np.isfinite(reference)]
    return {"max_abs_q_error": float(diff.max()), "mean_abs_q_error": float(diff.mean())}


def greedy_return(policy, game: Game, spec: ChainSpec) -> float:
    """The return of one episode played greedily (epsilon 0) in the game, through the evaluation loop."""
    from sqlcli_core.evaluation.evaluate import EvalConfig, evaluate

    config = EvalConfig(games=(game.name,), seeds=(0,), episodes=1, protocol=PROTOCOLS["no-sticky"], epsilon=0.0,
                        max_steps=spec.cap)
    results, _ = evaluate(policy, config, num_envs=1)
    return float(results[0].score)


def _run_settings(config: dict) -> tuple[float, int, str | None]:
    """(gamma, n_step, data store) of a run's run.json config: a pretrain run keeps them under learner/n_step/data,
    a fine-tuning run (`config.command` finetune-offline or finetune-online) under `settings` (before, its n-step
    and store were not found, so a fine-tuned run was judged against the 1-step fixed point and refused)."""
    if "settings" in config:
        settings = config["settings"]  # the learner nested in it (this release) or flat (0.2)
        gamma = settings.get("learner", {}).get("gamma", settings.get("gamma", 0.99))
        return float(gamma), int(settings.get("n_step", 1)), settings.get("data")
    return float(config.get("learner", {}).get("gamma", 0.99)), int(config.get("n_step", 1)), config.get("data")


def diagnose(policy, game_name: str, store=None, gamma: float | None = None) -> dict:
    """The diagnosis of a loaded policy (`checkpoint.load_policy`) on one synthetic game of its run.

    `store`: the replay store of the run's data (default: the one run.json names). `gamma`: the discount the
    answers are computed for (default: the run's own; another value asks whether the run learned that one)."""
    name = canonical_name(game_name)
    spec = chain_spec(name)
    if spec is None:
        raise UsageError(f"{name} has no known answer", hint="diagnose a synthetic game: see `sql games diagnostic`")
    head = game_index(policy.games, name)
    run_gamma, n_step, run_store = _run_settings(policy.run_config.get("config", {}))
    gamma = run_gamma if gamma is None else float(gamma)
    store = store or run_store
    if not store:
        raise UsageError("the run names no data store", hint="pass --data STORE (the store it was trained on)")
    data = read_data(store, spec)
    q_star = optimal_q(spec, gamma)
    states = data["positions"]
    valid = states >= 0
    counts = np.zeros((spec.length, spec.num_actions), np.int64)
    np.add.at(counts, (states[valid], data["actions"][valid]), 1)
    visited_pairs = counts > 0
    visited_states = visited_pairs.any(axis=1)
    majority = np.argmax(counts, axis=1)
    episodes = int(data["terminals"].sum())
    data_return = float(data["rewards"].sum() / episodes) if episodes else None

    has_values = hasattr(policy, "q_values") and policy.method != "bc"
    result: dict = {"game": name, "run_step": policy.step, "method": policy.method, "gamma": gamma, "run_gamma": run_gamma, "n_step": n_step,
                    "store": str(store), "q_reference": "optimal Q* by value iteration (gamma from the run)"}
    per_state = []
    greedy = None
    if hasattr(policy, "q_values"):
        stacks = spec.canonical_stacks()
        out = policy.q_values(stacks, np.full(spec.length, head, np.int32))[:, :spec.num_actions]
        greedy = np.argmax(out, axis=1)
    optimal = np.abs(q_star - q_star.max(axis=1, keepdims=True)) <= TIE
    if has_values:
        result.update(_errors(out, q_star, visited_pairs))
        fixed = data_fixed_point(n_step_samples(data, n_step, gamma), spec.length, spec.num_actions)
        result["data_fixed_point"] = {
            "against": f"the {n_step}-step fixed point of the behaviour's data (what offline n-step Q-learning "
                       "converges to)", "n_step": n_step, **_errors(out, fixed, visited_pairs),
            "max_abs_gap_to_q_star": float(np.nanmax(np.abs(fixed - q_star)[visited_pairs])),
        }
    else:
        result.update(max_abs_q_error=None, mean_abs_q_error=None,
                      note=f"method {policy.method} has no action values: " + (
                          "action agreement and return only" if hasattr(policy, "q_values") else
                          "return only (it acts on a context of steps, not on one state)"))
        fixed = None
    if greedy is not None:
        result["greedy_action_agreement"] = float(np.mean(optimal[np.flatnonzero(visited_states), greedy[visited_states]]))
        result["data_majority_agreement"] = float(np.mean(greedy[visited_states] == majority[visited_states]))
    else:
        result["greedy_action_agreement"] = None
        result["data_majority_agreement"] = None
    result.update(greedy_return=greedy_return(policy, Game(name), spec), optimal_return=optimal_return(spec, gamma),
                  random_return=random_return(spec), data_return=data_return, data_episodes=episodes,
                  visited_states=int(visited_states.sum()), visited_pairs=int(visited_pairs.sum()),
                  actions=list(ACTION_NAMES))
    for s in range(spec.length):
        row = {"position": s, "q_star": q_star[s].tolist(), "optimal_actions": np.flatnonzero(optimal[s]).tolist(),
               "data_counts": counts[s].tolist(), "data_majority": int(majority[s]) if visited_states[s] else None}
        if greedy is not None:
            row["greedy"] = int(greedy[s])
            row["q_hat" if has_values else "logits"] = out[s].tolist()
        if fixed is not None:
            row["data_fixed_point"] = [None if np.isnan(v) else float(v) for v in fixed[s]]
        per_state.append(row)
    result["states"] = per_state
    result["provenance"] = provenance("diagnose", {"game": name, "store": str(store), "run_step": policy.step},
                                      policy.run_config.get("seed"))
    return result


def summary_line(result: dict) -> str:
    """One line a newcomer can read: 'max Q error 0.03, return 1.00 of optimal 1.00'."""
    parts = []
    if result.get("max_abs_q_error") is not None:
        parts.append(f"max Q error {result['max_abs_q_error']:.2f}")
    if result.get("greedy_action_agreement") is not None:
        parts.append(f"optimal actions {result['greedy_action_agreement']:.0%} of states")
    parts.append(f"return {result['greedy_return']:.2f} of optimal {result['optimal_return']:.2f}")
    return ", ".join(parts)

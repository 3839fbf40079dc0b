"""`sql finetune-online`: online RL on a game variant, from a pre-trained torso or from scratch."""

from __future__ import annotations

from pathlib import Path

import typer

from sqlcli.output import JSON_OPTION, console, emit_summary, handles_errors, require_path


@handles_errors
def finetune_online(
    source: Path | None = typer.Option(None, "--from", help="Pre-trained run directory (or RUN/checkpoints/STEP). "
                                          "With --init scratch it only sets the architecture."),
    game: str = typer.Option(..., "--game", help="Game, e.g. breakout (any case, ALE ids accepted)."),
    mode: int | None = typer.Option(None, "--mode", help="ALE game mode (default: the game's default). "
                                       "Invalid values are refused with ALE's list."),
    difficulty: int | None = typer.Option(None, "--difficulty", help="ALE difficulty (default: the game's default)."),
    run_dir: Path = typer.Option(..., "--run-dir", help="Output run directory; re-running the same command resumes it."),
    steps: int = typer.Option(20_000, "--steps", help="Agent steps (transitions over all environments). Default 20000 (paper)."),
    init: str = typer.Option("pretrained", "--init", help="pretrained (torso from --from) or scratch (the baseline)."),
    freeze: str = typer.Option("none", "--freeze", help="none (train all), torso, or shared (torso + embedding + projection)."),
    num_envs: int = typer.Option(4, "--num-envs", help="Emulators stepped side by side, one batched Q call per step. Default 4."),
    batch_size: int = typer.Option(32, "--batch-size", help="Transitions per gradient step. Default 32."),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate. Default 1e-4 (ours)."),
    adam_eps: float = typer.Option(3.125e-4, "--adam-eps", help="Adam epsilon. Default 3.125e-4."),
    alpha: float = typer.Option(0.0, "--alpha", help="CQL weight; 0 = plain C51. Default 0 (ours)."),
    gamma: float = typer.Option(0.99, "--gamma", help="Discount. Default 0.99."),
    n_step: int = typer.Option(3, "--n-step", help="n-step return length. Default 3 (paper)."),
    target_update_period: int = typer.Option(1000, "--target-update-period", help="Gradient steps between target copies. Default 1000 (ours)."),
    update_period: int = typer.Option(1, "--update-period", help="Agent steps per gradient step. Default 1 (ours)."),
    min_replay: int = typer.Option(1600, "--min-replay", help="Agent steps collected before the first update. Default 1600 (ours)."),
    epsilon_start: float = typer.Option(1.0, "--epsilon-start", help="Exploration epsilon at step 0. Default 1.0."),
    epsilon_end: float = typer.Option(0.01, "--epsilon-end", help="Exploration epsilon after the decay. Default 0.01."),
    epsilon_decay_steps: int = typer.Option(2500, "--epsilon-decay-steps", help="Agent steps of the linear decay. Default 2500 (ours)."),
    replay_capacity: int = typer.Option(1_000_000, "--replay-capacity", help="Replay rows in all (7 KB each, allocated lazily). Default 1M."),
    protocol: str = typer.Option("dopamine", "--protocol", help="Emulator protocol: dopamine (sticky 0.25) or no-sticky."),
    eval_every: int = typer.Option(5000, "--eval-every", help="Agent steps between evaluations. Default 5000."),
    eval_episodes: int = typer.Option(5, "--eval-episodes", help="Episodes per periodic evaluation. Default 5."),
    final_seeds: int = typer.Option(5, "--final-seeds", help="Seeds of the final evaluation. Default 5."),
    final_episodes: int = typer.Option(2, "--final-episodes", help="Episodes per seed of the final evaluation. Default 2."),
    eval_max_steps: int = typer.Option(27_000, "--eval-max-steps", help="Agent-step cap of evaluation episodes. Default 27000 (the protocol's)."),
    checkpoint_every: int = typer.Option(5000, "--checkpoint-every", help="Agent steps between checkpoints. Default 5000."),
    log_every: int = typer.Option(1000, "--log-every", help="Agent steps between metric lines. Default 1000."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation, emulators, exploration and replay. Default 0."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fine-tune online on an ALE game variant; writes RUN/metrics.jsonl, RUN/learning_curve.csv, RUN/eval/final.json."""
    from sqlcli_core.training.finetune_online import OnlineConfig, run_online

    require_path(source, "pre-trained run", hint="pass a run directory written by `sql pretrain`")
    config = OnlineConfig(
        game=game, mode=mode, difficulty=difficulty, init=init, freeze=freeze, steps=steps, num_envs=num_envs,
        batch_size=batch_size, learning_rate=lr, adam_eps=adam_eps, alpha=alpha, gamma=gamma, n_step=n_step,
        target_update_period=target_update_period, update_period=update_period, min_replay=min_replay,
        epsilon_start=epsilon_start, epsilon_end=epsilon_end, epsilon_decay_steps=epsilon_decay_steps,
        replay_capacity=replay_capacity, protocol=protocol, eval_every=eval_every, eval_episodes=eval_episodes,
        final_seeds=final_seeds, final_episodes=final_episodes, eval_max_steps=eval_max_steps,
        checkpoint_every=checkpoint_every, log_every=log_every, seed=seed)

    def progress(record: dict) -> None:
        if record["kind"] == "train":
            rets = record["episode_returns"]
            console.print(f"step {record['step']:>8}  updates {record['grad_steps']:>7}  eps {record['epsilon']:.3f}  "
                          f"episodes {record['episodes']}  return {(sum(rets) / len(rets)) if rets else float('nan'):.1f}  "
                          f"loss {record.get('loss', float('nan')):.3f}  {record['agent_steps_per_s']:.0f} steps/s",
                          highlight=False)
        else:
            console.print(f"step {record['step']:>8}  {'final ' if record.get('final') else ''}eval "
                          f"{record['mean']:.1f} +- {record['std']:.1f} over {len(record['scores'])} episodes",
                          highlight=False)

    summary = run_online(config, run_dir=run_dir, source=source, on_progress=progress)
    console.print(f"{summary['game']} mode {summary['mode']} difficulty {summary['difficulty']}: final score "
                  f"{summary['final_mean']:.1f} +- {summary['final_std']:.1f} after {summary['agent_steps']} agent steps "
                  f"({summary['init']}); {summary['eval_file']}", highlight=False)
    emit_summary(summary, as_json)

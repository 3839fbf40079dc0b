"""`sql finetune-offline`: Scaled QL on a small slice of a new game's data, from a pre-trained torso or scratch."""

from __future__ import annotations

from pathlib import Path

import typer

from sqlcli.output import JSON_OPTION, console, emit_summary, handles_errors


@handles_errors
def finetune_offline(
    source: Path | None = typer.Option(None, "--from", help="Pre-trained run directory (or RUN/checkpoints/STEP). "
                                          "With --init scratch it only sets the architecture."),
    game: str = typer.Option(..., "--game", help="The new game, e.g. Alien (any case, ALE ids accepted)."),
    data: str = typer.Option(..., "--data", help="Zarr store written by `sql shard` that holds the game's data: a "
                              "path or an s3://, gs://, https:// or file:// URL."),
    run_dir: Path = typer.Option(..., "--run-dir", help="Output run directory; re-running the same command resumes it."),
    transitions: int = typer.Option(2_000_000, "--transitions", help="Rows of the game's data to train on (taken as "
                                    "--slice says). Default 2,000,000 (paper)."),
    slice_rule: str = typer.Option("spread", "--slice", help="spread: the rows split evenly over every chosen "
                                   "checkpoint of the chosen runs (ours, inferred); first: the first rows in stream order."),
    runs: str | None = typer.Option(None, "--runs", help="Run numbers of the store to use, e.g. 1 or 1-5. Default: all."),
    checkpoints: str | None = typer.Option(None, "--checkpoints", help="DQN-Replay checkpoint numbers to use, e.g. 0-1. Default: all in the store."),
    init: str = typer.Option("pretrained", "--init", help="pretrained (torso from --from) or scratch (the baseline)."),
    freeze: str = typer.Option("none", "--freeze", help="none (train all), torso, or shared (torso + embedding + projection)."),
    steps: int = typer.Option(50_000, "--steps", help="Gradient steps. Default 50,000 (ours)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Transitions per gradient step. Default 32 (ours)."),
    lr: float = typer.Option(1e-4, "--lr", help="Adam learning rate. Default 1e-4 (ours)."),
    adam_eps: float = typer.Option(3.125e-4, "--adam-eps", help="Adam epsilon. Default 3.125e-4."),
    alpha: float = typer.Option(0.05, "--alpha", help="CQL weight. Default 0.05 (as pre-training; ours)."),
    gamma: float = typer.Option(0.99, "--gamma", help="Discount. Default 0.99."),
    n_step: int = typer.Option(3, "--n-step", help="n-step return length. Default 3 (paper)."),
    target_update_period: int = typer.Option(2000, "--target-update-period", help="Gradient steps between target copies. Default 2000 (paper)."),
    cache_bytes: int = typer.Option(2 << 30, "--cache-bytes", help="Sampler cache of decompressed frames, bytes. Default 2 GiB."),
    protocol: str = typer.Option("dopamine", "--protocol", help="Evaluation protocol: dopamine (sticky 0.25) or no-sticky."),
    final_seeds: int = typer.Option(5, "--final-seeds", help="Seeds of the final evaluation. Default 5."),
    final_episodes: int = typer.Option(2, "--final-episodes", help="Episodes per seed of the final evaluation. Default 2."),
    eval_max_steps: int = typer.Option(27_000, "--eval-max-steps", help="Agent-step cap of evaluation episodes. Default 27000 (the protocol's)."),
    eval_envs: int = typer.Option(16, "--eval-envs", help="Emulators played side by side in the evaluation. Default 16."),
    checkpoint_every: int = typer.Option(5000, "--checkpoint-every", help="Gradient steps between checkpoints. Default 5000."),
    log_every: int = typer.Option(500, "--log-every", help="Gradient steps per metrics line. Default 500."),
    seed: int = typer.Option(0, "--seed", help="Seed of initialisation and sampling. Default 0."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Fine-tune offline on a new game's data; writes RUN/metrics.jsonl and RUN/eval/final.json (raw and human-normalized)."""
    from sqlcli_core.training.finetune_offline import OfflineConfig, run_offline

    config = OfflineConfig(
        game=game, data=str(data), init=init, freeze=freeze, transitions=transitions, runs=runs,
        checkpoints=checkpoints, slice_rule=slice_rule, steps=steps, batch_size=batch_size, learning_rate=lr, adam_eps=adam_eps,
        alpha=alpha, gamma=gamma, n_step=n_step, target_update_period=target_update_period,
        cache_bytes=cache_bytes, protocol=protocol, final_seeds=final_seeds, final_episodes=final_episodes,
        eval_max_steps=eval_max_steps, eval_envs=eval_envs, checkpoint_every=checkpoint_every,
        log_every=log_every, seed=seed)

    def progress(record: dict) -> None:
        console.print(f"step {record['step']:>8}  loss {record['loss']:.4f}  td {record['td_loss']:.4f}  "
                      f"cql {record['cql_loss']:.3f}  Q {record['q_data']:.3f}  {record['steps_per_s']:.1f} steps/s",
                      highlight=False)

    summary = run_offline(config, run_dir=run_dir, source=source, on_log=progress)
    hns = summary["human_normalized"]
    console.print(f"{summary['game']}: final score {summary['final_mean']:.1f} +- {summary['final_std']:.1f}"
                  + (f" ({100 * hns:.1f}% human-normalized)" if hns is not None else "")
                  + f" after {summary['grad_steps']} gradient steps on {summary['data_rows']} rows ({summary['init']}); "
                  f"{summary['eval_file']}", highlight=False)
    emit_summary(summary, as_json)

"""The settings of the training commands, free of JAX so that `--help`, settings files and run.json readers
load them at once: `LearnerConfig` (method and optimiser), `PretrainConfig` (which nests the network's and the
learner's configs), `OfflineConfig` and `OnlineConfig` (the fine-tuning commands). Each field is a
`setting(default, help, tag=...)`: the one home of its default and its --help line."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlcli_core.acting.policies import EpsilonSchedule
from sqlcli_core.acting.protocol import PROTOCOLS
from sqlcli_core.errors import UsageError
from sqlcli_core.methods.catalog import DEFAULT_METHOD, make_method_config, method_entry, method_names
from sqlcli_core.networks.config import AnyNetworkConfig, NetworkConfig
from sqlcli_core.settings import (
    compose,
    flatten,
    merge_settings,
    naming_settings_file,
    nested,
    require_finite,
    setting,
    spec_classes,
    spec_defaults,
)


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """The method and the optimisation settings of the learner (the one home of their defaults).

    The C51 support and the compute dtype belong to the network (`NetworkConfig`). The method's own settings
    (scaled-ql's CQL weight `alpha`) are `method_config`, an instance of the config class its catalog line
    names (None: the method's defaults; a dict is turned into the class); generic fields a method does not
    read (gamma for behaviour cloning) are kept but have no effect.
    """

    method: str = setting(DEFAULT_METHOD, "Training method (docs/pretrain.md): " + "; ".join(
        f"{name}: {method_entry(name).summary}" for name in method_names()) + ".", tag="ours", choices=method_names(), panel="Optimisation")
    learning_rate: float = setting(2e-4, "Adam learning rate.", tag="paper", flag="--lr", panel="Optimisation")
    adam_eps: float = setting(3.125e-4, "Adam epsilon.", tag="ours: the DQN-Replay offline agents'", panel="Optimisation")
    gamma: float = setting(0.99, "Discount per agent step.", tag="paper", panel="Optimisation")
    target_update_period: int = setting(2000, "Gradient steps between hard target copies.", tag="paper", panel="Optimisation")
    max_grad_norm: float | None = setting(None, "Clip gradients to this global L2 norm (none: no clipping).",
                                          tag="ours; the paper states none", panel="Optimisation")
    method_config: Any = None

    def __post_init__(self):
        require_finite(self)
        method_entry(self.method)  # a UsageError naming the methods
        if self.method_config is None or isinstance(self.method_config, dict):
            object.__setattr__(self, "method_config", make_method_config(self.method, self.method_config))
        if self.learning_rate <= 0 or self.adam_eps <= 0:
            raise UsageError("learning rate and Adam eps must be positive", hint="e.g. --lr 2e-4 --adam-eps 3.125e-4")
        if not 0.0 <= self.gamma <= 1.0:
            raise UsageError(f"gamma must lie in [0, 1], got {self.gamma}", hint="e.g. --gamma 0.99")
        if self.target_update_period < 1:
            raise UsageError("--target-update-period must be >= 1", hint="e.g. 2000")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise UsageError("--max-grad-norm must be positive", hint="leave it unset for no clipping")

    def get_method(self) -> Any:
        """The registered `methods.registry.Method` (imports the method's module, and so JAX)."""
        from sqlcli_core.methods.registry import get_method  # JAX: configs stay light for --help

        return get_method(self.method)


# The learner's flat settings (the method's own are the method config's fields, `method_setting_owners`).
LEARNER_SETTINGS = tuple(f.name for f in dataclasses.fields(LearnerConfig) if f.name != "method_config")


INITS = ("pretrained", "scratch")
# The learner settings the fine-tuning commands take (--lr, --adam-eps, --gamma, --target-update-period) and
# the method's own (scaled-ql's --alpha); their defaults are each command's `learner` default.
FINETUNE_LEARNER_OPTIONS = ("learning_rate", "adam_eps", "gamma", "target_update_period", "method_config")


FREEZE_CHOICES = ("none", "torso", "shared")
PROTOCOL_NAMES = tuple(PROTOCOLS)


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """A whole `sql pretrain` run. `network` and `learner` hold the model, method and optimisation settings."""

    data: str = setting(None, "Zarr store written by `sql shard` (path). Required.", panel="Data")
    run_dir: str = setting(None, "Run directory: created if missing, resumed from its newest checkpoint if present. "
                           "Required.", panel="Run")
    games: str = setting("atari40", "Training games: a set (atari40, ...) or comma-separated names.", tag="paper", panel="Data")
    network: AnyNetworkConfig = NetworkConfig()
    learner: LearnerConfig = LearnerConfig()
    batch_size: int = setting(512, "Global batch (samples per step, over all devices and processes).", tag="paper", panel="Optimisation")
    n_step: int = setting(3, "n of the n-step returns (transitions; not read by dt).", tag="paper", panel="Data")
    steps: int = setting(10_000_000, "Total gradient steps of the run (a re-run continues up to it).", tag="paper", panel="Optimisation")
    seed: int = setting(0, "Seed of the initial parameters and of the sampler.", panel="Run")
    checkpoint_every: int = setting(1000, "Gradient steps between checkpoints (the last step is always saved).", panel="Run")
    keep: int = setting(3, "Checkpoints kept (newest).", panel="Run")
    log_every: int = setting(100, "Gradient steps per metrics line (averaged over them).", panel="Run")
    game_weights: dict | None = setting(None, "Relative sampling weight per game, GAME=W pairs (e.g. Pong=2,Breakout=1); "
                                        "games left out weigh 1 (none: uniform over games).", panel="Data")
    cache_bytes: int | None = setting(None, "Sampler chunk cache per process, in bytes (none: the sampler's).", panel="Data")
    prefetch: int = setting(2, "Batches prepared ahead on the devices by a background thread.", panel="Data")
    prefetch_units: int = setting(2, "Sampler cache units loaded ahead by its loader threads (hides a remote "
                                  "store's latency; TOML-only, docs/sampler.md).", cli=False)

    def __post_init__(self):
        for name in ("batch_size", "n_step", "steps", "checkpoint_every", "keep", "log_every", "prefetch", "prefetch_units"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.seed < 0:
            raise UsageError(f"--seed must be >= 0, got {self.seed}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["network"] = self.network.to_dict()
        return d


@dataclasses.dataclass(frozen=True)
class OfflineConfig:
    """Everything `sql finetune-offline` does: the one home of its defaults (docs/transfer.md tags them)."""

    game: str = setting(None, "The new game, e.g. Alien (any case, ALE ids accepted). Required.", panel="Data")
    data: str = setting(None, "Zarr store written by `sql shard` that holds the game's data. Required.", panel="Data")
    init: str = setting("pretrained", "pretrained (torso from --from) or scratch (the baseline).", choices=INITS, panel="Network")
    freeze: str = setting("none", "none (train all), torso, or shared (torso + embedding + projection).", choices=FREEZE_CHOICES, panel="Network")
    transitions: int = setting(2_000_000, "Rows of the game's data to train on, taken as --slice says.",
                               tag="paper: about 2M transitions", panel="Data")
    runs: str | None = setting(None, "Run numbers of the store to use, e.g. 1 or 1-5 (none: all).", panel="Data")
    checkpoints: str | None = setting(None, "DQN-Replay checkpoint numbers to use, e.g. 0-1 (none: all in the store).", panel="Data")
    slice_rule: str = setting("spread", "How the --transitions rows are taken: spread (split evenly over every chosen "
                              "checkpoint of the chosen runs) or first (the first rows in stream order).",
                              flag="--slice", tag="ours, inferred from the authors' 1% experiments", panel="Data")
    steps: int = setting(50_000, "Gradient steps.", panel="Optimisation")
    batch_size: int = setting(32, "Transitions per gradient step.", panel="Optimisation")
    learner: LearnerConfig = nested(LearnerConfig(learning_rate=1e-4, method_config={"alpha": 0.05}),
                                    options=FINETUNE_LEARNER_OPTIONS, panel="Optimisation")
    n_step: int = setting(3, "n-step return length.", tag="paper", panel="Optimisation")
    cache_bytes: int = setting(2 << 30, "Sampler cache of decompressed frames, bytes (2 GiB).", panel="Data")
    protocol: str = setting("dopamine", "Evaluation protocol: dopamine (sticky 0.25) or no-sticky.", tag="paper", choices=PROTOCOL_NAMES, panel="Evaluation")
    final_seeds: int = setting(5, "Seeds of the final evaluation.", panel="Evaluation")
    final_episodes: int = setting(2, "Episodes per seed of the final evaluation.", panel="Evaluation")
    eval_max_steps: int = setting(27_000, "Agent-step cap of evaluation episodes (the protocol's).", tag="paper", panel="Evaluation")
    eval_envs: int = setting(16, "Emulators played side by side in the evaluation.", panel="Evaluation")
    checkpoint_every: int = setting(5000, "Gradient steps between checkpoints.", panel="Run")
    log_every: int = setting(500, "Gradient steps per metrics line.", panel="Run")
    seed: int = setting(0, "Seed of initialisation and sampling.", panel="Run")

    def __post_init__(self):
        require_finite(self)
        if not self.game or not self.data:
            raise UsageError("finetune-offline needs --game and --data", hint="pass the new game and its Zarr store")
        for name in ("transitions", "steps", "batch_size", "final_seeds", "final_episodes", "eval_max_steps",
                     "eval_envs", "checkpoint_every", "log_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        from sqlcli_core.data.slices import SLICE_RULES  # imports zarr: configs stay light for --help

        if self.slice_rule not in SLICE_RULES:
            raise UsageError(f"unknown --slice '{self.slice_rule}'", hint=f"choose {' or '.join(SLICE_RULES)}")

    def identity_fields(self) -> dict:
        """Settings a resumed run must repeat (everything but its length, logging and evaluation)."""
        d = dataclasses.asdict(self)
        for k in ("steps", "checkpoint_every", "log_every", "final_seeds", "final_episodes", "eval_envs",
                  "cache_bytes"):
            d.pop(k)
        return d


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """Everything `sql finetune-online` does: the one home of its defaults (all ours unless tagged)."""

    game: str = setting(None, "Game, e.g. breakout (any case, ALE ids accepted). Required.", panel="Data")
    mode: int | None = setting(None, "ALE game mode (none: the game's default). Invalid values are refused with ALE's list.", panel="Data")
    difficulty: int | None = setting(None, "ALE difficulty (none: the game's default).", panel="Data")
    init: str = setting("pretrained", "pretrained (torso from --from) or scratch (the baseline).", choices=INITS, panel="Network")
    freeze: str = setting("none", "none (train all), torso, or shared (torso + embedding + projection).", choices=FREEZE_CHOICES, panel="Network")
    steps: int = setting(20_000, "Agent steps (transitions over all environments).", tag="paper: about 20k", panel="Optimisation")
    num_envs: int = setting(4, "Emulators stepped side by side, one batched Q call per step.", panel="Data")
    batch_size: int = setting(32, "Transitions per gradient step.", panel="Optimisation")
    learner: LearnerConfig = nested(LearnerConfig(learning_rate=1e-4, target_update_period=1000,
                                                  method_config={"alpha": 0.0}),
                                    options=FINETUNE_LEARNER_OPTIONS, panel="Optimisation")
    n_step: int = setting(3, "n-step return length.", tag="paper", panel="Optimisation")
    update_period: int = setting(1, "Agent steps per gradient step.", panel="Data")
    min_replay: int = setting(1600, "Agent steps collected before the first update.", panel="Data")
    epsilon_start: float = setting(1.0, "Exploration epsilon at step 0.", tag="Dopamine", panel="Data")
    epsilon_end: float = setting(0.01, "Exploration epsilon after the decay.", tag="Dopamine", panel="Data")
    epsilon_decay_steps: int = setting(2500, "Agent steps of the linear decay.", panel="Data")
    replay_capacity: int = setting(1_000_000, "Replay rows in all (7 KB each, allocated lazily).", panel="Data")
    protocol: str = setting("dopamine", "Emulator protocol: dopamine (sticky 0.25) or no-sticky.", tag="paper", choices=PROTOCOL_NAMES, panel="Evaluation")
    eval_every: int = setting(5000, "Agent steps between evaluations.", panel="Evaluation")
    eval_episodes: int = setting(5, "Episodes per periodic evaluation.", panel="Evaluation")
    final_seeds: int = setting(5, "Seeds of the final evaluation.", panel="Evaluation")
    final_episodes: int = setting(2, "Episodes per seed of the final evaluation.", panel="Evaluation")
    eval_max_steps: int = setting(27_000, "Agent-step cap of evaluation episodes (the protocol's).", tag="paper", panel="Evaluation")
    checkpoint_every: int = setting(5000, "Agent steps between checkpoints.", panel="Run")
    log_every: int = setting(1000, "Agent steps between metric lines.", panel="Run")
    seed: int = setting(0, "Seed of initialisation, emulators, exploration and replay.", panel="Run")

    def __post_init__(self):
        require_finite(self)
        if not self.game:
            raise UsageError("finetune-online needs --game", hint="e.g. --game breakout")
        for name in ("steps", "num_envs", "batch_size", "update_period", "eval_every", "eval_episodes",
                     "final_seeds", "final_episodes", "checkpoint_every", "log_every", "eval_max_steps"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.min_replay < 0:
            raise UsageError(f"--min-replay must be >= 0, got {self.min_replay}", hint="e.g. 1600")
        if self.steps < self.min_replay + self.update_period:
            raise UsageError(f"--steps {self.steps} leaves no update: learning starts after --min-replay "
                             f"{self.min_replay} agent steps and updates every --update-period {self.update_period}",
                             hint=f"pass --steps above {self.min_replay + self.update_period - 1} or a smaller --min-replay")
        self.schedule()  # epsilons in [0, 1], a positive decay

    def schedule(self) -> EpsilonSchedule:
        """The exploration schedule, an `acting.policies.EpsilonSchedule`."""
        return EpsilonSchedule(self.epsilon_start, self.epsilon_end, self.epsilon_decay_steps, 0)

    def replay_config(self) -> Any:
        """The online replay's settings, a `data.online_replay.ReplayConfig`."""
        from sqlcli_core.data.online_replay import ReplayConfig  # the data layer: only when a run starts

        return ReplayConfig(capacity=self.replay_capacity, num_envs=self.num_envs, n_step=self.n_step,
                            gamma=self.learner.gamma)

    def identity_fields(self) -> dict:
        """Settings a resumed run must repeat (everything but how long and how often to log/evaluate)."""
        d = dataclasses.asdict(self)
        for k in ("steps", "eval_every", "checkpoint_every", "log_every", "final_seeds", "final_episodes"):
            d.pop(k)
        return d


# ---------------------------------------------------------------------------------------------------------
# The fine-tuning commands' flat settings <-> their configs (the learner nested, run.json in either shape)


def finetune_defaults(cls: type) -> dict:
    """Every flat setting of a fine-tuning config with the command's default (the learner's from its `learner`)."""
    return spec_defaults(cls)


def flat_identity(config: OfflineConfig | OnlineConfig) -> dict:
    """The settings a resumed run must repeat, flat (what `check_resume_settings` compares)."""
    return flatten(type(config), config.identity_fields())


def finetune_settings_from_run(cls: type, command: str, record: dict, extra: tuple[str, ...] = ()) -> dict:
    """The flat settings a fine-tuning run.json records, for `--config RUN/run.json`: `config.settings` nested
    (this release) or flat (0.2 and before), plus the `extra` keys the record keeps beside it (steps...)."""
    config = record.get("config") or {}
    if config.get("command") != command:
        raise UsageError(f"the run.json given to --config is not a `sql {command}` run",
                         hint="pass RUN/run.json of a run of this command, or a TOML file")
    return {**flatten(cls, config.get("settings") or {}), **{k: config[k] for k in extra if k in config}}


def resolve_finetune_config(cls: type, config_file: Any, flags: dict, from_run) -> Any:
    """Defaults <- `--config` (TOML or RUN/run.json) <- the flags given (not None) -> the config."""
    settings = merge_settings(spec_defaults(cls), config_file, flags, from_run=from_run, classes=spec_classes(cls))
    with naming_settings_file(config_file):
        return compose(cls, settings)

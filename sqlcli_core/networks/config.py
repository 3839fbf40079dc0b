"""The network configs, free of JAX and Haiku so that `--help` and settings files can read them: the Scaled QL
network's `NetworkConfig`, the Decision Transformer's `DecisionTransformerConfig`, and the flat settings of both."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sqlcli_core.errors import DataError, UsageError
from sqlcli_core.settings import require_finite, setting

FRAME_SHAPE = (84, 84)


# (layers, model width) at width 1. 10M, 40M, 200M: the paper's sizes; 80M: ours (see the docs).
PRESETS = {"dt-10m": (4, 512), "dt-40m": (6, 768), "dt-80m": (12, 768), "dt-200m": (10, 1280)}


DT_ARCHS = tuple(PRESETS)


KEY_SIZE = 64  # per-head width; heads = model width / 64 (the authors' code)


@dataclasses.dataclass(frozen=True)
class DecisionTransformerConfig:
    """Everything that defines the Decision Transformer's shape (each field's help: `setting(...)`).

    The flat settings of `sql pretrain` (`--arch dt-*`, `--width`, and the TOML keys named like these fields)
    build it; `networks.network_config(settings)` picks this class for a `dt-` arch.
    """

    arch: str = setting("dt-40m", "Decision Transformer preset: dt-10m, dt-40m, dt-80m, dt-200m (layers x model "
                        "width 4x512, 6x768, 12x768, 10x1280).", tag="paper: 10M/40M/200M; dt-80m ours")
    width: float = setting(1.0, "Multiplier of the model width (rounded to a multiple of 8, at least 8; the depth "
                           "stays), for tests and CPU runs.")
    context_steps: int = setting(4, "T, steps per context window (training windows and acting context).",
                                 tag="authors' code")
    patch_size: int = setting(14, "Side of the square frame patches (must divide 84; 14 gives 36 patches).",
                              tag="authors' code")
    return_min: int = setting(-20, "Lowest return-to-go with its own bin.", tag="paper")
    num_return_bins: int = setting(120, "Return bins, one integer return each from return_min up.", tag="paper")
    dropout_rate: float = setting(0.1, "Dropout after attention and MLP while training.", tag="authors' code")
    single_return_token: bool = setting(True, "Only the first step's return token is visible and trained.",
                                        tag="authors' released configuration")
    full_action_space: bool = setting(False, "Act in the 18 ALE actions for every game instead of each game's "
                                      "minimal set (shared by both network families).")

    def __post_init__(self):
        if self.arch not in PRESETS:
            raise UsageError(f"unknown Decision Transformer arch '{self.arch}'", hint="choose one of " + ", ".join(PRESETS))
        if not self.width > 0:
            raise UsageError(f"network width must be positive, got {self.width}", hint="e.g. --width 1.0")
        if self.context_steps < 1:
            raise UsageError(f"context_steps must be at least 1, got {self.context_steps}", hint="the paper uses 4")
        if self.patch_size < 1 or FRAME_SHAPE[0] % self.patch_size or FRAME_SHAPE[1] % self.patch_size:
            raise UsageError(f"patch_size {self.patch_size} does not divide 84", hint="e.g. 14 (36 patches) or 12")
        if self.num_return_bins < 2:
            raise UsageError(f"num_return_bins must be at least 2, got {self.num_return_bins}", hint="the paper uses 120")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise UsageError(f"dropout_rate must lie in [0, 1), got {self.dropout_rate}", hint="e.g. 0.1")

    @property
    def num_layers(self) -> int:
        return PRESETS[self.arch][0]

    @property
    def model_dim(self) -> int:
        return max(8, int(round(PRESETS[self.arch][1] * self.width / 8)) * 8)

    @property
    def num_heads(self) -> int:
        return max(1, self.model_dim // KEY_SIZE)

    @property
    def key_size(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def num_patches(self) -> int:
        return (FRAME_SHAPE[0] // self.patch_size) * (FRAME_SHAPE[1] // self.patch_size)

    @property
    def tokens_per_step(self) -> int:
        return self.num_patches + 3

    @property
    def return_max(self) -> int:
        """The largest return with its own bin; larger returns share it."""
        return self.return_min + self.num_return_bins - 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DecisionTransformerConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"decision transformer config has unknown fields {unknown}",
                            hint="the run was written by a newer sql; upgrade it")
        return cls(**dict(d))


RESNET_LAYOUTS: dict[int, tuple[tuple[int, int, int, int], bool]] = {
    18: ((2, 2, 2, 2), False),
    34: ((3, 4, 6, 3), False),
    50: ((3, 4, 6, 3), True),
    101: ((3, 4, 23, 3), True),
    152: ((3, 8, 36, 3), True),
}
# The numerics a network may compute in (network.py maps them to JAX dtypes).
COMPUTE_DTYPE_NAMES = ("float32", "bfloat16")
ARCHS = ("dqn", "impala") + tuple(f"resnet{d}" for d in sorted(RESNET_LAYOUTS))


FULL_ACTION_SPACE = 18


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Everything that defines the network's shape and numerics (each field's help: `setting(...)`).

    The C51 support (num_atoms atoms evenly spaced in [v_min, v_max]) is read by categorical heads only.
    """

    arch: str = setting("resnet101", "Torso: dqn, impala, resnet18/34/50/101/152; or a Decision Transformer preset "
                        "dt-10m/40m/80m/200m (with --method dt).", tag="paper: the family")
    width: float = setting(1.0, "Channel multiplier of the torso (1.0 = the standard model).")
    num_atoms: int = setting(51, "C51 atoms (categorical heads only).", tag="ours: the C51 default")
    v_min: float = setting(-10.0, "Lowest atom (return units, clipped rewards).", tag="ours: the C51 default")
    v_max: float = setting(10.0, "Highest atom (return units, clipped rewards).", tag="ours: the C51 default")
    spatial_embedding_features: int = setting(8, "F of the learned spatial embedding (its output has C * F "
                                              "features).", tag="ours, from the authors' related public code")
    projection_dim: int = setting(1024, "D, units of the dense projection before feature normalization.")
    num_groups: int = setting(32, "Group-norm groups of the ResNets (gcd(num_groups, channels) where channels is "
                              "smaller).", tag="ours: Wu & He's default")
    normalize_features: bool = setting(True, "Divide the shared feature by its L2 norm before the heads.",
                                       tag="paper")
    full_action_space: bool = setting(False, "Heads of 18 actions for every game instead of the minimal action sets.")
    compute_dtype: str = setting("float32", "float32, or bfloat16 for accelerators (params stay float32; outputs "
                                 "come out float32).")

    def __post_init__(self):
        require_finite(self)
        if self.arch not in ARCHS:
            raise UsageError(f"unknown network arch '{self.arch}'", hint="choose one of " + ", ".join(ARCHS))
        if not self.width > 0:
            raise UsageError(f"network width must be positive, got {self.width}", hint="e.g. --width 1.0")
        if self.num_atoms < 2:
            raise UsageError(f"num_atoms must be at least 2, got {self.num_atoms}", hint="the C51 default is 51")
        if not self.v_min < self.v_max:
            raise UsageError(f"support needs v_min < v_max, got [{self.v_min}, {self.v_max}]",
                             hint="the C51 default is [-10, 10]")
        for field in ("spatial_embedding_features", "projection_dim", "num_groups"):
            if getattr(self, field) < 1:
                raise UsageError(f"{field} must be at least 1, got {getattr(self, field)}")
        if self.compute_dtype not in COMPUTE_DTYPE_NAMES:
            raise UsageError(f"unknown compute dtype '{self.compute_dtype}'",
                             hint="choose one of " + ", ".join(COMPUTE_DTYPE_NAMES))

    def support(self) -> np.ndarray:
        """The atoms z_j: (num_atoms,) float32, evenly spaced in [v_min, v_max]."""
        return np.linspace(self.v_min, self.v_max, self.num_atoms, dtype=np.float32)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NetworkConfig:
        """Inverse of to_dict; unknown keys are an error (a run made by a newer version)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DataError(f"network config has unknown fields {unknown}",
                            hint="the run was written by a newer sql; upgrade it")
        return cls(**dict(d))


AnyNetworkConfig = NetworkConfig | DecisionTransformerConfig


SHARED_FIELDS = ("arch", "width", "full_action_space")


def config_class(arch: str) -> type:
    """The config class of `arch`: DecisionTransformerConfig for dt-*, NetworkConfig otherwise."""
    return DecisionTransformerConfig if str(arch).startswith("dt-") else NetworkConfig


def network_setting_names() -> tuple[str, ...]:
    """Every flat network setting of both families (NetworkConfig's, then the DT's own)."""
    own = tuple(f.name for f in dataclasses.fields(DecisionTransformerConfig) if f.name not in SHARED_FIELDS)
    return tuple(f.name for f in dataclasses.fields(NetworkConfig)) + own


def network_defaults() -> dict[str, Any]:
    """{flat network setting: default} of both families (NetworkConfig's values for the shared ones)."""
    return {**DecisionTransformerConfig().to_dict(), **NetworkConfig().to_dict()}


def network_config(settings: Mapping[str, Any]) -> AnyNetworkConfig:
    """The network config that flat `settings` describe (missing keys at their defaults).

    The arch picks the family; a setting of the other family that is not at its default is refused, since it
    would silently do nothing (e.g. --num-atoms for a Decision Transformer).
    """
    defaults = network_defaults()
    values = {**defaults, **{k: v for k, v in settings.items() if k in defaults}}
    cls = config_class(values["arch"])
    own = {f.name for f in dataclasses.fields(cls)}
    foreign = sorted(k for k in defaults if k not in own and values[k] != defaults[k])
    if foreign:
        family = "the Decision Transformer" if cls is DecisionTransformerConfig else f"the {values['arch']} network"
        hint = ("the DT computes in float32; drop --bf16" if foreign == ["compute_dtype"] else
                f"leave {', '.join(foreign)} at the default, or choose another --arch")
        verb = "does" if len(foreign) == 1 else "do"
        raise UsageError(f"{', '.join(foreign)} {verb} not apply to {family}", hint=hint)
    return cls(**{k: values[k] for k in own})


def config_from_dict(d: Mapping[str, Any]) -> AnyNetworkConfig:
    """Inverse of `config.to_dict()` for either family (the arch says which); unknown keys are a DataError."""
    return config_class(d.get("arch", NetworkConfig.arch)).from_dict(d)


def num_actions_for(config: AnyNetworkConfig, games: Sequence[Any]) -> tuple[int, ...]:
    """Head sizes for `games` (Game objects or ints): their minimal action sets, or 18 each in full mode."""
    if config.full_action_space:
        return (FULL_ACTION_SPACE,) * len(games)
    return tuple(int(g) if isinstance(g, (int, np.integer)) else int(g.num_actions) for g in games)


# depth -> (blocks per stage, bottleneck?)

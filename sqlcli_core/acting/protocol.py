"""The acting protocol: how an emulator is driven (sticky actions, frame skip, episode cap, evaluation
epsilon), by name. Plain data, no emulator: the CLI lists the names without loading ALE."""

from __future__ import annotations

import dataclasses

from sqlcli_core.errors import UsageError

MAX_EPISODE_STEPS = 27_000  # agent steps = 108,000 frames


MAX_SEED = 2**31 - 1  # ALE's vector environment takes seeds in [0, 2^31)


@dataclasses.dataclass(frozen=True)
class ActingProtocol:
    """How the emulator is driven. `dopamine` produced DQN-Replay; `no-sticky` is the Multi-Game DT variant."""

    name: str = "dopamine"
    sticky_action_prob: float = 0.25
    frame_skip: int = 4
    max_episode_steps: int = MAX_EPISODE_STEPS
    epsilon: float = 0.001  # epsilon of the evaluation policy

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROTOCOLS = {
    "dopamine": ActingProtocol(),
    "no-sticky": ActingProtocol(name="no-sticky", sticky_action_prob=0.0),
}


def get_protocol(name: str) -> ActingProtocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise UsageError(f"unknown protocol '{name}'", hint=f"choose one of {', '.join(PROTOCOLS)}") from None


def check_seed(seed: int) -> int:
    """An emulator seed as ALE takes it (both paths): an int in [0, 2^31)."""
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"emulator seed {seed} is outside [0, 2^31)")
    return int(seed)

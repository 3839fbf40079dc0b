"""The behaviour policies of `sql collect`: what `--policy` names, and how each chooses an action per step."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sqlcli_core.errors import UsageError


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """The behaviour policy.

    - `random`: uniform over the game's minimal action set at every step (epsilon unused).
    - `sticky-random`: epsilon-greedy around "repeat the previous action": with probability epsilon a fresh
      uniform action, otherwise the previous one (uniform on an episode's first step). Actions are held for
      1/epsilon steps on average, which explores further than `random` in games that need sustained moves.
    - `pattern`: epsilon-greedy around a fixed cycle of actions (`pattern:1,1,3,0`), indexed by the step
      within the episode.
    - `checkpoint`: epsilon-greedy around the argmax of a trained run's Q-values
      (`checkpoint:RUN` or `checkpoint:RUN/checkpoints/STEP`, read with checkpoint.load_policy) on the
      agent's state: the last 4 frames, zero frames before the episode's first (Dopamine's stack).
    - `mixture`: `mixture:P`, for the known-answer games only: each episode is played by the game's good
      policy with probability P, else by its poor one (`synthetic.chain.ChainSpec.expert_action`),
      epsilon-greedy around that policy's action.
    """

    kind: str = "random"
    epsilon: float = 0.1
    pattern: tuple[int, ...] = ()
    run: str | None = None
    good_share: float = 0.0

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"kind": self.kind}
        if self.kind != "random":
            d["epsilon"] = self.epsilon
        if self.kind == "pattern":
            d["pattern"] = list(self.pattern)
        if self.kind == "checkpoint":
            d["run"] = self.run
        if self.kind == "mixture":
            d["good_share"] = self.good_share
        return d


def parse_policy(text: str, epsilon: float) -> PolicySpec:
    """`random`, `sticky-random`, `pattern:A,B,...` (indices in the minimal action set) or `checkpoint:RUN`."""
    if not 0.0 <= epsilon <= 1.0:
        raise UsageError(f"--epsilon {epsilon} is outside [0, 1]", hint="pass a probability such as 0.1")
    kind, _, arg = text.strip().partition(":")
    kind = kind.lower()
    if kind == "pattern":
        try:
            pattern = tuple(int(x) for x in arg.split(",") if x.strip())
        except ValueError:
            pattern = ()
        if not pattern or min(pattern) < 0:
            raise UsageError(f"bad policy '{text}'", hint="write pattern:A,B,... with action indices >= 0, e.g. pattern:1,1,3")
        return PolicySpec("pattern", epsilon, pattern)
    if kind == "checkpoint":
        if not arg.strip():
            raise UsageError(f"bad policy '{text}'", hint="write checkpoint:RUN_DIR (a run of `sql pretrain`)")
        return PolicySpec("checkpoint", epsilon, run=str(Path(arg.strip()).expanduser().absolute()))
    if kind == "mixture":
        try:
            share = float(arg)
        except ValueError:
            share = -1.0
        if not 0.0 <= share <= 1.0:
            raise UsageError(f"bad policy '{text}'", hint="write mixture:P with P in [0, 1], the share of good episodes, e.g. mixture:0.25")
        return PolicySpec("mixture", epsilon, good_share=share)
    if kind in ("random", "sticky-random") and not arg:
        return PolicySpec(kind, epsilon)
    raise UsageError(f"unknown policy '{text}'", hint="choose random, sticky-random, pattern:A,B,..., checkpoint:RUN_DIR or mixture:P")


class Experts(Protocol):
    """A known-answer game's good and poor policies (for `mixture`): `begin(rng, good)` plans an episode
    (a JSON-serialisable value), `act(plan)` gives the action for the game's current state."""

    def begin(self, rng: np.random.Generator, good: bool) -> Any: ...

    def act(self, plan: Any) -> int: ...


class BehaviourPolicy:
    """Chooses actions (indices into the minimal action set) from the (4, 84, 84) uint8 frame stack.

    Per step, epsilon-greedy kinds draw u ~ U[0, 1) and, when u < epsilon, a uniform action; `random`
    draws only the uniform action. `greedy` maps a state to an action (given for `checkpoint`); `experts`
    are the game's good and poor policies (given for `mixture`: per episode, u ~ U[0, 1) < P picks good).
    """

    def __init__(self, spec: PolicySpec, num_actions: int, seed: int,
                 greedy: Callable[[np.ndarray], int] | None = None, experts: Experts | None = None):
        self.spec = spec
        self.num_actions = num_actions
        self.rng = np.random.default_rng(seed)
        self._greedy = greedy
        self._experts = experts
        self._plan: Any = None
        self._step = 0
        self._previous: int | None = None

    def begin_episode(self) -> None:
        self._step = 0
        self._previous = None
        if self.spec.kind == "mixture":
            good = bool(self.rng.random() < self.spec.good_share)
            self._plan = self._experts.begin(self.rng, good)

    def act(self, state: np.ndarray) -> int:
        """One action for `state` (4, 84, 84) uint8, the last four frames, oldest first."""
        kind = self.spec.kind
        if kind == "random":
            action = int(self.rng.integers(self.num_actions))
        elif self.rng.random() < self.spec.epsilon:
            action = int(self.rng.integers(self.num_actions))
        elif kind == "checkpoint":
            action = self._greedy(state)
        elif kind == "mixture":
            action = self._experts.act(self._plan)
        elif kind == "pattern":
            action = self.spec.pattern[self._step % len(self.spec.pattern)]
        elif self._previous is None:  # sticky-random, first step of an episode
            action = int(self.rng.integers(self.num_actions))
        else:
            action = self._previous
        self._step += 1
        self._previous = action
        return action

    def state_dict(self) -> dict:
        d = {"rng": self.rng.bit_generator.state, "step": self._step, "previous": self._previous}
        if self.spec.kind == "mixture":
            d["plan"] = self._plan
        return d

    def load_state_dict(self, d: dict) -> None:
        self.rng.bit_generator.state = d["rng"]
        self._plan = d.get("plan")
        self._step = d["step"]
        self._previous = d["previous"]


@dataclasses.dataclass(frozen=True)
class EpsilonSchedule:
    """Dopamine's linearly decaying epsilon: `start` during warm-up, then linear to `end` over `decay_steps`."""

    start: float = 1.0
    end: float = 0.01
    decay_steps: int = 2500
    warmup_steps: int = 0

    def __post_init__(self):
        if not (0.0 <= self.end <= 1.0 and 0.0 <= self.start <= 1.0):
            raise UsageError(f"epsilons must lie in [0, 1], got {self.start} and {self.end}",
                             hint="e.g. --epsilon-start 1.0 --epsilon-end 0.01")
        if self.decay_steps < 1:
            raise UsageError(f"--epsilon-decay-steps must be >= 1, got {self.decay_steps}", hint="e.g. 2500")

    def __call__(self, step: int) -> float:
        """Epsilon after `step` agent steps."""
        left = (self.warmup_steps + self.decay_steps - step) / self.decay_steps
        return float(self.end + (self.start - self.end) * np.clip(left, 0.0, 1.0))

"""Chain games: a walk along N positions toward a +1 goal, drawn as 84x84 grey frames.

The agent starts at position 0. Action 0 ("advance") moves one position toward the goal; at the last
position it reaches the goal: reward +1, episode over. Action 1 ("other") is the wrong move: in a *fall*
chain it ends the episode with reward 0, in a *stay* chain the agent stays where it is (reward 0), which
only delays. Moves are deterministic (the acting protocol's sticky actions do not apply: Q* below assumes
deterministic moves). Stay chains end after `cap` steps (1.5 N), fall chains can last at most N steps.

Because the state space is finite and known, the optimal action values are computed exactly by value
iteration (`optimal_q`, any discount) and the return of any policy by propagating the distribution over
positions step by step (`policy_return`). Closed forms, used by the tests as the independent reference:
Q*(s, advance) = gamma^(N-1-s); Q*(s, fall) = 0; Q*(s, stay) = gamma^(N-s).

Variants differ only in what the frame shows (the agent drawn lower, bigger, dimmer, the chain mirrored,
distractor pixels), so multi-game pre-training and held-out variants test what a torso shares.
"""

from __future__ import annotations

import dataclasses

import numpy as np

ADVANCE, OTHER = 0, 1
ACTION_NAMES = ("advance", "other")
FRAME = 84
MARGIN = 4
TRACK_ROW = 70
TRACK_BRIGHTNESS = 60
DISTRACTOR_PIXELS = 60
DISTRACTOR_MAX = 100  # distractors stay darker than any agent, so the agent is always the brightest thing
POOR_STARTS_WRONG = 0.8  # the poor policy takes the wrong action at the start with this probability


@dataclasses.dataclass(frozen=True)
class ChainSpec:
    """One chain game: its dynamics (length, what the other action does, cap) and how its frames look."""

    name: str
    length: int
    other: str = "fall"  # "fall" (ends the episode with 0) or "stay" (self-loop)
    agent_row: int = 30
    agent_size: int = 6
    brightness: int = 255
    mirrored: bool = False
    distractors: bool = False
    summary: str = ""

    @property
    def num_actions(self) -> int:
        return 2

    @property
    def cap(self) -> int:
        """Steps after which an episode ends (a fall chain ends by itself within `length` steps)."""
        return self.length + self.length // 2 if self.other == "stay" else self.length

    # -- dynamics -----------------------------------------------------------------------------------

    def step(self, position: int, action: int) -> tuple[int, float, bool]:
        """(next position, reward, episode over by the game) of one move; the cap is the emulator's."""
        if action == ADVANCE:
            if position == self.length - 1:
                return position, 1.0, True
            return position + 1, 0.0, False
        if self.other == "fall":
            return position, 0.0, True
        return position, 0.0, False

    def tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(next (S, A) int, reward (S, A) float, over (S, A) bool) over every position and action."""
        nxt = np.zeros((self.length, self.num_actions), np.int64)
        reward = np.zeros((self.length, self.num_actions), np.float64)
        over = np.zeros((self.length, self.num_actions), bool)
        for s in range(self.length):
            for a in range(self.num_actions):
                nxt[s, a], reward[s, a], over[s, a] = self.step(s, a)
        return nxt, reward, over

    # -- frames -------------------------------------------------------------------------------------

    def agent_column(self, position: int) -> int:
        span = FRAME - 2 * MARGIN - self.agent_size
        x = MARGIN + int(round(position * span / max(self.length - 1, 1)))
        return FRAME - x - self.agent_size if self.mirrored else x

    def render(self, position: int, rng: np.random.Generator | None = None) -> np.ndarray:
        """The 84x84 uint8 frame of a position (distractor pixels drawn from `rng` where the game has them)."""
        frame = np.zeros((FRAME, FRAME), np.uint8)
        frame[TRACK_ROW:TRACK_ROW + 2, MARGIN:FRAME - MARGIN] = TRACK_BRIGHTNESS
        if self.distractors:
            rng = rng if rng is not None else np.random.default_rng(0)
            rows = rng.integers(0, FRAME, DISTRACTOR_PIXELS)
            cols = rng.integers(0, FRAME, DISTRACTOR_PIXELS)
            frame[rows, cols] = rng.integers(1, DISTRACTOR_MAX + 1, DISTRACTOR_PIXELS).astype(np.uint8)
        x, r, size = self.agent_column(position), self.agent_row, self.agent_size
        frame[r:r + size, x:x + size] = self.brightness
        return frame

    def decode(self, frames: np.ndarray) -> np.ndarray:
        """(N,) positions of (N, 84, 84) frames; -1 where no agent is drawn (DQN-Replay's zero padding rows).

        The agent is the only block of its brightness (track and distractors are darker), so its left
        column, where a full agent-high run of that brightness starts, names the position."""
        frames = np.asarray(frames)
        band = frames[:, self.agent_row:self.agent_row + self.agent_size, :] == self.brightness
        full = band.all(axis=1)
        lookup = np.full(FRAME, -1, np.int64)
        for p in range(self.length):
            lookup[self.agent_column(p)] = p
        return np.where(full.any(axis=1), lookup[np.argmax(full, axis=1)], -1)

    def canonical_stacks(self) -> np.ndarray:
        """(S, 4, 84, 84): each position's frame stack as the advancing path reaches it (zeros before the
        episode's first frame, as the DQN-Replay stack); distractors from a fixed seed."""
        rng = np.random.default_rng(0)
        frames = [self.render(s, rng) for s in range(self.length)]
        stacks = np.zeros((self.length, 4, FRAME, FRAME), np.uint8)
        for s in range(self.length):
            for k in range(4):
                if s - 3 + k >= 0:
                    stacks[s, k] = frames[s - 3 + k]
        return stacks

    # -- behaviour ----------------------------------------------------------------------------------

    def poor_turn(self, rng: np.random.Generator) -> int:
        """Where a poor episode starts taking the wrong action: position 0 with probability 0.8, else a
        uniform later position (so that the wrong action is seen in every position)."""
        if self.length == 1 or rng.random() < POOR_STARTS_WRONG:
            return 0
        return int(rng.integers(1, self.length))

    @staticmethod
    def expert_action(position: int, good: bool, turn: int) -> int:
        """The good policy always advances; a poor one advances until position `turn`, then goes wrong."""
        return ADVANCE if good or position < turn else OTHER


# ------------------------------------------------------------------------------------------- answers


def optimal_q(spec: ChainSpec, gamma: float, tolerance: float = 1e-12, max_iterations: int = 100_000) -> np.ndarray:
    """Q* (S, A) by value iteration: Q(s, a) = r(s, a) + gamma * (1 - over(s, a)) * max_a' Q(s', a')."""
    if not 0.0 <= gamma < 1.0:
        raise ValueError(f"gamma {gamma} must lie in [0, 1)")
    nxt, reward, over = spec.tables()
    q = np.zeros(nxt.shape, np.float64)
    for _ in range(max_iterations):
        updated = reward + gamma * np.where(over, 0.0, q.max(axis=1)[nxt])
        if np.max(np.abs(updated - q)) <= tolerance:
            return updated
        q = updated
    return q


def policy_return(spec: ChainSpec, probabilities: np.ndarray, cap: int | None = None) -> float:
    """Expected undiscounted return of a stationary policy ((S, A) action probabilities) from position 0,
    within `cap` steps (default the game's), by propagating the distribution over positions."""
    nxt, reward, over = spec.tables()
    steps = spec.cap if cap is None else cap
    at = np.zeros(spec.length)
    at[0] = 1.0
    total = 0.0
    for _ in range(steps):
        flow = at[:, None] * probabilities  # (S, A) probability of each (position, action) at this step
        total += float(np.sum(flow * reward))
        at = np.bincount(nxt[~over], weights=flow[~over], minlength=spec.length)
    return total


def greedy_probabilities(q: np.ndarray) -> np.ndarray:
    """The deterministic greedy policy of (S, A) values (ties to the lowest action, as argmax)."""
    p = np.zeros_like(q, dtype=np.float64)
    p[np.arange(len(q)), np.argmax(q, axis=1)] = 1.0
    return p


def optimal_return(spec: ChainSpec, gamma: float = 0.99) -> float:
    return policy_return(spec, greedy_probabilities(optimal_q(spec, gamma)))


def random_return(spec: ChainSpec) -> float:
    return policy_return(spec, np.full((spec.length, spec.num_actions), 1.0 / spec.num_actions))


# ------------------------------------------------------------------------------------------- catalog


def _family() -> dict[str, ChainSpec]:
    base = {
        "Chain-fall-12": ChainSpec("Chain-fall-12", 12, "fall", summary="12 positions; the other action ends the episode"),
        "Chain-stay-12": ChainSpec("Chain-stay-12", 12, "stay", summary="12 positions; the other action stays (cap 18)"),
        "Chain-fall-30": ChainSpec("Chain-fall-30", 30, "fall", summary="30 positions: credit over 30 steps"),
    }
    looks = {
        "low": dict(agent_row=50, summary="Chain-fall-12, agent drawn lower"),
        "big": dict(agent_size=10, summary="Chain-fall-12, agent drawn bigger"),
        "dim": dict(brightness=140, summary="Chain-fall-12, agent drawn dimmer"),
        "mirror": dict(mirrored=True, summary="Chain-fall-12, chain mirrored (goal on the left)"),
        "noise": dict(distractors=True, summary="Chain-fall-12 with distractor pixels in every frame"),
    }
    for suffix, fields in looks.items():
        name = f"Chain-fall-12-{suffix}"
        base[name] = dataclasses.replace(base["Chain-fall-12"], name=name, **fields)
    return base


CHAINS: dict[str, ChainSpec] = _family()
DIAGNOSTIC = tuple(CHAINS)


def chain_spec(name: str) -> ChainSpec | None:
    """The spec of a chain game by its exact catalog name, or None for any other game."""
    return CHAINS.get(name)

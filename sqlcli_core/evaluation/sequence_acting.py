"""How the evaluation loop asks a policy for actions: the seam between `evaluate`'s streams and a policy.

`evaluate` calls, once per step for the running streams (its `_Stream` objects: plan, head, episode, score,
length, stack), `choose(streams, obs, games) -> actions` and, after the protocol's epsilon, `choose.taken(
streams, actions)`. `GreedyActing` plays the argmax of a QPolicy's values; `SampledActing` draws from their
softmax (a BC policy's logits), each draw keyed by the stream's (seed, game, episode, step); `SequenceActing`
drives a SequencePolicy (the Decision Transformer), which needs each stream's context of past steps.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Protocol as TypingProtocol
from typing import runtime_checkable

import numpy as np

from sqlcli_core.games.catalog import Game


@runtime_checkable
class SequencePolicy(TypingProtocol):
    """A policy that acts on each emulator's context of past steps (`checkpoint.SequenceRunPolicy`)."""

    games: list[Game]
    run_config: dict
    step: int | None
    num_actions: tuple[int, ...]  # per head: the game's action-set size

    def actor(self, num_envs: int, acting=None):
        """An object keeping `num_envs` slots (acting: the method's acting settings, None: its defaults): start_episodes(slots, games), act(slots, frames, keys) -> actions,
        record(slots, rewards, terminals, actions) (see methods.decision_transformer.DecisionTransformerPolicy)."""
        ...


class GreedyActing:
    """The action each stream's policy prefers now: argmax of a QPolicy's values (stateless)."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, streams: Sequence, obs: np.ndarray, games: np.ndarray) -> np.ndarray:
        return np.argmax(np.asarray(self.policy.q_values(obs, games))[:len(streams)], axis=1)

    def taken(self, streams: Sequence, actions: Sequence[int]) -> None:
        """The actions really played (after epsilon); a stateless policy needs none of them."""


class SampledActing:
    """An action drawn from the softmax of each stream's policy values (a BC policy's logits over its game's
    actions), from a generator keyed by the stream's (seed, game, episode, step): the draws do not depend on
    which other streams run, nor on the batch."""

    def __init__(self, policy):
        self.policy = policy

    def __call__(self, streams: Sequence, obs: np.ndarray, games: np.ndarray) -> np.ndarray:
        values = np.asarray(self.policy.q_values(obs, games), np.float64)[:len(streams)]
        actions = np.empty(len(streams), np.int64)
        for i, stream in enumerate(streams):
            uniform = np.random.default_rng(stream_key(stream.plan.game, stream.plan.seed, stream.episode,
                                                       stream.length)).random()
            actions[i] = sample_softmax(values[i], uniform)
        return actions

    def taken(self, streams: Sequence, actions: Sequence[int]) -> None:
        """Stateless, as GreedyActing."""


def sample_softmax(values: np.ndarray, uniform: float) -> int:
    """The action whose softmax(values) cumulative interval holds `uniform` in [0, 1) (-inf: never drawn)."""
    real = np.isfinite(values)
    weights = np.where(real, np.exp(values - values[real].max()), 0.0)
    cumulative = np.cumsum(weights / weights.sum())
    chosen = int(np.searchsorted(cumulative, uniform, side="right"))
    return min(chosen, int(np.flatnonzero(real)[-1]))  # a rounding step at 1.0 stays on a real action


class SequenceActing:
    """Drives a SequencePolicy's actor from the evaluation loop's streams.

    Each stream keeps one slot of the actor while it runs (the loop drops finished streams and adds new ones
    at any position). Before acting, each stream's previous step is recorded (its reward: the change of the
    stream's score; the action: the one really taken) or, on a new episode, its slot's context is cleared.
    """

    def __init__(self, policy: SequencePolicy, width: int, acting=None):
        self.actor = policy.actor(width) if acting is None else policy.actor(width, acting)
        self.held: list = [None] * width  # the stream each slot serves
        self.episode = np.full(width, -1, np.int64)
        self.score = np.zeros(width, np.float64)
        self.last_action = np.zeros(width, np.int32)
        self._slots: list[int] = []

    def _assign(self, streams: Sequence) -> tuple[list[int], list[int]]:
        running = {id(s) for s in streams}
        for k, held in enumerate(self.held):
            if held is not None and id(held) not in running:
                self.held[k] = None
        slot_of = {id(held): k for k, held in enumerate(self.held) if held is not None}
        free = [k for k, held in enumerate(self.held) if held is None]
        slots, starting = [], []
        for stream in streams:
            k = slot_of.get(id(stream))
            if k is None:
                k = free.pop(0)
                self.held[k] = stream
                self.episode[k] = -1  # whatever the slot's last stream played, this one starts afresh
            if stream.episode != self.episode[k]:
                starting.append(k)
            slots.append(k)
        return slots, starting

    def __call__(self, streams: Sequence, obs: np.ndarray, games: np.ndarray) -> np.ndarray:
        slots, starting = self._assign(streams)
        by_slot = dict(zip(slots, streams))
        going_on = [k for k in slots if k not in starting]
        if going_on:
            self.actor.record(going_on, [by_slot[k].score - self.score[k] for k in going_on], [False] * len(going_on),
                              self.last_action[going_on])
        if starting:
            self.actor.start_episodes(starting, [by_slot[k].head for k in starting])
            self.episode[starting] = [by_slot[k].episode for k in starting]
        keys = np.stack([stream_key(s.plan.game, s.plan.seed, s.episode, s.length) for s in streams])
        actions = np.asarray(self.actor.act(slots, np.stack([s.stack for s in streams]), keys))
        self.score[slots] = [s.score for s in streams]
        self._slots = slots
        return actions

    def taken(self, streams: Sequence, actions: Sequence[int]) -> None:
        self.last_action[self._slots] = np.asarray(actions, np.int32)


def stream_key(game: str, seed: int, episode: int, step: int) -> np.ndarray:
    """(2,) uint32 PRNG key of a sequence policy's draws at `step` of an episode of the stream (game, seed)."""
    return np.random.SeedSequence([seed, zlib.crc32(game.encode()), episode, step]).generate_state(2, np.uint32)

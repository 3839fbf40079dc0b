"""The cache-replacement schedule the samplers share: which store unit each cache slot holds at each batch.

Pure arithmetic on the sampler's seed, so that a sampler restored from its state_dict (or started on
another host) rebuilds exactly the cache an uninterrupted one would have: replacement e goes to slot
e % slots, `B / (reuse * U)` replacements happen per batch, and each unit is drawn with probability
proportional to its valid count within the slot's game.

A sampler that mixes this in provides: batch_size, reuse (a Fraction), unit_rows, seed, process_index,
process_count, slots, slots_per_game, and `_game_units[g] = (run ids, unit ids, cumulative valid counts)`.
"""

from __future__ import annotations

import numpy as np


class UnitSchedule:
    def _events_before(self, t: int) -> int:
        """Number of unit replacements applied before batch t: floor(t * B / (reuse * U))."""
        return (t * self.batch_size * self.reuse.denominator) // (self.unit_rows * self.reuse.numerator)

    def _rng(self, kind: int, n: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.process_index, self.process_count, kind, n])

    def _draw_unit(self, slot: int, kind: int, n: int) -> tuple[int, int]:
        """(run id, unit id) for logical `slot`, drawn with probability proportional to valid counts."""
        rid, uid, cdf = self._game_units[slot // self.slots_per_game]
        j = int(np.searchsorted(cdf, self._rng(kind, n).integers(cdf[-1]), side="right"))
        return int(rid[j]), int(uid[j])

    def _event_unit(self, e: int) -> tuple[int, int]:
        """The unit replacement e loads (into slot e % slots)."""
        return self._draw_unit(e % self.slots, 1, e)

    def _slot_unit_at(self, slot: int, events: int) -> tuple[int, int]:
        """What logical slot holds after `events` replacements."""
        if events <= slot:
            return self._draw_unit(slot, 0, slot)
        return self._event_unit(slot + self.slots * ((events - 1 - slot) // self.slots))

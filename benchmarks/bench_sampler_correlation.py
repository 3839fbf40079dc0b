"""Within-batch correlation of ReplaySampler for atari40 at batch 512: a chi-square per game and batch.

What the cache costs: a batch draws each game's samples from only the K units resident for that game.
For one batch and one game with m samples, Pearson's X^2 of the per-unit counts against the game's
unit probabilities (valid indices of the unit / valid indices of the game) has expectation N_u - 1
(its degrees of freedom) for i.i.d. draws, and (N_u - 1) * (1 + (m - 1) / K) when every sample first
picks one of K slots whose units were drawn i.i.d. from those probabilities: the ratio X^2 / dof does
not depend on the store's size. So a small store with 40 games measures what atari40 at full size gets.

The script builds that store (40 games x 1 run, frame chunk 32, unit = 1 chunk = 32 rows; the cache is
given in slots per game, since that is what matters), then for each K in --slots draws --batches batches
of 512 and reports mean X^2 / dof over all (batch, game) pairs with m >= 2, next to i.i.d. draws of the
same sizes (the baseline, ~1) and the formula. Default cache sizes for atari40 (unit 2048 rows):
2 GiB = 3 slots per game (before), 10 GiB = 18 (now: 256 MiB per game).

    python -m benchmarks.bench_sampler_correlation [--slots 3,8,18] [--batches 100] [--store DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from sqlcli_core.data import store as st  # noqa: E402
from sqlcli_core.data import transitions as tr  # noqa: E402
from sqlcli_core.data.sampler import ReplaySampler, slot_bytes
from sqlcli_core.games.catalog import minimal_action_set, resolve_games
from tests.replay_fixture import write_run  # noqa: E402

CHUNK, N_STEP, BATCH = 32, 3, 512


def build_store(root: Path) -> Path:
    src, dst = root / "src", root / "store"
    if (dst / "zarr.json").exists():
        return dst
    for k, game in enumerate(resolve_games("atari40")):
        write_run(src, game.name, 1, capacity=200, total=1200, num_actions=len(minimal_action_set(game.name)),
                  seed=k, mean_episode=60)
    st.shard(src, dst, config=st.ShardConfig(frame_chunk=CHUNK, scalar_chunk=256), jobs=1)
    return dst


def unit_probabilities(store: Path, games: list[str]) -> list[np.ndarray]:
    """Per game: (units,) probability of each unit = its valid indices / the game's (unit u owns [uU+3, (u+1)U+3))."""
    out = []
    root = st.open_store(store)
    for g in games:
        meta = st.run_meta(root[g]["1"])
        valid = np.flatnonzero(tr.valid_mask(root[g]["1"]["terminals"][: meta["rows"]], meta["segments"], N_STEP))
        counts = np.bincount((valid - tr.PADDING_ROWS) // CHUNK).astype(np.float64)
        out.append(counts / counts.sum())
    return out


def chi2_per_dof(unit_of_sample: np.ndarray, p: np.ndarray) -> float | None:
    m = len(unit_of_sample)
    if m < 2:
        return None
    nz = p > 0
    c = np.bincount(unit_of_sample, minlength=len(p))[nz]
    e = m * p[nz]
    return float(((c - e) ** 2 / e).sum() / (nz.sum() - 1))


def measure(store: Path, games: list[str], probs: list[np.ndarray], slots: int, batches: int) -> dict:
    cache = (slots * len(games) + 2) * slot_bytes(CHUNK, N_STEP)
    rng = np.random.default_rng(0)
    fast, iid, sizes = [], [], []
    t0 = time.perf_counter()
    with ReplaySampler(store, games=games, batch_size=BATCH, n_step=N_STEP, seed=1, cache_bytes=cache,
                       unit_chunks=1) as s:
        assert s.slots_per_game == slots, (s.slots_per_game, slots)
        for _ in range(batches):
            _, keys = s.next_batch_with_keys()
            for g in range(len(games)):
                rows = keys[keys[:, 0] == g, 2]
                x = chi2_per_dof((rows - tr.PADDING_ROWS) // CHUNK, probs[g])
                if x is not None:
                    fast.append(x)
                    sizes.append(len(rows))
                    iid.append(chi2_per_dof(rng.choice(len(probs[g]), size=len(rows), p=probs[g]), probs[g]))
    m = np.array(sizes, dtype=np.float64)
    return {"slots_per_game": slots, "chi2_per_dof": round(float(np.mean(fast)), 3),
            "iid_chi2_per_dof": round(float(np.mean(iid)), 3),
            "formula_1_plus_m_minus_1_over_K": round(float(np.mean(1 + (m - 1) / slots)), 3),
            "mean_samples_per_game": round(float(m.mean()), 2), "pairs": len(fast),
            "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slots", default="3,8,18", help="slots per game to measure (comma-separated)")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--store", type=Path, default=None, help="keep the 40-game store here (built if absent)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = build_store(args.store or Path(tmp))
        games = [g.name for g in resolve_games("atari40")]
        probs = unit_probabilities(store, games)
        rows = [measure(store, games, probs, int(k), args.batches) for k in args.slots.split(",")]
    print(json.dumps({"games": len(games), "batch_size": BATCH, "units_per_game": int(np.mean([len(p) for p in probs])),
                      "results": rows}, indent=1))


if __name__ == "__main__":
    main()

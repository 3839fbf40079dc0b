"""`sql eval --record GAME`: an RGB MP4 of the recorded episode, the unprocessed screen beside the agent's view.

Evaluation keeps only the agent's 84x84 frames (the vector emulators do not hand out screens). The episode is
deterministic given its emulator seed and the actions sent (sticky actions come from the emulator's seeded
generator), so the video is made by replaying those actions in one `AtariGame` with the same seed, reading
ALE's RGB screen after each agent step. The replay's 84x84 frames are compared with the recorded ones, step by
step: where they differ (they should not), the video stops there and the caller is told.

The MP4 (H.264, yuv420p, through imageio-ffmpeg's bundled ffmpeg) runs at the game's real speed: 60 emulator
frames per second / frame skip = 15 agent steps per second. Each video frame: the screen at 2x (420x320) on the
left, the agent's view at 5x (420x420, grey) on the right, on a canvas whose sides are multiples of 16.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCREEN_SCALE, VIEW_SCALE = 2, 5
CANVAS = (432, 768)  # (height, width): 210*2 and 84*5 = 420 rows, 160*2 + 16 + 420 = 756 columns, padded to 16


@dataclass(frozen=True)
class Replay:
    screens: list[np.ndarray]   # (210, 160, 3) uint8 RGB, one per agent frame (the first after reset)
    views: list[np.ndarray]     # (84, 84) uint8, the agent's frames of the replay
    matched: int                # leading frames equal to the recorded ones (all of them when the replay is exact)


def replay_episode(game, env_seed: int, actions: Sequence[int], recorded: Sequence[np.ndarray], *, protocol,
                   mode: int | None = None, difficulty: int | None = None) -> Replay:
    """Play `actions` from a fresh emulator seeded `env_seed`; screens and views up to the first frame that
    differs from `recorded` (the agent's frames as evaluation saw them)."""
    from sqlcli_core.acting.ale_env import AtariGame

    env = AtariGame(game, protocol=protocol, mode=mode, difficulty=difficulty, seed=env_seed)
    try:
        views, screens = [env.reset()], [env.screen_rgb().copy()]
        if not np.array_equal(views[0], recorded[0]):
            return Replay([], [], 0)
        for action, expected in zip(actions, recorded[1:]):
            frame, _, _ = env.step(int(action))
            if not np.array_equal(frame, expected):
                break
            views.append(frame)
            screens.append(env.screen_rgb().copy())
    finally:
        env.close()
    return Replay(screens, views, len(views))


def video_frame(screen: np.ndarray, view: np.ndarray) -> np.ndarray:
    """One (432, 768, 3) uint8 frame: the RGB screen at 2x on the left, the agent's view at 5x on the right."""
    canvas = np.zeros((*CANVAS, 3), np.uint8)
    big_screen = screen.repeat(SCREEN_SCALE, axis=0).repeat(SCREEN_SCALE, axis=1)
    big_view = view.repeat(VIEW_SCALE, axis=0).repeat(VIEW_SCALE, axis=1)
    top = (CANVAS[0] - big_screen.shape[0]) // 2
    canvas[top:top + big_screen.shape[0], :big_screen.shape[1]] = big_screen
    left = big_screen.shape[1] + 16
    canvas[top:top + big_view.shape[0], left:left + big_view.shape[1]] = big_view[..., None]
    return canvas


def write_mp4(path: str | Path, replay: Replay, *, frame_skip: int = 4) -> Path:
    """Write the replay as an MP4 at the game's real speed, atomically (a temporary name, then a rename)."""
    import imageio.v2 as imageio  # optional at import time: only --record needs ffmpeg

    path = Path(path)
    partial = path.with_name(f".{path.name}.partial.mp4")  # ffmpeg picks the container from the suffix
    try:
        writer = imageio.get_writer(partial, fps=60 / frame_skip, codec="libx264", quality=8,
                                    pixelformat="yuv420p", macro_block_size=16, ffmpeg_log_level="error")
        try:
            for screen, view in zip(replay.screens, replay.views):
                writer.append_data(video_frame(screen, view))
        finally:
            writer.close()
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path

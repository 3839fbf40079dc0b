"""Reading TensorBoard event files back without TensorBoard: the TFRecord framing parsed by hand."""

from __future__ import annotations

import struct
from pathlib import Path


def read_tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the event files in `folder`, in file order (u64 length, u32 crc, payload,
    u32 crc per record; payloads decoded with the Event protobuf). A session restart at step S (what a
    resumed run writes, `purge_step`) hides the earlier values at steps >= S, as TensorBoard does."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, offset = path.read_bytes(), 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            if offset + 16 + length > len(data):
                break  # a record cut by a kill
            event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                scalars = {tag: [(s, v) for s, v in values if s < event.step] for tag, values in scalars.items()}
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars

"""Checksums of what a checkpoint saves, so that a damaged checkpoint is never trained on or evaluated.

At every save the checkpointer hashes each top-level item of the train state on the host (params,
target_params, opt_state, step, rng; the online fine-tuning replay and frame stacks too) and puts the hashes
into the checkpoint's JSON item (`meta["checksums"]`), together with a hash of the JSON item itself
(`meta["meta_sha256"]`). Orbax commits the arrays and the JSON item in one rename, so there is no moment at
which a committed checkpoint lacks its checksums. Restoring hashes what was read and compares: a flipped
byte, a truncated or deleted file (Orbax raises, or reads other values) all make the checkpoint "damaged".

Hashes are of values, not of files: a leaf contributes its dtype, its shape and its bytes (C order), in
`jax.tree.leaves` order, so they do not depend on how Orbax lays out files, nor on the shardings restored.
The same host copy is checked for non-finite floats: a state with NaN or inf is never saved.

Checkpoints written before checksums existed have none; they are restored unverified.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np

CHECKSUMS = "checksums"
META_SHA = "meta_sha256"
# Items whose floats must be finite for a checkpoint to be written (the replay holds clipped rewards only).
FINITE_ITEMS = ("params", "target_params", "opt_state")


class CheckpointDamaged(Exception):
    """A checkpoint that cannot be read back as it was written; `reason` says what is wrong, in a few words."""

    def __init__(self, reason: str):
        self.reason = reason
        super().__init__(reason)


def top_items(tree: Any) -> dict[str, Any]:
    """The named top-level items of a saved state: a NamedTuple's fields or a dict's keys."""
    if hasattr(tree, "_fields"):
        return dict(zip(tree._fields, tree))
    if isinstance(tree, dict):
        return dict(tree)
    raise TypeError(f"a checkpoint state must be a NamedTuple or a dict, got {type(tree).__name__}")


def host_array(leaf: Any) -> np.ndarray:
    """This process's copy of a (replicated) leaf as numpy."""
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)
    return np.asarray(jax.device_get(leaf))


def item_checksum(item: Any) -> str:
    """sha256 over the item's leaves in tree order: dtype, shape and C-order bytes of each."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(item):
        array = host_array(leaf)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(np.ascontiguousarray(array).reshape(-1).view(np.uint8).data)
    return digest.hexdigest()


def first_non_finite(state: Any) -> str | None:
    """The name of the first item of FINITE_ITEMS holding a NaN or inf, or None when all are finite."""
    for name, item in top_items(state).items():
        if name not in FINITE_ITEMS:
            continue
        for leaf in jax.tree.leaves(item):
            array = host_array(leaf)
            if np.issubdtype(array.dtype, np.inexact) and not np.isfinite(array).all():
                return name
    return None


def state_checksums(state: Any) -> dict[str, str]:
    """{item name: checksum} of every top-level item of a state about to be saved."""
    return {name: item_checksum(item) for name, item in top_items(state).items()}


def _meta_digest(meta: dict) -> str:
    body = {k: v for k, v in meta.items() if k != META_SHA}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def seal_meta(meta: dict, checksums: dict[str, str]) -> dict:
    """The JSON item with the state's checksums and its own hash."""
    sealed = {**meta, CHECKSUMS: checksums}
    sealed[META_SHA] = _meta_digest(sealed)
    return sealed


def has_checksums(meta: dict) -> bool:
    return META_SHA in meta


def verify_meta(meta: dict) -> None:
    """Raise CheckpointDamaged when the JSON item does not match its own hash (legacy items pass)."""
    if has_checksums(meta) and _meta_digest(meta) != meta[META_SHA]:
        raise CheckpointDamaged("its JSON item does not match its checksum")


def verify_items(restored: dict[str, Any], meta: dict) -> None:
    """Raise CheckpointDamaged when a restored item's values differ from what was saved."""
    if not has_checksums(meta):
        return
    saved = meta.get(CHECKSUMS) or {}
    for name, item in restored.items():
        if name not in saved:
            raise CheckpointDamaged(f"it has no checksum of its {name}")
        if item_checksum(item) != saved[name]:
            raise CheckpointDamaged(f"its {name} item does not match its checksum")

"""What produced a result: config, seed, package versions, host. Stamped into every result file."""

from __future__ import annotations

import datetime as _dt
import platform
import sys
from importlib import metadata
from typing import Any

from sqlcli_core import __version__

_PACKAGES = (
    "jax", "jaxlib", "dm-haiku", "optax", "rlax", "chex", "ale-py", "gymnasium",
    "orbax-checkpoint", "zarr", "numpy",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages whose behaviour a result depends on."""
    versions = {"sql": __version__, "python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(command: str, config: dict[str, Any], seed: int | None) -> dict[str, Any]:
    """The block every result file carries: which command, with what config and seed, on what software."""
    return {
        "command": command,
        "config": config,
        "seed": seed,
        "versions": package_versions(),
        "host": platform.node(),
        "platform": platform.platform(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }

"""Where an exporter's whole output goes when it fails: one file per stage node, whose path the error prints."""

from __future__ import annotations

import tempfile
from pathlib import Path


def exporter_log(node_id: str) -> Path:
    """`<tmp>/speechport-logs/<node>.log`, its directory created; the staging directory is gone once a stage fails."""
    directory = Path(tempfile.gettempdir()) / "speechport-logs"
    directory.mkdir(exist_ok=True)
    return directory / f"{node_id.replace('/', '_')}.log"

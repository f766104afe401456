"""What every benchmark script records: when and where it ran, and one JSON line per result."""
from __future__ import annotations

import datetime
import json
import platform
import resource
from pathlib import Path

import torch


def run_meta(**extra) -> dict:
    """Date (UTC), machine and thread count, torch version, plus the script's own fields."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, **extra}


def emit(row: dict, path: str | Path) -> dict:
    """Print ``row`` (with the process's peak RSS so far) as one JSON line and append it to ``path``."""
    row = {**row, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    line = json.dumps(row)
    print(line, flush=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(line + "\n")
    return row

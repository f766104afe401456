"""What every benchmark script records: when and where it ran, and one JSON line per result."""
from __future__ import annotations

import datetime
import platform
import resource
from pathlib import Path

import numpy as np
import torch

from unlearnable.data.store import json_text


def seed_list(text: str, default: int, flag: str = "--victim-seeds") -> list[int]:
    """``--victim-seeds 0,1,2`` as a list; empty: ``[default]`` (the script's ``--seed``)."""
    return number_list(text, int, flag) if text else [default]


def number_list(text: str, kind: type, flag: str) -> list:
    """A comma-separated ``flag`` value as numbers of ``kind``, parsed before any work: a bad one is one line."""
    from unlearnable.errors import UnlearnableError

    try:
        return [kind(v) for v in text.split(",")]
    except ValueError:
        what = "integers" if kind is int else "numbers"
        raise UnlearnableError(f"{flag} takes comma-separated {what}, got {text!r}") from None


def budget_list(text: str, flag: str = "--eps") -> list[float]:
    """Comma-separated budgets, each ``8/255``, ``8`` (8-bit levels) or a fraction of the pixel range below 1
    (``0.3``), as radii on [0, 1]. ``1.0`` is refused: it read as the whole range where ``1`` reads as one level."""
    from unlearnable.errors import UnlearnableError
    from unlearnable.params import parse_fraction

    out = []
    for item in (t.strip() for t in text.split(",")):
        try:
            value = parse_fraction(item)  # 8/255 too
        except (ValueError, ZeroDivisionError):
            raise UnlearnableError(f"{flag}: cannot read {item!r}; give 8/255, 8 (levels) or 0.0314") from None
        levels = not any(c in item.lower() for c in "./e")
        if levels and not 1 <= value <= 255:
            raise UnlearnableError(f"{flag}: {item} levels: a budget in 8-bit levels lies in 1..255")
        if "/" in item and not 0 < value <= 1:
            raise UnlearnableError(f"{flag}: {item} is not a budget between 0 and the whole pixel range")
        if not levels and "/" not in item and not 0 < value < 1:
            raise UnlearnableError(f"{flag}: {item}: give 8-bit levels as whole numbers (8) and fractions of the "
                                   "pixel range below 1 (0.0314)")
        out.append(value / 255 if levels else value)
    return out


def victim_runs(data, test, model: str, cfg, seeds: list[int]) -> list:
    """One victim (``unlearnable.training.train``) per seed: their ``TrainResult`` objects."""
    import dataclasses

    from unlearnable.training import train

    return [train(data, test, model, dataclasses.replace(cfg, seed=s)) for s in seeds]


def summary(key: str, values: list[float]) -> dict:
    """``{key: value}`` for one run; for several, ``key`` is their mean, with ``key_runs`` and ``key_std`` beside it
    (their sample standard deviation: how far the victim's own seed moves the figure)."""
    if len(values) == 1:
        return {key: values[0]}
    return {key: float(np.mean(values)), f"{key}_runs": values, f"{key}_std": float(np.std(values, ddof=1))}


def poisoned_share(name: str, data) -> float:
    """The fraction of ``data`` an attack changed: its manifest's ``changed`` record when it has one (a set saved
    with ``--set ratio=0.4`` is 40% poisoned though it has no ``partial`` record), else the ``partial`` ratio."""
    if name == "clean":
        return 0.0
    if "changed" in data.provenance:
        return round(len(data.provenance["changed"]) / len(data), 4)
    return data.provenance.get("partial", {}).get("ratio", 1.0)


def run_meta(**extra) -> dict:
    """Date (UTC), machine and thread count, torch version, plus the script's own fields."""
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
            "torch": torch.__version__, **extra}


def emit(row: dict, path: str | Path) -> dict:
    """Print ``row`` (with the process's peak RSS so far) as one JSON line and append it to ``path``."""
    row = {**row, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}
    line = json_text(row)
    print(line, flush=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab+") as f:  # appends, wherever it has read
        size = f.seek(0, 2)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":  # a line a crash cut short: this row starts a line of its own
                line = "\n" + line
        f.write(line.encode() + b"\n")
    return row


def measured_before(path: str | Path, key: dict) -> dict | None:
    """``--resume``: the row an earlier run appended to ``path`` whose fields hold every item of ``key`` (what was
    measured: the method, its options, the set, the victims' seeds), or None. The caller skips that job, so a
    benchmark stopped after some of its rows goes on where it stopped; the machine and date are not in ``key``, so a
    row measured elsewhere counts too (rows say where they ran). A line cut short by a crash is passed over."""
    import json

    path = Path(path)
    if not path.is_file():
        return None
    key = json.loads(json_text(key))  # as a row reads back: tuples as lists, numpy numbers as plain ones
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and all(k in row and row[k] == v for k, v in key.items()):
            return row
    return None


def job_key(meta: dict, **job) -> dict:
    """What a row measured, for :func:`measured_before`: the script's fields (``run_meta``'s date, machine and
    torch version left out) and the job's own (``set=NAME``, ``eps=...``)."""
    return {**{k: v for k, v in meta.items() if k not in ("date", "machine", "torch")}, **job}


def skip_note(what: str, row: dict, path: str | Path) -> None:
    """Say that ``--resume`` skips ``what``: measured on ``row``'s date, in ``path``."""
    import sys

    print(f"--resume: {what} was measured on {row.get('date', '?')} ({path}); skipped", file=sys.stderr, flush=True)


def run_script(main, resumable: bool = False) -> None:
    """A benchmark's entry point: bad input (an unknown attack, a malformed ``--set``, an unreadable set) is one
    ``error:`` line and exit code 2, as on the package's command line; Ctrl-C says "aborted" (and, for a
    ``resumable`` script, that ``--resume`` goes on from the rows written) and exits 130."""
    import sys

    from unlearnable.errors import UnlearnableError

    try:
        main()
    except (UnlearnableError, OSError) as e:  # an unwritable --json or --out as well
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        then = ("the rows measured so far are in --json: run it again with --resume to go on" if resumable else
                "this benchmark keeps no state: running it again starts over")
        print(f"aborted ({then})", file=sys.stderr)
        raise SystemExit(130) from None


def set_jobs(sets, ratios: str = "", clean: bool = False, data: str = "", seed: int = 0) -> list:
    """``(name, ImageSet)`` for each saved set, or for each of its ``ratios`` (comma-separated, ``data.partial`` with
    ``seed``), plus the clean training split of the first set's source (or of ``data``) when ``clean``."""
    from unlearnable.data import clean_counterpart, load, load_set, partial
    from unlearnable.errors import UnlearnableError
    from unlearnable.params import parse_fraction

    if not sets and not (clean and data):
        raise UnlearnableError("nothing to measure: give saved sets, or --clean with --data SPEC")
    for r in ratios.split(",") if ratios else ():  # before any set is loaded or victim trained
        try:
            parse_fraction(r)
        except (ValueError, ZeroDivisionError):
            raise UnlearnableError(f"--ratios takes comma-separated fractions, got {ratios!r}") from None
    jobs = []
    for p in sets:
        saved = load_set(p)
        if not ratios:
            jobs.append((str(p), saved))
            continue
        reference = clean_counterpart(saved)
        jobs += [(f"{p}@{r}", partial(saved, parse_fraction(r), seed=seed, clean=reference))
                 for r in ratios.split(",")]
    if clean:
        jobs.append(("clean", clean_counterpart(jobs[0][1]) if jobs else load(data)[0]))
    return jobs

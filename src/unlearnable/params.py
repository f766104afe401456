"""Plain dataclass parameters for methods: ``--set key=value`` parsing, presets and validation helpers."""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from .errors import UnlearnableError


def parse_eps(text: str | float, unit: str = "unit") -> float:
    """``"8/255"``, ``"0.0314"`` (or ``"8"`` with ``unit="levels"``) -> a radius on the [0, 1] scale."""
    s = str(text).strip()
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            value = float(num) / float(den)
        else:
            value = float(s)
    except (ValueError, ZeroDivisionError):
        raise UnlearnableError(f"cannot parse eps {text!r}; use e.g. 8/255, 0.0314 or 8 with --eps-unit levels") from None
    if unit == "levels":
        if 0 < value < 1:  # said in the unit given, not as the radius 0.00196 it becomes
            raise UnlearnableError(f"eps {text} levels is under one 8-bit level; the smallest budget is 1")
        value /= 255.0
    elif unit != "unit":
        raise UnlearnableError(f"unknown eps unit {unit!r}; known: unit, levels")
    if not value > 0 or value != value:
        raise UnlearnableError(f"eps must be positive, got {text}")
    if value > 1:
        hint = "an 8-bit level is at most 255" if unit == "levels" else "for 8-bit levels use --eps-unit levels"
        raise UnlearnableError(f"eps {text} is larger than the whole pixel range; {hint}")
    return value


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``["steps=20", "mode=class"]`` -> ``{"steps": "20", "mode": "class"}``."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UnlearnableError(f"--set takes key=value, got {item!r}")
        key = key.strip().replace("-", "_")
        if key in out:  # the last one silently won
            raise UnlearnableError(f"--set {key} is given twice ({out[key]!r} and {value.strip()!r}); give it once")
        out[key] = value.strip()
    return out


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    if not isinstance(value, str):
        return value
    types = typing.get_args(annotation) or (annotation,)
    if value.lower() in ("none", "null") and type(None) in types:
        return None
    for t in types:
        if t is type(None):
            continue
        try:
            if t is bool:
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if t is float:
                return parse_fraction(value)
            if t in (int, str):
                return t(value)
        except (ValueError, ZeroDivisionError):
            continue
    words = {int: "a whole number", float: "a number", bool: "true or false", str: "text", type(None): "none"}
    wanted = " or ".join(words.get(t, getattr(t, "__name__", str(t))) for t in types)
    raise UnlearnableError(f"cannot read {name}={value!r} as {wanted}")


def parse_fraction(value: str) -> float:
    if "/" in value:
        a, b = value.split("/", 1)
        return float(a) / float(b)
    return float(value)


#: ``preset="none"``: no preset, the method's own (paper) defaults; what the CLI's ``--set preset=none`` asks for
#: where it would otherwise pick the ``fast`` preset on a CPU.
NO_PRESET = "none"


def build(cls: type, kind: str, options: dict[str, Any]) -> Any:
    """Instantiate a dataclass method from string or typed options, applying ``preset=NAME`` first.

    Presets are the class attribute ``presets: dict[str, dict]``; options given explicitly win over a preset.
    """
    options = dict(options)
    preset = options.pop("preset", None)
    if preset == NO_PRESET:
        preset = None
    if preset is not None:
        preset_options(cls, preset, kind)  # an unknown preset's error names the method as the caller did
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise UnlearnableError(f"{kind} has no parameter {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    typed = {k: _coerce(k, v, hints[k]) for k, v in options.items()}
    # the preset fills the fields not named here, in __post_init__ (apply_preset), as for a direct constructor call
    return cls(**typed, **({} if preset is None else {"preset": preset}))


def typed_kwargs(fn: Any, kind: str, options: dict[str, Any], passed: tuple[str, ...] = ()) -> dict[str, Any]:
    """``options`` (strings from ``--set``, or typed) checked against the keyword parameters of function ``fn``
    and converted to their annotated types; ``passed`` names parameters the caller supplies itself."""
    import inspect

    hints = typing.get_type_hints(fn)
    params = [n for n, p in inspect.signature(fn).parameters.items()
              if p.kind is p.KEYWORD_ONLY or p.default is not p.empty]
    unknown = sorted(set(options) - set(params) - set(passed))
    if unknown:
        known = ", ".join(n for n in params if n not in passed)
        raise UnlearnableError(f"{kind} has no parameter {', '.join(unknown)}; known: {known}")
    typed = {k: v if k in passed else _coerce(k, v, hints[k]) for k, v in options.items()}
    if isinstance(typed.get("seed"), int):
        _check_seed(typed["seed"])
    return typed


def _check_seed(value: int) -> None:
    """numpy's legacy seeding, which training uses, takes 32 bits (and numpy's Generator no negative seed)."""
    check(0 <= value < 2**32, f"seed must lie in 0..{2**32 - 1}, got {value}")


class GivenFields:
    """Mixin of the method dataclasses: an instance knows which fields its constructor call named (``_given``),
    so that a preset fills the others only. Without it a value equal to the class default could not be told from
    none: ``DeepConfuse(preset="fast", augment=False)`` kept the preset's ``augment=True``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:  # the constructor's own arguments come here first
        self = super().__new__(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        self.__dict__["_given"] = frozenset(kwargs) | frozenset(names[:len(args)])
        return self


def apply_preset(method: Any) -> None:
    """``EM(preset="fast")`` in Python as on the command line: every field the preset sets that the constructor
    call did not name takes the preset's value (an explicit value wins, also one equal to the class default).
    Called by the method base classes' ``__post_init__`` (:func:`prepare`); :func:`build` merges presets itself."""
    name = getattr(method, "preset", None)
    if name in (None, NO_PRESET):
        return
    cls = type(method)
    defaults = {f.name: f.default for f in dataclasses.fields(method) if f.default is not dataclasses.MISSING}
    for key, value in preset_options(cls, name, getattr(cls, "name", "") or cls.__name__).items():
        if key in defaults and key not in method._given:  # every method base is a GivenFields
            setattr(method, key, value)


def preset_options(cls: type, name: str, kind: str) -> dict[str, Any]:
    """The options of ``cls``'s preset ``name``; a one-line error naming the known presets when there is none."""
    presets = getattr(cls, "presets", {})
    if name not in presets:
        raise UnlearnableError(f"{kind} has no preset {name!r}; known: {', '.join([*presets, NO_PRESET])}")
    return presets[name]


def prepare(method: Any) -> None:
    """What every attack's and purifier's ``__post_init__`` does first: its fields type-checked (:func:`check_types`),
    its preset applied (:func:`apply_preset`), its device checked (also for methods that run on the CPU whatever the
    device, so that the manifest never records a device that does not exist)."""
    from .training import resolve_device

    check_types(method)
    apply_preset(method)
    resolve_device(method.device)


def check_types(obj: Any) -> None:
    """Check a method's or config's dataclass fields against their annotations (``int``, ``float``, ``bool``,
    ``str``, optionally ``None``) with a one-line error, converting numpy scalars (``seed=np.int64(1)`` from a loop
    over ``np.arange``, which would only fail when the manifest is written) and ints given for floats."""
    import numpy as np

    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        kinds = _simple_kinds(hints.get(f.name))
        if kinds is None:
            continue
        value = getattr(obj, f.name)
        if isinstance(value, np.generic):
            value = value.item()
        if value is None and type(None) in kinds:
            pass
        elif isinstance(value, bool):
            check(bool in kinds, f"{f.name} must be {_kind_names(kinds)}, got {value!r}")
        elif isinstance(value, int) and int not in kinds and float in kinds:
            value = float(value)
        else:
            check(isinstance(value, tuple(k for k in kinds if k is not bool)),
                  f"{f.name} must be {_kind_names(kinds)}, got {value!r}")
        if isinstance(value, float):  # inf passed every range check and then diverged a fit into an all-black set
            check(math.isfinite(value), f"{f.name} must be a finite number, got {value}")
        if f.name == "seed" and isinstance(value, int):
            _check_seed(value)
        setattr(obj, f.name, value)


def _simple_kinds(annotation: Any) -> tuple | None:
    """``(int,)`` for ``int``, ``(int, NoneType)`` for ``int | None``; None for anything else (lists, dicts...)."""
    import types

    origin = typing.get_origin(annotation)
    if origin is None:
        kinds = (annotation,)
    elif origin in (typing.Union, types.UnionType):
        kinds = typing.get_args(annotation)
    else:
        return None
    return kinds if all(k in (int, float, bool, str, type(None)) for k in kinds) else None


def _kind_names(kinds: tuple) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "None"}
    return " or ".join(names[k] for k in kinds)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def check(condition: bool, message: str) -> None:
    """Raise a one-line :class:`UnlearnableError` unless ``condition``."""
    if not condition:
        raise UnlearnableError(message)


def height_width(size: Any) -> tuple[int, int]:
    """An image size given as one side (a square) or as height and width (a tuple, or a JSON list) -> ``(h, w)``."""
    import numpy as np

    return (int(size), int(size)) if np.ndim(size) == 0 else (int(size[0]), int(size[1]))


def check_choice(name: str, value: Any, choices: tuple) -> None:
    check(value in choices, f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")

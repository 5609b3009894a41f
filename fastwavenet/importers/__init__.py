"""Importers for WaveNets trained by other implementations."""

from __future__ import annotations

from ..errors import FastWaveNetError

# What a JSON field of each kind must hold. Fields are checked before anything computes with them, so that a value of
# the wrong type is refused in one line naming the field, not met later as a TypeError.
KINDS = {
    "an integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "a number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "true or false": lambda v: isinstance(v, bool),
    "a string": lambda v: isinstance(v, str),
    "a list of integers": lambda v: isinstance(v, list) and all(KINDS["an integer"](x) for x in v),
    "an object": lambda v: isinstance(v, dict),
}


def check_kinds(fields: dict, kinds: dict[str, str], where: str, nullable: tuple[str, ...] = ()) -> None:
    """Refuse the first of `fields` whose value is not of its kind in `kinds` (a key of KINDS). Names absent from
    `fields` are not checked, nor null values of the names in `nullable`. The message begins with `where`."""
    for name, kind in kinds.items():
        if name not in fields or (fields[name] is None and name in nullable):
            continue
        if not KINDS[kind](fields[name]):
            shown = repr(fields[name])
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            raise FastWaveNetError(f"{where}: {name} must be {kind}, got {shown}")

"""Find decoders through the `lanmt.decoders` entry-point group and build them by name.

Built-in and third-party decoders take the same path: each installed distribution lists
`name = "module:Class"` under the group. A name that is not registered but ends in a number,
`refine3` or `refine-3`, selects the registered `refine` with its `numbered_option` set to 3.

Every command names a decoder the same way, as a spec: `NAME` or `NAME:key=value,key=value`
(`latent-search:samples=20,noise=0.3`); `resolve` reads it. `lanmt translate --opt key=value`
gives the same options one at a time; a key given both ways is an error.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from lanmt_cli.decoding import Decoder, OptionError
from lanmt_cli.errors import LanmtError

GROUP = "lanmt.decoders"
_NUMBERED = re.compile(r"^(?P<base>.+?)-?(?P<number>\d+)$")


@dataclass(frozen=True)
class Entry:
    """One registered decoder: its name, where it points, and the package that registered it."""

    name: str
    target: str  # "module:Class"
    package: str  # the distribution that registered it
    version: str

    def load(self) -> type[Decoder]:
        """Import the decoder class; a broken plugin gives one clear LanmtError."""
        try:
            cls = metadata.EntryPoint(self.name, self.target, GROUP).load()
        except Exception as err:  # any import-time failure of a plugin
            raise LanmtError(
                f"decoder {self.name} from package {self.package} failed to load "
                f"({self.target}): {type(err).__name__}: {err}"
            ) from None
        if not (isinstance(cls, type) and issubclass(cls, Decoder)):
            raise LanmtError(
                f"decoder {self.name} from package {self.package} ({self.target}) "
                "is not a subclass of lanmt_cli.decoding.Decoder"
            )
        return cls


def registrations() -> dict[str, list[Entry]]:
    """Every registered name with its registrations (more than one is a conflict), sorted."""
    found: dict[str, list[Entry]] = {}
    for ep in metadata.entry_points(group=GROUP):
        dist = ep.dist
        package = dist.name if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        entry = Entry(ep.name, ep.value, package, version)
        if entry not in found.setdefault(ep.name, []):
            found[ep.name].append(entry)
    return dict(sorted(found.items()))


def _entry(name: str, regs: dict[str, list[Entry]]) -> Entry:
    entries = regs[name]
    if len(entries) > 1:
        packages = ", ".join(f"{e.package} ({e.target})" for e in entries)
        raise LanmtError(f"decoder {name} is registered by more than one package: {packages}")
    return entries[0]


def unknown_decoder_message(spec: str, regs: dict[str, list[Entry]]) -> str:
    names = list(regs)
    close = difflib.get_close_matches(spec, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    listed = ", ".join(names) if names else "none (is lanmt installed? try `pip install -e .`)"
    return f"unknown decoder {spec!r}{hint}; installed decoders: {listed}"


def find(spec: str) -> tuple[str, type[Decoder], dict[str, Any]]:
    """Resolve a decoder name: (registered name, class, options the name fixes).

    `refine` -> ("refine", Refine, {}); `refine3` -> ("refine", Refine, {"steps": 3}).
    """
    regs = registrations()
    if spec in regs:
        return spec, _entry(spec, regs).load(), {}
    match = _NUMBERED.match(spec)
    if match and match["base"] in regs:
        base = match["base"]
        cls = _entry(base, regs).load()
        if cls.numbered_option is None:
            raise LanmtError(
                f"decoder {base} takes no number, so {spec!r} means nothing; "
                f"use --decoder {base} (installed decoders: {', '.join(regs)})"
            )
        return base, cls, {cls.numbered_option: int(match["number"])}
    raise LanmtError(unknown_decoder_message(spec, regs))


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`NAME` or `NAME:key=value,key=value` -> (NAME, options as strings).

    `latent-search:samples=20,noise=0.3` -> ("latent-search", {"samples": "20", "noise": "0.3"}).
    """
    name, colon, rest = spec.strip().partition(":")
    name = name.strip()
    if not name:
        raise OptionError(f"decoder {spec!r}: no name (write NAME or NAME:key=value,key=value)")
    pairs = [p for p in rest.split(",") if p.strip()]
    if colon and not pairs:
        raise OptionError(f"decoder {spec!r}: no options after ':' (write NAME:key=value,...)")
    return name, parse_options(pairs)


def resolve(spec: str, options: dict[str, Any] | None = None) -> tuple[str, type[Decoder], dict]:
    """Name, class and the complete checked options of decoder `spec` with `options`.

    `spec` is a name or `NAME:key=value,...`; option values may be strings (from
    `--opt key=value`) or Python values. A key both in `spec` and in `options` is an error.
    """
    base, given = parse_spec(spec)
    name, cls, fixed = find(base)
    for key, value in (options or {}).items():
        if key in given:
            raise OptionError(
                f"decoder option {key} is given twice, in {spec!r} and as {key}={value}; "
                "give it once"
            )
        given[key] = value
    options = given
    for key, value in fixed.items():
        if key in options and cls.check_options({key: options[key]})[key] != value:
            raise OptionError(
                f"decoder name {base} sets {key}={value}, but the options ask for "
                f"{key}={options[key]}; give one of them"
            )
        options[key] = value
    return name, cls, cls.check_options(options)


def parse_options(pairs: list[str] | None) -> dict[str, str]:
    """`["steps=3", "noise=0.2"]` -> {"steps": "3", "noise": "0.2"}."""
    options: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise OptionError(f"decoder option {pair!r} is not of the form key=value")
        options[key] = value.strip()
    return options


def describe() -> list[dict[str, Any]]:
    """Every installed decoder as a dict (for `lanmt decoders`); broken ones carry `error`."""
    rows = []
    for name, entries in registrations().items():
        for entry in entries:
            row: dict[str, Any] = {
                "name": name,
                "package": entry.package,
                "version": entry.version,
                "entry_point": entry.target,
                "error": None,
            }
            if len(entries) > 1:
                row["error"] = "registered by more than one package"
            try:
                cls = entry.load()
            except LanmtError as err:
                row["error"] = str(err)
            else:
                row.update(
                    help=cls.help,
                    model_kind=cls.model_kind,
                    needs_teacher=cls.needs_teacher,
                    numbered_option=cls.numbered_option,
                    options=[o.as_dict() for o in cls.option_specs],
                )
            rows.append(row)
    return rows

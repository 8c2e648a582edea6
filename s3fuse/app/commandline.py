"""The one command-line parser: every command (the mount itself included) is a ``Command``
row - its positional arguments, its ``Flag`` rows, whether it takes ``-o`` mount options -
and ``parse`` reads argv against that row.  ``--help``, the man page and the usage errors
come from the same rows (``app/usage.py``).

A value that cannot work raises ConfigError naming the flag, never a bare ValueError.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..config import split_options
from ..errors import ConfigError


@dataclass(frozen=True)
class Flag:
    name: str                                   # "-f", "--older-than"
    dest: str                                   # key in Parsed.values
    parse: Optional[Callable[[str], object]] = None     # None: a switch (True when given)
    help: str = ""
    metavar: str = "VALUE"
    aliases: tuple = ()

    def synopsis(self) -> str:
        return self.name if self.parse is None else f"{self.name}={self.metavar}"


@dataclass(frozen=True)
class Command:
    name: str                     # "" for the mount (mount.s3fuse SOURCE MOUNTPOINT)
    positionals: tuple            # names, e.g. ("BUCKET[:/PREFIX]", "MOUNTPOINT")
    required: int                 # how many of them must be given
    help: str = ""
    flags: tuple = ()
    mount_options: bool = False   # takes -o OPTIONS (the table of config.OPTIONS)
    ignored: tuple = ()           # flags accepted and ignored (mount(8) passes them)

    def synopsis(self) -> str:
        words = [self.name] if self.name else []
        for i, name in enumerate(self.positionals):
            words.append(name if i < self.required else f"[{name}]")
        if self.mount_options:
            words.append("-o ...")
        words += [f"[{f.synopsis()}]" for f in self.flags]
        return " ".join(words)

    def flag(self, word: str) -> Optional[Flag]:
        for f in self.flags:
            if word == f.name or word in f.aliases:
                return f
        return None


@dataclass
class Parsed:
    command: Command
    positionals: list = field(default_factory=list)
    values: dict = field(default_factory=dict)      # Flag.dest -> value
    options: list = field(default_factory=list)     # "name=value" of -o, in order

    def get(self, dest: str, default=None):
        return self.values.get(dest, default)


def parse(command: Command, argv) -> Parsed:
    """Read ``argv`` (without the command's name) against ``command``'s row."""
    out = Parsed(command)
    args = list(argv)
    usage = f"usage: s3fuse {command.synopsis()}" if command.name else "see --help"
    while args:
        arg = args.pop(0)
        if command.mount_options and arg == "-o":
            if not args:
                raise ConfigError("-o needs an option list")
            out.options.extend(split_options(args.pop(0)))
            continue
        if command.mount_options and arg.startswith("-o") and len(arg) > 2:
            out.options.extend(split_options(arg[2:]))
            continue
        if arg in command.ignored:
            continue
        name, eq, value = arg.partition("=") if arg.startswith("--") else (arg, "", "")
        flag = command.flag(name)
        if flag is not None:
            if flag.parse is None:
                if eq:
                    raise ConfigError(f"{name} takes no value ({usage})")
                out.values[flag.dest] = True
                continue
            if not eq:
                if not args:
                    raise ConfigError(f"{name} needs a value ({name}={flag.metavar})")
                value = args.pop(0)
            try:
                out.values[flag.dest] = flag.parse(value)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
            continue
        if arg.startswith("-") and len(arg) > 1:
            raise ConfigError(f"unknown argument {arg!r} ({usage})")
        out.positionals.append(arg)
    if not command.required <= len(out.positionals) <= len(command.positionals):
        expected = " and ".join(command.positionals[:max(command.required, 1)])
        raise ConfigError(f"expected {expected} ({usage})" if command.name else
                          f"expected {expected} (see --help)")
    return out


def seconds(text: str) -> float:
    """A duration in seconds: a finite number, not negative."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a number of seconds: {text!r}")
    return value


def text(value: str) -> str:
    if not value:
        raise ValueError("empty")
    return value

"""A small reader for Fluentd's configuration syntax, for structural checks in CI.

There is no Python parser for Fluentd's format and no Fluentd we can install in CI, so the tests
read the files with this one. It understands what fluentd-config/ uses: `<directive arg>` …
`</directive>` sections, `key value` parameters (bare, 'single' or "double" quoted), full-line
`#` comments and `@include`. It also evaluates the one embedded-Ruby idiom the config uses for
defaults, `"#{ENV['NAME'] || 'default'}"`, so checks can look at the value Fluentd would see.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_OPEN = re.compile(r"^<\s*([A-Za-z_][\w.]*)(?:\s+(.*?))?\s*>$")
_CLOSE = re.compile(r"^</\s*([A-Za-z_][\w.]*)\s*>$")
_PARAM = re.compile(r"^(\S+)(?:\s+(.*))?$")
#: The repository's fluentd-config/ folder and its entry files (one per role).
CONFIG_DIR = Path(__file__).resolve().parents[2] / "fluentd-config"
ENTRY_FILES = ("daemonset.conf", "aggregator.conf")
#: This test folder (samples, ecs_fields.txt, record_transformer.rb live here).
HERE = Path(__file__).resolve().parent

ENV_NAME = re.compile(r"""ENV(?:\[|\.fetch\()\s*['"]([A-Z][A-Z0-9_]*)['"]""")
_ENV_DEFAULT = re.compile(r"""#\{ENV\['([A-Z0-9_]+)'\] \|\| '([^']*)'\}""")


class ConfigSyntaxError(ValueError):
    """The file is not well-formed Fluentd configuration (unbalanced or stray sections)."""


@dataclass
class Directive:
    """One `<name arg>` section with its parameters and nested sections."""

    name: str
    arg: str = ""
    params: dict[str, str] = field(default_factory=dict)
    children: list[Directive] = field(default_factory=list)
    source: str = ""

    @property
    def type(self) -> str:
        return self.params.get("@type", "")

    def child(self, name: str) -> Directive | None:
        found = [c for c in self.children if c.name == name]
        return found[0] if found else None

    def walk(self) -> list[Directive]:
        """This directive and every directive below it, depth first."""
        out = [self]
        for c in self.children:
            out.extend(c.walk())
        return out


def _unquote(raw: str) -> str:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        return raw[1:-1]
    return raw


def parse_file(path: Path, *, _seen: tuple[Path, ...] = ()) -> Directive:
    """Parse `path` and every file it `@include`s (relative to the including file).

    Returns a synthetic root directive named "ROOT" whose children are the top-level
    directives, in order, with includes expanded in place. Raises ConfigSyntaxError for
    unbalanced sections and FileNotFoundError for an include that does not resolve.
    """
    path = path.resolve()
    if path in _seen:
        raise ConfigSyntaxError(f"include cycle: {' -> '.join(str(p) for p in (*_seen, path))}")
    root = Directive("ROOT", source=str(path))
    stack = [root]
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        text = line.strip()
        where = f"{path.name}:{lineno}"
        if not text or text.startswith("#"):
            continue
        if text.startswith("@include "):
            target = path.parent / text.split(None, 1)[1].strip()
            if not target.is_file():
                raise FileNotFoundError(f"{where}: @include {target} does not exist")
            included = parse_file(target, _seen=(*_seen, path))
            stack[-1].children.extend(included.children)
            continue
        if m := _CLOSE.match(text):
            if len(stack) == 1 or stack[-1].name != m.group(1):
                raise ConfigSyntaxError(f"{where}: unexpected </{m.group(1)}>")
            stack.pop()
            continue
        if m := _OPEN.match(text):
            d = Directive(m.group(1), (m.group(2) or "").strip(), source=where)
            stack[-1].children.append(d)
            stack.append(d)
            continue
        if text.startswith("<"):
            raise ConfigSyntaxError(f"{where}: malformed section line {text!r}")
        m = _PARAM.match(text)
        assert m is not None  # any non-empty line matches
        key, value = m.group(1), m.group(2) or ""
        if key in stack[-1].params:
            raise ConfigSyntaxError(f"{where}: parameter {key!r} set twice")
        stack[-1].params[key] = _unquote(value)
    if len(stack) != 1:
        raise ConfigSyntaxError(
            f"{path.name}: <{stack[-1].name}> opened at {stack[-1].source} is never closed"
        )
    return root


def parse_text(text: str, directory: Path) -> Directive:
    """Parse configuration text as if it were a file in `directory` (for negative tests)."""
    tmp = directory / "_snippet.conf"
    tmp.write_text(text)
    return parse_file(tmp)


def effective(value: str, env: dict[str, str] | None = None) -> str:
    """`value` with each `#{ENV['X'] || 'd'}` replaced by what Fluentd would see under `env`."""
    return _ENV_DEFAULT.sub(lambda m: (env or {}).get(m.group(1)) or m.group(2), value)


def env_names(text: str) -> set[str]:
    """Environment variable names read by embedded Ruby in `text`."""
    return set(ENV_NAME.findall(text))

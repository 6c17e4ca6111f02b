"""The reference pages, built from the code each time the site is built (mkdocs-gen-files runs
this file; nothing here is copied by hand):

- ``reference/api/*.md``: one page per part of the package, each public module rendered by
  mkdocstrings from its docstrings; ``reference/api/index.md`` lists ``nasframe.__all__``;
- ``reference/cli.md``: every command and flag, read from ``nasframe.cli.build_parser()``;
- ``reference/config.md``: every field of the pydantic models behind configs and compare TOMLs;
- ``reference/errors.md``: the error classes and the exit codes.

A name in a public module's ``__all__`` (and every name in ``nasframe.__all__``) without a
docstring, or one that no page documents, raises :class:`UndocumentedError`: the build fails.
``tests/test_docs.py`` imports :func:`build` and checks the same without mkdocs.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # noqa: SIM102 - the checkout's nasframe, not an installed one
    sys.path.insert(0, str(ROOT))

import griffe  # noqa: E402

PACKAGE = "nasframe"
#: The parts of the package (docs/development.md), one API page each, in import order.
PARTS = ["base", "dsl", "spaces", "run", "engine", "text", "searching", "strategies", "compare"]
#: Parts documented on the CLI page rather than an API page.
CLI_PARTS = ["cli", "commands"]
TITLES = {
    "base": "errors, files, limits, runtime",
    "dsl": "spaces, operations, architectures",
    "spaces": "the built-in search spaces",
    "run": "configs, run directories, resume",
    "engine": "reversible layers, choice nodes, supernet",
    "text": "data, re-training, decoding, evaluation",
    "searching": "the search loop",
    "strategies": "the built-in strategies",
    "compare": "comparisons and selection",
}


class UndocumentedError(RuntimeError):
    """A public name has no docstring or no reference entry."""


@dataclass
class Reference:
    """The generated pages (path under docs/ -> Markdown) and what they document."""

    pages: dict[str, str] = field(default_factory=dict)
    #: canonical path (where the object is defined) -> the page that renders it
    documented: dict[str, str] = field(default_factory=dict)
    #: every public name as ``module.name`` -> its canonical path
    public: dict[str, str] = field(default_factory=dict)
    undocumented: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- the API pages

def _is_public_module(path: str) -> bool:
    return not any(p.startswith("_") for p in path.split(".")[1:])


def _modules(module: griffe.Module) -> list[griffe.Module]:
    """A package and every module below it, the package first, then by name."""
    found = [module]
    for name in sorted(module.modules):
        sub = module.modules[name]
        if name == "__main__" or sub.is_alias:  # an imported module is not ours to list
            continue
        found.extend(_modules(sub))
    return found


def _exports(path: str) -> list[str] | None:
    """The module's ``__all__`` as the interpreter sees it (None without one)."""
    names = getattr(importlib.import_module(path), "__all__", None)
    return list(names) if names is not None else None


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object:
    return obj.final_target if isinstance(obj, griffe.Alias) else obj


def _docstring(obj: griffe.Object) -> str:
    return obj.docstring.value.strip() if obj.docstring else ""


def _part(path: str) -> str:
    return path.split(".")[1] if path.count(".") else ""


def _page_of(path: str) -> str:
    part = _part(path)
    if part in CLI_PARTS:
        return "reference/cli.md"
    return f"reference/api/{part}.md"


def _summary(text: str) -> str:
    first = text.strip().split("\n\n")[0]
    return " ".join(first.split())


def _module_section(module: griffe.Module, ref: Reference, heading: int = 2) -> str:
    """A ``::: module`` block showing the names its ``__all__`` defines there, then links to the
    names it re-exports from elsewhere."""
    path = module.path
    names = _exports(path)
    own: list[str] = []
    reexported: list[tuple[str, str]] = []
    for name in names or []:
        try:
            target = _target(module[name])
        except (KeyError, griffe.AliasResolutionError):  # `a, b = 1, 2`: no docstring possible
            ref.undocumented.append(f"{path}.{name}")
            continue
        ref.public[f"{path}.{name}"] = target.path
        if not _docstring(target):
            ref.undocumented.append(f"{path}.{name}")
        if target.path == f"{path}.{name}":
            own.append(name)
        else:
            reexported.append((name, target.path))
    if not _docstring(module):
        ref.undocumented.append(path)
    options = [f"      heading_level: {heading}"]
    if names is not None:
        options.append(f"      members: [{', '.join(own)}]" if own else "      members: false")
    lines = [f"::: {path}", "    options:", *options, ""]
    ref.documented[path] = _page_of(path)
    for name in own:
        ref.documented[f"{path}.{name}"] = _page_of(path)
    if names is None:  # no __all__: mkdocstrings shows its public members; so do we
        for name, member in module.members.items():
            if not name.startswith("_") and not member.is_alias:
                ref.documented[f"{path}.{name}"] = _page_of(path)
    if reexported:
        links = ", ".join(f"[`{name}`][{target}]" for name, target in reexported)
        lines += [f"Also exported here: {links}.", ""]
    return "\n".join(lines)


def _api_page(part: griffe.Module, ref: Reference) -> str:
    name = part.path.split(".")[-1]
    lines = [f"# `{part.path}`: {TITLES[name]}", "",
             "Generated from the docstrings by `docs/_gen/reference.py`; the import rules "
             "between the parts are in [Development](../../development.md).", ""]
    for module in _modules(part):
        if _is_public_module(module.path):
            lines.append(_module_section(module, ref))
    return "\n".join(lines)


def _index_page(root: griffe.Module, ref: Reference) -> str:
    lines = ["# `import nasframe as nf`", "",
             "Every name of `nf.__all__`, where it is defined and what it is. Each part of the "
             "package has its own page (in the menu); `nasframe` itself only re-exports.", "",
             "| name | defined in | what it is |", "| --- | --- | --- |"]
    for name in sorted(_exports(PACKAGE) or [], key=str.lower):
        target = _target(root[name])
        ref.public[f"{PACKAGE}.{name}"] = target.path
        doc = _docstring(target)
        if not doc:
            ref.undocumented.append(f"{PACKAGE}.{name}")
        lines.append(f"| [`nf.{name}`][{target.path}] | `{target.path}` | "
                     f"{_cell(_summary(doc))} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- the CLI page

def _cell(text: Any) -> str:
    """Text for a Markdown table cell."""
    text = " ".join(str(text).split())
    return (text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;")
            .replace("*", "\\*").replace("_", "\\_"))


def _code(text: Any) -> str:
    """A code span for a Markdown table cell (the table extension skips pipes in code)."""
    text = " ".join(str(text).split()).replace("`", "'")
    return f"`{text}`" if text else ""


def _subparsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser,
                                                                str]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                found.append((name, sub, helps.get(name, "")))
    return found


def _flag_rows(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser._get_formatter()
    rows = ["| flag | help | default |", "| --- | --- | --- |"]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        if action.option_strings:
            flag = ", ".join(action.option_strings)
            if action.nargs != 0:
                flag += " " + formatter._format_args(action, action.dest.upper())
        else:
            flag = formatter._format_args(action, action.dest)
        help_text = formatter._expand_help(action) if action.help else ""
        if action.choices is not None and not action.help:
            help_text = "one of " + ", ".join(map(str, action.choices))
        default = action.default
        shown = "" if default in (None, argparse.SUPPRESS) or action.nargs == 0 else default
        if isinstance(action, argparse._VersionAction):
            shown = ""
        rows.append(f"| {_code(flag)} | {_cell(help_text)} | "
                    f"{_code(repr(shown)) if shown != '' else ''} |")
    return rows


def _command_sections(name: str, parser: argparse.ArgumentParser, help_text: str,
                      level: int) -> list[str]:
    lines = [f"{'#' * level} `{name}`", ""]
    if help_text:
        lines += [help_text[0].upper() + help_text[1:] + ".", ""]
    usage = " ".join(parser.format_usage().removeprefix("usage: ").split())
    lines += ["```text", usage, "```", ""]
    if parser.description and parser.description.strip() != help_text.strip():
        # as --help prints it (these descriptions hold lists and examples)
        lines += ["```text", inspect.cleandoc(parser.description), "```", ""]
    lines += _flag_rows(parser) + [""]
    for sub_name, sub, sub_help in _subparsers(parser):
        lines += _command_sections(f"{name} {sub_name}", sub, sub_help, min(level + 1, 4))
    return lines


def _cli_page(root: griffe.Module, ref: Reference) -> str:
    from nasframe.cli import build_parser

    parser = build_parser()
    lines = ["# Command line", "",
             "Generated from `nasframe.cli.build_parser()`: every command and every flag, with "
             "its help and default. `nasframe COMMAND --help` prints the same. Errors and exit "
             "codes: [Errors](errors.md).", ""]
    commands = _subparsers(parser)
    lines += ["| command | what it does |", "| --- | --- |"]
    lines += [f"| [`nasframe {n}`](#nasframe-{n}) | {_cell(h)} |" for n, _, h in commands]
    lines += ["", "## `nasframe`", "", "```text",
              " ".join(parser.format_usage().removeprefix("usage: ").split()), "```", ""]
    lines += _flag_rows(parser) + [""]
    for name, sub, help_text in commands:
        lines += _command_sections(f"nasframe {name}", sub, help_text, 2)
    lines += ["## From Python", "",
              "`nasframe.cli.main(argv)` runs a command line and returns its exit code. A command "
              "is a module of `nasframe.commands` with a `register(subparsers)` function; the "
              "parser finds it by itself.", ""]
    for part in CLI_PARTS:
        for module in _modules(root[part]):
            if _is_public_module(module.path):
                lines.append(_module_section(module, ref, heading=3))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the config page

def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not isinstance(annotation, types.GenericAlias):
        return annotation.__name__
    text = repr(annotation)
    return re.sub(r"\b(?:[A-Za-z_][\w]*\.)+([A-Za-z_]\w*)", r"\1", text)


def _models(annotation: Any) -> list[type]:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found = []
    for arg in getattr(annotation, "__args__", ()):
        found += _models(arg)
    return found


def _default(info: Any) -> str:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    if info.default_factory is not None:
        value = info.default_factory()
        if isinstance(value, BaseModel):
            changed = value.model_dump(exclude_defaults=True)
            args = ", ".join(f"{k}={v!r}" for k, v in changed.items())
            return _code(f"{type(value).__name__}({args})")
        return _code(repr(value))
    if info.default is PydanticUndefined:
        return "required"
    return _code(repr(info.default))


#: The models a user writes, as (model, where its fields are written).
CONFIG_ROOTS = [
    ("nasframe.run.config.SearchConfig",
     "`nasframe search --config FILE.toml` (top-level keys and one table per section), "
     "`--set key=value`, `nf.search(config=...)`"),
    ("nasframe.run.config.TrainConfig",
     "`nasframe train --config FILE.toml`, `--set key=value`, `nf.train(config=...)`"),
    ("nasframe.run.data_spec.DataSpec", "`nf.DataSpec(...)`, `nasframe train --data/--src/--tgt`"),
    ("nasframe.compare.spec.CompareSettings",
     "the `[compare]` table of a compare TOML (`nasframe compare --config FILE.toml`)"),
    ("nasframe.compare.spec.Row", "each `[[rows]]` table of a compare TOML"),
]


def _config_page(ref: Reference) -> str:
    lines = ["# Configuration", "",
             "Generated from the pydantic models: every field with its type, default and "
             "description. A value the paper does not state is marked *(ours)*. Unknown keys "
             "are refused. Precedence, lowest first: field defaults < preset < TOML file < "
             "command-line flags; a run directory records the final values as `config.json`.",
             ""]
    seen: set[type] = set()
    queue: list[tuple[type, str]] = []
    for path, where in CONFIG_ROOTS:
        module, name = path.rsplit(".", 1)
        queue.append((getattr(importlib.import_module(module), name), where))
    while queue:
        model, where = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        full = f"{model.__module__}.{model.__qualname__}"
        lines += [f"## `{model.__name__}`", ""]
        if full in ref.documented:
            lines += [f"[`{full}`][{full}]; set in {where}.", ""]
        else:
            lines += [f"`{full}`; set in {where}.", ""]
        doc = inspect.getdoc(model) or ""
        if doc and "__doc__" in model.__dict__:
            lines += [_summary(doc), ""]
        lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
        nested = []
        for fname, info in model.model_fields.items():
            sub = _models(info.annotation)
            type_text = _cell(_type_name(info.annotation))
            for m in sub:
                nested.append((m, f"the `{fname}` {'list' if 'list' in type_text else 'table'} "
                                  f"of a `{model.__name__}`"))
                link = f"[{m.__name__}](#{m.__name__.lower()})"
                type_text = type_text.replace(_cell(m.__name__), link)
            lines.append(f"| `{fname}` | {type_text} | {_default(info)} | "
                         f"{_cell(info.description or '')} |")
        lines.append("")
        queue[:0] = nested
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the errors page

def _errors_page(ref: Reference) -> str:
    from nasframe.base import errors
    from nasframe.cli import EXIT_USAGE

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, Exception) and c.__module__ == errors.__name__]
    classes.sort(key=lambda c: (len(c.__mro__), c.__name__))
    lines = ["# Errors and exit codes", "",
             "Every error nasframe raises on purpose is a `NasframeError`: the command line prints "
             "it as one `error: <message>` line naming the file, field or value at fault, without "
             "a traceback. From Python, catch `nf.NasframeError` (or one of its kinds below). "
             "Generated from `nasframe.base.errors`.", "",
             "| exit code | when |", "| --- | --- |",
             "| 0 | the command did what it was asked |",
             f"| {EXIT_USAGE} | a bad flag or value (argparse), any `NasframeError` other than "
             "`NonFiniteError`, or an OS error on one of your files |",
             f"| {errors.NonFiniteError.exit_code} | `NonFiniteError`: training diverged "
             "(a loss or gradient is not finite) |",
             "| 130 | interrupted (Ctrl-C) |", "",
             "| error | is a | exit code | meaning |", "| --- | --- | --- | --- |"]
    for cls in classes:
        path = f"{cls.__module__}.{cls.__qualname__}"
        bases = ", ".join(f"`{b.__name__}`" for b in cls.__bases__)
        code = getattr(cls, "exit_code", EXIT_USAGE)
        name = f"[`{cls.__name__}`][{path}]" if path in ref.documented else f"`{cls.__name__}`"
        doc = _cell(_summary(inspect.getdoc(cls) or ""))
        lines.append(f"| {name} | {bases} | {code} | {doc} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- all of it

def build() -> Reference:
    """Every reference page, and raise :class:`UndocumentedError` on a public name without a
    docstring or a page."""
    ref = Reference()
    root = griffe.load(PACKAGE, search_paths=[str(ROOT)], resolve_aliases=True,
                       resolve_external=False)
    for part in PARTS:
        ref.pages[f"reference/api/{part}.md"] = _api_page(root[part], ref)
    ref.pages["reference/cli.md"] = _cli_page(root, ref)
    ref.pages["reference/api/index.md"] = _index_page(root, ref)
    ref.pages["reference/config.md"] = _config_page(ref)
    ref.pages["reference/errors.md"] = _errors_page(ref)
    ref.unplaced = sorted(name for name, target in ref.public.items()
                          if target not in ref.documented)
    ref.undocumented = sorted(set(ref.undocumented))
    if ref.undocumented or ref.unplaced:
        raise UndocumentedError(
            "public names without a docstring: " + (", ".join(ref.undocumented) or "none")
            + "; public names on no reference page: " + (", ".join(ref.unplaced) or "none"))
    return ref


def write(ref: Reference) -> None:
    """Hand the pages to mkdocs (run by mkdocs-gen-files at build time)."""
    import mkdocs_gen_files

    for path, text in ref.pages.items():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(text)
        mkdocs_gen_files.set_edit_path(path, "docs/_gen/reference.py")


if __name__ in {"__main__", "<run_path>"}:
    write(build())

"""Help that fits on a screen: ``lit-align fit --help`` lists the objectives and data modules and says where the
details are; with ``--config`` it shows that config's objective and data arguments; ``--help all`` is
LightningCLI's full help (every Trainer option)."""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import yaml

SUBCOMMANDS = ("fit", "validate", "test", "predict", "evaluate")
#: Every subcommand of ``lit-align`` with its line in ``lit-align --help``.
TOP_LEVEL = (
    ("fit", "train an objective: lit-align fit --config pdistill"),
    ("validate", "the validation metrics of a model or checkpoint"),
    ("test", "the metrics on the test rows (data.test_path / data.test_split)"),
    ("predict", "sample responses for the prompts and write them out"),
    ("evaluate", "win rate against the references, reward, KL to pi_0 and length (the paper's Table 2)"),
    ("plot", "the curves of finished runs as PNGs: lit-align plot RUN_DIR [RUN_DIR ...]"),
    ("configs", "the shipped configs: list them, show one, copy one here to edit"),
)
WIDTH = 120
VALUE_WIDTH = 14


def top_help() -> str:
    """``lit-align --help``: every subcommand with one line, and where to go next."""
    pad = max(len(name) for name, _ in TOP_LEVEL) + 2
    return "\n".join([
        "usage: lit-align SUBCOMMAND [OPTIONS]",
        "",
        "Align language models from pairwise preferences, on Lightning.",
        "",
        "subcommands:",
        *(f"  {name:<{pad}}{text}" for name, text in TOP_LEVEL),
        "",
        "lit-align SUBCOMMAND --help describes one (lit-align fit --help: the objectives and data modules).",
    ])


def _wrapped(text: str, indent: int, first: str = "", width: int = WIDTH) -> list[str]:
    """``first`` followed by ``text`` wrapped at word boundaries to ``width``, later lines indented by ``indent``."""
    if not text:
        return [first.rstrip()]
    lines = textwrap.wrap(text, width=width, initial_indent=first, subsequent_indent=" " * indent,
                          break_long_words=False, break_on_hyphens=False)
    return lines or [first.rstrip()]


def _first_line(obj) -> str:
    doc = inspect.getdoc(obj) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _catalogue(module, base) -> list[tuple[str, str]]:
    entries = []
    for name in getattr(module, "__all__", dir(module)):
        obj = getattr(module, name, None)
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not inspect.isabstract(obj):
            entries.append((name, _first_line(obj)))
    return sorted(entries)


def _table(entries: list[tuple[str, str]]) -> list[str]:
    pad = max(len(n) for n, _ in entries) + 2
    return [line for name, text in entries for line in _wrapped(text, pad + 2, f"  {name:<{pad}}")]


def _kinds(groups: dict[str, tuple[str, ...]], width: int = 100) -> list[str]:
    """The objectives' names, one group per base they build on, wrapped to ``width``."""
    lines = []
    for title, group in groups.items():
        line = f"  {title + ':':<26}"
        for name in group:
            if len(line) + len(name) + 1 > width:
                lines.append(line.rstrip())
                line = " " * 28
            line += name + " "
        lines.append(line.rstrip())
    return lines


def catalogue_of_classes() -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """The objectives by the base they build on and the data modules with their first docstring paragraph, read
    from the classes ``lit_align.objectives`` and ``lit_align.data`` export (imports torch): what
    ``lit_align.cli.catalogue`` must say."""
    import lit_align.data as data
    import lit_align.objectives as objectives
    from lit_align.data.base import TextDataModule
    from lit_align.objectives.base import AlignmentModule

    bases = ("AlignmentModule", "OfflineObjective", "OfflinePairObjective", "OnPolicyObjective", "SampledPairObjective")
    left = [n for n, _ in _catalogue(objectives, AlignmentModule) if n not in bases]
    groups = {}
    for title, base in (("on offline pairs", objectives.OfflinePairObjective),
                        ("on labelled rows", objectives.OfflineObjective),
                        ("sampled during training", objectives.OnPolicyObjective),
                        ("stages", objectives.AlignmentModule)):
        groups[title] = tuple(n for n in left if issubclass(getattr(objectives, n), base))
        left = [n for n in left if n not in groups[title]]
    return groups, {n: t for n, t in _catalogue(data, TextDataModule) if n != "TextDataModule"}


def short_help(subcommand: str) -> str:
    """``lit-align SUBCOMMAND --help``: the objectives and data modules (from ``lit_align.cli.catalogue``, nothing
    imported) and where the details are."""
    from lit_align.cli.catalogue import DATA_MODULES, OBJECTIVES

    lines = [
        f"usage: lit-align {subcommand} --config CONFIG.yaml [--model.ARG VALUE] [--data.ARG VALUE] "
        "[--trainer.ARG VALUE] ...",
        "",
        "Objectives (--model NAME, or the class_path of your own subclass; --model.help NAME describes one):",
        *_kinds(OBJECTIVES),
        "",
        "Data modules (--data NAME):",
        *_table(sorted(DATA_MODULES.items())),
        "",
        "More help:",
        f"  lit-align {subcommand} --model.help DPO              every argument of one objective",
        f"  lit-align {subcommand} --data.help PreferenceDataModule",
        f"  lit-align {subcommand} --config configs/dpo.yaml --help    that config's objective and data arguments",
        f"  lit-align {subcommand} --config configs/dpo.yaml --print_config    the whole resolved config",
        f"  lit-align {subcommand} --help all                     every option, Trainer included (long)",
        "  lit-align plot RUN_DIR [RUN_DIR ...]              the curves of finished runs as PNGs",
        "  lit-align configs                                 the shipped configs (show one, copy one here)",
    ]
    return "\n".join(lines)


def _config_classes(args: list[str]) -> dict[str, tuple[str, dict]]:
    """The model's and data's class paths named by the --config files in ``args`` (later files win), each with
    the ``init_args`` those files set (merged in order; a file naming another class starts afresh)."""
    found: dict[str, tuple[str, dict]] = {}
    for i, token in enumerate(args):
        path = args[i + 1] if token == "--config" and i + 1 < len(args) else (
            token.split("=", 1)[1] if token.startswith("--config=") else None)
        if path is None or not Path(path).is_file():
            continue
        config = yaml.safe_load(Path(path).read_text()) or {}
        for key in ("model", "data"):
            value = config.get(key)
            class_path = value.get("class_path") if isinstance(value, dict) else value
            init_args = (value.get("init_args") or {}) if isinstance(value, dict) else {}
            if isinstance(class_path, str):
                found[key] = (class_path, {})
            if key in found:
                found[key][1].update(init_args)
    return found


def _arguments(cls) -> list[tuple[str, str, str]]:
    """(name, default, first sentence of its docstring) of every ``__init__`` argument of ``cls``, following
    ``**kwargs`` into the base classes as the config parser does."""
    from docstring_parser import parse

    rows, seen = [], set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        docs = {p.arg_name: " ".join((p.description or "").split()) for p in parse(klass.__doc__ or "").params}
        parameters = list(inspect.signature(init).parameters.values())[1:]
        for p in parameters:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in seen:
                continue
            seen.add(p.name)
            default = "required" if p.default is inspect.Parameter.empty else _value(p.default)
            rows.append((p.name, default, re.split(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z`(])", docs.get(p.name, ""))[0]))
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return rows


def _value(value) -> str:
    """A config value as YAML writes it on one line (``0.0005``, ``{model: tiny}``)."""
    try:
        text = yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()
    except yaml.YAMLError:  # an object YAML cannot write: its repr
        return repr(value)
    return repr(value) if "\n" in text else text  # a string with line breaks: escaped, on one line


def config_help(subcommand: str, args: list[str]) -> str | None:
    """One entry per argument of the objective and data module the config names (None if it names neither): the
    value the config sets (marked ``(config)``) or the class default, then the argument's first sentence, wrapped.
    Nothing is built: the classes are imported and read, the config files parsed as YAML."""
    from jsonargparse._util import import_object

    classes = _config_classes(args)
    if not classes:
        return None
    lines = []
    for key, (class_path, init_args) in classes.items():
        cls = import_object(class_path)
        lines += _wrapped(_first_line(cls), 4, f"--{key}: {class_path} -- ")
        rows = [(f"--{key}.{name}", f"{_value(init_args[name])} (config)" if name in init_args else default, text)
                for name, default, text in _arguments(cls)]
        pad = max(len(option) for option, _, _ in rows)
        column = 2 + pad + 1 + VALUE_WIDTH + 1
        for option, value, text in rows:
            head = f"  {option:<{pad}} {value:<{VALUE_WIDTH}} "  # a longer value pushes the description along
            if len(head) > WIDTH - 30:  # ... unless it leaves no room: the description starts below
                lines += [head.rstrip()]
                head = " " * column
            lines += _wrapped(text, column, head)
        lines.append("")
    lines += _wrapped(f"lit-align {subcommand} --{next(iter(classes))}.help CLASS: each argument in full; "
                      f"lit-align {subcommand} --help all: every option, Trainer included.", 0)
    return "\n".join(lines)


def help_request(args: list[str]) -> tuple[str, str] | None:
    """(subcommand, mode) when ``args`` ask for help: ``short``, ``config`` or ``all``; None otherwise."""
    if not args or args[0] not in SUBCOMMANDS or not {"--help", "-h"} & set(args):
        return None
    index = args.index("--help") if "--help" in args else args.index("-h")
    if args[index + 1 : index + 2] == ["all"]:
        return args[0], "all"
    return args[0], "config" if any(a == "--config" or a.startswith("--config=") for a in args) else "short"


#: How a one-line error names what a class argument takes, by its base class.
KINDS = {"AlignmentModule": "objective", "TextDataModule": "data module"}


def _subclass_names(base) -> list[str]:
    """The names of every loaded, concrete subclass of ``base`` (the short names the CLI accepts)."""
    found, stack = set(), [base]
    while stack:
        for cls in stack.pop().__subclasses__():
            stack.append(cls)
            if not inspect.isabstract(cls) and not cls.__name__.startswith("_"):
                found.add(cls.__name__)
    return sorted(found)


def unknown_class_message(parse_error: str) -> str | None:
    """One line for a class argument that names no class (``--model DPOO``: the nearest objectives) or a module
    that cannot be imported (``--model my_objectives.HingeDPO`` run from another folder); None otherwise."""
    import difflib

    from jsonargparse._util import import_object

    key = re.match(r'Parser key "([^"]+)"', parse_error)
    given = re.search(r"Given value: (\S+)\s*\Z", parse_error)
    base = re.search(r"Subtypes: \[<class '([^']+)'>", parse_error)
    missing = re.search(r"No module named '([^']+)'", parse_error)
    unknown = "Expected a dot import path string" in parse_error or "has no attribute" in parse_error
    if not (key and given and base and (missing or unknown)):
        return None
    value, base_name = given.group(1), base.group(1).rsplit(".", 1)[-1]
    near = difflib.get_close_matches(value.rsplit(".", 1)[-1], _subclass_names(import_object(base.group(1))), n=2,
                                     cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else ""
    if missing and "." in value:
        return (f"--{key.group(1)} {value}: cannot import it: no module named {missing.group(1)!r} (lit-align "
                "imports from the working folder and the installed packages)")
    where = " (lit-align fit --help lists them)" if base_name in KINDS else ""
    return f"--{key.group(1)} {value}: no {KINDS.get(base_name, base_name)} named {value!r}{hint}{where}"


def unknown_key_message(parser, parse_error: str) -> str | None:
    """One line with the nearest valid names for a misspelt argument, or None for other parse errors.

    Covers an objective's or data module's own argument (``--model.betta``: the parser says the class does not
    accept 'betta') and any other unknown key (``--trainer.max_step``: unrecognised arguments)."""
    import difflib

    from jsonargparse._util import import_object

    accepted = re.search(r"Problem with given class_path '([^']+)':\s*Option '([^']+)' is not accepted", parse_error)
    key = re.match(r'Parser key "([^"]+)"', parse_error)
    if accepted and key:
        class_path, option = accepted.groups()
        names = [name for name, _, _ in _arguments(import_object(class_path))]
        near = difflib.get_close_matches(option, names, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(n) for n in near)}?" if near else f"; it takes {', '.join(names)}"
        short = class_path.rsplit(".", 1)[-1]
        return (f"--{key.group(1)}.{option}: {class_path} has no argument {option!r}{hint} "
                f"(--{key.group(1)}.help {short} lists them all)")
    unrecognised = re.search(r"Unrecognized arguments:\s*(\S+)", parse_error)
    if unrecognised:
        option = unrecognised.group(1).split("=", 1)[0]
        known = [s for s in getattr(parser, "_option_string_actions", {}) if s.startswith("--")]
        near = difflib.get_close_matches(option, known, n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(near)}?" if near else ""
        return f"unknown option {option}{hint} (lit-align fit --help lists where to look)"
    return None

"""`wxscale submit`: render an sbatch template from ``submit/`` and hand it to Slurm.

Templates are plain bash scripts with a tiny substitution language, small enough to read in one sitting:

* ``{{name|q}}`` is replaced by the value quoted for bash (``shlex.quote``): one word, whatever it holds.
* ``{{name|args}}`` by the value split like a shell would (``shlex.split``) and every word quoted: a list of
  arguments (``extra_args="--resume run.seed=3"``), never a command (``;``, ``$(...)`` and ``|`` stay text).
* ``{{name}}`` by the value as is, which only ``#SBATCH`` lines (comments to bash, read by sbatch) and values
  of plain characters (letters, digits and ``_.,:%=+/@-``) may use: anything else is refused, so no value
  rendered into a script is ever run as code.
* ``{{> file}}`` on a line of its own is replaced by ``submit/partials/file`` (rendered the same way), so the
  job body is written once and shared by the one-node, multi-node and sweep templates.
* Parameters are declared in comment lines, ``# wxscale:param NAME=DEFAULT [one of: a|b] help text``.
  ``DEFAULT`` may be empty (an optional value), ``<required>``, or double-quoted when it holds spaces.
  The first declaration of a name wins, so a template overrides the defaults of the partials it includes.
* An ``#SBATCH`` line whose parameters all render empty is left out: ``account``, ``partition`` or
  ``constraint`` stay unset unless given.

The rendered script starts with a comment that records the template and every parameter's value, so a job's
script (``scontrol write batch_script``) says how it was made. Unknown or missing parameters raise
:class:`WxscaleError` naming them and listing the valid ones.

Python API (used by the sweep's Slurm executor): :func:`render_template`, :func:`submit_script`,
:func:`template_params`, :func:`list_templates`.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from wxscale.errors import WxscaleError
from wxscale.files import write_text_atomic

TEMPLATE_SUFFIX = ".sbatch"
REQUIRED = "<required>"

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\|\s*(q|args)\s*)?\}\}")
# What a value used unquoted outside an #SBATCH line may hold: nothing bash treats specially.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.,:%=+/@-]*")
_INCLUDE = re.compile(r"^\s*\{\{>\s*([A-Za-z0-9_.\-]+)\s*\}\}\s*$")
_DECLARATION = re.compile(
    r"^#\s*wxscale:param\s+([A-Za-z_][A-Za-z0-9_]*)=(\"[^\"]*\"|\S*)"
    r"\s*(?:\[one of:\s*([^\]]+)\])?\s*(.*)$"
)
_SBATCH_LINE = re.compile(r"^#SBATCH\s")


@dataclass(frozen=True)
class Param:
    """One declared template parameter."""

    name: str
    default: str | None  # None: required
    choices: tuple[str, ...]
    help: str

    @property
    def required(self) -> bool:
        return self.default is None


def submit_dir() -> Path:
    """The templates' folder: ``$WXSCALE_SUBMIT_DIR``, else ``submit/`` beside the package, else ``./submit``.

    The environment variable lets an installed (non-editable) copy, such as the container's, find them.
    """
    env = os.environ.get("WXSCALE_SUBMIT_DIR")
    if env:
        return Path(env)
    beside_package = Path(__file__).resolve().parents[1] / "submit"
    if beside_package.is_dir():
        return beside_package
    return Path.cwd() / "submit"


def list_templates() -> list[str]:
    """Names of the templates in :func:`submit_dir` (file names without ``.sbatch``)."""
    folder = submit_dir()
    return sorted(p.name[: -len(TEMPLATE_SUFFIX)] for p in folder.glob(f"*{TEMPLATE_SUFFIX}"))


def _resolve(name_or_path: str | os.PathLike) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    folder = submit_dir()
    for candidate in (folder / f"{path.name}{TEMPLATE_SUFFIX}", folder / path.name):
        if candidate.is_file():
            return candidate
    raise WxscaleError(
        f"template {str(name_or_path)!r} not found (neither a file nor a template in {folder}); "
        f"templates: {', '.join(list_templates()) or 'none'}"
    )


def _expand_includes(path: Path, seen: tuple[Path, ...] = ()) -> list[str]:
    """The template's lines with every ``{{> file}}`` replaced by that partial's lines (recursively)."""
    if path.resolve() in seen:
        chain = " -> ".join(p.name for p in (*seen, path))
        raise WxscaleError(f"template include cycle: {chain}")
    lines: list[str] = []
    for line in path.read_text().splitlines():
        match = _INCLUDE.match(line)
        if match is None:
            lines.append(line)
            continue
        partial = path.parent / "partials" / match.group(1)
        if not partial.is_file():
            partial = path.parent / match.group(1)  # a partial including a sibling partial
        if not partial.is_file():
            where = path.parent / "partials"
            raise WxscaleError(f"{path}: included file {match.group(1)!r} not found in {where}")
        lines += _expand_includes(partial, (*seen, path.resolve()))
    return lines


def _declarations(lines: list[str], where: Path) -> dict[str, Param]:
    params: dict[str, Param] = {}
    for line in lines:
        match = _DECLARATION.match(line)
        if match is None:
            continue
        name, default, choices, text = match.groups()
        default = default[1:-1] if default.startswith('"') else default
        options = tuple(c.strip() for c in choices.split("|")) if choices else ()
        if name in params:
            # The first declaration wins (a template overrides its partials' defaults); choices and help
            # it leaves out come from the later one, so an override can be a bare NAME=DEFAULT.
            first = params[name]
            params[name] = Param(name, first.default, first.choices or options, first.help or text.strip())
            continue
        params[name] = Param(name, None if default == REQUIRED else default, options, text.strip())
    used = {m.group(1) for line in lines for m in _PLACEHOLDER.finditer(line) if not _DECLARATION.match(line)}
    undeclared = sorted(used - params.keys())
    if undeclared:
        raise WxscaleError(f"{where}: uses undeclared parameter(s) {', '.join(undeclared)}; "
                           "declare each with a '# wxscale:param NAME=DEFAULT help' line")
    return params


def template_params(name_or_path: str | os.PathLike) -> dict[str, Param]:
    """The parameters a template declares (its own and its partials'), in declaration order."""
    path = _resolve(name_or_path)
    return _declarations(_expand_includes(path), path)


def _check_values(path: Path, declared: dict[str, Param], given: dict[str, object]) -> dict[str, str]:
    valid = ", ".join(declared) or "none"
    unknown = sorted(set(given) - declared.keys())
    if unknown:
        raise WxscaleError(
            f"{path.name}: unknown parameter(s) {', '.join(unknown)}; valid parameters: {valid}"
        )
    values = {name: (str(given[name]) if name in given else p.default) for name, p in declared.items()}
    missing = [name for name, value in values.items() if value is None]
    if missing:
        raise WxscaleError(f"{path.name}: missing required parameter(s) {', '.join(missing)} "
                           f"(give NAME=VALUE); valid parameters: {valid}")
    for name, value in values.items():
        if "\n" in value or "\r" in value:
            raise WxscaleError(f"{path.name}: parameter {name} must be one line, got {value!r}")
        choices = declared[name].choices
        if choices and value not in choices:
            raise WxscaleError(f"{path.name}: parameter {name}={value!r} is not one of {', '.join(choices)}")
    return values  # type: ignore[return-value]  # no None left after the check above


def render_template(name_or_path: str | os.PathLike, params: dict[str, object] | None = None) -> str:
    """Render a template (a name in ``submit/`` or a path) with ``params``; returns the script text.

    Raises :class:`WxscaleError` for an unknown template, unknown or missing parameters, a value outside
    a parameter's choices, or a value with whitespace on an ``#SBATCH`` line (Slurm would cut it there).
    """
    path = _resolve(name_or_path)
    lines = _expand_includes(path)
    declared = _declarations(lines, path)
    values = _check_values(path, declared, dict(params or {}))

    def substitute(match: re.Match[str], line: str) -> str:
        name, kind = match.group(1), match.group(2)
        value = values[name]
        if kind == "q":
            return shlex.quote(value)
        if kind == "args":
            try:
                words = shlex.split(value)
            except ValueError as err:
                raise WxscaleError(f"{path.name}: parameter {name}={value!r} is not a list of arguments ({err}); "
                                   "quote words the way a shell would") from None
            return " ".join(shlex.quote(w) for w in words)
        if not _SBATCH_LINE.match(line) and not _PLAIN_VALUE.fullmatch(value):
            raise WxscaleError(f"{path.name}: parameter {name}={value!r} may hold only letters, digits and "
                               f"_.,:%=+/@- (it is used unquoted in the line {line.strip()!r})")
        return value

    out: list[str] = []
    for line in lines:
        if _DECLARATION.match(line):
            continue  # declarations document the template; the record below replaces them
        names = [m.group(1) for m in _PLACEHOLDER.finditer(line)]
        if _SBATCH_LINE.match(line) and names:
            if all(values[n] == "" for n in names):
                continue  # optional Slurm option left unset
            spaced = [n for n in names if re.search(r"\s", values[n])]
            if spaced:
                raise WxscaleError(f"{path.name}: parameter(s) {', '.join(spaced)} may not hold whitespace "
                                   f"(used on the line {line.strip()!r})")
        # rstrip: an empty extra_args leaves no tail
        out.append(_PLACEHOLDER.sub(lambda m, line=line: substitute(m, line), line).rstrip())

    record = [f"# Rendered by 'wxscale submit' from {path.name} with:"]
    record += [f"#   {name}={values[name]}" for name in declared]
    # The record goes right after the shebang: sbatch reads #SBATCH options up to the first line that is
    # neither a comment nor blank, so comments before them keep the option block intact.
    shebang = out[:1] if out and out[0].startswith("#!") else []
    return "\n".join(shebang + record + out[len(shebang):]) + "\n"


def afterok(*job_ids: str | int) -> str:
    """An sbatch dependency that starts a job only after all ``job_ids`` completed successfully."""
    return "afterok:" + ":".join(str(j) for j in job_ids)


def submit_script(text: str, sbatch_args: list[str] | None = None, dependency: str | None = None) -> str:
    """Submit a rendered script with ``sbatch --parsable`` (the script on stdin) and return the job id.

    ``dependency`` is an sbatch dependency such as ``afterok:123`` (see :func:`afterok`); it may also be
    given in ``sbatch_args`` as ``--dependency=...``. Raises :class:`WxscaleError` when sbatch is missing
    or refuses the job (its message included).
    """
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise WxscaleError("sbatch not found on PATH: submit from a Slurm login node, or use --dry-run")
    cmd = [sbatch, "--parsable", *(sbatch_args or [])]
    if dependency:
        cmd.append(f"--dependency={dependency}")
    result = subprocess.run(cmd, input=text, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise WxscaleError(f"sbatch refused the job (exit {result.returncode}): {result.stderr.strip()}")
    # --parsable prints "jobid" or "jobid;cluster"; warnings may precede it on other lines.
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    job_id = last.split(";")[0].strip()
    if not job_id.isdigit():
        raise WxscaleError(f"sbatch did not print a job id: {result.stdout!r} {result.stderr!r}")
    return job_id


def _parse_assignments(items: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise WxscaleError(f"parameter {item!r} is not NAME=VALUE")
        params[name.strip()] = value
    return params


def _describe(name: str) -> str:
    lines = [f"parameters of {name}:"]
    for p in template_params(name).values():
        default = "(required)" if p.required else f"default {p.default!r}"
        choices = f" one of {'|'.join(p.choices)};" if p.choices else ""
        lines.append(f"  {p.name:<16} {default};{choices} {p.help}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("template", nargs="?", help="template name in submit/ (e.g. one_node) or a path")
    parser.add_argument("params", nargs="*", metavar="NAME=VALUE", help="template parameters")
    parser.add_argument("-s", "--set", dest="set_params", action="append", default=[], metavar="NAME=VALUE",
                        help="a template parameter (repeatable; same as a positional NAME=VALUE)")
    parser.add_argument("--dry-run", action="store_true", help="print the rendered script; submit nothing")
    parser.add_argument("--list", action="store_true",
                        help="list the templates, or the parameters of TEMPLATE when one is given")
    parser.add_argument("--save", type=Path, help="also write the rendered script to this file")
    parser.add_argument("--dependency", help="sbatch dependency, e.g. afterok:12345")
    parser.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                        help="extra argument passed to sbatch as is (repeatable), e.g. --sbatch-arg=--hold")


def run(args: argparse.Namespace) -> int:
    if args.list or args.template is None:
        if args.template is None:
            print(f"templates in {submit_dir()}: {', '.join(list_templates()) or 'none'}")
            return 0 if args.list else 2
        print(_describe(args.template))
        return 0
    params = _parse_assignments([*args.params, *args.set_params])
    text = render_template(args.template, params)
    if args.save is not None:
        try:
            write_text_atomic(args.save, text)
        except OSError as err:
            raise WxscaleError(f"--save {args.save}: cannot write there ({err.strerror or err})") from None
    if args.dry_run:
        sys.stdout.write(text)
        return 0
    job_id = submit_script(text, args.sbatch_arg, dependency=args.dependency)
    print(job_id)
    return 0

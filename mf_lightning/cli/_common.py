"""What every command-line tool shares, so a tool's ``main`` only parses its own arguments.

* the options that mean the same everywhere: ``--model``/``--head``/``--device``/``--dtype``
  (:func:`add_model_args`), a structure with ``--frame``/``--supercell``
  (:func:`add_structure_args`), the electric-field options of MD (:func:`add_field_args`);
* the process set-up before heavy work (:func:`setup_process`: malloc, threads, logging) and
  model loading from those options (:func:`load_model_from`, :func:`calculator_from`);
* one behaviour for bad input (see :mod:`mf_lightning.errors`), below.

``cli_main(main, prog)`` wraps a tool's ``main(argv) -> int``: user errors become one line on
stderr (``<prog>: error: <what and where>``) and exit code :data:`~mf_lightning.errors.EXIT_INPUT`;
``--debug`` (or ``MF_DEBUG=1``) lets the traceback through. Anything else is a bug and keeps its
traceback. :func:`parser` gives every tool the same ``--debug`` flag in its ``--help``, and one
convention (``tests/unit/cli/test_cli_convention.py``): every default shown in ``--help``
(:class:`HelpFormatter`), no abbreviated options (``--step`` is not ``--steps``), a usage error
is one line and exit code 2, and ``--help`` is fast: this module and a tool's module import no
torch, ASE or mace at the top (:func:`doc_summary` and :func:`module_constant` read another
module's docstring and constants from its source without importing it); a tool imports them in
``main`` after its arguments are parsed.
"""

from __future__ import annotations

import argparse
import ast
import errno
import functools
import logging
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

from mf_lightning.errors import (
    EXIT_FAILED,
    EXIT_INPUT,
    OS_ERRORS,
    ArgumentError,
    InputError,
    ModelFileError,
    RunFailedError,
)
from mf_lightning.units import MV_PER_CM_PER_V_PER_A
from mf_lightning.utils import DTYPES

DEBUG_FLAG = "--debug"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in ``--help``, unless its help already says it or there is none to
    show (``None``, a flag's ``False``)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if any(action.default is v for v in (None, False, argparse.SUPPRESS)) or "default" in text:
            return text
        return super()._get_help_string(action)


class RawDescriptionHelpFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """:class:`HelpFormatter` keeping the description's own line breaks (a table, a list)."""


class Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr, ``<prog>: error: <what> (see <prog> --help)``, and exit
    code 2, as every other bad input; ``--help`` shows the full usage."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def parser(prog: str, description: str = "", **kwargs) -> argparse.ArgumentParser:
    kwargs.setdefault("formatter_class", HelpFormatter)
    kwargs.setdefault("allow_abbrev", False)
    p = Parser(prog=prog, description=description, **kwargs)
    p.add_argument(DEBUG_FLAG, action="store_true", help="show the full traceback of an error")
    return p


def one_line(text: str) -> str:
    return " ".join(str(text).split())


# errno-less instances of the OSError subclasses (raised by code, not the OS)
_OS_CLASSES = {FileNotFoundError: errno.ENOENT, IsADirectoryError: errno.EISDIR, NotADirectoryError: errno.ENOTDIR,
               FileExistsError: errno.EEXIST, PermissionError: errno.EACCES}


def _shown(name) -> str:
    name = str(name)
    return name if len(name) <= 200 else name[:100] + "..." + name[-97:]


def classify(exc: BaseException) -> Optional[Tuple[int, str]]:
    """(exit code, one-line message) for an error the user can act on; None for a bug."""
    if isinstance(exc, InputError):
        return EXIT_INPUT, one_line(exc)
    if isinstance(exc, RunFailedError):
        return EXIT_FAILED, one_line(exc)
    if isinstance(exc, OSError):
        code = exc.errno if exc.errno is not None else _OS_CLASSES.get(type(exc))
        if code not in OS_ERRORS:
            return None
        status, what = OS_ERRORS[code]
        if code == errno.ENOSPC:  # the historical wording: "disk full while writing <file>: ..."
            return status, f"disk full while writing {_shown(exc.filename or 'output')}: " + what.split(": ", 1)[1]
        if exc.filename is None:
            detail = one_line(exc.strerror or exc)
            return status, f"{what} ({detail})" if detail else what
        where = _shown(exc.filename) + (f" -> {_shown(exc.filename2)}" if exc.filename2 else "")
        return status, one_line(f"{where}: {what}")
    return None


def debug_requested(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get("MF_DEBUG", "") not in ("", "0")


def report(exc: BaseException, prog: str) -> Optional[int]:
    """Print a user error's one line and return its exit code; None if it is a bug."""
    known = classify(exc)
    if known is None:
        return None
    code, message = known
    print(f"{prog}: error: {message}", file=sys.stderr)
    return code


def cli_main(prog: str):
    """Decorator for a tool's ``main(argv) -> int`` (see the module docstring)."""

    def wrap(main: Callable[[Sequence[str]], int]) -> Callable[[Optional[Sequence[str]]], int]:
        @functools.wraps(main)
        def run(argv: Optional[Sequence[str]] = None) -> int:
            argv = list(sys.argv[1:] if argv is None else argv)
            try:
                return main(argv)
            except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs below
                if debug_requested(argv):
                    raise
                code = report(exc, prog)
                if code is None:
                    raise
                return code

        return run

    return wrap


def run_hydra_job(job, cfg, prog: str):
    """Run a Hydra entry point's body with the CLIs' bad-input policy: a user error is one line
    on stderr and exit code 2 (``debug=true`` shows the traceback), a run whose result cannot be
    trusted exits 3; bugs keep their traceback (Hydra prints it)."""
    try:
        return job(cfg)
    except Exception as exc:  # noqa: BLE001 - sorted into user errors and bugs
        if bool(cfg.get("debug", False)) or debug_requested([]):
            raise
        code = report(exc, prog)
        if code is None:
            raise
        sys.stdout.flush()
        sys.exit(code)


# ---------------------------------------------------------------------- shared options and set-up
def _module_tree(module: str) -> ast.Module:
    """The syntax tree of one of this package's modules, read from its source: importing it (its
    torch, ASE, mace) would cost a tool's ``--help`` seconds."""
    parts = module.split(".")
    if parts[0] != PACKAGE_DIR.name:
        raise ValueError(f"{module}: not a module of {PACKAGE_DIR.name}")
    path = PACKAGE_DIR.joinpath(*parts[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def doc_summary(module: str) -> str:
    """The first paragraph of a module's docstring: a tool's ``--help`` description."""
    return (ast.get_docstring(_module_tree(module)) or "").split("\n\n")[0]


def module_constant(module: str, name: str):
    """A module's constant written as a literal (``ENGINES = ("ase", "torchsim")``), read from its
    source: the choices and defaults of an option stay defined once, where they are used."""
    for node in _module_tree(module).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
            node, ast.AnnAssign) and node.value is not None else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                break
    raise LookupError(f"{module} defines no literal constant {name}")


def add_model_args(p: argparse.ArgumentParser, dtype_default: Optional[str] = "float64",
                   model_help: str = "an exported model (model.pt from train.py, or an ensemble.pt of mf-ensemble)"
                   ) -> None:
    """``--model``, ``--head``, ``--device``, ``--dtype`` with one meaning in every tool.
    ``dtype_default=None``: the model's own dtype."""
    p.add_argument("--model", required=True, help=model_help)
    p.add_argument("--head", default=None,
                   help="the head to evaluate (default: the model's only head, or the first response head)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", default=dtype_default, choices=sorted(DTYPES),
                   help="compute dtype" + ("" if dtype_default else " (default: the model's own)"))
    p.add_argument("--allow-untrained", action="store_true",
                   help="compute quantities the head never learned (e.g. forces of a head trained on Z* and "
                        "alpha only) instead of stopping; a warning is printed and written into the output")


def add_structure_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("structure", help="any file ASE reads")
    p.add_argument("--frame", type=int, default=0, help="the frame of the structure file (0: the first)")
    p.add_argument("--supercell", type=int, nargs=3, default=None, metavar=("NA", "NB", "NC"),
                   help="repeat the cell NA x NB x NC times (default: as read)")


def setup_process(threads: Optional[int] = None, log: bool = True) -> None:
    """Before heavy work: glibc malloc settings and torch threads (:mod:`mf_lightning.runtime`),
    and progress messages on stderr."""
    from mf_lightning.runtime import configure_process

    configure_process(threads)
    if log:
        logging.basicConfig(level=logging.INFO, format="%(message)s")


def check_model_path(model) -> None:
    """A folder given as ``--model`` is named as such, and a path that cannot be looked at (a
    symbolic link loop, a name too long, a path through a file) keeps the OS's reason: the loaders
    would call either "no such model file". A missing path is left to them (a model's name or URL)."""
    if not isinstance(model, (str, os.PathLike)):
        return
    try:
        st = os.stat(model)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise ModelFileError(f"{model}: is a folder, not a model file (give the model.pt inside it?)")


def load_model_from(args: argparse.Namespace):
    from mf_lightning.model.io import load_model

    check_model_path(args.model)
    return load_model(args.model, device=args.device, dtype=args.dtype)


def calculator_from(args: argparse.Namespace):
    from mf_lightning.simulation.calculator import MACEFieldCalculator

    check_model_path(args.model)
    return MACEFieldCalculator(args.model, device=args.device, dtype=args.dtype, head=args.head,
                               allow_untrained=getattr(args, "allow_untrained", False))


def finish(warnings: Sequence[str], paths) -> int:
    """A tool's last lines: each warning on stderr, then the files it wrote; exit code 0."""
    import sys

    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print("written:", ", ".join(str(p) for p in (paths.values() if hasattr(paths, "values") else paths)))
    return 0


def writable_output(path, folder: bool = False, option: str = "--out") -> Path:
    """Refuse, before any work, an output that cannot be written: a file where a folder is
    expected (``folder``) or a folder where a file is, or a location where nothing can be
    created (a read-only file system, no permission: the OSError, one line by :func:`classify`).
    Creates the folder (``folder``) or the file's parent folder."""
    path = Path(path)
    if folder and path.exists() and not path.is_dir():
        raise ArgumentError(f"{option} {path}: exists and is a file, not a folder: give an output folder")
    if not folder and path.is_dir():
        raise ArgumentError(f"{option} {path}: is a folder: give a file name")
    where = path if folder else path.parent
    for parent in [where, *where.parents]:  # the first existing ancestor must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise ArgumentError(f"{option} {path}: {parent} is a file, not a folder")
            break
    where.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as exc:  # named as the folder, not the probe's random name
        raise OSError(exc.errno, exc.strerror, str(where)) from exc
    return path


# |E0| above this (V/A; 1 V/A = 100 MV/cm) is far beyond any dielectric's breakdown: a unit slip
LARGE_FIELD_V_PER_A = 1.0


def field_in_v_per_a(value: float, unit: str) -> float:
    from mf_lightning.data.quantities import to_internal

    return float(to_internal("electric_field", unit, value, volume=0.0))


def field_units() -> list:
    from mf_lightning.data.quantities import QUANTITIES

    return sorted(QUANTITIES["electric_field"].file_units)


def field_amplitude(args: argparse.Namespace) -> float:
    """``--E0`` in V/A; a warning when it is far above breakdown fields (a unit slip)."""
    e0 = field_in_v_per_a(args.E0, args.field_unit)
    if abs(e0) > LARGE_FIELD_V_PER_A:
        logging.getLogger(__name__).warning(
            "--E0 %g %s is %g MV/cm, far above breakdown fields: did you mean --field-unit MV/cm?",
            args.E0, args.field_unit, abs(e0) * MV_PER_CM_PER_V_PER_A)
    return e0


def add_field_amplitude_args(g, E0: float = 0.0, unit: str = "V/A", period_fs: Optional[float] = None) -> None:
    """``--E0``, ``--field-unit``, ``--axis``, ``--period-fs``: the field of MD and of hysteresis loops."""
    g.add_argument("--E0", type=float, default=E0, help="amplitude (unit: --field-unit)")
    g.add_argument("--field-unit", default=unit, choices=field_units(), help="the unit of --E0")
    g.add_argument("--axis", default="z", help="the field's direction: x | y | z | 'ex,ey,ez'")
    g.add_argument("--period-fs", type=float, default=period_fs, help="period of a sine field (fs)")


def add_field_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("electric field")
    g.add_argument("--field-kind", default="none", choices=["none", "constant", "sine"],
                   help="none, a constant field, or E0 sin(2 pi t / period)")
    add_field_amplitude_args(g)
    g.add_argument("--t-on-fs", type=float, default=None, help="field off before this time")
    g.add_argument("--t-off-fs", type=float, default=None, help="field off from this time")
    g.add_argument("--field-function", default=None, help="module:function f(t_fs) -> 3 values in V/A")


def field_from_args(args: argparse.Namespace):
    """The field protocol the options describe (None: no field)."""
    from mf_lightning.simulation.md import FieldProtocol, axis_vector, import_function

    if args.field_function:
        return import_function(args.field_function)
    if args.field_kind == "none":
        return None
    return FieldProtocol(kind=args.field_kind, E0=field_amplitude(args),
                         direction=axis_vector(args.axis), period_fs=args.period_fs, t_on_fs=args.t_on_fs,
                         t_off_fs=args.t_off_fs)

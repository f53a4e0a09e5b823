"""One convention for every ``mf-*`` console script (pyproject ``[project.scripts]``): ``--help``
exits 0 in under a second above bare Python start-up and imports no torch, ASE, mace or
matplotlib; argparse tools show every default, accept no abbreviated option (a usage error is one
line, exit code 2) and take a model as ``--model``; the Hydra apps (mf-train, mf-eval) have their
own help (eval's documents ``model=``, ``data=``, ... with conf/eval.yaml's defaults)."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import statistics
import subprocess
import sys
import time

import pytest
import yaml

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
HYDRA_APPS = {"mf-train", "mf-eval"}
ARGPARSE_TOOLS = sorted(set(SCRIPTS) - HYDRA_APPS)
HEAVY = ("torch", "ase", "mace", "e3nn", "matplotlib", "pytorch_lightning")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}


def entry(script: str):
    module, function = SCRIPTS[script].split(":")
    return module, function


def run_script(script: str, *args: str, report_modules: bool = False) -> subprocess.CompletedProcess:
    """The console script as its wrapper runs it: import the module, call the entry point."""
    module, function = entry(script)
    code = (f"import sys\nfrom {module} import {function}\ntry:\n    code = {function}()\n"
            f"except SystemExit as exc:\n    code = exc.code\n")
    if report_modules:
        code += f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    code += "sys.exit(code or 0)\n"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=120)


def median_seconds(argv, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, cwd=REPO, env=ENV, capture_output=True, timeout=120)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build(script: str) -> argparse.ArgumentParser:
    module, _ = entry(script)
    return importlib.import_module(module).build_parser()


@pytest.fixture(scope="module")
def bare_python_s():
    return median_seconds([sys.executable, "-c", "pass"])


def test_every_script_is_covered():
    assert HYDRA_APPS <= set(SCRIPTS) and len(ARGPARSE_TOOLS) >= 12, SCRIPTS


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_help_exits_0_fast_and_imports_nothing_heavy(script, bare_python_s):
    proc = run_script(script, "--help", report_modules=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage" in proc.stdout.lower()
    heavy = proc.stdout.strip().splitlines()[-1]
    assert heavy == "HEAVY []", f"{script} --help imports {heavy}"
    module, function = entry(script)
    code = f"import sys\nfrom {module} import {function}\nsys.exit({function}())"
    seconds = median_seconds([sys.executable, "-c", code, "--help"])
    assert seconds - bare_python_s < 1.0, f"{script} --help: {seconds:.2f} s (bare python {bare_python_s:.2f} s)"


@pytest.mark.parametrize("script", ARGPARSE_TOOLS)
def test_argparse_tools_show_defaults_and_refuse_abbreviations(script):
    parser = build(script)
    assert parser.allow_abbrev is False
    assert issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    text = " ".join(parser.format_help().split())
    for action in parser._actions:
        if not action.option_strings or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            continue
        shown = parser._get_formatter()._get_help_string(action)
        assert action.help and "default" in shown, f"{script} {action.option_strings[0]}: default not shown"
        if shown.endswith("(default: %(default)s)"):
            assert f"(default: {action.default})" in text

    # an abbreviation of its longest option is not that option: exit 2, one line
    longest = max((o for a in parser._actions for o in a.option_strings if o not in ("--help", "--debug")), key=len)
    abbreviated = longest[:-1]
    assert abbreviated not in parser._option_string_actions
    for action in parser._actions:  # nothing else missing, so the abbreviation is the error
        action.required = False
        if not action.option_strings and action.nargs in (None, "+"):
            action.nargs = "?" if action.nargs is None else "*"
    proc_err = _parse_error(parser, [abbreviated])
    assert proc_err[0] == 2
    lines = proc_err[1].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{parser.prog}: error: ") and abbreviated in lines[0], lines


def _parse_error(parser, argv):
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as info:
        parser.parse_args(argv)
    return info.value.code, err.getvalue()


def test_an_abbreviated_option_of_md_is_a_one_line_usage_error():
    proc = run_script("mf-md", "s.xyz", "--model", "m.pt", "--out", "t.xyz", "--steps", "3", "--log-ever", "5")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "mf-md: error: unrecognized arguments: --log-ever 5 (see mf-md --help)"]


@pytest.mark.parametrize("script", ARGPARSE_TOOLS)
def test_a_model_is_given_as_model(script):
    parser = build(script)
    takes_model = [a for a in parser._actions if "model" in a.dest]
    if takes_model:
        assert "--model" in parser._option_string_actions, f"{script}: a model not given as --model"
        for action in takes_model:  # another spelling (export's positional) is never required
            assert action.option_strings == ["--model"] or not action.required


def test_foundation_help_does_not_list_the_models_but_the_command_does():
    proc = run_script("mf-foundation", "--help")
    assert proc.returncode == 0 and "mace-mp" not in proc.stdout and "http" not in proc.stdout
    listed = run_script("mf-foundation", "list")
    assert listed.returncode == 0 and "mace-mp" in listed.stdout and "http" in listed.stdout, listed.stderr[-2000:]
    assert run_script("mf-foundation", "lst").returncode == 2


def _yaml_value(value) -> str:
    return yaml.safe_dump(value).splitlines()[0]  # null, true, 8, auto


def test_eval_help_documents_its_keys_with_their_defaults():
    proc = run_script("mf-eval", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = proc.stdout
    assert "model=" in text and "data=" in text and "???" not in text and "model_file" not in text
    assert "experiment:" not in text and "model/coupling" not in text  # training's groups are not eval's
    cfg = yaml.safe_load((REPO / "mf_lightning" / "conf" / "eval.yaml").read_text())
    for key, value in cfg.items():
        if key in ("defaults", "hydra", "model_file"):
            continue
        assert f"  {key}=" in text, f"mf-eval --help does not document {key}="
        block = text[text.index(f"  {key}="):]
        end = re.search(r"\n  \S|\n\S|\n\n", block[1:])  # the next key, or the end of the section
        block = block[: end.start() + 1] if end else block
        assert f"(default: {_yaml_value(value)}" in " ".join(block.split()), (key, value, block)


def test_train_help_lists_the_config_groups():
    proc = run_script("mf-train", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    from mf_lightning.cli.train import config_groups

    groups = config_groups(REPO / "mf_lightning" / "conf")
    assert "experiment" in groups and "model/coupling" in groups
    for group, options in groups.items():
        assert f"{group}: {', '.join(options)}" in proc.stdout


def test_the_package_and_the_cli_helpers_import_without_torch():
    code = ("import sys\nimport mf_lightning, mf_lightning.cli._common, mf_lightning.errors, mf_lightning.units, "
            "mf_lightning.utils\nfrom mf_lightning.utils import DTYPES\nassert sorted(DTYPES) == ['float32', 'float64']\n"
            f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
            "import torch\nfrom mf_lightning.utils import resolve_dtype\n"
            "assert resolve_dtype('float32') is torch.float32 and resolve_dtype(torch.float64) is torch.float64\n"
            "print(mf_lightning.FieldMACE.__name__, mf_lightning.MACEFieldCalculator.__name__, "
            "mf_lightning.COUPLING_FORMS)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, second = proc.stdout.strip().splitlines()[-2:]
    assert first == "[]" and second.startswith("FieldMACE MACEFieldCalculator (")


def test_e3nn_imported_first_still_goes_through_deps():
    """After ``import mf_lightning``, whichever module imports e3nn first gets mace before it and
    the weights-only variables handled (mf_lightning._deps), as the eager import once did; each
    package is executed once and keeps its own spec."""
    code = ("import os, sys\nimport mf_lightning\nimport e3nn.o3\nimport mace, mace.modules\n"
            "assert 'mf_lightning._deps' in sys.modules and hasattr(sys.modules['e3nn'], 'o3')\n"
            "assert type(mace.__spec__.loader).__name__ == 'SourceFileLoader', mace.__spec__\n"
            "assert type(sys.modules['e3nn'].__spec__.loader).__name__ == 'SourceFileLoader'\n"
            "import mf_lightning.model.split_backward  # imports e3nn directly\n"
            "print(os.environ['TORCH_FORCE_WEIGHTS_ONLY_LOAD'])\n")
    env = {**ENV, "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().splitlines()[-1] == "1", proc.stderr[-3000:]


def test_module_constant_reads_the_literal_and_refuses_what_is_not_one():
    from mf_lightning.analysis.screening import ENGINES
    from mf_lightning.cli._common import doc_summary, module_constant

    assert module_constant("mf_lightning.analysis.screening", "ENGINES") == ENGINES
    assert doc_summary("mf_lightning.analysis.spectra").startswith("IR and Raman spectra")
    with pytest.raises(LookupError):
        module_constant("mf_lightning.analysis.spectra", "C_CM_PER_FS")  # computed, not a literal

"""Errors a user can fix, and the exit codes every command-line tool shares.

Every CLI (``train.py``, ``eval.py``, ``mf-<tool>``) treats bad input the
same way (:func:`mf_lightning.cli._common.cli_main`): an :class:`InputError` (or a missing or
unreadable file) is printed as one line naming the file, frame and key where they apply, without
a traceback (``--debug``, or ``debug=true`` for the Hydra entry points, shows it), and the tool
exits with :data:`EXIT_INPUT`. Batch tools (predict, matbench, distill) skip a bad structure,
write it to ``<out>.errors.csv`` and exit with :data:`EXIT_PARTIAL` when any was skipped.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_PARTIAL = 1  # a batch tool finished, but some structures failed (listed in its errors file)
EXIT_INPUT = 2  # bad input: a file, an argument or a configuration value (argparse uses 2 too)
EXIT_FAILED = 3  # the run itself failed (e.g. non-finite metrics, disk full)


class InputError(Exception):
    """A problem with what the user gave: a file, an argument, a configuration value. Its message
    says what is wrong and where (file, frame, key), in one line."""


class HeadError(InputError, ValueError):
    """A head that does not exist, or several heads and no way to choose one."""


class UntrainedQuantityError(InputError, ValueError):
    """A tool needs a quantity (energy and forces for a relaxation or MD, Z* or alpha for the
    response) that the chosen head never learned: its numbers would be meaningless."""


class ModelFileError(InputError, RuntimeError):
    """A model file is missing, truncated, corrupted, or not of a kind we may load."""


class CueqUnavailableError(InputError, RuntimeError):
    """cuEquivariance was asked for, and cuequivariance-torch is not installed."""


class RunFailedError(Exception):
    """A run that completed its steps but whose result must not be trusted (non-finite metrics)."""


class ArgumentError(InputError, ValueError):
    """A value the user chose (an argument, a setting) that cannot work."""

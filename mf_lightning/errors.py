"""Errors a user can fix, and the exit codes every command-line tool shares.

Every CLI (``train.py``, ``eval.py``, ``mf-<tool>``) treats bad input the
same way (:func:`mf_lightning.cli._common.cli_main`): an :class:`InputError` (or a missing or
unreadable file) is printed as one line naming the file, frame and key where they apply, without
a traceback (``--debug``, or ``debug=true`` for the Hydra entry points, shows it), and the tool
exits with :data:`EXIT_INPUT`. Batch tools (predict, matbench, distill) skip a bad structure,
write it to ``<out>.errors.csv`` and exit with :data:`EXIT_PARTIAL` when any was skipped.
"""

from __future__ import annotations

import errno

EXIT_OK = 0
EXIT_PARTIAL = 1  # a batch tool finished, but some structures failed (listed in its errors file)
EXIT_INPUT = 2  # bad input: a file, an argument or a configuration value (argparse uses 2 too)
EXIT_FAILED = 3  # the run itself failed (e.g. non-finite metrics, disk full)

# What an OSError's errno means to the user, by errno (not by exception class: a read-only file
# system is a plain OSError, EACCES and EPERM are both PermissionError but not the same thing).
# A location the user gave that cannot be used is bad input (exit 2); storage that fails under
# a run (full, over quota, an I/O error) is a failed run (exit 3). Other errnos stay bugs.
OS_ERRORS = {
    errno.ENOENT: (EXIT_INPUT, "no such file or folder"),
    errno.EISDIR: (EXIT_INPUT, "is a folder, not a file"),
    errno.ENOTDIR: (EXIT_INPUT, "not a folder (a part of this path is a file)"),
    errno.EEXIST: (EXIT_INPUT, "already exists"),
    errno.EACCES: (EXIT_INPUT, "permission denied"),
    errno.EPERM: (EXIT_INPUT, "operation not permitted"),
    errno.EROFS: (EXIT_INPUT, "read-only file system: choose a location you can write to"),
    errno.ELOOP: (EXIT_INPUT, "too many levels of symbolic links (a symbolic link loop)"),
    errno.ENAMETOOLONG: (EXIT_INPUT, "file name too long"),
    errno.ENOSPC: (EXIT_FAILED, "disk full while writing: free space and run again (resumable runs continue)"),
    errno.EDQUOT: (EXIT_FAILED, "disk quota exceeded while writing: free space and run again (resumable runs "
                                "continue)"),
    errno.EFBIG: (EXIT_FAILED, "file too large for this file system"),
    errno.EIO: (EXIT_FAILED, "input/output error (a failing disk or network file system)"),
    errno.EMFILE: (EXIT_FAILED, "too many open files"),
    errno.ENFILE: (EXIT_FAILED, "too many open files in the system"),
}
# (cli._common.classify reports OSErrors with these words; files.unreadable_reason explains an
# input path with the same ones)


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

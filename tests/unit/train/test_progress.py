"""Training shows what it learns and when it will end (issue 29, item 6): the progress bar carries
every quantity's last validation RMSE and the whole run's ETA; Lightning's litlogger advert and its
pytree deprecation warning are not printed."""

from __future__ import annotations

import logging
import subprocess
import sys

import torch

from mf_lightning.train.callbacks import format_duration, progress_items, run_progress_bar


def test_progress_items_name_each_quantity_and_the_run_eta():
    metrics = {"val/loss": torch.tensor(1.0), "val/sio2/forces_rmse": torch.tensor(0.25),
               "val/sio2/becs_diag_rmse": torch.tensor(0.118), "val/sio2/forces_mae": torch.tensor(0.1)}
    items = progress_items(metrics, steps_done=10, steps_left=50, elapsed_s=60.0)
    assert items == {"Z*": "0.118", "F": "0.25", "run ETA": "5m00s"}
    capped = progress_items(metrics, steps_done=10, steps_left=50, elapsed_s=60.0, time_left_s=42.0)
    assert capped["run ETA"] == "42s"
    two = progress_items({"val/a/energy_rmse": 1.0, "val/b/energy_rmse": 2.0}, 0, 10, 0.0)
    assert two == {"a:E": "1", "b:E": "2"}  # several datasets: named; no ETA before a step
    assert format_duration(3725) == "1h02m"
    bar = run_progress_bar()
    assert type(bar).__mro__[1].__name__ in ("RichProgressBar", "TQDMProgressBar")


def test_lightning_noise_is_silenced(caplog):
    from pytorch_lightning.utilities.rank_zero import rank_zero_info

    import mf_lightning.train.callbacks  # noqa: F401  (installs the filters)

    with caplog.at_level(logging.INFO, logger="pytorch_lightning.utilities.rank_zero"):
        rank_zero_info("💡 Tip: ... try installing [litlogger](https://pypi.org/project/litlogger/) ...")
        rank_zero_info("kept")
    assert [r.getMessage() for r in caplog.records] == ["kept"]
    # pytest resets warning filters per test: the process-wide filter is checked in a process
    script = ("import warnings, mf_lightning.train.callbacks; "
              "warnings.warn('`isinstance(treespec, LeafSpec)` is deprecated, use ...', FutureWarning); "
              "warnings.warn('another deprecation', FutureWarning)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "another deprecation" in proc.stderr and "LeafSpec" not in proc.stderr

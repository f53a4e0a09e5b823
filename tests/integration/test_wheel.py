"""The package trains when installed from a wheel: configs ship inside it (mf_lightning/conf) and
``mf-train`` is a console script. The wheel is built from this checkout and installed into a
folder of its own (``pip install --target``, no dependencies: they are this environment's),
and the quickstart runs from a working directory outside the checkout, importing the installed
copy only."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, SHARED_DATA

pytestmark = pytest.mark.slow


def test_wheel_install_trains_the_quickstart_through_the_console_script(tmp_path):
    wheels = tmp_path / "wheels"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(wheels.glob("mf_lightning-*.whl"))
    target = tmp_path / "installed"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-3000:]
    assert (target / "mf_lightning" / "conf" / "experiment" / "quickstart.yaml").is_file()
    assert (target / "mf_lightning" / "data" / "datamodules" / "__init__.py").is_file()
    assert all((target / "bin" / f"mf-{tool}").is_file() for tool in ("train", "eval", "predict", "md", "baselines"))
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PROJECT_ROOT"}
    env.update({"PYTHONPATH": str(target), "MF_DATA_DIR": str(SHARED_DATA), "MF_CACHE_DIR": str(tmp_path / "cache"),
                "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    where = subprocess.run([sys.executable, "-c", "import mf_lightning, mf_lightning.data.datamodules; "
                            "print(mf_lightning.__file__, mf_lightning.data.datamodules.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert where.returncode == 0 and where.stdout.count(str(target)) == 2, where.stdout + where.stderr[-2000:]
    run = subprocess.run([str(target / "bin" / "mf-train"), "experiment=quickstart", "trainer.max_epochs=1",
                          "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                          "+trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
                          "torch_threads=1", "hydra.run.dir=run"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    metrics = json.loads((work / "run" / "metrics.json").read_text())
    assert metrics["finished"] and metrics["test"]["sio2"]["forces"]["rmse"] > 0
    assert (work / "run" / "model.pt").is_file()

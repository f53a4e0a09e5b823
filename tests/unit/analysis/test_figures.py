"""Figures fit for a paper: mf-spectra's and mf-hysteresis's figures in png, pdf and svg at a
chosen dpi, titles that name the field, units on the axes; a driven run draws no eps(omega) or
loss panel and marks its drive frequency; a quasi-static E_c carries half its grid step."""

from __future__ import annotations

import json

import matplotlib
import numpy as np
import pytest

from mf_lightning.analysis.hysteresis import loop_protocol, with_uncertainty, write_loop
from mf_lightning.analysis.spectra import C_CM_PER_FS, analyse, field_protocol, spectra_figure, write_outputs

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF"}
N, DT = 4000, 2.0  # samples, fs: 8 ps


def run(field=None, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(N) * DT
    p = 1e-3 * (np.sin(2 * np.pi * t * 500 * C_CM_PER_FS)[:, None] * [0.2, 0.3, 1.0]) + 1e-4 * rng.normal(size=(N, 3))
    alpha = np.tile(np.eye(3).reshape(1, 9), (N, 1)) * 0.01 + 1e-4 * rng.normal(size=(N, 9))
    return analyse(t, p, np.full(N, 100.0), 300.0, alpha=alpha, alpha_times_fs=t, field=field)


def sine_field(E0_v_per_a=0.36, period_fs=1000.0):
    t = np.arange(N) * DT
    return np.outer(E0_v_per_a * np.sin(2 * np.pi * t / period_fs), [0.0, 0.0, 1.0])


def check_file(path, fmt):
    data = path.read_bytes()
    assert path.suffix == "." + fmt and len(data) > 1000
    if fmt == "svg":
        assert data.lstrip().startswith((b"<?xml", b"<svg"))
    else:
        assert data.startswith(MAGIC[fmt])


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_spectra_figure_in_each_format(tmp_path, fmt):
    paths = write_outputs(run(), tmp_path, fmt=fmt, dpi=40)
    check_file(paths["figure"], fmt)
    summary = json.loads(paths["summary"].read_text())
    assert summary["figure"] == {"format": fmt, "panels": ["ir", "raman", "re_eps", "absorption_loss"]}


def test_dpi_sets_the_png_size(tmp_path):
    from PIL import Image

    small = write_outputs(run(), tmp_path / "a", fmt="png", dpi=20)["figure"]
    large = write_outputs(run(), tmp_path / "b", fmt="png", dpi=40)["figure"]
    assert Image.open(large).size[0] == pytest.approx(2 * Image.open(small).size[0], abs=2)


def test_the_title_names_the_field():
    zero = run(field=np.zeros((N, 3)))
    assert zero["field_protocol"]["kind"] == "zero"
    fig, _ = spectra_figure(zero)
    assert fig._suptitle.get_text().startswith("zero field")
    constant = run(field=np.tile([0.0, 0.0, 0.2], (N, 1)))
    fig2, panels = spectra_figure(constant)
    assert "constant field E = 20 MV/cm along z" in fig2._suptitle.get_text() and len(panels) == 4
    for ax in fig2.axes:  # every axis has a label with its unit or says it is relative / arbitrary
        assert ax.get_xlabel() == "wavenumber (cm$^{-1}$)" and ax.get_ylabel()
    matplotlib.pyplot.close("all")


def test_a_driven_run_has_no_eps_panels_and_marks_the_drive(tmp_path):
    result = run(field=sine_field(0.36, 1000.0))
    protocol = result["field_protocol"]
    assert result["driven"] and protocol["kind"] == "driven"
    assert protocol["E0_MV_per_cm"] == pytest.approx(36.0, rel=1e-3)
    assert protocol["period_fs"] == pytest.approx(1000.0, rel=1e-3)
    drive = 1.0 / (1000.0 * C_CM_PER_FS)  # 33.4 cm^-1
    assert protocol["drive_cm"] == pytest.approx(drive, rel=1e-3)
    fig, panels = spectra_figure(result)
    assert panels == ["ir", "raman"] and len(fig.axes) == 2
    titles = " ".join(ax.get_title() for ax in fig.axes)
    assert "epsilon" not in titles and "loss" not in titles
    title = fig._suptitle.get_text()
    assert "driven field E0 = 36 MV/cm along z, period 1000 fs" in title and "do not apply" in title
    ir = fig.axes[0]
    drive_lines = [ln for ln in ir.get_lines() if ln.get_label().startswith("drive 1/T = ")]
    assert len(drive_lines) == 1 and drive_lines[0].get_linestyle() == "--"
    assert drive_lines[0].get_xdata()[0] == pytest.approx(drive, rel=1e-3)
    assert f"{drive:.3g}" in drive_lines[0].get_label()
    assert not any(t.get_text() == f"{drive:.0f}" for t in ir.texts)  # not labelled like a phonon peak
    matplotlib.pyplot.close("all")
    summary = json.loads(write_outputs(result, tmp_path, fmt="pdf", dpi=40)["summary"].read_text())
    assert summary["figure"]["panels"] == ["ir", "raman"] and summary["field_protocol"]["kind"] == "driven"


def test_field_protocol_of_a_field_in_another_direction():
    unit = np.array([1.0, 1.0, 0.0]) / np.sqrt(2)
    p = field_protocol(np.arange(10.0), np.tile(0.1 * unit, (10, 1)))
    assert p["kind"] == "constant" and p["E0_MV_per_cm"] == pytest.approx(10.0)
    assert "[0.71, 0.71, 0]" in p["label"]
    assert field_protocol(None, None)["kind"] == "unknown"


def quasi_static(E_max=0.36, n_points=5):
    quarter = np.linspace(0, E_max, n_points)
    down = np.linspace(E_max, -E_max, 2 * n_points - 1)[1:]
    up = np.linspace(-E_max, E_max, 2 * n_points - 1)[1:]
    E = np.concatenate([quarter, down, up])
    branch = np.concatenate([np.ones(len(quarter)), np.ones(len(down)), -np.ones(len(up))])
    P = 0.02 * np.tanh((E + branch * 0.2) / 0.03)  # switches at -+0.2 V/A = 20 MV/cm
    return {"E": E, "P": P, "converged": np.ones(len(E), bool), "grid_step": float(quarter[1] - quarter[0])}


@pytest.mark.parametrize("fmt", ["png", "pdf", "svg"])
def test_quasi_static_loop_figure_and_uncertainty(tmp_path, fmt):
    loop = quasi_static()
    protocol = loop_protocol("quasistatic", 0.36, "z", n_points=5)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # svg text as text, to read the title back
        metrics = write_loop(loop, tmp_path, discard=4 / len(loop["E"]), title="BaTiO3", protocol=protocol,
                             fmt=fmt, dpi=40)
    step_mv = 0.09 * 100
    assert metrics["E_c_uncertainty_MV_per_cm"] == pytest.approx(step_mv / 2)
    assert protocol["grid_step_MV_per_cm"] == pytest.approx(step_mv)
    saved = json.loads((tmp_path / "loop.json").read_text())
    assert saved["E_c_uncertainty_MV_per_cm"] == pytest.approx(4.5)
    assert abs(saved["E_c_plus"] - 20) <= 4.5 and abs(saved["E_c_minus"] + 20) <= 4.5  # within the grid
    assert saved["E_c_text"]["E_c_plus"] == "E_c+ = " + with_uncertainty(saved["E_c_plus"], 4.5, "MV/cm")
    assert saved["protocol"]["label"] == "quasi-static, E0 = 36 MV/cm along z, field step 9 MV/cm"
    check_file(tmp_path / f"loop.{fmt}", fmt)
    if fmt == "svg":
        svg = (tmp_path / "loop.svg").read_text()
        assert "E0 = 36 MV/cm" in svg and "field step 9 MV/cm" in svg


def test_dynamic_loop_title_names_E0_and_period(tmp_path):
    t = np.arange(0, 4000.0, 5.0)
    E = 0.36 * np.sin(2 * np.pi * t / 2000.0)
    P = 0.02 * np.tanh(np.sin(2 * np.pi * (t - 200) / 2000.0) * 5)
    protocol = loop_protocol("dynamic", 0.36, "z", period_fs=2000.0)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        metrics = write_loop({"t_fs": t, "E": E, "P": P}, tmp_path, discard=0.125, title="BaTiO3",
                             protocol=protocol, fmt="svg", dpi=40)
    assert "E_c_uncertainty_MV_per_cm" not in metrics  # sampled in time, not on a field grid
    svg = (tmp_path / "loop.svg").read_text()
    assert "BaTiO3: dynamic, E0 = 36 MV/cm along z, period 2000 fs" in svg


@pytest.mark.parametrize("value,error,text", [(21.3, 9.0, "21 +- 9 MV/cm"), (21.34, 1.8, "21.3 +- 1.8 MV/cm"),
                                              (-11.44, 0.35, "-11.4 +- 0.3 MV/cm"), (1234.0, 180.0, "1230 +- 180 MV/cm"),
                                              (float("nan"), 1.0, "n/a MV/cm")])
def test_uncertainty_is_printed_with_sensible_digits(value, error, text):
    assert with_uncertainty(value, error, "MV/cm") == text

"""Issue 26: every number a tool prints is learned, physical, or flagged.

* observables need trained quantities: a head that never learned forces gives no forces, no
  relaxation, no Hessian, no MD (one-line error), unless ``--allow-untrained`` (then flagged);
* physical validity flags (eps_inf < 1, alpha not symmetric, ASR, Born-charge signs, unstable
  modes: eps_ion empty, never 0; extrapolation), in mf-predict, the Python API and eval.py;
* ``--ionic`` in bounded memory (the Hessian in row chunks sized to a budget);
* partial occupancies and unreadable inputs are error rows;
* the shipped models carry their record checksum and what their heads learned.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch

from mf_lightning.analysis.dielectric import (
    HessianCost,
    HessianTooLarge,
    dielectric_properties,
    ionic_dielectric,
    model_hessian,
    relax_structure,
)
from mf_lightning.cli.predict import main as predict
from mf_lightning.errors import EXIT_INPUT, EXIT_OK, EXIT_PARTIAL, UntrainedQuantityError
from mf_lightning.model import validity
from mf_lightning.model.io import load_model, save_model
from mf_lightning.simulation.calculator import MACEFieldCalculator
from mf_lightning.units import EPS0_E_PER_V_A
from tests.helpers import elements_of, tiny_model

REPO = Path(__file__).resolve().parents[3]


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def quartz9(sio2_atoms):
    return sio2_atoms[:9].copy()


@pytest.fixture(scope="module")
def response_only(tmp_path_factory, sio2_atoms):
    """A model file whose head learned Z* and alpha only, as mp_dielectric_cpu.pt."""
    model = tiny_model(elements_of(sio2_atoms))
    model.head_quantities = {model.heads[0]: ["becs", "polarisability"]}
    path = tmp_path_factory.mktemp("trust") / "response_only.pt"
    save_model(model, path)
    return path


# ---------------------------------------------------------------------- 1. trained quantities
def test_learned_quantities_recorded_or_inferred_from_loss_scales(sio2_atoms):
    model = tiny_model(elements_of(sio2_atoms))
    assert model.learned_quantities() is None  # built here: nothing is known, nothing refused
    model.loss_scales = {"energy": 1.0, "forces": 1.0, "stress": 1.0, "polarisation": 1.0, "becs": 1.35,
                         "polarisability": 0.0115}  # an older file of the MP-Dielectric preset
    assert model.learned_quantities() == {"becs", "polarisability"}
    model.head_quantities = {model.heads[0]: ["energy", "forces"]}
    assert model.learned_quantities() == {"energy", "forces"}  # the record wins


def test_a_head_that_never_learned_forces_gives_no_forces_relaxation_or_hessian(response_only, quartz9):
    calc = MACEFieldCalculator(str(response_only))
    atoms = quartz9.copy()
    atoms.calc = calc
    assert np.isfinite(calc.get_becs(atoms)).all()  # what it learned: fine
    for attempt in (atoms.get_forces, atoms.get_potential_energy,
                    lambda: relax_structure(atoms.copy(), calc, steps=2),
                    lambda: model_hessian(calc.model, atoms),
                    lambda: dielectric_properties(calc, atoms, ionic=True)):
        with pytest.raises(UntrainedQuantityError, match=r"head 'Default' never learned.*becs, polarisability"):
            attempt()
    # the override computes them, and says so in the result
    calc = MACEFieldCalculator(str(response_only), allow_untrained=True)
    props = dielectric_properties(calc, atoms, ionic=True)
    assert "untrained" in props["flags"] and any("forces" in w for w in props["warnings"])


def test_predict_refuses_ionic_and_relax_on_such_a_head_before_writing(response_only, quartz9, tmp_path, capsys):
    ase.io.write(tmp_path / "q.cif", quartz9)
    out = tmp_path / "t.csv"
    base = [str(tmp_path / "q.cif"), "--model", str(response_only), "--out", str(out), "--no-progress"]
    for extra in (["--ionic"], ["--relax"]):
        assert predict(base + extra) == EXIT_INPUT
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "never learned" in err[0] and "--allow-untrained" in err[0]
        assert not out.exists()
    assert predict(base) == EXIT_OK  # the response alone is what it learned
    assert "untrained" not in rows_of(out)[0]["flags"]
    out2 = tmp_path / "t2.csv"
    assert predict([str(tmp_path / "q.cif"), "--model", str(response_only), "--out", str(out2), "--no-progress",
                    "--ionic", "--allow-untrained"]) == EXIT_OK
    assert "untrained" in rows_of(out2)[0]["flags"].split(";")


# ---------------------------------------------------------------------- 2. validity flags
def test_electronic_flags():
    good = 0.01 * np.eye(3)
    assert validity.electronic_flags(good) == []
    negative = np.diag([0.01, 0.01, -0.1 * EPS0_E_PER_V_A])  # eps_inf eigenvalue 0.9
    assert validity.electronic_flags(negative) == ["eps_inf_below_1"]
    very = np.diag([0.01, 0.01, -2 * EPS0_E_PER_V_A])  # eigenvalue -1: n undefined
    assert validity.electronic_flags(very) == ["eps_inf_below_1", "eps_inf_not_positive"]
    skew = good.copy()
    skew[0, 1] += 1e-3
    assert validity.electronic_flags(skew) == ["alpha_asymmetric"]


def test_born_charge_flags_asr_and_the_sign_heuristic():
    nacl = [11, 17]
    right = np.stack([1.1 * np.eye(3), -1.1 * np.eye(3)])
    assert validity.born_charge_flags(nacl, right) == []
    assert validity.born_charge_flags(nacl, -right) == ["becs_sign:Na"]
    lif = [3, 9]
    assert validity.born_charge_flags(lif, np.stack([-np.eye(3), np.eye(3)])) == ["becs_sign:Li", "becs_sign:F"]
    assert validity.born_charge_flags(nacl, np.stack([1.1 * np.eye(3), -1.0 * np.eye(3)])) == ["asr_violated"]
    # no halogen or chalcogen: not clearly ionic, no sign claim (an intermetallic Li compound)
    assert validity.born_charge_flags([3, 13], np.stack([-np.eye(3), np.eye(3)])) == []
    # transition metals are left out (anomalous charges are real: Ti in BaTiO3 is ~ +7)
    assert validity.born_charge_flags([22, 8], np.stack([-0.5 * np.eye(3), 0.5 * np.eye(3)])) == []


def test_extrapolation_flags_and_summary():
    seen = {8: 40, 14: 2, 3: 0}
    assert validity.extrapolation_flags([14, 8, 8, 3], seen) == ["unseen_element:Li", "rare_element:Si"]
    assert validity.extrapolation_flags([8], None) == []
    line = validity.summary_line(3, ["eps_inf_below_1;unseen_element:Li", "", "unseen_element:Na"])
    assert line.startswith("2 of 3 structures flagged (unseen_element: 2, eps_inf_below_1: 1)")
    assert validity.summary_line(2, ["", ""]) == "0 of 2 structures flagged"
    assert validity.response_flags([8], max_force=0.2) == ["not_at_minimum"]
    assert validity.response_flags([8], max_force=0.01) == []


def test_unstable_modes_give_no_eps_ion_never_zero():
    k, Z = 2.5, 1.7
    H = np.zeros((6, 6))
    H[:3, :3] = H[3:, 3:] = k * np.eye(3)
    H[:3, 3:] = H[3:, :3] = -k * np.eye(3)
    becs = np.stack([Z * np.eye(3), -Z * np.eye(3)])
    out = ionic_dielectric(-H, becs, np.array([23.0, 35.5]), 64.0)  # a maximum of F, not a minimum
    assert len(out["unstable_modes_cm"]) == 3
    assert np.isnan(out["eps_ion"]).all()


def test_a_charged_soft_mode_gives_no_eps_ion_never_a_small_one():
    """All optic modes softer than the tolerance: they used to be left out, eps_ion exactly 0."""
    H = np.zeros((6, 6))
    H[:3, :3] = H[3:, 3:] = 2.5e-4 * np.eye(3)
    H[:3, 3:] = H[3:, :3] = -2.5e-4 * np.eye(3)
    becs = np.stack([1.7 * np.eye(3), -1.7 * np.eye(3)])
    out = ionic_dielectric(H, becs, np.array([23.0, 35.5]), 64.0)
    assert len(out["soft_polar_modes_cm"]) == 3 and out["unstable_modes_cm"] == []
    assert np.isnan(out["eps_ion"]).all()
    assert "soft_modes" in validity.response_flags([11, 17], soft_modes=out["soft_polar_modes_cm"])
    neutral = ionic_dielectric(H, np.zeros((2, 3, 3)), np.array([23.0, 35.5]), 64.0)  # carries no charge
    assert neutral["soft_polar_modes_cm"] == [] and np.allclose(neutral["eps_ion"], 0.0)


@pytest.fixture(scope="module")
def negative_alpha_model(tmp_path_factory, sio2_atoms):
    """A model whose atomic polarisabilities are negative: eps_inf < 1, n undefined."""
    model = tiny_model(elements_of(sio2_atoms))
    with torch.no_grad():
        model.atomic_polarisabilities.fill_(-5.0)
    model.training_elements = {8: 10, 14: 1}
    path = tmp_path_factory.mktemp("negative") / "model.pt"
    save_model(model, path)
    return path


@pytest.mark.parametrize("engine", ["ase", "torchsim"])
def test_predict_flags_impossible_values_and_counts_them(negative_alpha_model, sio2_atoms, quartz9, tmp_path,
                                                        capsys, engine):
    ase.io.write(tmp_path / "q.cif", sio2_atoms)
    out = tmp_path / "t.csv"
    assert predict([str(tmp_path / "q.cif"), "--model", str(negative_alpha_model), "--out", str(out),
                    "--no-progress", "--engine", engine]) == EXIT_OK
    row = rows_of(out)[0]
    flags = row["flags"].split(";")
    assert {"eps_inf_below_1", "eps_inf_not_positive", "rare_element:Si"} <= set(flags)
    assert row["n"] == ""  # no number where none exists: never NaN, 0 or a made-up value
    assert "1 of 1 structures flagged" in capsys.readouterr().out


def test_the_calculator_gives_the_same_flags(negative_alpha_model, sio2_atoms):
    atoms = sio2_atoms.copy()
    atoms.calc = MACEFieldCalculator(str(negative_alpha_model))
    assert atoms.calc.get_flags(atoms) == ["eps_inf_below_1", "eps_inf_not_positive", "rare_element:Si"]
    good = sio2_atoms.copy()
    good.calc = MACEFieldCalculator(tiny_model(elements_of(sio2_atoms)))
    assert good.calc.get_flags(good) == []


def test_predict_ionic_beside_unstable_modes_is_empty_and_flagged(sio2_atoms, tmp_path):
    """A random model is nowhere near a minimum of its F: unstable modes, and eps_ion/eps_0
    are empty cells (they were the sum of the remaining modes, 0 when none was left)."""
    model = tiny_model(elements_of(sio2_atoms))
    save_model(model, tmp_path / "m.pt")
    ase.io.write(tmp_path / "q.cif", sio2_atoms[:9])
    out = tmp_path / "t.csv"
    assert predict([str(tmp_path / "q.cif"), "--model", str(tmp_path / "m.pt"), "--out", str(out),
                    "--no-progress", "--ionic"]) == EXIT_OK
    row = rows_of(out)[0]
    assert json.loads(row["unstable_modes_cm"])
    assert row["eps_ion"] == row["eps_0"] == row["eps_0_poly"] == ""
    assert {"unstable_modes", "not_at_minimum"} <= set(row["flags"].split(";"))  # unrelaxed: forces too


def test_eval_summary_counts_invalid_structures_beside_finite_metrics():
    from mf_lightning.analysis.evaluate import Collected, summarise

    c = Collected()
    c.add("n", np.array([1.5, 2.0, 1.7]), np.array([1.4, np.nan, 1.8]), np.array([0, 1, 2]),
          zero_error=1.0 - np.array([1.5, 2.0, 1.7]))
    entry = summarise(c, [False, False, False])["n"]
    assert entry["n_invalid"] == 1 and entry["all"]["n_values"] == 2
    assert entry["all"]["rmse"] == pytest.approx(0.1)
    assert entry["all"]["zero_rmse"] == pytest.approx(np.sqrt((0.5 ** 2 + 0.7 ** 2) / 2))  # the null is n = 1


# ---------------------------------------------------------------------- 3. bounded memory
def test_chunked_hessian_equals_the_one_pass_hessian(quartz9):
    model = tiny_model(elements_of(quartz9))
    full = model_hessian(model, quartz9, field=(0, 0, 0.01), chunk=27)
    for chunk in (1, 5):
        np.testing.assert_allclose(model_hessian(model, quartz9, field=(0, 0, 0.01), chunk=chunk), full,
                                   rtol=0, atol=1e-12)
    cost = HessianCost(saved_bytes=1e8, rows=27)
    assert cost.chunk_for(cost.bytes_for(4)) == 4 and cost.chunk_for(cost.bytes_for(1) - 1) == 0
    with pytest.raises(HessianTooLarge, match="memory budget"):
        model_hessian(model, quartz9, max_memory=1e5)


PEAK_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import mf_lightning
    from mf_lightning.runtime import configure_process
    configure_process(1)
    import ase.io
    from mf_lightning.analysis.dielectric import HessianCost, _hessian_setup, model_hessian
    from tests.helpers import elements_of, tiny_model
    atoms = ase.io.read(sys.argv[1])
    model = tiny_model(elements_of(atoms))
    def status(key):
        return int(next(l for l in open('/proc/self/status') if l.startswith(key)).split()[1]) * 1024
    budget = float(sys.argv[2])
    try:  # reset the high-water mark: only the Hessian's own peak counts, not the imports'
        with open('/proc/self/clear_refs', 'w') as fh:
            fh.write('5')
        peak_of = lambda: status('VmHWM')
    except OSError:
        peak_of = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base = status('VmRSS')
    H = model_hessian(model, atoms, max_memory=budget)
    peak = peak_of()
    print(json.dumps({"delta": peak - base, "budget": budget}))
""")


def test_ionic_peak_memory_stays_within_its_budget(sio2_atoms, tmp_path):
    """The 72-atom quartz cell of the issue with a small model: the peak resident memory of
    the Hessian stays below the budget it was given (all 216 rows at once need about 5x it)."""
    ase.io.write(tmp_path / "q.xyz", sio2_atoms)
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)
    budget = 400 * 2 ** 20
    # the allocator as every entry point sets it (an earlier test may have left MALLOC_* or
    # MF_MALLOC_TUNING in this process's environment: not the user's case)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MALLOC_", "GLIBC_TUNABLES", "MF_MALLOC"))}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "q.xyz"), str(budget)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["delta"] < budget, result


# ---------------------------------------------------------------------- 4. inputs
PARTIAL_CIF = """data_x
_cell_length_a 4.0
_cell_length_b 4.0
_cell_length_c 4.0
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Si1 Si 0 0 0 {si}
O1 O 0.5 0.5 0 {o}
O2 O 0.5 0 0.5 1.0
"""


def test_partial_occupancies_and_link_loops_are_error_rows(sio2_atoms, tmp_path):
    model = tiny_model(elements_of(sio2_atoms))
    save_model(model, tmp_path / "m.pt")
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "full.cif").write_text(PARTIAL_CIF.format(si="1.0", o="1.0"))
    (inputs / "vacancy.cif").write_text(PARTIAL_CIF.format(si="1.0", o="0.9"))
    mixed = PARTIAL_CIF.format(si="0.5", o="1.0").replace("O2 O", "Ge1 Ge 0 0 0 0.5\nO2 O")
    (inputs / "mixed.cif").write_text(mixed)
    os.symlink(inputs / "loop_b.cif", inputs / "loop_a.cif")
    os.symlink(inputs / "loop_a.cif", inputs / "loop_b.cif")
    out = tmp_path / "t.csv"
    args = [str(inputs), str(inputs / "loop_a.cif"), "--model", str(tmp_path / "m.pt"), "--out", str(out),
            "--no-progress"]
    assert predict(args) == EXIT_PARTIAL
    assert [Path(r["id"]).name for r in rows_of(out)] == ["full.cif"]
    errors = {Path(r["id"]).name: r["error"] for r in rows_of(tmp_path / "t.errors.csv")}
    assert "vacancy" in errors["vacancy.cif"] and "0.9" in errors["vacancy.cif"]
    assert "mixes" in errors["mixed.cif"]
    assert "symbolic link loop" in errors["loop_a.cif"] and "symbolic link loop" in errors["loop_b.cif"]


# ---------------------------------------------------------------------- 5. shipped models
@pytest.mark.parametrize("name,learned", [
    ("sio2_md_cpu", {"energy", "forces", "stress", "polarisation", "becs", "polarisability"}),
    ("batio3_md_cpu", {"energy", "forces", "stress", "polarisation", "becs", "polarisability"}),
    ("mp_dielectric_cpu", {"becs", "polarisability"}),
    ("ferroelectric_cpu", {"polarisation"}),
])
def test_shipped_models_carry_record_checksum_and_what_they_learned(name, learned):
    from mf_lightning.model.io import RECORD_CHECKSUM

    path = REPO / "experiments" / "models" / f"{name}.pt"
    payload = torch.load(path, weights_only=True, map_location="cpu")
    assert next(reversed(payload)) == RECORD_CHECKSUM
    assert set(payload["head_quantities"]["Default"]) == learned
    model = load_model(path)
    assert model.learned_quantities() == learned
    counts = model.training_elements
    assert set(counts) == set(model.atomic_numbers) and sum(counts.values()) > 0


def test_an_upgraded_mace_model_has_learned_no_response_and_max_memory_must_be_finite(sio2_atoms, tmp_path, capsys):
    from mf_lightning.model.field_mace import FieldMACE
    from tests.helpers import make_source

    fm = FieldMACE.from_mace(make_source(), form="residual_tp", init="random", init_scale=1.0)
    assert fm.learned_quantities() == {"energy", "forces", "stress"}
    calc = MACEFieldCalculator(fm)
    atoms = sio2_atoms.copy()
    atoms.calc = calc
    assert np.isfinite(atoms.get_forces()).all()
    with pytest.raises(UntrainedQuantityError, match="never learned"):
        calc.get_becs(atoms)
    ase.io.write(tmp_path / "q.cif", sio2_atoms[:9])
    with pytest.raises(SystemExit):
        predict([str(tmp_path / "q.cif"), "--model", "m.pt", "--out", str(tmp_path / "t.csv"), "--ionic",
                 "--max-memory", "inf"])
    assert "--max-memory must be a positive number" in capsys.readouterr().err


def test_md_refuses_partial_occupancies(tmp_path):
    from mf_lightning.errors import InputError
    from mf_lightning.simulation.md import load_structure

    (tmp_path / "v.cif").write_text(PARTIAL_CIF.format(si="1.0", o="0.9"))
    with pytest.raises(InputError, match="partial occupancies"):
        load_structure(str(tmp_path / "v.cif"))


@pytest.mark.parametrize("name,learned", [("mp_dielectric_cpu_ensemble", {"becs", "polarisability"}),
                                          ("ferroelectric_cpu_ensemble", {"polarisation"})])
def test_shipped_ensembles_are_calibrated_and_start_from_the_per_element_baseline(name, learned):
    """The cross-chemistry ensembles (issue 28): three members on one split, a calibration
    fitted on the validation split and stored, and (Z*/alpha model) per-element Born charges."""
    model = load_model(REPO / "experiments" / "models" / f"{name}.pt")
    assert len(model.members) == 3 and model.learned_quantities() == learned and model.calibrated
    assert model.calibration["split"] == "val" and all(s > 1.0 for s in model.calibration["scale"].values())
    has_charges = [bool((m.atomic_charges != 0).any()) for m in model.members]
    assert has_charges == [name.startswith("mp_dielectric")] * 3  # never where absolute P is labelled

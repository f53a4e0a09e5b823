"""Model files: weights-only round trip, atomic writes, clear errors on bad files."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

import mf_lightning
from mf_lightning.data import keys
from mf_lightning.model import io
from mf_lightning.model.coupling import COUPLINGS
from mf_lightning.model.io import ModelFileError, save_model
from tests.conftest import REPO, SHARED_DATA
from tests.helpers import batch_of, elements_of, tiny_model

PROPS = (keys.ENERGY, keys.FORCES, keys.POLARISATION, keys.BECS, keys.POLARISABILITY)


@pytest.mark.parametrize("form,extra", [
    ("none", {}),
    ("residual_tp", {"l_in": [1], "l_out": [0]}),
    ("basis_tp", {"layers": [1]}),
])
def test_save_load_round_trip(tmp_path, dielectric_atoms, form, extra):
    model = tiny_model(elements_of(dielectric_atoms), form=form, **extra)
    path = tmp_path / "m.pt"
    save_model(model, path)
    raw = torch.load(path, weights_only=True)  # must load without unpickling anything
    assert raw["format"] == io.FORMAT and raw["coupling"]["form"] == form
    back = mf_lightning.load_model(path)
    assert back.coupling_config == model.coupling_config
    batch = batch_of(model, [dielectric_atoms], [(0.01, 0.02, 0.03)])
    a, b = model(batch, properties=PROPS), back(batch, properties=PROPS)
    for k in PROPS:
        torch.testing.assert_close(b[k].detach(), a[k].detach(), rtol=0, atol=0)


def test_load_in_other_dtype(tmp_path, dielectric_atoms):
    model = tiny_model(elements_of(dielectric_atoms))
    save_model(model, tmp_path / "m.pt")
    back = mf_lightning.load_model(tmp_path / "m.pt", dtype="float32")
    assert back.dtype == torch.float32


def test_save_is_atomic(tmp_path, dielectric_atoms, monkeypatch):
    """A crash in the middle of a save leaves the previous file intact and no temp file."""
    model = tiny_model(elements_of(dielectric_atoms))
    path = tmp_path / "m.pt"
    save_model(model, path)
    before = path.read_bytes()

    def dying_save(obj, fh, *a, **k):
        fh.write(b"partial garbage")
        raise KeyboardInterrupt("killed during save")

    monkeypatch.setattr(io.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_truncated_and_corrupted_files(tmp_path, dielectric_atoms):
    model = tiny_model(elements_of(dielectric_atoms))
    good = tmp_path / "m.pt"
    save_model(model, good)
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="trunc.pt: truncated or corrupted"):
        mf_lightning.load_model(tmp_path / "trunc.pt")
    (tmp_path / "noise.pt").write_bytes(b"\x00not a zip" * 10)
    with pytest.raises(ModelFileError, match="noise.pt"):
        mf_lightning.load_model(tmp_path / "noise.pt")
    with pytest.raises(ModelFileError, match="no such model file"):
        mf_lightning.load_model(tmp_path / "missing.pt")


def test_pickled_module_is_refused_by_load_model(tmp_path, dielectric_atoms):
    """A file that needs unpickling (e.g. a whole module) is never executed by load_model."""
    model = tiny_model(elements_of(dielectric_atoms))
    torch.save(model, tmp_path / "pickled.pt")
    with pytest.raises(ModelFileError, match="not a weights-only file"):
        mf_lightning.load_model(tmp_path / "pickled.pt")


def test_foreign_or_mismatched_payload(tmp_path, dielectric_atoms):
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ModelFileError, match="not an mf-lightning model file"):
        mf_lightning.load_model(tmp_path / "foreign.pt")
    model = tiny_model(elements_of(dielectric_atoms))
    save_model(model, tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    # a weight of the network (atomic_polarisabilities, first in the dict, may be absent: files
    # from before it existed load with zeros, tests/unit/model/test_atomic_polarisabilities.py)
    payload["state_dict"].pop(next(k for k in payload["state_dict"] if k.startswith("backbone.")))
    del payload["sha256"], payload["record_sha256"]  # written wrong, not corrupted later (the checksums' case)
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(ModelFileError, match="do not match"):
        mf_lightning.load_model(tmp_path / "broken.pt")


def test_import_leaves_mace_loading_intact_and_our_loads_weights_only(tmp_path):
    """Importing mace sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which mace's calculator needs to
    read its pickled .model files; importing mf_lightning first must not undo it (it once did,
    and MACECalculator failed with 'Unsupported global ScaleShiftMACE'). Our own loads pass
    weights_only explicitly, which torch honours over that variable: a pickle payload is still
    refused by load_model."""
    import subprocess
    import sys
    from fractions import Fraction  # any class outside torch's weights-only allowlist

    from tests.helpers import make_source

    source = make_source()
    torch.save(source, tmp_path / "source.model")
    script = (
        "import mf_lightning, ase.io, os\n"  # mf_lightning first: the order that used to break mace
        "from mace.calculators import MACECalculator\n"
        f"calc = MACECalculator(model_paths={str(tmp_path / 'source.model')!r}, device='cpu', default_dtype='float64')\n"
        f"a = ase.io.read({str(SHARED_DATA / 'md' / 'SiO2.xyz')!r}, index=0)\n"
        "a.calc = calc\nprint('energy', a.get_potential_energy())\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "energy" in proc.stdout, proc.stderr[-3000:]

    torch.save({"format": "mf-lightning/field-mace", "x": Fraction(1, 3)}, tmp_path / "evil.pt")
    with pytest.raises(ModelFileError, match="not a weights-only file"):
        mf_lightning.load_model(tmp_path / "evil.pt")


def test_mace_export_is_the_model_at_zero_field(tmp_path):
    """The exported backbone read by mace's own MACECalculator gives the FieldMACE's energy,
    forces and stress at E = 0 (random coupling weights and atomic polarisabilities: both vanish
    there), to 1e-10 in float64."""
    import ase.io
    from mace.calculators import MACECalculator

    from mf_lightning.cli.export import main as export_main
    from mf_lightning.simulation.calculator import MACEFieldCalculator

    atoms = ase.io.read(SHARED_DATA / "md" / "SiO2.xyz", index=0)
    model = tiny_model(elements_of(atoms))
    with torch.no_grad():
        model.atomic_polarisabilities.fill_(0.3)
    save_model(model, tmp_path / "m.pt")
    assert export_main([str(tmp_path / "m.pt"), "--out", str(tmp_path / "m.model")]) == 0
    ours = MACEFieldCalculator(str(tmp_path / "m.pt"))
    theirs = MACECalculator(model_paths=str(tmp_path / "m.model"), device="cpu", default_dtype="float64")
    a, b = atoms.copy(), atoms.copy()
    a.calc, b.calc = ours, theirs
    assert abs(a.get_potential_energy() - b.get_potential_energy()) < 1e-10
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(a.get_stress(), b.get_stress(), rtol=0, atol=1e-10)
    ours.set_field([0.0, 0.0, 0.05])  # the field response is what the export leaves out
    assert abs(a.get_potential_energy() - b.get_potential_energy()) > 1e-6
    # the files stand alone: mace reads the .model and torch the LAMMPS model without mf_lightning
    assert export_main([str(tmp_path / "m.pt"), "--lammps", "--out", str(tmp_path / "m-lammps.pt")]) == 0
    script = (f"import sys, ase.io, torch; from mace.calculators import MACECalculator; "
              f"c = MACECalculator(model_paths='{tmp_path / 'm.model'}', device='cpu', default_dtype='float64'); "
              f"a = ase.io.read('{SHARED_DATA / 'md' / 'SiO2.xyz'}', index=0); a.calc = c; "
              f"torch.jit.load('{tmp_path / 'm-lammps.pt'}'); "
              f"assert not [m for m in sys.modules if m.startswith('mf_lightning')]; print(repr(a.get_potential_energy()))")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ours.set_field([0.0, 0.0, 0.0])
    assert abs(float(proc.stdout.split()[-1]) - a.get_potential_energy()) < 1e-10


@pytest.mark.parametrize("form", list(COUPLINGS))
def test_constant_field_exports_are_the_model_at_that_field(tmp_path, form):
    """At a fixed E the coupling is a fixed linear map of the features: the exported mace model
    (read by mace's MACECalculator) and mace's LAMMPS TorchScript model (compiled as
    create_lammps_model compiles it, loaded with torch.jit.load) reproduce MACEFieldCalculator's
    F(R, E) and -dF/dR at that field on real alpha-quartz frames, to 1e-10 in float64; at
    another field they do not (the field really is frozen in)."""
    import ase.io
    from mace.calculators import MACECalculator

    from mf_lightning.cli.export import main as export_main
    from mf_lightning.simulation.calculator import MACEFieldCalculator

    frames = ase.io.read(SHARED_DATA / "md" / "SiO2.xyz", index=":2")
    model = tiny_model(elements_of(frames[0]), form=form)
    with torch.no_grad():
        model.atomic_polarisabilities.fill_(0.3)
    save_model(model, tmp_path / "m.pt")
    field = [0.02, -0.01, 0.05]
    args = [str(tmp_path / "m.pt"), "--field", *map(str, field)]
    assert export_main([*args, "--out", str(tmp_path / "m.model")]) == 0
    assert export_main([*args, "--lammps", "--out", str(tmp_path / "m-lammps.pt")]) == 0
    ours = MACEFieldCalculator(str(tmp_path / "m.pt"), electric_field=field)
    theirs = MACECalculator(model_paths=str(tmp_path / "m.model"), device="cpu", default_dtype="float64")
    scripted = torch.jit.load(str(tmp_path / "m-lammps.pt"))
    assert isinstance(scripted, torch.jit.ScriptModule)
    for atoms in frames:
        a, b = atoms.copy(), atoms.copy()
        a.calc, b.calc = ours, theirs
        energy, forces = a.get_potential_energy(), a.get_forces()
        assert abs(energy - b.get_potential_energy()) < 1e-10
        np.testing.assert_allclose(b.get_forces(), forces, rtol=0, atol=1e-10)
        # the LAMMPS module on the graph LAMMPS would give it (every atom local: one process)
        data = {k: v for k, v in batch_of(model, [atoms]).items() if isinstance(v, torch.Tensor)}
        data["positions"] = data["positions"].clone().requires_grad_(True)
        out = scripted(data, torch.ones(len(atoms), dtype=torch.float64), compute_virials=False)
        assert abs(float(out["total_energy_local"].detach().sum()) - energy) < 1e-10
        np.testing.assert_allclose(out["forces"].detach().numpy(), forces, rtol=0, atol=1e-10)
    ours.set_field([0.0, 0.0, -0.05])
    a = frames[0].copy()
    a.calc = ours
    b = frames[0].copy()
    b.calc = theirs
    assert abs(a.get_potential_energy() - b.get_potential_energy()) > 1e-6


def test_lammps_export_of_a_multi_head_model_names_its_head(tmp_path):
    """mace's LAMMPS wrapper would silently take the last head; ours asks, as every tool does."""
    from mf_lightning.errors import HeadError
    from mf_lightning.model.export import export_lammps
    from tests.helpers import TINY

    model = mf_lightning.build_model(atomic_numbers=[8, 14], heads=["replay", "sio2"], seed=0, **TINY)
    with pytest.raises(HeadError, match="replay"):
        export_lammps(model, tmp_path / "m.pt")
    assert export_lammps(model, tmp_path / "m.pt", head="replay").is_file()
    assert int(torch.jit.load(str(tmp_path / "m.pt")).head) == 0


@pytest.mark.parametrize("path", sorted((REPO / "experiments" / "models").glob("*.pt")), ids=lambda p: p.name)
def test_the_shipped_models_of_earlier_formats_still_load(path):
    """Files written before the record checksum end with the tensors' "sha256": not to be taken
    for a damaged checksum key (a first version of that check refused every such file)."""
    model = mf_lightning.load_model(path)
    assert model.heads and model.atomic_numbers

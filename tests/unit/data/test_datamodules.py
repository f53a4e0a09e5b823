"""DataModules: splits without leakage, manifests, label masks, the graph cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from mace.tools.torch_geometric.batch import Batch

from mf_lightning.data.graphs import UnknownElementError
from mf_lightning.data.keys import ref_key, weight_key
from mf_lightning.data.polarisation import path_coordinates
from mf_lightning.data.quantities import tasks
from mf_lightning.data.reader import DataError, Record
from tests.conftest import REPO, SHARED_DATA

TASKS = tasks()

CONF = str(REPO / "conf")


def datamodule(name, tmp_path, **overrides):
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"data={name}", f"data.root={SHARED_DATA}",
                                                      f"data.cache_dir={tmp_path}/cache", f"data.output_dir={tmp_path}/run"]
                      + [f"data.{k}={v}" for k, v in overrides.items()])
    return instantiate(cfg.data)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dm")
    out = {}
    every_element = "[" + ",".join(str(z) for z in range(1, 95)) + "]"  # one table: sources batch together
    for name in ("mp_dielectric", "ferroelectric", "sio2", "batio3"):
        dm = datamodule(name, tmp, atomic_numbers=every_element)
        dm.setup()
        out[name] = dm
    return out


@pytest.mark.parametrize("name", ["mp_dielectric", "ferroelectric"])
def test_group_splits_do_not_leak(loaded, name):
    dm = loaded[name]
    groups = {s: {m["group"] for m in dm.meta[s]} for s in ("train", "val", "test")}
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"] and not groups["val"] & groups["test"]
    n = sum(len(v) for v in dm.datasets.values())
    assert len(dm.datasets["val"]) == pytest.approx(0.1 * n, abs=6) and len(dm.datasets["test"]) == pytest.approx(0.1 * n, abs=6)


def test_material_is_the_reduced_formula(loaded):
    dm = loaded["mp_dielectric"]
    assert all(m["group"] == m["formula"] for s in dm.meta for m in dm.meta[s])


def test_md_split_is_contiguous_in_time(loaded):
    frames = {s: [m["frame"] for m in loaded["sio2"].meta[s]] for s in ("train", "val", "test")}
    assert frames["train"] == list(range(0, 161)) and frames["val"] == list(range(161, 181))
    assert frames["test"] == list(range(181, 201))


def test_manifest_written_and_reproducible(loaded, tmp_path):
    manifest = loaded["mp_dielectric"].manifest
    assert set(manifest["ids"]) == {"train", "val", "test"} and manifest["seed"] == 0
    again = datamodule("mp_dielectric", tmp_path)
    again.setup()
    assert again.manifest["ids"] == loaded["mp_dielectric"].manifest["ids"]
    other = datamodule("mp_dielectric", tmp_path, seed=1)
    other.setup()
    assert other.manifest["ids"]["test"] != loaded["mp_dielectric"].manifest["ids"]["test"]
    written = json.loads((tmp_path / "run" / "splits" / "mp_dielectric.json").read_text())
    assert written["ids"] == other.manifest["ids"] and written["sha256"]["train"]


def test_held_out_test_file(tmp_path):
    import ase.io

    held_out = tmp_path / "held_out.xyz"
    ase.io.write(held_out, ase.io.read(SHARED_DATA / "md" / "SiO2.xyz", index="160:"), format="extxyz")
    dm = datamodule("sio2", tmp_path, test_file=str(held_out))
    dm.setup()
    assert len(dm.datasets["test"]) == 41 and len(dm.datasets["train"]) + len(dm.datasets["val"]) == 201
    assert dm.manifest["files"]["test"].endswith("held_out.xyz")
    # eval.py on the held-out file alone: the training file is neither read nor named
    only = datamodule("sio2", tmp_path / "only", test_file=str(held_out), test_only="true")
    only.setup()
    assert len(only.datasets["test"]) == 41 and not only.datasets["train"] and not only.datasets["val"]
    assert list(only.manifest["files"]) == ["test"]


def test_a_label_key_in_no_frame_is_an_error_listing_the_files_keys(tmp_path):
    """SiO2's label keys on the BaTiO3 file: total_energy, born_charge and polarizability are in
    no frame. An error names them and lists the keys the file has, instead of an empty table."""
    dm = datamodule("sio2", tmp_path, test_file=str(SHARED_DATA / "md" / "BaTiO3.xyz"), atomic_numbers="[8,14,22,56]")
    with pytest.raises(DataError, match=r"no frame has the label key\(s\) total_energy \(energy\), born_charge "
                                        r"\(becs\), polarizability \(polarisability\); the file's keys are \[.*REF_becs"):
        dm.setup()


def test_mixed_batch_carries_exactly_each_sources_labels(loaded):
    graphs = [loaded["mp_dielectric"].datasets["train"][0], loaded["ferroelectric"].datasets["train"][0],
              loaded["sio2"].datasets["train"][0]]
    batch = Batch.from_data_list(graphs)
    has = {t: batch[weight_key(t)].tolist() for t in TASKS}
    assert has["becs"] == [1, 0, 1] and has["polarisability"] == [1, 0, 1]
    assert has["polarisation"] == [0, 1, 1] and has["energy"] == [0, 0, 1]
    assert has["forces"] == [0, 0, 1] and has["stress"] == [0, 0, 1]
    n0 = graphs[0].num_nodes
    assert batch[ref_key("becs")].shape[0] == batch.num_nodes
    assert torch.count_nonzero(batch[ref_key("becs")][n0:n0 + graphs[1].num_nodes]) == 0  # absent -> zeros
    for t in TASKS:
        assert torch.isfinite(batch[ref_key(t)]).all()


def test_cache_is_reused_and_invalidated(tmp_path):
    src = tmp_path / "quartz.xyz"
    shutil.copy(SHARED_DATA / "md" / "SiO2.xyz", src)
    first = datamodule("sio2", tmp_path, file=str(src))
    first.setup()
    assert (first.cache.hits, first.cache.misses) == (0, 1)
    second = datamodule("sio2", tmp_path, file=str(src))
    second.setup()
    assert (second.cache.hits, second.cache.misses) == (1, 0)
    for a, b in zip(first.datasets["train"][:3], second.datasets["train"][:3]):
        for k in ("positions", "edge_index", ref_key("becs"), weight_key("energy")):
            assert torch.equal(a[k], b[k])
    text = src.read_text().replace("total_energy=-24452.129397523713", "total_energy=-24452.0", 1)
    src.write_text(text)
    third = datamodule("sio2", tmp_path, file=str(src))
    third.setup()
    assert (third.cache.hits, third.cache.misses) == (0, 1)
    assert float(third.datasets["train"][0][ref_key("energy")]) == -24452.0
    other_cutoff = datamodule("sio2", tmp_path, file=str(src), r_max=4.0)
    other_cutoff.setup()
    assert other_cutoff.cache.misses == 1


def test_unknown_element_for_the_model_table(tmp_path):
    dm = datamodule("batio3", tmp_path, atomic_numbers="[8,22]")
    with pytest.raises(UnknownElementError, match=r"BaTiO3.xyz:0: element\(s\) Ba"):
        dm.setup()


def test_drop_flagged(tmp_path, loaded):
    kept = loaded["mp_dielectric"]
    flagged = kept.manifest["audit"]["flagged_in_train"]
    assert "dielectric-valid.xyz:41" in flagged or "dielectric-valid.xyz:41" not in kept.manifest["ids"]["train"]
    dropped = datamodule("mp_dielectric", tmp_path, drop_flagged=True)
    dropped.setup()
    assert len(dropped.datasets["train"]) == len(kept.datasets["train"]) - len(flagged) > 0
    assert not set(flagged) & {m["id"] for m in dropped.meta["train"]}


def test_loaders_yield_batches(loaded):
    batch = next(iter(loaded["batio3"].train_dataloader()))
    assert batch.num_graphs == 4 and batch[ref_key("forces")].shape == (540, 3)
    assert batch["external_field"].shape == (4, 3) and torch.count_nonzero(batch["external_field"]) == 0


def _interp_record(atoms0, atoms1, lam, p0, p1, frame):
    a = atoms0.copy()
    a.set_scaled_positions(atoms0.get_scaled_positions(wrap=False) * (1 - lam) + atoms1.get_scaled_positions(wrap=False) * lam)
    return Record(atoms=a, labels={"polarisation": p0 * (1 - lam) + p1 * lam}, electric_field=np.zeros(3), file="x", frame=frame)


def test_frames_ordered_along_their_path(sio2_atoms):
    end = sio2_atoms.copy()
    rng = np.random.default_rng(0)
    end.set_scaled_positions(sio2_atoms.get_scaled_positions(wrap=False) + 0.02 * rng.standard_normal((len(end), 3)))
    lams = [0.6, 0.0, 1.0, 0.3, 0.8]
    recs = [_interp_record(sio2_atoms, end, l, np.zeros(3), np.array([0, 0, 0.05]), i) for i, l in enumerate(lams)]
    np.testing.assert_allclose(path_coordinates(recs), lams, atol=1e-9)


def test_ferroelectric_positions_recorded(loaded):
    dm = loaded["ferroelectric"]
    positions = [m["path_position"] for s in dm.meta for m in dm.meta[s]]
    assert all(0.0 <= p <= 1.0 for p in positions)
    for split in dm.meta:  # each path's frames are contiguous and ordered non-polar -> polar
        seen, last = [], {}
        for m in dm.meta[split]:
            path = (m["nonpolar_mpid"], m["polar_mpid"])  # one polar end can close several paths
            if seen and seen[-1] != path:
                assert path not in seen
            if not seen or seen[-1] != path:
                seen.append(path)
            assert m["path_position"] >= last.get(path, -1.0)
            last[path] = m["path_position"]

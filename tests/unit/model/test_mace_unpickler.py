"""mace ``.model`` files are read without running anything in them, whatever their source: torch's
weights-only unpickler with only the classes a mace model is made of, the compiled code they carry
(e3nn's TorchScript, mace's torch.fx graphs) dropped unread, the model rebuilt by mace's own
constructors. Every payload here is shown to be live first (it runs under plain unpickling,
``allow_pickle=True``), so a test that it does not run under the restricted loader can fail."""

from __future__ import annotations

import builtins
import datetime
import io
import os
import re
import shutil
from pathlib import Path
from typing import Tuple

import ase.io
import pytest
import torch

import mf_lightning
from mf_lightning.data import keys
from mf_lightning.errors import ModelFileError
from mf_lightning.model import foundation
from mf_lightning.model.backbone import load_mace_pickle
from tests.conftest import shared_file
from tests.helpers import mace_kwargs, make_source
from tests.unit.model.test_from_mace import mace_batch, train_a_few_steps

HEADS2 = ["pt_head", "dielectric"]


@pytest.fixture(scope="module")
def quartz_frames():
    return ase.io.read(shared_file("md", "SiO2.xyz"), index=":2")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty mace cache (mace's get_cache_dir reads XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "mace"


def official_cache_file() -> Path:
    """Where mace keeps mace-mp-0:small: the name a planted file would have."""
    target = foundation.cache_path_of(foundation.url_of("mace-mp-0:small"))
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def outputs(model, frames, heads):
    frame_heads = [heads[i % len(heads)] for i in range(len(frames))]
    out = model(mace_batch(frames, heads, frame_heads), compute_stress=True)
    return {k: out[k].detach() for k in ("energy", "forces", "stress")}


def assert_same_outputs(got, ref):
    for k in ref:
        scale = ref[k].abs().max().item()
        torch.testing.assert_close(got[k], ref[k], rtol=1e-12, atol=1e-12 * scale)


def mpa_like_source():
    """The features of the newer foundation models (MPA-0, OMAT-0): density-normalised
    interactions, a ZBL pair repulsion, Agnesi distance transform; an np.float64 avg_num_neighbors."""
    import numpy as np
    from mace.modules import interaction_classes
    from mace.modules.models import ScaleShiftMACE

    from mf_lightning.utils import default_dtype

    torch.manual_seed(5)
    kw = {**mace_kwargs(["Default"], False), "avg_num_neighbors": np.float64(11.5), "pair_repulsion": True,
          "distance_transform": "Agnesi", "correlation": 3,
          "interaction_cls": interaction_classes["RealAgnosticDensityResidualInteractionBlock"],
          "interaction_cls_first": interaction_classes["RealAgnosticDensityInteractionBlock"]}
    with default_dtype(torch.float64):
        return ScaleShiftMACE(atomic_inter_scale=[1.4], atomic_inter_shift=[0.2], **kw).double()


SOURCES = {
    "ScaleShiftMACE": lambda: make_source("ScaleShiftMACE", ["Default"], False),
    "MACE-two-heads-reduced-cg": lambda: make_source("MACE", HEADS2, True),
    "mpa-like": mpa_like_source,
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_a_mace_file_loads_without_the_pickle_opt_in_and_is_the_source(tmp_path, quartz_frames, kind):
    source = SOURCES[kind]()
    heads = list(source.heads)
    source = train_a_few_steps(source, quartz_frames, heads)  # weights off their init values
    ref = outputs(source, quartz_frames, heads)
    path = tmp_path / "small.model"
    torch.save(source, path)  # mace's own format: a pickled module

    user_globals = set(torch.serialization.get_safe_globals())
    loaded = load_mace_pickle(path)
    assert set(torch.serialization.get_safe_globals()) == user_globals  # the allow-list is not left installed
    assert type(loaded) is type(source) and loaded is not source
    assert_same_outputs(outputs(loaded, quartz_frames, heads), ref)

    fm = mf_lightning.FieldMACE.from_mace(path)  # the same path, through the public entry point
    frame_heads = [heads[i % len(heads)] for i in range(len(quartz_frames))]
    out = fm(mace_batch(quartz_frames, heads, frame_heads), properties=(keys.ENERGY, keys.FORCES, keys.STRESS))
    assert_same_outputs({k: out[k].detach() for k in ref}, ref)


# ---------------------------------------------------------------- payloads in the pickle itself
def write_marker(path):
    """A function of the attacker's (here: of this module), called by the pickle."""
    with open(path, "w") as fh:
        fh.write("ran")


class Payload:
    """Unpickles as a call: os.system, builtins.exec, or a function writing a file."""

    def __init__(self, how: str, marker):
        self.how, self.marker = how, str(marker)

    def __reduce__(self):
        if self.how == "os.system":
            return os.system, (f"touch {self.marker}",)
        if self.how == "builtins.exec":
            return builtins.exec, (f"open({self.marker!r}, 'w').close()",)
        return write_marker, (self.marker,)


# what the refusal names: the global the payload needs (torch writes builtins without "builtins.")
PAYLOADS = {"os.system": rf"needs {os.system.__module__}\.system,", "builtins.exec": r"needs exec,",
            "function": r"needs \S+\.write_marker,"}


def payload_file(tmp_path, how):
    """A genuine small mace model carrying a payload, and the file its payload would create."""
    marker = tmp_path / f"ran-{how}"
    source = make_source()
    source.note = Payload(how, marker)  # an attribute of the model: unpickled with it
    path = tmp_path / f"{how}.model"
    torch.save(source, path)
    return path, marker


def assert_live(path, marker):
    """The payload really runs under plain unpickling (then the marker is removed)."""
    assert not marker.exists()
    load_mace_pickle(path, allow_pickle=True)
    assert marker.exists(), "the payload did not run under plain unpickling: the test would prove nothing"
    marker.unlink()


@pytest.mark.parametrize("how", list(PAYLOADS))
def test_a_payload_is_refused_before_it_runs_given_as_a_file(tmp_path, how):
    path, marker = payload_file(tmp_path, how)
    for load in (lambda: load_mace_pickle(path), lambda: mf_lightning.FieldMACE.from_mace(path)):
        with pytest.raises(ModelFileError) as err:
            load()
        message = str(err.value)
        assert "\n" not in message and str(path) in message and re.search(PAYLOADS[how], message), message
        assert "allow_pickle=True" in message  # the escape hatch is named
        assert not marker.exists()
    assert_live(path, marker)


@pytest.mark.parametrize("how", list(PAYLOADS))
def test_a_payload_planted_in_maces_cache_under_an_official_name_is_refused(tmp_path, cache, how):
    path, marker = payload_file(tmp_path, how)
    planted = official_cache_file()
    shutil.copy(path, planted)
    for load in (lambda: load_mace_pickle("mace-mp-0:small"),
                 lambda: mf_lightning.FieldMACE.from_mace("mace-mp-0:small")):
        with pytest.raises(ModelFileError) as err:
            load()
        message = str(err.value)
        assert "\n" not in message and str(planted) in message and re.search(PAYLOADS[how], message), message
        assert "delete" in message  # how to get the real file
        assert not marker.exists()
    # a refused file is not pinned: fetching the real one later is not "a replaced file"
    registry = planted.parent / foundation.REGISTRY
    assert not registry.exists() or planted.name not in registry.read_text()
    assert_live(planted, marker)


def test_the_cli_refuses_a_planted_model_in_one_line_with_exit_2(tmp_path, cache, capsys):
    from mf_lightning.cli import distill

    path, marker = payload_file(tmp_path, "os.system")
    shutil.copy(path, official_cache_file())
    threads = torch.get_num_threads()
    try:
        code = distill.main([str(shared_file("md", "SiO2.xyz")), "--model", "mace-mp-0:small",
                             "--out", str(tmp_path / "out.xyz")])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("mf-distill: error:") and \
        re.search(PAYLOADS["os.system"], err[0]), err
    assert not marker.exists() and not (tmp_path / "out.xyz").exists()


def test_a_genuine_model_in_the_cache_loads_by_name_and_is_pinned_once_loaded(tmp_path, cache, quartz_frames):
    source = make_source()
    planted = official_cache_file()
    torch.save(source, planted)
    registry = planted.parent / foundation.REGISTRY
    assert not registry.exists()
    loaded = load_mace_pickle("mace-mp-0:small")
    assert_same_outputs(outputs(loaded, quartz_frames, ["Default"]), outputs(source, quartz_frames, ["Default"]))
    assert foundation.sha256_of(planted) in registry.read_text()


# ---------------------------------------------------------------- code inside the model's compiled parts
class WritesOnLoad(torch.nn.Module):
    """TorchScript whose ``__setstate__`` runs as ``torch.jit.load`` reads it (e3nn's
    ``CodeGenMixin.__setstate__`` loads the archives a file holds) and writes a file."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.flag = torch.zeros(1, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.path = state[0]
        self.training = state[1]
        self.flag = torch.from_file(self.path, True, 1, dtype=torch.uint8).fill_(1)


class FxSource(torch.nn.Module):
    """Unpickles through torch.fx's ``reduce_graph_module``, which ``exec``s source from the file."""

    def __init__(self, marker):
        super().__init__()
        self.marker = str(marker)

    def __reduce__(self):
        from torch.fx.graph_module import reduce_graph_module

        body = {"_code": "\ndef forward(self, x):\n    return x\n", "_graphmodule_cls_name": "GraphModule"}
        return reduce_graph_module, (body, f"import pathlib; pathlib.Path({self.marker!r}).touch()\n")


def test_compiled_code_carried_by_the_file_is_not_run(tmp_path, quartz_frames, monkeypatch):
    from e3nn.util.codegen import CodeGenMixin

    source = train_a_few_steps(make_source(), quartz_frames, ["Default"])
    ref = outputs(source, quartz_frames, ["Default"])
    ts_marker, fx_marker = tmp_path / "ran-torchscript", tmp_path / "ran-fx"
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(WritesOnLoad(str(ts_marker))), buffer)
    evil = buffer.getvalue()
    own_state = CodeGenMixin.__getstate__

    def with_evil_archives(self):  # the attacker's writer: every TorchScript archive replaced
        state = own_state(self)
        if "__codegen__" in state:
            state["__codegen__"] = {name: evil for name in state["__codegen__"]}
        return state

    contraction = source.products[0].symmetric_contractions.contractions[0]
    contraction._modules["graph_opt_main"] = FxSource(fx_marker)  # a torch.fx graph with a payload
    path = tmp_path / "compiled-payloads.model"
    with monkeypatch.context() as m:
        m.setattr(CodeGenMixin, "__getstate__", with_evil_archives)
        torch.save(source, path)

    loaded = load_mace_pickle(path)  # read, its code dropped, rebuilt: the source, and nothing ran
    assert not ts_marker.exists() and not fx_marker.exists()
    assert_same_outputs(outputs(loaded, quartz_frames, ["Default"]), ref)

    with pytest.raises(ModelFileError):  # plain unpickling runs both (the fx body is no real graph)
        load_mace_pickle(path, allow_pickle=True)
    assert ts_marker.exists() and fx_marker.exists()


# ---------------------------------------------------------------- the escape hatch, and what it is for
def test_allow_pickle_is_the_escape_hatch_for_a_file_the_allow_list_cannot_read(tmp_path, quartz_frames):
    source = make_source()
    source.provenance = datetime.date(2024, 5, 1)  # a harmless class outside the allow-list
    path = tmp_path / "dated.model"
    torch.save(source, path)
    ref = outputs(source, quartz_frames, ["Default"])

    # globals a user allowed process-wide do not widen the allow-list, and stay allowed
    with torch.serialization.safe_globals([datetime.date]):
        with pytest.raises(ModelFileError, match=r"needs datetime\.date.*allow_pickle=True") as err:
            load_mace_pickle(path)
        assert "\n" not in str(err.value)
        assert datetime.date in torch.serialization.get_safe_globals()

    loaded = load_mace_pickle(path, allow_pickle=True)
    assert loaded.provenance == datetime.date(2024, 5, 1)
    fm = mf_lightning.FieldMACE.from_mace(path, allow_pickle=True)
    out = fm(mace_batch(quartz_frames, ["Default"], ["Default"] * 2), properties=(keys.ENERGY, keys.FORCES))
    assert_same_outputs({k: out[k].detach() for k in ("energy", "forces")},
                        {k: ref[k] for k in ("energy", "forces")})


def test_a_model_its_config_does_not_describe_is_refused_not_rebuilt_differently(tmp_path):
    source = make_source()
    source.interactions[1].avg_num_neighbors = 3.0  # mace's config holds the first layer's only
    path = tmp_path / "odd.model"
    torch.save(source, path)
    with pytest.raises(ModelFileError, match=r"interactions\.1\.avg_num_neighbors is 3\.0 in the file.*"
                                             r"allow_pickle=True") as err:
        load_mace_pickle(path)
    assert "\n" not in str(err.value)
    assert load_mace_pickle(path, allow_pickle=True).interactions[1].avg_num_neighbors == 3.0

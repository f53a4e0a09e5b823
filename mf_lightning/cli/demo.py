"""Response demo: build the configured model and print F, P, Z*, alpha and eps_inf for one
structure. Run by ``make train`` until the training loop lands."""

from __future__ import annotations

import time

import ase.io
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mf_lightning.analysis.dielectric import eps_inf_from_alpha
from mf_lightning.runtime import configure_process
from mf_lightning.simulation.calculator import MACEFieldCalculator
from mf_lightning.units import E_PER_A2_TO_UC_PER_CM2


def response_demo(cfg: DictConfig) -> dict:
    configure_process(cfg.get("torch_threads"), malloc=cfg.get("malloc_tuning", True))
    atoms = ase.io.read(cfg.demo.structure, index=int(cfg.demo.frame))
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    elements = {int(z) for z in atoms.get_atomic_numbers()}
    model_cfg["atomic_numbers"] = sorted(elements | set(model_cfg["atomic_numbers"]))
    # A fresh coupling is small (init_scale 0.01) and would give P of order 1e-4; the demo uses a
    # unit-scale random coupling so the numbers show the structure of the response.
    if model_cfg["coupling"]["form"] != "none":
        model_cfg["coupling"] = {**model_cfg["coupling"], "init": "random", "init_scale": 1.0}
    model = instantiate(model_cfg)
    calc = MACEFieldCalculator(model, dtype=model_cfg["dtype"], electric_field=list(cfg.demo.electric_field))
    atoms.calc = calc
    t0 = time.perf_counter()
    energy = atoms.get_potential_energy()
    P = calc.get_polarisation()
    becs = calc.get_becs()
    alpha = calc.get_polarisability()
    seconds = time.perf_counter() - t0
    eps_inf = eps_inf_from_alpha(alpha)
    np.set_printoptions(precision=5, suppress=True)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"UNTRAINED random-weight FieldMACE ({model_cfg['coupling']['form']}, {n_params} parameters, "
          f"{model_cfg['dtype']}) on {cfg.demo.structure} frame {cfg.demo.frame} "
          f"({len(atoms)} atoms, E = {list(cfg.demo.electric_field)} V/A)")
    print(f"  electric enthalpy F  : {energy:.6f} eV")
    print(f"  polarisation P       : {P} e/A^2  = {P * E_PER_A2_TO_UC_PER_CM2} uC/cm^2")
    print(f"  Z* of atom 0 ({atoms[0].symbol})   :\n{becs[0]}")
    print(f"  acoustic sum rule    : max |sum_k Z*_k| = {np.abs(becs.sum(0)).max():.2e} e")
    print(f"  polarisability alpha :\n{alpha}  e/(V A)")
    print(f"  eps_inf = 1 + alpha/eps0 :\n{eps_inf}")
    print(f"  F, forces, stress, P, Z*, alpha in {seconds:.2f} s")
    return {"energy": energy, "polarisation": P, "becs": becs, "polarisability": alpha}

"""Every data key and output name in one place (as nequip's ``_keys.py``).

Inputs follow mace-torch's ``AtomicData`` so its batching carries them unchanged; outputs are the
names the model returns and the loss, metrics and calculator read.
"""

# --- inputs (mace-torch AtomicData fields) ---
POSITIONS = "positions"
CELL = "cell"
BATCH = "batch"
PTR = "ptr"
HEAD = "head"
NODE_ATTRS = "node_attrs"
EDGE_INDEX = "edge_index"
SHIFTS = "shifts"
UNIT_SHIFTS = "unit_shifts"
# mace-torch 0.3.16 AtomicData already carries a per-structure field of shape (1, 3), batched to
# (n_graphs, 3); we use it rather than inventing a second key. Unit: V/A.
ELECTRIC_FIELD = "external_field"

# --- outputs ---
ENERGY = "energy"  # electric enthalpy F(R, E), eV, per structure
FORCES = "forces"  # -dF/dR, eV/A, per atom
STRESS = "stress"  # (1/Omega) dF/d(strain), eV/A^3, (n_graphs, 3, 3)
VIRIALS = "virials"  # -dF/d(strain), eV, (n_graphs, 3, 3)
POLARISATION = "polarisation"  # -(1/Omega) dF/dE, e/A^2, (n_graphs, 3)
BECS = "becs"  # Born effective charges Z*_{k,ij} = d(Omega P_i)/dR_kj, e, (n_atoms, 3, 3)
POLARISABILITY = "polarisability"  # alpha_ij = dP_i/dE_j, e/(V A), (n_graphs, 3, 3)
VOLUME = "volume"  # |det cell|, A^3, (n_graphs,)



def ref_key(quantity: str) -> str:
    """A graph's reference label of ``quantity`` (zeros where the structure has none)."""
    return f"ref_{quantity}"


def weight_key(quantity: str) -> str:
    """A graph's weight of that label: 1 where labelled, 0 where not."""
    return f"weight_{quantity}"


RESPONSE_PROPERTIES = (POLARISATION, BECS, POLARISABILITY)
ALL_PROPERTIES = (ENERGY, FORCES, STRESS, VIRIALS, POLARISATION, BECS, POLARISABILITY)

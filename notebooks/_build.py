"""Writes the research notebooks 01-04 (committed without outputs): ``python notebooks/_build.py``.

Each notebook has one cell tagged ``parameters`` (papermill convention); CI (tests/test_notebooks.py)
inserts a cell after it with small settings and runs the notebook top to bottom with nbclient.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def code(src, params=False):
    cell = new_code_cell(src.strip("\n"))
    if params:
        cell.metadata["tags"] = ["parameters"]
    return cell


def md(src):
    return new_markdown_cell(src.strip("\n"))


NB = {}

# ---------------------------------------------------------------------------------------------------
NB["01_quickstart.ipynb"] = [
    md("""
# 01 · Quickstart: train a small model on rMD17 ethanol

Read the revised MD17 ethanol frames (PBE/def2-SVP, energies in kcal/mol), train a small NequIP-style
model with the config-driven trainer, evaluate it on held-out frames and draw parity plots.
If the rMD17 files are not at `DATA_DIR`, a few ethanol frames are generated and labelled with ASE's
EMT calculator instead (a toy potential, only so the notebook runs anywhere).
"""),
    code("""
# Parameters (CI runs this notebook with smaller values).
DATA_DIR = "../../shared/data/rmd17"   # rmd17_<molecule>_{train,test}_01.npz, relative to notebooks/
MOLECULE = "ethanol"
N_TRAIN = 200          # training frames (rMD17: do not use more than 1000)
N_VALID = 50
N_TEST = 500
EPOCHS = 60
BATCH_SIZE = 8
MODEL = {"name": "nequip", "num_layers": 2, "features": 16, "radial_mlp_width": 32, "cutoff": 4.0}
RUN_DIR = "runs/01_quickstart"         # resumed if it already holds a run
""", params=True),
    code("""
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import nnpes
from nnpes.training import train

run_dir = Path(RUN_DIR)
train_file = Path(DATA_DIR) / f"rmd17_{MOLECULE}_train_01.npz"
test_file = Path(DATA_DIR) / f"rmd17_{MOLECULE}_test_01.npz"
energy_unit = "kcal/mol"
if not (train_file.exists() and test_file.exists()):
    # Fallback: rattled ethanol labelled with EMT (eV), written as extxyz.
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    rng = np.random.default_rng(0)
    frames = []
    for k in range(N_TRAIN + N_VALID + N_TEST):
        a = molecule("CH3CH2OH")
        a.positions += rng.normal(scale=0.05, size=a.positions.shape)
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        frames.append(a)
    (run_dir / "data").mkdir(parents=True, exist_ok=True)
    train_file, test_file = run_dir / "data" / "train.extxyz", run_dir / "data" / "test.extxyz"
    write(train_file, frames[: N_TRAIN + N_VALID])
    write(test_file, frames[N_TRAIN + N_VALID :])
    energy_unit = "eV"
print("train:", train_file, "| test:", test_file, "| energies in", energy_unit)
"""),
    md("The whole run is one config: data, model, training, output (see `nnpes config` for every key)."),
    code("""
config = {
    "data": {"train": str(train_file), "energy_unit": energy_unit, "index": f":{N_TRAIN + N_VALID}",
             "n_valid": N_VALID, "split_seed": 0},
    "model": {**MODEL, "elements": ["H", "C", "O"]},
    "training": {"max_epochs": EPOCHS, "batch_size": BATCH_SIZE, "lr": 5e-3, "schedule": "cosine",
                 "forces_weight": 100.0, "progress": False, "seed": 0},
    "output": {"plots": False},
}
result = train(config, run_dir, resume="auto", quiet=True)
print(f"{result.stop_reason} after {result.epochs} epochs ({result.elapsed_s:.0f} s); "
      f"best epoch {result.best_epoch}, validation loss {result.best_valid_loss:.4g}")
"""),
    code("""
import csv

rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
epoch = [int(r["epoch"]) for r in rows]
fig, ax = plt.subplots(figsize=(5, 3.2))
ax.semilogy(epoch, [float(r["train_f_mae_meV_A"]) for r in rows], label="train")
ax.semilogy(epoch, [float(r["valid_f_mae_meV_A"]) for r in rows], label="valid")
ax.set(xlabel="epoch", ylabel="force MAE (meV/Å)", title="learning curve")
ax.legend();
"""),
    md("Evaluate the saved model (`nnpes.load_potential`) on frames it never saw."),
    code("""
pot = nnpes.load_potential(result.model)
test = nnpes.read_structures(test_file, index=f":{N_TEST}", energy_unit=energy_unit)
pred = pot.predict(test)
e_ref = np.array([a.get_potential_energy() for a in test])
e_pred = np.array([p["energy"] for p in pred])
f_ref = np.concatenate([a.get_forces().ravel() for a in test])
f_pred = np.concatenate([p["forces"].ravel() for p in pred])
n_atoms = len(test[0])
e_mae = 1000 * np.mean(np.abs(e_pred - e_ref)) / n_atoms
f_mae = 1000 * np.mean(np.abs(f_pred - f_ref))
print(f"{len(test)} test frames: energy MAE {e_mae:.2f} meV/atom, force MAE {f_mae:.1f} meV/Å")
assert np.isfinite(e_mae) and np.isfinite(f_mae)
"""),
    code("""
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, ref, prd, name, unit in ((axes[0], e_ref - e_ref.mean(), e_pred - e_ref.mean(), "energy", "eV"),
                                 (axes[1], f_ref, f_pred, "force component", "eV/Å")):
    ax.plot(ref, prd, ".", ms=2, alpha=0.5)
    lim = [min(ref.min(), prd.min()), max(ref.max(), prd.max())]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set(xlabel=f"reference {name} ({unit})", ylabel=f"predicted {name} ({unit})", aspect="equal")
axes[0].set_title(f"E MAE {e_mae:.2f} meV/atom")
axes[1].set_title(f"F MAE {f_mae:.1f} meV/Å")
fig.tight_layout()
"""),
]

# ---------------------------------------------------------------------------------------------------
NB["02_custom_md.ipynb"] = [
    md("""
# 02 · Custom MD: the jitted force function in your own integrator

`nnpes.md.md_functions(pot, atoms)` returns `neighbor_fn, energy_fn` in jax-md's conventions:
`energy_fn(R, neighbor=nbrs)` is a pure, differentiable function of the positions. Here it drives
(1) a velocity-Verlet loop written by hand under `lax.scan`, and (2) jax-md's own `simulate.nve`,
and we check that both conserve the total energy.
"""),
    code("""
# Parameters
MODEL_DIR = "runs/01_quickstart/model"   # a trained model (notebook 01); if absent, see TRAIN_IF_MISSING
TRAIN_IF_MISSING = True   # train MODEL briefly on rMD17 ethanol into runs/02_model; False: untrained MODEL
DATA = "../../shared/data/rmd17/rmd17_ethanol_train_01.npz"
MODEL = {"name": "nequip", "num_layers": 2, "features": 8, "radial_mlp_width": 16, "cutoff": 4.0}
DT = 0.5            # fs
N_BLOCKS = 40       # energy recorded after each block
BLOCK = 50          # steps per jitted block (lax.scan)
TEMPERATURE = 300.0  # K, initial Maxwell-Boltzmann velocities
DTYPE = "float64"
""", params=True),
    code("""
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from ase.build import molecule

jax.config.update("jax_enable_x64", DTYPE == "float64")
import nnpes
from nnpes.md import kinetic_energy, maxwell_boltzmann, md_functions, ACCEL

if not Path(MODEL_DIR).exists() and TRAIN_IF_MISSING and Path(DATA).exists():
    from nnpes.training import train

    result = train({"data": {"train": DATA, "energy_unit": "kcal/mol", "index": ":250", "n_valid": 50},
                    "model": {**MODEL, "elements": ["H", "C", "O"]},
                    "training": {"max_epochs": 40, "batch_size": 8, "schedule": "cosine", "progress": False},
                    "output": {"plots": False}}, "runs/02_model", resume="auto", quiet=True)
    MODEL_DIR = result.model
if Path(MODEL_DIR).exists():
    pot = nnpes.load_potential(MODEL_DIR)
else:
    # An untrained model is smooth, so NVE still conserves its energy, but it has no repulsion:
    # atoms fall onto each other within ~100 fs and the steep region needs a smaller DT. Keep it short.
    print("no trained model: using an untrained one for a short run")
    pot = nnpes.build_potential({**MODEL, "elements": ["H", "C", "O"], "dtype": DTYPE})
    N_BLOCKS = min(N_BLOCKS, 4)
if pot.config.dtype != DTYPE:  # same parameters, integrated in DTYPE
    cfg = {**pot.to_config()["model"], "dtype": DTYPE}
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float64 if DTYPE == "float64" else jnp.float32), pot.params)
    pot = nnpes.build_potential(cfg).replace(params)
atoms = molecule("CH3CH2OH")
neighbor_fn, energy_fn = md_functions(pot, atoms, skin=1.0)
dtype = energy_fn.dtype
R0 = jnp.asarray(atoms.positions, dtype)
masses = jnp.asarray(atoms.get_masses(), dtype)                  # amu
V0 = jnp.asarray(maxwell_boltzmann(atoms.get_masses(), TEMPERATURE, seed=0), dtype)   # Å/fs
nbrs = neighbor_fn.allocate(R0)
print(pot.config.name, pot.config.dtype, "| E(R0) =", float(jax.jit(energy_fn)(R0, neighbor=nbrs)), "eV")
"""),
    md("""
## 1 · Velocity Verlet by hand

$v_{t+\\Delta t/2} = v_t + \\tfrac{\\Delta t}{2} F_t/m$, $R_{t+\\Delta t} = R_t + \\Delta t\\, v_{t+\\Delta t/2}$,
$v_{t+\\Delta t} = v_{t+\\Delta t/2} + \\tfrac{\\Delta t}{2} F_{t+\\Delta t}/m$, with $F = -\\nabla E$ from
`energy_fn.energy_and_forces` (one forward and backward pass). `ACCEL` converts eV/Å/amu to Å/fs².
"""),
    code("""
inv_m = (ACCEL / masses)[:, None]

def vv_step(carry, _):
    R, V, F, E, nbrs = carry
    V = V + 0.5 * DT * F * inv_m
    R = R + DT * V
    nbrs = neighbor_fn.update(R, nbrs)          # rebuilt on device only when an atom moved > skin/2
    E, F = energy_fn.energy_and_forces(R, neighbor=nbrs)
    V = V + 0.5 * DT * F * inv_m
    return (R, V, F, E, nbrs), None

@jax.jit
def block(carry):
    carry, _ = jax.lax.scan(vv_step, carry, None, length=BLOCK)
    return carry

E, F = jax.jit(energy_fn.energy_and_forces)(R0, neighbor=nbrs)
carry = (R0, V0, F, E, nbrs)
etot_hand = [float(E + kinetic_energy(V0, masses))]
for _ in range(N_BLOCKS):
    carry = block(carry)
    etot_hand.append(float(carry[3] + kinetic_energy(carry[1], masses)))
assert not bool(carry[4].did_buffer_overflow), "neighbour list overflowed: allocate with more capacity"
etot_hand = np.array(etot_hand)
print(f"hand-written VV: total energy drift {etot_hand[-1] - etot_hand[0]:+.2e} eV, spread {np.ptp(etot_hand):.2e} eV")
"""),
    md("## 2 · The same energy function in jax-md (if installed: `pip install nnpes[md]`)"),
    code("""
try:
    from jax_md import simulate, space
except ImportError:
    simulate = None
    print("jax-md not installed: skipping")
etot_jaxmd = None
if simulate is not None:
    _, shift_fn = space.free()
    init_fn, apply_fn = simulate.nve(energy_fn, shift_fn, dt=DT)
    # jax-md works in its own units: with masses in amu and E in eV, time is in units of
    # sqrt(amu Å² / eV) = 10.18 fs; pass masses / ACCEL (the conversion) so that dt stays in fs.
    m_eff = masses / ACCEL
    kT = 8.617333262e-5 * TEMPERATURE
    state = jax.jit(init_fn)(jax.random.PRNGKey(0), R0, mass=m_eff, kT=kT, neighbor=nbrs)
    state = state.set(momentum=V0 * m_eff[:, None])   # the same initial velocities as above

    @jax.jit
    def jmd_block(state, nbrs):
        def body(c, _):
            s, nb = c
            nb = neighbor_fn.update(s.position, nb)
            return (apply_fn(s, neighbor=nb), nb), None
        (state, nbrs), _ = jax.lax.scan(body, (state, nbrs), None, length=BLOCK)
        return state, nbrs

    @jax.jit
    def etot_fn(state, nbrs):
        return energy_fn(state.position, neighbor=nbrs) + kinetic_energy(state.momentum / state.mass, masses)

    def etot(state, nbrs):
        return float(etot_fn(state, nbrs))

    nb = nbrs
    etot_jaxmd = [etot(state, nb)]
    for _ in range(N_BLOCKS):
        state, nb = jmd_block(state, nb)
        etot_jaxmd.append(etot(state, nb))
    etot_jaxmd = np.array(etot_jaxmd)
    print(f"jax-md NVE: total energy drift {etot_jaxmd[-1] - etot_jaxmd[0]:+.2e} eV, spread {np.ptp(etot_jaxmd):.2e} eV")
    # same integrator, same start: the trajectories agree
    print("max |R_jaxmd - R_hand| =", float(jnp.max(jnp.abs(state.position - carry[0]))), "Å")
"""),
    code("""
t = np.arange(N_BLOCKS + 1) * BLOCK * DT / 1000  # ps
fig, ax = plt.subplots(figsize=(6, 3.2))
ax.plot(t, 1000 * (etot_hand - etot_hand[0]), label="hand-written VV")
if etot_jaxmd is not None:
    ax.plot(t, 1000 * (etot_jaxmd - etot_jaxmd[0]), "--", label="jax-md nve")
ax.set(xlabel="time (ps)", ylabel="E_tot − E_tot(0) (meV)", title=f"NVE, dt = {DT} fs, {DTYPE}")
ax.legend()
e_kin0 = float(kinetic_energy(V0, masses))
assert np.ptp(etot_hand) < 0.05 * e_kin0, "total energy not conserved"
"""),
]

# ---------------------------------------------------------------------------------------------------
NB["03_active_learning.ipynb"] = [
    md("""
# 03 · Active learning with a real oracle

A committee of small models explores with Langevin MD; frames where the members disagree
(`max_force_std`, eV/Å, between the trust levels `lo` and `hi`) are labelled by the oracle
(GFN2-xTB via tblite, or EMT) and added to the training set; repeat. The loop is
`nnpes.active.loop.run` (crash-safe: every stage is committed to `run_dir`).
"""),
    code("""
# Parameters
ORACLE = "tblite"        # "tblite" (GFN2-xTB) or "emt" (ASE's EMT: fast toy)
MOLECULE = "CH3CH2OH"
ITERATIONS = 4
COMMITTEE = 4
EPOCHS = 60
INITIAL_PER_START = 8    # rattled copies of the start labelled before the first iteration
STEPS = 400              # MD steps per exploration trajectory
TEMPERATURES = [300.0, 600.0]
MAX_PER_ITERATION = 8
MODEL = {"name": "behler_parrinello", "hidden": [16, 16], "cutoff": 4.0}
RUN_DIR = "runs/03_active_learning"   # resumed if it already holds a run
""", params=True),
    code("""
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from ase.build import molecule
from ase.io import write

from nnpes.active.loop import run

run_dir = Path(RUN_DIR)
run_dir.mkdir(parents=True, exist_ok=True)
start = molecule(MOLECULE)
write(run_dir / "start.extxyz", start)
oracle = ({"type": "tblite", "method": "GFN2-xTB"} if ORACLE == "tblite"
          else {"type": "calculator", "calculator": "ase.calculators.emt.EMT"})
config = {
    "model": {**MODEL, "elements": sorted(set(start.get_chemical_symbols()))},
    "data": {"starts": str(run_dir / "start.extxyz"), "initial_per_start": INITIAL_PER_START,
             "initial_rattle": 0.05, "valid_fraction": 0.2},
    "committee": {"size": COMMITTEE, "max_epochs": EPOCHS, "warm_max_epochs": max(EPOCHS // 2, 1), "batch_size": 4},
    "explore": {"temperatures": TEMPERATURES, "steps": STEPS, "timestep": 0.5, "stride": 10, "chunk": 50},
    "select": {"lo": 0.05, "hi": 1.0, "max_per_iteration": MAX_PER_ITERATION, "method": "fps"},
    "oracle": oracle,
    "executor": {"kind": "serial"},
    "stop": {"max_iterations": ITERATIONS, "accurate_fraction": 0.99},
}
state = run(config, run_dir, resume=(run_dir / "state.json").exists(), log=None)
history = state["history"]
print("stopped:", state.get("stop_reason"), "|", len(history), "iterations")
"""),
    code("""
labels = [h["labels"] for h in history]
f_mae = [h["valid"]["forces_meV_per_A"]["mae"] if h.get("valid") else np.nan for h in history]
frac = np.array([[h["fractions"][k] for k in ("accurate", "candidate", "failed")] for h in history])
it = np.arange(len(history))

fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
axes[0].bar(it, labels)
axes[0].set(xlabel="iteration", ylabel="labelled structures", title="labels per iteration (cumulative)")
axes[1].plot(labels, f_mae, "o-")
axes[1].set(xlabel="labelled structures", ylabel="valid force MAE (meV/Å)", title="learning curve")
axes[2].stackplot(it, frac.T, labels=["accurate", "candidate", "failed"])
axes[2].set(xlabel="iteration", ylabel="fraction of explored frames", title="trust levels")
axes[2].legend(loc="lower right")
fig.tight_layout()
"""),
    md("Disagreement along the exploration trajectories of each iteration (the selected frames come from the band between the trust levels)."),
    code("""
from ase.io import read

fig, ax = plt.subplots(figsize=(7, 3.4))
for i in it:
    pool = read(run_dir / f"iter_{i:03d}" / "pool.extxyz", ":")
    if not pool:
        continue
    step = np.array([a.info["al_step"] for a in pool])
    eps = np.array([a.info["al_eps"] for a in pool])
    traj = np.array([a.info["al_start"] * 1000 + a.info["al_temperature"] for a in pool])
    for t in np.unique(traj):
        sel = traj == t
        ax.plot(step[sel] * 0.5, eps[sel], ".-", color=f"C{i}", alpha=0.7, label=f"iteration {i}" if t == traj[0] else None)
ax.axhline(config["select"]["lo"], color="k", ls=":", lw=0.8)
ax.axhline(config["select"]["hi"], color="k", ls="--", lw=0.8)
ax.set(xlabel="time (fs)", ylabel="max force std (eV/Å)", yscale="log", title="committee disagreement along MD")
ax.legend(fontsize=8);
assert len(history) >= 1 and labels[-1] >= labels[0]
"""),
]

# ---------------------------------------------------------------------------------------------------
NB["04_physics_checks.ipynb"] = [
    md("""
# 04 · Physics checks: invariance, equivariance, F = −∇E

For a model E(R): energy invariant under rotations, translations and permutations of like atoms;
forces rotate with the structure, F(QR) = Q F(R); forces are the exact negative gradient of the
energy (compare with central finite differences). Numbers first, then pictures.
"""),
    code("""
# Parameters
MODEL = {"name": "nequip", "num_layers": 2, "features": 8, "radial_mlp_width": 16, "cutoff": 4.0}
N_ANGLES = 73            # rotations drawn for the invariance plot
FD_STEPS = [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5]   # Å
""", params=True),
    code("""
import jax
import matplotlib.pyplot as plt
import numpy as np
from ase.build import molecule
from scipy.spatial.transform import Rotation

jax.config.update("jax_enable_x64", True)
import nnpes

pot = nnpes.build_potential({**MODEL, "elements": ["H", "C", "O"], "dtype": "float64"}, seed=0)
atoms = molecule("CH3CH2OH")
atoms.rattle(0.05, seed=1)
ref = pot.predict(atoms)
print(f"E = {ref['energy']:.6f} eV, |F|max = {np.abs(ref['forces']).max():.4f} eV/Å")
"""),
    code("""
def moved(positions):
    a = atoms.copy()
    a.positions = positions
    return a

rng = np.random.default_rng(0)
Q = Rotation.random(random_state=1).as_matrix()
t = rng.normal(size=3) * 3.0
perm = np.arange(len(atoms))
h = [i for i, s in enumerate(atoms.get_chemical_symbols()) if s == "H"]
perm[h] = np.roll(h, 1)   # permute the hydrogens

rot = pot.predict(moved(atoms.positions @ Q.T))
tra = pot.predict(moved(atoms.positions + t))
permuted = atoms[perm]
per = pot.predict(permuted)
checks = {
    "rotation: |ΔE| (eV)": abs(rot["energy"] - ref["energy"]),
    "rotation: max |F(QR) − Q F(R)| (eV/Å)": np.abs(rot["forces"] - ref["forces"] @ Q.T).max(),
    "translation: |ΔE| (eV)": abs(tra["energy"] - ref["energy"]),
    "translation: max |ΔF| (eV/Å)": np.abs(tra["forces"] - ref["forces"]).max(),
    "permutation: |ΔE| (eV)": abs(per["energy"] - ref["energy"]),
    "permutation: max |F_perm − F[perm]| (eV/Å)": np.abs(per["forces"] - ref["forces"][perm]).max(),
}
for k, v in checks.items():
    print(f"{k:45s} {v:.2e}")
assert max(checks.values()) < 1e-9
"""),
    md("Energy and the rotated force on one atom along a full turn about a random axis: the energy is flat, the force turns with the molecule."),
    code("""
axis = rng.normal(size=3)
axis /= np.linalg.norm(axis)
angles = np.linspace(0, 2 * np.pi, N_ANGLES)
Qs = [Rotation.from_rotvec(a * axis).as_matrix() for a in angles]
preds = pot.predict([moved(atoms.positions @ q.T) for q in Qs])
energies = np.array([p["energy"] for p in preds])
f_back = np.array([p["forces"][0] @ q for p, q in zip(preds, Qs)])   # rotated back: should be constant
f_lab = np.array([p["forces"][0] for p in preds])

fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
axes[0].plot(np.degrees(angles), energies - ref["energy"], "o-", ms=3)
axes[0].set(xlabel="rotation angle (deg)", ylabel="E − E(0) (eV)", title="invariance")
for c, name in enumerate("xyz"):
    axes[1].plot(np.degrees(angles), f_lab[:, c], "-", color=f"C{c}", label=f"F_{name} (lab frame)")
    axes[1].plot(np.degrees(angles), f_back[:, c], "--", color=f"C{c}", label=f"Qᵀ F_{name} (body frame)")
axes[1].set(xlabel="rotation angle (deg)", ylabel="force on atom 0 (eV/Å)", title="equivariance")
axes[1].legend(fontsize=7, ncol=2)
fig.tight_layout()
assert np.ptp(energies) < 1e-9 and np.ptp(f_back, axis=0).max() < 1e-9
"""),
    md("F = −∇E: central differences (E(R + h e) − E(R − h e)) / 2h converge to the autodiff force as h², until round-off takes over."),
    code("""
def energy(pos):
    return pot.predict(moved(pos))["energy"]

i, c = 2, 1   # atom and component
errors = []
for step in FD_STEPS:
    p, m = atoms.positions.copy(), atoms.positions.copy()
    p[i, c] += step
    m[i, c] -= step
    fd = -(energy(p) - energy(m)) / (2 * step)
    errors.append(abs(fd - ref["forces"][i, c]))
errors = np.array(errors)
fig, ax = plt.subplots(figsize=(5, 3.4))
ax.loglog(FD_STEPS, errors, "o-", label="|F_fd − F_autodiff|")
ax.loglog(FD_STEPS, errors[0] * (np.array(FD_STEPS) / FD_STEPS[0]) ** 2, "k:", label="∝ h²")
ax.set(xlabel="finite-difference step h (Å)", ylabel="error (eV/Å)", title=f"F = −∇E (atom {i}, component {c})")
ax.legend()
print("best agreement:", errors.min(), "eV/Å")
assert errors.min() < 1e-6 * max(1.0, abs(ref["forces"][i, c]))
"""),
    md("""The same checks, and more (parity, periodic images, stress = strain derivative, supercells,
locality, smoothness at the cutoff, padding, compilation), ship as `nnpes.testing`: `run_battery`
runs them all on random molecules and periodic cells in float64 and raises `AssertionError` naming
the violated check. It works on any registered model, including your own."""),
    code("""
from nnpes.testing import run_battery

print("passed:", run_battery(MODEL, seed=1))
"""),
]


def main():
    for name, cells in NB.items():
        for k, cell in enumerate(cells):  # stable ids: regenerating gives the same file
            cell["id"] = f"{name[:2]}-{k:02d}"
        nb = new_notebook(cells=cells, metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        })
        nbformat.validate(nb)
        nbformat.write(nb, HERE / name)
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()

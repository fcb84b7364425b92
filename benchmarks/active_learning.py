"""Rare-event demonstration for active learning (issue 6).

A reaction whose barrier plain 300 K MD does not cross in the simulated time, labelled by a real
oracle. Three ways to spend the same number of oracle labels:

  (a) the AL loop with enhanced sampling (configs/active_*.yaml: metadynamics on the reaction CV),
  (b) frames drawn evenly from unbiased 300 K MD run with the oracle itself,
  (c) frames drawn at random from the AL's own exploration pool (all iterations of (a)),

each trained as the same committee. Reported: the NEB barrier of each model against the oracle's
own NEB barrier, the force RMSE on a held-out set along the oracle's path (the NEB images and
rattled copies of them), and the oracle calls each needed to reach a target force error.

    python benchmarks/active_learning.py structures --out runs/active_structures
    python benchmarks/active_learning.py run --system cu --workdir runs/bench_al_cu [--quick]
    OMP_NUM_THREADS=1 python benchmarks/active_learning.py run --system malonaldehyde --workdir runs/bench_al_malon

Systems: ``cu`` = Cu adatom hop between hollow sites on Cu(100), EMT oracle;
``malonaldehyde`` = intramolecular proton transfer, GFN2-xTB (tblite) oracle.
Prints a JSON summary and writes it to WORKDIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # xTB is 10-100x slower with threads on this machine

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

from timing import repeat  # noqa: E402  (this directory is on sys.path)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"cu": ROOT / "configs/active_cu_adatom_emt.yaml", "malonaldehyde": ROOT / "configs/active_malonaldehyde_xtb.yaml"}
FILES = {"cu": "cu100_adatom.extxyz", "malonaldehyde": "malonaldehyde_enol.extxyz"}


# ---- structures --------------------------------------------------------------------------------


def oracle_calc(system: str):
    if system == "cu":
        from ase.calculators.emt import EMT

        return EMT()
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def relax(atoms: Atoms, system: str, fmax: float = 0.01) -> Atoms:
    from ase.optimize import BFGS

    a = atoms.copy()
    a.calc = oracle_calc(system)
    BFGS(a, logfile=None).run(fmax=fmax, steps=500)
    return a


def cu_endpoints():
    """Cu(100) 3x3x3 slab + adatom in a hollow site; the product is the neighbouring hollow."""
    from ase.build import add_adsorbate, fcc100

    slab = fcc100("Cu", size=(3, 3, 3), vacuum=8.0)
    a = slab.copy()
    add_adsorbate(a, "Cu", 1.7, "hollow")
    b = a.copy()
    b.positions[-1, 0] += slab.cell[0, 0] / 3  # one lattice spacing along x
    return a, b


def malonaldehyde_endpoints():
    """Z-enol malonaldehyde, atoms O1 C1 C2 C3 O2 H(O1) H(C1) H(C2) H(C3); the product has the
    proton on O2 (the mirror tautomer)."""
    x = np.array([
        [-1.25, 1.20, 0.0], [-1.20, -0.12, 0.0], [0.00, -0.77, 0.0], [1.22, -0.10, 0.0], [1.30, 1.14, 0.0],
        [-0.30, 1.50, 0.0], [-2.15, -0.65, 0.0], [0.00, -1.85, 0.0], [2.15, -0.70, 0.0],
    ])
    a = Atoms("OCCCOHHHH", positions=x)
    # Same atom labels, mirrored geometry: O1 takes O2's mirrored place, C1 ↔ C3, H(C1) ↔ H(C3), and
    # the proton (index 5) mirrors onto the other oxygen.
    perm = [4, 3, 2, 1, 0, 5, 8, 7, 6]
    b = a.copy()
    b.positions = a.positions[perm] * [-1.0, 1.0, 1.0]
    return a, b


def write_structures(out: Path) -> None:
    import ase.io

    out.mkdir(parents=True, exist_ok=True)
    for system, make in (("cu", cu_endpoints), ("malonaldehyde", malonaldehyde_endpoints)):
        start, _ = make()
        ase.io.write(out / FILES[system], relax(start, system))
        print(f"wrote {out / FILES[system]}")


# ---- oracle NEB and held-out set -------------------------------------------------------------


def neb(initial: Atoms, final: Atoms, calc_factory, n_images: int = 7, fmax: float = 0.05, steps: int = 300):
    """Climbing-image NEB; returns (barrier eV, images)."""
    from ase.mep import NEB
    from ase.optimize import FIRE

    images = [initial.copy() for _ in range(n_images + 1)] + [final.copy()]
    images[0], images[-1] = initial.copy(), final.copy()
    for im in images:
        im.calc = calc_factory()
    band = NEB(images, climb=True, allow_shared_calculator=False, method="improvedtangent")
    band.interpolate(method="idpp")
    FIRE(band, logfile=None).run(fmax=fmax, steps=steps)
    e = np.array([im.get_potential_energy() for im in images])
    return float(e.max() - e[0]), images


def label_with_oracle(structures, system):
    out = []
    for s in structures:
        a = Atoms(s.numbers, positions=s.positions, cell=s.cell, pbc=s.pbc)
        a.calc = oracle_calc(system)
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        out.append(a)
    return out


def held_out_path_set(images, system, copies: int = 4, rattle: float = 0.05, seed: int = 123):
    rng = np.random.default_rng(seed)
    frames = []
    for im in images:
        for _ in range(copies):
            a = Atoms(im.numbers, positions=im.positions + rng.normal(scale=rattle, size=im.positions.shape), cell=im.cell, pbc=im.pbc)
            frames.append(a)
    return label_with_oracle(frames, system)


# ---- the three strategies ----------------------------------------------------------------------


def train_committee(cfg, labelled, seed=0):
    from nnpes.active.ensemble import Ensemble

    c = cfg.committee
    ens = Ensemble.build(cfg.model, c.size, seed=seed, dataset=labelled, nu=c.nu)
    return ens.fit(labelled, c.fit_config(warm=False, seed=seed))


def unbiased_md_frames(start, system, n, temperature=300.0, steps=4000, timestep=0.5, seed=0):
    """n frames evenly spaced along oracle Langevin MD at ``temperature``."""
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    a = start.copy()
    a.calc = oracle_calc(system)
    MaxwellBoltzmannDistribution(a, temperature_K=temperature, rng=np.random.default_rng(seed))
    dyn = Langevin(a, timestep * units.fs, temperature_K=temperature, friction=0.02 / units.fs, fixcm=False,
                   rng=np.random.default_rng(seed))
    every = max(steps // n, 1)
    frames = []
    for _ in range(n):
        dyn.run(every)
        frames.append(Atoms(a.numbers, positions=a.positions.copy(), cell=a.cell, pbc=a.pbc))
    return frames


def model_barrier(ens, initial, final):
    from nnpes.active.ensemble import Ensemble  # noqa: F401

    barrier, _ = neb(initial, final, lambda: ens.calculator())
    return barrier


def forces_rmse(errors: dict) -> float:
    """eV/Å from ``Ensemble.errors`` (meV/Å); inf without force labels."""
    rmse = (errors.get("forces_meV_per_A") or {}).get("rmse")
    return np.inf if rmse is None else rmse / 1e3


def calls_to_target(history, target):
    for h in history:
        if forces_rmse(h.get("test") or {}) <= target:
            return h["oracle_calls"]
    return None


def learning_curve(cfg, labelled, test, target, fractions=(0.25, 0.5, 1.0)):
    """Oracle calls needed to reach ``target`` force RMSE when training on prefixes."""
    for f in fractions:
        n = max(int(round(f * len(labelled))), 4)
        ens = train_committee(cfg, labelled[:n])
        if forces_rmse(ens.errors(test)) <= target:
            return n
    return None


def run(system: str, workdir: Path, quick: bool, target: float, overrides=()) -> dict:
    import ase.io
    import yaml

    from nnpes.active.loop import load_config, run as run_loop

    workdir.mkdir(parents=True, exist_ok=True)
    cfg_dict = yaml.safe_load(CONFIGS[system].read_text())
    structures = workdir / "structures"
    if not (structures / FILES[system]).exists():
        write_structures(structures)
    cfg_dict["data"]["starts"] = str(structures / FILES[system])
    if quick:  # a smoke run of the whole pipeline, not the demonstration
        cfg_dict["committee"].update(size=2, max_epochs=20, warm_max_epochs=10)
        cfg_dict["explore"].update(steps=200, temperatures=[300.0])
        cfg_dict["stop"].update(max_iterations=2)
        cfg_dict["select"]["max_per_iteration"] = 5
        cfg_dict["data"]["initial_per_start"] = 6
    for item in overrides:  # --set section.key=value (value parsed as YAML)
        dotted, _, value = item.partition("=")
        section, _, key = dotted.partition(".")
        cfg_dict.setdefault(section, {})[key] = yaml.safe_load(value)
    make = cu_endpoints if system == "cu" else malonaldehyde_endpoints
    t0 = time.perf_counter()
    a0, b0 = make()
    initial, final = relax(a0, system), relax(b0, system)
    oracle_barrier, images = neb(initial, final, lambda: oracle_calc(system), n_images=3 if quick else 7)
    test = held_out_path_set(images, system, copies=1 if quick else 4)
    ase.io.write(workdir / "heldout_path.extxyz", test)
    cfg_dict["data"]["test"] = str(workdir / "heldout_path.extxyz")
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg_dict))
    cfg = load_config(cfg_dict)
    t_oracle = time.perf_counter() - t0

    # (a) active learning with enhanced sampling
    run_dir = workdir / "al_run"
    state = run_loop(cfg_dict, run_dir, resume=(run_dir / "state.json").exists())
    from nnpes.oracle import LabelStore

    store = LabelStore(run_dir / "labels.jsonl")
    labels_a = store.atoms("ok")
    n = len(labels_a)
    # The loop's last committee has not seen the last iteration's labels; for a fair comparison every
    # strategy's committee is trained the same way (cold start, same settings) on its n labels.
    ens_a = train_committee(cfg, labels_a)

    # (b) the same number of labels from unbiased 300 K oracle MD
    frames_b = unbiased_md_frames(initial, system, n, steps=400 if quick else 4000,
                                  timestep=float(cfg_dict["explore"].get("timestep", 0.5)))
    labels_b = label_with_oracle(frames_b, system)
    ens_b = train_committee(cfg, labels_b)

    # (c) random selection from the AL's own exploration pool
    pool = [a for p in sorted(run_dir.glob("iter_*/pool.extxyz")) for a in ase.io.read(p, ":")]
    pick = np.random.default_rng(0).choice(len(pool), size=min(n, len(pool)), replace=False)
    labels_c = label_with_oracle([pool[i] for i in pick], system)
    ens_c = train_committee(cfg, labels_c)

    result = {"system": system, "quick": quick, "oracle_neb_barrier_eV": oracle_barrier, "labels": n,
              "oracle_setup_seconds": t_oracle, "al_stop_reason": state.get("stop_reason"), "strategies": {}}
    for name, ens, labelled, history in (("a_active_learning_biased", ens_a, labels_a, state["history"]),
                                         ("b_unbiased_300K_md", ens_b, labels_b, None),
                                         ("c_random_from_al_pool", ens_c, labels_c, None)):
        err = ens.errors(test)
        try:
            barrier = model_barrier(ens, initial, final)
        except Exception as e:  # noqa: BLE001 - a model whose NEB fails is reported, not fatal
            barrier = f"NEB failed: {type(e).__name__}: {e}"
        calls = calls_to_target(history, target) if history else learning_curve(cfg, labelled, test, target)
        result["strategies"][name] = {
            "neb_barrier_eV": barrier, "forces_rmse_heldout_path": forces_rmse(err),
            "energy_mae_per_atom_heldout_path": err["energy_per_atom_meV"]["mae"] / 1e3,
            f"oracle_calls_to_forces_rmse_{target}": calls,
        }
    (workdir / "summary.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def committee_speed(k: int = 4, n_structures: int = 32, repeats: int = 15) -> dict:
    """Committee evaluation: one vmapped jitted call over K members vs K calls of the members'
    own jitted predict, on rMD17 aspirin (21 atoms), standard NequIP, float32. Median of repeats
    after warm-up, results pulled to numpy (which blocks until ready)."""
    from nnpes.active.ensemble import Ensemble
    from nnpes.data import read_structures

    frames = read_structures("/work/shared/data/rmd17/rmd17_aspirin_test_01.npz", index=f":{n_structures}",
                             energy_unit="kcal/mol")
    model = {"name": "nequip", "elements": ["H", "C", "O"], "cutoff": 5.0}
    ens = Ensemble.build(model, k, dataset=frames[:8])
    members = [ens.member(i) for i in range(k)]

    out = {}
    for label_, batch in (("1 structure", frames[:1]), (f"{n_structures} structures", frames)):
        t_vmap = repeat(lambda: ens.predict(batch), repeats).median
        t_loop = repeat(lambda: [m.predict(batch) for m in members], repeats).median
        out[label_] = {"vmapped_ms": 1e3 * t_vmap, "loop_ms": 1e3 * t_loop, "loop_over_vmapped": t_loop / t_vmap}
    return {"K": k, "model": "nequip default (4 layers, 32x l<=1, r_c 5)", "molecule": "aspirin (21 atoms)", **out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed", help="committee evaluation: vmapped vs loop over members")
    sp.add_argument("--k", type=int, default=4)
    s = sub.add_parser("structures")
    s.add_argument("--out", default="runs/active_structures")
    r = sub.add_parser("run")
    r.add_argument("--system", choices=sorted(CONFIGS), default="cu")
    r.add_argument("--workdir", default=None)
    r.add_argument("--quick", action="store_true", help="tiny smoke run of the pipeline (not the figures)")
    r.add_argument("--target", type=float, default=0.1, help="target held-out force RMSE, eV/Å")
    r.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a config value, e.g. --set explore.steps=1000")
    args = p.parse_args(argv)
    if args.cmd == "speed":
        print(json.dumps(committee_speed(args.k), indent=1))
        return 0
    if args.cmd == "structures":
        write_structures(Path(args.out))
        return 0
    workdir = Path(args.workdir or f"runs/bench_al_{args.system}{'_quick' if args.quick else ''}")
    print(json.dumps(run(args.system, workdir, args.quick, args.target, args.set), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

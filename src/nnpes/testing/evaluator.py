"""One jitted energy/forces/stress call at one padded shape, shared by every check of the battery,
and the battery's potential: built in float64 and perturbed when its fresh output is ~constant."""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from ase import Atoms

from nnpes.graph import atoms_to_graph, batch, pad_graph, to_device

# One padded shape for every call: n_node, n_edge, n_graph (larger inputs are split into chunks).
PAD = (256, 4096, 40)


class Evaluator:
    """Energy (eV), forces (N, 3) eV/Å, per-atom ``energies`` (N,) eV and ``stress`` (3, 3) eV/Å³ of
    a list of structures, through one jitted call per chunk at the fixed shape ``pad``.

    ``traces`` counts compilations: it stays 1 however many structures go through."""

    def __init__(self, pot, pad: tuple[int, int, int] = PAD, name: str | None = None):
        self.pot = pot
        self.pad = tuple(pad)
        self.name = name or pot.config.name
        self.traces = 0

        def efs(variables, graph):
            self.traces += 1
            return pot.energy_forces_stress(variables, graph, True)

        self.fn = jax.jit(efs)

    def __call__(self, atoms_list: Sequence[Atoms]) -> list[dict]:
        graphs = [atoms_to_graph(a, self.pot.cutoff) for a in atoms_list]
        out, chunk = [], []
        for g in graphs + [None]:
            if g is not None:
                nodes = sum(int(c.n_node[0]) for c in chunk) + int(g.n_node[0])
                edges = sum(int(c.n_edge[0]) for c in chunk) + int(g.n_edge[0])
                if nodes < self.pad[0] and edges <= self.pad[1] and len(chunk) + 1 < self.pad[2]:
                    chunk.append(g)
                    continue
            assert chunk, f"one structure exceeds the battery's padded shape {self.pad}"
            out += self._run(chunk)
            chunk = [g] if g is not None else []
        return out

    def _run(self, chunk):
        padded = to_device(pad_graph(batch(chunk), *self.pad), self.pot.dtype)
        res = jax.tree_util.tree_map(np.asarray, self.fn(self.pot.params, padded))
        results, node0 = [], 0
        for g, graph in enumerate(chunk):
            sl = slice(node0, node0 + int(graph.n_node[0]))
            results.append({
                "energy": float(res["energy"][g]), "forces": res["forces"][sl], "energies": res["energies"][sl],
                "stress": res["stress"][g],
            })
            node0 = sl.stop
        return results


def as_evaluator(pot_or_ev) -> Evaluator:
    """An ``Evaluator`` as is; a ``Potential`` wrapped in a new one (one compilation per call)."""
    return pot_or_ev if isinstance(pot_or_ev, Evaluator) else Evaluator(pot_or_ev)


def battery_config(model, hparams: dict | None = None, elements=None, cutoff: float | None = None) -> dict:
    """A float64 model config from a registered name or a config dict, with ``hparams`` on top."""
    from nnpes.testing.structures import CUTOFF, ELEMENTS

    config = {"name": model} if isinstance(model, str) else dict(model)
    config.setdefault("elements", list(elements or ELEMENTS))
    config.setdefault("cutoff", CUTOFF if cutoff is None else cutoff)
    return {**config, **(hparams or {}), "dtype": "float64"}


def battery_evaluator(model, hparams: dict | None = None, seed: int = 1, dataset=None,
                      probe: Atoms | None = None) -> Evaluator:
    """Build ``model`` (name or config) in float64 and wrap it in an ``Evaluator``.

    A model whose fresh forces are ~0 on ``probe`` would pass every check trivially, so its
    parameters are perturbed (0.3 · N(0, 1)); AssertionError if the forces stay ~0."""
    from nnpes.potential import build_potential
    from nnpes.testing.structures import make_structure

    pot = build_potential(battery_config(model, hparams), seed=seed, dataset=dataset)
    probe = make_structure("molecule", 7) if probe is None else probe
    ev = Evaluator(pot)
    if np.abs(ev([probe])[0]["forces"]).max() < 1e-4:
        leaves, tree = jax.tree_util.tree_flatten(pot.params["params"])
        keys_ = jax.random.split(jax.random.PRNGKey(0), len(leaves))
        leaves = [x + 0.3 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys_, leaves)]
        ev = Evaluator(pot.replace({**pot.params, "params": jax.tree_util.tree_unflatten(tree, leaves)}))
    assert np.abs(ev([probe])[0]["forces"]).max() > 1e-4, \
        f"{ev.name}: forces are ~0 even after perturbing parameters"
    return ev

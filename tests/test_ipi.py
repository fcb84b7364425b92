"""``nnpes ipi-client``: a real i-PI path-integral run (4 beads) whose forces come from nnpes, and the
client's errors. i-PI runs as a subprocess; the client runs the CLI in-process, in a thread (no
second JAX start-up; a hung client ends when i-PI is killed and its socket closes)."""

import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.io import write

from nnpes.cli.main import main
from test_md import make_potential  # registers the tiny test model "_md_tiny"

pytest.importorskip("ipi")

STEPS = 10
BEADS = 4

IPI_INPUT = """<simulation verbosity='low'>
  <output prefix='sim'>
    <properties stride='1' filename='out'> [ step, bead_potentials{{electronvolt}}, virial_md{{ev/ang3}} ] </properties>
    <trajectory filename='pos' stride='1' format='ase'> positions </trajectory>
    <trajectory filename='for' stride='1' format='ase'> forces </trajectory>
  </output>
  <total_steps> {steps} </total_steps>
  <prng><seed> 7 </seed></prng>
  <ffsocket name='nnpes' mode='unix'><address> {socket} </address></ffsocket>
  <system>
    <initialize nbeads='{beads}'>
      <file mode='ase'> start.extxyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces><force forcefield='nnpes'/></forces>
    <motion mode='dynamics'>
      <dynamics mode='nvt'>
        <timestep units='femtosecond'> 1.0 </timestep>
        <thermostat mode='pile_l'><tau units='femtosecond'> 100 </tau></thermostat>
      </dynamics>
    </motion>
    <ensemble><temperature units='kelvin'> 300 </temperature></ensemble>
  </system>
</simulation>
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny test model saved as a training run (``RUN/model``), and its Potential."""
    pot = make_potential("float64")
    run = tmp_path_factory.mktemp("ipi") / "run"
    pot.save(run / "model")
    return run, pot


def copper(rattle=0.1):
    """8 Cu atoms in a periodic 7.22 x 3.61 x 3.61 Å box, rattled so forces are not zero."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(rattle, seed=1)
    return atoms


def socket_name() -> str:
    """A unix socket name of this test alone (the socket is /tmp/ipi_<name>)."""
    return f"nnpes-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def start_client(argv: list[str]) -> tuple[threading.Thread, dict]:
    """``nnpes`` with ``argv`` in a daemon thread; its exit code lands in the returned dict."""
    result = {}
    thread = threading.Thread(target=lambda: result.update(rc=main(argv)), daemon=True)
    thread.start()
    return thread, result


def ipi_command(xml: Path) -> list[str]:
    script = shutil.which("i-pi", path=str(Path(sys.executable).parent)) or shutil.which("i-pi")
    if script is None:
        pytest.skip("the i-pi script is not installed")
    return [sys.executable, script, str(xml)]


def last_frame(path: Path, quantity: str) -> np.ndarray:
    """``positions`` (Å) or ``forces`` (eV/Å) of the last frame of an i-PI trajectory written
    with format="ase" (extxyz, in ase units)."""
    from ase.io import read

    frame = read(path, index=-1)
    return frame.get_forces() if quantity == "forces" else frame.positions


def test_pimd_with_4_beads_gets_nnpes_energies_forces_and_virial(saved, tmp_path, capsys):
    run, pot = saved
    atoms = copper()
    write(tmp_path / "start.extxyz", atoms)
    name = socket_name()
    (tmp_path / "input.xml").write_text(IPI_INPUT.format(steps=STEPS, beads=BEADS, socket=name))
    ipi = subprocess.Popen(ipi_command(tmp_path / "input.xml"), cwd=tmp_path, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        # The training run directory, as for nnpes md; the same extxyz i-PI starts from.
        client, result = start_client(["ipi-client", str(run), "--structure", str(tmp_path / "start.extxyz"),
                                       "--unix", name, "--connect-timeout", "60"])
        ipi_log, _ = ipi.communicate(timeout=120)
        assert ipi.returncode == 0, ipi_log[-3000:]
        client.join(timeout=30)
    finally:
        ipi.kill()
        ipi.wait()
        Path(f"/tmp/ipi_{name}").unlink(missing_ok=True)
    # The client left when i-PI ended the run, with success, having served every bead of every step.
    assert not client.is_alive() and result.get("rc") == 0, capsys.readouterr().err[-3000:]
    served = int(capsys.readouterr().out.split("i-PI ended the run: ")[1].split()[0])
    assert served >= BEADS * STEPS

    props = np.loadtxt(tmp_path / "sim.out", ndmin=2)
    assert props[-1, 0] == STEPS  # i-PI ran all its steps
    bead_energy, virial = props[-1, 1:1 + BEADS], props[-1, 1 + BEADS:]
    stress_sum = np.zeros((3, 3))
    for b in range(BEADS):
        # The last frame i-PI wrote for this bead, recomputed here: the client gave i-PI nnpes'
        # numbers for these positions (units converted both ways, atom order kept).
        (pos_file,), (for_file,) = tmp_path.glob(f"sim.pos_{b}.*"), tmp_path.glob(f"sim.for_{b}.*")
        q, f = last_frame(pos_file, "positions"), last_frame(for_file, "forces")
        bead = atoms.copy()
        bead.positions = q
        ref = pot.predict(bead, compute_stress=True)
        np.testing.assert_allclose(bead_energy[b], ref["energy"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(f, ref["forces"], rtol=1e-5, atol=1e-6)
        stress_sum += ref["stress"]
    assert np.abs(f).max() > 0.05  # forces large enough that a wrong one would show
    # i-PI's virial_md: the beads' virials (−V·stress each) summed, over V; [xx yy zz xy xz yz]
    expected = -stress_sum[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]
    np.testing.assert_allclose(virial, expected, rtol=1e-5, atol=1e-7)

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
from ase import Atoms
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
    served = int(capsys.readouterr().out.split("i-PI closed the connection after ")[1].split()[0])
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


class ClientThread:
    """Lets ase's ``SocketServer`` see a client thread as its client process: its wait for a
    connection then ends when the client has died (instead of blocking for ever)."""

    def __init__(self, thread: threading.Thread):
        self.thread = thread

    def poll(self):
        return None if self.thread.is_alive() else 1

    def wait(self):
        self.thread.join(timeout=30)
        return 0


def serve_frames(name: str, client: threading.Thread, frames: list) -> list[dict]:
    """Play i-PI's part with ase's ``SocketServer``: send each frame's positions and cell to the
    client on unix socket ``name``, return its answers (energy eV, forces eV/Å, virial eV)."""
    from ase.calculators.socketio import SocketServer

    server = SocketServer(unixsocket=name, timeout=30)
    server.proc = ClientThread(client)
    try:
        return [server.calculate(frame) for frame in frames]
    finally:
        server.close()  # the client reads this as the end of the run


def cluster() -> Atoms:
    """Cu4, a distorted tetrahedron about 2.5 Å across, in no cell (not periodic)."""
    d = 2.55 / np.sqrt(2)
    return Atoms("Cu4", positions=[[0, 0, 0], [d, d, 0.1], [d, 0, d], [0.1, d, d]])


def test_molecule_ignores_the_cell_ipi_sends(saved, tmp_path, capsys):
    run, pot = saved
    write(tmp_path / "cu4.xyz", cluster())  # plain xyz: pbc False, so the client is not periodic
    name = socket_name()
    client, result = start_client(["ipi-client", str(run / "model"), "--structure", str(tmp_path / "cu4.xyz"),
                                   "--unix", name, "--connect-timeout", "30"])
    # i-PI always sends a cell; one smaller than the molecule would put images within the cutoff.
    frames = [cluster() for _ in range(2)]
    frames[1].positions[0] += [0.1, -0.05, 0.02]
    for frame in frames:
        frame.cell = [2.0, 2.0, 2.0]
    answers = serve_frames(name, client, frames)
    client.join(timeout=30)
    assert not client.is_alive() and result.get("rc") == 0, capsys.readouterr().err[-3000:]
    assert "i-PI closed the connection after 2 structures (4 atoms each)" in capsys.readouterr().out
    for frame, answer in zip(frames, answers):
        frame.pbc = False
        ref = pot.predict(frame)
        np.testing.assert_allclose(answer["energy"], ref["energy"], rtol=0, atol=1e-8)
        np.testing.assert_allclose(answer["forces"], ref["forces"], rtol=1e-8, atol=1e-10)
        assert np.all(answer["virial"] == 0)  # no stress without a periodic cell
    assert answers[0]["energy"] != answers[1]["energy"]
    periodic = frames[0].copy()
    periodic.pbc = True
    assert abs(pot.predict(periodic)["energy"] - answers[0]["energy"]) > 1e-3  # the cell would have mattered


def test_wrong_atom_count_is_one_line_error(saved, tmp_path, capsys):
    run, _ = saved
    write(tmp_path / "start.extxyz", copper())  # 8 atoms, while "i-PI" sends the 4 of the cluster
    name = socket_name()
    client, result = start_client(["ipi-client", str(run), "--structure", str(tmp_path / "start.extxyz"),
                                   "--unix", name, "--connect-timeout", "30"])
    with pytest.raises(OSError):  # the client hangs up instead of answering
        serve_frames(name, client, [cluster()])
    client.join(timeout=30)
    assert result.get("rc") == 2
    err = capsys.readouterr().err
    assert "i-PI sent 4 atoms but" in err and "start.extxyz (frame 0) has 8" in err


def test_errors_before_any_force(saved, tmp_path, capsys):
    import socket
    import time

    run, _ = saved
    write(tmp_path / "start.extxyz", copper())
    base = ["ipi-client", str(run), "--structure", str(tmp_path / "start.extxyz")]
    # No server: gives up after the timeout, naming where it looked.
    t0 = time.monotonic()
    assert main(base + ["--unix", socket_name(), "--connect-timeout", "1"]) == 2
    assert 0.9 < time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert "error: no i-PI server at unix socket /tmp/ipi_nnpes-test-" in err and "after 1 s" in err
    assert len(err.strip().splitlines()) == 1
    # Nothing listens on this port either (one just freed).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(base + ["--address", f"127.0.0.1:{port}", "--connect-timeout", "0.5"]) == 2
    assert f"no i-PI server at 127.0.0.1:{port} after 0.5 s (Connection refused)" in capsys.readouterr().err
    assert main(base + ["--address", "localhost:http", "--connect-timeout", "0.5"]) == 2
    assert "expected HOST:PORT with an integer port" in capsys.readouterr().err
    # An element the model does not know: said at once, without waiting for a server.
    silver = copper()
    silver.symbols[3] = "Ag"
    write(tmp_path / "ag.extxyz", silver)
    t0 = time.monotonic()
    assert main(["ipi-client", str(run), "--structure", str(tmp_path / "ag.extxyz"), "--unix", socket_name()]) == 2
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert "ag.extxyz (frame 0)" in err and "Ag" in err

"""Serve a potential's energies, forces and virial to an i-PI server (path-integral MD, replica
exchange, ...): the client side of i-PI's socket protocol, through ase's ``SocketClient`` driving
the nnpes ase calculator.

i-PI sends only positions and a cell; the species, their order and the periodicity come from a
template structure (the file i-PI starts from, read with ase). Periodicity is the template's
``pbc`` (an extxyz with a ``Lattice`` is periodic, a plain xyz is not), unless overridden: i-PI
always sends a cell, also for a molecule in vacuum, and nnpes ignores it where ``pbc`` is False.
The virial (−V·stress, eV) goes back only for a cell periodic in all three directions; otherwise
zero, which suits anything but constant-pressure runs.

Units: i-PI speaks atomic units on the socket; ase's protocol converts to Å and eV.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass

import numpy as np
from ase import Atoms

from nnpes.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_PORT = 31415  # i-PI's default for inet sockets


@dataclass(frozen=True)
class Address:
    """Where the i-PI server listens: ``unix`` (the name in i-PI's ``<address>``; ase and i-PI put
    the socket at ``/tmp/ipi_<name>``) or ``host`` and ``port`` (TCP)."""

    host: str = "localhost"
    port: int = DEFAULT_PORT
    unix: str | None = None

    def __str__(self) -> str:
        return f"unix socket /tmp/ipi_{self.unix}" if self.unix else f"{self.host}:{self.port}"


def parse_address(text: str) -> Address:
    """``HOST:PORT``, ``HOST`` (port 31415) or ``:PORT`` (localhost) → an inet ``Address``."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    try:
        number = int(port)
    except ValueError:
        raise UserError(f"--address {text!r}: expected HOST:PORT with an integer port") from None
    if not 0 < number < 65536:
        raise UserError(f"--address {text!r}: port {number} is outside 1-65535")
    return Address(host=host or "localhost", port=number)


def template_atoms(atoms: Atoms, pbc: bool | None = None) -> Atoms:
    """A copy of ``atoms`` for the client to fill with i-PI's positions: no calculator, no
    constraints (i-PI applies its own), ``pbc`` set on all three axes when given."""
    atoms = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    if pbc is not None:
        atoms.pbc = pbc
    return atoms


def connect(address: Address, timeout: float = 60.0, retry_every: float = 0.5):
    """An ase ``SocketClient`` connected to ``address``, retrying for ``timeout`` s (i-PI may still be
    starting, or the clients are started first on other machines). ``UserError`` after that."""
    from ase.calculators.socketio import SocketClient

    deadline = time.monotonic() + timeout
    while True:
        try:
            return _connect_once(SocketClient, address, max(deadline - time.monotonic(), 0.1))
        except socket.gaierror as e:
            raise UserError(f"i-PI server {address}: unknown host ({e.strerror})") from None
        except OSError as e:  # refused, no socket file yet, timed out
            left = deadline - time.monotonic()
            if left <= 0:
                raise UserError(f"no i-PI server at {address} after {timeout:g} s ({_why(e)}): start i-PI "
                                "first, and give the address of its <ffsocket>") from None
            time.sleep(min(retry_every, left))


def _connect_once(client_cls, address: Address, timeout: float):
    # SocketClient connects in its constructor with no timeout of its own: an unreachable host
    # (a firewall dropping packets) would block for minutes. The default timeout bounds that
    # connect; SocketClient then puts the socket back to blocking (timeout=None), since i-PI may
    # rightly take long between requests (waiting for other clients).
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        if address.unix:
            return client_cls(unixsocket=address.unix, timeout=None)
        return client_cls(host=address.host, port=address.port, timeout=None)
    finally:
        socket.setdefaulttimeout(previous)


def _why(err: OSError) -> str:
    if isinstance(err, FileNotFoundError):
        return "no such socket file"
    return err.strerror or type(err).__name__


def check_atom_count(client, n_atoms: int, source: str) -> None:
    """Make ``client`` fail with a ``UserError`` when i-PI sends positions of other than
    ``n_atoms`` atoms (a template that is not i-PI's system), instead of a numpy broadcast error."""
    receive = client.protocol.recvposdata

    def checked():
        cell, icell, positions = receive()
        if len(positions) != n_atoms:
            raise UserError(f"i-PI sent {len(positions)} atoms but {source} has {n_atoms}: give the "
                            "structure i-PI starts from (same atoms, same order)")
        return cell, icell, positions

    client.protocol.recvposdata = checked


def serve(potential, atoms: Atoms, address: Address, *, pbc: bool | None = None, connect_timeout: float = 60.0,
          source: str = "structure") -> int:
    """Answer i-PI's force requests with ``potential`` until i-PI ends the run (it says EXIT or
    closes the socket). ``atoms``: the template (species, order and, unless ``pbc`` is given, the
    periodicity; see the module docstring); ``source`` names it in errors. Returns the number of
    structures evaluated (every bead of every step is one)."""
    from nnpes.md.functions import check_elements

    check_elements(potential, atoms, source)
    atoms = template_atoms(atoms, pbc)
    atoms.calc = potential.calculator()
    use_stress = bool(np.all(atoms.pbc))  # our calculator has stress only for fully periodic cells
    client = connect(address, connect_timeout)
    log.info(f"connected to i-PI at {address}: {len(atoms)} atoms, pbc {atoms.pbc.tolist()}, "
             f"virial {'sent' if use_stress else 'zero (not periodic in 3D)'}")
    check_atom_count(client, len(atoms), source)
    n = 0
    try:
        for _ in client.irun(atoms, use_stress=use_stress):
            n += 1
    finally:
        client.close()
    return n

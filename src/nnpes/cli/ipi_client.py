"""``nnpes ipi-client MODEL --structure FILE (--unix NAME | --address HOST:PORT)``: serve a saved
potential's forces to an i-PI server (path-integral MD, replica exchange, ...)."""

from __future__ import annotations

import argparse

PBC = {"file": None, "yes": True, "no": False}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ipi-client", help="serve a saved potential's forces to an i-PI server",
        description="Connect to a running i-PI (its <ffsocket>) and answer its force requests with the model, "
        "one structure (bead, replica) at a time, until i-PI ends the run. Start several clients, on one "
        "machine or many, to evaluate beads in parallel. Energies eV, forces eV/Å, virial eV (units on the "
        "socket are i-PI's atomic units, converted by ase).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("model", help="a saved model directory (Potential.save) or a training run directory (uses RUN/model)")
    p.add_argument("--structure", required=True,
                   help="the structure i-PI starts from, any format ase reads: gives the elements and their order "
                        "(i-PI sends only positions and cell) and the periodicity")
    p.add_argument("--index", type=int, default=0, help="frame of --structure to take the elements from")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--unix", metavar="NAME",
                       help="i-PI's unix socket: the <address> of an <ffsocket mode='unix'> (the socket is /tmp/ipi_NAME)")
    where.add_argument("--address", metavar="HOST:PORT",
                       help="i-PI's inet socket: the host i-PI runs on and the <port> of an <ffsocket mode='inet'> "
                            "(HOST alone: port 31415, i-PI's default)")
    p.add_argument("--pbc", choices=sorted(PBC), default="file",
                   help="periodic cell: 'file' takes the structure's pbc (extxyz with a Lattice: periodic; plain xyz: "
                        "not), 'yes'/'no' override it. Not periodic: i-PI's cell is ignored and the virial is zero")
    p.add_argument("--connect-timeout", type=float, default=60.0, metavar="S",
                   help="keep trying to reach i-PI this long before giving up")
    p.set_defaults(func=run)


def run(args) -> int:
    from nnpes.cli.evaluate import model_dir
    from nnpes.cli.md import read_structure
    from nnpes.md.ipi import Address, parse_address, serve
    from nnpes.potential import load_potential

    address = Address(unix=args.unix) if args.unix else parse_address(args.address)
    atoms = read_structure(args.structure, args.index)
    pot = load_potential(model_dir(args.model))
    n = serve(pot, atoms, address, pbc=PBC[args.pbc], connect_timeout=args.connect_timeout,
              source=f"{args.structure} (frame {args.index})")
    # ase reads i-PI's EXIT and a closed socket alike: a crashed i-PI looks like a finished one here.
    print(f"i-PI closed the connection after {n} structures ({len(atoms)} atoms each)")
    return 0

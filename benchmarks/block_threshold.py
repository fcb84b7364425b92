"""Where NequIP's blocked per-edge path starts to pay (``model.block_above``): the plain path
(never blocked) against the blocked one (``block_above: 0``), both compiled in one process and
called alternately, ``--rounds`` rounds, median wall time, and the compiled call's temporary
memory (XLA's ``memory_analysis``); standard size (or ``--hparam``), float32. Workloads are
``inference.py``'s: E+F on a system, and one Adam step on an E+F loss (``train`` = 8 aspirins,
``train-waterN``).

    python benchmarks/block_threshold.py aspirin train water24 train-water24 water81 train-water81
    taskset -c 0 python benchmarks/block_threshold.py water192 train-water192   # one core
    python benchmarks/block_threshold.py water192 train-water192 --hparam l_max=2
"""

from __future__ import annotations

import argparse
import functools

import inference  # this directory is on sys.path
from timing import alternated


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workloads", nargs="+")
    ap.add_argument("--rounds", type=int, default=5)
    inference.add_hparam_option(ap)
    args = ap.parse_args()
    hparams = inference.hparams_of(args)
    import jax

    jax.config.update("jax_enable_x64", False)
    print("| workload | atoms | edges | plain ms | blocked ms | blocked / plain | temp MB plain | blocked |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for name in args.workloads:
        calls, temp_mb = {}, {}
        for variant, above in (("plain", 10**9), ("blocked", 0)):
            fn, fn_args, n, e = inference.workload(name, 5.0, "nequip", block_above=above, **hparams)
            compiled = jax.jit(fn).lower(*fn_args).compile()
            temp_mb[variant] = compiled.memory_analysis().temp_size_in_bytes / 1e6
            calls[variant] = functools.partial(compiled, *fn_args)
        times = alternated(calls, args.rounds)
        plain, blocked = (1e3 * times[k].median for k in ("plain", "blocked"))
        print(f"| {name} | {n} | {e} | {plain:.1f} | {blocked:.1f} | {blocked / plain:.2f} | "
              f"{temp_mb['plain']:.0f} | {temp_mb['blocked']:.0f} |", flush=True)


if __name__ == "__main__":
    main()

"""Where a workload's time goes on CPU: a ``jax.profiler`` trace of the compiled call, the kernels'
self time grouped by differentiation pass and model module, and how busy XLA's threads were.

    python benchmarks/profile.py --model mace --workload train            # 8 aspirins, one Adam step
    python benchmarks/profile.py --model mace --workload aspirin --by module
    taskset -c 0 python benchmarks/profile.py --model nequip --workload water540 --calls 3
    python benchmarks/profile.py --model nequip --hparam l_max=2 --by module

Workloads are those of ``benchmarks/inference.py`` (``train``, or a system name for energy +
forces). Output: the top groups by self time (ms per call), then the wall time split into "several
threads busy", "one thread busy" and "no kernel running" (loop control, dispatch, allocation),
with the groups that ran alone. The trace is parsed with ``jax._src.profiler.ProfileData``, which
is private JAX API: if a JAX release moves it, this script is what needs mending.
"""

from __future__ import annotations

import argparse
import collections
import glob
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import inference  # noqa: E402

SKIP = ("ThunkExecutor::Execute", "Threadpool", "end: ", "SlinkyThreadPool")


def group_of(op_name: str, by: str) -> str:
    """'jit(step)/transpose(jvp(EnergyModel))/inner/layer_0/linear_a/…' → a group key: the pass
    and the module (``by="pass-module"``), the module alone, or the whole name."""
    parts = op_name.split("/")
    if by == "op" or "inner" not in parts:
        return op_name or "(no metadata)"
    i = parts.index("inner")
    module = re.sub(r"layer_\d+\._", "", "/".join(parts[i + 1 : i + 3]))
    return module if by == "module" else f"{parts[1] if len(parts) > 1 else ''} :: {module}"


def kernel_events(trace_dir: str):
    """Per XLA thread: sorted (start, end, name) of the kernels (innermost events) in ns."""
    from jax._src.profiler import ProfileData

    path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
    threads = []
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            if line.name.startswith("tf_XLAEigen"):
                evs = [(e.start_ns, e.start_ns + e.duration_ns, e.name) for e in line.events]
                threads.append(sorted(ev for ev in evs if not ev[2].startswith(SKIP)))
    return threads


def self_times(threads) -> collections.Counter:
    """Kernel name → self time (ns): an event's duration less that of the events nested in it."""
    out = collections.Counter()
    for evs in threads:
        stack = []
        for s, e, n in evs:
            while stack and stack[-1][1] <= s:
                stack.pop()
            if stack:
                out[stack[-1][2]] -= e - s
            out[n] += e - s
            stack.append((s, e, n))
    return out


def occupancy(threads, groups: dict):
    """(several, one, none) ns of wall time by how many threads ran a kernel, and the groups that
    ran alone (ns), each to its innermost open event: a thread is busy while any of its events is open."""
    # Ends sort before starts at the same instant, so a thread's open events nest as a stack.
    points = sorted((t, k, i, n) for i, evs in enumerate(threads) for s, e, n in evs for k, t in ((1, s), (0, e)))
    open_events = collections.defaultdict(list)  # thread → names of its open events, innermost last
    spans, alone = [0, 0, 0], collections.Counter()
    last = points[0][0] if points else 0
    for t, starts, i, name in points:
        busy = [j for j, stack in open_events.items() if stack]
        if len(busy) >= 2:
            spans[0] += t - last
        elif len(busy) == 1:
            spans[1] += t - last
            alone[groups.get(open_events[busy[0]][-1], "(no metadata)")] += t - last
        else:
            spans[2] += t - last
        if starts:
            open_events[i].append(name)
        else:
            open_events[i].remove(name)
        last = t
    return spans, alone


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mace")
    ap.add_argument("--workload", default="train", help="train, train-water540, or a system of inference.py (aspirin, water540, …)")
    ap.add_argument("--cutoff", type=float, default=5.0)
    ap.add_argument("--calls", type=int, default=3, help="calls traced (after two untraced)")
    ap.add_argument("--by", choices=["pass-module", "module", "op"], default="pass-module")
    ap.add_argument("--top", type=int, default=25)
    inference.add_hparam_option(ap)
    args = ap.parse_args()

    import jax

    jax.config.update("jax_enable_x64", False)
    fn, call_args, n, e = inference.workload(args.workload, args.cutoff, args.model, **inference.hparams_of(args))
    compiled = jax.jit(fn).lower(*call_args).compile()
    for _ in range(2):
        jax.block_until_ready(compiled(*call_args))
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        for _ in range(args.calls):
            jax.block_until_ready(compiled(*call_args))
        jax.profiler.stop_trace()
        threads = kernel_events(trace_dir)

    op_names = dict(re.findall(r'^\s*(?:ROOT )?%([\w.\-]+) = .*?op_name="([^"]*)"', compiled.as_text(), re.M))
    groups = {name: group_of(op_names.get(name, ""), args.by) for evs in threads for _, _, name in evs}
    per_group = collections.Counter()
    for name, ns in self_times(threads).items():
        per_group[groups[name]] += ns
    ms = lambda ns: ns / 1e6 / args.calls  # noqa: E731
    print(f"{args.model} {args.workload}: {n} atoms, {e} edges; {len(threads)} XLA threads; ms per call")
    print(f"kernels' self time: {ms(sum(per_group.values())):.1f} ms")
    for key, ns in per_group.most_common(args.top):
        print(f"{ms(ns):9.2f}  {key}")
    (several, one, none), alone = occupancy(threads, groups)
    print(f"wall: several threads busy {ms(several):.1f} ms, one {ms(one):.1f} ms, no kernel {ms(none):.1f} ms")
    print("ran alone (one thread busy):")
    for key, ns in alone.most_common(min(args.top, 10)):
        print(f"{ms(ns):9.2f}  {key}")


if __name__ == "__main__":
    main()

"""Size of the source tree: lines, modules, the longest functions and the largest modules.

    python benchmarks/code_metrics.py [SRC_DIR]     (default: src/nnpes)
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def main(root: str = "src/nnpes") -> None:
    files = sorted(Path(root).rglob("*.py"))
    lines, funcs, mods = 0, [], []
    for f in files:
        text = f.read_text()
        n = len(text.splitlines())
        lines += n
        mods.append((n, str(f)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                funcs.append((node.end_lineno - node.lineno + 1, f"{f}:{node.lineno} {node.name}"))
    funcs.sort(reverse=True)
    mods.sort(reverse=True)
    print(f"{lines} lines in {len(files)} modules")
    print("longest functions:", *(f"  {n:4d}  {w}" for n, w in funcs[:8]), sep="\n")
    print("largest modules:", *(f"  {n:4d}  {w}" for n, w in mods[:6]), sep="\n")


if __name__ == "__main__":
    main(*sys.argv[1:])

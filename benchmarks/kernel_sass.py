"""Static profile of the GNA kernel's Hopper machine code, no GPU needed: what one KV tile costs to issue.

Compiles the kernel for sm_90 as a launch specializes it (``compile_sm90.py``), disassembles the cubin
with the nvdisasm that ships with triton, finds the neighborhood loop (the first loop that issues wgmma)
and counts the instructions one trip issues per thread: on a full tile (every mask branch skipped) and
what each masked axis adds; likewise one block of the extra (text) keys' loop. Registers and stack (spill)
bytes come from cuobjdump.

Counts are not times. They say what the SM issues beside the tensor-core work (the softmax's exp2, max
and sum, the rescale, index math, masks), which competes with wgmma for issue slots on Hopper: a 128 x 128
tile at head_dim 128 keeps the tensor cores busy for about 2048 cycles per SM, and 8 warps x N
instructions take N * 8 / 4 issue cycles.

    python benchmarks/kernel_sass.py                     # the bars' cases, a markdown table
    python benchmarks/kernel_sass.py --json profile.json
    python benchmarks/kernel_sass.py --profile '{"dtype": "bf16", "head_dim": 128, ...}'   # one compile, JSON

The GPU image runs triton 3.6; to profile that code generator here:
    pip install --no-deps --target /tmp/triton36 triton==3.6.0
    PYTHONPATH=/tmp/triton36 python benchmarks/kernel_sass.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # what a launch uses (triton >= 3.9 warns when unset)

_INSTRUCTION = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);", re.M)
_LABEL = re.compile(r"^(\.L_x_\d+):", re.M)
_TARGET = re.compile(r"`\((\.L_x_\d+)\)")


@dataclass
class LoopProfile:
    """Instructions per thread of one trip through the neighborhood loop."""

    full_tile: int  # every mask branch skipped
    skipped_regions: list[int]  # sizes of the regions a full tile branches over (the masked axes), in order
    wgmma: int  # HGMMA instructions per trip
    exp2: int  # MUFU.EX2 per trip (the softmax's exponentials, 1 per score this thread holds + the rescale)
    other_mufu: int  # MUFU other than EX2 on the full path: reciprocals of integer divisions, say
    full_path_ops: dict[str, int]  # opcode (without modifiers) -> count on the full path


def parse(sass: str) -> tuple[list[tuple[str, str | None]], dict[str, int]]:
    """(opcode, branch target) per instruction, and each label's instruction index."""
    instructions, labels = [], {}
    for line in sass.splitlines():
        label = _LABEL.match(line)
        if label:
            labels[label.group(1)] = len(instructions)
            continue
        match = _INSTRUCTION.match(line)
        if match:
            target = _TARGET.search(match.group(2))
            instructions.append((match.group(1), target.group(1) if target else None))
    return instructions, labels


def wgmma_loops(sass: str) -> list[LoopProfile]:
    """Profiles of the loops (backward branches) whose body issues wgmma, in program order: the
    neighborhood loop, then the extra (text) keys' loop when the kernel has one. Forward branches inside a
    loop that skip a region are the mask branches a full tile takes."""
    instructions, labels = parse(sass)
    loops, spans = [], []
    for end, (opcode, target) in enumerate(instructions):
        begin = labels.get(target, end + 1) if opcode == "BRA" else end + 1
        if begin > end:
            continue
        body = range(begin, end + 1)
        if not any(instructions[i][0].startswith("HGMMA") for i in body):
            continue
        if any(begin <= other.stop and other.start <= end for other in spans):
            continue  # overlaps a loop found earlier: a barrier wait's retry jumping back into it
        spans.append(range(begin, end))
        skipped: set[int] = set()
        skipped_regions = []
        for i in body:
            op, to = instructions[i]
            if op == "BRA" and to is not None and i < labels[to] <= end:
                region = set(range(i + 1, labels[to])) - skipped
                skipped_regions.append(len(region))
                skipped |= region
        full = [instructions[i][0] for i in body if i not in skipped]
        ops = Counter(op.split(".")[0] for op in full)
        loops.append(LoopProfile(
            full_tile=len(full), skipped_regions=skipped_regions, wgmma=ops["HGMMA"],
            exp2=sum(op.startswith("MUFU.EX2") for op in full),
            other_mufu=sum(op.startswith("MUFU") and not op.startswith("MUFU.EX2") for op in full),
            full_path_ops=dict(ops.most_common()),
        ))
    if not loops:
        raise ValueError("no loop issuing wgmma found in the SASS")
    return loops


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def profile(**compile_args) -> dict:
    """Compile with ``compile_sm90.compile_for_sm90(**compile_args)`` and profile the result."""
    from compile_sm90 import compile_for_sm90

    kernel = compile_for_sm90(**compile_args)
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "gna.cubin"
        cubin.write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([_tool("nvdisasm"), "-c", str(cubin)], capture_output=True, text=True, check=True).stdout
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", str(cubin)], capture_output=True,
                               text=True, check=True).stdout
    resources = dict(re.findall(r"(REG|STACK):(\d+)", usage))
    return dict(registers=int(resources["REG"]), stack_bytes=int(resources["STACK"]),
                shared_kib=round(kernel.metadata.shared / 1024, 1),
                loops=[asdict(loop) for loop in wgmma_loops(sass)])


def bar_cases() -> list[tuple[str, dict]]:
    """(name, compile arguments) of the bars' cases at the tiles the tuner ranks first, bf16, head_dim 128."""
    from kernel_bench import BAR_CASES

    from gna_diffusers.backends.triton_gna import tile_candidates
    from gna_diffusers.spec import GNASpec

    cases = []
    for case in BAR_CASES:
        best = tile_candidates(GNASpec.create(case.grid, case.window, case.stride))[0]
        cases.append((f"{case.name} ({'x'.join(map(str, best.q_tile))} / {'x'.join(map(str, best.kv_tile))})",
                      dict(dtype="bf16", head_dim=128, q_tile=best.q_tile, kv_tile=best.kv_tile,
                           has_extra=case.text > 0, has_mask=False)))  # kernel_bench's text has no padding
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the profiles here")
    parser.add_argument("--warps", default="4,8", help="comma-separated num_warps to compile (default 4,8)")
    parser.add_argument("--profile", help="profile one compile (compile_for_sm90's arguments as JSON), print JSON")
    args = parser.parse_args()
    if args.profile:
        print(json.dumps(profile(**json.loads(args.profile))))
        return
    import triton
    from tabulate import tabulate


    rows, records = [], []
    seen = set()
    for name, compile_args in bar_cases():
        key = tuple(sorted((k, str(v)) for k, v in compile_args.items()))
        if key in seen:  # two cases with the same tiles and text compile to the same code
            continue
        seen.add(key)
        for tma in (False, True):
            for warps in map(int, args.warps.split(",")):
                result = profile(**compile_args, tma=tma, num_warps=warps, num_stages=2)
                loop, extra = result["loops"][0], result["loops"][1:]
                records.append(dict(case=name, tma=tma, num_warps=warps, num_stages=2, **result))
                rows.append([name, "TMA" if tma else "gathered", warps, result["registers"], result["stack_bytes"],
                             result["shared_kib"], loop["full_tile"], loop["wgmma"], loop["exp2"],
                             loop["other_mufu"], " / ".join(map(str, loop["skipped_regions"])),
                             extra[0]["full_tile"] if extra else "-"])
                print(f"  {rows[-1]}", file=sys.stderr, flush=True)
    print(f"triton {triton.__version__}, sm_90, bf16, head_dim 128, 2 stages; instructions per thread per KV tile\n")
    print(tabulate(rows, headers=["case (Q / KV tile)", "K/V loads", "warps", "regs", "stack B", "shared KiB",
                                  "full tile", "wgmma", "exp2", "other MUFU", "+ per skipped region (masks)",
                                  "text block (KV tile keys)"], tablefmt="github"))
    if args.json:
        args.json.write_text(json.dumps(dict(triton=triton.__version__, profiles=records), indent=1) + "\n")


if __name__ == "__main__":
    main()

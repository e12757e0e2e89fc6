"""Compile the GNA kernel for sm_90 (Hopper), or another target (``"arch": 100``), without a GPU: real code
generation down to a cubin.

Run as a script with the interpreter off (the test suite runs it in a subprocess):
    TRITON_INTERPRET=0 python benchmarks/compile_sm90.py '{"dtype": "bf16", "head_dim": 128, ...}'
Prints the kernel's shared memory in bytes, then a hash of its PTX or, with "ptx_count": "<text>", how
often that text occurs in the PTX. ``kernel_sass.py`` profiles the machine code of such compiles.
"""

import hashlib
import inspect
import json
import sys


def descriptor_type(dtype: str, kv_tile, head_dim: int) -> str:
    """Triton's signature type of a K/V TMA descriptor with (1, K0, K1, K2, D) boxes."""
    import torch
    from triton.runtime.jit import mangle_type
    from triton.tools.tensor_descriptor import TensorDescriptor

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    dummy = torch.empty(64, head_dim, dtype=dtypes[dtype])
    return mangle_type(TensorDescriptor(dummy, [1, 4, 4, 4, head_dim], [64 * head_dim, 16 * head_dim, 4 * head_dim,
                                                                       head_dim, 1], [1, *kv_tile, head_dim]))


def compile_for_sm90(dtype: str, head_dim: int, q_tile, kv_tile, has_extra: bool, has_mask: bool,
                     has_bias: bool = False, tma: bool = False, num_stages: int = 2, dilated: bool = False,
                     num_warps: int = 8, extra_even: bool = True, grouped_heads: bool = False, arch: int = 90):
    """The kernel compiled for sm_90, or sm_``arch`` (a CompiledKernel). ``has_mask``: the extra keys have padding
    (which reaches the kernel as a -inf bias, like ``has_bias``'s additive mask). ``grouped_heads``: grouped-query
    attention (KV_GROUP a runtime integer; otherwise 1, a constant, as a launch specializes it)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gna_diffusers.backends._triton_kernel import gna_fwd_kernel

    params = list(inspect.signature(gna_fwd_kernel.fn).parameters)
    kv_descriptor = descriptor_type(dtype, kv_tile, head_dim) if tma else f"*{dtype}"  # unused pointers: no TMA
    pointers = {"LSE": "*fp32", "EBIAS": "*fp32", "K_DESC": kv_descriptor, "V_DESC": kv_descriptor,
                **{p: f"*{dtype}" for p in ("Q", "K", "V", "O", "EK", "EV")}}
    constants = dict(
        zip(("T0", "T1", "T2"), q_tile), **dict(zip(("K0", "K1", "K2"), kv_tile)), HEAD_DIM=head_dim,
        HAS_EXTRA=has_extra, HAS_EXTRA_BIAS=has_mask or has_bias,
        EXTRA_EVEN=extra_even, DOT_PRECISION="ieee" if dtype == "fp32" else "tf32", USE_TMA=tma, DILATED=dilated,
        **({} if grouped_heads else {"KV_GROUP": 1}),
    )
    signature = {}
    for p in params:
        if p in pointers:
            signature[p] = pointers[p]
        elif p.startswith(("START", "END")):
            signature[p] = "*i32"
        elif p in constants:
            signature[p] = "constexpr"
        else:
            signature[p] = "fp32" if p == "qk_scale" else "i32"
    # What a real launch specializes on: 16-byte aligned pointers, and strides / head_dim divisible by 16
    # (true of (B, N, H, D) tensors with head_dim 128 or 64); without it the loads compile narrower.
    aligned = [i for i, p in enumerate(params) if signature[p].startswith("*") or p.startswith("s") or p == "head_dim"]
    source = ASTSource(gna_fwd_kernel, signature, constexprs={(params.index(k),): v for k, v in constants.items()},
                       attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    return triton.compile(source, target=GPUTarget("cuda", arch, 32),
                          options=dict(num_warps=num_warps, num_stages=num_stages))


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    count = args.pop("ptx_count", None)
    kernel = compile_for_sm90(**args)
    assert kernel.asm["cubin"], "no cubin produced"
    ptx = kernel.asm["ptx"]
    print(kernel.metadata.shared, ptx.count(count) if count else hashlib.sha256(ptx.encode()).hexdigest()[:16])

"""Compile every kernel ahead of time for Hopper (sm_90, cubin through ptxas), no GPU needed.
Run as a script in its own process: Triton must be imported without TRITON_INTERPRET."""

import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from memtrain.kernels.evoformer_attention import kernel as attention
from memtrain.kernels.layer_norm import kernel as layer_norm

FP32_BUFFERS = {"KB", "LSE", "DELTA", "DB", "MEAN", "RSTD", "DW_PART", "DB_PART", "W", "B_LN"}


def compile_one(fn, dtype, consts, ptr_args, float_args=("sm_scale", "eps"), num_warps=8, num_stages=3):
    signature = {}
    for name in fn.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif name in ptr_args:
            signature[name] = "*fp32" if name in FP32_BUFFERS else "*" + dtype
        elif name in float_args:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
    src = ASTSource(fn=fn, signature=signature,
                    constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages})


def main() -> int:
    if triton.knobs.runtime.interpret:
        print("TRITON_INTERPRET is set: cannot compile")
        return 2
    ptrs = {"Q", "K", "V", "B", "KB", "O", "LSE", "DO", "DELTA", "DQ", "DK", "DV", "DB"}
    for dtype in ("bf16", "fp32"):
        for name in ("_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel", "_bwd_dbias_kernel"):
            fn = getattr(attention, name)
            consts = {"HAS_KEY_BIAS": True, "PRECISION": "ieee" if dtype == "fp32" else "tf32",
                      "BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_D": 32}
            if "HAS_BIAS" in fn.arg_names:
                consts["HAS_BIAS"] = True
            compile_one(fn, dtype, consts, ptrs)
            print("compiled", dtype, name)
        ln_ptrs = {"X", "W", "B", "Y", "MEAN", "RSTD", "DY", "DX", "DW_PART", "DB_PART"}
        compile_one(layer_norm._ln_fwd_kernel, dtype, {"HAS_W": True, "HAS_B": True, "BLOCK_C": 128}, ln_ptrs, num_warps=1)
        compile_one(layer_norm._ln_bwd_kernel, dtype, {"HAS_W": True, "ROWS": 64, "BLOCK_C": 128}, ln_ptrs, num_warps=1)
        print("compiled", dtype, "layer norm")
    return 0


if __name__ == "__main__":
    sys.exit(main())

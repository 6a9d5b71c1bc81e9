"""Compile every @cuda.jit kernel of one kernel family to PTX (run in its own process).

    python tests/ptx_check.py FAMILY

The CUDA simulator accepts plain Python that the CUDA compiler rejects, so the
simulated tests alone do not prove a kernel builds for a GPU. This compiles each
(kernel, signature) from the family's ``ptx_signatures()`` for sm_90 and sm_75 with
numba.cuda.compile_ptx (NVVM only, no GPU needed), and fails when a kernel defined
in the module is missing from that list. It must run without NUMBA_ENABLE_CUDASIM.
"""
import importlib
import sys

CCS = ((9, 0), (7, 5))


def main(family):
    from numba import cuda
    from numba.cuda.dispatcher import CUDADispatcher

    mod = importlib.import_module(f"nbdl.kernels.{family}.cuda")
    if not hasattr(mod, "ptx_signatures"):
        raise SystemExit(f"{family}: cuda.py has no ptx_signatures()")
    sigs = mod.ptx_signatures()
    listed = {id(d) for d, _ in sigs}
    kernels = {name: d for name, d in vars(mod).items()
               if isinstance(d, CUDADispatcher) and not d.targetoptions.get("device")}
    missing = sorted(name for name, d in kernels.items() if id(d) not in listed)
    if missing:
        raise SystemExit(f"{family}: kernels missing from ptx_signatures(): {', '.join(missing)}")
    for disp, sig in sigs:
        for cc in CCS:
            try:
                cuda.compile_ptx(disp.py_func, sig, cc=cc)
            except Exception as e:
                raise SystemExit(f"{family}: {disp.py_func.__name__}{sig} failed for sm_{cc[0]}{cc[1]}: "
                                 f"{type(e).__name__}: {e}")
    print(f"{family}: {len(sigs)} signatures x {len(CCS)} targets compiled")


if __name__ == "__main__":
    main(sys.argv[1])

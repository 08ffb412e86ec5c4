"""Static GPU compile report: ``python -m lr_kernels.report [--json] [--arch 80 90] [--check] [--jobs N]``.

Builds every Triton kernel configuration we ship (the ``report_specs(arch)`` of each module in
``MODULES``) for real GPUs with ``triton.compile(..., target=GPUTarget("cuda", arch, 32))`` — no GPU
needed — and reads from the result, per kernel / arch / dtype / head dim:

- ``registers``, ``spill_bytes`` (spill stores + spill loads): from the ``ptxas -v`` log of the ptxas run
  that built the cubin (captured from Triton; on a Triton cache hit ptxas is rerun on the PTX with the
  binary and flags Triton uses); cross-checked against ``cuobjdump -res-usage`` on the cubin (registers
  and stack frame must agree, else the kernel is reported as an error);
- ``shared_bytes``: the dynamic shared memory Triton requests at launch (``metadata.shared``) plus any
  static shared memory in the cubin;
- ``tensor_core_ops``: tensor-core instructions counted in the SASS (``cuobjdump -sass``): HMMA on
  sm_80; HGMMA + HMMA on sm_90 (Triton uses warpgroup HGMMA where it can and falls back to mma.sync,
  i.e. HMMA, otherwise). ``hmma`` and ``hgmma`` are also shown separately in the table.

Exit status: 0 when clean; 1 when any kernel spills, fails to compile or the tools disagree, and with
``--check`` also when a spec flagged ``matmul`` has no tensor-core instruction or a kernel needs more
shared memory than the arch allows per block; 2 when a module in ``MODULES`` has no ``report_specs``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import io
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from lr_kernels._compile import KernelSpec

MODULES = (
    "lr_kernels.rope.fused",
    "lr_kernels.attention.flash",
    "lr_kernels.cross_entropy.kernels",
)
"""Every module with Triton kernels we ship; each defines ``report_specs(arch) -> list[KernelSpec]``."""

ARCHS = (80, 90)
JSON_KEYS = (
    "kernel",
    "arch",
    "dtype",
    "head_dim",
    "registers",
    "spill_bytes",
    "shared_bytes",
    "tensor_core_ops",
)
# Largest shared memory one block may opt into (A100: 163 KB, H100: 227 KB); more fails at launch.
SHARED_LIMIT = {80: 166_912, 90: 232_448}


class ReportError(Exception):
    """A module, tool or kernel the report cannot handle; the message says which and why."""


@dataclass
class KernelResult:
    kernel: str
    arch: int
    dtype: str
    head_dim: int | None
    registers: int = -1
    spill_bytes: int = -1
    shared_bytes: int = -1
    tensor_core_ops: int = -1
    hmma: int = -1
    hgmma: int = -1
    stack_bytes: int = -1
    num_warps: int = 0
    num_stages: int = 0
    matmul: bool = False
    module: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in JSON_KEYS}


# ---- parsers of the NVIDIA tools' output ---------------------------------------------------------

_PTXAS_STACK = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_RES_USAGE = re.compile(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_TENSOR_CORE = {"HMMA": re.compile(r"\bHMMA\."), "HGMMA": re.compile(r"\bHGMMA\.")}


def parse_ptxas_verbose(log: str) -> dict[str, int]:
    """``ptxas -v`` log of one kernel -> registers, stack, spill_stores, spill_loads (bytes)."""
    stack, regs = _PTXAS_STACK.search(log), _PTXAS_REGS.search(log)
    if stack is None or regs is None:
        raise ReportError(f"could not read registers / spills from the ptxas -v log:\n{log}")
    return {
        "registers": int(regs.group(1)),
        "stack": int(stack.group(1)),
        "spill_stores": int(stack.group(2)),
        "spill_loads": int(stack.group(3)),
    }


def parse_res_usage(text: str) -> dict[str, int]:
    """``cuobjdump -res-usage`` of a one-kernel cubin -> registers, stack, shared, local (bytes)."""
    found = _RES_USAGE.findall(text)
    if len(found) != 1:
        raise ReportError(
            f"expected one function in cuobjdump -res-usage output, found {len(found)}:\n{text}"
        )
    reg, stack, shared, local = (int(v) for v in found[0])
    return {"registers": reg, "stack": stack, "shared": shared, "local": local}


def count_tensor_core_ops(sass: str) -> dict[str, int]:
    """Number of HMMA (mma.sync) and HGMMA (warpgroup wgmma) instructions in a SASS listing."""
    counts = dict.fromkeys(_TENSOR_CORE, 0)
    for line in sass.splitlines():
        for name, pattern in _TENSOR_CORE.items():
            if pattern.search(line):
                counts[name] += 1
    return counts


def tensor_core_ops(arch: int, counts: dict[str, int]) -> int:
    """The report's ``tensor_core_ops``: HMMA on sm_80; HGMMA + HMMA from sm_90 on."""
    return counts["HMMA"] + (counts["HGMMA"] if arch >= 90 else 0)


# ---- compiling and analysing one kernel ----------------------------------------------------------


def _tools(arch: int) -> tuple[str, str, str]:
    """(ptxas, cuobjdump, --gpu-name) exactly as Triton's NVIDIA backend picks them for ``arch``."""
    from triton import knobs
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    return get_ptxas(arch).path, knobs.nvidia.cuobjdump.path, sm_arch_from_capability(arch)


def _run(cmd: Sequence[str]) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReportError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return proc.stdout + proc.stderr


def analyze_compiled(compiled: Any, arch: int, workdir: str, ptxas_log: str | None = None) -> dict[str, int]:
    """Registers, spills, shared memory and tensor-core counts of a ``triton.compile`` result.

    ``ptxas_log``: the ``ptxas -v`` output of the compile that built the cubin, when it was captured;
    otherwise (a Triton cache hit) ptxas is run again on the PTX with Triton's binary and flags.
    """
    ptxas, cuobjdump, gpu_name = _tools(arch)
    name = compiled.metadata.name
    ptx_path = os.path.join(workdir, f"{name}.ptx")
    cubin_path = os.path.join(workdir, f"{name}.cubin")
    with open(ptx_path, "w") as f:
        f.write(compiled.asm["ptx"])
    with open(cubin_path, "wb") as f:
        f.write(compiled.asm["cubin"])

    if not ptxas_log or not _PTXAS_STACK.search(ptxas_log):
        # Same ptxas and flags as Triton's make_cubin, so the -v figures describe the cubin Triton built.
        fmad = [] if compiled.metadata.enable_fp_fusion else ["--fmad=false"]
        cmd = [ptxas, "-lineinfo", *fmad, "-v", "--regAllocOptLevel=2", f"--gpu-name={gpu_name}", ptx_path]
        ptxas_log = _run([*cmd, "-o", os.path.join(workdir, f"{name}.ptxas.cubin")])
    ptxas_info = parse_ptxas_verbose(ptxas_log)
    res = parse_res_usage(_run([cuobjdump, "-res-usage", cubin_path]))
    if (ptxas_info["registers"], ptxas_info["stack"]) != (res["registers"], res["stack"]):
        raise ReportError(
            f"ptxas -v ({ptxas_info['registers']} registers, {ptxas_info['stack']} B stack) and cuobjdump "
            f"-res-usage ({res['registers']} registers, {res['stack']} B stack) disagree for {name}"
        )
    counts = count_tensor_core_ops(_run([cuobjdump, "-sass", cubin_path]))
    return {
        "registers": res["registers"],
        "spill_bytes": ptxas_info["spill_stores"] + ptxas_info["spill_loads"],
        "stack_bytes": res["stack"],
        "shared_bytes": int(compiled.metadata.shared) + res["shared"],
        "hmma": counts["HMMA"],
        "hgmma": counts["HGMMA"],
        "tensor_core_ops": tensor_core_ops(arch, counts),
    }


def compile_spec(spec: KernelSpec, workdir: str) -> dict[str, int]:
    """Compile one spec for its arch and analyse it (see ``analyze_compiled``)."""
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if not isinstance(spec.fn, triton.runtime.JITFunction):
        raise ReportError(
            f"{spec.kernel}: the kernel is not a triton.jit function ({type(spec.fn).__name__}); "
            "run the report with TRITON_INTERPRET unset"
        )
    # Triton prints its own ptxas -v log with this knob; capturing it saves a second ptxas run.
    log = io.StringIO()
    with knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(
            ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs),
            target=GPUTarget("cuda", spec.arch, 32),
            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
        )
    return analyze_compiled(compiled, spec.arch, workdir, ptxas_log=log.getvalue())


# ---- collecting specs and running the jobs -------------------------------------------------------


def module_specs(module: str, arch: int) -> list[KernelSpec]:
    """``report_specs(arch)`` of ``module``; ReportError if the module has none."""
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ReportError(f"cannot import {module} (listed in lr_kernels.report.MODULES): {e}") from e
    fn = getattr(mod, "report_specs", None)
    if fn is None:
        raise ReportError(
            f"{module} (listed in lr_kernels.report.MODULES) has no report_specs(arch) -> list[KernelSpec]; "
            "every module with Triton kernels must list the configurations it launches"
        )
    specs = list(fn(arch))
    for spec in specs:
        if not isinstance(spec, KernelSpec) or spec.arch != arch:
            raise ReportError(
                f"{module}.report_specs({arch}) returned {spec!r}, not a KernelSpec for sm_{arch}"
            )
    return specs


@functools.cache
def _cached_specs(module: str, arch: int) -> tuple[KernelSpec, ...]:
    return tuple(module_specs(module, arch))


def _job(job: tuple[str, int, int]) -> KernelResult:
    module, arch, index = job
    spec = _cached_specs(module, arch)[index]
    result = KernelResult(
        kernel=spec.kernel,
        arch=arch,
        dtype=spec.dtype,
        head_dim=spec.head_dim,
        num_warps=spec.num_warps,
        num_stages=spec.num_stages,
        matmul=spec.matmul,
        module=module,
        extra=dict(spec.extra),
    )
    try:
        with tempfile.TemporaryDirectory(prefix="lr_kernels_report_") as workdir:
            for key, value in compile_spec(spec, workdir).items():
                setattr(result, key, value)
    except Exception as e:  # one broken config must not hide the rest of the report
        result.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return result


def run_report(
    archs: Iterable[int] = ARCHS, modules: Iterable[str] = MODULES, jobs: int | None = None
) -> list[KernelResult]:
    """Compile and analyse every spec of ``modules`` for each arch, ``jobs`` compiles at a time.

    Compiles run in fresh worker processes with the Triton interpreter off, so this also works from a
    process that imported ``lr_kernels`` under ``TRITON_INTERPRET=1``.
    """
    job_list = [
        (module, arch, i)
        for arch in archs
        for module in modules
        for i in range(len(module_specs(module, arch)))
    ]
    jobs = max(1, jobs or min(2, os.cpu_count() or 1))
    saved = {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    os.environ["TRITON_INTERPRET"] = "0"
    # Triton 3.9 launches with FP fusion on by default; compile what the launchers will run.
    os.environ["TRITON_DEFAULT_FP_FUSION"] = saved["TRITON_DEFAULT_FP_FUSION"] or "1"
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            return list(pool.map(_job, job_list))
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def problems(results: Sequence[KernelResult], check: bool) -> list[str]:
    """Human-readable findings that make the report fail."""
    out = []
    for r in results:
        where = f"{r.kernel} sm_{r.arch} {r.dtype} D={r.head_dim}"
        if r.error:
            out.append(f"{where}: {r.error}")
            continue
        if r.spill_bytes > 0:
            out.append(f"{where}: {r.spill_bytes} bytes of register spills")
        if check and r.matmul and r.tensor_core_ops <= 0:
            out.append(f"{where}: matmul kernel without tensor-core instructions")
        if check and r.shared_bytes > SHARED_LIMIT.get(r.arch, sys.maxsize):
            out.append(
                f"{where}: {r.shared_bytes} B shared memory > {SHARED_LIMIT[r.arch]} B per-block limit"
            )
    return out


def format_table(results: Sequence[KernelResult]) -> str:
    cols = ["kernel", "arch", "dtype", "D", "warps", "stages", "regs", "spill", "stack", "shared", "tc_ops",
            "hmma", "hgmma", "config"]  # fmt: skip
    rows = []
    for r in results:
        config = " ".join(f"{k}={v}" for k, v in r.extra.items())
        if r.error:
            blank = [""] * (len(cols) - 5)
            rows.append([r.kernel, f"sm_{r.arch}", r.dtype, str(r.head_dim), *blank, f"ERROR {r.error}"])
            continue
        rows.append(
            [r.kernel, f"sm_{r.arch}", r.dtype, str(r.head_dim or "-"), str(r.num_warps), str(r.num_stages),
             str(r.registers), str(r.spill_bytes), str(r.stack_bytes), str(r.shared_bytes),
             str(r.tensor_core_ops), str(r.hmma), str(r.hgmma), config]
        )  # fmt: skip
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lr_kernels.report",
        description="Compile every shipped Triton kernel config for sm_80/sm_90 and report registers, "
        "spills, shared memory and tensor-core instructions (no GPU needed).",
    )
    parser.add_argument(
        "--json", action="store_true", help=f"print a JSON list of objects with keys {JSON_KEYS}"
    )
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=sorted(SHARED_LIMIT))
    parser.add_argument(
        "--check",
        action="store_true",
        help="also fail on matmul specs without tensor-core ops and on shared memory over the limit",
    )
    parser.add_argument("--jobs", type=int, default=None, help="parallel compiles (default: min(2, cores))")
    parser.add_argument("--modules", nargs="+", default=list(MODULES), help="restrict to these modules")
    parser.add_argument("--full-json", action="store_true", help="JSON with every field (hmma, hgmma, ...)")
    args = parser.parse_args(argv)
    try:
        results = run_report(args.arch, args.modules, args.jobs)
    except ReportError as e:
        print(f"lr_kernels.report: {e}", file=sys.stderr)
        return 2
    if args.full_json:
        print(json.dumps([asdict(r) for r in results], indent=1))
    elif args.json:
        print(json.dumps([r.to_json() for r in results], indent=1))
    else:
        print(format_table(results))
    found = problems(results, args.check)
    if found:
        print(f"lr_kernels.report: {len(found)} problem(s):", file=sys.stderr)
        for line in found:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"lr_kernels.report: {len(results)} kernel configs, no spills"
          + (", tensor cores in every matmul kernel, shared memory within limits" if args.check else ""),
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

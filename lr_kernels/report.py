"""Static GPU compile report: ``python -m lr_kernels.report [--json] [--arch 80 90] [--check] [--jobs N]``.

Builds every Triton kernel a launch of ours builds on a real GPU, without one, and reads from the result
per kernel / arch / dtype / head dim. What gets built is not described by hand: each module in
``MODULES`` lists representative calls of its own launchers (``report_cases(arch)``), and the report runs
them on small CPU tensors with Triton's own launch path (``JITFunction.run``) pointed at a stand-in CUDA
driver for the target arch. Triton then specializes each kernel exactly as on that GPU (16-byte pointer
alignment, integers divisible by 16 or equal to 1, integer widths, num_warps, num_stages, the launcher's
config for that arch) and hands the build to ``knobs.runtime.jit_cache_hook``, which records it instead
of compiling and launching. Each recorded build is then compiled with ``JITFunction.preload`` — the same
``triton.compile`` call a launch makes — in a fresh process with the interpreter off.

Columns:
- ``registers``, ``spill_bytes`` (spill stores + spill loads): the ``ptxas -v`` log of the compile,
  cross-checked against ``cuobjdump -res-usage`` (registers and stack must agree, else an error row);
- ``shared_bytes``: dynamic shared memory requested at launch plus static shared memory in the cubin;
- ``tensor_core_ops``: HMMA on sm_80; HGMMA + HMMA on sm_90, counted in ``cuobjdump -sass``;
- ``loop_instructions``: SASS instructions of the kernel's main loop: the innermost backward branch
  whose body holds the tensor-core instructions (for kernels without them, the largest innermost loop);
- ``loop_ratio``: ``loop_instructions`` with RoPE fused over the same kernel and config built without
  RoPE (the twin case), and ``extra_registers`` likewise. This is the cost of the fusion in the loop
  that dominates run time.

Exit status: 0 when clean; 1 when any kernel spills, fails to compile or the tools disagree, and with
``--check`` also when a ``matmul`` kernel has no tensor-core instruction, a kernel needs more shared
memory than the arch allows per block, a fused-RoPE loop costs more than ``MAX_LOOP_RATIO`` times the
plain one or needs more than ``MAX_EXTRA_REGISTERS`` extra registers; 2 when a module in ``MODULES``
has no ``report_cases``.
"""

from __future__ import annotations

import argparse
import contextlib
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

MODULES = (
    "lr_kernels.rope.fused",
    "lr_kernels.attention.flash",
    "lr_kernels.cross_entropy.kernels",
)
"""Every module with Triton kernels we ship; each defines ``report_cases(arch) -> list[ReportCase]``."""

ARCHS = (80, 90)
JSON_KEYS = (
    "kernel",
    "arch",
    "dtype",
    "head_dim",
    "rope",
    "registers",
    "spill_bytes",
    "shared_bytes",
    "tensor_core_ops",
    "loop_instructions",
    "loop_ratio",
)
# Largest shared memory one block may opt into (A100: 163 KB, H100: 227 KB); more fails at launch.
SHARED_LIMIT = {80: 166_912, 90: 232_448}
MAX_LOOP_RATIO = 1.15
MAX_EXTRA_REGISTERS = 16


class ReportError(Exception):
    """A module, tool or kernel the report cannot handle; the message says which and why."""


@dataclass
class KernelResult:
    kernel: str
    arch: int
    dtype: str
    head_dim: int | None
    rope: bool | None = None
    registers: int = -1
    spill_bytes: int = -1
    shared_bytes: int = -1
    tensor_core_ops: int = -1
    hmma: int = -1
    hgmma: int = -1
    stack_bytes: int = -1
    loop_instructions: int = -1
    loop_ratio: float | None = None
    extra_registers: int | None = None
    num_warps: int = 0
    num_stages: int = 0
    matmul: bool = False
    module: str = ""
    case: str = ""
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


_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"^(?:@!?U?P\w+\s+)?BRA(?:\.\S+)?\s+(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))")


def sass_instructions(sass: str) -> list[tuple[int, str]]:
    """(address, instruction text) of every instruction in a one-kernel ``cuobjdump -sass`` listing."""
    return [(int(m.group(1), 16), m.group(2)) for m in _SASS_LINE.finditer(sass)]


def sass_loops(instructions: Sequence[tuple[int, str]]) -> list[tuple[int, int]]:
    """Loops as (first, last) instruction indices: each backward branch and the target it jumps back to."""
    index = {addr: i for i, (addr, _) in enumerate(instructions)}
    loops = []
    for i, (addr, text) in enumerate(instructions):
        m = _BRANCH.match(text)
        if m and m.group(1) is not None:
            target = int(m.group(1), 16)
            if target < addr and target in index:  # not the trailing `BRA self` after EXIT
                loops.append((index[target], i))
    return loops


def main_loop_instructions(sass: str) -> int:
    """Instructions in the kernel's main loop (see the module docstring); 0 for a kernel without loops."""
    instructions = sass_instructions(sass)
    loops = sass_loops(instructions)
    if not loops:
        return 0

    def has_tc(loop: tuple[int, int]) -> bool:
        return any(_TENSOR_CORE["HMMA"].search(t) or _TENSOR_CORE["HGMMA"].search(t)
                   for _, t in instructions[loop[0] : loop[1] + 1])  # fmt: skip

    candidates = [lp for lp in loops if has_tc(lp)] or loops
    innermost = [
        lp for lp in candidates
        if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in candidates)
    ]  # fmt: skip
    first, last = max(innermost, key=lambda lp: lp[1] - lp[0])
    return last - first + 1


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


# ---- recording what launches build --------------------------------------------------------------


@dataclass(frozen=True)
class Build:
    """One kernel build as Triton's launch path specialized it (``specialization_data`` is Triton's own
    serialization: signature, constexprs, alignment/divisibility attributes, options, target)."""

    kernel: str  # the @triton.jit function's name without "_kernel", e.g. "attention_fwd"
    module: str
    qualname: str
    arch: int
    specialization: str

    @property
    def options(self) -> dict[str, Any]:
        return json.loads(self.specialization)["options"]


def _stand_in_driver(arch: int) -> Any:
    """A CUDA driver for Triton's launch path that needs no GPU: device 0 of compute capability ``arch``."""
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class StandInCudaDriver(DriverBase):
        @classmethod
        def is_active(cls) -> bool:
            return True

        def map_python_to_cpp_type(self, ty: str) -> str:
            raise ReportError("the report's stand-in driver cannot launch kernels")

        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", arch, 32)

        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: int) -> int:
            return 0

        def get_active_torch_device(self) -> Any:
            import torch

            return torch.device("cpu")

        def get_benchmarker(self) -> Any:
            raise ReportError("the report's stand-in driver cannot time kernels")

    return StandInCudaDriver()


@contextlib.contextmanager
def _stand_in_gpu(arch: int, on_build: Any = None):
    """Point Triton's launch path and our launchers' config choice at a GPU of ``arch``. With ``on_build``,
    every launch calls it with the build it would compile and then stops before compiling or launching."""
    from triton import knobs
    from triton.runtime.driver import driver

    from lr_kernels._common import interpreter_enabled
    from lr_kernels._compile import target_arch

    if interpreter_enabled():
        raise ReportError("GPU builds need TRITON_INTERPRET unset in the compiling process")
    previous_hook = knobs.runtime.jit_cache_hook
    # Restored as it was: without a GPU there is no default driver that reset_active() could fall back to.
    previous_driver = getattr(driver, "_active", None)
    driver.set_active(_stand_in_driver(arch))
    _forget_builds()
    if on_build is not None:

        def hook(*, fn: Any, compile: dict[str, Any], **_: Any) -> bool:
            on_build(fn.jit_function, compile["specialization_data"])
            return True  # skip the compile and the launch

        knobs.runtime.jit_cache_hook = hook
    try:
        with target_arch(arch):
            yield
    finally:
        knobs.runtime.jit_cache_hook = previous_hook
        driver.set_active(previous_driver)
        _forget_builds()


def _forget_builds() -> None:
    # Triton caches a binder (holding the target) and compiled kernels per JITFunction and device. Both
    # must start empty under a stand-in GPU: a binder of another arch would specialize for the wrong
    # target, and a cached kernel would make a recorded call try to launch.
    from triton.runtime.jit import _triton_jit_function_registry

    for jit in _triton_jit_function_registry.values():
        jit.device_caches.clear()


def record_builds(launch: Any, arch: int) -> list[Build]:
    """The kernel builds that ``launch()`` (a call of our launchers on CPU tensors) makes on sm_``arch``,
    in launch order, without repeats. Must run with the interpreter off (see ``run_report``)."""
    found: list[Build] = []

    def on_build(jit: Any, specialization: str) -> None:
        name = jit.fn.__name__
        build = Build(
            name.removesuffix("_kernel"), jit.fn.__module__, jit.fn.__qualname__, arch, specialization
        )
        if build not in found:
            found.append(build)

    with _stand_in_gpu(arch, on_build):
        launch()
    return found


# ---- compiling and analysing one build ------------------------------------------------------------


def compile_build(build: Build, workdir: str) -> dict[str, int]:
    """Compile ``build`` exactly as the launch would (``JITFunction.preload`` of its specialization) and
    analyse the result (see ``analyze_compiled``)."""
    from triton import knobs

    jit = getattr(importlib.import_module(build.module), build.qualname)
    # Triton prints its own ptxas -v log with this knob; capturing it saves a second ptxas run.
    log = io.StringIO()
    with _stand_in_gpu(build.arch), knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        knobs.nvidia.dump_ptxas_log = True
        compiled = jit.preload(build.specialization)
    return analyze_compiled(compiled, build.arch, workdir, ptxas_log=log.getvalue())


def analyze_compiled(compiled: Any, arch: int, workdir: str, ptxas_log: str | None = None) -> dict[str, int]:
    """Registers, spills, shared memory, tensor-core counts and main-loop size of a compiled kernel.

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
    sass = _run([cuobjdump, "-sass", cubin_path])
    counts = count_tensor_core_ops(sass)
    return {
        "registers": res["registers"],
        "spill_bytes": ptxas_info["spill_stores"] + ptxas_info["spill_loads"],
        "stack_bytes": res["stack"],
        "shared_bytes": int(compiled.metadata.shared) + res["shared"],
        "hmma": counts["HMMA"],
        "hgmma": counts["HGMMA"],
        "tensor_core_ops": tensor_core_ops(arch, counts),
        "loop_instructions": main_loop_instructions(sass),
    }


# ---- collecting cases and running the jobs --------------------------------------------------------


def module_cases(module: str, arch: int) -> list[Any]:
    """``report_cases(arch)`` of ``module``; ReportError if the module has none."""
    from lr_kernels._compile import ReportCase

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ReportError(f"cannot import {module} (listed in lr_kernels.report.MODULES): {e}") from e
    fn = getattr(mod, "report_cases", None)
    if fn is None:
        raise ReportError(
            f"{module} (listed in lr_kernels.report.MODULES) has no report_cases(arch) -> list[ReportCase]; "
            "every module with Triton kernels must list representative calls of its launchers"
        )
    cases = list(fn(arch))
    for case in cases:
        if not isinstance(case, ReportCase):
            raise ReportError(f"{module}.report_cases({arch}) returned {case!r}, not a ReportCase")
    return cases


def _record_job(job: tuple[str, int]) -> list[tuple[dict[str, Any], list[Build]]]:
    module, arch = job
    out = []
    for case in module_cases(module, arch):
        meta = {"case": case.name, "dtype": case.dtype, "head_dim": case.head_dim, "rope": case.rope,
                "matmul": sorted(case.matmul), "extra": dict(case.extra), "module": module}  # fmt: skip
        out.append((meta, record_builds(case.launch, arch)))
    return out


def _compile_job(build: Build) -> dict[str, Any]:
    try:
        with tempfile.TemporaryDirectory(prefix="lr_kernels_report_") as workdir:
            return compile_build(build, workdir)
    except Exception as e:  # one broken build must not hide the rest of the report
        text = str(e).strip()
        return {"error": f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"}


def _tile_config(build: Build) -> dict[str, Any]:
    data = json.loads(build.specialization)
    consts = {k[0] if isinstance(k, list) and len(k) == 1 else str(k): v
              for k, v in zip(data["constant_keys"], data["constant_vals"], strict=True)}  # fmt: skip
    names = importlib.import_module(build.module).__dict__[build.qualname].arg_names
    shown = {}
    for idx, value in consts.items():
        name = names[idx] if isinstance(idx, int) else idx
        if isinstance(value, dict) and "constexpr" in value:
            value = value["constexpr"]
        if name in ("BM", "BN", "BT", "BV", "HPP", "GROUP") and isinstance(value, int):
            shown[name] = value
    return shown


@contextlib.contextmanager
def _compiler_environment():
    # Worker processes are spawned fresh with the interpreter off: GPU compilation must never share a
    # process with the interpreter, which patches triton.language while it runs a kernel.
    saved = {k: os.environ.get(k) for k in ("TRITON_INTERPRET", "TRITON_DEFAULT_FP_FUSION")}
    os.environ["TRITON_INTERPRET"] = "0"
    # Triton 3.9 launches with FP fusion on by default; compile what the launchers will run.
    os.environ["TRITON_DEFAULT_FP_FUSION"] = saved["TRITON_DEFAULT_FP_FUSION"] or "1"
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_report(
    archs: Iterable[int] = ARCHS, modules: Iterable[str] = MODULES, jobs: int | None = None
) -> list[KernelResult]:
    """Record the builds of every case of ``modules`` for each arch, compile each distinct build once,
    ``jobs`` at a time, and return one row per (case, build) with the RoPE loop ratios filled in.

    Everything runs in fresh worker processes with the Triton interpreter off, so this also works from a
    process that imported ``lr_kernels`` under ``TRITON_INTERPRET=1`` or ran kernels in the interpreter.
    """
    archs, modules = list(archs), list(modules)
    jobs = max(1, jobs or min(2, os.cpu_count() or 1))
    with _compiler_environment():
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            recorded = list(pool.map(_record_job, [(m, a) for a in archs for m in modules]))
            builds = list(dict.fromkeys(b for per_job in recorded for _, bs in per_job for b in bs))
            analyses = dict(zip(builds, pool.map(_compile_job, builds), strict=True))
    results = []
    for per_job in recorded:
        for meta, case_builds in per_job:
            for build in case_builds:
                r = KernelResult(
                    kernel=build.kernel, arch=build.arch, dtype=meta["dtype"], head_dim=meta["head_dim"],
                    rope=meta["rope"], num_warps=build.options["num_warps"],
                    num_stages=build.options["num_stages"], matmul=build.kernel in meta["matmul"],
                    module=meta["module"], case=meta["case"], extra={**_tile_config(build), **meta["extra"]},
                )  # fmt: skip
                for key, value in analyses[build].items():
                    setattr(r, key, value)
                results.append(r)
    _fill_loop_ratios(results)
    return results


def _fill_loop_ratios(results: list[KernelResult]) -> None:
    def key(r: KernelResult) -> tuple:
        return (r.module, r.kernel, r.arch, r.dtype, r.head_dim, r.case.replace(f"rope={r.rope}", ""))

    plain = {key(r): r for r in results if r.rope is False and not r.error}
    for r in results:
        twin = plain.get(key(r)) if r.rope and not r.error else None
        if twin is not None and twin.loop_instructions > 0:
            r.loop_ratio = round(r.loop_instructions / twin.loop_instructions, 3)
            r.extra_registers = r.registers - twin.registers


def problems(results: Sequence[KernelResult], check: bool) -> list[str]:
    """Human-readable findings that make the report fail."""
    out = []
    for r in results:
        where = f"{r.kernel} sm_{r.arch} {r.dtype} D={r.head_dim}" + (f" [{r.case}]" if r.case else "")
        if r.error:
            out.append(f"{where}: {r.error}")
            continue
        if r.spill_bytes > 0:
            out.append(f"{where}: {r.spill_bytes} bytes of register spills")
        if not check:
            continue
        if r.matmul and r.tensor_core_ops <= 0:
            out.append(f"{where}: matmul kernel without tensor-core instructions")
        if r.shared_bytes > SHARED_LIMIT.get(r.arch, sys.maxsize):
            out.append(
                f"{where}: {r.shared_bytes} B shared memory > {SHARED_LIMIT[r.arch]} B per-block limit"
            )
        if r.loop_ratio is not None and r.loop_ratio > MAX_LOOP_RATIO:
            out.append(f"{where}: main loop {r.loop_ratio:.2f}x as long as without RoPE (> {MAX_LOOP_RATIO})")
        if r.extra_registers is not None and r.extra_registers > MAX_EXTRA_REGISTERS:
            out.append(f"{where}: +{r.extra_registers} registers over no RoPE (> {MAX_EXTRA_REGISTERS})")
    return out


def format_table(results: Sequence[KernelResult]) -> str:
    cols = ["kernel", "arch", "dtype", "D", "rope", "warps", "stages", "regs", "+regs", "spill", "stack",
            "shared", "tc_ops", "hmma", "hgmma", "loop", "ratio", "config"]  # fmt: skip
    rows = []
    for r in results:
        config = " ".join(f"{k}={v}" for k, v in r.extra.items())
        head = [
            r.kernel,
            f"sm_{r.arch}",
            r.dtype,
            str(r.head_dim or "-"),
            "-" if r.rope is None else str(r.rope),
        ]
        if r.error:
            rows.append([*head, *[""] * (len(cols) - len(head) - 1), f"ERROR {r.error}"])
            continue
        rows.append(
            [*head, str(r.num_warps), str(r.num_stages), str(r.registers),
             "-" if r.extra_registers is None else f"{r.extra_registers:+d}", str(r.spill_bytes),
             str(r.stack_bytes), str(r.shared_bytes), str(r.tensor_core_ops), str(r.hmma), str(r.hgmma),
             str(r.loop_instructions), "-" if r.loop_ratio is None else f"{r.loop_ratio:.3f}", config]
        )  # fmt: skip
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lr_kernels.report",
        description="Build every Triton kernel our launchers build on sm_80/sm_90 (no GPU needed) and report "
        "registers, spills, shared memory, tensor-core instructions and the main loop's size with RoPE "
        "fused against the same kernel without it.",
    )
    parser.add_argument(
        "--json", action="store_true", help=f"print a JSON list of objects with keys {JSON_KEYS}"
    )
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=sorted(SHARED_LIMIT))
    parser.add_argument(
        "--check",
        action="store_true",
        help="also fail on matmul kernels without tensor-core ops, shared memory over the limit, and a "
        f"fused-RoPE main loop over {MAX_LOOP_RATIO}x the plain one or over +{MAX_EXTRA_REGISTERS} registers",
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
    ratios = [r.loop_ratio for r in results if r.loop_ratio is not None]
    summary = f"lr_kernels.report: {len(results)} kernel builds, no spills"
    if args.check:
        summary += ", tensor cores in every matmul kernel, shared memory within limits"
        if ratios:
            summary += f", fused-RoPE main loops at most {max(ratios):.3f}x the plain ones"
    print(summary, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

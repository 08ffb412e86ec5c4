"""The GPU compile report: its parsers on known kernels, and the shipped kernel configs themselves."""

from __future__ import annotations

import json
import tempfile

import pytest
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from triton.runtime.jit import JITFunction

from lr_kernels import report
from lr_kernels._compile import KernelSpec

ARCHS = (80, 90)
ATTENTION_MATMUL_KERNELS = ("attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq")


# Plain functions wrapped in JITFunction by hand: under TRITON_INTERPRET=1 (set by conftest) @triton.jit
# would return interpreter objects, which triton.compile cannot build for a GPU.
def _dot_kernel(A, B, C, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    offs_m = tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    b_a = tl.load(A + offs_m[:, None] * BK + offs_k[None, :])
    b_b = tl.load(B + offs_k[:, None] * BN + offs_n[None, :])
    tl.store(C + offs_m[:, None] * BN + offs_n[None, :], tl.dot(b_a, b_b))  # [BM, BK] @ [BK, BN]


def _add_kernel(X, Y, Z, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < N
    tl.store(Z + offs, tl.load(X + offs, mask=m) + tl.load(Y + offs, mask=m), mask=m)


DOT = JITFunction(_dot_kernel)
ADD = JITFunction(_add_kernel)


def _dot_spec(arch: int, dtype: str = "fp16") -> KernelSpec:
    sig = {
        "A": f"*{dtype}",
        "B": f"*{dtype}",
        "C": "*fp32",
        "BM": "constexpr",
        "BN": "constexpr",
        "BK": "constexpr",
    }
    return KernelSpec("dot", DOT, sig, {"BM": 64, "BN": 64, "BK": 32}, arch, dtype, num_warps=4, num_stages=1)


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
def test_dot_kernel_shows_tensor_cores(arch):
    with tempfile.TemporaryDirectory() as d:
        info = report.compile_spec(_dot_spec(arch), d)
    assert info["spill_bytes"] == 0
    assert info["registers"] > 0
    assert info["tensor_core_ops"] > 0
    if arch == 80:
        assert info["hmma"] > 0 and info["hgmma"] == 0
        assert info["tensor_core_ops"] == info["hmma"]
    else:
        assert info["tensor_core_ops"] == info["hmma"] + info["hgmma"]


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
def test_elementwise_kernel_has_no_tensor_cores(arch):
    sig = {"X": "*fp32", "Y": "*fp32", "Z": "*fp32", "N": "i32", "BLOCK": "constexpr"}
    spec = KernelSpec("add", ADD, sig, {"BLOCK": 1024}, arch, "fp32", num_warps=4, num_stages=1)
    with tempfile.TemporaryDirectory() as d:
        info = report.compile_spec(spec, d)
    assert info == {**info, "tensor_core_ops": 0, "hmma": 0, "hgmma": 0, "spill_bytes": 0, "shared_bytes": 0}


def test_register_cap_shows_spills():
    """A 64x64x32 dot squeezed into 32 registers per thread must spill, and the report must see it."""
    compiled = triton.compile(
        ASTSource(fn=DOT, signature=_dot_spec(80).signature, constexprs={"BM": 64, "BN": 64, "BK": 32}),
        target=GPUTarget("cuda", 80, 32),
        options={"num_warps": 4, "num_stages": 1, "maxnreg": 32},
    )
    with tempfile.TemporaryDirectory() as d:
        info = report.analyze_compiled(compiled, 80, d)
    assert info["registers"] <= 32
    assert info["spill_bytes"] > 0
    assert info["stack_bytes"] > 0


PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k' for 'sm_90a'
ptxas info    : Function properties for k
    24 bytes stack frame, 20 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 24 bytes cumulative stack size
"""
RES_USAGE = """Resource usage:
 Common:
  GLOBAL:0
 Function k:
  REG:255 STACK:24 SHARED:0 LOCAL:0 CONSTANT[0]:540 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
SASS = """
        /*0400*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0410*/               @P0 HMMA.16816.F32.BF16 R16, R8, R14, R16 ;
        /*0420*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24, gsb0 ;
        /*0430*/                   FFMA R1, R2, R3, R1 ;
        /*0440*/                   MOV R5, 0x484d4d41 ;
"""


def test_parsers_on_known_text():
    assert report.parse_ptxas_verbose(PTXAS_LOG) == {
        "registers": 255,
        "stack": 24,
        "spill_stores": 20,
        "spill_loads": 16,
    }
    assert report.parse_res_usage(RES_USAGE) == {"registers": 255, "stack": 24, "shared": 0, "local": 0}
    counts = report.count_tensor_core_ops(SASS)
    assert counts == {"HMMA": 2, "HGMMA": 1}
    assert report.tensor_core_ops(80, counts) == 2
    assert report.tensor_core_ops(90, counts) == 3
    with pytest.raises(report.ReportError, match="could not read"):
        report.parse_ptxas_verbose("ptxas info : nothing here")
    with pytest.raises(report.ReportError, match="expected one function"):
        report.parse_res_usage(RES_USAGE + RES_USAGE.splitlines()[-1])


def _result(**kw) -> report.KernelResult:
    base = dict(kernel="k", arch=80, dtype="bf16", head_dim=64, registers=100, spill_bytes=0)
    base.update(shared_bytes=1024, tensor_core_ops=8, hmma=8, hgmma=0, stack_bytes=0, matmul=True)
    base.update(kw)
    return report.KernelResult(**base)


def test_problems_and_exit_codes(monkeypatch, capsys):
    clean = [_result(), _result(arch=90, hmma=0, hgmma=4, tensor_core_ops=4)]
    assert report.problems(clean, check=True) == []
    spill = _result(spill_bytes=8)
    no_tc = _result(tensor_core_ops=0, hmma=0)
    big_smem = _result(arch=80, shared_bytes=200_000)
    failed = _result(error="CompilationError: boom")
    assert len(report.problems([spill], check=False)) == 1
    assert report.problems([no_tc, big_smem], check=False) == []
    assert len(report.problems([no_tc, big_smem], check=True)) == 2
    assert "boom" in report.problems([failed], check=False)[0]

    monkeypatch.setattr(report, "run_report", lambda *a, **k: clean)
    assert report.main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [list(r) for r in rows] == [list(report.JSON_KEYS)] * 2
    assert rows[1] == {"kernel": "k", "arch": 90, "dtype": "bf16", "head_dim": 64, "registers": 100,
                       "spill_bytes": 0, "shared_bytes": 1024, "tensor_core_ops": 4}  # fmt: skip
    monkeypatch.setattr(report, "run_report", lambda *a, **k: [*clean, spill])
    assert report.main([]) == 1
    assert "spills" in capsys.readouterr().err
    monkeypatch.setattr(report, "run_report", lambda *a, **k: [*clean, no_tc])
    assert report.main([]) == 0
    assert report.main(["--check"]) == 1


def test_module_without_report_specs_is_a_clear_error(capsys):
    assert report.main(["--modules", "lr_kernels._common"]) == 2
    assert (
        "lr_kernels._common (listed in lr_kernels.report.MODULES) has no report_specs"
        in capsys.readouterr().err
    )


# ---- the shipped kernels ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> list[report.KernelResult]:
    """Every shipped spec compiled once for sm_80 and sm_90 (two compiles at a time)."""
    return report.run_report(ARCHS, report.MODULES)


def test_every_module_reports_for_every_arch(shipped):
    for module in report.MODULES:
        for arch in ARCHS:
            assert any(r.module == module and r.arch == arch for r in shipped), (module, arch)


def test_every_spec_compiles(shipped):
    assert [f"{r.kernel} sm_{r.arch} {r.dtype} D={r.head_dim}: {r.error}" for r in shipped if r.error] == []


def test_no_spills_anywhere(shipped):
    spills = [
        f"{r.kernel} sm_{r.arch} {r.dtype} D={r.head_dim}: {r.spill_bytes} B"
        for r in shipped
        if r.spill_bytes
    ]
    assert spills == []


def test_shared_memory_within_limits(shipped):
    over = [r for r in shipped if r.shared_bytes > report.SHARED_LIMIT[r.arch]]
    assert over == []


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("kernel", ATTENTION_MATMUL_KERNELS)
def test_attention_uses_tensor_cores(shipped, kernel, head_dim, dtype, arch):
    rows = [r for r in shipped if (r.kernel, r.head_dim, r.dtype, r.arch) == (kernel, head_dim, dtype, arch)]
    assert rows, f"no {kernel} D={head_dim} {dtype} sm_{arch} spec in the report"
    for r in rows:
        assert r.tensor_core_ops > 0
        assert r.spill_bytes == 0


def test_flagged_matmul_kernels_use_tensor_cores(shipped):
    assert [r.kernel for r in shipped if r.matmul and r.tensor_core_ops <= 0] == []


def test_rope_kernels_are_elementwise(shipped):
    rope = [r for r in shipped if r.module == "lr_kernels.rope.fused"]
    assert {r.kernel for r in rope} == {"rope_fwd", "rope_bwd"}
    assert all(r.tensor_core_ops == 0 and r.spill_bytes == 0 and r.shared_bytes == 0 for r in rope)

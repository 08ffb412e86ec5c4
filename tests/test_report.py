"""The GPU compile report: its parsers on known text, probe kernels with known results, the builds it
records against what launches specialize, and the shipped kernels themselves.

GPU compilation runs in spawned worker processes (``report.run_report``): this test process runs Triton
kernels in the interpreter, which patches ``triton.language`` while it runs, and a compile in the same
process could fail or, with a warm cache, be silently skipped.
"""

from __future__ import annotations

import importlib
import json

import pytest
import torch

import lr_kernels as lk
from lr_kernels import report
from lr_kernels.attention import flash
from lr_kernels.cross_entropy.kernels import ce_kernel_config

ARCHS = (80, 90)
ATTENTION_MATMUL_KERNELS = ("attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq")


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


SASS_LOOPS = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   ISETP.GE.AND P0, PT, R0, 0x10, PT ;
        /*0020*/                   FFMA R2, R3, R4, R2 ;
        /*0030*/               @P0 BRA 0x20 ;
        /*0040*/                   LDG.E R5, [R2.64] ;
        /*0050*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0060*/                   FADD R6, R6, R7 ;
        /*0070*/                   HMMA.16816.F32.BF16 R16, R8, R14, R16 ;
        /*0080*/              @!P1 BRA 0x50 ;
        /*0090*/                   IADD3 R9, R9, 0x1, RZ ;
        /*00a0*/               @P2 BRA 0x40 ;
        /*00b0*/                   EXIT ;
        /*00c0*/                   BRA 0xc0;
"""


def test_main_loop_is_the_innermost_loop_with_tensor_cores():
    instructions = report.sass_instructions(SASS_LOOPS)
    assert len(instructions) == 13 and instructions[3] == (0x30, "@P0 BRA 0x20")
    # (2, 3): small FFMA loop; (5, 8): inner HMMA loop; (4, 10): outer loop around it; BRA-to-self ignored.
    assert sorted(report.sass_loops(instructions)) == [(2, 3), (4, 10), (5, 8)]
    assert report.main_loop_instructions(SASS_LOOPS) == 4
    without_tc = SASS_LOOPS.replace("HMMA.16816.F32.BF16", "FMUL")
    assert report.main_loop_instructions(without_tc) == 4  # largest innermost loop: (5, 8)
    assert report.main_loop_instructions("        /*0000*/  EXIT ;\n        /*0010*/  BRA 0x10;") == 0


def _result(**kw) -> report.KernelResult:
    base = dict(kernel="k", arch=80, dtype="bf16", head_dim=64, registers=100, spill_bytes=0)
    base.update(shared_bytes=1024, tensor_core_ops=8, hmma=8, hgmma=0, stack_bytes=0, matmul=True)
    base.update(loop_instructions=300)
    base.update(kw)
    return report.KernelResult(**base)


def test_problems_and_exit_codes(monkeypatch, capsys):
    clean = [_result(), _result(arch=90, hmma=0, hgmma=4, tensor_core_ops=4, rope=True, loop_ratio=1.15,
                                extra_registers=16)]  # fmt: skip
    assert report.problems(clean, check=True) == []
    spill = _result(spill_bytes=8)
    no_tc = _result(tensor_core_ops=0, hmma=0)
    big_smem = _result(arch=80, shared_bytes=200_000)
    slow_loop = _result(rope=True, loop_ratio=1.2, extra_registers=0)
    fat = _result(rope=True, loop_ratio=1.0, extra_registers=17)
    failed = _result(error="CompilationError: boom")
    assert len(report.problems([spill], check=False)) == 1
    assert report.problems([no_tc, big_smem, slow_loop, fat], check=False) == []
    found = report.problems([no_tc, big_smem, slow_loop, fat], check=True)
    assert len(found) == 4 and "1.20x" in found[2] and "+17 registers" in found[3]
    assert "boom" in report.problems([failed], check=False)[0]

    monkeypatch.setattr(report, "run_report", lambda *a, **k: clean)
    assert report.main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [list(r) for r in rows] == [list(report.JSON_KEYS)] * 2
    assert rows[1] == {"kernel": "k", "arch": 90, "dtype": "bf16", "head_dim": 64, "rope": True,
                       "registers": 100, "spill_bytes": 0, "shared_bytes": 1024, "tensor_core_ops": 4,
                       "loop_instructions": 300, "loop_ratio": 1.15}  # fmt: skip
    assert report.main(["--check"]) == 0
    table = capsys.readouterr().out
    assert "1.150" in table and "+16" in table
    monkeypatch.setattr(report, "run_report", lambda *a, **k: [*clean, spill])
    assert report.main([]) == 1
    assert "spills" in capsys.readouterr().err
    for bad in (no_tc, slow_loop, fat):
        monkeypatch.setattr(report, "run_report", lambda *a, b=bad, **k: [*clean, b])
        assert report.main([]) == 0
        assert report.main(["--check"]) == 1


def test_module_without_report_cases_is_a_clear_error(capsys):
    assert report.main(["--modules", "lr_kernels._common", "--arch", "90"]) == 2
    assert (
        "lr_kernels._common (listed in lr_kernels.report.MODULES) has no report_cases"
        in capsys.readouterr().err
    )


# ---- probe kernels, compiled in worker processes --------------------------------------------------


def test_probes_after_the_interpreter_ran_in_this_process(monkeypatch, tmp_path):
    """Run a kernel in the interpreter here, then compile for sm_80 and sm_90 with an empty Triton cache
    (so nothing is skipped): the report's worker processes must be untouched by the interpreter."""
    x = torch.randn(5, 2, 16)
    pos = torch.arange(5)
    inv_freq = torch.rand(8)
    got = lk.apply_rope(x, pos, inv_freq, backend="triton")
    torch.testing.assert_close(got, lk.apply_rope(x, pos, inv_freq, backend="torch"))
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path))
    results = {(r.case, r.arch): r for r in report.run_report(ARCHS, ["report_probes"])}
    assert [r.error for r in results.values() if r.error] == []
    assert any(tmp_path.iterdir()), "nothing was compiled into the empty cache"
    capped = results["dot maxnreg=32", 80]
    assert capped.registers <= 32 and capped.spill_bytes > 0 and capped.stack_bytes > 0
    for arch in ARCHS:
        dot, loop, add = (results[c, arch] for c in ("dot", "loop dot", "add"))
        assert dot.spill_bytes == 0 and dot.registers > 32 and dot.tensor_core_ops > 0
        assert dot.matmul and report.problems([dot], check=True) == []
        if arch == 80:
            assert dot.hmma > 0 and dot.hgmma == 0 and dot.tensor_core_ops == dot.hmma
        else:
            assert dot.tensor_core_ops == dot.hmma + dot.hgmma
        assert loop.loop_instructions > 0 and loop.tensor_core_ops > 0
        assert (add.tensor_core_ops, add.hmma, add.hgmma, add.spill_bytes) == (0, 0, 0, 0)
        assert add.loop_instructions == 0 and not add.matmul


# ---- the report builds what launches build -------------------------------------------------------


def _attention_call(group: int, causal: bool, rope: bool, tokens: int):
    def launch():
        q, k, v, cu, pos, freq = flash.report_case_inputs(torch.bfloat16, 128, group, rope, tokens, heads=8)
        cu = torch.tensor([0, 5, tokens], dtype=torch.int32)
        p = flash.AttentionParams(
            max_seqlen=tokens - 5, causal=causal, softmax_scale=0.1, attention_scaling=1.0
        )
        o, lse = flash.attention_fwd(q, k, v, cu, pos, freq, p)
        flash.attention_bwd(torch.zeros_like(o), q, k, v, o, lse, cu, pos, freq, p)

    return launch


_CALLS = [
    pytest.param(1, True, True, 4096, id="GROUP1-causal-rope-T4096"),
    pytest.param(4, False, True, 4099, id="GROUP4-full-rope-T4099"),
    pytest.param(8, True, False, 4099, id="GROUP8-causal-norope-T4099"),
    pytest.param(4, True, False, 4096, id="GROUP4-causal-norope-T4096"),
]


@pytest.mark.parametrize(("group", "causal", "rope", "tokens"), _CALLS)
def test_report_builds_equal_launch_builds(group, causal, rope, tokens):
    """What a launch hands to Triton's compiler (``JITFunction._do_compile``: signature, constexprs,
    alignment/divisibility attributes, options, target) equals what the report compiles from the build
    it recorded. Runs in a worker process: it needs real @triton.jit functions."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with report._compiler_environment(), ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        launched, replayed, divisible_t = pool.submit(_compare_builds, group, causal, rope, tokens).result()
    names = [name for name, _ in launched]
    assert names[:2] == (
        ["rope_fwd", "rope_table"] if rope else ["attention_fwd", "attention_bwd_preprocess"]
    )
    assert {"attention_fwd", "attention_bwd_dkdv", "attention_bwd_dq"} <= set(names)
    assert launched == replayed
    assert divisible_t == (tokens % 16 == 0)


def _compare_builds(group, causal, rope, tokens):
    import contextlib

    from triton.runtime.jit import JITFunction

    calls = []

    @contextlib.contextmanager
    def intercepted_compiles():
        # The point where a launch (or a preload) goes from specialization to compilation.
        def fake_do_compile(self, key, signature, device, constexprs, options, attrs, warmup):
            name = self.fn.__name__.removesuffix("_kernel")
            calls.append((name, repr((key, signature, constexprs, attrs, options))))

        original = JITFunction._do_compile
        JITFunction._do_compile = fake_do_compile
        try:
            with report._stand_in_gpu(90):
                yield
        finally:
            JITFunction._do_compile = original

    with intercepted_compiles():
        _attention_call(group, causal, rope, tokens)()
    launched, calls[:] = list(calls), []
    builds = report.record_builds(_attention_call(group, causal, rope, tokens), 90)
    with intercepted_compiles():
        for build in builds:
            getattr(importlib.import_module(build.module), build.qualname).preload(build.specialization)
    fwd = next(b for b in builds if b.kernel == "attention_fwd")
    t_index = flash.attention_fwd_kernel.arg_names.index("T")
    spec = json.loads(fwd.specialization)
    attrs = {tuple(k): v for k, v in zip(spec["attrs_keys"], spec["attrs_vals"], strict=True)}
    divisible_t = attrs[(t_index,)] == [["tt.divisibility", 16]]
    return list(dict.fromkeys(launched)), calls, divisible_t


# ---- the shipped kernels ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> list[report.KernelResult]:
    """Every build of every shipped case, for sm_80 and sm_90 (two compiles at a time)."""
    return report.run_report(ARCHS, report.MODULES)


def test_every_module_reports_for_every_arch(shipped):
    for module in report.MODULES:
        for arch in ARCHS:
            assert any(r.module == module and r.arch == arch for r in shipped), (module, arch)


def test_every_build_compiles(shipped):
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
@pytest.mark.parametrize("head_dim", [64, 128, 256])
@pytest.mark.parametrize("kernel", ATTENTION_MATMUL_KERNELS)
def test_fused_rope_costs_what_plain_attention_costs(shipped, kernel, head_dim, dtype, arch):
    rows = [
        r for r in shipped
        if (r.kernel, r.head_dim, r.dtype, r.arch, r.rope) == (kernel, head_dim, dtype, arch, True)
    ]  # fmt: skip
    assert len(rows) == 1, f"expected one fused {kernel} D={head_dim} {dtype} sm_{arch} row"
    r = rows[0]
    assert r.tensor_core_ops > 0 and r.spill_bytes == 0
    assert r.loop_instructions > 0 and r.loop_ratio is not None
    assert r.loop_ratio <= report.MAX_LOOP_RATIO
    assert r.extra_registers <= report.MAX_EXTRA_REGISTERS


def test_flagged_matmul_kernels_use_tensor_cores(shipped):
    assert [r.kernel for r in shipped if r.matmul and r.tensor_core_ops <= 0] == []


def test_report_check_passes(shipped):
    assert report.problems(shipped, check=True) == []


def test_elementwise_kernels_have_no_tensor_cores(shipped):
    names = {
        "rope_fwd",
        "rope_bwd",
        "rope_table",
        "attention_bwd_preprocess",
        "linear_ce_fwd",
        "token_entropy",
    }
    rows = [r for r in shipped if r.kernel in names]
    assert {r.kernel for r in rows} == names
    assert all(r.tensor_core_ops == 0 and r.spill_bytes == 0 for r in rows)


def test_cross_entropy_config_covers_small_and_large_vocabularies():
    assert ce_kernel_config(1) == (16, 1)
    assert ce_kernel_config(1000) == (1024, 4)
    assert ce_kernel_config(128256) == (2048, 8)

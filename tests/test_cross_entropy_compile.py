"""The cross-entropy Triton kernels compile for sm_80 / sm_90 with no register spills (no GPU needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lr_kernels.cross_entropy.kernels import ce_kernel_config, report_specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Compilation needs real @triton.jit functions, and the test session runs with TRITON_INTERPRET=1 (which
# turns every kernel into an interpreter object): compile in a child process without the interpreter.
_COMPILE = r"""
import json, os, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lr_kernels.cross_entropy.kernels import report_specs

cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
arch = int(sys.argv[1])
for spec in report_specs(arch):
    k = triton.compile(
        ASTSource(fn=spec.fn, signature=spec.signature, constexprs=spec.constexprs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
    )
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(k.asm["cubin"])
        res = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True, check=True)
    usage = res.stdout
    line = next(x for x in usage.splitlines() if "REG:" in x).strip()
    print(json.dumps({"kernel": spec.kernel, "dtype": spec.dtype, "usage": line}))
"""


@pytest.mark.parametrize("arch", [80, 90])
def test_report_specs_compile_without_spills(arch):
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": ROOT, "TRITON_DEFAULT_FP_FUSION": "1"}
    out = subprocess.run(
        [sys.executable, "-c", _COMPILE, str(arch)], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == len(report_specs(arch))
    for row in rows:
        usage = row["usage"]
        assert "STACK:0 " in usage and "LOCAL:0 " in usage, (
            f"{row['kernel']} {row['dtype']} sm_{arch}: {usage}"
        )


def test_report_specs_use_the_launcher_config():
    specs = report_specs(90)
    assert {"linear_ce_fwd+grad", "linear_ce_fwd_only", "token_entropy"} <= {s.kernel for s in specs}
    assert {s.dtype for s in specs} == {"fp32", "fp16", "bf16"}
    for spec in specs:
        assert (spec.constexprs["BV"], spec.num_warps) == ce_kernel_config(spec.extra["vocab"])


def test_kernel_config_covers_small_and_large_vocabularies():
    assert ce_kernel_config(1) == (16, 1)
    assert ce_kernel_config(1000) == (1024, 4)
    assert ce_kernel_config(128256) == (2048, 8)

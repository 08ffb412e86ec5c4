"""Every csrc/*.cu compiles with the machine's nvcc for sm_80 and sm_90 without errors or register spills,
and the shared header is plain host C++ as well."""

import glob
import os
import re
import shutil
import subprocess

import pytest

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
CU_FILES = sorted(glob.glob(os.path.join(CSRC, "*.cu")))
NVCC = shutil.which("nvcc")
SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def test_there_are_cuda_sources():
    assert CU_FILES, "csrc/ holds no .cu file"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("arch", [80, 90], ids=lambda a: f"sm{a}")
@pytest.mark.parametrize("source", CU_FILES, ids=os.path.basename)
def test_cu_compiles_without_spills(source, arch, tmp_path):
    run = subprocess.run(
        [
            NVCC,
            f"-arch=sm_{arch}",
            "-std=c++17",
            "-O3",
            "-Xptxas",
            "-v",
            f"-I{CSRC}",
            "-c",
            source,
            "-o",
            str(tmp_path / "out.o"),
        ],
        capture_output=True,
        text=True,
    )
    log = run.stdout + run.stderr
    assert run.returncode == 0, log
    assert "error" not in log.lower(), log
    spills = SPILL.findall(log)
    assert spills, f"no ptxas resource report in the log:\n{log}"
    assert all(stores == "0" and loads == "0" for stores, loads in spills), log


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a host C++ compiler")
def test_header_is_plain_host_cpp(tmp_path):
    src = tmp_path / "h.cpp"
    src.write_text('#include "lr_positions.h"\n#include "positions_launch.h"\nint main() { return 0; }\n')
    run = subprocess.run(
        ["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-fsyntax-only", f"-I{CSRC}", str(src)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr

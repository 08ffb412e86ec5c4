"""Every csrc/*.cu compiles with the machine's nvcc for sm_80 and sm_90 without errors or register spills,
and the shared header is plain host C++ as well. Every kernel launch is followed by a launch check, every
CUDA entry point of the bindings sets a device guard and uses its device's stream, and the bindings' CUDA
branch compiles."""

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


# ---- device guard and launch checks (no GPU here: read the sources, and compile the CUDA branch) -------

BINDINGS = os.path.join(CSRC, "bindings.cpp")
LAUNCH_HEADER = os.path.join(CSRC, "positions_launch.h")
LAUNCH_CHECK = "LR_LAUNCH_CHECK();"
CALL = re.compile(r"lr::(\w+_cuda)\(")


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _statement_end(src: str, start: int) -> int:
    """Index just past the ';' ending the statement whose argument list opens at or after ``start``."""
    depth, i = 0, src.index("(", start)
    while True:
        depth += {"(": 1, ")": -1}.get(src[i], 0)
        if depth == 0:
            return src.index(";", i) + 1
        i += 1


def unchecked_launches(src: str) -> list[str]:
    """Kernel launches (``<<<...>>>(...);``) not followed directly by ``LR_LAUNCH_CHECK();``."""
    bad = []
    for m in re.finditer(r"(\w+)<<<", src):
        end = _statement_end(src, src.index(">>>", m.end()))
        if not src[end:].lstrip().startswith(LAUNCH_CHECK):
            bad.append(m.group(1))
    return bad


def unguarded_calls(src: str) -> list[str]:
    """Launcher calls in bindings.cpp lacking a CUDAGuard earlier in their CUDA block, a check_launch
    around them, or the stream of the tensors' device (``stream_of``)."""
    bad = []
    for m in CALL.finditer(src):
        block = src[src.rindex("#ifdef LR_WITH_CUDA", 0, m.start()) : m.start()]
        guarded = re.search(r"c10::cuda::(Optional)?CUDAGuard \w+\(\w+\.device\(\)\);", block)
        checked = src[: m.start()].rstrip().endswith("check_launch(")
        on_stream = "stream_of(" in src[m.end() : _statement_end(src, m.start())]
        if not (guarded and checked and on_stream):
            bad.append(m.group(1))
    return bad


def test_every_kernel_launch_is_checked():
    sources = {path: _read(path) for path in CU_FILES}
    assert sum(src.count("<<<") for src in sources.values()) >= 6
    for path, src in sources.items():
        assert unchecked_launches(src) == [], path
    # the checker sees a missing check
    src = _read(CU_FILES[0])
    assert unchecked_launches(src.replace(LAUNCH_CHECK, "", 1))


def test_every_cuda_entry_point_is_guarded_and_checked():
    src = _read(BINDINGS)
    declared = set(re.findall(r"^int (\w+_cuda)\(", _read(LAUNCH_HEADER), flags=re.M))
    assert len(declared) == 5
    assert set(CALL.findall(src)) == declared, "every CUDA launcher must be called from a binding"
    assert unguarded_calls(src) == []
    # streams come from the tensors' device, never from whatever device is current
    assert "getCurrentCUDAStream()" not in src
    # the checker sees a missing guard, a missing check and a stream of the wrong device
    guard = "const c10::cuda::CUDAGuard device_guard(lengths.device());"
    assert src.count(guard) == 2
    assert unguarded_calls(src.replace(guard, "", 1)) == ["remap_positions_cuda"]
    assert unguarded_calls(src.replace("check_launch(lr::split", "(lr::split", 1)) == ["split_flags_cuda"]
    assert unguarded_calls(src.replace("stream_of(ids)));", "nullptr));", 1)) == ["split_flags_cuda"]


def _cuda_include_dir() -> str | None:
    # nvcc on PATH may be a wrapper script, so /usr/local/cuda is tried as well
    nvcc_root = os.path.dirname(os.path.dirname(os.path.realpath(NVCC))) if NVCC else None
    for root in filter(None, (os.environ.get("CUDA_HOME"), nvcc_root, "/usr/local/cuda")):
        for sub in ("include", "targets/x86_64-linux/include"):
            if os.path.exists(os.path.join(root, sub, "cuda_runtime_api.h")):
                return os.path.join(root, sub)
    return None


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a host C++ compiler")
@pytest.mark.skipif(_cuda_include_dir() is None, reason="needs the CUDA toolkit headers")
def test_bindings_compile_with_cuda():
    """bindings.cpp's CUDA branch (guards, streams, launch checks) compiles against torch's c10/cuda headers.

    A CPU build of torch ships those headers but not the generated cuda_cmake_macros.h, which only sets
    export macros: C10_CUDA_NO_CMAKE_CONFIGURE_FILE skips it. Syntax only: linking needs a CUDA torch.
    """
    import sysconfig

    from torch.utils.cpp_extension import include_paths

    includes = [*include_paths(), sysconfig.get_paths()["include"], _cuda_include_dir()]
    run = subprocess.run(
        ["g++", "-std=c++20", "-fsyntax-only", "-DLR_WITH_CUDA", "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
         *(f"-isystem{p}" for p in includes), f"-I{CSRC}", BINDINGS],
        capture_output=True,
        text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]

"""Build and install lr_kernels + lr_train.

The extension ``lr_kernels._C`` is always built for the CPU (C++); its CUDA kernels are added when the
installed torch is a CUDA build and a CUDA toolkit is found. Set ``LR_KERNELS_NO_CUDA=1`` to skip them.
Torch must already be installed: ``pip install --no-build-isolation .``.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:
    sys.exit(
        "lr_kernels builds its extension against the torch you already have. Install torch first "
        "(CPU: pip install torch==2.13.0), then: pip install --no-build-isolation ."
    )

here = os.path.dirname(os.path.abspath(__file__))


def _read(name: str) -> str:
    with open(os.path.join(here, name), encoding="utf-8") as f:
        return f.read()


def _extensions():
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    if not cpp:
        return []
    with_cuda = (
        bool(cu)
        and os.environ.get("LR_KERNELS_NO_CUDA", "0") in ("", "0")
        and torch.version.cuda is not None
        and CUDA_HOME is not None
    )
    cxx = ["-O3", "-std=c++20"]  # torch >= 2.10 headers use C++20 features
    if sys.platform != "win32":
        cxx.append("-fopenmp")
    link = ["-fopenmp"] if sys.platform != "win32" else []
    if with_cuda:
        return [
            CUDAExtension(
                "lr_kernels._C",
                cpp + cu,
                include_dirs=[os.path.join(here, "csrc")],
                define_macros=[("LR_WITH_CUDA", "1")],
                extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "-std=c++17", "--use_fast_math"]},
                extra_link_args=link,
            )
        ]
    return [
        CppExtension(
            "lr_kernels._C",
            cpp,
            include_dirs=[os.path.join(here, "csrc")],
            extra_compile_args=cxx,
            extra_link_args=link,
        )
    ]


setup(
    name="lr-kernels",
    version="0.1.0",
    description=(
        "LongRecipe: fused RoPE varlen attention, fused cross-entropy and data tools for long-context "
        "training"
    ),
    long_description=_read("README.md"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lr_kernels", "lr_kernels.*", "lr_train", "lr_train.*"]),
    package_data={"lr_train": ["assets/*", "assets/**/*"]},
    install_requires=[
        "torch>=2.4",
        "triton>=3.2; platform_system == 'Linux'",
        "numpy>=1.24",
        "tqdm>=4.60",
    ],
    extras_require={
        "train": [
            "transformers>=5.0,<6",
            "accelerate>=1.0",
            "safetensors>=0.4",
            "tokenizers>=0.20",
            "datasets>=2.14",
            "torch-optimi>=0.3,<0.4",
            "matplotlib>=3.7",
        ],
        "dev": [
            "transformers>=5.0,<6",
            "accelerate>=1.0",
            "safetensors>=0.4",
            "tokenizers>=0.20",
            "datasets>=2.14",
            "torch-optimi>=0.3,<0.4",
            "matplotlib>=3.7",
            "pytest>=8",
            "pytest-benchmark>=4",
            "ruff>=0.6",
            "ninja",
        ],
    },
    ext_modules=_extensions(),
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["lr-train=lr_train.__main__:main"]},
    zip_safe=False,
)

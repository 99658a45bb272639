"""Builds the cffi API-mode extension pyxdp (native/pyxdp_build.py) and installs the xskproxy
packages. The BPF program and the C tools are CMake's (CMakeLists.txt), not this file's."""
from setuptools import setup

setup(
    name="xskproxy",
    version="0.1.0",
    description="Userspace packet dataplane for Kubernetes nodes on AF_XDP",
    packages=["dataplane", "control", "lab"],
    python_requires=">=3.11",
    install_requires=["cffi>=1.17", "numpy", "numba"],
    cffi_modules=["native/pyxdp_build.py:ffibuilder"],
    entry_points={"console_scripts": ["xskproxy = control.cli:main"]},
    zip_safe=False,
)

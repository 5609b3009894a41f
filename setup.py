from pathlib import Path

from setuptools import find_packages, setup

version = next(line.split('"')[1] for line in Path("fastwavenet/__init__.py").read_text().splitlines()
               if line.startswith("__version__"))

setup(
    name="fastwavenet",
    version=version,
    description="Fast WaveNet generation: per-layer activation queues, fused numba and Triton kernels",
    long_description=Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    # Every package under fastwavenet/ (found, so a new subpackage cannot be left out), and kernels/ installed as
    # fastwavenet.kernels, never as a top-level `kernels`.
    packages=find_packages(include=["fastwavenet", "fastwavenet.*"]) + ["fastwavenet.kernels"],
    package_dir={"fastwavenet": "fastwavenet", "fastwavenet.kernels": "kernels"},
    package_data={"fastwavenet": ["models/*.safetensors"]},
    install_requires=[
        "torch>=2.1,<2.14",
        "numpy>=1.24",
        "soundfile>=0.12",
        "librosa>=0.10",
        "numba>=0.58",
        "safetensors>=0.4",
        "tqdm>=4.60",
    ],
    extras_require={
        # wavenet_vocoder: r9y9's own code, the reference that imported r9y9 models are tested against.
        "test": ["pytest>=7", "pytest-xdist>=3", "pytest-benchmark>=4", "triton>=3.0", "h5py>=3.8", "matplotlib>=3.7", "aiohttp>=3.14.4",
                 "prometheus-client>=0.17", "wavenet_vocoder==0.1.1", "scipy>=1.8",
                 "onnx>=1.15", "onnxruntime>=1.17"],
        "gpu": ["triton>=3.0"],
        "import": ["h5py>=3.8"],
        "onnx": ["onnx>=1.15", "onnxruntime>=1.17"],  # fastwavenet export MODEL -o step.onnx; the onnxruntime backend
        "plot": ["matplotlib>=3.7"],
        "serve": ["aiohttp>=3.14.4", "prometheus-client>=0.17"],
    },
    entry_points={"console_scripts": ["fastwavenet=fastwavenet.__main__:run"]},
)

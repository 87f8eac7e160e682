"""grdnet_tf: GRD-Net anomaly detection in TensorFlow 2.21 / Keras 3."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    # TensorFlow 2.21 brings Keras 3; tensorboard is no longer pulled in by TF.
    "tensorflow==2.21.0",
    "keras==3.15.1",
    "tensorboard==2.21.0",
    "numpy==2.4.6",
    "opencv-python-headless==5.0.0.93",
    "scikit-learn==1.9.1",
    "scipy==1.17.1",  # grdnet_tf/evaluation/metrics.py (connected components of AUPRO)
    "absl-py==2.5.1",
    "ml-collections==1.1.0",
    "matplotlib==3.11.2",
    # NOT tensorflow-addons: end-of-life and broken on Keras 3 (see README).
]

# grdnet-export --format=onnx|litert (grdnet_tf/serving/edge.py) and their runtimes.
EDGE_REQUIRES = [
    "tf2onnx==1.17.0",
    "onnx==1.23.2",
    "onnxruntime==1.31.1",
    "ai-edge-litert==2.3.0",   # the LiteRT interpreter (tf.lite.Interpreter is deprecated)
]

setup(
    name="grdnet_tf",
    version="0.1.0",
    description="GRD-Net (Generative-Reconstructive-Discriminative anomaly detection "
                "with ROI attention) for TensorFlow 2.21 / Keras 3",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # The top-level configs/ folder ships inside the package as grdnet_tf.configs, so an
    # installed grdnet-train takes --config=cpu_small without the checkout.
    packages=find_packages(include=["grdnet_tf", "grdnet_tf.*"]) + ["grdnet_tf.configs"],
    package_dir={"grdnet_tf.configs": "configs"},
    # numpy 2.4, scipy 1.17, scikit-learn 1.9 and matplotlib 3.11 need Python >= 3.11;
    # tensorflow 2.21 has wheels up to 3.13. Tested on 3.11 (the lowest).
    python_requires=">=3.11,<3.14",
    install_requires=INSTALL_REQUIRES,
    extras_require={"edge": EDGE_REQUIRES,
                    # the parity tests of the edge formats run in CI
                    "test": ["pytest==9.2.0", "pytest-xdist==3.8.0"] + EDGE_REQUIRES},
    entry_points={
        "console_scripts": [
            "grdnet-train=grdnet_tf.bin.train:run",
            "grdnet-eval=grdnet_tf.bin.evaluate:run",
            "grdnet-calibrate=grdnet_tf.bin.calibrate:run",
            "grdnet-predict=grdnet_tf.bin.predict:run",
            "grdnet-export=grdnet_tf.bin.export:run",
            "grdnet-demo-data=grdnet_tf.bin.make_demo_data:run",
            "grdnet-roi=grdnet_tf.bin.roi:run",
        ]
    },
)

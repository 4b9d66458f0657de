"""medtl: train radiology classifiers from small clinical datasets."""

__version__ = "0.1.0"

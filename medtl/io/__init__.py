"""Image input: DICOM, PNG and JPEG files -> float32 (H, W) arrays in [0, 1], air dark.

No TensorFlow here: worker processes that only decode images import this package alone.

Example:
    >>> from medtl.io import read_image, read_header
    >>> img = read_image("chest.dcm")            # VOI LUT / window from the file, MONOCHROME1 inverted
    >>> read_header("chest.dcm")["Modality"]
    'CR'
"""

from medtl.io.dicom import is_dicom, read_dicom, read_header
from medtl.io.errors import ImageReadError
from medtl.io.image import read_image

__all__ = ["ImageReadError", "is_dicom", "read_dicom", "read_header", "read_image"]

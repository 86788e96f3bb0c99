"""Camera sources for the vision stations: an OpenCV device, an RTSP / HTTP stream, or a folder
of images. Each keeps only its newest frame, reconnects on its own and reports its health.

This package imports numpy and OpenCV: the agent imports it only when stations are configured.
"""

from drivers.camera.frames import (
    CameraHealth,
    CameraUnavailable,
    Frame,
    Image,
    InvalidCameraSource,
)
from drivers.camera.source import CameraSource, open_camera

__all__ = [
    "CameraHealth",
    "CameraSource",
    "CameraUnavailable",
    "Frame",
    "Image",
    "InvalidCameraSource",
    "open_camera",
]

"""The slide adapter: reading whole-slide images (OpenSlide) for validation, thumbnails and metadata.

Other layers import from this package, never from its modules, so the modules can be split
without touching their callers.
"""

from scanner_agent.slides.barcode import find_barcode
from scanner_agent.slides.quality import assess_thumbnail
from scanner_agent.slides.validate import SlideInfo, read_properties, slide_file, validate_slide
from scanner_agent.slides.worker import SlideWorkers, WorkerFailed

__all__ = [
    "SlideInfo",
    "SlideWorkers",
    "WorkerFailed",
    "assess_thumbnail",
    "find_barcode",
    "read_properties",
    "slide_file",
    "validate_slide",
]

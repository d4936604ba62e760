"""DICOM whole-slide images (a folder of VL Whole Slide Microscopy instances), OpenSlide vendor ``dicom``.

One instance per pyramid level (``ImageType`` ``.../VOLUME``, ``TILED_FULL``, tiles as frames) plus
a ``LABEL`` instance, all in one series. Pixels are uncompressed RGB (transfer syntax Explicit VR
Little Endian), which OpenSlide's DICOM driver reads and pydicom writes without any codec; the
barcode, when given, is ``BarcodeValue`` (OpenSlide: ``dicom.BarcodeValue`` and
``openslide.barcode``).

Written with pydicom (a test dependency): ``wsidicomizer``, which converts other slides to DICOM,
needs Python 3.12 for its current releases, and ``wsidicom`` alone only writes from such a source.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scanner_agent.testing.artwork import Artwork, label_image
from scanner_agent.testing.tiling import level_sizes, tiles

VL_WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def write_dicom_wsi(
    folder: Path,
    *,
    barcode: str | None = None,
    width: int = 1024,
    height: int = 768,
    tile: int = 256,
    seed: int = 0,
) -> Path:
    """Write a DICOM WSI series into ``folder`` (``level-0.dcm``, ``level-1.dcm``..., ``label.dcm``)."""
    from pydicom.uid import generate_uid  # a test dependency: imported only when a slide is made

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if tile < 16 or width < 1 or height < 1:
        raise ValueError(f"bad DICOM WSI geometry {width}x{height}, tile {tile}")
    art = Artwork(width, height, seed=seed)
    study, series, frame_of_ref = generate_uid(), generate_uid(), generate_uid()
    levels = level_sizes(width, height, tile)
    for level, size in enumerate(levels):
        _write_instance(
            folder / f"level-{level}.dcm",
            flavor="VOLUME",
            frames=list(tiles(art, size, tile, level)),
            total=size,
            tile=(tile, tile),
            spacing_mm=0.00025 * (width / size[0]),
            instance=level + 1,
            uids=(study, series, frame_of_ref),
            barcode=barcode,
        )
    label = label_image(barcode, seed)
    _write_instance(
        folder / "label.dcm",
        flavor="LABEL",
        frames=[label],
        total=(label.shape[1], label.shape[0]),
        tile=(label.shape[1], label.shape[0]),
        spacing_mm=0.03,
        instance=len(levels) + 1,
        uids=(study, series, frame_of_ref),
        barcode=barcode,
    )
    return folder


def _write_instance(
    path: Path,
    *,
    flavor: str,
    frames: list[np.ndarray],
    total: tuple[int, int],
    tile: tuple[int, int],
    spacing_mm: float,
    instance: int,
    uids: tuple[str, str, str],
    barcode: str | None,
) -> None:
    """One instance (a pyramid level or the label): ``uids`` are the study, series and frame of reference."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID, generate_uid

    study, series, frame = uids
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(VL_WSI)
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = UID(EXPLICIT_VR_LE)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = VL_WSI
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.FrameOfReferenceUID = frame
    ds.Modality = "SM"
    ds.Manufacturer = "scanner-agent synthetic"
    ds.PatientName = "Synthetic^Slide"
    ds.PatientID = "SYNTHETIC"
    ds.StudyDate = "20260101"
    ds.ContentDate = "20260101"
    ds.ContentTime = "090000"
    ds.InstanceNumber = instance
    ds.ImageType = ["ORIGINAL", "PRIMARY", flavor, "NONE"]
    ds.ContainerIdentifier = barcode or "unknown"
    if barcode is not None:
        ds.BarcodeValue = barcode
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.Columns, ds.Rows = tile
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = total
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfFocalPlanes = 1
    ds.NumberOfFrames = len(frames)
    ds.DimensionOrganizationType = "TILED_FULL"
    ds.ImagedVolumeWidth = total[0] * spacing_mm
    ds.ImagedVolumeHeight = total[1] * spacing_mm
    measures = Dataset()
    measures.PixelSpacing = [spacing_mm, spacing_mm]
    measures.SliceThickness = 0.001
    shared = Dataset()
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    optical = Dataset()
    optical.OpticalPathIdentifier = "1"
    optical.ObjectiveLensPower = 40
    ds.OpticalPathSequence = Sequence([optical])
    ds.PixelData = b"".join(np.ascontiguousarray(f, dtype=np.uint8).tobytes() for f in frames)
    ds.save_as(path, enforce_file_format=True)

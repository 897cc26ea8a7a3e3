"""The class bench's CT phantom (tests/synth.py ct_phantom_series) looks like a CT where it matters
for bytes and for the viewer: HU of air, lung, soft tissue and bone, the noise, the padding, the geometry."""

import numpy as np
import pydicom

from .synth import ct_phantom_series, ct_phantom_slice

MM = 0.78125


def _px(x_mm: float, y_mm: float) -> tuple[int, int]:
    """(row, column) of a point in mm from the image centre (x to the image right, y down)."""
    return int((y_mm + 200) / MM), int((x_mm + 200) / MM)


def _region(hu: np.ndarray, x_mm: float, y_mm: float, half_mm: float = 8) -> np.ndarray:
    r, c = _px(x_mm, y_mm)
    h = int(half_mm / MM)
    return hu[r - h:r + h, c - h:c + h]


def test_phantom_series_geometry_and_tags(tmp_path):
    paths = ct_phantom_series(tmp_path / "ct", 12)
    assert [p.name for p in paths] == [f"CT{i:05d}.dcm" for i in range(1, 13)]
    sets = [pydicom.dcmread(p) for p in paths]
    z = [float(ds.ImagePositionPatient[2]) for ds in sets]
    assert np.allclose(np.diff(z), -2.5)                        # Instance Number 1 the most superior
    assert [ds.InstanceNumber for ds in sets] == list(range(1, 13))
    ds = sets[0]
    assert (ds.Rows, ds.Columns, ds.BitsStored, ds.PixelRepresentation) == (512, 512, 16, 1)
    assert (ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType) == (1, -1024, "HU")
    assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in ds.PixelSpacing] == [MM, MM] and float(ds.SliceLocation) == z[0]
    assert ds.PixelPaddingValue == -2000 and len({d.FrameOfReferenceUID for d in sets}) == 1
    assert len({d.SeriesInstanceUID for d in sets}) == 1 and len({d.SOPInstanceUID for d in sets}) == 12
    assert ds.pixel_array.dtype == np.int16


def test_phantom_values_noise_and_padding():
    top, low = ct_phantom_slice(1200, 0.0), ct_phantom_slice(950, 1.0)
    for img in (top, low):
        assert img[0, 0] == img[511, 511] == img[0, 511] == -2000           # outside the reconstruction circle
        r, c = np.mgrid[0:512, 0:512]
        inside = np.hypot(r - 255.5, c - 255.5) * MM < 199
        assert (img[inside] >= 0).all()                                       # clipped at -1024 HU, no padding inside
    hu_top, hu_low = top.astype(float) - 1024, low.astype(float) - 1024
    air = _region(hu_top, 0, -160)
    assert abs(air.mean() + 1000) < 4 and 8 < air.std() < 14
    lung = _region(hu_top, -80, 10, 6)
    assert abs(np.median(lung) + 850) < 15
    liver = _region(hu_low, -45, 0)
    assert abs(liver.mean() - 58) < 4 and 10 < liver.std() < 14               # sigma ~12 HU after the kernel
    assert 180 < _region(hu_low, 0, 74, 4).mean() < 300                       # cancellous bone of the vertebra
    assert abs(np.median(_region(hu_low, 0, -97, 2)) - 50) < 10              # the anterior muscle wall
    assert abs(np.median(_region(hu_low, 0, -108, 2)) + 100) < 10            # subcutaneous fat
    # correlated noise as a reconstruction kernel makes it: neighbours agree more than white noise would
    d = liver - liver.mean()
    assert (d[:, 1:] * d[:, :-1]).mean() / d.var() > 0.3


def test_phantom_anatomy_changes_smoothly_along_z():
    def coarse(t: float) -> np.ndarray:
        img = ct_phantom_slice(1000 + t, t).astype(float)
        return img.reshape(64, 8, 64, 8).mean(axis=(1, 3))                    # 8x8 blocks: noise averaged out
    a, b, far = coarse(0.50), coarse(0.51), coarse(0.95)
    near_change, far_change = np.abs(b - a).mean(), np.abs(far - a).mean()
    assert near_change * 5 < far_change
    assert far_change > 20                                                    # the lungs give way to the liver

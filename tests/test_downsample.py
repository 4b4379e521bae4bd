"""DCT downsampling: keeps low frequencies, keeps the voxel size, halves oversampling."""

import numpy as np
import pytest
import scipy.fft as sfft

from shared.physics.errors import InputError
from shared.physics import downsample, fourier


def box(n, half):
    x = np.indices((n,) * 3) - n // 2
    return ((np.abs(x[0]) < half[0]) & (np.abs(x[1]) < half[1]) & (np.abs(x[2]) < half[2])).astype(np.complex64)


def test_constant_and_low_frequencies_are_kept():
    assert np.allclose(downsample.dct_downsample(np.full((64,) * 3, 3.0)), 3.0, atol=1e-5)
    # A DCT-II basis function of low order is a low-frequency cosine: it survives unchanged in shape.
    coeffs = np.zeros((64,) * 3)
    coeffs[2, 1, 3] = 1.0
    coarse = downsample.dct_downsample(sfft.idctn(coeffs, norm="ortho"))
    back = sfft.dctn(coarse, norm="ortho")
    assert np.argmax(np.abs(back)) == np.ravel_multi_index((2, 1, 3), (32,) * 3)
    assert np.sum(back**2) - back[2, 1, 3] ** 2 < 1e-10


def test_the_transform_pair_is_the_dct_of_the_whole_volume_truncated():
    """Done one axis at a time as a (kept × points) matrix, it is the textbook definition: the orthonormal DCT-II
    of the whole volume, its low block kept, inversely transformed (scaled to keep the mean), axes of any length."""
    volume = np.random.default_rng(3).random((21, 18, 32))
    sizes = (8, 11, 32)
    low = sfft.dctn(volume, norm="ortho")[:8, :11, :32]
    expected = sfft.idctn(low, norm="ortho") * np.sqrt(np.prod(np.array(sizes) / np.array(volume.shape)))
    np.testing.assert_allclose(downsample.dct_downsample(volume, sizes), expected, rtol=1e-5, atol=1e-6)


def test_the_network_input_in_single_precision_is_the_double_precision_one():
    """The ingest's network inputs take the DCT in float32 (2.5× faster): normalised to the peak, they are the
    float64 transform's to 1e-6."""
    rng = np.random.default_rng(5)
    frames, rows = np.arange(90)[:, None, None], np.arange(72)
    spot = np.exp(-((rows[None, :, None] - 36) ** 2 + (rows[None, None, :] - 35) ** 2) / 50.0)
    volume = (rng.poisson(0.2, (90, 72, 72)) + 1e4 * np.exp(-((frames - 45) ** 2) / 120.0) * spot).astype(np.float32)
    centre = (45, 36, 35)
    crop = downsample.crop_shape(volume, centre)
    double = np.clip(downsample.dct_downsample(np.sqrt(downsample.crop_around(volume, centre, crop))), 0, None)
    np.testing.assert_allclose(downsample.network_input(volume, centre=centre, crop=crop), double / double.max(),
                               atol=1e-6)


def test_oversampling_is_the_autocorrelations_extent_as_the_textbook_takes_it():
    """From half of a real FFT, it is the textbook's measure: the span of |IFFT(I)| above 1 % of its maximum,
    fftshifted, per axis, on grids of odd and even lengths, with the crystal anywhere, unmeasured voxels (NaN)
    and negative values (background subtracted) counting as nothing."""
    from shared.physics.metrics import spans

    def textbook(volume):
        vol = np.clip(np.nan_to_num(volume), 0, None)
        auto = np.abs(sfft.fftshift(sfft.ifftn(sfft.ifftshift(vol))))
        return np.array([2.0 * n / (last - first + 1)
                         for n, (first, last) in zip(vol.shape, spans(auto > 0.01 * auto.max()))])

    rng = np.random.default_rng(5)
    for shape, half, at in [((32, 32, 32), (5, 7, 4), 0), ((33, 40, 27), (6, 4, 5), 5), ((21, 64, 50), (3, 12, 9), -9)]:
        x = np.indices(shape) - (np.array(shape) // 2 + at)[:, None, None, None]
        obj = (np.abs(x[0]) < half[0]) & (np.abs(x[1]) < half[1]) & (np.abs(x[2]) < half[2])
        intensity = np.abs(sfft.fftshift(sfft.fftn(obj * np.exp(1j * rng.uniform(0, 0.5, shape))))) ** 2
        intensity[0, 0, :3] = np.nan  # a corner of the detector not measured
        intensity[1, 1, 1] = -4.0
        measured = downsample.oversampling(intensity)
        assert np.all(measured > 2.5)  # the crystal fills less than a third of each axis
        np.testing.assert_allclose(measured, textbook(intensity))


def test_high_frequencies_are_removed():
    coeffs = np.zeros((64,) * 3)
    coeffs[40, 0, 0] = 1.0
    assert np.abs(downsample.dct_downsample(sfft.idctn(coeffs, norm="ortho"))).max() < 1e-6


def test_voxel_size_is_kept_and_oversampling_halved():
    obj = box(64, (6, 8, 5))  # fits in 32 voxels: oversampling ≥ 4 on 64³
    magnitude = np.abs(fourier.far_field(obj))
    small = downsample.dct_downsample(magnitude)
    small /= small.max()
    # Same voxel size, half the field of view: the object on a 32³ grid, sampled at the
    # DCT grid's positions (half an original pixel off centre).
    ramp = np.exp(-1j * np.pi * np.indices(obj.shape).sum(0) / 64)
    same_voxel = np.abs(fourier.far_field(obj * ramp))[::2, ::2, ::2]
    same_voxel /= same_voxel.max()
    # The alternative reading, a 2× binned object (voxel doubled), does not match.
    binned = np.abs(fourier.far_field(obj.reshape(32, 2, 32, 2, 32, 2).mean((1, 3, 5))))
    binned /= binned.max()
    err_same = np.linalg.norm(small - same_voxel) / np.linalg.norm(same_voxel)
    err_binned = np.linalg.norm(small - binned) / np.linalg.norm(binned)
    assert err_same < 0.1 < err_binned
    # Same voxel size in half the field of view: the oversampling ratio is halved.
    ratio = downsample.oversampling(magnitude**2) / downsample.oversampling(same_voxel**2)
    assert np.allclose(ratio, 2.0, rtol=0.1)


def test_oversampling_estimate_matches_box():
    obj = box(64, (6, 8, 5))  # extents 11, 15, 9 voxels
    sigma = downsample.oversampling(fourier.intensity(obj))
    assert np.allclose(sigma, 64 / np.array([11, 15, 9]), rtol=0.15)


def test_network_input_centres_and_normalises():
    obj = box(96, (6, 7, 5))
    intensity = np.roll(fourier.intensity(obj), (5, -7, 3), axis=(0, 1, 2))
    assert downsample.bragg_peak(intensity) == (53, 41, 51)
    net_in = downsample.network_input(intensity)
    assert net_in.shape == (32, 32, 32) and net_in.dtype == np.float32
    assert net_in.max() == pytest.approx(1.0)
    assert np.allclose(np.unravel_index(np.argmax(net_in), net_in.shape), 16, atol=1)


def test_bad_volumes_are_rejected():
    with pytest.raises(InputError):
        downsample.network_input(np.zeros((40, 40, 40)))
    with pytest.raises(InputError):
        downsample.network_input(np.ones((20, 40, 40)))
    with pytest.raises(InputError):
        downsample.dct_downsample(np.ones((16, 16, 16)))


def test_a_region_of_interest_gives_the_same_network_input():
    """Oversampling is measured on a box around the peak, so a detector region of interest that holds
    that box gives the network exactly the input the whole detector gives (at a fraction of the cost)."""
    from shared.physics import crystals, fourier

    amp, phase, _ = crystals.random_crystal(48, np.random.default_rng(5), max_strain=2e-3)
    pattern = fourier.intensity(fourier.make_object(amp, phase))  # 48³, peak at 24
    whole = np.full((48, 300, 300), 0.5, np.float32)
    whole[:, 100:148, 130:178] += pattern
    peak = downsample.bragg_peak(whole)
    roi = whole[:, peak[1] - 70:peak[1] + 70, peak[2] - 70:peak[2] + 70]
    roi_peak = (peak[0], 70, 70)
    assert downsample.crop_shape(whole, peak) == downsample.crop_shape(roi, roi_peak)
    assert np.array_equal(downsample.network_input(whole, centre=peak), downsample.network_input(roi, centre=roi_peak))


def test_oversampling_of_nothing_measured_yet():
    """The box around a partial scan's peak can still be empty: a neutral ratio, not an error."""
    assert np.array_equal(downsample.oversampling(np.zeros((8, 8, 8), np.float32)), [2.0, 2.0, 2.0])

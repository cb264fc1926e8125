"""Teacher labels: overlapping tiles give a local network's whole-image output exactly, and
the ×8 self-ensemble is the mean over the eight flips and rotations."""
import pytest
import torch
from torch import nn

from training.teacher_labels import TeacherLabels, self_ensemble, tile_starts


def local_network(seed=0, radius=2):
    """Two 3×3 convolutions with a nonlinearity between: receptive radius 2, not symmetric."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GELU(), nn.Conv2d(8, 3, 3, padding=1)).eval()


@pytest.mark.parametrize("size", [(70, 301), (64, 64), (129, 65)])
def test_overlapping_tiles_give_a_local_networks_whole_image_output(size):
    network = local_network()
    images = torch.rand(2, 3, *size)
    with torch.no_grad():
        whole = network(images)
    labels = TeacherLabels(network, tile=48, overlap=16, batch_size=3)(images)  # blind quarter: 4 px
    assert labels.shape == whole.shape and torch.isfinite(labels).all()
    assert torch.allclose(labels, whole, atol=1e-5)


def test_tiles_cover_every_pixel_with_at_least_the_overlap_between_neighbours():
    for length in (48, 49, 80, 81, 300):
        starts = tile_starts(length, 48, 16)
        assert starts[0] == 0 and starts[-1] + 48 == max(length, 48)
        assert all(a + 48 - b >= 16 for a, b in zip(starts, starts[1:]))


def test_the_self_ensemble_of_a_convolution_is_the_convolution_by_its_symmetrised_kernel():
    """Averaging a linear filter over D4 averages its kernel over D4: an independent check
    that every flip and rotation is applied and undone correctly."""
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 1, 5, padding=2, bias=False)
    kernel = conv.weight.detach()[0, 0]
    # The eight symmetries of a square kernel: its four quarter turns and those of its transpose.
    symmetric = torch.stack([torch.rot90(k, turns, dims=(0, 1))
                             for k in (kernel, kernel.T) for turns in range(4)]).mean(0)
    image = torch.rand(2, 1, 23, 31)
    expected = nn.functional.conv2d(image, symmetric[None, None], padding=2)
    with torch.no_grad():
        assert torch.allclose(self_ensemble(conv, image), expected, atol=1e-5)
        assert not torch.allclose(conv(image), expected, atol=1e-3)


def test_the_ensemble_runs_on_every_tile():
    network = local_network(seed=2)
    images = torch.rand(1, 3, 100, 90)
    with torch.no_grad():
        whole = self_ensemble(network, images)
    labels = TeacherLabels(network, tile=40, overlap=16, ensemble=True)(images)
    assert torch.allclose(labels, whole, atol=1e-5)


def test_labels_carry_no_gradient_and_bad_tiling_is_refused():
    network = local_network()
    labels = TeacherLabels(network, tile=32, overlap=8)(torch.rand(1, 3, 40, 40))
    assert not labels.requires_grad
    with pytest.raises(ValueError, match="overlap"):
        TeacherLabels(network, tile=32, overlap=32)

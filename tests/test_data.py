"""lbt_plugin.data: idx files read from a root, names checked, the stacked dataset drawn as the protocol says."""
import pytest
import torch

from lbt_plugin.data import DATASETS, load_idx_dataset, stack_channels


def test_load_idx_dataset_reads_a_root_and_names_the_datasets_it_knows(digits, tmp_path):
    images, labels = load_idx_dataset("fashion-mnist", digits)
    assert images.shape == (64, 28, 28) and images.dtype == torch.uint8 and labels.shape == (64,)
    with pytest.raises(ValueError, match="choose from fashion-mnist, mnist"):
        load_idx_dataset("digits", digits)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_idx_dataset("mnist", tmp_path / "nowhere")
    assert DATASETS == ("fashion-mnist", "mnist")


def test_stack_channels_draws_each_channel_from_the_images():
    """Image j is the constant j, so every channel says which image it was drawn from."""
    n = 500
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    stacked = stack_channels(images)
    assert stacked.shape == (n, 3, 4, 4)
    source = stacked[:, :, 0, 0].long()  # [N, 3]: the image each channel came from
    assert torch.equal(stacked, images[source.reshape(-1), 0].view(n, 3, 4, 4))  # whole images, not mixed
    # the three channels are drawn independently, uniformly over all images
    assert (source[:, 0] != source[:, 1]).float().mean() > 0.9 and (source[:, 1] != source[:, 2]).float().mean() > 0.9
    assert len(source.unique()) > 0.8 * n  # 1 - (1 - 1/n)^(3n) = 95% of the images expected
    assert torch.equal(stack_channels(images), stacked)  # the same seed, the same set
    assert not torch.equal(stack_channels(images, seed=1), stacked)
    with pytest.raises(ValueError, match=r"single-channel images \[N >= 1, 1, H, W\]"):
        stack_channels(torch.zeros(4, 3, 8, 8))

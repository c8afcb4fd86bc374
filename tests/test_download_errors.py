"""A torchvision dataset that cannot be had: the message says which failure it was and what to do."""

import errno
import tarfile
import urllib.error

import pytest
import torchvision.datasets

from extract.datasets.builtin import torchvision_dataset
from extract.errors import UsageError


@pytest.mark.parametrize("error, says", [
    (OSError(errno.ENOSPC, "No space left on device"), "filled up"),
    (tarfile.ReadError("unexpected end of data"), "is damaged"),
    (EOFError("Compressed file ended before the end-of-stream marker was reached"), "is damaged"),
    (urllib.error.URLError("[Errno -3] Temporary failure in name resolution"), "could not be downloaded"),
    (RuntimeError("Dataset not found or corrupted. You can use download=True"), "could not be downloaded"),
])
def test_each_download_failure_is_named_for_what_it_is(error, says, monkeypatch, tmp_path):
    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", failing)
    with pytest.raises(UsageError) as raised:
        torchvision_dataset("cifar10", tmp_path, None, download=True)
    message = str(raised.value)
    assert says in message and len(message.splitlines()) == 1
    others = {"filled up", "is damaged", "could not be downloaded"} - {says}
    assert not any(other in message for other in others)


def test_an_error_with_an_empty_message_is_named_by_its_type(monkeypatch, tmp_path):
    def failing(*args, **kwargs):
        raise ValueError()

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", failing)
    with pytest.raises(UsageError, match=r"could not be read from .* \(ValueError: ValueError\)"):
        torchvision_dataset("cifar10", tmp_path, None, download=True)

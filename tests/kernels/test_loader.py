"""kernels.loader: the kernel cache writes generated modules once, atomically, and imports
exactly the source it checked (no bytecode from __pycache__; a large module's own code
file only when it matches the source and itself)."""
import hashlib
import importlib.util
import marshal
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


LARGE = SOURCE + "".join(f"V{k} = {k}  # padding to a large module\n"
                         for k in range(loader.CODE_CACHE_MIN_BYTES // 30))


def _code_path(path):
    return [os.path.join(os.path.dirname(path), f) for f in os.listdir(os.path.dirname(path))
            if f.endswith(".code")]


@pytest.fixture
def large(cache):
    yield LARGE
    sys.modules.pop(loader.module_name(LARGE), None)


def test_a_large_module_keeps_its_code_and_a_new_import_uses_it(large, monkeypatch):
    module, path = loader.load_module(large)
    (code_path,) = _code_path(path)
    assert module.value() == 7 and module.V3 == 3
    sys.modules.pop(module.__name__)
    compiled = []
    real_compile = compile
    monkeypatch.setattr("builtins.compile", lambda *a, **k: compiled.append(1) or
                        real_compile(*a, **k))
    again, _ = loader.load_module(large)
    assert again.value() == 7 and again.__name__ == module.__name__
    assert compiled == [] and again.value.__code__.co_filename == path


@pytest.mark.parametrize("damage", ["truncate", "flip", "stale"])
def test_a_damaged_or_stale_code_file_is_never_loaded(large, damage):
    module, path = loader.load_module(large)
    (code_path,) = _code_path(path)
    with open(code_path, "rb") as fh:
        blob = fh.read()
    if damage == "truncate":
        blob = blob[:len(blob) // 2]
    elif damage == "flip":
        blob = blob[:-10] + bytes([blob[-10] ^ 0xFF]) + blob[-9:]
    else:  # a consistent file for another source: the code of another module
        payload = marshal.dumps(compile("VALUE = 666\n\ndef value():\n    return VALUE\n",
                                        path, "exec"))
        blob = hashlib.sha256(b"another source").digest() + \
            hashlib.sha256(payload).digest() + payload
    with open(code_path, "wb") as fh:
        fh.write(blob)
    sys.modules.pop(module.__name__)
    assert loader.load_module(large)[0].value() == 7
    with open(code_path, "rb") as fh:  # rewritten, valid again
        assert fh.read()[:32] == hashlib.sha256(large.encode()).digest()

"""The on-disk kernel cache: generated modules are written here, checked and imported.

Both code generators (kernels/cpu.py and kernels/cuda.py) hand their module source to
`load_module`. The module is written to a cache directory under a name made from the hash
of its source and the Numba version (the source's first line names its generator and that
generator's version), then imported from there, registered in sys.modules first so that
Numba's on-disk cache (`cache=True`) finds it again in a new process.

What runs is the source that was checked: the file is compared byte for byte with the
generated source (and rewritten when it differs), then compiled from those bytes.
No `.pyc` is read or written, so a stale, corrupt or tampered `__pycache__/*.pyc` can
neither run nor break a compile. Only a large module (a library driver of thousands of
steps, whose compile() takes a good part of a second) keeps its code object, in
`<name>.<python tag>.code` next to it: the SHA-256 of the source it was compiled from and
the SHA-256 of its marshal data head the file, and a code file that does not match both
is ignored and rewritten (see `_compiled`). Numba's own cache files (`.nbi`/`.nbc`) are
keyed by the hash of the source file; a damaged one is removed by `clear_numba_cache`.
Like those, a code file is trusted as the directory is: keep the cache directory private.
"""
import hashlib
import importlib.util
import marshal
import os
import sys
import tempfile

import numba

LOADER_VERSION = "loader-1"
# Modules of at least this many bytes of source keep their compiled code (see _compiled)
CODE_CACHE_MIN_BYTES = 1 << 16
# What a code file is valid for: marshal data is specific to the interpreter's version
_CODE_TAG = f"{sys.implementation.cache_tag}-{importlib.util.MAGIC_NUMBER.hex()}"


def cache_dir():
    """Where generated modules live: $GRAPHNN_CACHE_DIR, else ~/.cache/graphnn/kernels.
    When that directory cannot be created or written, a private temporary directory."""
    path = os.environ.get("GRAPHNN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "graphnn", "kernels")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return fallback_cache_dir()
    return path if os.access(path, os.W_OK) else fallback_cache_dir()


_private_dir = []  # registry: this process's fallback directory, made once


def fallback_cache_dir():
    """A cache directory only this user can write: <tmp>/graphnn-kernels-<uid> when it is
    ours and private, else a fresh directory for this process."""
    if not _private_dir:
        uid = os.getuid() if hasattr(os, "getuid") else None
        path = os.path.join(tempfile.gettempdir(), f"graphnn-kernels-{uid}")
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            info = os.stat(path)
            private = (uid is None or info.st_uid == uid) and not info.st_mode & 0o022 \
                and os.access(path, os.W_OK)
        except OSError:
            private = False
        _private_dir.append(path if private else tempfile.mkdtemp(prefix="graphnn-kernels-"))
    return _private_dir[0]


def _holds(path, data):
    try:
        with open(path, "rb") as fh:
            return fh.read() == data
    except OSError:
        return False


def write_atomically(directory, path, data):
    """Write `data` to `path` through a temporary file in `directory` and one rename, so a
    reader sees the old file or the new one, never a part; the temporary file is removed
    when anything fails."""
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def module_name(source):
    """The cache name of a generated module: a hash of its source and the Numba version."""
    digest = hashlib.sha256(
        (source + LOADER_VERSION + numba.__version__).encode()).hexdigest()[:20]
    return f"graphnn_kernel_{digest}"


def load_module(source):
    """Write `source` to the cache directory (atomically, once) and import it.

    Returns (module, path). A new process that builds the same graph finds the same file
    and Numba's cache next to it. A cached file that differs from `source` by one byte
    (truncated, corrupted, edited) is rewritten before it is imported. Anyone who can
    write the cache directory can change the code that runs: keep it private."""
    name = module_name(source)
    data = source.encode("utf-8")
    directory = cache_dir()
    path = os.path.join(directory, name + ".py")
    if not _holds(path, data):  # missing, truncated or altered: (re)write it
        try:
            write_atomically(directory, path, data)
        except OSError:  # a cache directory we cannot write after all
            directory = fallback_cache_dir()
            path = os.path.join(directory, name + ".py")
            if not _holds(path, data):
                write_atomically(directory, path, data)
    if name in sys.modules:
        return sys.modules[name], path
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        # The checked bytes, compiled here: no .pyc is consulted (nor written)
        exec(_compiled(data, path), module.__dict__)  # noqa: S102
    except BaseException:
        del sys.modules[name]
        raise
    return module, path


def _compiled(data, path):
    """compile() of the checked source `data` of the module at `path`. A large module's code
    object is kept in `<path without .py>.<tag>.code`: SHA-256 of the source, SHA-256 of
    the payload, then the payload (marshal data, valid for this interpreter only). A code
    file that is missing, stale, truncated or corrupt is never loaded: the source is
    compiled and the file written again (when the directory cannot be written, no file)."""
    if len(data) < CODE_CACHE_MIN_BYTES:
        return compile(data, path, "exec", dont_inherit=True)
    code_path = f"{os.path.splitext(path)[0]}.{_CODE_TAG}.code"
    source_digest = hashlib.sha256(data).digest()
    try:
        with open(code_path, "rb") as fh:
            blob = fh.read()
    except OSError:
        blob = b""
    payload = blob[64:]
    if blob[:32] == source_digest and blob[32:64] == hashlib.sha256(payload).digest():
        try:
            code = marshal.loads(payload)
        except (EOFError, ValueError, TypeError):
            code = None
        if getattr(code, "co_filename", None) == path:
            return code
    code = compile(data, path, "exec", dont_inherit=True)
    payload = marshal.dumps(code)
    try:
        write_atomically(os.path.dirname(path), code_path,
                         source_digest + hashlib.sha256(payload).digest() + payload)
    except OSError:
        pass  # (a directory we cannot write: the next process compiles again)
    return code


def clear_numba_cache(path):
    """Remove Numba's cache files for the generated module at `path` (e.g. when corrupted)."""
    stem = os.path.splitext(os.path.basename(path))[0]
    pycache = os.path.join(os.path.dirname(path), "__pycache__")
    if os.path.isdir(pycache):
        for f in os.listdir(pycache):
            if f.startswith(stem + ".") and (f.endswith(".nbi") or f.endswith(".nbc")):
                os.remove(os.path.join(pycache, f))


def reload_module(path):
    """Import the module at `path` again, fresh (after its Numba cache was cleared)."""
    name = os.path.splitext(os.path.basename(path))[0]
    sys.modules.pop(name, None)
    with open(path, encoding="utf-8") as fh:
        return load_module(fh.read())[0]

"""Custom-op plugins of librknnrt: find them, dlopen them, register their ops.

An RKNN custom-op plugin is a shared library that exports
``rknn_custom_op* get_rknn_custom_op(void)``: one op descriptor per library
(Rockchip's convention; see ``rknn-c-api-facts.md``). librknnrt itself loads
no plugins: the application does, the way Rockchip's ``rknn_server`` and the
seed library do::

    custom_op_paths ──────────────┐
                                  ├─► load_plugins ──► LoadedPlugins ──► register(lib, ctx, loaded)
    custom_op_default_path:       │     dlopen each,     (ctypes array     one rknn_register_custom_ops
      librkcst_*.so in            │     copy its op      of the ops, the   call per context, after
      /usr/lib/rknpu/op_plugins/ ─┘                      libraries kept    rknn_init (rknn-toolkit2
      (or $RKNN_CSTOP_PLUGIN_DIR)                        alive)            #538: one call only)

The op descriptors are copied into one array, but their callbacks point into
the plugin libraries, so :class:`LoadedPlugins` holds the ``CDLL`` objects
(and nothing ever unloads them while the process lives).

A plugin runs inside the worker: when its ``compute`` crashes, the worker
dies and the farm retries the task or fails it with ``WorkerCrashedError``.
:func:`loaded_libraries` (the worker reports it at start) and
:func:`plugins_note` let that message name the libraries a crash may come from.

Only ctypes is imported here; nothing is loaded until :func:`load_plugins`.
"""

from __future__ import annotations

import ctypes
import glob
import os
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from workers.backends import rknn_runtime as rt

__all__ = [
    "DEFAULT_PLUGIN_DIR",
    "ENV_PLUGIN_DIR",
    "PLUGIN_PATTERN",
    "LoadedPlugins",
    "PluginError",
    "default_plugin_dir",
    "load_plugins",
    "loaded_libraries",
    "plugin_files",
    "plugins_note",
    "register",
    "requested_plugins_note",
]

#: Where Rockchip's instructions put plugins on Linux, and how they are named.
DEFAULT_PLUGIN_DIR = "/usr/lib/rknpu/op_plugins"
PLUGIN_PATTERN = "librkcst_*.so"
#: Overrides the default folder, as it does for Rockchip's rknn_server.
ENV_PLUGIN_DIR = "RKNN_CSTOP_PLUGIN_DIR"
#: The function that registers the ops (librknnrt 1.6.0 and newer).
REGISTER_SYMBOL = "rknn_register_custom_ops"
_ENTRY_POINT = "get_rknn_custom_op"


class PluginError(RuntimeError):
    """A custom-op plugin could not be loaded or registered; the message says
    which file (or runtime), what was wrong and what to do."""


@dataclass(frozen=True)
class LoadedPlugins:
    """The ops of every loaded plugin, ready for ``rknn_register_custom_ops``.

    ``ops`` is a ctypes array of ``count`` :class:`~rknn_runtime.RknnCustomOp`
    (copies of what each plugin returned), ``paths`` the libraries in the
    same order, ``libraries`` their ``CDLL`` objects, kept so that the ops'
    callbacks stay mapped."""

    ops: Any
    count: int
    paths: tuple[str, ...]
    libraries: tuple[Any, ...]

    @property
    def op_types(self) -> tuple[str, ...]:
        """The op type of each op, in order."""
        return tuple(self.ops[k].op_type.decode("utf-8", "replace") for k in range(self.count))


# The libraries this process has loaded, for crash messages; a list and not a
# set so that they are named in the order they were loaded.
_LOADED: list[str] = []
_LOADED_LOCK = threading.Lock()


def loaded_libraries() -> list[str]:
    """Every plugin library :func:`load_plugins` has loaded in this process."""
    with _LOADED_LOCK:
        return list(_LOADED)


def plugins_note(paths: Sequence[str]) -> str:
    """``"custom-op plugins loaded: a.so, b.so"``, or "" when there are none:
    the words a crash message adds, since a crash may well come from them."""
    return f"custom-op plugins loaded: {', '.join(paths)}" if paths else ""


def requested_plugins_note(paths: Sequence[str], default_dir: bool) -> str:
    """What the options asked a worker to load (``custom_op_paths``,
    ``custom_op_default_path``), for a crash message about a worker that died
    before it could report what it loaded; "" when no plugin was asked for."""
    asked = [os.fspath(path) for path in paths]
    if default_dir:
        asked.append(f"{PLUGIN_PATTERN} in ${ENV_PLUGIN_DIR} or {DEFAULT_PLUGIN_DIR}")
    return f"custom-op plugins requested: {', '.join(asked)}" if asked else ""


def default_plugin_dir(environ: Optional[dict[str, str]] = None) -> str:
    """``$RKNN_CSTOP_PLUGIN_DIR`` when set (and not empty), else ``/usr/lib/rknpu/op_plugins``."""
    env = os.environ if environ is None else environ
    return env.get(ENV_PLUGIN_DIR, "").strip() or DEFAULT_PLUGIN_DIR


def plugin_files(paths: Sequence[str], default_dir: Optional[str]) -> list[str]:
    """The plugin files to load, as absolute paths: ``paths`` in their order
    (each must be a file), then every ``librkcst_*.so`` regular file of
    ``default_dir`` (when not None) sorted by name, so every worker registers
    the same ops in the same order. A file named twice is loaded once.

    A missing ``default_dir`` is a warning, not an error (as in the seed):
    asking for "whatever is installed" where nothing is installed is no fault."""
    files: list[str] = []
    for path in paths:
        absolute = os.path.abspath(os.fspath(path))
        if not os.path.isfile(absolute):
            raise PluginError(
                f"custom-op plugin {path!r} does not exist or is not a file: custom_op_paths takes "
                f"paths of plugin libraries (librkcst_<name>.so) on the machine the workers run on"
            )
        files.append(absolute)
    if default_dir is not None:
        files += _scan(default_dir)
    unique: dict[str, str] = {}
    for path in files:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def _scan(directory: str) -> list[str]:
    if not os.path.isdir(directory):
        warnings.warn(
            f"Default plugin directory does not exist: {directory} (custom_op_default_path looks for "
            f"{PLUGIN_PATTERN} there; set {ENV_PLUGIN_DIR} to look elsewhere)",
            UserWarning,
            stacklevel=3,
        )
        return []
    found = glob.glob(os.path.join(glob.escape(os.path.abspath(directory)), PLUGIN_PATTERN))
    return sorted(path for path in found if os.path.isfile(path))


def load_plugins(paths: Sequence[str], default_dir: Optional[str]) -> LoadedPlugins:
    """dlopen every plugin of ``paths`` and (when ``default_dir`` is not None)
    of ``default_dir``, and copy each one's op. Raises :class:`PluginError`
    for a missing file, a library that does not load, one without
    ``get_rknn_custom_op``, a NULL or unusable op, or two plugins with the
    same op. Pass ``default_dir=default_plugin_dir()`` for ``custom_op_default_path``."""
    files = plugin_files(paths, default_dir)
    ops = (rt.RknnCustomOp * len(files))()
    libraries = []
    seen: dict[tuple[bytes, int, int], str] = {}
    for index, path in enumerate(files):
        library, op = _load_one(path)
        key = (bytes(op.op_type), int(op.version), int(op.target))
        if key in seen:
            raise PluginError(
                f"Duplicate custom op definition detected: {op.op_type.decode('utf-8', 'replace')} "
                f"(version={op.version}, target={op.target}) from {path}; {seen[key]} defines it "
                f"already: load only one of them"
            )
        seen[key] = path
        ops[index] = op  # a copy of the plugin's struct
        libraries.append(library)
    with _LOADED_LOCK:
        _LOADED.extend(path for path in files if path not in _LOADED)
    return LoadedPlugins(ops, len(files), tuple(files), tuple(libraries))


def _load_one(path: str) -> tuple[Any, rt.RknnCustomOp]:
    """The ``CDLL`` of plugin ``path`` and its op (checked, not yet copied)."""
    try:
        # ctypes dlopens with RTLD_NOW: an unresolved symbol fails here, not inside rknn_run.
        library = ctypes.CDLL(path)
    except OSError as exc:
        raise PluginError(
            f"dlopen {path} fail: {exc} (is it built for this machine's architecture, and are the "
            f"libraries it needs installed? `ldd {path}` tells)"
        ) from exc
    try:
        entry = getattr(library, _ENTRY_POINT)
    except AttributeError:
        raise PluginError(
            f"{path} is not an RKNN custom-op plugin: it does not export {_ENTRY_POINT} (a plugin "
            f'defines `extern "C" rknn_custom_op* {_ENTRY_POINT}(void)` with default visibility)'
        ) from None
    entry.argtypes = []
    entry.restype = ctypes.POINTER(rt.RknnCustomOp)
    pointer = entry()
    if not pointer:
        raise PluginError(f"{_ENTRY_POINT} returned null in {path}: the plugin offers no op")
    op = pointer.contents
    if not op.op_type or not op.compute:
        raise PluginError(
            f"the op of {path} is unusable: it needs an op_type and a compute callback "
            f"(op_type={op.op_type!r}, compute={'set' if op.compute else 'NULL'})"
        )
    return library, op


def register(lib: Any, context: Any, loaded: LoadedPlugins) -> None:
    """Register every op of ``loaded`` on ``context`` in ONE
    ``rknn_register_custom_ops`` call (a second call on a context fails:
    rknn-toolkit2 #538), after ``rknn_init``. Nothing to do without ops.
    Raises :class:`PluginError` when ``lib`` lacks the function or the call fails."""
    if loaded.count == 0:
        return
    missing = rt.missing_symbol_message(
        lib, [REGISTER_SYMBOL], f"running the custom-op plugins {', '.join(loaded.paths)}", context
    )
    if missing:
        raise PluginError(missing)
    function = getattr(lib, REGISTER_SYMBOL)
    function.argtypes = [rt.RknnContext, ctypes.POINTER(rt.RknnCustomOp), ctypes.c_uint32]
    function.restype = ctypes.c_int
    status = function(context, loaded.ops, loaded.count)
    if status != 0:
        raise PluginError(
            f"rknn_register_custom_ops failed: {rt.error_name(status)} (ops "
            f"{', '.join(loaded.op_types)} from {', '.join(loaded.paths)}; librknnrt's 'E RKNN:' "
            f"lines on stderr say why)"
        )

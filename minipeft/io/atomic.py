"""Saves that leave the previous version or the new one, never a mix, and never write
outside their folder.

Every save of minipeft (model folders, adapters, training checkpoints, plots) goes
through one of three context managers here; each yields a fresh private place to write
into and publishes what was written in one atomic step:

- ``atomic_folder(dst)``: a folder that holds nothing but what this save writes (or
  nothing yet). Everything is written into a temp folder beside it, which then takes
  ``dst``'s place in one ``renameat2(RENAME_EXCHANGE)`` (macOS: ``renamex_np``).
- ``atomic_files(folder, names, key)``: a folder that holds other things too (the
  user's notes, a tokenizer, the working directory). Nothing there is removed: the
  files of this save are written into a fresh hidden generation folder
  ``folder/.minipeft-<key>.XXXXXXXX``, each ``folder/<name>`` is a link
  ``.minipeft-<key>/<name>``, and the link ``.minipeft-<key>`` is switched to the new
  generation by one rename, so all of the save's files change together.
- ``atomic_file(path)``: one file, written through the descriptor of a temp file and
  renamed over ``path``.

``atomic_save(dst, names, key)`` picks the first or the second. Common to all:

- temp names are unpredictable and created exclusively (``mkstemp``/``mkdtemp``,
  ``os.symlink`` on a random name), so nothing can be planted at them, and a final
  name is only ever replaced by a rename, which replaces a link there rather than
  write through it;
- a save into an existing folder first creates (and removes) a file there, so it
  fails exactly when writing a file there would: a read-only folder, a read-only
  mount, an immutable folder. (Run as root, permission bits do not stop a write, so
  they do not stop a save either; a read-only mount or ``chattr +i`` does.)
- an ``OSError`` or a serializer's own failure (safetensors' ``SafetensorError`` on a
  full disk) becomes one :class:`SaveError` naming the destination, with the temp
  files removed and the destination as it was.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from ..errors import MinipeftError, SaveError
from .files import check_output_folder

OURS = ".minipeft"           # every hidden name minipeft makes inside a user's folder starts so


# ---------------------------------------------------------------- errors
_FIXES = {
    errno.ENOSPC: ("the disk is full (no space left on device)", "free some space and save again"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space and save again"),
    errno.EFBIG: ("the file is larger than this system or file system allows",
                  "save to another disk, or raise the file size limit (ulimit -f)"),
    errno.EACCES: ("permission denied", "save into a folder you can write to"),
    errno.EPERM: ("the operation is not permitted (an immutable folder?)",
                  "save into a folder you can write to"),
    errno.EROFS: ("the file system is read-only", "save into a folder you can write to"),
}


def _errno_of(exc: BaseException) -> int | None:
    """The errno of an OSError, or the one a serializer wrote into its message
    (safetensors: "I/O error: No space left on device (os error 28)")."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    m = re.search(r"os error (\d+)|code: (\d+)", str(exc))
    return int(m.group(1) or m.group(2)) if m else None


def _is_write_failure(exc: BaseException) -> bool:
    """An OSError, or the serializer's own error type for one (safetensors raises its own)."""
    return isinstance(exc, OSError) or type(exc).__name__ == "SafetensorError"


def save_error(exc: BaseException, dst) -> SaveError:
    """``exc`` (an OSError or a serializer's error) as the one SaveError of a save to ``dst``."""
    if isinstance(exc, SaveError):
        return exc
    code = _errno_of(exc)
    what, fix = _FIXES.get(code, (None, "check the disk and the folder, then save again"))
    if what is None:
        what = (exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)) or \
            type(exc).__name__
    where = f" ({exc.filename})" if isinstance(exc, OSError) and exc.filename else ""
    err = SaveError(f"Could not save {dst}: {what}{where}. Nothing was changed: {dst} is as it "
                    f"was before this save. {fix[0].upper()}{fix[1:]}.")
    err.errno = code
    return err


@contextlib.contextmanager
def _as_save_error(dst):
    """Turn a write failure inside the block into save_error(…, dst)."""
    try:
        yield
    except MinipeftError:
        raise
    except Exception as e:                        # noqa: BLE001 - filtered just below
        if _is_write_failure(e):
            raise save_error(e, dst) from None
        raise


# ---------------------------------------------------------------- small steps
def _random_name(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(6)}"


def check_writable(folder: Path) -> None:
    """Create (exclusively, under a random name) and remove a file in ``folder``: a save
    there must fail exactly when writing a file there would (see the module's notes)."""
    fd, probe = tempfile.mkstemp(prefix=f"{OURS}-probe.", dir=folder)
    os.close(fd)
    os.unlink(probe)


def usual_permissions_one(path: Path) -> None:
    """Give a temp folder (0700) or temp file (0600) the permissions a plain mkdir or
    open would have (the umask's), before it is renamed into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if Path(path).is_dir() else 0o666) & ~umask)


def usual_permissions(path: Path) -> None:
    """usual_permissions_one for a folder and everything in it (never through a link)."""
    path = Path(path)
    usual_permissions_one(path)
    if path.is_dir() and not path.is_symlink():
        for p in path.rglob("*"):
            if not p.is_symlink():
                usual_permissions_one(p)


def remove(path: Path) -> None:
    """Delete a folder, a file or a link (never what a link points to), if there."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink(missing_ok=True)


def _mkdirs(folder: Path) -> list[Path]:
    """mkdir -p ``folder``; -> the folders it created, deepest first (to undo on failure)."""
    created = []
    for p in (folder, *folder.parents):
        if p.exists() or p.is_symlink():
            break
        created.append(p)
    for p in reversed(created):
        os.mkdir(p)
    return created


def _rmdirs(created: list[Path]) -> None:
    for p in created:
        try:
            os.rmdir(p)
        except OSError:
            break


def _is_cwd_or_above(folder: Path) -> bool:
    try:
        here = Path.cwd().resolve()
    except OSError:
        return False
    return folder.resolve() in (here, *here.parents)


@functools.lru_cache(maxsize=1)
def _libc():
    """The C library already loaded in this process (dlopen(NULL)); no search, no subprocess."""
    return ctypes.CDLL(None, use_errno=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one system call (Linux renameat2 RENAME_EXCHANGE, macOS
    renamex_np RENAME_SWAP): at every instant each name holds a whole folder.
    False where the system or file system cannot."""
    try:
        libc = _libc()
        if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
            rc = libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2)   # AT_FDCWD, EXCHANGE
        elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
            rc = libc.renamex_np(os.fsencode(a), os.fsencode(b), 2)            # RENAME_SWAP
        else:
            return False
    except (OSError, AttributeError):
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):     # not on this file system
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_folder(new: Path, dst: Path) -> None:
    """Put the folder ``new`` at ``dst``, atomically where the system allows: an existing
    ``dst`` is exchanged with ``new`` in one step and then deleted. Elsewhere the old
    folder is moved aside, the new one moved in, and the old one put back if that fails.
    A link or file at ``dst`` is replaced itself, never what a link points to."""
    new, dst = Path(new), Path(dst)
    if not (dst.exists() or dst.is_symlink()):
        os.replace(new, dst)
        return
    if dst.is_dir() and not dst.is_symlink() and _exchange(new, dst):
        remove(new)                                     # it now holds the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old.", dir=dst.parent))
    old.rmdir()
    os.replace(dst, old)
    try:
        os.replace(new, dst)
    except BaseException:
        os.replace(old, dst)
        raise
    remove(old)


# ---------------------------------------------------------------- a folder, whole
@contextlib.contextmanager
def atomic_folder(dst):
    """``with atomic_folder(dst) as tmp:`` write into ``tmp`` (a fresh hidden folder
    beside ``dst``); on success it replaces ``dst`` in one step, on failure it is
    deleted and ``dst`` is left as it was. Write failures are a SaveError."""
    dst = Path(dst)
    if not dst.is_symlink():            # a file of the user's is never replaced by a folder
        check_output_folder(dst, "the folder to save")
    tmp, created = None, []
    try:
        with _as_save_error(dst):
            created = _mkdirs(dst.parent)
            if dst.is_dir() and not dst.is_symlink():
                check_writable(dst)
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
            yield tmp
            usual_permissions_one(tmp)
            replace_folder(tmp, dst)
            tmp = None
    except BaseException:
        _rmdirs(created)
        raise
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- files among the user's
def pointer_name(key: str) -> str:
    return f"{OURS}-{key}"


def _is_generation(folder: Path, name: str, key: str) -> bool:
    """Is ``name`` one of our generation folders in ``folder`` (a real folder)?"""
    return bool(re.fullmatch(re.escape(pointer_name(key)) + r"\.[A-Za-z0-9_]+", name)) and \
        (folder / name).is_dir() and not (folder / name).is_symlink()


def current_generation(folder: Path, key: str) -> Path | None:
    """The generation folder that ``folder/.minipeft-<key>`` points at, if any."""
    link = Path(folder) / pointer_name(key)
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    return Path(folder) / target if _is_generation(Path(folder), target, key) else None


def _link_into(folder: Path, name: str, target: str) -> None:
    """``folder/name`` becomes the link ``target``, in one rename (exclusive temp name)."""
    tmp = folder / _random_name(f"{OURS}-link.")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, folder / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _freeze_current(folder: Path, names, key: str) -> Path:
    """A generation holding what ``folder/<name>`` holds now (hard links, not copies)."""
    pointer = pointer_name(key)
    shown = current_generation(folder, key)             # looked up once: one version
    gen = Path(tempfile.mkdtemp(prefix=f"{pointer}.", dir=folder))
    try:
        for name in names:
            path = folder / name
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                target = os.readlink(path)
                if target == f"{pointer}/{name}":       # ours: the file the pointer shows now
                    if shown is not None and (shown / name).is_file():
                        _hard_link(shown / name, gen / name)
                else:                                   # the user's own link: the same link
                    os.symlink(target if os.path.isabs(target) else os.path.join("..", target),
                               gen / name)
            elif stat.S_ISREG(st.st_mode):
                _hard_link(path, gen / name)
            else:
                raise SaveError(f"Could not save into {folder}: {path} is not a file (a folder?), "
                                "and this save writes a file of that name. Move it away, or save "
                                "elsewhere. Nothing was changed.")
        usual_permissions_one(gen)
    except BaseException:
        shutil.rmtree(gen, ignore_errors=True)
        raise
    return gen


def _hard_link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst, follow_symlinks=False)
    except OSError:                                     # no hard links here: copy instead
        shutil.copy2(src, dst, follow_symlinks=False)


def _point(folder: Path, key: str, gen: Path) -> Path | None:
    """Switch ``folder/.minipeft-<key>`` to ``gen`` (one rename); -> the generation it
    showed before, if it was one of ours."""
    before = current_generation(folder, key)
    _link_into(folder, pointer_name(key), gen.name)
    return before


def _is_our_link(folder: Path, name: str, key: str) -> bool:
    return (folder / name).is_symlink() and os.readlink(folder / name) == f"{pointer_name(key)}/{name}"


def _publish(folder: Path, gen: Path, names, key: str) -> bool:
    """Make the files of ``gen`` appear as ``folder/<name>``, all in one step; False
    (nothing done) where this file system cannot make links."""
    pointer = pointer_name(key)
    linked = current_generation(folder, key) is not None and all(
        _is_our_link(folder, n, key) or not (folder / n).is_symlink() and not (folder / n).exists()
        for n in names)
    if not linked:
        if not _symlinks_work(folder):
            return False
        # Once per folder: freeze the current files under a generation and point at it,
        # then turn each name into a link through the pointer. At every instant each
        # name shows the same bytes as before.
        frozen = _freeze_current(folder, names, key)
        old = _point(folder, key, frozen)
        for name in names:
            if (frozen / name).exists() or (frozen / name).is_symlink():
                _link_into(folder, name, f"{pointer}/{name}")
        if old is not None:
            remove(old)
    written = [n for n in names if (gen / n).exists()]
    for name in written:                                # new names: links that show nothing yet
        if not _is_our_link(folder, name, key):
            _link_into(folder, name, f"{pointer}/{name}")
    old = _point(folder, key, gen)                      # the one step that publishes
    if old is not None and old != gen:
        remove(old)
    for name in set(names) - set(written):              # a file this save does not write:
        if _is_our_link(folder, name, key):             # no link left showing nothing
            (folder / name).unlink(missing_ok=True)
    return True


def _symlinks_work(folder: Path) -> bool:
    probe = folder / _random_name(f"{OURS}-probe.")
    try:
        os.symlink(".", probe)
    except (OSError, NotImplementedError):
        return False
    probe.unlink()
    return True


@contextlib.contextmanager
def atomic_files(folder, names, key: str):
    """``with atomic_files(folder, names, key) as tmp:`` write the files ``names`` into
    ``tmp``; on success they all appear in ``folder`` at once (see the module's notes),
    and nothing else in ``folder`` is touched. Names not written are removed.

    Where links cannot be made (some Windows set-ups, FAT drives) each file is instead
    renamed into place whole, in the order of ``names``: never half a file, but a kill
    between two renames leaves the new first files beside the old last ones."""
    folder, names = Path(folder), tuple(names)
    gen, created = None, []
    try:
        with _as_save_error(folder):
            created = _mkdirs(folder)
            gen = Path(tempfile.mkdtemp(prefix=f"{pointer_name(key)}.", dir=folder))
            yield gen                                   # (mkdtemp there: the write check)
            usual_permissions_one(gen)
            if not _publish(folder, gen, names, key):
                for name in names:
                    if (gen / name).exists():
                        os.replace(gen / name, folder / name)
                    else:
                        remove(folder / name)
                shutil.rmtree(gen, ignore_errors=True)
            gen = None
    except BaseException:
        _rmdirs(created)
        raise
    finally:
        if gen is not None:
            shutil.rmtree(gen, ignore_errors=True)


def holds_only(folder: Path, names) -> bool:
    """Does ``folder`` (a real folder, not the working directory or above it) hold
    nothing but entries named ``names`` and minipeft's own hidden ones?"""
    if not folder.is_dir() or folder.is_symlink() or _is_cwd_or_above(folder):
        return False
    return all(e.name in names or e.name.startswith(OURS) for e in folder.iterdir())


@contextlib.contextmanager
def atomic_save(dst, names, key: str):
    """The files ``names``, written into the yielded folder, appear at ``dst`` together.
    ``dst`` missing, a file or link, or holding nothing but these names: it is replaced
    whole (atomic_folder). Holding anything else: only these names change (atomic_files)."""
    dst = Path(dst)
    whole = not (dst.exists() or dst.is_symlink()) or dst.is_symlink() or not dst.is_dir() \
        or holds_only(dst, names)
    with (atomic_folder(dst) if whole else atomic_files(dst, names, key)) as tmp:
        yield tmp


def read_dir(folder, key: str, anchor: str) -> Path:
    """Where to read a save of ``key`` from: where ``folder/<anchor>`` is minipeft's link,
    the generation it shows now (looked up once, so that a save running meanwhile cannot
    mix two versions in one read), else ``folder`` itself."""
    folder = Path(folder)
    gen = current_generation(folder, key)
    linked = (folder / anchor).is_symlink() and \
        os.readlink(folder / anchor) == f"{pointer_name(key)}/{anchor}"
    return gen if gen is not None and linked else folder


# ---------------------------------------------------------------- one file
@contextlib.contextmanager
def atomic_file(path):
    """``with atomic_file(path) as f:`` write to the binary file object ``f`` (a fresh
    temp file beside ``path``, made exclusively); on success it replaces ``path`` in one
    rename (a link at ``path`` is replaced, not written through), on failure it is
    deleted and ``path`` is left as it was."""
    path = Path(path)
    tmp = None
    with _as_save_error(path):
        if path.is_dir() and not path.is_symlink():
            raise SaveError(f"Could not save {path}: it is a folder. Give a file name.")
        created = _mkdirs(path.parent)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
            with os.fdopen(fd, "wb") as f:
                yield f
            usual_permissions_one(Path(tmp))
            os.replace(tmp, path)
            tmp = None
        except BaseException:
            _rmdirs(created)
            raise
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

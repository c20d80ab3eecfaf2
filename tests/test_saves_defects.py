"""Issue 12's saves, paths and resume, by class (test_atomic_saves.py kills saves; this
file holds the rest):

- names read from a file (checksums.json, the shard index) stay inside their folder and
  name regular files (``paths.file_in_folder``);
- an overwrite replaces what minipeft writes and nothing else; a save fails exactly where
  writing a file would; a full disk is a SaveError with the old version intact; temp
  names are made exclusively and no save writes through a link (``io/atomic.py``);
- a fresh run never prunes or resumes another run's checkpoints; odd folder names are
  not checkpoints; resume compares every setting that changes what is trained and
  validates the checkpoint before use (``train/trainer.py``);
- float8/float4 tensors are refused by name; NaN/inf weights warn on load.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import safetensors.numpy

from minipeft import (
    GPT2,
    BottleneckConfig,
    CheckpointError,
    ConfigError,
    GPT2Config,
    IA3Config,
    LoraConfig,
    MinipeftError,
    PeftModel,
    PrefixTuningConfig,
    PromptTuningConfig,
    WeightsNotFoundError,
    get_peft_model,
)
from minipeft.errors import SaveError
from minipeft.io.checkpoint import hf_config_dict, save_folder
from minipeft.io.paths import file_in_folder
from minipeft.train.pretrain import init_params
from minipeft.train.trainer import Trainer, TrainingArguments, example_batches

CFG = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=40)
IDS = np.array([[1, 5, 9, 3, 0, 7]])
POSIX = pytest.mark.skipif(os.name != "posix", reason="POSIX links, modes and mounts")


def model(seed=0):
    return GPT2(CFG, init_params(CFG, seed=seed))


def peft(config, seed=0, base_seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")              # fan_in_fan_out set for Conv1D, as peft
        return get_peft_model(model(base_seed), config, seed=seed)


def visible(folder):
    return sorted(p for p in os.listdir(folder) if not p.startswith(".minipeft"))


def same_params(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@contextlib.contextmanager
def no_hang(seconds=20):
    """Fail, rather than hang, a load that would read a device forever (/dev/zero)."""
    def alarm(*_):
        raise AssertionError(f"still reading after {seconds} s")
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ================================================================ 1. names stay in their folder
@pytest.mark.parametrize("name,why", [
    ("", "not a file name"), (None, "not a file name"), (5, "not a file name"),
    ("../x", "outside its folder"), ("a/../../x", "outside its folder"),
    ("/etc/passwd", "outside its folder"), ("/dev/zero", "outside its folder"),
    ("\\\\server\\share\\x", "outside its folder"), ("C:\\x", "outside its folder"),
    ("sub", "a folder"), ("nul\x00", "not a file name")])
def test_a_name_read_from_a_file_must_be_a_file_in_the_folder(tmp_path, name, why):
    (tmp_path / "sub").mkdir()
    with no_hang(), pytest.raises(CheckpointError, match=why):
        file_in_folder(tmp_path, name, "index.json")


@POSIX
@pytest.mark.parametrize("target,why", [("/dev/zero", "outside its folder"),
                                        ("OUTSIDE", "outside its folder"),
                                        ("FIFO", "a device, pipe or socket"),
                                        ("LOOP", "cannot be opened")])
def test_a_link_in_the_folder_cannot_lead_out_of_it_or_to_a_device(tmp_path, target, why):
    folder = tmp_path / "m"
    folder.mkdir()
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    if target == "OUTSIDE":
        target = str(outside)
    elif target == "FIFO":
        os.mkfifo(folder / "pipe")
        target = "pipe"
    elif target == "LOOP":
        os.symlink("b", folder / "a")
        os.symlink("a", folder / "b")
        target = "a"
    os.symlink(target, folder / "x")
    with no_hang(), pytest.raises(CheckpointError, match=why):
        file_in_folder(folder, "x", "index.json")
    (folder / "inner.txt").write_text("fine")
    os.symlink("inner.txt", folder / "y")              # a link that stays inside is a file
    assert file_in_folder(folder, "y", "index.json") == (folder / "inner.txt").resolve()


def converted(tmp_path, name="m", seed=0):
    return model(seed).save_pretrained(tmp_path / name)


@pytest.mark.parametrize("entry", ["../secret.txt", "/dev/zero", "link-out", "link-dev"])
def test_checksums_json_cannot_name_a_file_outside_its_folder(tmp_path, entry):
    """The issue's examples: "../x" read outside the folder, "/dev/zero" hung the load."""
    folder = converted(tmp_path)
    (tmp_path / "secret.txt").write_text("not yours")
    if entry == "link-out":
        os.symlink(tmp_path / "secret.txt", folder / entry)
    elif entry == "link-dev":
        os.symlink("/dev/zero", folder / entry)
    (folder / "checksums.json").write_text(json.dumps({entry: "0" * 64}))
    with no_hang(), pytest.raises(CheckpointError, match="outside its folder"):
        GPT2.from_pretrained(folder)


def test_checksums_json_malformed_is_one_checkpoint_error(tmp_path):
    folder = converted(tmp_path)
    for text, why in (('["model.safetensors"]', "must hold a JSON object"),
                      ("[" * 100_000, "nests JSON too deeply"),
                      ('{"model.safetensors": 5}', "must be a string")):
        (folder / "checksums.json").write_text(text)
        with pytest.raises(CheckpointError, match=why):
            GPT2.from_pretrained(folder)


def sharded(tmp_path, weight_map):
    folder = tmp_path / "sharded"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config_dict(CFG)))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return folder


@pytest.mark.parametrize("shard", ["/dev/zero", "../elsewhere.safetensors", "link-out", "sub"])
def test_the_shard_index_cannot_name_a_file_outside_its_folder(tmp_path, shard):
    folder = sharded(tmp_path, {"transformer.wte.weight": shard})
    safetensors.numpy.save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "elsewhere.safetensors"))
    if shard == "link-out":
        os.symlink(tmp_path / "elsewhere.safetensors", folder / shard)
    if shard == "sub":
        (folder / shard).mkdir()
    with no_hang(), pytest.raises(CheckpointError, match="outside its folder|a folder"):
        GPT2.from_pretrained(folder)


def test_the_shard_index_must_map_tensors_to_files(tmp_path):
    for weight_map, why in (([], 'no "weight_map"'), ({"a": 5}, "not a file name")):
        folder = sharded(tmp_path, weight_map)
        with pytest.raises(CheckpointError, match=why):
            GPT2.from_pretrained(folder)
        shutil.rmtree(folder)


def test_a_hugging_face_cache_snapshot_may_link_into_its_blobs(tmp_path):
    """The hub's cache links a snapshot's files to ../../blobs/<sha>: outside the snapshot
    folder but inside the repository's cache, and loaded as before."""
    from minipeft.io.checkpoint import expected_shapes
    repo = tmp_path / "models--org--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    params = model().params
    names = list(expected_shapes(CFG))
    halves = {"shard-1.safetensors": names[:5], "shard-2.safetensors": names[5:]}
    for shard, keys in halves.items():
        safetensors.numpy.save_file({k: params[k] for k in keys}, str(blobs / f"sha-{shard}"))
        os.symlink(f"../../blobs/sha-{shard}", snap / shard)
    (snap / "config.json").write_text(json.dumps(hf_config_dict(CFG)))
    (snap / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: s for s, keys in halves.items() for k in keys}}))
    assert same_params(GPT2.from_pretrained(snap).params, params)


# ================================================================ 2. overwrite keeps the user's files
def test_save_pretrained_overwrite_keeps_files_minipeft_did_not_write(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "notes.md").write_text("my notes")
    (folder / "tokenizer.json").write_text("{}")
    (folder / ".git").mkdir()                            # hidden, and still the user's
    (folder / ".git" / "HEAD").write_text("ref")
    for seed in (1, 2):
        model(seed).save_pretrained(folder, overwrite=True)
        assert same_params(GPT2.from_pretrained(folder).params, model(seed).params)
        assert visible(folder) == [".git", "config.json", "model.safetensors", "notes.md",
                                   "tokenizer.json"]
        assert (folder / "notes.md").read_text() == "my notes"
        assert (folder / ".git" / "HEAD").read_text() == "ref"


def test_transformers_loads_a_folder_whose_files_are_links(tmp_path):
    """A model saved among the user's files is links into the live generation;
    transformers reads it as any folder."""
    from transformers import GPT2LMHeadModel
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "notes.md").write_text("mine")
    model(3).save_pretrained(folder, overwrite=True)
    assert (folder / "model.safetensors").is_symlink()
    import torch
    with torch.no_grad():
        ref = GPT2LMHeadModel.from_pretrained(folder)(torch.as_tensor(IDS)).logits.numpy()
    assert np.abs(ref - model(3)(IDS)).max() <= 1e-5 * np.abs(ref).max()   # float32, two libraries


def test_a_save_into_the_working_directory_deletes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data.csv").write_text("a,b\n")
    model(1).save_pretrained(".", overwrite=True)
    model(2).save_pretrained(".", overwrite=True)
    assert (tmp_path / "data.csv").read_text() == "a,b\n"
    assert same_params(GPT2.from_pretrained(".").params, model(2).params)
    # a working directory holding only minipeft's files is not swapped either (the shell in it)
    inner = tmp_path / "only"
    model(1).save_pretrained(inner)
    monkeypatch.chdir(inner)
    ino = os.stat(".").st_ino
    model(2).save_pretrained(".", overwrite=True)
    assert os.stat(".").st_ino == ino and os.stat(inner).st_ino == ino


def test_a_stale_checksums_json_is_replaced_with_the_weights(tmp_path):
    """checksums.json is minipeft's: a save without one must not leave the old one
    describing the old weights (the load would then refuse the new ones)."""
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "notes.md").write_text("mine")
    save_folder(folder, CFG, model(1).params, overwrite=True, checksums=True)
    assert (folder / "checksums.json").is_file()
    model(2).save_pretrained(folder, overwrite=True)
    assert not (folder / "checksums.json").exists()
    assert same_params(GPT2.from_pretrained(folder).params, model(2).params)


def test_cli_merge_overwrite_keeps_the_users_files(tmp_path, capsys):
    from minipeft.cli import main
    pm = peft(LoraConfig(r=2, target_modules=["c_attn"]))
    base = model().save_pretrained(tmp_path / "base")
    adapter = pm.save_pretrained(tmp_path / "adapter")
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    assert main(["merge", str(base), str(adapter), str(out), "--overwrite"]) == 0, capsys.readouterr()
    assert (out / "notes.md").read_text() == "mine"
    assert GPT2.from_pretrained(out).config == CFG


def test_an_adapter_among_files_is_read_by_peft_too(tmp_path):
    """peft's own loader reads the link layout (the pair it sees is always one version)."""
    import torch
    from peft import PeftModel as TorchPeftModel
    from transformers import GPT2LMHeadModel
    base_dir = model().save_pretrained(tmp_path / "base")
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "notes.md").write_text("mine")
    pm = peft(LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False), seed=4)
    pm.save_pretrained(folder)
    pm.save_pretrained(folder)                           # a second save: one step
    assert (folder / "adapter_model.safetensors").is_symlink()
    assert (folder / "notes.md").read_text() == "mine"
    tm = TorchPeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base_dir), folder).eval()
    with torch.no_grad():
        ref = tm(torch.as_tensor(IDS)).logits.numpy()
    assert np.abs(ref - pm(IDS)).max() <= 1e-5 * np.abs(ref).max()          # float32, two libraries


# ================================================================ 2. read-only folders
def _save_kinds():
    """name -> save(folder): each save whose destination is ``folder``."""
    pm = peft(LoraConfig(r=2, target_modules=["c_attn"]))
    return {
        "weights (a folder swap)": lambda f: model(2).save_pretrained(f, overwrite=True),
        "adapter (a folder swap)": lambda f: pm.save_pretrained(f),
        "weights among files": lambda f: model(2).save_pretrained(f, overwrite=True),
    }


def _fill(folder, kind):
    folder.mkdir()
    if kind.startswith("adapter"):
        peft(LoraConfig(r=2, target_modules=["c_attn"]), seed=9).save_pretrained(folder)
    else:
        model(1).save_pretrained(folder, overwrite=True)
    if "among" in kind:
        (folder / "notes.md").write_text("mine")
        model(1).save_pretrained(folder, overwrite=True)


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


@POSIX
@pytest.mark.parametrize("kind", list(_save_kinds()))
def test_a_save_succeeds_exactly_where_writing_a_file_would(tmp_path, kind):
    """Mode 0555 on the destination folder. For a user, writing a file there fails, and
    so must the save (the renameat2 exchange alone needs only the parent's permission).
    For root, whom permission bits do not stop, writing a file there succeeds, and so
    does the save: "as writing a file there would" whoever runs it."""
    folder = tmp_path / "dst"
    _fill(folder, kind)
    os.chmod(folder, 0o555)
    try:
        try:
            (folder / "probe").write_text("x")
            (folder / "probe").unlink()
            writable = True
        except PermissionError:
            writable = False
        before = _snapshot(folder)
        if writable:
            _save_kinds()[kind](folder)
        else:
            with pytest.raises(SaveError, match="permission denied"):
                _save_kinds()[kind](folder)
            assert _snapshot(folder) == before
    finally:
        os.chmod(folder, 0o755)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


USER_SAVE = """
import sys, warnings
from pathlib import Path
warnings.simplefilter("ignore")
from minipeft import GPT2, GPT2Config, LoraConfig, get_peft_model
from minipeft.errors import SaveError
from minipeft.train.pretrain import init_params
cfg = GPT2Config(n_layer=2, n_head=2, n_embd=16, n_positions=16, vocab_size=40)
kind, dst = sys.argv[1], Path(sys.argv[2])
try:
    if kind == "adapter":
        get_peft_model(GPT2(cfg, init_params(cfg, seed=0)),
                       LoraConfig(r=2, target_modules=["c_attn"])).save_pretrained(dst)
    else:
        GPT2(cfg, init_params(cfg, seed=2)).save_pretrained(dst, overwrite=True)
    print("saved")
except SaveError as e:
    print("SaveError:", e)
"""


def unprivileged():
    """The command prefix that runs a process as this user without root's power to write
    anywhere: for root, setpriv dropping CAP_DAC_OVERRIDE (and its kin), so that permission
    bits apply to it as to any user; for anyone else, nothing."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv to drop root's CAP_DAC_OVERRIDE")
    return ["setpriv", "--reuid=0", "--inh-caps=-all",
            "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]


@POSIX
@pytest.mark.parametrize("kind", ["weights", "adapter", "weights among files"])
def test_a_user_cannot_save_into_a_folder_without_write_permission(tmp_path, kind):
    """What a user meets: a folder of mode 0555 in a writable parent. The renameat2
    exchange of the folder needs only the parent's permission and used to succeed; the
    save must fail as writing a file there does, with nothing changed and nothing left."""
    folder = tmp_path / "dst"
    _fill(folder, "adapter" if kind == "adapter" else "weights among files"
          if "among" in kind else "weights")
    os.chmod(folder, 0o555)
    before = _snapshot(folder)
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "numba"), MPLCONFIGDIR=str(tmp_path / "mpl"))
    try:
        probe = subprocess.run([*unprivileged(), "touch", str(folder / "probe")], capture_output=True)
        if probe.returncode == 0:
            pytest.skip("this process can write into a 0555 folder even so")
        r = subprocess.run([*unprivileged(), sys.executable, "-c", USER_SAVE, kind.split()[0],
                            str(folder)], capture_output=True, text=True, env=env, timeout=300)
    finally:
        os.chmod(folder, 0o755)
    assert "SaveError:" in r.stdout and "permission denied" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert _snapshot(folder) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@contextlib.contextmanager
def read_only_bind(folder):
    """``folder`` bind-mounted read-only on itself: a read-only folder even for root."""
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount")
    r = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot bind-mount here: {r.stderr.decode().strip()}")
    try:
        r = subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot remount read-only: {r.stderr.decode().strip()}")
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], capture_output=True)


@pytest.mark.parametrize("kind", list(_save_kinds()))
def test_a_save_into_a_read_only_mount_fails_even_for_root(tmp_path, kind):
    folder = tmp_path / "dst"
    _fill(folder, kind)
    before = _snapshot(folder)
    with read_only_bind(folder):
        with pytest.raises(OSError):
            (folder / "probe").write_text("x")           # writing a file there fails ...
        with pytest.raises(SaveError, match="read-only"):
            _save_kinds()[kind](folder)                  # ... and so does the save
        assert _snapshot(folder) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ================================================================ 2. a full disk
def test_a_serializer_failure_is_a_save_error_with_the_old_file_intact(tmp_path, monkeypatch):
    """safetensors raises its own SafetensorError on a full disk ("os error 28"): it must
    reach the user as a SaveError (a MinipeftError and an OSError), nothing changed."""
    from safetensors import SafetensorError
    folder = converted(tmp_path)
    pm = peft(LoraConfig(r=2, target_modules=["c_attn"]))
    pm.save_pretrained(tmp_path / "a")
    before = {"m": _snapshot(folder), "a": _snapshot(tmp_path / "a")}

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")
    monkeypatch.setattr(safetensors.numpy, "save_file", full)
    for save, where in ((lambda: model(5).save_pretrained(folder, overwrite=True), "m"),
                        (lambda: pm.save_pretrained(tmp_path / "a"), "a")):
        with pytest.raises(SaveError, match="disk is full") as info:
            save()
        assert isinstance(info.value, OSError) and info.value.errno == 28
        assert _snapshot(tmp_path / where) == before[where]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m"]


@contextlib.contextmanager
def tiny_tmpfs(path, size="256k"):
    """A real file system of ``size`` bytes (root, Linux); skipped elsewhere."""
    if os.name != "posix" or os.geteuid() != 0 or not sys.platform.startswith("linux"):
        pytest.skip("needs root on Linux to mount a tmpfs")
    path.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_a_really_full_disk_is_a_save_error_with_the_old_version_whole(tmp_path):
    """On a 256 KiB tmpfs: a small model and adapter fit, a large one does not. Each save
    that fails is a SaveError (errno 28); the small version loads as before; nothing left."""
    small = GPT2Config(n_layer=1, n_head=1, n_embd=8, n_positions=8, vocab_size=40)
    large = GPT2Config(n_layer=1, n_head=1, n_embd=8, n_positions=8, vocab_size=20_000)
    with tiny_tmpfs(tmp_path / "disk") as disk:
        a = GPT2(small, init_params(small, seed=0))
        for dst, notes in ((disk / "m", False), (disk / "among", True)):
            dst.mkdir()
            if notes:
                (dst / "notes.md").write_text("mine")
            a.save_pretrained(dst, overwrite=True)
            before = _snapshot(dst)
            with pytest.raises(SaveError, match="disk is full") as info:
                GPT2(large, init_params(large, seed=0)).save_pretrained(dst, overwrite=True)
            assert info.value.errno == 28
            assert _snapshot(dst) == before
            assert same_params(GPT2.from_pretrained(dst).params, a.params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = get_peft_model(GPT2(small, init_params(small, seed=0)),
                                LoraConfig(r=2, target_modules=["c_attn"]))
            big = get_peft_model(GPT2(small, init_params(small, seed=0)),
                                 LoraConfig(r=2000, target_modules="all-linear"))
        pm.save_pretrained(disk / "adapter")
        before = _snapshot(disk / "adapter")
        with pytest.raises(SaveError, match="disk is full"):
            big.save_pretrained(disk / "adapter")
        assert _snapshot(disk / "adapter") == before
        assert sorted(p.name for p in disk.iterdir()) == ["adapter", "among", "m"]
        among = disk / "among"
        assert sorted(p.name for p in among.iterdir() if p.name.startswith(".")) == \
            [".minipeft-model", os.readlink(among / ".minipeft-model")]   # the live generation only


# ================================================================ 2. temp names and links
def test_every_file_a_save_writes_is_inside_a_folder_it_made_exclusively(tmp_path, monkeypatch):
    """An audit hook records what each save creates: every file opened for writing (and
    every path safetensors writes) lies inside a folder made by mkdtemp during that save,
    or is a mkstemp file: a name nobody could plant a link at beforehand."""
    from minipeft.train.plots import plot_losses
    real_save = safetensors.numpy.save_file
    writes, fresh = [], []
    state = {"on": False}

    def hook(event, args):
        if not state["on"]:
            return
        if event in ("tempfile.mkdtemp", "tempfile.mkstemp"):
            fresh.append(str(args[0]))
        elif event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and any(c in mode for c in "wxa+")) or \
                    (not isinstance(mode, str) and flags & (os.O_WRONLY | os.O_RDWR)):
                writes.append(os.fsdecode(args[0]))

    def save_file(tensors, path, metadata=None):
        writes.append(str(path))
        return real_save(tensors, path, metadata=metadata)
    sys.addaudithook(hook)
    monkeypatch.setattr(safetensors.numpy, "save_file", save_file)
    among = tmp_path / "among"
    among.mkdir()
    (among / "notes.md").write_text("mine")
    pm = peft(LoraConfig(r=2, target_modules=["c_attn"]))
    trainer = Trainer(pm, TrainingArguments(max_steps=1, save_steps=1), lambda s: [],
                      output_dir=tmp_path / "run", progress=False)
    saves = {"new weights": lambda: model(1).save_pretrained(tmp_path / "w"),
             "weights over weights": lambda: model(2).save_pretrained(tmp_path / "w", overwrite=True),
             "weights among files": lambda: model(2).save_pretrained(among, overwrite=True),
             "adapter": lambda: pm.save_pretrained(tmp_path / "a"),
             "adapter among files": lambda: pm.save_pretrained(among),
             "checkpoint": trainer.save_checkpoint,
             "plot": lambda: plot_losses([{"step": 1, "loss": 1.0}], tmp_path / "loss.png")}
    for name, save in saves.items():
        writes.clear()
        fresh.clear()
        state["on"] = True
        try:
            save()
        finally:
            state["on"] = False
        assert writes, name
        bad = [w for w in writes if not any(w == f or w.startswith(f + os.sep) for f in fresh)]
        assert not bad, f"{name} wrote at names it did not create exclusively: {bad}"


@POSIX
@pytest.mark.parametrize("at", ["model.safetensors", "config.json", ".minipeft-model",
                                "adapter_model.safetensors", "adapter_config.json",
                                ".minipeft-adapter", "checkpoint-1"])
def test_no_save_writes_through_a_link_planted_at_a_name_it_writes(tmp_path, at):
    """A link planted at a final name (or at minipeft's pointer) that leads to a file
    outside: the save replaces the link, and the file outside stays as it was."""
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim"
    victim.write_text("do not touch")
    folder = tmp_path / "dst"
    folder.mkdir()
    (folder / "notes.md").write_text("mine")                 # a folder shared with the user
    os.symlink(victim if at != "checkpoint-1" else outside, folder / at)
    before = _snapshot(outside)
    if at.startswith(("adapter", ".minipeft-adapter")):
        pm = peft(LoraConfig(r=2, target_modules=["c_attn"]))
        pm.save_pretrained(folder)
        PeftModel.from_pretrained(model(), folder)
    elif at == "checkpoint-1":
        pm = peft(LoraConfig(r=2, target_modules=["c_attn"]))
        t = Trainer(pm, TrainingArguments(max_steps=1, save_steps=1), lambda s: [],
                    output_dir=folder, progress=False)
        t.step = 1
        t.save_checkpoint()
        assert (folder / at).is_dir() and not (folder / at).is_symlink()
    else:
        model(1).save_pretrained(folder, overwrite=True)
        assert same_params(GPT2.from_pretrained(folder).params, model(1).params)
    assert _snapshot(outside) == before and victim.read_text() == "do not touch"


# ================================================================ 2. one run's checkpoints
def tiny_data():
    rng = np.random.default_rng(0)
    return [(ids, np.where(np.arange(len(ids)) < 2, -100, ids))
            for ids in (rng.integers(0, 39, size=6) for _ in range(8))]


def run_trainer(out, steps=4, data=None, config=None, base_seed=0, **args):
    pm = peft(config or LoraConfig(r=2, target_modules=["c_attn"], lora_dropout=0.1),
              base_seed=base_seed)
    args = {"max_steps": steps, "save_steps": 1, "save_total_limit": 2, "learning_rate": 1e-2,
            "seed": 1, **args}
    return Trainer(pm, TrainingArguments(**args), example_batches(data or tiny_data(), 2, seed=1),
                   output_dir=out, progress=False)


def test_a_fresh_run_refuses_or_replaces_another_runs_checkpoints(tmp_path):
    """The issue's case: run A left checkpoint-5 and -6; a fresh run B (--overwrite)
    saved checkpoint-1 and -2, then pruned its own as "oldest" and a later resume
    continued A. Now B refuses the folder unless told, and with overwrite_output_dir
    removes A's checkpoints first: B keeps its own, resume continues B."""
    out = tmp_path / "run"
    run_trainer(out, steps=6).train()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-5", "checkpoint-6"]
    with pytest.raises(ConfigError, match="checkpoints of another run.*checkpoint-5"):
        run_trainer(out, steps=2).train()
    b = run_trainer(out, steps=2, overwrite_output_dir=True)
    b.train()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1", "checkpoint-2"]
    resumed = run_trainer(out, steps=3)
    resumed.train(resume_from_checkpoint=True)
    assert [h["loss"] for h in resumed.history[:2]] == [h["loss"] for h in b.history]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-3"]


def test_cli_finetune_overwrite_starts_a_new_run(tmp_path, capsys):
    from minipeft.cli import main
    from minipeft.io.paths import bundled_dir
    if bundled_dir("tiny-shakespeare") is None:
        pytest.skip("the bundled model is missing")
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"name {i}:", "completion": f" x{i}"}) + "\n"
                            for i in range(6)))
    out = tmp_path / "run"
    common = ["finetune", "tiny-shakespeare", str(data), str(out), "--no-progress",
              "--save-steps", "1", "--batch-size", "2"]
    assert main(common + ["--steps", "4"]) == 0, capsys.readouterr().err
    assert main(common + ["--steps", "2", "--overwrite"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert main(common + ["--steps", "3", "--resume"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out


def test_folders_not_named_checkpoint_int_are_not_checkpoints(tmp_path):
    out = tmp_path / "run"
    t = run_trainer(out, steps=2)
    t.train()
    for odd in ("checkpoint-final", "checkpoint-1-copy", "checkpoint-x", "checkpoint-007",
                "checkpoint-" + "9" * 200):
        shutil.copytree(out / "checkpoint-2", out / odd)
    os.symlink(out / "checkpoint-2", out / "checkpoint-99")            # a link, not a folder
    assert [p.name for p in t.checkpoints()] == ["checkpoint-1", "checkpoint-2"]
    resumed = run_trainer(out, steps=4)
    resumed.train(resume_from_checkpoint=True)                          # prunes: no crash
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("checkpoint-9"))
    assert "checkpoint-final" in names and "checkpoint-3" in names and "checkpoint-4" in names
    assert (out / "checkpoint-99").is_symlink()


# ================================================================ 2. resume compares every setting
LORA = dict(r=2, target_modules=["c_attn"], lora_dropout=0.1)
CHANGES = {
    "lora_alpha": (LoraConfig(**LORA, lora_alpha=32), {}),
    "use_rslora": (LoraConfig(**LORA, use_rslora=True), {}),
    "lora_dropout": (LoraConfig(r=2, target_modules=["c_attn"], lora_dropout=0.2), {}),
    "target_modules": (LoraConfig(r=2, target_modules=["c_attn", "c_proj"], lora_dropout=0.1), {}),
    "r": (LoraConfig(r=3, target_modules=["c_attn"], lora_dropout=0.1), {}),
    "use_dora": (LoraConfig(**LORA, use_dora=True), {}),
    "bias": (LoraConfig(**LORA, bias="lora_only"), {}),
    "layers_to_transform": (LoraConfig(**LORA, layers_to_transform=[0, 1]), {}),
    "method": (IA3Config(target_modules=["c_attn"], feedforward_modules=[]), {}),
    "base model weights": (None, {"base_seed": 1}),
    "weight_decay": (None, {"weight_decay": 0.5}),
    "adam_beta2": (None, {"adam_beta2": 0.9}),
    "max_grad_norm": (None, {"max_grad_norm": 0.1}),
    "warmup_steps": (None, {"warmup_steps": 1}),
    "lr_scheduler_type": (None, {"lr_scheduler_type": "cosine"}),
    "gradient_accumulation_steps": (None, {"gradient_accumulation_steps": 2}),
    "seed": (None, {"seed": 2}),
    "training data": (None, {"data": tiny_data()[::-1]}),
}


@pytest.mark.parametrize("field", list(CHANGES))
def test_resume_refuses_a_checkpoint_made_with_another_setting_and_names_it(tmp_path, field):
    out = tmp_path / "run"
    run_trainer(out, steps=2).train()
    config, kw = CHANGES[field]
    other = run_trainer(out, steps=4, config=config, **kw)
    before = {k: v.copy() for k, v in other.params.items()}
    with pytest.raises(ConfigError, match=f"another run.*{field}"):
        other.train(resume_from_checkpoint=True)
    assert same_params(other.params, before) and other.step == 0


@pytest.mark.parametrize("config,field", [
    (IA3Config(target_modules=["c_attn", "mlp.c_fc"], feedforward_modules=["mlp.c_fc"]),
     "feedforward_modules"),
    (PrefixTuningConfig(num_virtual_tokens=2, prefix_projection=True, encoder_hidden_size=8),
     "encoder_hidden_size"),
    (PromptTuningConfig(num_virtual_tokens=2), "num_virtual_tokens"),
    (BottleneckConfig(reduction_factor=4), "non_linearity"),
])
def test_resume_compares_every_methods_own_fields(tmp_path, config, field):
    import copy
    import dataclasses
    out = tmp_path / "run"
    run_trainer(out, steps=2, config=config).train()
    changed = copy.deepcopy(config)
    value = {"feedforward_modules": [], "encoder_hidden_size": 12, "num_virtual_tokens": 3,
             "non_linearity": "gelu"}[field]
    if dataclasses.is_dataclass(changed) and field == "non_linearity":
        changed = BottleneckConfig(reduction_factor=4, non_linearity=value)
    else:
        setattr(changed, field, value)
    with pytest.raises(ConfigError, match=f"another run.*{field}"):
        run_trainer(out, steps=4, config=changed).train(resume_from_checkpoint=True)


def test_resume_accepts_settings_that_do_not_change_training(tmp_path):
    """How often to save and evaluate, how many checkpoints to keep: a resume with other
    values continues bit for bit."""
    out = tmp_path / "run"
    straight = run_trainer(tmp_path / "straight", steps=4)
    straight.train()
    first = run_trainer(out, steps=4)
    batches = first.batches_for_step

    def interrupt_at_3(step):
        if step == 2:
            raise KeyboardInterrupt                      # Ctrl-C during step 3
        return batches(step)
    first.batches_for_step = interrupt_at_3
    with pytest.raises(KeyboardInterrupt):
        first.train()
    resumed = run_trainer(out, steps=4, save_steps=3, eval_steps=2, save_total_limit=5)
    resumed.train(resume_from_checkpoint=True)
    assert same_params(resumed.params, straight.params)


def test_resume_refuses_another_dtype(tmp_path):
    out = tmp_path / "run"
    run_trainer(out, steps=2).train()
    other = run_trainer(out, steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wide = get_peft_model(model().astype(np.float64), LoraConfig(**LORA))
    other = Trainer(wide, other.args, other.batches_for_step, output_dir=out, progress=False)
    with pytest.raises(ConfigError, match="dtype: checkpoint 'float32' vs now 'float64'"):
        other.train(resume_from_checkpoint=True)


# ================================================================ 3. a checkpoint is checked before use
def _damage(ckpt, how):
    state = ckpt / "trainer_state.json"
    s = json.loads(state.read_text())
    tensors = safetensors.numpy.load_file(str(ckpt / "training_tensors.safetensors"))
    key = next(k for k in tensors if k.startswith("param/"))
    if how == "state not JSON":
        state.write_text("{step: 2")
    elif how == "state a list":
        state.write_text("[1, 2]")
    elif how == "step a string":
        state.write_text(json.dumps(s | {"step": "2"}))
    elif how == "no fingerprint":
        state.write_text(json.dumps({k: v for k, v in s.items() if k != "fingerprint"}))
    elif how == "betas wrong":
        state.write_text(json.dumps(s | {"optimizer": s["optimizer"] | {"betas": [0.9]}}))
    elif how == "history not a list":
        state.write_text(json.dumps(s | {"history": {"a": 1}}))
    elif how in ("tensor missing", "tensor misshaped", "exp_avg missing"):
        if how == "tensor missing":
            del tensors[key]
        elif how == "exp_avg missing":
            del tensors["exp_avg/" + key[len("param/"):]]
        else:
            tensors[key] = tensors[key][..., :1].copy()
        safetensors.numpy.save_file(tensors, str(ckpt / "training_tensors.safetensors"))
    elif how == "tensors not safetensors":
        (ckpt / "training_tensors.safetensors").write_bytes(b"\x00" * 20)


@pytest.mark.parametrize("how,why", [
    ("state not JSON", "not valid JSON"), ("state a list", "must hold a JSON object"),
    ("step a string", '"step" must be an integer'), ("no fingerprint", '"fingerprint"'),
    ("betas wrong", '"optimizer.betas"'), ("history not a list", '"history"'),
    ("tensor missing", "is missing"), ("exp_avg missing", "exp_avg/.* is missing"),
    ("tensor misshaped", "has shape"), ("tensors not safetensors", "not safetensors")])
def test_a_damaged_checkpoint_is_refused_before_anything_changes(tmp_path, how, why):
    out = tmp_path / "run"
    run_trainer(out, steps=2).train()
    _damage(out / "checkpoint-2", how)
    t = run_trainer(out, steps=4)
    before = {k: v.copy() for k, v in t.params.items()}
    opt_before = {k: v.copy() for k, v in t.optimizer.exp_avg.items()}
    with pytest.raises(CheckpointError, match=why):
        t.train(resume_from_checkpoint=True)
    assert same_params(t.params, before) and same_params(t.optimizer.exp_avg, opt_before)
    assert t.step == 0


# ================================================================ 3. float8/float4, NaN/inf
def raw_safetensors(path, tensors):
    """A safetensors file written by hand: {name: (dtype string, shape, bytes)}."""
    header, data, offset = {}, b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        data += raw
        offset += len(raw)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(len(h).to_bytes(8, "little") + h + data)


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3"])
def test_float8_and_float4_tensors_are_refused_by_name(tmp_path, dtype):
    folder = converted(tmp_path)
    params = safetensors.numpy.load_file(str(folder / "model.safetensors"))
    tensors = {k: ("F32", v.shape, v.tobytes()) for k, v in params.items()}
    n = int(np.prod(params["transformer.h.0.attn.c_proj.weight"].shape))
    name = "transformer.h.0.attn.c_proj.weight"
    tensors[name] = (dtype, params[name].shape, b"\x00" * n)
    raw_safetensors(folder / "model.safetensors", tensors)
    with pytest.raises(CheckpointError, match=rf"transformer\.h\.0\.attn\.c_proj\.weight has dtype {dtype}"):
        GPT2.from_pretrained(folder)


def test_a_float8_checkpoint_written_by_torch_is_refused_by_name(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    pm = peft(LoraConfig(r=2, target_modules=["c_attn"]))
    folder = pm.save_pretrained(tmp_path / "a")
    state = {k: torch.from_numpy(v) for k, v in
             safetensors.numpy.load_file(str(folder / "adapter_model.safetensors")).items()}
    key = sorted(state)[0]
    state[key] = state[key].to(torch.float8_e4m3fn)
    save_file(state, str(folder / "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"{key}.*F8_E4M3"):
        PeftModel.from_pretrained(model(), folder)


def test_nan_or_inf_weights_warn_on_load_naming_the_tensor(tmp_path):
    m = model()
    m.params["transformer.h.1.mlp.c_fc.weight"][0, 0] = np.nan
    folder = m.save_pretrained(tmp_path / "m")
    with pytest.warns(RuntimeWarning, match=r"transformer\.h\.1\.mlp\.c_fc\.weight \(1 of"):
        GPT2.from_pretrained(folder)
    pm = peft(LoraConfig(r=2, target_modules=["c_attn"]))
    key = next(k for k in pm.trainable_parameters() if "lora_B" in k)
    pm.trainable_parameters()[key][...] = np.inf
    pm.save_pretrained(tmp_path / "a")
    with pytest.warns(RuntimeWarning, match=rf"{key.replace('.', '[.]')}"):
        PeftModel.from_pretrained(model(), tmp_path / "a")
    with warnings.catch_warnings():
        warnings.simplefilter("error")                   # a clean model loads in silence
        GPT2.from_pretrained(model().save_pretrained(tmp_path / "clean"))


def test_the_error_types_are_one_family():
    assert issubclass(SaveError, MinipeftError) and issubclass(SaveError, OSError)
    assert issubclass(WeightsNotFoundError, MinipeftError)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
@pytest.mark.parametrize("kind", ["weights", "adapter"])
def test_concurrent_saves_among_files_end_whole(tmp_path, kind):
    """Two processes save two versions into one folder shared with the user's notes,
    starting from plain files (so both may convert it to links at once), 8 times each:
    no save fails, and the folder loads as one whole version with the notes intact."""
    folder = tmp_path / "dst"
    pms = {}
    if kind == "adapter":
        for s in (1, 2):
            pms[s] = peft(LoraConfig(r=2 * s, target_modules=["c_attn"], init_lora_weights=False), seed=s)
        pms[1].save_pretrained(folder)
    else:
        model(1).save_pretrained(folder)
    (folder / "notes.md").write_text("mine")

    def save(s):
        if kind == "adapter":
            pms[s].save_pretrained(folder)
        else:
            model(s).save_pretrained(folder, overwrite=True)
    pids = []
    for s in (1, 2):
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                for _ in range(8):
                    save(s)
            except BaseException:                        # noqa: BLE001 - reported by the exit code
                import traceback
                (tmp_path / f"error-{s}.txt").write_text(traceback.format_exc())
                code = 1
            os._exit(code)
        pids.append(pid)
    codes = [os.waitpid(pid, 0)[1] for pid in pids]
    assert codes == [0, 0], "\n".join(p.read_text() for p in tmp_path.glob("error-*.txt"))
    assert (folder / "notes.md").read_text() == "mine"
    if kind == "adapter":
        pm = PeftModel.from_pretrained(model(), folder)
        got = dict(pm._adapter_arrays("default"))
        assert any(same_params(got, dict(pms[s]._adapter_arrays("default"))) for s in (1, 2))
    else:
        params = GPT2.from_pretrained(folder).params
        assert any(same_params(params, model(s).params) for s in (1, 2))


@POSIX
def test_atomic_file_replaces_a_planted_link_and_a_failure_changes_nothing(tmp_path):
    """io.atomic.atomic_file (metrics.json and other single files): written through the
    descriptor of an exclusive temp file, renamed over the final name; a link there is
    replaced, not written through; a failure leaves the old file and no temp file."""
    from minipeft.io.atomic import atomic_file
    victim = tmp_path / "victim"
    victim.write_text("do not touch")
    folder = tmp_path / "out"
    folder.mkdir()
    os.symlink(victim, folder / "metrics.json")
    with atomic_file(folder / "metrics.json") as f:
        f.write(b'{"a": 1}\n')
    assert victim.read_text() == "do not touch"
    assert not (folder / "metrics.json").is_symlink()
    assert (folder / "metrics.json").read_text() == '{"a": 1}\n'
    assert oct((folder / "metrics.json").stat().st_mode & 0o777) == oct(0o666 & ~_umask())
    with pytest.raises(SaveError, match="disk is full"):
        with atomic_file(folder / "metrics.json") as f:
            f.write(b'{"a": ')
            raise OSError(28, "No space left on device")
    assert (folder / "metrics.json").read_text() == '{"a": 1}\n'
    assert sorted(os.listdir(folder)) == ["metrics.json"]


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_folder_where_a_saved_file_goes_is_refused_and_nothing_changes(tmp_path):
    """The user's folder named config.json in the destination: a SaveError saying so."""
    folder = tmp_path / "m"
    (folder / "config.json").mkdir(parents=True)
    (folder / "notes.md").write_text("mine")
    before = _snapshot(folder)
    with pytest.raises(SaveError, match="config.json is not a file"):
        model(1).save_pretrained(folder, overwrite=True)
    assert _snapshot(folder) == before and sorted(os.listdir(folder)) == ["config.json", "notes.md"]

"""Saves are atomic, and loads never unpickle.

Atomic: a process SIGKILLed while it saves leaves the old version or the new one,
whole and loadable, never a half-written one. Six saves: model weights
(``GPT2.save_pretrained(folder, overwrite=True)``), a LoRA adapter
(``PeftModel.save_pretrained``), each of these two also into a folder that holds a file
of the user's (then only the save's own files change, through links into a generation
folder, and the user's file must stay as it was), a training checkpoint
(``Trainer.save_checkpoint``) and the loss plot (``minipeft.train.plots.plot_losses``).
For each, the test writes a good
version A, then a saving process writes versions B and C over it and is killed; after
each kill the destination must load (``GPT2.from_pretrained``, ``PeftModel.from_pretrained``,
``Trainer.latest_checkpoint`` + ``load_checkpoint`` as a resume does, a PNG whose every
chunk passes its CRC) and equal, exactly, the version before the killed save or the
one it was writing.

Two kinds of kill, by a helper process (``sys.executable -c``) that imports minipeft
and builds B and C once, then forks one saving child per kill:

- timed: the child saves B, C, B, ... in a loop; the helper times the loop's second
  save and SIGKILLs the child a seeded fraction of that duration into the third (the
  8 fractions stratified over [0, 1)), so kills land inside writes as well as between
  files. The saves are tens of milliseconds (52 MB of weights, 16 MB of adapter).
- at every step: the child saves B over A once, with an audit hook (``sys.addaudithook``)
  that SIGKILLs it just before its n-th file-system change (open for writing, mkdir,
  rename, remove, rmdir, chmod, ...), for every n of that save. This reaches the
  instants between two renames that a timer rarely hits.

A kill cannot clean up: the temp files and folders a killed save was writing (names
that start with '.', other than the generation the links show) stay behind. They are
accepted only because loading ignores them:
each check loads with them present, then a normal save of A, also with them present,
must load back as A; the test removes them afterwards.

Fsync is not tested: a SIGKILL leaves the kernel's page cache intact; a power cut is
another matter. POSIX only (SIGKILL, fork).

Never unpickled (the second half of the file): malicious pickles, which run code when
unpickled (a control test shows they do), put where minipeft reads weights.
"""
from __future__ import annotations

import ast
import json
import os
import select
import shutil
import subprocess
import sys
import textwrap
import warnings
import zlib
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from minipeft import GPT2, GPT2Config, LoraConfig, PeftModel, get_peft_model
from minipeft.train.pretrain import init_params
from minipeft.train.trainer import Trainer, TrainingArguments

pytestmark = pytest.mark.skipif(os.name != "posix" or not hasattr(os, "fork"),
                                reason="POSIX only: SIGKILL and fork")

TIMED_KILLS = 8                 # timed kills per kind
SEED = 20261129                 # the delays
VERSIONS = (0, 1, 2)            # A is written by the test; the saving process writes B and C

# The brief's small model; the weights' vocabulary is large (52 MB, ~20 ms a save on a
# laptop) so that a timed kill lands inside the writing, not only between saves.
SMALL = dict(n_layer=2, n_head=2, n_positions=32)
WEIGHTS_CFG = GPT2Config(**SMALL, n_embd=64, vocab_size=200_000)
BASE_CFG = GPT2Config(**SMALL, n_embd=256, vocab_size=2000)      # under the adapters


def _quiet_peft(model, config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")          # fan_in_fan_out set for Conv1D, as peft
        return get_peft_model(model, config)


@cache
def _base_params():
    return init_params(BASE_CFG, seed=0)


def _base_model():
    return GPT2(BASE_CFG, {k: v.copy() for k, v in _base_params().items()})


def _fill(arrays, seed):
    """Seeded values in place, so that each version differs in every tensor."""
    rng = np.random.default_rng(seed)
    for a in arrays:
        a[...] = rng.standard_normal(a.shape)


# ---------------------------------------------------------------- the four saves
class Weights:
    """GPT2.save_pretrained(root/model, overwrite=True): temp folder, then a swap."""
    @staticmethod
    def build(seed):
        return GPT2(WEIGHTS_CFG, init_params(WEIGHTS_CFG, seed=seed))

    @staticmethod
    def save(model, root):
        model.save_pretrained(root / "model", overwrite=True)

    @staticmethod
    def load(root):
        return dict(GPT2.from_pretrained(root / "model").params)


class Adapter:
    """PeftModel.save_pretrained(root/adapter): two temp files, each renamed into place.
    The versions differ in rank too, so weights of one with the config of another
    cannot load."""
    RANKS = {0: 64, 1: 512, 2: 384}

    @staticmethod
    def build(seed):
        pm = _quiet_peft(_base_model(), LoraConfig(r=Adapter.RANKS[seed], lora_alpha=16,
                                                   target_modules="all-linear"))
        _fill([a for t in pm.lora["default"].values() for a in t.values()], seed)
        return pm

    @staticmethod
    def save(pm, root):
        pm.save_pretrained(root / "adapter")

    @staticmethod
    def load(root):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = PeftModel.from_pretrained(_base_model(), root / "adapter")
        snap = {f"{k}.{n}": a for k, t in pm.lora["default"].items() for n, a in t.items()}
        return snap | {"r": pm.peft_config["default"].r}


class Checkpoint:
    """Trainer.save_checkpoint() of step 5 into root/run/checkpoint-5 (over the one there)."""
    STEP = 5
    ARGS = TrainingArguments(max_steps=10, save_steps=5, seed=0)

    @staticmethod
    def trainer(root=None):
        pm = _quiet_peft(_base_model(), LoraConfig(r=256, lora_alpha=16, target_modules="all-linear"))
        return Trainer(pm, Checkpoint.ARGS, lambda step: [], output_dir=root, progress=False)

    @staticmethod
    def build(seed):
        tr = Checkpoint.trainer()
        opt = tr.optimizer
        _fill([*tr.params.values(), *opt.exp_avg.values()], seed)
        for v in opt.exp_avg_sq.values():
            v[...] = np.random.default_rng(seed + 100).random(v.shape)
        tr.step = opt.step_count = Checkpoint.STEP
        opt.param_step = {k: Checkpoint.STEP for k in opt.param_step}
        tr.history = [{"step": s, "loss": float(seed + 1 / s)} for s in range(1, Checkpoint.STEP + 1)]
        return tr

    @staticmethod
    def save(tr, root):
        tr.output_dir = root / "run"
        tr.save_checkpoint()

    @staticmethod
    def load(root):
        tr = Checkpoint.trainer(root / "run")
        path = tr.latest_checkpoint()              # what train(resume_from_checkpoint=True) picks
        assert path == root / "run" / f"checkpoint-{Checkpoint.STEP}", \
            f"latest checkpoint is {path}, not checkpoint-{Checkpoint.STEP}"
        tr.load_checkpoint(path)
        opt = tr.optimizer
        snap = {f"param/{k}": v.copy() for k, v in tr.params.items()}
        snap |= {f"exp_avg/{k}": v for k, v in opt.exp_avg.items()}
        snap |= {f"exp_avg_sq/{k}": v for k, v in opt.exp_avg_sq.items()}
        return snap | {"step": tr.step, "history": json.dumps(tr.history)}


def check_png(data: bytes) -> None:
    """A whole PNG: the signature, then chunks whose CRCs hold, ending with IEND."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "no PNG signature"
    pos, kinds = 8, []
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        crc = int.from_bytes(data[pos + 8 + n:pos + 12 + n], "big")
        assert len(body) == n and zlib.crc32(kind + body) == crc, f"chunk {kind!r} is cut or corrupt"
        kinds.append(kind)
        pos += 12 + n
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND", f"chunks {kinds[:2]} ... {kinds[-1:]}"


class Plot:
    """plot_losses(history, root/loss.png): a temp file, then a rename."""
    @staticmethod
    def build(seed):
        rng = np.random.default_rng(seed)
        loss = np.exp(-np.linspace(0, 3 + seed, 300)) + 0.05 * rng.random(300)
        history = [{"step": i + 1, "loss": float(v)} for i, v in enumerate(loss)]
        for h in history[::50]:
            h["eval_loss"] = h["loss"] + 0.1
        return history

    @staticmethod
    def save(history, root):
        from minipeft.train.plots import plot_losses
        plot_losses(history, root / "loss.png")

    @staticmethod
    def load(root):
        data = (root / "loss.png").read_bytes()
        check_png(data)
        return data


NOTES = "the user's own notes, which no save may touch\n"


class AmongFiles:
    """A save into a folder that holds a file of the user's (``notes.txt``): the save's
    files change together, the notes stay. ``FOLDER`` and ``KIND`` are set below."""
    FOLDER, KIND = None, None

    @classmethod
    def prepare(cls, root):
        (root / cls.FOLDER).mkdir(exist_ok=True)
        (root / cls.FOLDER / "notes.txt").write_text(NOTES)

    @classmethod
    def build(cls, seed):
        return cls.KIND.build(seed)

    @classmethod
    def save(cls, obj, root):
        cls.KIND.save(obj, root)

    @classmethod
    def load(cls, root):
        notes = (root / cls.FOLDER / "notes.txt").read_text()
        assert notes == NOTES, f"notes.txt changed: {notes!r}"
        return cls.KIND.load(root)


class WeightsAmongFiles(AmongFiles):
    """GPT2.save_pretrained(root/model, overwrite=True) where model/ holds notes.txt."""
    FOLDER, KIND = "model", Weights


class AdapterAmongFiles(AmongFiles):
    """PeftModel.save_pretrained(root/adapter) where adapter/ holds notes.txt."""
    FOLDER, KIND = "adapter", Adapter


class FirstAmongFiles(AmongFiles):
    """The first save into a folder since the user put notes.txt there: A's files are
    plain files (A was saved before the notes came), which this save turns into links."""
    @classmethod
    def restore(cls, a, root):
        shutil.rmtree(root / cls.FOLDER, ignore_errors=True)
        cls.KIND.save(a, root)
        cls.prepare(root)


class WeightsFirstAmongFiles(FirstAmongFiles):
    FOLDER, KIND = "model", Weights


class AdapterFirstAmongFiles(FirstAmongFiles):
    FOLDER, KIND = "adapter", Adapter


KINDS = {"weights": Weights, "adapter": Adapter, "weights-among-files": WeightsAmongFiles,
         "adapter-among-files": AdapterAmongFiles, "weights-first-among-files": WeightsFirstAmongFiles,
         "adapter-first-among-files": AdapterFirstAmongFiles, "checkpoint": Checkpoint,
         "plot": Plot}


def prepare(K, root):
    """What the destination holds before any save of kind K (the user's file)."""
    if hasattr(K, "prepare"):
        K.prepare(root)


# ---------------------------------------------------------------- the saving process
HELPER = textwrap.dedent(r'''
    import json, os, signal, sys, time
    from pathlib import Path
    tests, kind, root = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    sys.path.insert(0, tests)
    import test_atomic_saves as T
    K = T.KINDS[kind]
    new = {s: K.build(s) for s in (1, 2)}          # B and C, built once
    warm = root.parent / "warm-up"                 # one-time work (matplotlib's font cache)
    warm.mkdir()                                   # happens here, not in every child
    T.prepare(K, warm)
    K.save(new[1], warm)
    WRITES = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.chmod", "os.truncate",
              "os.link", "os.symlink", "shutil.copyfile", "shutil.rmtree", "shutil.move",
              "tempfile.mkstemp", "tempfile.mkdtemp"}
    WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def changes_files(event, args):
        if event in WRITES:
            return True
        if event == "open":
            _, mode, flags = args
            return any(c in mode for c in "wxa+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
        return False

    def describe(event, args):
        words = [str(a).replace(str(root) + "/", "") for a in args if a is not None and a != -1]
        return " ".join([event] + words)[:100]

    def child(run, out_fd):
        """In the forked child: run(), then exit without Python's cleanup."""
        try:
            run(out_fd)
        finally:
            os._exit(0)

    def fork(run):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            child(run, w)
        os.close(w)
        return pid, r

    def finish(pid, r):
        _, status = os.waitpid(pid, 0)
        with os.fdopen(r, "rb") as f:
            said = f.read()
        return (os.WTERMSIG(status) if os.WIFSIGNALED(status) else None), said

    def loop(w):                                   # B, C, B, ...: "S" as a save starts, "E" as it ends
        while True:
            for s in (1, 2):
                os.write(w, b"S")
                K.save(new[s], root)
                os.write(w, b"E")

    def kill_inside_third_save(pid, r, fraction):
        """Time the loop's second save, then SIGKILL `fraction` of that into the third."""
        at = []
        while len(at) < 5:                         # S E S E S
            os.read(r, 1)
            at.append(time.perf_counter())
        seconds = at[3] - at[2]
        time.sleep(max(0.0, fraction * seconds - (time.perf_counter() - at[4])))
        os.kill(pid, signal.SIGKILL)
        return seconds

    def record(w):                                 # every file change of one save of B
        seen = []
        sys.addaudithook(lambda e, a: seen.append(describe(e, a)) if changes_files(e, a) else None)
        K.save(new[1], root)
        os.write(w, json.dumps(seen).encode())

    def kill_before(n):                            # SIGKILL just before the n-th file change
        def run(w):
            count = [0]
            def hook(event, args):
                if changes_files(event, args):
                    count[0] += 1
                    if count[0] == n:
                        os.kill(os.getpid(), signal.SIGKILL)
                        time.sleep(60)
            sys.addaudithook(hook)
            K.save(new[1], root)
        return run

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "timed":
            pid, r = fork(loop)
            seconds = kill_inside_third_save(pid, r, cmd["fraction"])
            sig, said = finish(pid, r)
            reply = {"signal": sig, "save_seconds": seconds, "saves": said.count(b"E") + 2}
        elif cmd["op"] == "record":
            sig, said = finish(*fork(record))
            reply = {"signal": sig, "changes": json.loads(said)}
        else:
            sig, said = finish(*fork(kill_before(cmd["n"])))
            reply = {"signal": sig}
        print(json.dumps(reply), flush=True)
''')


class Helper:
    """The saving process: imports minipeft and builds B and C once, then forks one
    saving child per kill (a fresh interpreter per kill would spend ~1 s importing)."""

    def __init__(self, kind, root):
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
                   MPLCONFIGDIR=str(root.parent / "mplconfig"))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HELPER, str(Path(__file__).parent), kind, str(root)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        assert self._reply(120)["ready"]

    def _reply(self, timeout):
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            self.close()
            raise AssertionError(f"the saving process did not answer (exit code {self.proc.poll()})")
        return json.loads(line)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._reply(60)

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------- checking a destination
def same(a, b) -> bool:
    if isinstance(a, bytes) or isinstance(b, bytes):
        return a == b
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k] for k in a)


def hidden_leftovers(root):
    """Hidden entries under root, except minipeft's live ones: a ``.minipeft-<key>`` link
    and the generation folder it points at (the files the user sees are links into it)."""
    live = set()
    for link in root.rglob(".minipeft-*"):
        if link.is_symlink() and link.name in (".minipeft-model", ".minipeft-adapter"):
            live |= {link, link.parent / os.readlink(link)}
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*")
                  if p not in live and not any(q in live for q in p.parents))


class Destination:
    """root holds one kind's destination; versions[v] is what a whole save of v loads as."""

    def __init__(self, kind, tmp_path):
        self.K, self.root = KINDS[kind], tmp_path / "dst"
        self.root.mkdir()
        self.a = self.K.build(0)
        self.versions = {}
        for v in VERSIONS:
            scratch = tmp_path / f"version-{v}"
            scratch.mkdir()
            prepare(self.K, scratch)
            self.K.save(self.a if v == 0 else self.K.build(v), scratch)
            self.versions[v] = self.K.load(scratch)
            shutil.rmtree(scratch)
        assert not any(same(self.versions[0], self.versions[v]) for v in (1, 2))
        self.restore()

    def restore(self):
        """Put A back (for the "first among files" kinds, as plain files beside the notes)."""
        if hasattr(self.K, "restore"):
            self.K.restore(self.a, self.root)
        else:
            prepare(self.K, self.root)
            self.K.save(self.a, self.root)

    def outcome(self) -> tuple[str, int]:
        """-> ('A', 'B' or 'C' if the destination loads as that whole version, else what is
        wrong; the number of hidden leftovers). Then a normal save of A over it, with the
        leftovers still there, must load as A; the leftovers are removed afterwards."""
        try:
            snap = self.K.load(self.root)
            found = next((v for v in VERSIONS if same(snap, self.versions[v])), None)
            result = "ABC"[found] if found is not None else "loads, but equals no version"
        except Exception as e:                    # noqa: BLE001 - any failure to load is the finding
            result = f"broken: {type(e).__name__}: {str(e)[:160]}"
        left = hidden_leftovers(self.root)
        self.restore()
        assert same(self.K.load(self.root), self.versions[0]), "a save beside leftovers failed"
        for name in left:
            p = self.root / name
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        return result, len(left)




# a loop's third save is never a first
@pytest.mark.parametrize("kind", [k for k in KINDS if "first" not in k])
def test_timed_kills_leave_a_whole_version(kind, tmp_path):
    """8 SIGKILLs inside the third save of a loop (B over C), at seeded fractions of a
    save's duration: C or B, whole, every time."""
    dst = Destination(kind, tmp_path)
    helper = Helper(kind, dst.root)
    try:
        rng = np.random.default_rng([SEED, list(KINDS).index(kind)])
        rows = []
        for i in range(TIMED_KILLS):
            fraction = (i + rng.random()) / TIMED_KILLS          # spread over one save
            reply = helper.ask(op="timed", fraction=fraction)
            assert reply["signal"] == 9, reply
            rows.append((fraction, reply["save_seconds"], reply["saves"], *dst.outcome()))
    finally:
        helper.close()
    print(f"\n{kind}: killed at a fraction of one save (its duration) -> saves done, outcome, leftovers")
    for fraction, seconds, saves, result, left in rows:
        print(f"  {fraction:.2f} of {seconds * 1e3:5.1f} ms -> {saves} saved, {result}, {left} left")
    bad = [r for r in rows if r[3] not in ("B", "C")]
    assert not bad, (f"{kind}: {len(bad)} of {len(rows)} kills left a destination that is not a "
                     f"whole version: {bad}")


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_kill_before_any_file_change_leaves_a_whole_version(kind, tmp_path):
    """A SIGKILL just before each file-system change of one save of B over A, for every
    change (and once not at all): A until the one rename that publishes B, then B."""
    dst = Destination(kind, tmp_path)
    helper = Helper(kind, dst.root)
    try:
        changes = helper.ask(op="record")["changes"]
        dst.outcome()                              # back to A
        rows = []
        for n, change in enumerate(changes + ["nothing: the save runs to its end"], start=1):
            reply = helper.ask(op="kill", n=n)
            assert reply["signal"] == (9 if n <= len(changes) else None), (n, change, reply)
            rows.append((change, *dst.outcome()))
    finally:
        helper.close()
    print(f"\n{kind}: {len(changes)} file changes in one save; killed just before each:")
    for change, result, left in rows:
        print(f"  {change:100s} -> {result}, {left} left")
    seen = {r[1] for r in rows}
    assert "A" in seen and "B" in seen, f"{kind}: the kills never saw both versions: {seen}"
    bad = [(c, r) for c, r, _ in rows if r not in ("A", "B")]
    assert not bad, (f"{kind}: {len(bad)} of {len(rows)} kill points leave a destination that is "
                     f"not a whole version:\n" + "\n".join(f"  before {c}: {r}" for c, r in bad))


# ---------------------------------------------------------------- no pickle runs
# A checkpoint is data, and loading it must never run code: minipeft reads safetensors
# (no code in the format), and a pytorch_model.bin only with torch.load(weights_only=True),
# whose unpickler builds tensors and containers and refuses every other global.
TINY = GPT2Config(n_layer=1, n_head=1, n_embd=4, n_positions=4, vocab_size=8)


class RunsCode:
    """Unpickling this object calls os.system or builtins.open, which creates `marker`."""

    def __init__(self, how, marker):
        self.how, self.marker = how, str(marker)

    def __reduce__(self):
        if self.how == "os.system":
            import shlex
            return os.system, (f"touch {shlex.quote(self.marker)}",)
        import builtins
        return builtins.open, (self.marker, "w")


def write_payload(path, fmt, how, marker):
    """A pickle that runs code: torch.save's zip archive or a bare pickle (protocol 2)."""
    import pickle

    import torch
    state = {"transformer.wte.weight": torch.zeros(TINY.vocab_size, TINY.n_embd),
             "lm_head.weight": RunsCode(how, marker)}
    if fmt == "torch.save":
        torch.save(state, path)
    else:
        path.write_bytes(pickle.dumps(state, protocol=2))
    return path


PAYLOADS = [(fmt, how) for fmt in ("torch.save", "pickle") for how in ("os.system", "builtins.open")]


@pytest.mark.parametrize("fmt,how", PAYLOADS)
def test_the_payloads_do_run_code_when_unpickled(tmp_path, fmt, how):
    """The control: unpickled without weights_only, each payload creates its marker, so
    the marker's absence in the tests below means the payload was never unpickled."""
    import pickle

    import torch
    marker = tmp_path / "ran"
    path = write_payload(tmp_path / "evil.bin", fmt, how, marker)
    if fmt == "torch.save":
        torch.load(path, weights_only=False)
    else:
        pickle.loads(path.read_bytes())
    assert marker.exists()


def hf_folder(folder, weights_name, payload_fmt, how, marker):
    """A Hugging Face GPT-2 folder, valid config.json, whose weights file is a payload."""
    from minipeft.io.checkpoint import hf_config_dict
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(hf_config_dict(TINY)))
    write_payload(folder / weights_name, payload_fmt, how, marker)
    return folder


@pytest.mark.parametrize("fmt,how", PAYLOADS)
def test_a_malicious_pytorch_model_bin_is_refused_unrun(tmp_path, fmt, how):
    """pytorch_model.bin is read with weights_only=True: refused, its code never runs,
    by from_pretrained, convert_checkpoint and `minipeft convert` alike."""
    pytest.importorskip("torch")
    from minipeft import CheckpointError, convert_checkpoint
    from minipeft.cli import main
    marker = tmp_path / "ran"
    src = hf_folder(tmp_path / "hf", "pytorch_model.bin", fmt, how, marker)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        GPT2.from_pretrained(src)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        convert_checkpoint(src, tmp_path / "out")
    assert main(["convert", str(src), str(tmp_path / "out")]) == 1
    assert not marker.exists(), "loading ran the pickle's code"
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("fmt,how", PAYLOADS)
def test_a_pickle_under_a_safetensors_name_is_refused_unread(tmp_path, fmt, how):
    """model.safetensors, a shard named in model.safetensors.index.json,
    adapter_model.safetensors and a checkpoint's training_tensors.safetensors are read
    as safetensors only: a pickle there is "not safetensors", and never unpickled."""
    pytest.importorskip("torch")
    from minipeft import CheckpointError
    marker = tmp_path / "ran"

    src = hf_folder(tmp_path / "single", "model.safetensors", fmt, how, marker)
    with pytest.raises(CheckpointError, match="not safetensors"):
        GPT2.from_pretrained(src)

    shard = "pytorch_model-00001-of-00001.bin"
    src = hf_folder(tmp_path / "sharded", shard, fmt, how, marker)
    (src / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"transformer.wte.weight": shard}}))
    with pytest.raises(CheckpointError, match="not safetensors"):
        GPT2.from_pretrained(src)

    model = GPT2(TINY, init_params(TINY, seed=0))
    pm = _quiet_peft(model, LoraConfig(r=2, target_modules=["c_attn"]))
    pm.save_pretrained(tmp_path / "adapter")
    write_payload(tmp_path / "adapter" / "adapter_model.safetensors", fmt, how, marker)
    with pytest.raises(CheckpointError, match="not safetensors"):
        PeftModel.from_pretrained(GPT2(TINY, init_params(TINY, seed=0)), tmp_path / "adapter")

    tr = Trainer(pm, TrainingArguments(max_steps=1), lambda step: [], output_dir=tmp_path / "run",
                 progress=False)
    path = tr.save_checkpoint()
    write_payload(path / "training_tensors.safetensors", fmt, how, marker)
    with pytest.raises(CheckpointError, match="not safetensors"):
        tr.load_checkpoint(path)
    assert not marker.exists(), "loading ran the pickle's code"


def test_adapter_model_bin_is_never_read(tmp_path):
    """An adapter folder with only adapter_model.bin: refused by name, never opened."""
    pytest.importorskip("torch")
    from minipeft import WeightsNotFoundError
    marker = tmp_path / "ran"
    pm = _quiet_peft(GPT2(TINY, init_params(TINY, seed=0)), LoraConfig(r=2, target_modules=["c_attn"]))
    folder = pm.save_pretrained(tmp_path / "adapter")
    (folder / "adapter_model.safetensors").unlink()
    write_payload(folder / "adapter_model.bin", "torch.save", "builtins.open", marker)
    with pytest.raises(WeightsNotFoundError, match="only safetensors"):
        PeftModel.from_pretrained(GPT2(TINY, init_params(TINY, seed=0)), folder)
    assert not marker.exists()


def test_a_bin_with_a_non_tensor_value_is_a_checkpoint_error(tmp_path):
    """weights_only=True still admits ints, strings, lists: such a state dict is not
    GPT-2 weights and must be a CheckpointError, not an AttributeError."""
    torch = pytest.importorskip("torch")
    from minipeft import CheckpointError
    from minipeft.io.checkpoint import hf_config_dict
    (tmp_path / "config.json").write_text(json.dumps(hf_config_dict(TINY)))
    torch.save({"transformer.wte.weight": torch.zeros(8, 4), "step": 5}, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError):
        GPT2.from_pretrained(tmp_path)


UNPICKLERS = {"pickle", "_pickle", "cPickle", "pickletools", "dill", "cloudpickle", "joblib",
              "shelve", "marshal", "copyreg"}


def _dotted(node) -> str:
    """`torch.serialization.load` -> "torch.serialization.load" ("" if not a plain name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def test_the_package_unpickles_nothing_but_weights_only_torch_load():
    """Read every module of the package (its syntax tree, so that prose about pickles in
    docstrings and messages does not count): no pickle-capable module is imported, every
    torch.load passes weights_only=True, np.load never allow_pickle=True, nothing
    named read_pickle or Unpickler is called. (numba's cache=True reads its own index
    files, which it wrote under __pycache__; that is numba's, not a checkpoint.)"""
    import minipeft
    pkg = Path(minipeft.__file__).parent
    torch_loads, problems = [], []
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg.parent).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            where = f"{rel}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import):
                problems += [f"{where} imports {a.name}" for a in node.names
                             if a.name.split(".")[0] in UNPICKLERS]
            elif isinstance(node, ast.ImportFrom):
                module = (node.module or "").split(".")[0]
                if module in UNPICKLERS:
                    problems.append(f"{where} imports from {node.module}")
                if module == "torch" and any(a.name == "load" for a in node.names):
                    problems.append(f"{where} imports torch's load under another name")
            elif isinstance(node, ast.Call):
                name = _dotted(node.func)
                root, last = name.split(".")[0], name.split(".")[-1]
                kw = {k.arg: k.value for k in node.keywords}
                if root in ("__import__", "import_module") or last == "import_module":
                    arg = node.args[0] if node.args else None
                    if isinstance(arg, ast.Constant) and str(arg.value).split(".")[0] in UNPICKLERS:
                        problems.append(f"{where} imports {arg.value} dynamically")
                if root == "torch" and last == "load":
                    torch_loads.append(rel)
                    w = kw.get("weights_only")
                    if not (isinstance(w, ast.Constant) and w.value is True):
                        problems.append(f"{where} calls {name} without weights_only=True")
                if root in ("np", "numpy") and last == "load":
                    a = kw.get("allow_pickle")
                    if a is not None and not (isinstance(a, ast.Constant) and a.value is False):
                        problems.append(f"{where} calls {name} with allow_pickle")
                if root in UNPICKLERS or last in ("read_pickle", "Unpickler", "load_pickle"):
                    problems.append(f"{where} calls {name}")
    assert not problems, "\n".join(problems)
    assert torch_loads == ["minipeft/io/tensors.py"], torch_loads      # the one .bin reader

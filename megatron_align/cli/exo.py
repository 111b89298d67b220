"""The EXO repository's five stages as users run them (``examples/exo/*.sh``), on megatron_align.

    megatron-align exo train_sft     INIT_MODEL_NAME INIT_MODEL_PATH MODEL_TYPE DATA_NAME DATA_PATH [k=v ...]
    megatron-align exo inference_sft DEVICE_IDS DATA_NAME:DATA_PATH SPLIT MODEL_PATH [key=value ...]
    megatron-align exo train_rm      INIT_MODEL_NAME INIT_MODEL_PATH MODEL_TYPE DATA_NAME DATA_PATH [k=v ...]
    megatron-align exo inference_rm  DEVICE_IDS DATA_PATH SPLIT MODEL_PATH [key=value ...]
    megatron-align exo train_exo     INIT_MODEL_NAME INIT_MODEL_PATH MODEL_TYPE DATA_NAME DATA_PATH LOSS_TYPE
                                     NUM_CONTRASTIVE [key=value ...]
    megatron-align exo pref_to_rw    DATA_DIR

Data are the repository's JSON arrays, ``DATA_PATH/{train,test}.json``: ``{prompt, chosen}`` (SFT),
``{prompt, chosen, rejected}`` (preference), ``{prompt, completions}`` (samples), ``{prompt, completions,
rewards}`` (labelled). Outputs go where the repository puts them: ``models/<name>_<abbr>/<type>/`` (abbr:
DATA_NAME before ``/``; ``train_exo``: ``<type>_<loss>_nc<N>``), ``<dir>_sft/<split>.json`` (4 samples per
prompt at temperature 0.8, top-k off, 200 new tokens, seed 0), ``<path with sft -> rw>/<split>.json``.

Models: a Hugging Face directory in (imported with ``megatron-align convert --from-hf``) and a Hugging Face
directory out (exported with ``--to-hf``) for SFT and EXO; the reward model is our binary Bradley-Terry reward
model checkpoint (transformers has no class for it), which ``inference_rm`` reads. Training runs our stage
scripts (``train_gpt_sft.py``, ``train_reward_model.py``, ``train_gpt_dpo.py``) with the repository's
hyper-parameters; trailing ``key=value`` arguments override them (e.g. ``trainer.sft.max_steps=10``; for the
inference stages ``num_samples``, ``max_new_tokens``, ``temperature``, ``seed``). ``DEVICE_IDS`` sets
``CUDA_VISIBLE_DEVICES``. Problems: one line ``exo error: ...`` and exit status 2.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from megatron_align.config.errors import UserError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples" / "nlp" / "gpt"
SPLITS = ("train", "test")

SFT_DEFAULTS = ["trainer.sft.max_epochs=2", "model.optim.lr=1e-5", "model.data.train_ds.max_seq_length=512",
                "model.data.validation_ds.max_seq_length=512", "model.data.train_ds.global_batch_size=32",
                "model.data.train_ds.micro_batch_size=4", "model.data.validation_ds.global_batch_size=32",
                "model.data.validation_ds.micro_batch_size=4"]
RM_DEFAULTS = ["model.reward_model_type=binary_ranking", "trainer.rm.max_epochs=1", "model.optim.lr=5e-6",
               "model.data.seq_length=512", "model.global_batch_size=32", "model.micro_batch_size=4"]
EXO_DEFAULTS = ["model.dpo.beta_r=0.5", "model.dpo.beta_pi=0.5", "model.dpo.temp=0.8", "model.optim.lr=1e-6",
                "model.optim.betas=[0.9,0.95]", "model.optim.weight_decay=0.0",
                "model.optim.sched.warmup_steps=0", "model.optim.sched.constant_steps=0",
                "model.optim.sched.name=CosineAnnealing",
                "trainer.dpo.max_epochs=1", "model.data.seq_length=512", "model.data.append_eod=True",
                "model.global_batch_size=16", "model.micro_batch_size=4"]
SAMPLE_DEFAULTS = {"num_samples": 4, "max_new_tokens": 200, "temperature": 0.8, "seed": 0}


class ExoError(UserError):
    """A stage's input or arguments are wrong (printed as one line)."""


def read_json_array(path: Path) -> list:
    """The records of an EXO data file (a JSON array of objects)."""
    try:
        records = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise ExoError(f"{path}: cannot read ({e.strerror or e})") from None
    except json.JSONDecodeError as e:
        raise ExoError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ExoError(f"{path}: expected a JSON array of objects (the EXO repository's format)")
    return records


def write_json_array(path: Path, records: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(records, indent=4, ensure_ascii=False))
    os.replace(tmp, path)


def _jsonl(path: Path, records: list, keys: tuple) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, r in enumerate(records):
            missing = [k for k in keys if not isinstance(r.get(k), str)]
            if missing:
                raise ExoError(f"record {i}: field {missing[0]!r} missing or not a string")
            f.write(json.dumps({k: r[k] for k in keys}) + "\n")
    return path


def _run(cmd: list, what: str) -> None:
    logger.info("%s: %s", what, " ".join(str(c) for c in cmd))
    proc = subprocess.run([str(c) for c in cmd], cwd=os.getcwd())
    if proc.returncode != 0:
        raise ExoError(f"{what} failed (exit status {proc.returncode}; its messages are above)")


def import_model(path: str, work: Path) -> Path:
    """A megatron_align checkpoint of ``path`` (itself when it is one; else imported from Hugging Face)."""
    p = Path(path)
    if (p / "model_config.yaml").is_file():
        return p
    if not (p / "config.json").is_file():
        raise ExoError(f"{path}: neither a Hugging Face model directory (config.json) nor a megatron_align "
                       "checkpoint (model_config.yaml)")
    out = work / "imported"
    if not (out / "model_config.yaml").is_file():
        shutil.rmtree(out, ignore_errors=True)
        _run([sys.executable, "-m", "megatron_align.cli", "convert", "--from-hf", p, "--out", out],
             f"import {path}")
    return out


def export_model(ckpt: Path, out: Path) -> None:
    """``ckpt`` as a Hugging Face directory at ``out`` (replaced whole)."""
    tmp = out.with_name(out.name + ".export")
    shutil.rmtree(tmp, ignore_errors=True)
    _run([sys.executable, "-m", "megatron_align.cli", "convert", "--to-hf", ckpt, "--out", tmp],
         f"export {out}")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _final(run_dir: Path) -> Path:
    from megatron_align.models.checkpoint import latest_checkpoint

    final = latest_checkpoint(run_dir / "checkpoints")
    if final is None:
        raise ExoError(f"{run_dir}: the run saved no checkpoint")
    return final


def _split_files(data_path: str) -> dict:
    d = Path(data_path)
    files = {s: d / f"{s}.json" for s in SPLITS}
    for f in files.values():
        if not f.is_file():
            raise ExoError(f"{f}: missing (DATA_PATH holds train.json and test.json)")
    return files


def _out_dir(name: str, data_name: str, kind: str) -> Path:
    return Path("models") / f"{name}_{data_name.split('/')[0]}" / kind


def train_sft(name, init_path, model_type, data_name, data_path, *extra) -> Path:
    out = _out_dir(name, data_name, model_type)
    work = out.with_name(f".{out.name}.work")
    init = import_model(init_path, work)
    files = {s: _jsonl(work / f"{s}.jsonl", read_json_array(f), ("prompt", "chosen"))
             for s, f in _split_files(data_path).items()}
    run = work / "run"
    _run([sys.executable, EXAMPLES / "train_gpt_sft.py", f"model.restore_from_path={init}",
          f"model.data.train_ds.file_path={files['train']}",
          f"model.data.validation_ds.file_path={files['test']}", "model.data.train_ds.add_eos=True",
          f"exp_manager.explicit_log_dir={run}", *SFT_DEFAULTS, *extra],
         "SFT")
    export_model(_final(run), out)
    return out


def train_rm(name, init_path, model_type, data_name, data_path, *extra) -> Path:
    out = _out_dir(name, data_name, model_type)
    work = out.with_name(f".{out.name}.work")
    init = import_model(init_path, work)
    files = {s: _jsonl(work / f"{s}.jsonl", read_json_array(f), ("prompt", "chosen", "rejected"))
             for s, f in _split_files(data_path).items()}
    run = work / "run"
    _run([sys.executable, EXAMPLES / "train_reward_model.py",
          f"pretrained_checkpoint.restore_from_path={init}",
          f"model.data.data_prefix={{train: [{files['train']}], validation: [{files['test']}], "
          f"test: [{files['test']}]}}", f"exp_manager.explicit_log_dir={run}", *RM_DEFAULTS, *extra],
         "reward model")
    final = _final(run)
    tmp = out.with_name(out.name + ".copy")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(final, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def train_exo(name, init_path, model_type, data_name, data_path, loss, num_contrastive, *extra) -> Path:
    out = _out_dir(name, data_name, f"{model_type}_{loss}_nc{num_contrastive}")
    work = out.with_name(f".{out.name}.work")
    init = import_model(init_path, work)
    files = _split_files(data_path)
    run = work / "run"
    _run([sys.executable, EXAMPLES / "train_gpt_dpo.py", f"pretrained_checkpoint.restore_from_path={init}",
          f"model.data.data_prefix={{train: [{files['train']}], validation: [{files['test']}], "
          f"test: [{files['test']}]}}", f"model.dpo.preference_loss={loss}",
          f"model.dpo.num_contrastive={num_contrastive}", f"exp_manager.explicit_log_dir={run}",
          *EXO_DEFAULTS, *extra], f"EXO ({loss})")
    export_model(_final(run), out)
    return out


def _options(extra: tuple) -> dict:
    opts = dict(SAMPLE_DEFAULTS)
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or key not in opts:
            raise ExoError(f"{item!r}: expected one of {', '.join(f'{k}=...' for k in opts)}")
        try:
            opts[key] = type(SAMPLE_DEFAULTS[key])(value)
        except ValueError:
            raise ExoError(f"{item!r}: {key} takes a {type(SAMPLE_DEFAULTS[key]).__name__}") from None
    return opts


def _devices(device_ids: str) -> None:
    if device_ids and device_ids.lower() not in ("cpu", "none"):
        os.environ["CUDA_VISIBLE_DEVICES"] = device_ids


def inference_sft(device_ids, name_path, split, model_path, *extra) -> Path:
    """``num_samples`` completions per prompt of ``<dir>/<split>.json`` -> ``<dir>_sft/<split>.json``."""
    from megatron_align.config.sampling import SamplingParams
    from megatron_align.generation.build import load_backend
    from megatron_align.generation.text import generate_local

    _devices(device_ids)
    opts = _options(extra)
    _, sep, data_dir = name_path.partition(":")
    if not sep:
        raise ExoError(f"{name_path!r}: expected DATA_NAME:DATA_PATH (e.g. hh/sft:data/hh/sft)")
    src = Path(data_dir)
    records = read_json_array(src / f"{split}.json")
    prompts = []
    for i, r in enumerate(records):
        if not isinstance(r.get("prompt"), str):
            raise ExoError(f"{src / f'{split}.json'}: record {i}: field 'prompt' missing or not a string")
        prompts.append(r["prompt"])
    out = Path(str(src).rstrip("/") + "_sft") / f"{split}.json"
    ckpt = import_model(model_path, out.parent / ".model")
    k = opts["num_samples"]
    params = SamplingParams(temperature=opts["temperature"], top_k=0, top_p=0.0,
                            tokens_to_generate=opts["max_new_tokens"], random_seed=opts["seed"],
                            end_strings=[])
    backend = load_backend(ckpt, max_batch_size=64)
    try:
        texts = generate_local(backend, [p for p in prompts for _ in range(k)], params)
    finally:
        backend.close()
    write_json_array(out, [{"prompt": p, "completions": texts[i * k:(i + 1) * k]}
                           for i, p in enumerate(prompts)])
    logger.info("wrote %d prompts x %d completions to %s", len(prompts), k, out)
    return out


def inference_rm(device_ids, data_path, split, model_path, *extra) -> Path:
    """Rewards of every completion of ``<data_path>/<split>.json`` -> the path with ``sft`` -> ``rw``."""
    from megatron_align.scoring.reward_model import RewardScorer

    _devices(device_ids)
    if extra:
        raise ExoError(f"unexpected arguments {list(extra)}")
    src = Path(data_path) / f"{split}.json"
    records = read_json_array(src)
    groups = []
    for i, r in enumerate(records):
        comps = r.get("completions") if "completions" in r else [r.get("chosen"), r.get("rejected")]
        if not isinstance(r.get("prompt"), str) or not isinstance(comps, list) or not comps or \
                not all(isinstance(c, str) for c in comps):
            raise ExoError(f"{src}: record {i}: expected prompt and completions (or chosen and rejected)")
        groups.append((r["prompt"], comps))
    scorer = RewardScorer(model_path)
    texts = [p + c for p, comps in groups for c in comps]
    scores = [row[0] for row in scorer.score(texts)]
    out_records, at = [], 0
    for p, comps in groups:
        out_records.append({"prompt": p, "completions": comps, "rewards": scores[at:at + len(comps)]})
        at += len(comps)
    out = Path(str(data_path).replace("sft", "rw")) / f"{split}.json"
    if out.parent.resolve() == Path(data_path).resolve():
        out = Path(str(data_path).rstrip("/") + "_rw") / f"{split}.json"
    write_json_array(out, out_records)
    logger.info("wrote rewards of %d completions to %s", len(texts), out)
    return out


def pref_to_rw(data_dir) -> Path:
    """``<dir>/{train,test}.json`` preference records -> ``<dir>_p2r/`` completions [chosen, rejected],
    rewards [1, 0] (the repository's ``pref_to_rw.py``)."""
    from megatron_align.data.errors import RecordError
    from megatron_align.data.preference import pref_to_rw as convert

    src = Path(data_dir)
    out = Path(str(src).rstrip("/") + "_p2r")
    for split, f in _split_files(str(src)).items():
        converted = []
        for i, r in enumerate(read_json_array(f)):
            try:
                converted.append(convert(r))
            except RecordError as e:
                raise ExoError(f"{f}: record {i}: {e.field}: {e.problem}") from None
        write_json_array(out / f"{split}.json", converted)
    return out


STAGES = {"train_sft": (train_sft, 5), "train_rm": (train_rm, 5), "train_exo": (train_exo, 7),
          "inference_sft": (inference_sft, 4), "inference_rm": (inference_rm, 4),
          "pref_to_rw": (pref_to_rw, 1)}


def exo_main(argv: list[str]) -> int:
    """``megatron-align exo STAGE ARGS...``; returns the exit status."""
    from megatron_align.log import setup_logging

    wants_help = any(a in ("-h", "--help") for a in argv)
    if wants_help or not argv or argv[0] not in STAGES:
        print("usage:\n" + __doc__.split("\n\n", 1)[1], file=sys.stdout if wants_help else sys.stderr)
        if not wants_help and argv:
            print(f"exo error: unknown stage {argv[0]!r}; one of {', '.join(STAGES)}", file=sys.stderr)
        return 0 if wants_help else 2
    fn, n = STAGES[argv[0]]
    args = argv[1:]
    if len(args) < n or any("=" in a for a in args[:n]) or (argv[0] == "pref_to_rw" and len(args) > 1):
        print(f"exo error: {argv[0]} takes {n} positional arguments (see --help), got {args[:n]}",
              file=sys.stderr)
        return 2
    setup_logging()
    try:
        out = fn(*args)
    except (UserError, ValueError) as e:
        print(f"exo error: {e}", file=sys.stderr)
        return 2
    print(f"{argv[0]}: wrote {out}")
    return 0

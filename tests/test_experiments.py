"""Experiment families (asyrp run-experiment): the miniature family end to end, skipping finished work, every
family file of configs/experiments, the bash scripts, the SLURM job files and submit.sh --dry-run."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, TINY_CLIP_CFG, tiny_backbone, tiny_clip

from asyrp.study import families, family_results, runner, variables
from asyrp.cli import main as cli

CONFIGS = REPO / "configs" / "experiments"
MINI = CONFIGS / "mini.yaml"
FAMILIES = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
STUDY = [f for f in FAMILIES if f not in ("mini", "mini_reproduction")]  # the mini study: scripts/mini.sh
MINI_OVERRIDES = ["edit.n_images=2", "runs.transfer.evaluate.fid=false"]  # FID (Inception at 299 px) on conv only


class SoloContext:
    """An asyrp.pipeline.distributed.Context stand-in for one process (rank 0 of 1, or a given rank): collectives are
    no-ops, so the distributed code paths of run-experiment run without torch.distributed."""

    def __init__(self, rank=0, world_size=1):
        self.rank, self.world_size, self.local_rank = rank, world_size, rank
        self.barriers = 0

    def shard(self, items):
        n = len(items)
        return list(items[self.rank * n // self.world_size:(self.rank + 1) * n // self.world_size])

    def all_reduce_sum(self, tensor):
        return tensor

    def all_reduce_grads(self, params):
        pass

    def all_gather_objects(self, obj):
        return [obj] * self.world_size

    def barrier(self):
        self.barriers += 1

    def close(self):
        pass


@pytest.fixture(scope="module")
def mini_models(tmp_path_factory):
    """The tiny U-Net, tiny CLIP and a random FID Inception, saved as files (as a cluster would have them)."""
    from asyrp.backbones import save_clip, save_unet
    from asyrp.models.inception import build_fid_inception
    d = tmp_path_factory.mktemp("mini_models")
    save_unet(tiny_backbone().unet, d / "unet.pt")
    encoder, size = tiny_clip()
    save_clip(encoder.model, TINY_CLIP_CFG, d / "clip.pt", image_size=size)
    torch.save(build_fid_inception().state_dict(), d / "inception.pt")
    return d


@pytest.fixture()
def mini_env_vars(mini_models, tmp_path, monkeypatch):
    values = {"ASYRP_MINI_BACKBONE": str(mini_models / "unet.pt"), "ASYRP_MINI_CLIP": str(mini_models / "clip.pt"),
              "ASYRP_MINI_INCEPTION": str(mini_models / "inception.pt"), "ASYRP_MINI_CACHE": str(tmp_path / "cache"),
              "ASYRP_MINI_DEVICE": "cpu", "ASYRP_MINI_FID": "true"}
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture()
def mini_env(mini_env_vars, tmp_path):
    return tmp_path


def _mtimes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and p.name != "results.json"}


def test_mini_family_end_to_end_then_everything_is_skipped(mini_env, mini_env_vars, monkeypatch, capsys):
    out = mini_env / "runs"
    # first call: every stage, through the distributed code path (one process)
    ctx = SoloContext()
    result = runner.run_experiment(MINI, out, overrides=MINI_OVERRIDES, progress=False, distributed=ctx)
    assert ctx.barriers > 0
    assert sorted((a["run"], a["stage"], a["action"]) for a in result["actions"] if a["stage"] != "evaluate") == [
        ("conv", "edit", "edited"), ("conv", "train", "trained"), ("conv@epoch0", "edit", "edited"),
        ("transfer", "edit", "edited"), ("transfer", "train", "trained")]
    path = out / "mini" / "results.json"
    assert result["path"] == str(path)
    results = json.loads(path.read_text())
    assert results["schema"] == "asyrp.results/1" and results["family"] == "mini"
    assert results["config_path"].endswith("mini.yaml") and results["config"]["family"] == "mini"
    assert results["overrides"] == MINI_OVERRIDES
    runs = {r["name"]: r for r in results["runs"]}
    assert list(runs) == ["conv", "conv@epoch0", "transfer"]
    for r in runs.values():
        assert r["status"] == "evaluated"
        assert Path(r["train_dir"]).is_dir() and Path(r["edit_dir"]).is_dir() and Path(r["log"]).is_file()
        assert r["train_summary"]["steps"] > 0
        assert r["tags"]["heads"] == r["tags"]["heads_evaluated"] == 1 and r["tags"]["architecture_checked"]
        assert r["tags"]["attribute"] == "smiling" and r["tags"]["official"] is False
        assert r["evaluation"]["src_text"] == "face" and r["evaluation"]["trg_text"] == "smiling face"
        for file in r["eval_files"].values():
            assert json.loads(Path(file).read_text())["schema"] == "asyrp.eval/1"
    # the trained run: FID and S_dir per folder; its epoch-0 checkpoint edited into its own folder
    conv = runs["conv"]
    assert conv["tags"]["epoch"] == 1 and conv["tags"]["final"] and conv["tags"]["kind"] == "conv"
    assert conv["tags"]["scheduler_step"] == 1 and conv["tags"]["optimizer"] == "sgd"
    metrics = conv["metrics"]["edited"]
    for key in ("s_dir_original", "s_dir_original_std", "s_dir_reconstructed", "fid_original_edited",
                "fid_reconstructed_edited", "fid_original_reconstructed", "kid_original_edited"):
        assert isinstance(metrics[key], float), key
    assert metrics["n"] == 2 and metrics["strength"] == 1.0
    epoch0 = runs["conv@epoch0"]
    assert epoch0["tags"]["epoch"] == 0 and not epoch0["tags"]["final"]
    assert epoch0["edit_dir"].endswith("edit_epoch0")
    assert json.loads((Path(epoch0["edit_dir"]) / "edit.json").read_text())["directions"][0]["path"].endswith(
        "delta_epoch0.pt")
    # the transfer run started from conv's final weights; two strengths, S_dir only
    transfer = runs["transfer"]
    assert transfer["tags"]["init_from"] == "conv"
    record = json.loads((Path(transfer["train_dir"]) / "config.json").read_text())
    assert record["config"]["init_from"] == str(out / "mini" / "conv" / "train" / "delta.pt")
    assert sorted(transfer["metrics"]) == ["edited_s+1.00", "edited_s-1.00"]
    assert transfer["metrics"]["edited_s-1.00"]["strength"] == -1.0
    assert "fid_original_edited" not in transfer["metrics"]["edited_s+1.00"]
    assert transfer["tags"]["strengths"] == [-1.0, 1.0] and transfer["tags"]["strength"] is None
    report = pytest.importorskip("asyrp.report")  # the reader of results.json (asyrp report / figures)
    assert [r["name"] for r in report.load_results(path)["runs"]] == list(runs)

    # second call, through the CLI: nothing is recomputed
    def forbidden(*a, **k):
        raise AssertionError("a finished stage ran again")
    for name in ("train", "edit", "evaluate_run"):  # the names the runner calls
        monkeypatch.setattr(runner, name, forbidden)
    before = _mtimes(out)
    sets = [a for o in MINI_OVERRIDES for a in ("--set", o)]
    assert cli(["run-experiment", str(MINI), "--out", str(out), *sets, "--no-progress"]) == 0
    assert _mtimes(out) == before
    again = json.loads(path.read_text())
    assert again["runs"] == results["runs"]
    assert "9 skipped" in capsys.readouterr().err

    # --dry-run and --list read the files only
    assert cli(["run-experiment", str(MINI), "--out", str(out), *sets, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "transfer [wave 1] (needs conv)" in text and "train: skip (done)" in text
    assert "evaluate: edit/edited_s-1.00: skip (done)" in text and ": edit\n" not in text
    assert cli(["run-experiment", str(MINI), "--list"]) == 0
    assert capsys.readouterr().out.split() == ["conv", "transfer"]
    assert cli(["run-experiment", str(MINI), "--list", "--wave", "1"]) == 0
    assert capsys.readouterr().out.split() == ["transfer"]
    monkeypatch.undo()  # the real train / edit / evaluate_run again
    for name, value in mini_env_vars.items():
        monkeypatch.setenv(name, value)

    # a missing evaluation is redone, on rank 0 only; other settings make a result stale
    transfer_dir = out / "mini" / "transfer" / "edit"
    victim = transfer_dir / "eval_edited_s-1.00.json"
    first = json.loads(victim.read_text())
    victim.unlink()
    stamp = path.stat().st_mtime_ns
    r = runner.run_experiment(MINI, out, only=["transfer"], stages=["evaluate"], overrides=MINI_OVERRIDES,
                         progress=False, distributed=SoloContext(rank=1, world_size=2))
    assert not victim.exists() and path.stat().st_mtime_ns == stamp  # another rank neither evaluates nor writes
    r = runner.run_experiment(MINI, out, only=["transfer"], stages=["evaluate"], overrides=MINI_OVERRIDES, progress=False)
    assert [(a["folder"], a["action"]) for a in r["actions"]] == [("edited_s-1.00", "evaluated"),
                                                                   ("edited_s+1.00", "skipped")]
    assert json.loads(victim.read_text())["metrics"] == first["metrics"]
    r = runner.run_experiment(MINI, out, only=["transfer"], stages=["evaluate"], progress=False,
                         overrides=[*MINI_OVERRIDES, "runs.transfer.evaluate.prompt_mode=single"])
    assert [a["action"] for a in r["actions"]] == ["evaluated", "evaluated"]
    assert json.loads(victim.read_text())["settings"]["prompt_mode"] == "single"

    # a run whose source is not trained is refused with a one-line error naming the source
    with pytest.raises(variables.ExperimentError, match="needs run conv"):
        runner.run_experiment(MINI, out / "elsewhere", only=["transfer"], overrides=MINI_OVERRIDES, progress=False)

    # the F5 guard: an evaluated block that is not the trained one is an error
    edit_json = out / "mini" / "conv" / "edit" / "edit.json"
    record = json.loads(edit_json.read_text())
    record["directions"][0]["config"]["heads"] = 2
    edit_json.write_text(json.dumps(record))
    with pytest.raises(variables.ExperimentError, match="heads: trained 1 ≠ evaluated 2"):
        family_results.collect_family(families.load_family(MINI, out, MINI_OVERRIDES))


# --------------------------------------------------------------------------------------------------
# Family files
# --------------------------------------------------------------------------------------------------

MINI_ENV = {"ASYRP_MINI_BACKBONE": "unet.pt", "ASYRP_MINI_CLIP": "clip.pt"}
EXPLICIT_TRAIN = ("optimizer", "lr", "scheduler_step", "scheduler_gamma", "epochs", "batch_size", "n_images",
                  "clip_weight", "l1_weight", "n_train_step", "n_inv_step")
EXPLICIT_EDIT = ("n_images", "n_test_step", "strengths", "data")
EXPLICIT_EVAL = ("clip_model", "prompt_mode", "fid", "sdir")


@pytest.mark.parametrize("family", FAMILIES)
def test_family_file_resolves(family, tmp_path):
    from asyrp.attributes import attribute_table
    from asyrp.pipeline.edit import EditConfig
    from asyrp.pipeline.train import TrainConfig
    fam = families.load_family(CONFIGS / f"{family}.yaml", tmp_path, env=MINI_ENV)  # strict: defaults for every variable
    assert fam.name == family and fam.runs and not fam.missing
    text = (CONFIGS / f"{family}.yaml").read_text()
    assert fam.raw.get("figures") is not None
    if family in STUDY:  # names the blog figure / table it regenerates
        assert re.search(r"^# .*(Fig\.|Table|no blog figure)", text, re.MULTILINE), family
        assert fam.raw["figures"]
    table = attribute_table()
    tags = [json.dumps(family_results.config_tags(run, job), sort_keys=True, default=str) for run in fam.runs for job in run.jobs]
    assert len(set(tags)) == len(tags), "two results entries with the same tags cannot be told apart in a figure"
    for run in fam.runs:
        assert run.texts is not None and (run.texts.name in table or family == "mini_reproduction"), run.name
        assert run.jobs and all(isinstance(j.config, EditConfig) and j.config.directions for j in run.jobs)
        for key in EXPLICIT_EDIT:
            assert key in run.spec["edit"], (run.name, key)
        for key in EXPLICIT_EVAL:
            assert key in run.spec["evaluate"], (run.name, key)
        if run.train is not None:
            assert isinstance(run.train, TrainConfig)
            for key in EXPLICIT_TRAIN:  # every hyperparameter written out, the schedule above all (F9)
                assert key in run.spec["train"], (run.name, key)
            if run.train.delta is not None:
                assert run.train.delta.kind in ("conv", "pixel", "channel", "pixel_channel", "channel_pixel")
        else:
            assert run.official or run.direction_ref is not None, run.name
        for ref in run.deps:  # references name a run of the family that trains enough epochs
            src = fam.run(ref["run"])
            assert src.train is not None and (ref["epoch"] is None or ref["epoch"] < src.train.epochs)
            assert src.wave < run.wave
        if run.init_ref is not None:
            epoch = run.init_ref["epoch"]
            file = "delta.pt" if epoch is None else f"delta_epoch{epoch}.pt"
            assert run.train.init_from == str(fam.run(run.init_ref["run"]).train_dir / file)


def test_family_hyperparameters_match_the_reference(tmp_path):
    def load(name):
        return {r.name: r for r in families.load_family(CONFIGS / f"{name}.yaml", tmp_path).runs}
    repro = load("reproduction")
    attrs = ["smiling", "sad", "angry", "tanned", "man", "woman", "young", "curly_hair", "nicolas", "pixar",
             "neanderthal", "modigliani", "frida"]
    t_edit = {"smiling": 513, "sad": 513, "angry": 512, "tanned": 512, "man": 513, "woman": 513, "young": 513,
              "curly_hair": 499, "nicolas": 461, "pixar": 446, "neanderthal": 490, "modigliani": 403, "frida": 321}
    for a in attrs:
        off, re_ = repro[f"official_{a}"], repro[f"retrained_{a}"]
        assert off.official and off.jobs[0].direction == f"asyrp-{a}" and off.train is None
        assert off.jobs[0].config.t_edit == t_edit[a] and off.jobs[0].config.t_boost == 167
        c = re_.train
        assert (c.optimizer, c.lr, c.n_train_step, c.n_inv_step, c.l1_weight, c.batch_size, c.n_images, c.epochs) \
            == ("sgd", 0.5, 40, 40, 3.0, 1, 1000, 1)
        assert c.delta.kind == "conv" and c.t_edit == t_edit[a]
        assert c.clip_weight == (1.2 if a == "neanderthal" else 0.8)
        assert re_.jobs[0].config.strengths == [1.0, 0.5] and re_.jobs[0].config.n_images == 100
    heads = load("heads")
    assert [heads[f"pc_h{n}"].train.delta.heads for n in (1, 2, 4, 8)] == [1, 2, 4, 8]
    for n in (1, 2, 4, 8):
        c = heads[f"pc_h{n}"].train
        assert (c.delta.kind, c.optimizer, c.lr, c.scheduler_step, c.scheduler_gamma, c.attribute) == \
            ("pixel_channel", "adamw", 1e-5, 3, 0.1, "pixar")
        assert heads[f"pc_h{n}"].eval_epochs == [0, 1, 2, 3, 4, 5]
        assert heads[f"pc_h{n}_strengths"].direction_ref == {"family": None, "run": f"pc_h{n}", "epoch": 5}
    layer = load("layertype")
    assert {r.train.delta.kind for r in layer.values()} == {"conv", "pixel", "channel", "pixel_channel",
                                                             "channel_pixel"}
    assert all((r.train.attribute, r.train.optimizer, r.train.lr) == ("neanderthal", "adamw", 1e-4)
               for r in layer.values())
    assert {r.train.delta.time_embedding for r in load("time_embedding").values()} == {"add", "mult", "adagn"}
    assert {r.train.delta.norm for r in load("norm").values()} == {"group", "instance"}
    assert {r.train.delta.activation for r in load("activation").values()} == {"silu", "gelu", "relu"}
    opt = load("optimizer")
    assert (opt["conv_sgd"].train.optimizer, opt["conv_sgd"].train.lr) == ("sgd", 0.5)
    assert (opt["pc_h1_adamw"].train.optimizer, opt["pc_h1_adamw"].train.lr) == ("adamw", 1e-5)
    transfer = load("transfer")
    for attr in ("modigliani", "neanderthal", "smiling"):
        for kind in ("pc_h1", "conv"):
            t, s = transfer[f"transfer_{kind}_{attr}"], transfer[f"scratch_{kind}_{attr}"]
            assert t.init_ref == {"family": None, "run": f"pixar_{kind}", "epoch": 5} and s.train.init_from is None
            assert t.train.attribute == s.train.attribute == attr
    goblin = load("goblin")
    assert all(r.train.t_edit is None and r.train.attribute == "goblin" for r in goblin.values())  # untuned


def test_family_file_errors_are_one_line(tmp_path, monkeypatch, capsys):
    def write(text):
        path = tmp_path / "fam.yaml"
        path.write_text(text)
        return path
    base = "defaults: {backbone: x, attribute: smiling, train: {epochs: 2}}\nruns:\n"
    with pytest.raises(variables.ExperimentError, match="unknown TrainConfig fields"):
        families.load_family(write(base + "  - {name: a, train: {learning_rate: 1}}\n"), tmp_path)
    with pytest.raises(variables.ExperimentError, match="unknown attribute 'smilling'"):
        families.load_family(write(base + "  - {name: a, attribute: smilling}\n"), tmp_path)
    with pytest.raises(variables.ExperimentError, match="names run 'b', which is not in family"):
        families.load_family(write(base + "  - {name: a, train: {init_from: {run: b}}}\n"), tmp_path)
    with pytest.raises(variables.ExperimentError, match="asks for epoch 2 of a"):
        families.load_family(write(base + "  - {name: a}\n  - {name: c, direction: {run: a, epoch: 2}}\n"), tmp_path)
    with pytest.raises(variables.ExperimentError, match="cycle"):
        families.load_family(write(base + "  - {name: a, train: {init_from: {run: c}}}\n"
                                   "  - {name: c, train: {init_from: {run: a}}}\n"), tmp_path)
    with pytest.raises(variables.ExperimentError, match="eval_epochs"):
        families.load_family(write(base + "  - {name: a, eval_epochs: [2]}\n"), tmp_path)
    with pytest.raises(variables.ExperimentError, match="edit.delta_config must not be set"):
        families.load_family(write(base + "  - {name: a, edit: {delta_config: 'heads=8'}}\n"), tmp_path)
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    path = write("defaults: {backbone: '${NOT_SET_ANYWHERE}', attribute: smiling, train: {}}\nruns: [{name: a}]\n")
    with pytest.raises(variables.ExperimentError, match="NOT_SET_ANYWHERE"):
        families.load_family(path, tmp_path)
    assert cli(["run-experiment", str(path), "--list"]) == 0  # listing needs no variables
    assert cli(["run-experiment", str(path), "--out", str(tmp_path)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("asyrp ")]
    assert len(err) == 1 and "NOT_SET_ANYWHERE" in err[0]


def test_variables_and_overrides():
    env = {"A": "7", "B": "", "C": "x"}
    assert variables.expand_variables({"n": "${A}", "e": "${B:-}", "d": "${B:-5}", "u": "${B-5}", "s": "p/${C}/${Z:-q}",
                               "f": "${Z:-1.0e-5}", "b": "${Z:-true}"}, env) == \
        {"n": 7, "e": None, "d": 5, "u": None, "s": "p/x/q", "f": 1e-5, "b": True}
    missing = []
    assert variables.expand_variables("${Z}", env, strict=False, missing=missing) == "${Z}" and missing == ["Z"]
    assert variables.parse_overrides(["train.lr=1e-5", "edit.strengths=[-1, 1]", "evaluate.fid=false"]) == \
        [(["train", "lr"], 1e-5), (["edit", "strengths"], [-1, 1]), (["evaluate", "fid"], False)]
    assert variables.deep_merge({"t": {"a": 1, "d": {"x": 1}}}, {"t": {"d": {"y": 2}}}) == {"t": {"a": 1, "d": {"x": 1, "y": 2}}}


# --------------------------------------------------------------------------------------------------
# Scripts and SLURM jobs
# --------------------------------------------------------------------------------------------------

JOBS = REPO / "src" / "jobs"
SHELL_FILES = sorted((REPO / "scripts").glob("*.sh")) + sorted(JOBS.glob("*.job")) + [JOBS / "submit.sh"]
SBATCH_OPTIONS = {"job-name", "partition", "gres", "gpus", "gpus-per-node", "gpus-per-task", "ntasks",
                  "ntasks-per-node", "nodes", "cpus-per-task", "cpus-per-gpu", "mem", "mem-per-cpu", "mem-per-gpu",
                  "time", "output", "error", "array", "account", "qos", "constraint", "dependency", "export",
                  "mail-type", "mail-user", "exclusive"}
TIME_RE = re.compile(r"^(\d+-)?\d{1,2}:\d{2}:\d{2}$")


def test_every_family_has_a_script_and_every_script_parses():
    assert {p.stem for p in (REPO / "scripts").glob("*.sh")} >= set(STUDY) | {"mini"}
    assert {p.name for p in JOBS.glob("*.job")} >= {"install_env.job", "download.job", "precompute.job",
                                                     "train_array.job", "train_multigpu.job", "evaluate.job",
                                                     "figures.job"}
    for path in SHELL_FILES:
        subprocess.run(["bash", "-n", str(path)], check=True)
        text = path.read_text()
        assert path.name == "common.sh" or "set -euo pipefail" in text, path  # common.sh is sourced
        assert not re.search(r"/home/|~/|\$HOME", text), path  # no absolute home paths
    common = (REPO / "scripts" / "common.sh").read_text()
    assert 'config="configs/experiments/$1.yaml"' in common and "asyrp run-experiment" in common
    for family in STUDY:
        text = (REPO / "scripts" / f"{family}.sh").read_text()
        assert f"configs/experiments/{family}.yaml" in text and f"\nrun_family {family}\n" in text
        assert 'source "$(dirname "${BASH_SOURCE[0]}")/common.sh"' in text


def test_sbatch_directives_are_valid():
    for path in sorted(JOBS.glob("*.job")):
        lines = path.read_text().splitlines()
        assert lines[0].startswith("#!/bin/bash"), path
        first_command = next(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
        directives = [(i, line) for i, line in enumerate(lines) if line.startswith("#SBATCH")]
        assert directives, path
        names = set()
        for i, line in directives:
            assert i < first_command, f"{path.name}: {line!r} after the first command is ignored by sbatch"
            m = re.fullmatch(r"#SBATCH --([a-z-]+)(?:[= ](\S+))?", line.strip())
            assert m and m.group(1) in SBATCH_OPTIONS, f"{path.name}: {line!r}"
            name, value = m.groups()
            names.add(name)
            if name == "time":
                assert TIME_RE.match(value), f"{path.name}: {line!r}"
            if name in ("output", "error"):
                assert not value.startswith("/") and "~" not in value, f"{path.name}: {line!r}"
            if name == "gres":
                assert re.fullmatch(r"gpu(:[a-z0-9]+)?:\d+", value), f"{path.name}: {line!r}"
        assert {"job-name", "time", "output"} <= names, path


def _dry_run(*args, **env):
    result = subprocess.run(["bash", str(JOBS / "submit.sh"), "--dry-run", *args], check=False, capture_output=True,
                            text=True, env={**os.environ, "PYTHON": sys.executable, **env}, cwd=REPO / "tests",
                            timeout=120)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith("#")]
    assert commands and all(c[0] == "sbatch" for c in commands), result.stdout
    return [dict(re.match(r"--([a-z-]+)=?(.*)", a).groups() for a in c[1:-1]) | {"script": c[-1]}
            for c in commands]


def test_submit_dry_run_chains_the_stages(tmp_path):
    fam = families.load_family(CONFIGS / "heads.yaml", tmp_path)
    waves = [[r.name for r in fam.runs if r.wave == w] for w in range(fam.n_waves)]
    jobs = _dry_run("heads", PARTITION="mygpu", ACCOUNT="proj1", TIME_TRAIN="1-12:00:00")
    assert [j["script"] for j in jobs] == ["src/jobs/precompute.job"] + ["src/jobs/train_array.job"] * len(waves) + \
        ["src/jobs/evaluate.job", "src/jobs/figures.job"]
    for j in jobs:
        assert j["parsable"] == "" and j["account"] == "proj1"
        assert (REPO / j["script"]).is_file()
        assert "CONFIG=configs/experiments/heads.yaml" in j["export"] or j["script"].endswith("precompute.job")
    ids = [1001 + k for k in range(len(jobs))]  # the dry run's placeholder ids, in submission order
    for k, j in enumerate(jobs[1:], start=1):
        assert j["dependency"] == f"afterok:{ids[k - 1]}"
    for w, j in enumerate(jobs[1:1 + len(waves)]):
        assert j["array"] == f"0-{len(waves[w]) - 1}%8" and f"WAVE={w}" in j["export"]
        assert j["partition"] == "mygpu" and j["gres"] == "gpu:1" and j["time"] == "1-12:00:00"
    assert "partition" not in jobs[-1]  # figures: CPU, the default partition unless CPU_PARTITION is set

    jobs = _dry_run("--no-precompute", str(CONFIGS / "transfer.yaml"), GPUS="4", GPU_TYPE="a100")
    train = [j for j in jobs if "train" in j["script"]]
    assert [j["script"] for j in train] == ["src/jobs/train_multigpu.job"] * 2
    assert "dependency" not in train[0] and train[1]["dependency"] == "afterok:1001"
    assert all(j["gres"] == "gpu:a100:4" and "GPUS=4" in j["export"] for j in train)
    assert train[1]["array"] == "0-5%8"  # the six transfer runs wait for their pixar sources

"""Ship the shapes world: copy the outputs of ``asyrp train-backbone`` and ``asyrp train-clip`` into the package and
write ``MODEL_CARD.md`` from their logs and ``eval.json`` files (every number in the card comes from those files).

    python -m asyrp.worlds.card --ddpm runs/shapes_ddpm --clip runs/shapes_clip \
        --dest src/asyrp/resources/worlds/shapes --command-ddpm "..." --command-clip "..."
    python -m asyrp.worlds.card --rerender --dest src/asyrp/resources/worlds/shapes

``ship`` also writes ``card.json`` (the quoted commands, the machine, the notes), so that ``--rerender`` can write
the card again from the shipped folder alone, e.g. after ``python -m asyrp.worlds.probe_h --readiness`` has written
``readiness.json`` there (the card's "Readiness of h" section, issue 19).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from asyrp.errors import UserError
from asyrp.io.files import atomic_json, atomic_path, read_jsonl
from asyrp.worlds import shapes

SHIPPED = {"ddpm": ("ddpm.pt", "ddpm_train_log.jsonl", "samples.png"), "clip": ("clip.pt", "clip_train_log.jsonl")}


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def _loss_table(records: list[dict], keys: tuple[str, ...], every: int) -> str:
    records = [r for r in records if all(k in r for k in keys)]  # the log also holds zero-shot probe lines
    rows = [r for r in records if r["step"] % every == 0 or r is records[-1]]
    head = "| step | " + " | ".join(keys) + " | seconds |\n|---:|" + "---:|" * len(keys) + "---:|\n"
    return head + "".join(f"| {r['step']} | " + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k])
                                                          for k in keys) + f" | {r['seconds']} |\n" for r in rows)


def _to_t_0(r: dict) -> str:
    """The card's words for a readiness measured from a partial inversion (files from before t_0 was recorded:
    999, the full inversion)."""
    return f" to t_0 = {r['t_0']} (an edit's partial inversion)" if r.get("t_0", 999) != 999 else ""


def readiness_section(r: dict) -> list[str]:
    """The card's lines for ``readiness.json`` (:func:`asyrp.worlds.probe_h.readiness`): does h carry the attribute
    before any delta block is trained?"""
    v, th, rec = r["verdict"], r["verdict"]["thresholds"], r["reconstruction"]
    acc = r["linear_probe"]["accuracy"]
    rows = [f"| {'asymmetric (Asyrp step)' if s['asymmetric'] else 'symmetric'} | {s['moved']} of {s['n']} | "
            f"{s['others_kept']} of {s['n']} | {s['moved_and_others_kept']} of {s['n']} | {s['still_source']} of "
            f"{s['n']} |" for s in r["h_swap"]]
    return [
        "## Readiness of h (issue 19)",
        "",
        f"Can an edit in h work in this DDPM at all? Measured without training any block (`{r['command']}`, "
        f"`readiness.json`): {rec['n']} real pairs A ({r['from']}) and B (the same image, {r['to']}), both "
        f"DDIM-inverted with {r['n_steps']} steps{_to_t_0(r)}; A is regenerated with B's h at t ≥ {r['t_edit']} and "
        f"read by the exact reader. Reference: A with its own h (the plain regeneration) keeps A's other attributes in "
        f"{rec['others_kept']} of {rec['n']} and reads {r['from']} in {rec['still_source']}.",
        "",
        f"| h-swap | moved to {r['to']} | others kept | both | still {r['from']} |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
        f"Linear read-out of {r['attribute']} from h (ridge, {r['linear_probe']['n_train']} training and "
        f"{r['linear_probe']['n_test']} held-out forward-noised images; chance {r['linear_probe']['chance']:.3f}): "
        + ", ".join(f"t = {t}: {a:.3f}" for t, a in acc.items()) + ".",
        "",
        f"Thresholds (issue 19): moved ≥ {th['moved_min']:.0%} and others kept ≥ {th['others_kept_min']:.0%} of the "
        f"pairs (12 of 16) for one kind of swap, read-out ≥ {th['readout_min']} at one t. "
        f"**Ready: {'yes' if v['ready'] else 'no'}** (h-swap: "
        + ", ".join(f"{k} {'passes' if ok else 'fails'}" for k, ok in v["swap_ok"].items())
        + f"; best read-out {v['readout_best']['accuracy']:.3f} at t = {v['readout_best']['t']}, "
        f"{'passes' if v['readout_ok'] else 'fails'}).",
        "",
    ]


def _finetune_lines(dm: dict) -> list[str]:
    """The DDPM card's lines for a fine-tune (``--init-from``) and for the x0-head options (h-only decoder, or
    hue-blind skips), when used."""
    lines = []
    if dm.get("init_from"):
        lines.append(f"- Fine-tuned from `{Path(dm['init_from']['path']).name}` of a {dm['init_from']['steps']}-step "
                     "run (see the reproduce line); the training time and loss below are the fine-tune's.")
    # what both x0-head variants train with: the object weight and the read-out of the attributes from h
    per_area = (", scaled by the batch's mean shape area over the shape's own (`--object-weight-per-area`)"
                if dm.get("object_weight_per_area") else "")
    weighting = (f"the object's pixels weighted 1 + {dm.get('object_weight', 0.0):g}{per_area} in the loss "
                 f"(`--object-weight`); "
                 f"a linear read-out of the attributes from h trained beside it with weight "
                 f"{dm.get('h_attribute_weight', 0.0)} (not shipped)")
    if dm.get("h_only_from_t") is not None:
        lines.append(f"- At t ≥ {dm['h_only_from_t']} the decoder predicts from h alone (the skips are cut, "
                     f"`--h-only-from-t`, where the loss is the x0 error); {weighting}"
                     + (f"; decoded from h moved by {dm['h_noise']:g}·‖h‖ in a random direction (`--h-noise`)"
                        if dm.get("h_noise") else "") + ".")
    if dm.get("x0_from_t") is not None:
        skips = ("computed, during training, from x_t with its colours turned about the gray axis by a random angle "
                 "per image (`--skip-hue-rotation`), so the decoder takes the outline, size and background from the "
                 "skips and the object's colour from h; at inference the skips see x_t itself"
                 if dm.get("skip_hue_rotation") else "kept")
        if dm.get("h_from_color_partner"):
            skips += (", and h computed from another image of the same colour (other shape, size, position and "
                      "background; `--h-from-color-partner`), so that h tells the decoder the colour and nothing "
                      "else")
        lines.append(f"- At t ≥ {dm['x0_from_t']} the decoder predicts x0 (`--x0-from-t`, where the loss is the x0 "
                     f"error) with its skips {skips}; {weighting}.")
    return lines


def render_card(ddpm_eval: dict, clip_eval: dict, ddpm_log: list[dict], clip_log: list[dict],
                command_ddpm: str, command_clip: str, machine: str, notes: list[str] = (),
                readiness: dict | None = None) -> str:
    dm, cm = ddpm_eval["meta"], clip_eval["meta"]
    samples, inv = ddpm_eval.get("samples", {}), ddpm_eval.get("inversion", {})
    zs, zn = clip_eval["zero_shot"], clip_eval["zero_shot_noisy"]
    lines = [
        "# The shapes world: model card",
        "",
        "Two tiny models trained on the procedural dataset `asyrp.worlds.shapes` (32×32 RGB, one shape "
        "per image: 3 shapes × 6 colours × 2 sizes × 3 backgrounds, random position; captions such as \"a small red "
        "circle on a white background\"). Every training batch is rendered fresh from a seed derived from (run seed, "
        "step): no image is stored and no image is reused. Generated by `python -m asyrp.worlds.card` from the "
        "training outputs; every number below is read from `ddpm_eval.json`, `clip_eval.json` and the two logs in "
        "this folder.",
        "",
        f"Trained on: {machine}.",
        "",
        *[f"Note: {n}\n" for n in notes],
        "## Tiny DDPM (`ddpm.pt`)",
        "",
        f"- Network: `asyrp.models.unet.DDPMUNet` with `{json.dumps(ddpm_eval['config'])}`; "
        f"{dm['parameters']:,} parameters; h-space (bottleneck) shape {tuple(dm['h_shape'])}.",
        f"- Objective: {dm['schedule']}; AdamW lr {dm['lr']} (warm-up, cosine decay), batch {dm['batch_size']}, "
        f"{dm['steps']} steps, EMA {dm['ema_decay']}, offset noise {dm['offset_noise']}, antisymmetric output-head "
        f"initialisation {dm['antisym_init']}; seed {dm['seed']}.",
        *_finetune_lines(dm),
        f"- Training time: {dm['train_seconds'] / 60:.1f} min with {dm['threads']} CPU threads; final loss "
        f"(mean of the last 10 log lines) {dm['final_loss_last10_logs']:.4f}.",
        f"- Shipped weights: EMA, {dm['weights']}; samples from the shipped and the fp32 EMA weights differ by at "
        f"most {ddpm_eval['grid_max_abs_diff_fp32_vs_shipped']:.2e} (max |Δ|, 64 samples).",
        "- Reproduce: `" + command_ddpm + "`",
        "",
        "`samples.png`: 64 samples, DDIM with "
        f"{ddpm_eval['n_steps']} steps (η = 0) from fixed noise (seed 0).",
        "",
    ]
    if samples:
        lines += [f"Reader on {samples['n']} samples from noise (seed {samples['noise_seed']}, {ddpm_eval['n_steps']} "
                  f"DDIM steps): valid (one clean shape of a palette colour on a palette background) "
                  f"**{_pct(samples['valid'])}**; reasons for the rest: `{json.dumps(samples['invalid_reasons'])}`.",
                  ""]
        if samples.get("distribution"):
            lines += ["What the valid samples show: " + "; ".join(
                f"{k} " + ", ".join(f"{v} {n}" for v, n in counts.items())
                for k, counts in samples["distribution"].items()) + ".", ""]
    if inv:
        acc = inv["accuracy"]
        lines += [f"DDIM inversion → regeneration of {inv['n']} held-out real images ({ddpm_eval['n_steps']} steps "
                  f"each way): valid **{_pct(inv['valid'])}**, all four attributes read back unchanged "
                  f"**{_pct(acc['all'])}** (" + ", ".join(f"{k} {_pct(v)}" for k, v in acc.items() if k != "all")
                  + f"), MSE {inv['mse']:.4f}. `asyrp demo` inverts only to t_0 = {shapes.T_0} "
                  "(the original's partial inversion; its strength 0 is that regeneration).", ""]
    lines += ["Training loss:", "", _loss_table(ddpm_log, ("loss",), every=300), ""]
    lines += [
        "## Tiny CLIP (`clip.pt`)",
        "",
        f"- Network: `open_clip.model.CLIP` with `{json.dumps(clip_eval['config'])}` ("
        + ("ModifiedResNet image tower, " if isinstance(clip_eval["config"]["vision"]["layers"], list) else "")
        + "QuickGELU), "
        f"{cm['parameters']:,} parameters before the token embedding is cut to the {cm['token_rows_kept']} BPE rows "
        "the captions use (the standard open_clip tokenizer of ViT-B-32; other tokens map to a zero row).",
        f"- Objective: symmetric multi-positive InfoNCE over (image, caption) pairs; AdamW lr {cm['lr']}, batch "
        f"{cm['batch_size']}, {cm['steps']} steps; seed {cm['seed']}; {cm['train_seconds'] / 60:.1f} min on CPU; "
        f"final loss {cm['final_loss_last10_logs']:.4f}.",
        f"- Preprocessing: {cm['preprocess']}. Shipped weights: {cm['weights']} (min cosine to the fp32 "
        f"embeddings: images {clip_eval['fp16_min_cosine_image']:.5f}, texts {clip_eval['fp16_min_cosine_text']:.5f}).",
        "- Reproduce: `" + command_clip + "`",
        "",
        f"Zero-shot caption accuracy on {zs['n']} held-out rendered images (prompts "
        f"`{json.dumps(zs['prompts'])}`): " + ", ".join(f"{k} {_pct(v)}" for k, v in zs["accuracy"].items())
        + f"; with Gaussian noise σ = {zn['noise_std']}: "
        + ", ".join(f"{k} {_pct(v)}" for k, v in zn["accuracy"].items()) + ".",
        "",
        "Directional check (pairs of rendered images differing in one attribute; S_dir against the text direction; "
        "share of pairs whose true target beats every other target):",
        "",
        "| attribute | S_dir (1 prompt) | S_dir > 0 | true target best | S_dir (79 templates) |",
        "|---|---:|---:|---:|---:|",
    ]
    single, templ = clip_eval["directional"]["single_prompt"], clip_eval["directional"]["templates79"]
    for k, v in single.items():
        lines.append(f"| {k} | {v['s_dir']:.3f} | {_pct(v['s_dir_positive'])} | {_pct(v['correct_direction_best'])} "
                     f"| {templ[k]['s_dir']:.3f} |")
    lines += ["", "Training loss and in-batch image → text top-1:", "",
              _loss_table(clip_log, ("loss", "i2t_top1"), every=250), ""]
    probes = [r for r in clip_log if "zero_shot_200" in r]  # written by train-clip --eval-every
    if probes:
        keys = list(probes[0]["zero_shot_200"])
        lines += ["Zero-shot accuracy on 200 held-out images during training (`--eval-every`):", "",
                  "| step | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys),
                  *[f"| {r['step']} | " + " | ".join(_pct(r["zero_shot_200"][k]) for k in keys) + " |"
                    for r in probes], ""]
    if readiness is not None:
        lines += readiness_section(readiness)
    return "\n".join(lines)


def _write_card(dest: Path, record: dict) -> Path:
    """MODEL_CARD.md from the files shipped in ``dest`` and ``record`` (card.json: commands, machine, notes), with
    the readiness section when ``dest/readiness.json`` exists."""
    def read(name: str) -> dict:
        return json.loads((dest / name).read_text())
    readiness = read("readiness.json") if (dest / "readiness.json").is_file() else None
    text = render_card(read("ddpm_eval.json"), read("clip_eval.json"), read_jsonl(dest / "ddpm_train_log.jsonl"),
                       read_jsonl(dest / "clip_train_log.jsonl"), record["command_ddpm"], record["command_clip"],
                       record["machine"], record["notes"], readiness)
    with atomic_path(dest / "MODEL_CARD.md") as tmp:
        tmp.write_text(text)
    return dest / "MODEL_CARD.md"


def rerender(dest: Path) -> Path:
    """Write MODEL_CARD.md again from the shipped folder alone (its eval files, logs, card.json, readiness.json)."""
    if not (dest / "card.json").is_file():
        raise UserError(f"{dest / 'card.json'} is missing: ship the world first (python -m asyrp.worlds.card --ddpm "
                        f"... --clip ... --dest {dest})")
    return _write_card(dest, json.loads((dest / "card.json").read_text()))


def ship(ddpm_dir: Path, clip_dir: Path, dest: Path, command_ddpm: str, command_clip: str, machine: str,
         notes: list[str] = ()) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for src_dir, names in ((ddpm_dir, SHIPPED["ddpm"]), (clip_dir, SHIPPED["clip"])):
        for name in names:
            if not (src_dir / name).is_file():
                raise FileNotFoundError(f"{src_dir / name} is missing: finish that training run first")
            shutil.copyfile(src_dir / name, dest / name)
    shutil.copyfile(ddpm_dir / "eval.json", dest / "ddpm_eval.json")
    shutil.copyfile(clip_dir / "eval.json", dest / "clip_eval.json")
    record = {"command_ddpm": command_ddpm, "command_clip": command_clip, "machine": machine, "notes": list(notes)}
    atomic_json(dest / "card.json", record)
    return _write_card(dest, record)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ddpm", type=Path, help="output folder of asyrp train-backbone")
    p.add_argument("--clip", type=Path, help="output folder of asyrp train-clip")
    p.add_argument("--dest", required=True, type=Path, help="e.g. src/asyrp/resources/worlds/shapes")
    p.add_argument("--command-ddpm", help="the command that trained the DDPM (quoted in the card)")
    p.add_argument("--command-clip", help="the command that trained the CLIP (quoted in the card)")
    p.add_argument("--machine", default="2 CPU cores, no GPU", help="where the two trainings ran")
    p.add_argument("--note", action="append", default=[], help="a remark for the card (repeatable)")
    p.add_argument("--rerender", action="store_true",
                   help="only write MODEL_CARD.md again from the files shipped in --dest (with readiness.json)")
    a = p.parse_args(argv)
    if a.rerender:
        try:
            print(f"wrote {rerender(a.dest)}")
        except UserError as e:
            p.error(str(e))
        return 0
    missing = [f"--{k.replace('_', '-')}" for k in ("ddpm", "clip", "command_ddpm", "command_clip")
               if getattr(a, k) is None]
    if missing:
        p.error(f"shipping needs {', '.join(missing)} (or --rerender to rewrite the card from --dest)")
    print(f"wrote {ship(a.ddpm, a.clip, a.dest, a.command_ddpm, a.command_clip, a.machine, a.note)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``asyrp train-clip``: train the tiny CLIP of the shapes world on the CPU.

An open_clip ``CLIP`` built directly from a small config (image tower: a ViT at 32 px with 4-px patches, or with
``--vision resnet`` open_clip's ModifiedResNet, the one that learns the shapes' outlines; a causal text transformer
with the standard open_clip BPE tokenizer of ViT-B-32 at a shorter context length, QuickGELU), trained with a
symmetric *multi-positive* InfoNCE on (image, caption) pairs: a caption may mention any subset of the four attributes
("a red shape", "a large circle on a gray background", "a photo of a triangle." …, half of them wrapped in one of the
79 ImageNet templates that :class:`asyrp.clip_loss.CLIPDirection` averages), and every image in the batch whose
attributes agree with a caption counts as its positive. Images go through :func:`asyrp.clip_loss.clip_preprocess`
with ``image_size=32``, exactly what ``CLIPDirection(encoder, ..., image_size=32)`` feeds the encoder; light noise /
blur augmentation keeps the embeddings stable on generated images and on the blurry x0-predictions Asyrp trains on.

Outputs in ``--out``: ``checkpoint.pt`` (resumable state), ``clip_train_log.jsonl``, ``clip.pt`` (the shipped file:
fp16 weights, config, only the token-embedding rows of tokens seen in training), ``eval.json`` (zero-shot accuracy
per attribute on held-out images, directional-similarity checks). ``--eval-every N`` also logs the zero-shot accuracy
on 200 held-out images every N steps, so a run shows when (and whether) it learns each attribute.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from asyrp.clip_loss import (
    CLIPDirection,
    OpenClipEncoder,
    clip_preprocess,
    imagenet_templates,
)
from asyrp.io.files import (
    append_jsonl,
    atomic_json,
    atomic_torch_save,
)
from asyrp.worlds import shapes
from asyrp.worlds.shapes import clip_from_checkpoint
from asyrp.worlds.tiny_clip import (
    build_clip,
    default_config,
    export_state,
    make_tokenizer,
)
from asyrp.worlds.train_backbone import (
    checkpoint_or_stop,
    last_logged_loss,
    load_resume_checkpoint,
    open_run,
)

FORMAT = "asyrp-shapes-clip-v1"

# Zero-shot prompts, one per attribute ("a photo of a red shape", "a photo of a circle", …)
ZERO_SHOT_PROMPTS = {"color": "a photo of a {} shape", "size": "a photo of a {} shape", "shape": "a photo of a {}",
                     "background": "a photo of a shape on a {} background"}

_SIMPLE_WRAPS = ("a {}", "{}", "a photo of a {}", "a picture of a {}", "an image of a {}")


# --------------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------------

def random_caption(spec: shapes.ShapeSpec, rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    """(caption, mentioned attributes): all four with p = 0.3, else each with p = 0.5 (at least one); wrapped in an
    ImageNet template with p = 0.5, else in a short frame ("a {}", "a photo of a {}", …)."""
    keys = list(shapes.ATTRIBUTES)
    if rng.random() < 0.3:
        include = tuple(keys)
    else:
        include = tuple(k for k in keys if rng.random() < 0.5)
        if not include:
            include = (keys[int(rng.integers(len(keys)))],)
    phrase = shapes.caption(spec, include, article=False)
    if rng.random() < 0.5:
        templates = imagenet_templates()
        text = templates[int(rng.integers(len(templates)))].format(phrase)
    else:
        text = _SIMPLE_WRAPS[int(rng.integers(len(_SIMPLE_WRAPS)))].format(phrase)
    return text, include


def positive_mask(specs: Sequence[shapes.ShapeSpec], mentions: Sequence[tuple[str, ...]]) -> torch.Tensor:
    """(images, captions) bool: image i agrees with every attribute caption j mentions."""
    vocab_idx = {k: {v: i for i, v in enumerate(vals)} for k, vals in shapes.ATTRIBUTES.items()}
    img = torch.tensor([[vocab_idx[k][s.attributes[k]] for k in shapes.ATTRIBUTES] for s in specs])
    txt = torch.tensor([[vocab_idx[k][s.attributes[k]] if k in m else -1 for k in shapes.ATTRIBUTES]
                        for s, m in zip(specs, mentions)])
    agree = (img[:, None, :] == txt[None, :, :]) | (txt[None, :, :] < 0)
    return agree.all(-1)


def multi_positive_infonce(img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor,
                           pos: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where every positive of a row shares the target mass equally."""
    logits = logit_scale.exp() * F.normalize(img_emb, dim=-1) @ F.normalize(txt_emb, dim=-1).T
    p = pos.float()
    i2t = -(F.log_softmax(logits, dim=1) * (p / p.sum(1, keepdim=True))).sum(1).mean()
    t2i = -(F.log_softmax(logits, dim=0) * (p / p.sum(0, keepdim=True))).sum(0).mean()
    return (i2t + t2i) / 2


def augment(x: torch.Tensor, g: torch.Generator, p_noise: float = 0.5, max_noise: float = 0.1,
            p_blur: float = 0.3) -> torch.Tensor:
    """Per-image Gaussian noise (σ ~ U(0, max_noise), [−1, 1] units) and a light 3×3 blur."""
    b = x.shape[0]
    sigma = torch.rand(b, 1, 1, 1, generator=g) * max_noise * (torch.rand(b, 1, 1, 1, generator=g) < p_noise)
    x = x + sigma * torch.randn(x.shape, generator=g)
    k = torch.tensor([0.25, 0.5, 0.25])
    kernel = (k[:, None] * k[None, :]).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    use = (torch.rand(b, 1, 1, 1, generator=g) < p_blur).float()
    return use * blurred + (1 - use) * x


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------

@torch.no_grad()
def encode_images(encoder, images: torch.Tensor, image_size: int = 32, batch_size: int = 500) -> torch.Tensor:
    return torch.cat([F.normalize(encoder.encode_image(clip_preprocess(x, image_size)).float(), dim=-1)
                      for x in images.split(batch_size)])


@torch.no_grad()
def zero_shot(encoder, images: torch.Tensor, truth: Sequence[Mapping[str, str]], image_size: int = 32) -> dict:
    """Accuracy per attribute of classifying each image by its nearest prompt (ZERO_SHOT_PROMPTS)."""
    emb = encode_images(encoder, images, image_size)
    acc = {}
    for key, template in ZERO_SHOT_PROMPTS.items():
        values = shapes.ATTRIBUTES[key]
        txt = F.normalize(encoder.encode_text([template.format(v) for v in values]).float(), dim=-1)
        pred = (emb @ txt.T).argmax(1)
        acc[key] = float(np.mean([values[int(p)] == t[key] for p, t in zip(pred, truth)]))
    return acc


@torch.no_grad()
def directional_check(encoder, n: int = 200, seed: int = 31337, image_size: int = 32, templates: bool = False) -> dict:
    """For each attribute: pairs of rendered images that differ only in it (a → b), S_dir against the text direction
    "a {a} shape" → "a {b} shape" (shape: "a {a}" → "a {b}"; background: "a shape on a {a} background" → …), and
    the shares of pairs with S_dir > 0 and whose correct direction beats every wrong target b' ≠ b (trivially 1 for
    the two-valued size)."""
    rng = np.random.default_rng(seed)
    phrases = {"color": "{} shape", "size": "{} shape", "shape": "{}", "background": "shape on a {} background"}
    result = {}
    for key, vocab in shapes.ATTRIBUTES.items():
        specs = shapes.sample_specs(n, int(rng.integers(2 ** 31)))
        targets = [vocab[(vocab.index(s.attributes[key]) + 1 + int(rng.integers(len(vocab) - 1))) % len(vocab)]
                   for s in specs]
        edited = [s.replace(**{key: t}) for s, t in zip(specs, targets)]
        src_emb = encode_images(encoder, shapes.make_batch(specs, image_size), image_size)
        edit_emb = encode_images(encoder, shapes.make_batch(edited, image_size), image_size)
        directions = {}
        for a in vocab:
            for b in vocab:
                if a != b:
                    d = CLIPDirection(encoder, phrases[key].format(a), phrases[key].format(b),
                                      templates=True if templates else None, image_size=image_size)
                    directions[a, b] = d.text_direction[0]
        d_img = F.normalize(edit_emb - src_emb, dim=-1)
        s_dir, wins = [], []
        for i, (s, t) in enumerate(zip(specs, targets)):
            a = s.attributes[key]
            cos = {b: float(d_img[i] @ directions[a, b]) for b in vocab if b != a}
            s_dir.append(cos[t])
            wins.append(all(cos[t] > c for b, c in cos.items() if b != t))
        result[key] = {"s_dir": float(np.mean(s_dir)), "s_dir_positive": float(np.mean(np.array(s_dir) > 0)),
                       "correct_direction_best": float(np.mean(wins))}
    return result


def evaluate(encoder, image_size: int = 32, n: int = 1000, seed: int = 424_242, log=print) -> dict:
    ds = shapes.ShapesDataset(n, seed, image_size)
    images = ds.batch()
    truth = [s.attributes for s in ds.specs]
    res = {"zero_shot": {"n": n, "data_seed": seed, "prompts": ZERO_SHOT_PROMPTS,
                         "accuracy": zero_shot(encoder, images, truth, image_size)}}
    g = torch.Generator().manual_seed(seed)
    noisy = images + 0.1 * torch.randn(images.shape, generator=g)
    res["zero_shot_noisy"] = {"noise_std": 0.1, "accuracy": zero_shot(encoder, noisy, truth, image_size)}
    res["directional"] = {"single_prompt": directional_check(encoder, image_size=image_size),
                          "templates79": directional_check(encoder, n=100, image_size=image_size, templates=True)}
    log(f"zero-shot accuracy on {n} held-out images: {res['zero_shot']['accuracy']}")
    log(f"  with noise σ=0.1: {res['zero_shot_noisy']['accuracy']}")
    log(f"directional S_dir (single prompt): {res['directional']['single_prompt']}")
    log(f"directional S_dir (79 templates): {res['directional']['templates79']}")
    return res


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------

def stream_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step, 7]).generate_state(1)[0])


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(args: argparse.Namespace) -> int:
    """Train (or resume) the tiny CLIP with the options of ``asyrp train-clip`` (:mod:`asyrp.cli.train_clip`); writes
    OUT/clip.pt and its log. Returns 0 (an exit status: the CLI returns it)."""
    device, out, ckpt_path, log_path = open_run(args, "clip_train_log.jsonl")
    cfg = default_config(args.embed_dim, args.width, args.vision_layers, args.text_layers, args.patch_size,
                         args.context_length, args.image_size, args.vision_kind, args.resnet_width)
    tokenizer = make_tokenizer(cfg)
    torch.manual_seed(args.seed)
    model = build_clip(cfg).to(device)
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embedding" not in name else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    seen = torch.zeros(cfg["text"]["vocab_size"], dtype=torch.bool)
    step, elapsed = 0, 0.0
    ck = load_resume_checkpoint(args, ckpt_path, log_path, cfg, device)
    if ck is not None:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        seen, step, elapsed = ck["seen_tokens"], ck["step"], ck["seconds"]
    n_params = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for p in model.visual.parameters())
    print(f"tiny CLIP {cfg}: {n_params:,} parameters ({n_vision:,} vision)")

    def save_checkpoint():
        atomic_torch_save({"config": cfg, "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "seen_tokens": seen, "step": step, "seconds": elapsed, "args": vars(args)}, ckpt_path)

    if args.eval_every:  # the progress probe: 200 held-out images, rendered once
        probe_set = shapes.ShapesDataset(200, 424_242, args.image_size)
        probe_images, probe_truth = probe_set.batch().to(device), [s.attributes for s in probe_set.specs]
        probe_encoder = OpenClipEncoder(model, tokenizer, frozen=False)
    model.train()
    losses, accs = [], []
    t_last = time.time()
    bar = tqdm(total=args.steps, initial=step, disable=args.no_progress, desc="train-clip", dynamic_ncols=True)
    while step < args.steps:
        s_seed = stream_seed(args.seed, step)
        images, specs = shapes.random_batch(args.batch_size, s_seed, args.image_size)
        rng = np.random.default_rng(s_seed)
        caps = [random_caption(s, rng) for s in specs]
        tokens = tokenizer([c for c, _ in caps])
        seen[tokens.flatten().unique()] = True
        pos = positive_mask(specs, [m for _, m in caps]).to(device)
        g = torch.Generator().manual_seed(s_seed)
        pixels = clip_preprocess(augment(images, g), args.image_size).to(device)
        lr = lr_at(step, args)
        for group in opt.param_groups:
            group["lr"] = lr
        img_emb = model.encode_image(pixels)
        txt_emb = model.encode_text(tokens.to(device))
        loss = multi_positive_infonce(img_emb, txt_emb, model.logit_scale, pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if args.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
            sims = F.normalize(img_emb, dim=-1) @ F.normalize(txt_emb, dim=-1).T
            accs.append(float(pos[torch.arange(len(specs)), sims.argmax(1)].float().mean()))  # image → text top-1
        step += 1
        losses.append(float(loss.detach()))
        now = time.time()
        elapsed += now - t_last
        t_last = now
        bar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            append_jsonl(log_path, {"step": step, "loss": round(sum(losses) / len(losses), 6),
                                    "i2t_top1": round(sum(accs) / len(accs), 4), "lr": lr,
                                    "logit_scale": round(float(model.logit_scale.detach().exp()), 3),
                                    "seconds": round(elapsed, 1)})
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4f}")
            losses, accs = [], []
        if args.eval_every and step % args.eval_every == 0:
            model.eval()
            acc = zero_shot(probe_encoder, probe_images, probe_truth, args.image_size)
            append_jsonl(log_path, {"step": step, "zero_shot_200": {k: round(v, 4) for k, v in acc.items()}})
            model.train()
        if checkpoint_or_stop(step, args, save_checkpoint, bar):
            return 0
    bar.close()

    final_loss = last_logged_loss(log_path)
    model.eval()
    sd, rows = export_state(model, seen, fp16=not args.fp32)
    meta = {"steps": step, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
            "train_seconds": round(elapsed, 1), "final_loss_last10_logs": round(final_loss, 6),
            "parameters": n_params, "vision_parameters": n_vision, "token_rows_kept": int(rows.numel()),
            "weights": "fp32" if args.fp32 else "fp16",
            "preprocess": f"asyrp.clip_loss.clip_preprocess(x, image_size={args.image_size}) (OpenAI mean/std)"}
    obj = {"format": FORMAT, "config": cfg, "state_dict": sd, "token_rows": rows, "meta": meta}
    atomic_torch_save(obj, out / "clip.pt")
    print(f"trained {step} steps in {elapsed / 60:.1f} min; final loss {final_loss:.4f}; wrote {out / 'clip.pt'}")

    shipped, image_size = clip_from_checkpoint(obj, device)
    report: dict = {"config": cfg, "meta": meta}
    # fp16 storage check: the shipped encoder against the trained fp32 weights (unseen token rows zeroed in both)
    ref = OpenClipEncoder(model.float(), tokenizer)
    with torch.no_grad():
        model.token_embedding.weight[~seen] = 0
        x = shapes.ShapesDataset(64, 5, args.image_size).batch().to(device)
        a, b = encode_images(ref, x, image_size), encode_images(shipped, x, image_size)
        texts = [f"a photo of a {c} shape" for c in shapes.COLORS]
        ta = F.normalize(ref.encode_text(texts).float(), dim=-1)
        tb = F.normalize(shipped.encode_text(texts).float(), dim=-1)
    report["fp16_min_cosine_image"] = float((a * b).sum(-1).min())
    report["fp16_min_cosine_text"] = float((ta * tb).sum(-1).min())
    print(f"fp16 storage: min cosine to fp32 embeddings, images {report['fp16_min_cosine_image']:.6f}, "
          f"texts {report['fp16_min_cosine_text']:.6f}")
    if args.eval_images:
        report.update(evaluate(shipped, image_size, args.eval_images))
    atomic_json(out / "eval.json", report)
    print(f"wrote {out / 'eval.json'}")
    return 0

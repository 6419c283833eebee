"""``asyrp train-backbone``: the options of the shapes world's tiny DDPM trainer
(:func:`asyrp.worlds.train_backbone.train`)."""

from __future__ import annotations

import argparse

from asyrp.worlds import train_backbone


def add_run_arguments(p: argparse.ArgumentParser, log_every: int) -> None:
    """Logging, checkpointing, resuming and export options shared by train-backbone and train-clip."""
    p.add_argument("--log-every", type=int, default=log_every)
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--stop-at", type=int, default=None,
                   help="checkpoint and exit at this step without exporting, as if interrupted (resume later)")
    p.add_argument("--fp32", action="store_true", help="ship fp32 weights instead of fp16")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/shapes_ddpm", help="output folder (checkpoint, log, ddpm.pt, samples)")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine decay floor, as a share of --lr")
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--ch", type=int, default=32)
    p.add_argument("--ch-mult", default="1,2,3,4")
    p.add_argument("--num-res-blocks", type=int, default=1)
    p.add_argument("--attn", default="8", help="attention resolutions, comma separated")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--skip-resolutions", default="",
                   help="resolutions whose encoder features reach the decoder, comma separated (default: all, the "
                        "standard U-Net); e.g. 32 keeps only the full-resolution skips, so global content passes h")
    p.add_argument("--h-only-from-t", type=int, default=None,
                   help="at t >= this timestep the decoder gets no skip connections and predicts x0 from h alone "
                        "(ε derived from it; x0-MSE loss there); default: off, the standard U-Net")
    p.add_argument("--x0-from-t", type=int, default=None,
                   help="at t >= this timestep the decoder predicts x0 (x0-MSE loss there) with its skips kept; "
                        "give it with --skip-hue-rotation; default: off")
    p.add_argument("--skip-hue-rotation", action="store_true",
                   help="at t >= --x0-from-t the skips are computed from x_t with its colours rotated about the gray "
                        "axis by a random angle per image (h from x_t itself), so the decoder takes the outline and "
                        "the background from the skips and the object's hue from h alone")
    p.add_argument("--h-from-color-partner", action="store_true",
                   help="with --skip-hue-rotation: at t >= --x0-from-t, h is computed from another image of the same "
                        "object colour (its shape, size, position and background drawn afresh) while the skips and "
                        "the target are the image's own, so h can tell the decoder the colour and nothing else")
    p.add_argument("--init-from", default=None,
                   help="start from the weights of a ddpm.pt with the same network options (fine-tuning)")
    p.add_argument("--offset-noise", type=float, default=0.0,
                   help="add a per-image, per-channel constant N(0, s²) to ε during training (\"offset noise\"), so "
                        "the network learns the per-channel mean (DC) of the noise; 0: the plain ε ~ N(0, I)")
    p.add_argument("--antisym-init", action="store_true",
                   help="initialise the output head antisymmetrically so it passes the per-image channel means (see "
                        "init_antisymmetric_output); needs ch × ch_mult[0] = 64")
    p.add_argument("--object-weight", type=float, default=0.0,
                   help="weight the shape's pixels in the loss: each pixel's squared error is multiplied by 1 + W × "
                        "(the share of the pixel the shape covers), so that errors on the object weigh more than on "
                        "the background it sits on (a small shape covers 6 %% of the image); 0: the plain mean over "
                        "pixels")
    p.add_argument("--object-weight-per-area", action="store_true",
                   help="with --object-weight: scale each shape's weight by the batch's mean shape area over its own, "
                        "so a small shape weighs as much in the loss as a large one (its outline is what an edit in "
                        "h loses first)")
    p.add_argument("--h-attribute-weight", type=float, default=0.0,
                   help="add W × the cross-entropy of a linear read-out of shape, colour, size and background from the "
                        "flattened h (trained with the DDPM, not shipped), so the encoder writes every attribute into "
                        "h linearly; 0: off, the plain DDPM loss")
    p.add_argument("--h-noise", type=float, default=0.0, metavar="S",
                   help="at t >= --h-only-from-t, decode from h plus a random direction of length S·‖h‖ (the target "
                        "stays the clean image), so that a short change of h does not redraw the image; 0: off")
    add_run_arguments(p, log_every=50)
    p.add_argument("--sample-steps", type=int, default=40)
    p.add_argument("--eval-samples", type=int, default=1000, help="generated samples scored by the reader (0: skip)")
    p.add_argument("--eval-invert", type=int, default=200, help="real images inverted and regenerated (0: skip)")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    return train_backbone.train(args)

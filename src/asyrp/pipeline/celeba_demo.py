"""The CelebA-HQ demo (``asyrp demo --world celeba``): sample faces from the CelebA-HQ DDPM and edit them with the
official smiling and pixar directions into one grid. Downloads ~460 MB; offline it stops naming every missing file."""

from __future__ import annotations

from pathlib import Path

from asyrp.backbones import load_backbone
from asyrp.errors import UserError
from asyrp.io import weights as registry
from asyrp.io.files import default_device
from asyrp.pipeline.edit import EditConfig, edit
from asyrp.pipeline.inversion import InversionSettings, load_entries
from asyrp.plots import load_png, save_rows


def run_celeba_demo(out: Path, n: int = 4, seed: int = 0, n_steps: int = 40, weights_dir: str | None = None,
                    device: str | None = None, attributes=("smiling", "pixar")) -> Path:
    """Sample faces from the CelebA-HQ DDPM and edit them with the official directions into ``out/grid.png``."""
    device = default_device(device)
    # check every file first, so that an offline machine learns all missing names at once
    missing = []
    for name in ["ddpm-celeba-hq"] + [f"asyrp-{a}" for a in attributes]:
        try:
            registry.resolve(name, weights_dir=weights_dir)
        except registry.MissingWeightsError:
            missing.append(registry.get_spec(name))
    if missing:  # one short line per file (the registry's full message is a paragraph each)
        raise UserError("\n".join(
            [f"the celeba demo needs {len(missing)} weights file(s) it cannot find or download "
             "(the shapes world, plain `asyrp demo`, needs none):"]
            + [f"{spec.filename} ({spec.name}) from {spec.urls[0]}" for spec in missing]
            + [f"run `asyrp download {' '.join(spec.name for spec in missing)}` where there is network, or put the "
               "files in --weights-dir / ASYRP_WEIGHTS_DIR"]))
    backbone = load_backbone("celeba-hq", weights_dir=weights_dir, device=device)
    entries = load_entries(backbone, "sampled", n, out / "cache", seed=seed, settings=InversionSettings(n_steps),
                           batch_size=4, device=device)
    for attr in attributes:
        edit(EditConfig(directions=[f"asyrp-{attr}"], backbone="celeba-hq", n_images=n, n_inv_step=n_steps,
                        n_test_step=n_steps, batch_size=4, device=str(device)), out / attr, backbone=backbone,
             entries=entries, weights_dir=weights_dir)
    names = [e["name"] for e in entries]
    rows = [[load_png(out / attributes[0] / "original" / f"{nm}.png")] +
            [load_png(out / a / "edited" / f"{nm}.png") for a in attributes] for nm in names]
    return save_rows(out / "grid.png", rows, col_labels=["original", *attributes], row_labels=names)

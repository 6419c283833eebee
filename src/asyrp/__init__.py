"""asyrp: editing real images in the h-space of a frozen diffusion U-Net (Kwon, Jeong & Uh, ICLR 2023)."""

__version__ = "0.1.0"

"""Networks: the frozen backbone U-Net (`unet`) and the trainable delta blocks (`delta`)."""

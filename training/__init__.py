"""editforge.training: accelerate + PEFT training scripts on one shared core.

- ``config``: configuration dataclasses and their command-line flags;
- ``data``: canonical edit datasets, resolution and aspect-ratio buckets, batching;
- ``diffusion``: noising, targets, min-SNR weighting;
- ``lora``: UNet LoRA adapters through PEFT, saved in diffusers' format;
- ``core``: the training loop (accelerate, checkpoints and resuming, logging, validation);
- ``autoencoder``: fitting a small VAE (the demo's);
- ``train_reward_pix2pix``: Multi-Reward as Condition (and its plain InstructPix2Pix baseline).

Importing this package imports nothing heavy; the scripts import torch and diffusers.
"""

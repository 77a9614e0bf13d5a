"""editforge.training: accelerate + PEFT training scripts on one shared core.

The core, which any trainer plugs into:

- ``config``: configuration dataclasses (``TrainingConfig``, objective and editing mixins) and
  their command-line flags; a config validates itself when made;
- ``core``: the ``Trainer`` loop (accelerate, any batch sampler, losses with extra logged values,
  pickle-free checkpoints with exact resume, logging, validation callbacks);
- ``samplers``: shape-bucket batches and importance (weighted) sampling;
- ``objectives``: DDPM epsilon / v-prediction (min-SNR) and rectified flow matching as SD3 is
  trained (timestep densities, SD3's loss weighting), InstructPix2Pix conditioning dropout;
- ``lora``: LoRA for any denoiser (UNet, SD3 transformer) in diffusers' LoRA format;
- ``components``: loading a base pipeline's components; ``latents``: cached VAE latents;
  ``data``: canonical edit datasets, resolution and aspect-ratio buckets;
- ``validation``: validation grids; ``output``: the published output folder, card and upload;
- ``autoencoder``: fitting a small VAE (the demo's).

One script per method: ``train_reward_pix2pix`` (Multi-Reward as Condition, and its plain
InstructPix2Pix baseline), ``train_sd3_pix2pix`` (UltraEdit's SD3 InstructPix2Pix with region
masks) and ``train_diffusion_dpo`` (Diffusion-DPO with InstructEngine's cross-validation alignment).

Importing this package imports nothing heavy; the scripts import torch and diffusers.
"""

"""A stand-in for the few torchvision transforms that diffusers' example training scripts use.

Only for benchmarks/training_throughput.py, which runs diffusers' train_instruct_pix2pix.py here,
where no CPU build of torchvision exists. Not installed with editforge.
"""

__version__ = "0.0.0+editforge-stub"

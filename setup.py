"""Distribution ``editforge``.

The top-level folders ``pipelines/``, ``dataset_builders/``, ``training/``, ``model_cards/`` and
``evaluation/`` are installed as ``editforge.pipelines``, ``editforge.dataset_builders``,
``editforge.training``, ``editforge.model_cards`` and ``editforge.evaluation``, beside the thin
root package ``editforge/``.
"""

from setuptools import find_packages, setup

# folder in the repository -> package name once installed
MAPPED_FOLDERS = {
    "pipelines": "editforge.pipelines",
    "dataset_builders": "editforge.dataset_builders",
    "training": "editforge.training",
    "model_cards": "editforge.model_cards",
    "evaluation": "editforge.evaluation",
}


def _packages_and_dirs():
    packages = ["editforge"] + [f"editforge.{p}" for p in find_packages(where="editforge")]
    package_dir = {"editforge": "editforge"}
    for folder, package in MAPPED_FOLDERS.items():
        package_dir[package] = folder
        packages.append(package)
        packages += [f"{package}.{p}" for p in find_packages(where=folder)]
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages_and_dirs()

# Lower bounds are the versions the test suite has been run against.
INSTALL_REQUIRES = [
    "torch>=2.13.0",
    "diffusers>=0.42.0",
    "transformers>=5.23.0",
    "datasets>=5.2.0",
    "huggingface_hub>=2.4.0",
    "peft>=0.21.0",
    "accelerate>=1.15.0",
    "openai[aiohttp]>=3.54.0",
    "safetensors>=0.8.0",
    "pillow>=12.3.0",  # not 13: gradio (the app extra) 6.31 requires pillow<13
    "numpy>=2.4.0",
    "tqdm>=4.70.0",
    "jinja2>=3.1.0",  # model cards (huggingface_hub.ModelCard.from_template)
]

EXTRAS = {
    # editforge app (editforge/app.py): the Gradio editing page
    "app": ["gradio>=6.31.0"],
    # tests/test_app.py drives Debian's chromium with Playwright (no browser download)
    "test": ["pytest>=9.0", "pytest-timeout>=2.4.0", "scikit-image>=0.26.0", "gradio>=6.31.0", "playwright>=1.65.2"],
}

setup(
    name="editforge",
    version="0.1.0",
    description=(
        "Instruction-based image editing and text-to-image alignment on the Hugging Face stack: "
        "multi-reward conditioning, UltraEdit/OmniEdit data, EditNet, InstructEngine DPO."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"editforge.model_cards": ["templates/*.md"],
                  "editforge.dataset_builders": ["prompts/taxonomies/*.json"]},
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["editforge=editforge.cli:main"]},
    license="Apache-2.0",
)

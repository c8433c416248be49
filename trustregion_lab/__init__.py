"""trustregion_lab: see, measure and teach the trust region of LLM reinforcement learning.

Importing the package registers its gymnasium environments (``trustregion_lab/LargeVocabBandit-v0`` and
``trustregion_lab/TokenSequence-v0``).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("trustregion_lab")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

from trustregion_lab import envs as envs  # registers the environments

__all__ = ["__version__", "envs"]

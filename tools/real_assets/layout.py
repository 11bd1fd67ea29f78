"""Where the real assets live below the asset folder (a stable layout).

Downstream code (demo, accuracy suite, bridge experiments, tests) should take
paths from :class:`RealAssets` rather than spelling them::

    <root>/                              default .cache/real_assets
      MANIFEST.json                      what was built: paths, sources,
                                         licences, parameters, timings
      models/whisper-tiny.en/            transformers Whisper (float32) +
                                         WhisperProcessor files
      models/SmolLM2-135M-Instruct/      transformers Llama (float32) + tokenizer
      data/speech_commands/              Speech Commands v2 layout
      data/fluent_speech_commands/       Fluent Speech Commands layout
      data/LibriSpeech/                  LibriSpeech layout (train-clean-100/,
                                         dev-clean/, test-clean/)
      data/animal_sounds/                ESC-50 layout (meta/esc50.csv, audio/)
      data/animal_sounds/source/         the ten recordings, 16 kHz mono WAV
      downloads/pip/, downloads/apt/     the fetched wheels and .deb files
      sources/<package>/                 their unpacked contents
      stamps/<step>.json                 one per finished step (idempotence)

Authors
 * speechbrain-moe contributors 2026
"""

import os

DEFAULT_ROOT = os.path.join(".cache", "real_assets")
ENV_VAR = "SPEECHBRAIN_MOE_REAL_ASSETS"


class RealAssets:
    """Paths of the real assets below ``root``.

    Arguments
    ---------
    root : str, optional
        The asset folder; default: ``$SPEECHBRAIN_MOE_REAL_ASSETS`` or
        ``.cache/real_assets`` in the repository.

    Example
    -------
    >>> assets = RealAssets("/data/real")
    >>> assets.whisper
    '/data/real/models/whisper-tiny.en'
    >>> assets.librispeech
    '/data/real/data/LibriSpeech'
    >>> assets.is_built("whisper")
    False
    """

    def __init__(self, root=None):
        if root is None:
            root = os.environ.get(ENV_VAR) or os.path.join(_repo_root(), DEFAULT_ROOT)
        self.root = os.path.abspath(root)

    def path(self, *parts):
        """A path below the root.

        Arguments
        ---------
        *parts : str
            Path components.

        Returns
        -------
        str
        """
        return os.path.join(self.root, *parts)

    @property
    def manifest(self):
        """``MANIFEST.json``: what was built, from what, with which options."""
        return self.path("MANIFEST.json")

    @property
    def whisper(self):
        """Whisper tiny.en as a transformers folder (float32)."""
        return self.path("models", "whisper-tiny.en")

    @property
    def smollm2(self):
        """SmolLM2-135M-Instruct as a transformers folder (float32)."""
        return self.path("models", "SmolLM2-135M-Instruct")

    @property
    def speech_commands(self):
        """Speech Commands v2 layout (word folders, validation/testing lists)."""
        return self.path("data", "speech_commands")

    @property
    def fluent_speech_commands(self):
        """Fluent Speech Commands layout (``data/*_data.csv``, ``wavs/``)."""
        return self.path("data", "fluent_speech_commands")

    @property
    def librispeech(self):
        """LibriSpeech layout (``<split>/<spk>/<chap>/*.flac``, ``*.trans.txt``)."""
        return self.path("data", "LibriSpeech")

    @property
    def animal_sounds(self):
        """ESC-50 layout of clips cut from the ten animal recordings."""
        return self.path("data", "animal_sounds")

    def downloads(self, kind):
        """Cache of fetched packages (``pip`` or ``apt``).

        Arguments
        ---------
        kind : str
            ``pip`` or ``apt``.

        Returns
        -------
        str
        """
        return self.path("downloads", kind)

    def source(self, package):
        """Unpacked contents of a fetched package.

        Arguments
        ---------
        package : str
            Package name.

        Returns
        -------
        str
        """
        return self.path("sources", package)

    def stamp(self, step):
        """The stamp file of a build step.

        Arguments
        ---------
        step : str
            Step name (``whisper``, ``smollm2``, ``speech_commands``, ...).

        Returns
        -------
        str
        """
        return self.path("stamps", f"{step}.json")

    def is_built(self, step):
        """Whether a step has finished (its stamp exists).

        Arguments
        ---------
        step : str
            Step name.

        Returns
        -------
        bool
        """
        return os.path.isfile(self.stamp(step))


def _repo_root():
    """The repository holding this file (``tools/real_assets/..``)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

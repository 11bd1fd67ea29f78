"""The types and ranges of the settings of PETL method files, bridge files and
the LLM-bridge recipe, checked where a file is loaded (see
:func:`speechbrain_moe.hparams_files.load_hparams`) so that a bad value is
refused before anything is built, with a message naming the setting, the
file, the value and what is accepted.

The schema is declarative: :data:`SETTINGS` maps a setting's name to a
:class:`Setting` (what values it accepts); :data:`RULES` relates two settings
(``top_k`` at most ``num_experts``). Only known names are checked, so a
user's own method file with settings of its own still loads. A setting whose
default in its file is ``null`` also accepts ``null`` (the file says what
``null`` means there, e.g. LoRA's ``target_layers: null`` = the backbone's
query and value projections); elsewhere ``null`` is refused.
"""

import math
from dataclasses import dataclass, field

KINDS = ("int", "number", "bool", "choice", "patterns", "weights")


@dataclass(frozen=True)
class Setting:
    """What values one setting accepts.

    Arguments
    ---------
    kind : str
        ``int`` (an integer, not a bool), ``number`` (an int or a float, not a
        bool, finite), ``bool`` (``True``/``False``, not a string),
        ``choice`` (one of ``choices``), ``patterns`` (a list of non-empty
        strings: fnmatch patterns of module names) or ``weights`` (a mapping
        of names to numbers >= 0, at least one > 0).
    minimum : float, optional
        Smallest accepted value (``int`` and ``number``).
    exclusive : bool
        The minimum itself is refused (``number`` > 0).
    choices : tuple of str
        The accepted values of a ``choice``.
    odd : bool
        Only odd integers (a convolution that keeps the grid's size).
    meaning : str
        What the setting is, for messages.

    Example
    -------
    >>> Setting("int", minimum=1).problem(0)
    'must be an integer >= 1'
    >>> Setting("bool").problem("False")
    'must be a boolean (True or False, without quotes)'
    >>> Setting("number", minimum=0).problem(0.5) is None
    True
    """

    kind: str
    minimum: float = None
    exclusive: bool = False
    choices: tuple = field(default_factory=tuple)
    odd: bool = False
    meaning: str = ""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Setting kind must be one of {KINDS}, got {self.kind!r}.")

    def accepted(self):
        """The accepted values, in words (used in messages).

        Returns
        -------
        str

        Example
        -------
        >>> Setting("number", minimum=0, exclusive=True).accepted()
        'a number > 0'
        """
        if self.kind == "bool":
            return "a boolean (True or False, without quotes)"
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "patterns":
            return "a list of module-name patterns, e.g. ['*q_proj', '*v_proj']"
        if self.kind == "weights":
            return "a mapping of task names to numbers >= 0, at least one > 0"
        if self.kind == "int":
            what = "an odd integer" if self.odd else "an integer"
        else:
            what = "a number"
        if self.minimum is None:
            return what
        sign = ">" if self.exclusive else ">="
        minimum = (
            int(self.minimum) if float(self.minimum).is_integer() else self.minimum
        )
        return f"{what} {sign} {minimum}"

    def problem(self, value):
        """Why ``value`` is refused (``None`` when it is accepted).

        Arguments
        ---------
        value : object
            A resolved value of the setting.

        Returns
        -------
        str or None
            ``"must be <accepted values>"``.

        Example
        -------
        >>> Setting("int", minimum=1).problem(2.5)
        'must be an integer >= 1'
        >>> Setting("patterns").problem(["*q_proj"]) is None
        True
        """
        wrong = f"must be {self.accepted()}"
        if self.kind == "bool":
            return None if isinstance(value, bool) else wrong
        if self.kind == "choice":
            return None if isinstance(value, str) and value in self.choices else wrong
        if self.kind == "patterns":
            ok = isinstance(value, (list, tuple)) and all(
                isinstance(item, str) and item for item in value
            )
            return None if ok else wrong
        if self.kind == "weights":
            if not isinstance(value, dict) or not all(
                _is_number(v) and v >= 0 for v in value.values()
            ):
                return wrong
            return None if any(v > 0 for v in value.values()) else wrong
        if self.kind == "int" and not _is_int(value):
            return wrong
        if self.kind == "number" and not _is_number(value):
            return wrong
        if self.odd and value % 2 == 0:
            return wrong
        if self.minimum is not None:
            if value < self.minimum or (self.exclusive and value == self.minimum):
                return wrong
        return None


def _is_int(value):
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    """A finite int or float that is not a bool."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def integer(minimum, meaning=""):
    """An integer setting of at least ``minimum``.

    Arguments
    ---------
    minimum : int
        Smallest accepted value.
    meaning : str
        What it is.

    Returns
    -------
    Setting

    Example
    -------
    >>> integer(1).accepted()
    'an integer >= 1'
    """
    return Setting("int", minimum=minimum, meaning=meaning)


def number(minimum, exclusive=False, meaning=""):
    """A number setting of at least (or, ``exclusive``, above) ``minimum``.

    Arguments
    ---------
    minimum : float
        Smallest accepted value.
    exclusive : bool
        Refuse ``minimum`` itself.
    meaning : str
        What it is.

    Returns
    -------
    Setting

    Example
    -------
    >>> number(0).accepted()
    'a number >= 0'
    """
    return Setting("number", minimum=minimum, exclusive=exclusive, meaning=meaning)


def choice(*choices, meaning=""):
    """A setting taking one of ``choices``.

    Arguments
    ---------
    *choices : str
        The accepted values.
    meaning : str
        What it is.

    Returns
    -------
    Setting

    Example
    -------
    >>> choice("parallel", "sequential").accepted()
    'one of parallel, sequential'
    """
    return Setting("choice", choices=tuple(choices), meaning=meaning)


BOOL = Setting("bool")
#: The dtypes a pretrained model can be loaded in
#: (:mod:`speechbrain_moe.lobes.dtypes`).
DTYPE_NAMES = ("float32", "bfloat16", "float16", "checkpoint")

#: The settings of the packaged PETL method files (``hparams/petl/``) and
#: bridge files (``hparams/bridges/``), by name; a user's own file is checked
#: for the names it shares with them.
SETTINGS = {
    # mixtures (Soft-MoA, Dense-MoA, sparse MoE) and their adapters
    "num_experts": integer(1, "experts of the mixture"),
    "bottleneck": integer(1, "bottleneck width r of each adapter"),
    "slots_per_expert": integer(1, "Soft-MoA slots p per expert"),
    "normalize": BOOL,
    "top_k": integer(1, "experts each token is routed to"),
    "hidden_size": integer(1, "hidden width"),
    "expert_hidden": integer(1, "hidden width of each expert"),
    "aggregation_hidden": integer(1, "hidden width of the aggregation MLP"),
    "fused_size": integer(1, "width of the fuse projection"),
    "num_shared_experts": integer(0, "always-on shared experts"),
    "routing": choice("topk_softmax", "softmax_topk"),
    "balance_loss_weight": number(0, meaning="weight of the Switch balance loss"),
    "z_loss_weight": number(0, meaning="weight of the router z-loss"),
    "bias_balancing": BOOL,
    "bias_update_rate": number(0, exclusive=True, meaning="bias balancing step"),
    "implementation": choice(
        "auto", "plain", "kernel", meaning="which code computes the mixture"
    ),
    # placement of adapters in the backbone
    "placement": choice("pfeiffer_attention", "pfeiffer_ffn", "houlsby"),
    "mode": choice("parallel", "sequential"),
    "train_norms": BOOL,
    # Convpass
    "kernel_size": Setting("int", minimum=1, odd=True),
    # LoRA
    "rank": integer(1, "LoRA rank"),
    "alpha": number(0, exclusive=True, meaning="LoRA scale numerator"),
    "target_layers": Setting("patterns"),
    # prompt and prefix tuning
    "num_prompts": integer(1, "prompt tokens per layer"),
    "num_prefix": integer(1, "prefix key/value vectors per layer"),
}

#: Relations between two settings of one file: ``(setting, other, relation)``,
#: checked when both are present and valid on their own.
RULES = [("top_k", "num_experts", "<=")]

#: The settings of the LLM-bridge recipe's YAML
#: (``recipes/LibriSpeech/LLM_bridge/hparams/bridge.yaml``) that no built
#: object checks before training starts.
RECIPE_SETTINGS = {
    "downsampling_factor": integer(1, "encoder frames stacked per LLM position"),
    "num_beams": integer(1, "beams of the decoding (1: greedy)"),
    "max_new_tokens": integer(1, "tokens generated per answer"),
    "task_weights": Setting("weights"),
    "llm_lora_layers": Setting("patterns"),
    "lora_rank": integer(1, "LoRA rank"),
    "lora_alpha": number(0, exclusive=True, meaning="LoRA scale numerator"),
    "llm_lora_method": choice(
        "lora",
        "dense_lora",
        "moe_lora",
        meaning="what adapts the LLM's llm_lora_layers (soft_lora is refused: "
        "Soft-MoE slots mix future tokens of a causal LLM)",
    ),
    "encoder_dtype": choice(*DTYPE_NAMES, meaning="dtype of the frozen encoder"),
    "llm_dtype": choice(*DTYPE_NAMES, meaning="dtype of the frozen LLM"),
    "select_n_sentences": integer(1, "utterances kept per split"),
    "max_audio_seconds": number(0, exclusive=True, meaning="longest clip, seconds"),
    "sample_rate": integer(1, "audio sample rate"),
    "valid_decode": BOOL,
    "skip_prep": BOOL,
    "use_tensorboard": BOOL,
    "number_of_epochs": integer(1, "training epochs"),
    "batch_size": integer(1, "training clips per batch"),
    "test_batch_size": integer(1, "evaluation clips per batch"),
    "num_workers": integer(0, "data-loading processes (0: the main one)"),
    "lr": number(0, exclusive=True, meaning="learning rate"),
    "weight_decay": number(0, meaning="AdamW weight decay"),
    "max_grad_norm": number(0, exclusive=True, meaning="gradient clipping norm"),
    "skip_nonfinite_grads": BOOL,
    "nonfinite_patience": integer(0, "non-finite losses tolerated per epoch"),
}


def check_settings(
    values, where, fix, schema=None, nullable=(), rules=None, examples=None
):
    """Raises ``ValueError`` for the first value that ``schema`` refuses.

    Arguments
    ---------
    values : dict
        Setting -> resolved value. Names not in ``schema`` are not checked.
    where : str
        The file (and its kind) the settings come from, e.g. ``"PETL method
        file /path/lora.yaml"``.
    fix : callable
        ``fix(name, example) -> str``: how the user sets a value, e.g.
        ``--petl_overrides="{rank: 8}"``.
    schema : dict, optional
        Name -> :class:`Setting` (default :data:`SETTINGS`).
    nullable : collection of str
        Settings for which ``None`` is accepted (their default is ``None``).
    rules : list, optional
        Relations between settings (default :data:`RULES`).
    examples : dict, optional
        Setting -> a value to suggest in the fix (e.g. the file's own
        default), used when ``schema`` accepts it.

    Example
    -------
    >>> fix = lambda name, example: f"--petl_overrides='{{{name}: {example}}}'"
    >>> check_settings({"rank": 8, "my_own": "x"}, "PETL method file lora.yaml", fix)
    >>> check_settings({"rank": 0}, "PETL method file lora.yaml", fix)
    Traceback (most recent call last):
    ...
    ValueError: PETL method file lora.yaml: rank (LoRA rank) must be an integer >= 1, got 0 (int). Set rank in that file, or pass --petl_overrides='{rank: 1}'.
    >>> check_settings({"top_k": 3, "num_experts": 2}, "bridge file b.yaml", fix)
    Traceback (most recent call last):
    ...
    ValueError: bridge file b.yaml: top_k must be at most num_experts (2), got 3. Set top_k in that file, or pass --petl_overrides='{top_k: 2}'.
    """
    schema = SETTINGS if schema is None else schema
    rules = RULES if rules is None else rules
    for name, value in values.items():
        spec = schema.get(name)
        if spec is None or (value is None and name in nullable):
            continue
        problem = spec.problem(value)
        if problem:
            meaning = f" ({spec.meaning})" if spec.meaning else ""
            raise ValueError(
                f"{where}: {name}{meaning} {problem}, got {value!r} "
                f"({type(value).__name__}). Set {name} in that file, or pass "
                f"{fix(name, _example(spec, (examples or {}).get(name), value))}."
            )
    for name, other, relation in rules:
        if name not in values or other not in values:
            continue
        value, limit = values[name], values[other]
        if not (_is_number(value) and _is_number(limit)):
            continue
        if relation == "<=" and value > limit:
            raise ValueError(
                f"{where}: {name} must be at most {other} ({limit}), got {value}. "
                f"Set {name} in that file, or pass {fix(name, limit)}."
            )


def _example(spec, suggested=None, refused=None):
    """A value ``spec`` accepts, for the fix in a message: the boolean a
    ``refused`` string meant, else ``suggested`` if accepted, else one of
    its own."""
    if spec.kind == "bool" and isinstance(refused, str):
        meant = {"true": True, "yes": True, "on": True, "1": True}
        meant.update({"false": False, "no": False, "off": False, "0": False})
        if refused.strip().lower() in meant:
            return meant[refused.strip().lower()]
    if suggested is not None and spec.problem(suggested) is None:
        return suggested
    if spec.kind == "bool":
        return "False"
    if spec.kind == "choice":
        return spec.choices[0]
    if spec.kind == "patterns":
        return "['*q_proj', '*v_proj']"
    if spec.kind == "weights":
        return "{asr: 1.0}"
    minimum = 1 if spec.minimum is None else spec.minimum
    if spec.kind == "int":
        return int(minimum) + (1 if spec.exclusive else 0)
    return 1.0 if spec.exclusive or minimum <= 0 else minimum


def _flag_fix(name, example):
    """``--name=example`` (quoted when the example holds a space)."""
    example = str(example)
    return f'--{name}="{example}"' if " " in example else f"--{name}={example}"


def check_recipe_settings(hparams, hparams_file, schema=None):
    """Checks a recipe's loaded hyperparameters against ``schema``
    (:data:`RECIPE_SETTINGS` by default), before any training starts.

    Arguments
    ---------
    hparams : dict
        The recipe's loaded YAML.
    hparams_file : str
        Its path (named in the message).
    schema : dict, optional
        Name -> :class:`Setting`.

    Example
    -------
    >>> check_recipe_settings({"num_beams": 1}, "bridge.yaml")
    >>> check_recipe_settings({"num_beams": 0}, "bridge.yaml")
    Traceback (most recent call last):
    ...
    ValueError: recipe file bridge.yaml: num_beams (beams of the decoding (1: greedy)) must be an integer >= 1, got 0 (int). Set num_beams in that file, or pass --num_beams=1.
    >>> check_recipe_settings({"task_weights": {"asr": 0.0}}, "bridge.yaml")
    Traceback (most recent call last):
    ...
    ValueError: recipe file bridge.yaml: task_weights must be a mapping of task names to numbers >= 0, at least one > 0, got {'asr': 0.0} (dict). Set task_weights in that file, or pass --task_weights="{asr: 1.0}".
    """
    schema = RECIPE_SETTINGS if schema is None else schema
    values = {name: hparams[name] for name in schema if name in hparams}
    nullable = {"select_n_sentences"}
    check_settings(
        values,
        f"recipe file {hparams_file}",
        _flag_fix,
        schema=schema,
        nullable=nullable,
        rules=[],
    )

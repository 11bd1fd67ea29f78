"""Why deep prompt tuning (``prompt``) sits at chance on the real Whisper
tasks of the accuracy suite: small experiments on a few clips.

``python -m benchmarks.prompt_diagnosis [--json benchmarks/results/prompt_diagnosis.json]``

Three measurements on the real Whisper tiny.en and the accuracy suite's
``letters_eset`` / ``voice_id`` clips (built by ``python -m benchmarks
--suite accuracy``; its ``<task>.work`` manifests are read, not rebuilt):

1. ``attention``: the share of the real frames' attention that goes to the
   prompt tokens of each layer at initialisation, for prompts drawn at
   several scales (0.02 is the method's initialisation; 0 gives identical
   prompts, for which the layer's LayerNorm outputs only its bias). Computed
   from each layer's real input (captured by forward pre-hooks) with the
   layer's own ``self_attn_layer_norm``, ``q_proj`` and ``k_proj``.
2. ``output_change``: how far the untrained prompts move the encoder output
   of the valid frames (relative norm of the change) and the mean-pooled
   clip vector (cosine to the frozen model's), with and without the
   trimming of Whisper's input to the clips' own frames (``trim_to_valid``).
3. ``training``: a few steps of the suite's training (AdamW, weight decay
   0.1, batch 8, clip norm 5, LayerNorm + linear head on the mean-pooled
   frames) for the method as shipped and for other prompt initialisation
   scales and learning rates, with the linear probe at the same settings as
   the reference; test accuracy and the spread of the pooled features over
   the batch at the first and the last step.

No timing is reported. One thread (``torch.set_num_threads(1)``).

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import csv
import json
import os
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "prompt_diagnosis.json")
TASKS = ["letters_eset", "voice_id"]


def load_clips(manifest, count=None, offset=0):
    """Waveforms, relative lengths and labels of a Speech Commands-style manifest.

    Arguments
    ---------
    manifest : str
        A CSV with ``wav`` and ``class_name`` columns (as ``prepare_GSC`` writes).
    count : int, optional
        How many rows (default: all from ``offset``).
    offset : int
        First row.

    Returns
    -------
    wavs : torch.Tensor
        ``[clips, samples]``, zero-padded to the longest.
    lens : torch.Tensor
        ``[clips]`` relative lengths.
    labels : list of str
        The rows' ``class_name``.

    Example
    -------
    >>> import tempfile, soundfile
    >>> folder = tempfile.mkdtemp()
    >>> for name, n in [("a", 800), ("b", 1600)]:
    ...     soundfile.write(os.path.join(folder, name + ".wav"), [0.1] * n, 16000)
    >>> path = os.path.join(folder, "train.csv")
    >>> _ = open(path, "w").write(
    ...     f"ID,wav,class_name\\na,{folder}/a.wav,x\\nb,{folder}/b.wav,y\\n")
    >>> wavs, lens, labels = load_clips(path)
    >>> wavs.shape, lens.tolist(), labels
    (torch.Size([2, 1600]), [0.5, 1.0], ['x', 'y'])
    """
    import soundfile
    import torch

    with open(manifest, newline="") as fin:
        rows = list(csv.DictReader(fin))[offset:]
    rows = rows if count is None else rows[:count]
    wavs = [
        torch.tensor(soundfile.read(r["wav"])[0], dtype=torch.float32) for r in rows
    ]
    longest = max(len(w) for w in wavs)
    padded = torch.stack(
        [torch.nn.functional.pad(w, (0, longest - len(w))) for w in wavs]
    )
    lens = torch.tensor([len(w) / longest for w in wavs])
    return padded, lens, [r["class_name"] for r in rows]


def layer_inputs(whisper, wavs, lens):
    """The input of every encoder layer of a :class:`Whisper` lobe on a batch.

    Arguments
    ---------
    whisper : speechbrain_moe.lobes.whisper.Whisper
        The lobe (not adapted).
    wavs, lens : torch.Tensor
        ``[batch, samples]`` waveforms and ``[batch]`` relative lengths.

    Returns
    -------
    inputs : list of torch.Tensor
        ``[batch, frames, hidden]`` per layer.
    mask : torch.Tensor
        ``[batch, frames]``, True on valid frames.
    """
    import torch

    from speechbrain_moe.lobes.base import unwrap

    captured = []
    layers = unwrap(whisper.model).layers
    hooks = [
        layer.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        for layer in layers
    ]
    try:
        with torch.no_grad():
            _, mask = whisper.encode(wavs, lens)
    finally:
        for hook in hooks:
            hook.remove()
    return captured, mask


def prompt_attention_share(layer, hidden, valid, num_prompts=10, scale=0.02, seed=0):
    """Share of the valid frames' attention that prompt tokens drawn at
    ``scale`` would take in one Whisper encoder layer.

    Arguments
    ---------
    layer : torch.nn.Module
        A ``WhisperEncoderLayer`` (``self_attn_layer_norm``, ``self_attn``).
    hidden : torch.Tensor
        ``[frames, hidden]`` the layer's input for one clip.
    valid : int
        Its valid frames (the first ``valid``).
    num_prompts : int
        Prompt tokens put in front.
    scale : float
        Standard deviation of the prompts (0: all zero).
    seed : int
        Seed of the prompts.

    Returns
    -------
    dict
        ``mean`` (over heads and valid queries) and ``max`` (of one head and
        query) of the attention mass on the prompts, and ``uniform`` (the
        share they would have if every key weighed the same).

    Example
    -------
    >>> import torch
    >>> from transformers import WhisperConfig
    >>> from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer
    >>> layer = WhisperEncoderLayer(WhisperConfig(d_model=8, encoder_attention_heads=2,
    ...     encoder_ffn_dim=16))
    >>> share = prompt_attention_share(layer, torch.randn(6, 8), valid=4, num_prompts=2)
    >>> 0 < share["mean"] <= share["max"] <= 1, round(share["uniform"], 3)
    (True, 0.333)
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    frames = hidden[:valid]
    prompts = torch.randn(num_prompts, frames.shape[-1], generator=generator) * scale
    with torch.no_grad():
        normed = layer.self_attn_layer_norm(torch.cat([prompts, frames]))
        attn = layer.self_attn
        heads = attn.num_heads
        head_dim = frames.shape[-1] // heads
        query = attn.q_proj(normed).view(-1, heads, head_dim).transpose(0, 1)
        key = attn.k_proj(normed).view(-1, heads, head_dim).transpose(0, 1)
        weights = (query @ key.transpose(-1, -2) * head_dim**-0.5).softmax(-1)
        mass = weights[:, num_prompts:, :num_prompts].sum(-1)
    return {
        "mean": float(mass.mean()),
        "max": float(mass.max()),
        "uniform": num_prompts / (num_prompts + valid),
    }


def output_change(folder, wavs, lens, trim_to_valid=True, seed=0):
    """How far untrained deep prompts move a Whisper encoder's output.

    Arguments
    ---------
    folder : str
        Whisper checkpoint folder.
    wavs, lens : torch.Tensor
        ``[batch, samples]`` and ``[batch]`` relative lengths.
    trim_to_valid : bool
        The lobe's option (False: 30 s of input, 1500 frames).
    seed : int
        Seed of the prompts.

    Returns
    -------
    dict
        ``frames`` (encoder frames), ``relative_change`` (norm of the change
        of the valid frames over their norm), ``pooled_cosine`` (mean over
        clips, mean-pooled vectors with and without prompts).

    Example
    -------
    >>> import tempfile, torch
    >>> from transformers import WhisperConfig, WhisperModel
    >>> folder = tempfile.mkdtemp()
    >>> WhisperModel(WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1,
    ...     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
    ...     decoder_ffn_dim=64, vocab_size=64, pad_token_id=0)).save_pretrained(folder)
    >>> change = output_change(folder, torch.randn(2, 8000), torch.tensor([1.0, 0.5]))
    >>> change["frames"], change["relative_change"] > 0
    (25, True)
    """
    import torch

    from speechbrain_moe.lobes.whisper import Whisper
    from speechbrain_moe.petl import apply_method

    plain = Whisper(folder, trim_to_valid=trim_to_valid).eval()
    torch.manual_seed(seed)
    prompted = apply_method(Whisper(folder, trim_to_valid=trim_to_valid), "prompt")
    with torch.no_grad():
        before, mask = plain.encode(wavs, lens)
        after, _ = prompted.eval().encode(wavs, lens)
    keep = mask.unsqueeze(-1).to(before.dtype)
    pooled_before = (before * keep).sum(1) / keep.sum(1)
    pooled_after = (after * keep).sum(1) / keep.sum(1)
    cosine = torch.nn.functional.cosine_similarity(pooled_before, pooled_after)
    return {
        "frames": before.shape[1],
        "relative_change": float(
            ((after - before) * keep).norm() / (before * keep).norm()
        ),
        "pooled_cosine": float(cosine.mean()),
    }


def train_variant(folder, train, test, method="prompt", prompt_std=0.02, lr=5e-3,
                  epochs=3, batch_size=8, seed=1):  # fmt: skip
    """Trains ``method`` on Whisper with the accuracy suite's optimiser
    (AdamW, weight decay 0.1, gradient norm clipped at 5, constant
    learning rate) and a LayerNorm + linear head on the mean-pooled frames.

    Arguments
    ---------
    folder : str
        Whisper checkpoint folder.
    train, test : tuple
        ``(wavs, lens, labels)`` as :func:`load_clips` returns.
    method : str
        ``prompt`` (its prompts rescaled to ``prompt_std``) or another
        method of :func:`speechbrain_moe.petl.apply_method` (``linear``: the
        backbone frozen, only the head trains).
    prompt_std : float
        Standard deviation of the prompts at initialisation (0.02 as shipped).
    lr : float
        Learning rate of the adapted part and the head.
    epochs, batch_size, seed : int
        Training length, batch size and seed.

    Returns
    -------
    dict
        ``test_accuracy``, ``train_accuracy`` (of the last epoch's batches),
        ``feature_spread_first`` / ``feature_spread_last`` (mean over
        channels of the std over the batch of the pooled features, at the
        first and last step) and ``steps``.

    Example
    -------
    >>> import tempfile, torch
    >>> from transformers import WhisperConfig, WhisperModel
    >>> folder = tempfile.mkdtemp()
    >>> WhisperModel(WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1,
    ...     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
    ...     decoder_ffn_dim=64, vocab_size=64, pad_token_id=0)).save_pretrained(folder)
    >>> data = (torch.randn(4, 4000), torch.ones(4), ["a", "b", "a", "b"])
    >>> out = train_variant(folder, data, data, epochs=1, batch_size=2)
    >>> out["steps"], 0 <= out["test_accuracy"] <= 1
    (2, True)
    """
    import torch

    from speechbrain_moe.lobes.whisper import Whisper
    from speechbrain_moe.petl import apply_method

    torch.manual_seed(seed)
    backbone = apply_method(Whisper(folder, trim_to_valid=True), method)
    for name, param in backbone.named_parameters():
        if name.endswith("prompts"):
            with torch.no_grad():
                param.mul_(prompt_std / 0.02)
    classes = sorted(set(train[2]))
    head = torch.nn.Sequential(
        torch.nn.LayerNorm(backbone.output_size),
        torch.nn.Linear(backbone.output_size, len(classes)),
    )
    params = [
        p for p in [*backbone.parameters(), *head.parameters()] if p.requires_grad
    ]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.1)
    wavs, lens, labels = train
    targets = torch.tensor([classes.index(label) for label in labels])
    generator = torch.Generator().manual_seed(seed)
    spreads, hits, steps = [], [], 0
    for _epoch in range(epochs):
        order = torch.randperm(len(targets), generator=generator)
        hits = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            backbone.train()
            pooled = backbone(wavs[idx], lens[idx])
            logits = head(pooled)
            loss = torch.nn.functional.cross_entropy(logits, targets[idx])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            spreads.append(float(pooled.detach().std(0).mean()))
            hits.extend((logits.argmax(-1) == targets[idx]).tolist())
            steps += 1
    backbone.eval()
    correct = []
    with torch.no_grad():
        for start in range(0, len(test[2]), 16):
            part = slice(start, start + 16)
            logits = head(backbone(test[0][part], test[1][part]))
            correct.extend(
                classes[i] == label
                for i, label in zip(logits.argmax(-1).tolist(), test[2][part])
            )
    return {
        "test_accuracy": sum(correct) / len(correct),
        "train_accuracy": sum(hits) / len(hits),
        "feature_spread_first": spreads[0],
        "feature_spread_last": spreads[-1],
        "steps": steps,
    }


TRAINING_VARIANTS = [
    ("prompt", 0.02, 5e-3),
    ("prompt", 0.02, 5e-4),
    ("prompt", 1.0, 5e-3),
    ("prompt", 0.0, 5e-3),
    ("prompt", 1.0, 5e-4),
    ("linear", 0.02, 5e-3),
    ("linear", 0.02, 5e-4),
]


def main(argv=None):
    """Command-line entry point: runs the three measurements, writes the JSON.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).
    """
    import platform
    import subprocess

    import torch

    from speechbrain_moe.lobes.base import unwrap
    from speechbrain_moe.lobes.whisper import Whisper
    from tools.real_assets.layout import RealAssets

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.prompt_diagnosis",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--assets", default=None, help="real-asset folder")
    parser.add_argument("--json", default=RESULTS)
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS)
    parser.add_argument("--clips", type=int, default=8, help="clips for 1 and 2")
    parser.add_argument("--no_training", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    assets = RealAssets(args.assets)
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "threads": 1, "note": "no timing is reported"},
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                 capture_output=True, text=True).stdout.strip(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m benchmarks.prompt_diagnosis",
        "tasks": {},
    }  # fmt: skip
    for task in args.tasks:
        work = assets.path("data", "accuracy", f"{task}.work")
        manifest = os.path.join(work, "train.csv")
        if not os.path.isfile(manifest):
            raise FileNotFoundError(
                f"{manifest} is missing: build the accuracy suite's data first "
                "(python -m benchmarks --suite accuracy, or pass --assets to the "
                "folder that holds data/accuracy/)."
            )
        wavs, lens, _ = load_clips(manifest, args.clips)
        plain = Whisper(assets.whisper, trim_to_valid=True).eval()
        inputs, mask = layer_inputs(plain, wavs, lens)
        layers = unwrap(plain.model).layers
        valid = mask.sum(1).tolist()
        attention = {}
        for scale in (0.02, 1.0, 0.0):
            attention[str(scale)] = [
                {
                    key: sum(
                        prompt_attention_share(layer, x[c], valid[c], scale=scale)[key]
                        for c in range(len(valid))
                    )
                    / len(valid)
                    for key in ("mean", "max", "uniform")
                }
                for layer, x in zip(layers, inputs)
            ]
        entry = {
            "attention_on_prompts": attention,
            "output_change": {
                "trim_to_valid": output_change(assets.whisper, wavs, lens, True),
                "untrimmed_30s": output_change(assets.whisper, wavs, lens, False),
            },
        }
        print(task, json.dumps(entry, indent=1), flush=True)
        if not args.no_training:
            train = load_clips(manifest)
            test = load_clips(os.path.join(work, "test.csv"))
            entry["training"] = []
            for method, std, lr in TRAINING_VARIANTS:
                result = train_variant(assets.whisper, train, test, method, std, lr)
                row = {"method": method, "prompt_std": std, "lr": lr, **result}
                entry["training"].append(row)
                print(task, row, flush=True)
        report["tasks"][task] = entry
        os.makedirs(os.path.dirname(args.json), exist_ok=True)
        with open(args.json, "w") as fout:
            json.dump(report, fout, indent=1)


if __name__ == "__main__":
    main()

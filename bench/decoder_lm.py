"""A tiny decoder LM on real English text: perplexity before pruning, right
after uniform MLP + head pruning, and after a short distillation.

Text: every fortune of Debian's `fortunes` package (/usr/share/games/fortunes,
`apt-get install fortunes`), byte-level tokens (vocabulary 256), cut into
windows of `--length` bytes; the fortunes of every tenth file position are held
out for evaluation. The model is a keras-hub `GemmaCausalLM` on a random-init
`GemmaBackbone` (4 layers, 4 query heads sharing 4 key/value heads, head size
16, hidden 64, MLP 256), trained for `--epochs` with AdamW. The plan keeps the
same widths in every block (`hos_keras.uniform_plan`): a quarter of the
key/value heads and 30% of the MLP units removed by the k34 criterion. The
pruned model stays a GemmaCausalLM; it is distilled against the teacher
(HOSDistiller, output MSE on the logits plus the task loss) for
`--distill-epochs`. Perplexity is exp of the mean next-token cross-entropy
over the held-out windows (every position after the first). A greedy
continuation of one prompt is recorded for each model.

Run: .venv/bin/python bench/decoder_lm.py   (about 25 minutes on 2 CPU cores)
Writes bench/results/decoder_lm.json.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

import finetuning
import keras
import numpy as np
from finetuning import machine

import hos_keras
from hos_keras import files

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
FORTUNES = "/usr/share/games/fortunes"
PROMPT = "The meaning of life is "


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--length", type=int, default=64, help="window in bytes")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--distill-epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--distill-lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, help="training windows (quick checks)")
    p.add_argument("--head-ratio", type=float, default=0.25)
    p.add_argument("--mlp-ratio", type=float, default=0.3)
    p.add_argument("--cache-dir", default="runs/bench_decoder_lm")
    p.add_argument("--out", help="results file")
    return p.parse_args()


def fortunes() -> tuple[list[bytes], list[bytes]]:
    """(training, held-out) fortunes: every tenth one held out."""
    paths = sorted(
        p
        for p in glob.glob(os.path.join(FORTUNES, "*"))
        if os.path.isfile(p) and not p.endswith((".dat", ".u8"))
    )
    if not paths:
        raise SystemExit(
            f"No fortunes in {FORTUNES}: apt-get install fortunes, then rerun."
        )
    texts = []
    for path in paths:
        with open(path, "rb") as stream:
            texts.extend(t.strip() for t in stream.read().split(b"\n%\n"))
    texts = [t for t in texts if t]
    return (
        [t for k, t in enumerate(texts) if k % 10],
        [t for k, t in enumerate(texts) if not k % 10],
    )


def windows(texts: list[bytes], length: int) -> np.ndarray:
    """Byte windows of `length + 1` over the texts joined by blank lines."""
    stream = np.frombuffer(b"\n\n".join(texts), dtype=np.uint8).astype("int32")
    count = (len(stream) - 1) // length
    starts = np.arange(count) * length
    return np.stack([stream[s : s + length + 1] for s in starts])


def as_inputs(batch: np.ndarray):
    x = {
        "token_ids": batch[:, :-1],
        "padding_mask": np.ones_like(batch[:, :-1], dtype=bool),
    }
    return x, batch[:, 1:]


def gemma() -> keras.Model:
    import keras_hub

    backbone = keras_hub.models.GemmaBackbone(
        vocabulary_size=256,
        num_layers=4,
        num_query_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        hidden_dim=64,
        intermediate_dim=256,
    )
    return keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


def adamw(lr, steps):
    return finetuning.adamw(lr, steps, weight_decay=0.01)


def perplexity(model, held_out: np.ndarray, batch_size=256) -> float:
    total, count = 0.0, 0
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    for start in range(0, len(held_out), batch_size):
        x, y = as_inputs(held_out[start : start + batch_size])
        values = keras.ops.convert_to_numpy(loss(y, model(x, training=False)))
        total += float(values.sum())
        count += values.size
    return float(np.exp(total / count))


def continuation(model, length=48) -> str:
    prompt = np.frombuffer(PROMPT.encode(), dtype=np.uint8).astype("int32")
    tokens = np.zeros((1, len(prompt) + length), "int32")
    mask = np.zeros_like(tokens, dtype=bool)
    tokens[0, : len(prompt)], mask[0, : len(prompt)] = prompt, True
    model.compile(sampler="greedy")
    out = model.generate(
        {"token_ids": tokens, "padding_mask": mask},
        max_length=tokens.shape[1],
        stop_token_ids=None,
    )["token_ids"][0]
    return bytes(int(t) for t in out).decode("utf-8", "replace")


def train_teacher(args, train: np.ndarray):
    os.makedirs(args.cache_dir, exist_ok=True)
    path = os.path.join(args.cache_dir, f"gemma_e{args.epochs}_n{len(train)}.keras")
    if os.path.exists(path):
        print(f"reusing {path}")
        return keras.models.load_model(path), 0.0
    keras.utils.set_random_seed(0)
    model = gemma()
    steps = len(train) // args.batch_size * args.epochs
    model.compile(
        optimizer=adamw(args.lr, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        sampler="greedy",
    )
    x, y = as_inputs(train)
    start = time.perf_counter()
    model.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=2)
    seconds = time.perf_counter() - start
    model.save(path)
    return model, seconds


def main():
    args = parse_args()
    began = time.perf_counter()
    train_texts, held_texts = fortunes()
    train = windows(train_texts, args.length)
    held_out = windows(held_texts, args.length)
    rng = np.random.default_rng(0)
    train = train[rng.permutation(len(train))][: args.limit]
    print(f"{len(train)} training windows, {len(held_out)} held out", flush=True)
    teacher, seconds = train_teacher(args, train)
    rows = {"teacher": {"perplexity": perplexity(teacher, held_out)}}
    rows["teacher"]["continuation"] = continuation(teacher)
    print(rows["teacher"], flush=True)

    ratios = {"*attention": args.head_ratio, "*ffw_gating": args.mlp_ratio}
    plan = hos_keras.plan_pruning(teacher, "k34", "fixed", ratio=ratios)
    plan = hos_keras.uniform_plan(teacher, plan)
    student = hos_keras.slim_model(teacher, plan)
    assert type(student) is type(teacher), type(student)
    config = student.backbone.get_config()
    widths = {
        k: config[k]
        for k in ("num_query_heads", "num_key_value_heads", "intermediate_dim")
    }
    rows["pruned"] = {
        "perplexity": perplexity(student, held_out),
        "continuation": continuation(student),
    }
    print(widths, rows["pruned"], flush=True)

    distiller = hos_keras.HOSDistiller(
        student, teacher, plan=plan, pivots=[], output_weight=1.0
    )
    x, y = as_inputs(train)
    steps = len(train) // args.batch_size * args.distill_epochs
    distiller.compile(
        optimizer=adamw(args.distill_lr, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    start = time.perf_counter()
    distiller.fit(
        x, y, batch_size=args.batch_size, epochs=args.distill_epochs, verbose=2
    )
    distill_seconds = time.perf_counter() - start
    rows["distilled"] = {
        "perplexity": perplexity(student, held_out),
        "continuation": continuation(student),
    }
    print(rows["distilled"], flush=True)

    before, after = hos_keras.profile(teacher), hos_keras.profile(student)
    result = {
        "config": {
            **{k: v for k, v in vars(args).items() if k not in ("out", "cache_dir")},
            "text": "Debian fortunes, byte tokens, every tenth fortune held out",
            "model": "keras-hub GemmaCausalLM: 4 layers, 4 query / 4 key-value "
            "heads of 16, hidden 64, MLP 256, vocabulary 256",
            "plan": "k34, fixed ratios (heads, MLP), uniform across blocks",
            "distillation": "HOSDistiller: task loss + output MSE on the logits, "
            "no pivots, AdamW cosine",
        },
        "training_windows": len(train),
        "held_out_windows": len(held_out),
        "teacher_seconds": seconds,
        "distill_seconds": distill_seconds,
        "widths_after": widths,
        "params": [before["params"], after["params"]],
        "macs_per_token": [before["macs"], after["macs"]],
        "macs_reduction": plan.macs_reduction,
        "rows": rows,
        "minutes": (time.perf_counter() - began) / 60,
        "machine": machine(),
    }
    out = args.out or os.path.join(RESULTS, "decoder_lm.json")
    files.write_text(out, json.dumps(result, indent=1))
    for name, row in rows.items():
        print(f"{name:<10} perplexity {row['perplexity']:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

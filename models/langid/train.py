"""Re-train the `langid` model and re-save it (python models/langid/train.py).

A tiny BERT (Hugging Face transformers) that tells which of five languages a short text is
in: English, Spanish, Portuguese, Italian or Dutch.

Data: the dialog lines of the PyPI package ``chatterbot-corpus`` (1.3.3; its YAML files ship
in the wheel, nothing is downloaded at run time), one line per example, de-duplicated, code
and lines without two words dropped; stratified 80/20 split with seed 0. Its own WordPiece
tokenizer (``tokenizers``, 3,000 pieces, lower case, accents kept) is trained on the
training lines only. Model: 2 layers, 4 heads, width 64, hidden and attention dropout 0.1,
classifier dropout 0.2; AdamW 2e-3, batch 32, 12 epochs, class-weighted cross entropy.

Measures, with MCPredictor (S=100, seed 0): test accuracy, NLL and ECE, and the mutual
information (BALD) on the test lines against three out-of-distribution sets: the test
lines with the characters of each word shuffled, with their word order shuffled (the words
are still in-domain: a bag-of-words cue survives), and lines in five languages the model
never saw (German, French, Swedish, Indonesian, Turkish). Writes the save_pretrained files
(config.json, model.safetensors, tokenizer files), metrics.json and examples.json.

``--eval-only`` re-measures metrics.json with the saved weights (after an engine change).
Needs ``pip install 'mcdrop[hf]' chatterbot-corpus==1.3.3``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # everything is local; never the hub
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout without installing

from mcdrop import MCPredictor  # noqa: E402
from mcdrop.calibration import expected_calibration_error  # noqa: E402
from mcdrop.repository import load_model  # noqa: E402

LANGS = ["english", "spanish", "portuguese", "italian", "dutch"]
UNSEEN = ["german", "french", "swedish", "indonesian", "turkish"]
SEQ_LEN, VOCAB, EPOCHS, BATCH, LR, SAMPLES = 32, 3000, 12, 32, 2e-3, 100
_CODE = re.compile(r"[{}()\[\]=<>#;_`\\|$]")


def corpus_lines(lang: str) -> list[str]:
    """Every usable dialog line of one language of chatterbot-corpus, de-duplicated."""
    import chatterbot_corpus
    import yaml

    folder = Path(chatterbot_corpus.__file__).parent / "data" / lang
    seen: dict[str, None] = {}
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conv in data.get("conversations") or []:
            for utterance in conv if isinstance(conv, list) else [conv]:
                for line in str(utterance).splitlines():
                    line = " ".join(line.split())
                    if len(line.split()) >= 2 and not _CODE.search(line) and len(line) <= 300:
                        seen.setdefault(line, None)
    return list(seen)


def split(seed: int = 0) -> tuple[list[str], list[int], list[str], list[int]]:
    """Stratified 80/20 split: (train texts, train labels, test texts, test labels)."""
    rng = random.Random(seed)
    tr_x, tr_y, te_x, te_y = [], [], [], []
    for label, lang in enumerate(LANGS):
        lines = corpus_lines(lang)
        rng.shuffle(lines)
        cut = int(0.8 * len(lines))
        tr_x += lines[:cut]
        tr_y += [label] * cut
        te_x += lines[cut:]
        te_y += [label] * (len(lines) - cut)
    return tr_x, tr_y, te_x, te_y


def ood_sets(test: list[str], seed: int = 0) -> dict[str, list[str]]:
    """Out-of-domain texts built from the test lines, and lines of unseen languages."""
    rng = random.Random(seed)

    def shuffle_chars(text: str) -> str:
        words = []
        for w in text.split():
            chars = list(w)
            rng.shuffle(chars)
            words.append("".join(chars))
        return " ".join(words)

    def shuffle_words(text: str) -> str:
        words = text.split()
        rng.shuffle(words)
        return " ".join(words)

    unseen = [line for lang in UNSEEN for line in corpus_lines(lang)]
    return {
        "characters shuffled in each word": [shuffle_chars(t) for t in test],
        "word order shuffled": [shuffle_words(t) for t in test],
        "unseen languages (de fr sv id tr)": unseen,
    }


def make_tokenizer(texts: list[str]):  # noqa: ANN201 - a transformers tokenizer
    """A WordPiece tokenizer trained on ``texts``, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=VOCAB, special_tokens=specials)
    tok.train_from_iterator(texts, trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_max_length=SEQ_LEN,
    )  # fmt: skip


def encode(tokenizer, texts: list[str]) -> torch.Tensor:  # noqa: ANN001
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=SEQ_LEN)
    return torch.tensor(enc["input_ids"], dtype=torch.int64)  # (N, L)


def train(tr_x: list[str], tr_y: list[int]) -> None:
    """Train tokenizer and model; save them (save_pretrained) into this folder."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    tokenizer = make_tokenizer(tr_x)
    cfg = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2,
        num_attention_heads=4, intermediate_size=128, max_position_embeddings=SEQ_LEN,
        hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, classifier_dropout=0.2,
        num_labels=len(LANGS), id2label=dict(enumerate(LANGS)),
        label2id={k: i for i, k in enumerate(LANGS)}, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    model = BertForSequenceClassification(cfg)
    x, y = encode(tokenizer, tr_x), torch.tensor(tr_y)
    counts = torch.bincount(y, minlength=len(LANGS)).double()
    weight = (counts.sum() / (len(LANGS) * counts)).float()  # balanced classes
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weight)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for epoch in range(EPOCHS):
        order, total = torch.randperm(len(y), generator=gen), 0.0
        for i in range(0, len(y), BATCH):
            idx = order[i : i + BATCH]
            ids = x[idx]
            logits = model(input_ids=ids, attention_mask=(ids != cfg.pad_token_id).long()).logits
            loss = loss_fn(logits, y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        print(f"epoch {epoch + 1:2d}  loss {total / len(y):.4f}", flush=True)
    model.eval()
    model.save_pretrained(HERE)
    tokenizer.save_pretrained(HERE)


def auroc(neg: np.ndarray, pos: np.ndarray) -> float:
    """P(score of a random positive > that of a random negative), ties counted half."""
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def evaluate(te_x: list[str], te_y: list[int], n_train: int) -> dict:
    """Metrics of the saved folder as mcdrop serves it (load_model + MCPredictor)."""
    loaded = load_model(HERE)
    pred: MCPredictor = loaded.predictor()

    def run(texts: list[str]):  # noqa: ANN202
        ids = torch.from_numpy(loaded.tokenize(texts)["input_ids"])
        return pred.predict(ids, samples=SAMPLES, seed=0)

    out = run(te_x)
    y = np.asarray(te_y)
    probs = out.probs.numpy()
    mi_in = out.mutual_information.numpy()
    metrics: dict = {
        "train_rows": n_train,
        "test_rows": len(te_x),
        "samples": SAMPLES,
        "accuracy": float((probs.argmax(1) == y).mean()),
        "nll": float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, None)).mean()),
        "ece_15_bins": float(expected_calibration_error(probs, y, bins=15)),
        "mutual_information": {"test lines": {"mean": float(mi_in.mean()), "auroc": None}},
    }
    for name, texts in ood_sets(te_x).items():
        mi = run(texts).mutual_information.numpy()
        metrics["mutual_information"][name] = {
            "rows": len(texts), "mean": float(mi.mean()), "auroc": auroc(mi_in, mi),
        }  # fmt: skip
    return metrics


def write_examples(te_x: list[str]) -> None:
    """examples.json: a few test lines and their token ids, for the card's curl lines."""
    loaded = load_model(HERE)
    texts = ["where is the train station", "¿dónde está la estación de tren?", te_x[0]]
    ids = loaded.tokenize(texts)["input_ids"].tolist()
    (HERE / "examples.json").write_text(json.dumps({"texts": texts, "input_ids": ids}) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval-only", action="store_true", help="re-measure the saved model")
    args = ap.parse_args()
    tr_x, tr_y, te_x, te_y = split()
    print({lang: tr_y.count(i) for i, lang in enumerate(LANGS)}, "train lines", flush=True)
    if not args.eval_only:
        train(tr_x, tr_y)
    metrics = evaluate(te_x, te_y, len(tr_x))
    (HERE / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_examples(te_x)
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()

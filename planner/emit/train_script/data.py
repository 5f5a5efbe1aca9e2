"""train.py, the data part: the texts (a .jsonl file or a hub dataset), the tokenizer, packed rows."""

from __future__ import annotations

DATA = r'''# ---------------------------------------------------------------- data


def read_texts(args: argparse.Namespace) -> list[str]:
    path = Path(args.dataset)
    if not path.is_absolute() and not path.exists() and (HERE / path).exists():
        path = HERE / path
    if path.is_dir():
        fail(f"--dataset {args.dataset!r} is a directory; pass a .jsonl file or a hub dataset name.")
    if path.exists():
        texts = []
        with path.open(encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    fail(f"{path}:{number} is not valid JSON ({exc.msg}).")
                if not isinstance(record, dict) or not isinstance(record.get(args.text_field), str):
                    fail(f"{path}:{number} has no string field {args.text_field!r} (see --text-field).")
                texts.append(record[args.text_field])
        return texts
    if path.suffix in (".jsonl", ".json"):
        fail(f"--dataset file {args.dataset!r} does not exist (relative paths are tried here and next to train.py); "
             "put your texts there, one JSON object per line, or pass --dataset sample.jsonl (the bundle's sample) "
             "for a smoke run.")
    try:
        import datasets
    except ImportError:
        fail(f"--dataset {args.dataset!r} is not a local file and the 'datasets' package is not installed; "
             "pass a .jsonl file, or 'pip install datasets' for hub datasets.")
    try:
        ds = datasets.load_dataset(args.dataset, split=args.dataset_split)
    except (OSError, ValueError) as exc:  # not on the hub, no network (HF_HUB_OFFLINE), a bad split
        fail(f"could not load dataset {args.dataset!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}); pass a "
             ".jsonl file, or check the name, the split and the network.")
    if args.text_field not in ds.column_names:
        fail(f"dataset {args.dataset!r} has no column {args.text_field!r}; it has {', '.join(ds.column_names)}.")
    return [t for t in ds[args.text_field] if isinstance(t, str)]


class ByteTokenizer:
    """UTF-8 bytes as token ids 0-255, 256 ends a text: offline smoke runs without a tokenizer."""

    eos_token_id = 256

    def __len__(self) -> int:
        return 257

    def __call__(self, texts):
        return {"input_ids": [list(t.encode("utf-8")) for t in texts]}


def load_tokenizer(args: argparse.Namespace):
    if args.tokenizer == "bytes":
        return ByteTokenizer()
    name = args.tokenizer or (None if args.random_init else args.model)
    if name is None:
        fail("--random-init needs --tokenizer (a tokenizer directory or hub id, or 'bytes').")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def pack(texts: list[str], tokenizer, seq_len: int, min_rows: int = 1):
    """Tokenize, join the texts with the end-of-text id and cut the stream into rows of seq_len tokens; a stream
    shorter than ``min_rows`` rows (one optimizer step of every process) is repeated to fill them."""
    import torch

    ids: list[int] = []
    for row in tokenizer(texts)["input_ids"]:
        ids.extend(row)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    if not ids:
        fail("the dataset has no tokens.")
    if len(ids) < min_rows * seq_len:
        print(f"train.py: the dataset has {len(ids)} tokens, fewer than one optimizer step takes ({min_rows} x "
              f"{seq_len}); repeating it to fill one step (fine for a smoke run, not for training).", file=sys.stderr)
        ids = ids * -(-min_rows * seq_len // len(ids))
    num_rows = len(ids) // seq_len
    rows = torch.tensor(ids[: num_rows * seq_len], dtype=torch.long).view(num_rows, seq_len)
    return [{"input_ids": r, "attention_mask": torch.ones_like(r), "labels": r.clone()} for r in rows]


def pack_documents(texts: list[str], tokenizer, seq_len: int, min_rows: int = 1):
    """--packing: the texts as documents in rows of seq_len tokens (a document longer than what is left of a row
    continues in the next), each row with its position ids reset at every document and the label of each
    document's first token -100, as TRL's pack_dataset and padding-free collator give them."""
    import torch

    docs = [row + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])
            for row in tokenizer(texts)["input_ids"] if row]
    total = sum(len(d) for d in docs)
    if not total:
        fail("the dataset has no tokens.")
    if total < min_rows * seq_len:
        print(f"train.py: the dataset has {total} tokens, fewer than one optimizer step takes ({min_rows} x "
              f"{seq_len}); repeating it to fill one step (fine for a smoke run, not for training).", file=sys.stderr)
        docs = docs * -(-min_rows * seq_len // total)
    ids: list[int] = []
    positions: list[int] = []
    for doc in docs:
        ids.extend(doc)
        positions.extend(range(len(doc)))
    num_rows = len(ids) // seq_len
    rows = []
    for r in range(num_rows):
        cut = slice(r * seq_len, (r + 1) * seq_len)
        row_ids = torch.tensor(ids[cut], dtype=torch.long)
        pos = torch.tensor(positions[cut], dtype=torch.long)
        pos = pos - pos[0]  # a document carried over from the last row starts again at 0
        labels = row_ids.clone()
        labels[pos == 0] = -100
        rows.append({"input_ids": row_ids, "labels": labels, "position_ids": pos})
    return rows


def flatten_rows(features: list[dict]) -> dict:
    """--packing: the micro-batch's rows concatenated into one [1, micro_batch * seq_len] row, no attention mask
    (TRL's DataCollatorForLanguageModeling with padding_free, transformers' DataCollatorWithFlattening): the
    model builds the documents' mask from the position ids."""
    import torch

    return {key: torch.cat([f[key] for f in features])[None] for key in ("input_ids", "labels", "position_ids")}


'''

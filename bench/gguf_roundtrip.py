"""Does a GGUF written by `layercut export --gguf` reload in plain transformers as the same model?

Loads a Hugging Face checkpoint and the GGUF file(s) exported from it with nothing but transformers,
checks that both tokenizers give the same ids, and prints WikiText-2 perplexity of each on the first
--tokens tokens, in windows that each start with BOS. Usage:
    python bench/gguf_roundtrip.py CHECKPOINT_DIR FILE.gguf [FILE.gguf ...] [--text FILE --tokens 4096 --window 512]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

WIKITEXT = Path("/work/shared/data/text/wikitext2_raw_test.txt")


def perplexity(model: torch.nn.Module, ids: list[int], bos: int, window: int) -> float:
    """exp(mean next-token loss) over windows of `window - 1` text tokens, each after a BOS."""
    total, count = 0.0, 0
    step = window - 1
    for start in range(0, len(ids) - 1, step):
        chunk = ids[start:start + step]
        if len(chunk) < 2:
            break
        inputs = torch.tensor([[bos] + chunk])
        with torch.no_grad():
            logits = model(inputs).logits[0, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits[1:], inputs[0, 2:], reduction="sum")
        total, count = total + float(loss), count + len(chunk) - 1
    return math.exp(total / count)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("ggufs", nargs="+")
    parser.add_argument("--text", default=str(WIKITEXT), help="raw text file (default: %(default)s)")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--window", type=int, default=512)
    args = parser.parse_args()
    text = Path(args.text).read_text(encoding="utf-8")[:200_000]
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:args.tokens]
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32).eval()
    rows = {"checkpoint": {"ppl": perplexity(model, ids, tokenizer.bos_token_id, args.window)}}
    del model
    for gguf in map(Path, args.ggufs):
        reread = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        same_ids = reread(text, add_special_tokens=False)["input_ids"][:args.tokens] == ids
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                     dtype=torch.float32).eval()
        ppl = perplexity(model, ids, reread.bos_token_id, args.window)
        rows[gguf.name] = {"ppl": ppl, "ratio": ppl / rows["checkpoint"]["ppl"], "same_token_ids": same_ids,
                           "bos_same": reread.bos_token_id == tokenizer.bos_token_id}
        del model
    print(json.dumps({"checkpoint": args.checkpoint, "tokens": len(ids), "window": args.window, **rows}, indent=1))


if __name__ == "__main__":
    main()

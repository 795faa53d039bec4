"""Benchmark `slim`: PruneNet vs magnitude FFN pruning of SmolLM2-135M at several ratios.

For the dense model and every (method, ratio) it reports WikiText-2 test perplexity, the mean
zero-shot accuracy over a few tasks (first --limit items each), the parameter count, the policy
learning time, and greedy decode speed with the KV cache as a ratio to the dense model. Decode
speed is paired: the dense model is timed right before each slimmed one (best of --repeats
each), so load from other processes on a shared machine affects both sides alike.

    python bench/slim.py --max-tokens 8192 --limit 100 --threads 1 --json bench/slim.json
    python bench/slim.py --methods magnitude --speed-only --new-tokens 64 --repeats 5 --json bench/slim_speed.json
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from typing import Any

import torch

from layercut.commands.common import seed_everything
from layercut.evaluation.perplexity import text_perplexity
from layercut.evaluation.tasks import Task, load_task
from layercut.evaluation.zeroshot import evaluate_task
from layercut.export import count_parameters
from layercut.loading import LoadedModel, load_model
from layercut.methods.prunenet import PolicyConfig, slim_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PROMPT = "The history of the city begins in the early middle ages, when"


def decode_tokens_per_second(loaded: LoadedModel, new_tokens: int, repeats: int) -> float:
    """Best-of-`repeats` greedy decode speed (new tokens per second) with the KV cache, batch 1."""
    inputs = loaded.tokenizer(PROMPT, return_tensors="pt").to(loaded.device)
    best = 0.0
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            loaded.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                  use_cache=True, pad_token_id=loaded.tokenizer.pad_token_id)
            best = max(best, new_tokens / (time.perf_counter() - start))
    return best


def zero_shot_mean(loaded: LoadedModel, tasks: list[Task]) -> dict[str, float]:
    scores = {task.name: evaluate_task(loaded, task, batch_size=16, progress=False).score for task in tasks}
    if scores:
        scores["mean"] = sum(scores.values()) / len(scores)
    return scores


def measure(loaded: LoadedModel, dense: LoadedModel, tasks: list[Task], args: argparse.Namespace) -> dict[str, Any]:
    dense_speed = decode_tokens_per_second(dense, args.new_tokens, args.repeats)
    speed = dense_speed if loaded is dense else decode_tokens_per_second(loaded, args.new_tokens, args.repeats)
    quality: dict[str, Any] = {}
    if not args.speed_only:
        ppl = text_perplexity(loaded, args.ppl, seq_len=args.seq_len, max_tokens=args.max_tokens, progress=False)
        quality = {"perplexity": round(ppl.perplexity, 3), "ppl_tokens": ppl.predicted_tokens,
                   "zero_shot": {k: round(v, 4) for k, v in zero_shot_mean(loaded, tasks).items()}}
    return {**quality, "params": count_parameters(loaded.model), "ffn_width": int(loaded.model.config.intermediate_size),
            "decode_tok_s": round(speed, 2), "decode_vs_dense": round(speed / dense_speed, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--ratios", default="0.1,0.2,0.3")
    parser.add_argument("--methods", default="prunenet,magnitude")
    parser.add_argument("--episodes", type=int, help="default: the variant's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ppl", default=str(SHARED / "text" / "wikitext2_raw_test.txt"))
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--tasks", default="arc_easy,piqa", help="comma-separated; empty for none")
    parser.add_argument("--tasks-dir", default=str(SHARED / "tasks"))
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 is steadier than 2 on a 2-core machine shared with other jobs")
    parser.add_argument("--speed-only", action="store_true",
                        help="only parameters and decode speed (they depend on the width, not on the method)")
    parser.add_argument("--json", default="bench/slim.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    dense = load_model(args.model, device="cpu")
    names = [] if args.speed_only else [name for name in args.tasks.split(",") if name]
    tasks = [load_task(name, args.tasks_dir, args.limit) for name in names]
    results: dict[str, Any] = {"settings": vars(args), "rows": []}

    def record(row: dict[str, Any]) -> None:
        results["rows"].append(row)
        Path(args.json).write_text(json.dumps(results, indent=2))
        print(json.dumps(row), flush=True)

    record({"method": "dense", "ratio": 0.0, **measure(dense, dense, tasks, args)})
    for method in args.methods.split(","):
        for ratio in (float(r) for r in args.ratios.split(",")):
            loaded = copy.deepcopy(dense)
            step = slim_model(loaded, method, PolicyConfig(ratio=ratio, episodes=args.episodes, seed=args.seed),
                              progress=False)
            record({"method": method, "ratio": ratio, "policy_seconds": step["result"].get("policy_seconds"),
                    **measure(loaded, dense, tasks, args)})
            del loaded


if __name__ == "__main__":
    main()

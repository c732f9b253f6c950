"""`signfeat` subcommands of the trainer package (registered by pipeline/cli.py).

    signfeat train --config configs/recipes/spamo.yaml [key=value ...] [--resume RUN_OR_CHECKPOINT]
    signfeat eval --checkpoint runs/spamo [--split test] [--out DIR] [key=value ...]
    torchrun --nproc_per_node 8 -m trainer.cli train --config ...      # DDP: the same script
"""

from __future__ import annotations

import json


def register(sub) -> None:
    """Add this package's subcommands to ``sub`` (argparse subparsers). Each subparser sets
    ``handler=function(args) -> int`` with set_defaults; SignfeatError from a handler is a one-line error."""
    t = sub.add_parser("train", help="train a sign adapter + LoRA on an LLM from feature shards (a recipe)")
    t.add_argument("--config", required=True, metavar="RECIPE.yaml", help="a recipe, e.g. configs/recipes/spamo.yaml")
    t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. optim.lr=1e-4 data.shards=OUT")
    t.add_argument("--resume", metavar="RUN_OR_CHECKPOINT", help="continue from a checkpoint (or a run folder's latest)")
    t.add_argument("--overwrite", action="store_true", help="start afresh in an out_dir that holds another run (deletes its checkpoints, evaluations and log)")
    t.set_defaults(handler=_train)

    e = sub.add_parser("eval", help="translate a split with a checkpoint; BLEU-1..4 and ROUGE-L")
    e.add_argument("--checkpoint", required=True, metavar="RUN_OR_CHECKPOINT",
                   help="a checkpoint folder, or a run folder (its checkpoints/latest.json)")
    e.add_argument("--split", default="test", help="the split to translate and score (default: test, not the recipe's data.eval_split)")
    e.add_argument("--out", metavar="DIR", help="where predictions.jsonl and scores.json go (default: CHECKPOINT/eval-SPLIT)")
    e.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. eval.num_beams=1 eval.do_sample=true data.shards=OUT")
    e.set_defaults(handler=_eval)


def _train(args) -> int:
    from trainer.loop import train
    from trainer.recipe import load_recipe

    recipe = load_recipe(args.config, args.overrides)
    if args.resume and not any(o.partition("=")[0].strip() == "data.shards" for o in args.overrides):
        from trainer.loop import use_recorded_shards

        use_recorded_shards(recipe, args.resume)
    summary = train(recipe, resume=args.resume, overwrite=args.overwrite)
    if "checkpoint" in summary:  # rank 0
        print(f"trained {recipe.name}: {summary['step']} steps, checkpoint {summary['checkpoint']}")
        if "eval" in summary:
            print(format_scores(summary["eval"]))
    return 0


def _eval(args) -> int:
    from trainer.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, args.split, args.overrides, args.out)
    print(format_scores(result["scores"]))
    print(f"predictions: {result['out_dir']}/predictions.jsonl  scores: {result['out_dir']}/scores.json")
    return 0


def format_scores(scores: dict) -> str:
    if "bleu1" not in scores:  # no sample of the split has a text
        return f"{scores.get('split', 'eval')}: {scores['translated']} samples translated, none scored (no sample has a text)"
    bleu = "  ".join(f"BLEU-{n} {scores[f'bleu{n}']:.2f}" for n in range(1, 5))
    lines = [f"{scores.get('split', 'eval')} ({scores['samples']} samples): {bleu}",
             f"ROUGE-L {scores['rougeL']:.2f} (rouge-score tokenizer)  ROUGE-L {scores['rougeL_unicode']:.2f} (Unicode tokenizer)"
             + (f"  ROUGE-L {scores['rougeL_coco']:.2f} (COCO / signjoey: beta 1.2)" if "rougeL_coco" in scores else ""),
             f"sacrebleu {scores['bleu_signature']}  lowercase={scores['lowercase']}  decoding={json.dumps(scores.get('decoding', {}))}"]
    return "\n".join(lines)


if __name__ == "__main__":  # torchrun -m trainer.cli train ...
    from pipeline.cli import entry

    entry()

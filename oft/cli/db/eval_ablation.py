"""Evaluate trained DreamBooth runs: DINO, CLIP-I, CLIP-T and LPIPS (paper Table 1), per subject and overall.

    python oft-db/eval_ablation.py                                   # prompt 4 of all 30 subjects, step 1000
    python oft-db/eval_ablation.py --prompts all --output_root outputs/dreambooth   # the whole benchmark
    python oft-db/eval_ablation.py --prompts 0,4 --subjects dog,cat --step 400

The reference's ablation evaluated one prompt index per subject (``-4``) at epoch 4 (step 1000); that is the
default here; ``eval_benchmark.py`` runs all 25. Images: the first ``--num_images`` sorted validation images of
the step; all real photos of the subject. LPIPS is the paper's diversity among generated images; the reference's
real-vs-generated LPIPS is reported alongside, labelled. Overall values are pooled over all pairs of all runs (the
reference's number) and, on the next row, the mean of run means. The "real images" row (Table 1's first) scores
each subject's photos against each other, from the dataset folder (``--no-real_images`` skips it). Writes
``results.json`` and ``results.md``.
Models come from local folders or the Hugging Face cache (``--dino``, ``--clip``).
"""

from __future__ import annotations

import argparse

import torch

from oft.cli.db.common import add_benchmark_folders
from oft.cli.run import run_main
from oft.common.paths import data_root
from oft.db.evaluate import evaluate_runs, prompt_indices, to_markdown, write_results
from oft.metrics.subject import CLIP_MODEL, DINO_MODEL, LPIPS_NET, load_subject_metrics
from oft.specs.benchmark import PROMPTS_PER_SUBJECT, read_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_benchmark_folders(p, "dreambooth/", runs="folder of the run folders {subject}-{prompt}")
    p.add_argument(
        "--prompts", default="4", help="prompt indices to evaluate: 'all' or e.g. 4 or 0,4,7 (default: 4)"
    )
    p.add_argument("--subjects", default="all", help="'all' or comma-separated subject names")
    p.add_argument("--step", type=int, default=1000, help="training step whose validation images are scored")
    p.add_argument(
        "--num_images", type=int, default=4, help="generated images per run (first N sorted names)"
    )
    p.add_argument(
        "--clip_t_prompt",
        choices=("plain", "validation"),
        default="plain",
        help="CLIP-T text: the prompt without the unique token (plain, default) or with it (validation)",
    )
    p.add_argument(
        "--real_images",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also score the subjects' photos against each other: the paper's 'Real images' row (default: on)",
    )
    p.add_argument("--results_dir", default=None, help="where results.json/.md go (default: OUTPUT_ROOT)")
    p.add_argument("--dino", default=DINO_MODEL, help="DINO ViT-S/16: hub name (cached) or local folder")
    p.add_argument("--clip", default=CLIP_MODEL, help="CLIP ViT-L/14: hub name (cached) or local folder")
    p.add_argument(
        "--lpips_net", default=LPIPS_NET, choices=("vgg", "alex", "squeeze"), help="LPIPS backbone"
    )
    p.add_argument("--lpips_size", type=int, default=512, help="images are resized to this square for LPIPS")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    return p.parse_args(argv)


def selected_runs(args: argparse.Namespace, table) -> list[int]:
    names = [s for s, _ in table.subjects]
    wanted = names if args.subjects == "all" else args.subjects.split(",")
    unknown = [s for s in wanted if s not in names]
    if unknown:
        raise ValueError(f"unknown subject(s) {unknown}: choose among {names}")
    return [names.index(s) * PROMPTS_PER_SUBJECT + p for s in wanted for p in prompt_indices(args.prompts)]


def main(args: argparse.Namespace, metrics=None) -> dict:
    dataset = data_root(args.data_root) / "dreambooth"
    table = read_table(dataset)
    indices = selected_runs(args, table)
    if metrics is None:
        metrics = load_subject_metrics(args.dino, args.clip, args.lpips_net, args.device, args.lpips_size)
    results = evaluate_runs(
        metrics,
        indices,
        args.output_root,
        dataset,
        step=args.step,
        num_images=args.num_images,
        clip_t_prompt=args.clip_t_prompt,
        table=table,
        real_images=args.real_images,
    )
    if not results["runs"]:
        raise FileNotFoundError(
            f"no run under {args.output_root} has {args.num_images} validation images at step {args.step}: "
            "train first (oft-db/train_dreambooth_oft.sh) or pick --step"
        )
    json_path, md_path = write_results(
        results,
        args.results_dir or args.output_root,
        f"results-step{args.step}-prompts{args.prompts.replace(',', '_')}"
        + ("" if args.clip_t_prompt == "plain" else f"-clipt_{args.clip_t_prompt}"),
    )
    print(to_markdown(results))
    print(f"wrote {json_path} and {md_path}")
    return results


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()

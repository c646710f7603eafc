"""Sample the validation set with a trained control model, for evaluation (paper §3): DDIM 50 steps, CFG 9, the
control kept in the unconditional branch, 6 samples per condition, each seeded by (item, sample) so the images
do not depend on how the work is split (byte for byte at equal --threads on the same device and software:
other thread counts change the last bits of some pixels). Finished items are skipped, so a killed job just
runs again. An item whose files cannot be read stops the run before sampling, naming its index and file
(--skip-unreadable: record it in <out>/excluded/ for the evaluators and sample the others).

    python oft-control/test_oft_parallel.py --img_ID=1 --eps=1e-3 --r=4 --coft      # chunk 1 (a job-array task)
    python oft-control/test_oft_parallel.py --eps=1e-3 --r=4 --coft                 # all chunks, one worker per GPU
    python oft-control/test_oft_parallel.py --eps=1e-3 --r=4 --coft --workers 2 --threads 1   # CPU workers

Writes <run folder>/generated/{source/image_i.png, hints/hint_i.png, results/result_i_n.png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oft.control.checkpoint import FINAL_MODEL, check_flags_match
from oft.control.cli import add_model_flags, check_run_flags, dataset, run_dir
from oft.control.defaults import add_flags, flag_names
from oft.control.inference import SKIP_FLAG, SamplingJob, chunk, local_devices, run_parallel
from oft.data.files import create_output_folder
from oft.entry_points import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_flags(p)
    add_flags(p, "steps", "guidance", "eta", "num_samples", "batch")
    p.add_argument(
        "--img_ID",
        "--img-id",
        dest="img_ID",
        type=int,
        default=None,
        help="process only chunk N (items N*batch .. N*batch+batch-1); default: all chunks locally",
    )
    p.add_argument(
        *flag_names("model"),
        dest="model",
        default=None,
        help=f"trained control model [default: <run folder>/{FINAL_MODEL}; "
        "use control_norm.safetensors for the magnitude-fitted one]",
    )
    p.add_argument(
        *flag_names("out_dir"),
        dest="out_dir",
        default=None,
        help="where source/ hints/ results/ go [default: <run folder>/generated]",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="local mode: worker processes [default: one per visible GPU, else 1]",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per CPU worker [default: cores / workers]; outputs are byte-identical across runs and "
        "chunkings only at the same value",
    )
    p.add_argument(
        SKIP_FLAG,
        dest="skip_unreadable",
        action="store_true",
        help="record validation items whose files are missing or undecodable in <out>/excluded/item_<i>.json "
        "(the evaluators report them) and sample the others; default: stop, naming the item and file",
    )
    p.add_argument(
        "--full",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the full validation list prompt_val_blip_full.json, as the paper evaluated [default: on]",
    )
    args = check_run_flags(p, p.parse_args(argv))
    if args.batch < 1 or args.num_samples < 1 or args.steps < 1:
        p.error("--batch, --num_samples and --steps must be positive")
    return args


def main(args: argparse.Namespace) -> Path:
    out = run_dir(args)
    model = args.model or str(out / FINAL_MODEL)
    check_flags_match(model, r=args.r, eps=args.eps, coft=args.coft, block_share=args.block_share)
    out_dir = Path(args.out_dir or out / "generated")
    create_output_folder(out_dir, f"--out_dir {out_dir}" if args.out_dir else f"--output_dir {out}")
    data = dataset(args, "val", full=args.full)
    job = SamplingJob(
        model,
        args.base,
        out_dir,
        args.num_samples,
        args.steps,
        args.guidance,
        args.eta,
        args.seed,
        skip_unreadable=args.skip_unreadable,
    )
    if args.img_ID is not None:
        indices, devices = list(chunk(args.img_ID, args.batch, len(data))), local_devices(1)
    else:
        indices, devices = list(range(len(data))), local_devices(args.workers)
    run_parallel(job, data, indices, args.batch, devices, args.threads)
    print(f"{len(indices)} items in {job.out_dir}")
    return job.out_dir


if __name__ == "__main__":
    run_main(main, parse_args)

"""Download, verify, unpack and check one dataset or checkpoint (the helper behind scripts/*.sh).

    python scripts/setup_data.py ade20k [--data-root /shared/data]
    python scripts/setup_data.py sd15 [--models-root /shared/models] [--url MIRROR] [--token HF_TOKEN]

Resumes interrupted downloads, verifies size and checksum, places the result only when its layout checks
out, and does nothing when it is already in place. Exit status 0 on success, 1 with one line on failure.
Sources with a published SHA-256 (pinned in oft/setup/sources.py; the listing of --help marks them) are
checked against it; the others are trusted on first use: the first download's size and SHA-256 are recorded in
<root>/.oft-manifest.json, and later downloads into that root must match them.
"""

from __future__ import annotations

import argparse
import os
import sys

from oft.cli.flags import add_data_root
from oft.common.paths import MODELS_ROOT_ENV, data_root, models_root
from oft.setup.download import DOWNLOADS, MANIFEST, run_job, setup
from oft.setup.sources import SOURCES

HF_HOSTS = ("huggingface.co", "hf.co")  # where $HF_TOKEN may be sent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``--help`` after a source name describes that source."""
    argv = sys.argv[1:] if argv is None else argv
    first = next((a for a in argv if not a.startswith("-")), None)
    source = SOURCES.get(first)
    listing = "\n".join(
        f"  {s.name:17s} {s.description} (size {s.size}; {s.verification})" for s in SOURCES.values()
    )
    if source:
        where = "$OFT_MODELS_ROOT or ./models" if source.models else "$OFT_DATA_ROOT or ./data"
        description = (
            f"Set up {source.name}: {source.description}.\nDownloads {source.filename} "
            f"({source.size}) from {source.urls[0]} and places {source.target} under the "
            f"{'models' if source.models else 'data'} root ({where}).\nVerified by: {source.verification}."
        )
    else:
        description = "Set up a dataset or checkpoint. Sources:\n" + listing
    parser = argparse.ArgumentParser(
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"Downloads resume from <root>/{DOWNLOADS}/<file>.part. Pinned sources are checked against their "
        f"published SHA-256; the others are trusted on first use: size and SHA-256 are recorded in <root>/{MANIFEST} "
        "and later downloads must match. A file saved by hand as <root>/.downloads/<file> is verified and "
        "unpacked instead of downloaded.",
    )
    parser.add_argument("source", choices=sorted(SOURCES), help="what to set up")
    add_data_root(parser)
    parser.add_argument("--models-root", help=f"checkpoints folder (default ${MODELS_ROOT_ENV} or ./models)")
    parser.add_argument(
        "--url", action="append", help="download from this URL instead (a mirror); repeat to try several"
    )
    parser.add_argument(
        "--token",
        help="bearer token sent to the download URLs, e.g. for gated files (default: $HF_TOKEN, sent to "
        "huggingface.co only)",
    )
    parser.add_argument(
        "--method",
        choices=("auto", "git", "zip"),
        default="auto",
        help="sources with a git repository (dreambooth): clone it, or download the archive "
        "(auto: clone if git is installed, else the archive)",
    )
    parser.add_argument(
        "--keep-archive", action="store_true", help="keep the downloaded archive after unpacking"
    )
    parser.add_argument(
        "--retries", type=int, default=5, help="retries per URL on network failures (each resumes)"
    )
    parser.add_argument(
        "--retry-wait", type=float, default=2.0, help="seconds before the first retry (doubles each time)"
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds without data before a connection is retried"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, batch jobs)")
    args = parser.parse_args(argv)
    if args.retries < 0 or args.timeout <= 0:
        parser.error("--retries must be >= 0 and --timeout > 0")
    return args


def main(args: argparse.Namespace) -> int:
    """Run the setup; print one summary line, or one error line, and return the exit status."""
    source = SOURCES[args.source]
    root = models_root(args.models_root) if source.models else data_root(args.data_root)
    return run_job(
        lambda: setup(
            source,
            root,
            urls=tuple(args.url) if args.url else None,
            # An explicit --token goes to any URL; $HF_TOKEN only to Hugging Face hosts.
            token=args.token or os.environ.get("HF_TOKEN"),
            token_hosts=None if args.token else HF_HOSTS,
            method=args.method,
            keep_archive=args.keep_archive,
            retries=args.retries,
            retry_wait=args.retry_wait,
            timeout=args.timeout,
            progress=not args.no_progress,
        )
    )


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    sys.exit(main(parse_args()))


if __name__ == "__main__":
    cli()

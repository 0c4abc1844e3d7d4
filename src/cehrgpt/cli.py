"""``cehrgpt``: the project's umbrella command. ``cehrgpt pipeline compile | submit | compare``.

Examples::

    cehrgpt pipeline compile
    cehrgpt pipeline submit pipelines/compiled/end_to_end.yaml --host http://localhost:8080 \\
        --experiment cehrgpt --param omop_source=postgresql://reader@db/cdm --param num_shards=4
    cehrgpt pipeline compare local_outputs/kfp/cehrgpt-end-to-end-2026-11-27-08-00-00-000000 s3://mlpipeline/v2/... \\
        --format csv
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cehrgpt.exits import CommandParser, run_command
from cehrgpt.pipeline.compare import FORMATS, CompareError, format_comparison, load_runs
from cehrgpt.pipeline.compile import COMPILED_FOLDER, PIPELINES, CompileError, compile_pipelines
from cehrgpt.pipeline.stores import StoreError
from cehrgpt.pipeline.submit import SubmitError, submit


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="cehrgpt", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    pipeline = commands.add_parser("pipeline", help="compile, submit and compare Kubeflow pipelines")
    actions = pipeline.add_subparsers(dest="action", required=True)

    compile_ = actions.add_parser("compile", help="compile pipelines/*.py to pipelines/compiled/*.yaml")
    compile_.add_argument("--output_folder", type=Path, default=COMPILED_FOLDER)
    compile_.add_argument(
        "--repo_root", type=Path, default=Path("."), help="folder holding pipelines/ and components/"
    )
    compile_.add_argument(
        "--pipeline", action="append", choices=list(PIPELINES), help="only these (repeatable)"
    )

    submit_ = actions.add_parser("submit", help="run (or upload) a compiled pipeline on a Kubeflow host")
    submit_.add_argument("package", type=Path, help="a compiled pipeline YAML")
    submit_.add_argument(
        "--host", required=True, help="Kubeflow Pipelines API endpoint, e.g. http://localhost:8080"
    )
    submit_.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="a pipeline parameter (repeatable)"
    )
    submit_.add_argument("--experiment", default="cehrgpt")
    submit_.add_argument("--run_name")
    submit_.add_argument("--namespace", help="Kubeflow profile namespace")
    submit_.add_argument(
        "--upload_only",
        action="store_true",
        help="upload the pipeline (or a new version) instead of running it",
    )
    submit_.add_argument(
        "--pipeline_name", help="name of the uploaded pipeline (default: the pipeline's own)"
    )
    submit_.add_argument(
        "--version_name",
        help="with --upload_only: name of the new version (default: the pipeline's name and a hash of the YAML)",
    )
    submit_.add_argument(
        "--token_env",
        default="KFP_TOKEN",
        help="environment variable holding a bearer token for the host, if set (default: %(default)s; "
        "a token is never a command-line value)",
    )

    compare = actions.add_parser("compare", help="print the metrics of several runs side by side")
    compare.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="a kfp.local run folder, gs://, s3:// or minio:// run location, or a run id with --host",
    )
    compare.add_argument("--format", choices=FORMATS, default="table")
    compare.add_argument("--host", help="Kubeflow Pipelines API endpoint, to read runs by id")
    compare.add_argument(
        "--pipeline_root", help="pipeline root of runs read by id, when the run does not say"
    )
    compare.add_argument("--s3_endpoint_url", help="S3-compatible endpoint (MinIO)")
    compare.add_argument("--gcs_endpoint_url", help="another GCS JSON API endpoint (an emulator)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)

    def body() -> int:
        if args.action == "compile":
            for path in compile_pipelines(args.output_folder, args.repo_root, args.pipeline):
                print(path)
        elif args.action == "submit":
            result = submit(
                args.package,
                args.host,
                args.param,
                experiment=args.experiment,
                run_name=args.run_name,
                namespace=args.namespace,
                upload_only=args.upload_only,
                pipeline_name=args.pipeline_name,
                version_name=args.version_name,
                token=os.environ.get(args.token_env) or None,
            )
            print(" ".join(f"{k}={v}" for k, v in result.items()))
        else:
            runs = load_runs(
                args.runs,
                host=args.host,
                pipeline_root=args.pipeline_root,
                s3_endpoint_url=args.s3_endpoint_url,
                gcs_endpoint_url=args.gcs_endpoint_url,
            )
            sys.stdout.write(format_comparison(runs, args.format))
        return 0

    return run_command(body, CompileError, SubmitError, CompareError, StoreError)


if __name__ == "__main__":
    raise SystemExit(main())

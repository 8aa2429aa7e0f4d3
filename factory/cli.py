"""The `factory` command: check specs, print the spec schema, inspect and steer the registry.

    factory spec check [PATH ...]        exit 1 if any spec has an error, not for warnings (default: specs/)
    factory spec schema                  JSON Schema for editors (yaml-language-server)
    factory registry ls [NAME]           versions, formats and aliases
    factory registry show REF            one version's manifest summary (REF: name, name@N, name@alias)
    factory registry promote REF ALIAS   point an alias (e.g. prod) at a version
    factory registry rollback NAME [--alias A]
    factory registry verify [REF ...]    re-hash files against manifests (default: every version)
    factory keys create NAME --scope inference|fine-tune|admin [--rpm N] [--tpm N]
                                         a server API key: its secret is printed once, then only its hash is kept
    factory keys ls | revoke NAME        list keys (no secrets); revoke one (every worker refuses it at once)
    factory build NAME_OR_PATH ... | --all
    factory finetune NAME [--train F ...] fine-tune as a spec's fine_tune: says, or any registry model with --train
    factory deploy                       register prefect.yaml's deployments and one per scheduled spec
    factory worker                       start a Prefect worker on the factory's work pool
    factory serve [PATH] [--config server.yaml] [--port 8080 ...]
                                         the OpenAI-compatible server (gunicorn), hot-reloading the registry;
                                         with PATH (a .gguf file or model folder), build it and serve it as default;
                                         --print-config: the effective settings and where each came from;
                                         --print-schema: server.yaml's JSON Schema
    factory up                           Prefect server (unless PREFECT_API_URL is set), build the demo, serve

Commands that run flows import them lazily, so `factory spec` and `factory registry` stay light and this kernel
module depends on the other rooms only at the moment it runs them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from factory.keys import SCOPES, KeyStore, KeyStoreError
from factory.registry import Registry, RegistryError
from factory.services import ServeOptions, apply_prefect_environment, serve, with_openblas
from factory.server_config import ServerConfigError
from factory.server_config import json_schema as server_config_schema
from factory.settings import Settings
from factory.spec import FINE_TUNE_METHODS, SpecError, discover_specs, json_schema, load_spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) in (run_build, run_finetune, run_up, run_worker):
        reexec_with_openblas(sys.argv[1:] if argv is None else list(argv))
    apply_prefect_environment(Settings.from_env())  # before anything imports Prefect
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def reexec_with_openblas(argv: list[str]) -> None:
    """Commands that run MLX restart themselves once with OpenBLAS preloaded (a preload must precede the process)."""
    env = with_openblas(dict(os.environ))
    if env.get("LD_PRELOAD") != os.environ.get("LD_PRELOAD"):
        os.execve(sys.executable, [sys.executable, "-m", "factory.cli", *argv], env)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="factory", description="llm-factory: one YAML file per model.")
    subcommands = parser.add_subparsers(metavar="COMMAND")

    spec = subcommands.add_parser("spec", help="check specs, print the spec schema").add_subparsers(metavar="ACTION")
    check = spec.add_parser("check", help="validate spec files (default: specs/)")
    check.add_argument("paths", nargs="*", default=["specs"])
    check.set_defaults(run=spec_check)
    spec.add_parser("schema", help="print the spec's JSON Schema").set_defaults(run=spec_schema)

    registry = subcommands.add_parser("registry", help="inspect and steer the registry")
    registry.add_argument("--registry", help="registry root (default: $FACTORY_ROOT/registry)")
    actions = registry.add_subparsers(metavar="ACTION")
    ls = actions.add_parser("ls", help="list versions")
    ls.add_argument("name", nargs="?")
    ls.set_defaults(run=registry_ls)
    show = actions.add_parser("show", help="show one version")
    show.add_argument("ref")
    show.set_defaults(run=registry_show)
    promote = actions.add_parser("promote", help="point an alias at a version")
    promote.add_argument("ref")
    promote.add_argument("alias")
    promote.set_defaults(run=registry_promote)
    rollback = actions.add_parser("rollback", help="move an alias back to its previous version")
    rollback.add_argument("name")
    rollback.add_argument("--alias", default="prod")
    rollback.set_defaults(run=registry_rollback)
    verify = actions.add_parser("verify", help="re-hash files against their manifests")
    verify.add_argument("refs", nargs="*")
    verify.set_defaults(run=registry_verify)

    keys = subcommands.add_parser("keys", help="API keys for the server").add_subparsers(metavar="ACTION")
    create = keys.add_parser("create", help="make a key and print its secret (once)")
    create.add_argument("name")
    create.add_argument("--scope", required=True, choices=SCOPES)
    create.add_argument("--rpm", type=int, help="requests per minute (default: unlimited)")
    create.add_argument("--tpm", type=int, help="prompt + completion tokens per minute (default: unlimited)")
    create.set_defaults(run=keys_create)
    keys.add_parser("ls", help="list keys (name, prefix, scope, limits; never secrets)").set_defaults(run=keys_ls)
    revoke = keys.add_parser("revoke", help="revoke a key; the server refuses it from the next request on")
    revoke.add_argument("name")
    revoke.set_defaults(run=keys_revoke)

    build = subcommands.add_parser("build", help="build specs into validated, published versions")
    build.add_argument("specs", nargs="*", metavar="NAME_OR_PATH")
    build.add_argument("--all", action="store_true", help="every spec in --specs-dir that changed")
    build.add_argument("--specs-dir", default="specs")
    build.set_defaults(run=run_build)
    tune = subcommands.add_parser("finetune", help="fine-tune a model (a spec's fine_tune:, or --train FILE)")
    tune.add_argument("name", metavar="SPEC_OR_MODEL")
    tune.add_argument("--train", help="JSONL training file (then NAME is any registry model ref)")
    tune.add_argument("--valid", help="JSONL validation file (default: hold out 10 %% of --train)")
    tune.add_argument("--method", choices=FINE_TUNE_METHODS)
    tune.add_argument("--iters", type=int)
    tune.add_argument("--learning-rate", type=float)
    tune.add_argument("--suffix")
    tune.add_argument("--specs-dir", default="specs")
    tune.set_defaults(run=run_finetune)
    subcommands.add_parser("deploy", help="register the Prefect deployments").set_defaults(run=run_deploy)
    subcommands.add_parser("worker", help="start a Prefect worker").set_defaults(run=run_worker)
    serve = subcommands.add_parser("serve", help="serve the registry over the OpenAI API (or one model file: PATH)")
    serve.add_argument("model", nargs="?", metavar="PATH",
                       help="a .gguf file or a Hugging Face-layout folder: build it (validated, published), serve it "
                            "as `default`")
    serve.add_argument("--name", help="the model's name for PATH (default: from the file name)")
    serve.add_argument("--context-length", type=int, help="for PATH: tokens of context per request")
    serve.add_argument("--max-tokens", type=int, help="for PATH: default completion length")
    serve.add_argument("--temperature", type=float, help="for PATH: default sampling temperature")
    serve.add_argument("--top-p", type=float, help="for PATH: default nucleus sampling")
    serve.add_argument("--draft", help="for PATH: a registry model with the same vocabulary to draft for it "
                                                       "(speculative decoding on llama.cpp)")
    add_serve_options(serve)
    serve.set_defaults(run=run_serve)
    up = subcommands.add_parser("up", help="Prefect server, build the demo specs, serve them")
    add_serve_options(up)
    up.add_argument("--spec", action="append", help="a spec to build and serve (repeatable; the first is `default`); "
                                                    "default: the demo's chat and embedding models")
    up.set_defaults(run=run_up)
    return parser


# ---------------------------------------------------------------- spec


def spec_check(args: argparse.Namespace) -> int:
    files = discover_specs(args.paths)
    if not files:
        print(f"no spec files found in {' '.join(args.paths)}", file=sys.stderr)
        return 1
    failed = warned = 0
    for path in files:
        try:
            loaded = load_spec(path)
        except SpecError as exc:
            failed += 1
            print("\n".join(exc.lines()))
        else:
            warned += len(loaded.warnings)
            for warning in loaded.warnings:
                print(warning)
            print(f"{path}: ok ({loaded.spec.name}, {len(loaded.spec.formats)} formats)")
    warnings = f", {warned} warning{'s' * (warned != 1)}" if warned else ""
    print(f"{len(files) - failed} ok, {failed} with errors{warnings}", file=sys.stderr)
    return 1 if failed else 0  # a warning alone does not fail the check


def spec_schema(args: argparse.Namespace) -> int:
    print(json.dumps(json_schema(), indent=2))
    return 0


# ---------------------------------------------------------------- registry


def open_registry(args: argparse.Namespace) -> Registry:
    return Registry(args.registry or Settings.from_env().registry)


def registry_ls(args: argparse.Namespace) -> int:
    versions = open_registry(args).list(args.name)
    rows = [[v.ref, _when(v.created), ", ".join(v.formats), ", ".join(v.aliases)] for v in versions]
    print_table(["VERSION", "CREATED", "FORMATS", "ALIASES"], rows)
    return 0


def registry_show(args: argparse.Namespace) -> int:
    version = open_registry(args).resolve(args.ref)
    manifest = version.manifest()
    print(f"{version.ref}  ({', '.join(version.aliases) or 'no aliases'})")
    print(f"  path             {version.path}")
    print(f"  created          {_when(version.created)}")
    for key in ("spec_hash", "source_revision", "flow_run_id"):
        print(f"  {key:<16} {manifest.get(key) or '-'}")
    if manifest.get("lineage"):
        print(f"  lineage          {json.dumps(manifest['lineage'])}")
    for key, artifact in manifest["artifacts"].items():
        size = sum(entry["size"] for entry in artifact["files"].values())
        print(f"  {key:<16} {len(artifact['files'])} files, {_bytes(size)}")
    for report in (manifest.get("report") or {}).get("formats", []):
        print(f"  validation of {report['format']}: {'passed' if report['passed'] else 'FAILED'}")
        for result in report["checks"]:
            print(f"    {result['name']:<28} {_measured(result)}")
    return 0


def _measured(result: dict) -> str:
    """`ok  22.555 (max 30)`: the verdict, what was measured, and the gate's threshold when it has one."""
    value = result.get("value")
    shown = "" if value is None else (" ".join(value.split())[:60] if isinstance(value, str) else f"{value:g}")
    if result.get("threshold") is not None:
        shown += f" ({result['bound']} {result['threshold']:g})"
    detail = f"  {result['detail'][:80]}" if result.get("detail") and not result["passed"] else ""
    return f"{'ok  ' if result['passed'] else 'FAIL'}  {shown}{detail}".rstrip()


def registry_promote(args: argparse.Namespace) -> int:
    version = open_registry(args).promote(args.ref, args.alias)
    print(f"{version.name}@{args.alias} -> {version.ref}")
    return 0


def registry_rollback(args: argparse.Namespace) -> int:
    version = open_registry(args).rollback(args.name, args.alias)
    print(f"{version.name}@{args.alias} -> {version.ref}")
    return 0


def registry_verify(args: argparse.Namespace) -> int:
    registry = open_registry(args)
    refs = args.refs or [v.ref for v in registry.list()]
    failed = 0
    for ref in refs:
        problems = registry.verify(ref)
        failed += bool(problems)
        print("\n".join(problems) if problems else f"{ref}: ok")
    return 1 if failed else 0


# ---------------------------------------------------------------- keys


def keys_create(args: argparse.Namespace) -> int:
    try:
        secret = KeyStore(Settings.from_env().root).create(args.name, args.scope, rpm=args.rpm, tpm=args.tpm)
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    limits = ", ".join(f"{value} {unit}" for value, unit in ((args.rpm, "rpm"), (args.tpm, "tpm")) if value)
    print(f"key {args.name} ({args.scope}{', ' + limits if limits else ''}); its secret, shown only now:",
          file=sys.stderr)
    print(secret)  # alone on stdout, so `KEY=$(factory keys create ...)` captures just the secret
    return 0


def keys_ls(args: argparse.Namespace) -> int:
    rows = [[key.name, key.prefix + "…", key.scope, str(key.rpm or "-"), str(key.tpm or "-"), _when(key.created),
             f"revoked {_when(key.revoked)}" if key.revoked else "active"]
            for key in KeyStore(Settings.from_env().root).list()]
    print_table(["NAME", "PREFIX", "SCOPE", "RPM", "TPM", "CREATED", "STATUS"], rows)
    return 0


def keys_revoke(args: argparse.Namespace) -> int:
    try:
        KeyStore(Settings.from_env().root).revoke(args.name)
    except KeyStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"revoked {args.name}")
    return 0


# ---------------------------------------------------------------- pipeline


def run_build(args: argparse.Namespace) -> int:
    if not args.specs and not args.all:
        print("give spec names or paths, or --all", file=sys.stderr)
        return 2
    from flows import commands

    rows = commands.build_all_rows(args.specs_dir) if args.all else [
        commands.build_one_row(spec, args.specs_dir) for spec in args.specs]
    print()
    print_table(["SPEC", "FORMATS", "GATES", "VERSION", "STATUS"],
                [[r["spec"], r["formats"], r["gates"], r["version"], r["status"]] for r in rows])
    for row in rows:
        if row.get("detail"):
            print(f"\n{row['spec']}: {row['detail']}", file=sys.stderr)
    return 1 if any(r["status"] in ("failed", "invalid") for r in rows) else 0


def run_finetune(args: argparse.Namespace) -> int:
    from flows import commands

    hyperparameters = {key: value for key, value in (("method", args.method), ("iters", args.iters),
                                                     ("learning_rate", args.learning_rate)) if value is not None}
    return commands.finetune(args.name, args.specs_dir, args.train, args.valid, hyperparameters, args.suffix)


def run_deploy(args: argparse.Namespace) -> int:
    from flows import commands

    return commands.deploy()


def run_worker(args: argparse.Namespace) -> int:
    from flows import commands

    return commands.worker()


# Flags that override the server config: argparse destination -> the config field it sets.
SERVE_FLAGS = {"host": "host", "port": "port", "workers": "workers", "registry": "registry",
               "memory_mb": "models.memory_mb", "queue_size": "models.queue_size", "default_model": "models.default"}


def add_serve_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, metavar="SERVER_YAML",
                        help="the server config (default: $FACTORY_SERVE_CONFIG, else built-in defaults)")
    parser.add_argument("--print-config", action="store_true", help="show the effective settings and their origin")
    parser.add_argument("--print-schema", action="store_true", help="print server.yaml's JSON Schema")
    parser.add_argument("--host", help="default 127.0.0.1")
    parser.add_argument("--port", type=int, help="default 8080")
    parser.add_argument("--workers", type=int, help="default 1; each worker loads its own copy of the models")
    parser.add_argument("--registry", help="registry root (default: $FACTORY_ROOT/registry)")
    parser.add_argument("--memory-mb", type=float, help="budget for loaded models; LRU unloads beyond it")
    parser.add_argument("--queue-size", type=int, help="waiting requests per model before 429")
    parser.add_argument("--default-model", help="the model the id `default` names (over specs' aliases)")


def serve_options(args: argparse.Namespace) -> ServeOptions:
    flags = {field: getattr(args, dest) for dest, field in SERVE_FLAGS.items() if getattr(args, dest) is not None}
    if "registry" in flags:
        flags["registry"] = str(Path(flags["registry"]).absolute())
    return ServeOptions(config_file=args.config, flags=flags)


def checked_serve_options(args: argparse.Namespace) -> ServeOptions | int:
    """The options, or the exit status after --print-config / --print-schema or a config error."""
    if args.print_schema:
        print(json.dumps(server_config_schema(), indent=2))
        return 0
    options = serve_options(args)
    try:
        effective = options.effective()
    except ServerConfigError as exc:
        print("\n".join(exc.lines()), file=sys.stderr)
        return 2
    if args.print_config:
        print_table(["SETTING", "VALUE", "FROM"], [list(row) for row in effective.rows()])
        return 0
    return options


def run_serve(args: argparse.Namespace) -> int:
    options = checked_serve_options(args)
    if isinstance(options, int):
        return options
    if args.model is None:
        return serve(options)
    from flows import commands

    defaults = {key: value for key, value in (("max_tokens", args.max_tokens), ("temperature", args.temperature),
                                              ("top_p", args.top_p)) if value is not None}
    settings = {"context_length": args.context_length, "defaults": defaults or None, "draft": args.draft}
    return commands.serve_model_file(Path(args.model), args.name, {k: v for k, v in settings.items() if v},
                                     options)


def run_up(args: argparse.Namespace) -> int:
    options = checked_serve_options(args)
    if isinstance(options, int):
        return options
    from flows import commands

    return commands.up(args.spec or list(commands.DEMO_SPECS), options)


# ---------------------------------------------------------------- output


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip())


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _bytes(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size} B"


if __name__ == "__main__":
    sys.exit(main())

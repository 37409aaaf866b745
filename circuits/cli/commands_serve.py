"""``circuits serve`` (the HTTP service) and ``circuits runs list|show`` (its run store, read without the server)."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Optional

import typer

from circuits.cli.app import app
from circuits.errors import CircuitsError

STORE_HELP = "The store: a folder with circuits.db and the run folders (default: $CIRCUITS_STORE, else ~/.local/share/circuits/store)."

runs_app = typer.Typer(help="The runs of a `circuits serve` store (read without the server).", no_args_is_help=True)
app.add_typer(runs_app, name="runs")


def _store_path(store: Optional[Path]) -> Path:
    from circuits.service.store import default_store

    return store if store is not None else default_store()


def _port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise CircuitsError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pass another --port or --host") from None


@app.command("serve")
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; any but 127.0.0.1/localhost needs --token."),
    port: int = typer.Option(8765, "--port", help="Port to listen on."),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    workers: int = typer.Option(1, "--workers", help="Jobs run at once (worker processes, or Ray tasks in flight)."),
    executor: str = typer.Option("local", "--executor", help="Where jobs run: local (worker processes) or ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join (ray executor) (default: start a local one)."),
    token: Optional[str] = typer.Option(None, "--token", envvar="CIRCUITS_TOKEN",
                                        help="Bearer token every request must send (also $CIRCUITS_TOKEN)."),
    models_dir: Optional[Path] = typer.Option(None, "--models-dir", help="Folder whose checkpoints and .gguf files jobs may name by relative path."),
    device: Optional[str] = typer.Option(None, "--device", help="Default torch device of jobs (cpu, cuda); with ray, cuda jobs request a GPU."),
    requeue: bool = typer.Option(False, "--requeue", help="Queue again the jobs a stopped server left running (default: mark them failed, 'interrupted')."),
    max_n: int = typer.Option(10_000, "--max-n", help="The most prompts (n) a job may ask for; larger requests get 422."),
    allow_downloads: bool = typer.Option(False, "--allow-downloads", help="Let jobs name hub models that are not in the "
                                         "local Hugging Face cache (a worker then downloads them)."),
) -> None:
    """Serve circuit discovery over HTTP: a job queue, a run store and the API (OpenAPI docs at /docs)."""
    from circuits.service.app import ServiceConfig, check_exposure, create_app
    from circuits.service.executors import EXECUTORS
    from circuits.service.store import ServerLock

    check_exposure(host, token)
    if executor not in EXECUTORS:
        raise CircuitsError(f"--executor must be one of {', '.join(EXECUTORS)} (got {executor!r})")
    if workers < 1:
        raise CircuitsError(f"--workers must be at least 1 (got {workers})")
    if max_n < 1:
        raise CircuitsError(f"--max-n must be at least 1 (got {max_n})")
    if models_dir is not None and not models_dir.is_dir():
        raise CircuitsError(f"--models-dir {models_dir} is not a folder")
    if executor == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise CircuitsError("--executor ray needs Ray: pip install 'circuits[ray]'") from None
    try:
        import uvicorn
    except ImportError:
        raise CircuitsError("circuits serve needs fastapi and uvicorn: pip install fastapi uvicorn") from None
    root = _store_path(store)
    ServerLock(root).check()
    _port_free(host, port)
    config = ServiceConfig(store=root, host=host, port=port, workers=workers, executor=executor, ray_address=ray_address,
                           token=token, models_dir=models_dir.resolve() if models_dir else None, device=device,
                           requeue=requeue, max_n=max_n, allow_downloads=allow_downloads)
    service = create_app(config)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(f"circuits serve: http://{shown}:{port}  (store {root}, {executor} executor, {workers} worker"
               f"{'s' if workers != 1 else ''}); API docs at http://{shown}:{port}/docs", err=True)
    uvicorn.run(service, host=host, port=port, log_level=os.environ.get("CIRCUITS_LOG_LEVEL", "warning"))


@runs_app.command("list")
def runs_list(
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON list."),
) -> None:
    """The store's runs, newest first: ID, created, task, model, method, faithfulness, edges."""
    from circuits.service.store import Store

    runs = Store.existing(_store_path(store)).list_runs()
    if as_json:
        typer.echo(json.dumps([r.public() for r in runs]))
        return
    if not runs:
        typer.echo("no runs yet")
        return
    typer.echo(f"{'id':12}  {'created':23}  {'task':14} {'model':16} {'method':20} {'faith':>6} {'edges':>11}")
    for r in runs:
        faith = "-" if r.faithfulness is None else f"{r.faithfulness:.3f}"
        typer.echo(f"{r.id:12}  {r.created[:23]:23}  {str(r.task):14} {str(r.model):16} {str(r.method):20} {faith:>6} "
                   f"{f'{r.edges}/{r.edges_total}':>11}")


@runs_app.command("show")
def runs_show(
    run_id: str = typer.Argument(..., metavar="ID", help="A run ID (see `circuits runs list`)."),
    store: Optional[Path] = typer.Option(None, "--store", help=STORE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the run's manifest as JSON."),
) -> None:
    """One run: its folder, files and main results (the manifest with --json)."""
    from circuits.service.store import Store, folder_files

    st = Store.existing(_store_path(store))
    run = st.get_run(run_id)
    folder = st.run_folder(run_id)
    if run is None or folder is None:
        raise CircuitsError(f"no run {run_id!r} in {st.root}; see `circuits runs list`")
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    if as_json:
        typer.echo(json.dumps(manifest))
        return
    typer.echo(f"run {run.id} (job {run.job_id}), created {run.created}")
    typer.echo(f"  {run.task} on {run.model} with {run.method}: {run.edges} of {run.edges_total} edges, "
               f"faithfulness {manifest.get('faithfulness', float('nan')):.3f}")
    if manifest.get("cpr") is not None:
        typer.echo(f"  CPR {manifest['cpr']:.3f}, CMD {manifest['cmd']:.3f}")
    typer.echo(f"  folder {folder}")
    typer.echo(f"  files  {', '.join(folder_files(folder))}")

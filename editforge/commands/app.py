"""editforge app: serve a Gradio page that edits images with one pipeline folder or Hub id."""

from __future__ import annotations

from .arguments import positive_int

HELP = ("Serve a web page (Gradio) that edits images with a pipeline: reward sliders for reward-conditioned "
        "models, a brush for mask models.")


def add_arguments(parser) -> None:
    parser.add_argument("model", metavar="MODEL", help="pipeline folder or Hub id (any diffusers editing pipeline)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=positive_int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--share", action="store_true", help="also serve through a temporary public gradio.live link")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run the code a Hub model ships (local folders that ship code are trusted as given)")
    parser.add_argument("--device", default=None, help="torch device of the pipeline (default: where it loads)")
    parser.add_argument("--max-image-pixels", type=positive_int, default=None, metavar="N",
                        help="refuse uploads of more pixels than this (default: editforge.app.MAX_IMAGE_PIXELS,"
                             " 4096x4096)")


def run(args) -> int:
    from editforge.errors import UsageError

    try:
        from editforge.app import build_app
    except ImportError as err:
        raise UsageError(f"editforge app needs Gradio ({err}): pip install 'editforge[app]'") from None
    from editforge.evaluation.models import load_pipeline, model_specs

    spec = model_specs([args.model])[0]
    spec.trust_remote_code = args.trust_remote_code or None
    pipe = load_pipeline(spec, device=args.device, progress=False)
    demo = build_app(pipe, spec.name, max_image_pixels=args.max_image_pixels)
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, quiet=True, prevent_thread_lock=True)
    where = " and ".join(url for url in (demo.local_url, demo.share_url) if url)
    print(f"editforge app: {spec.name} on {where} (Ctrl+C stops)", flush=True)
    demo.block_thread()
    return 0

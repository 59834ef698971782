"""`priorclip demo`: run the whole pipeline on built-in synthetic data (or a real dataset)."""
from __future__ import annotations

from pathlib import Path

HELP = "run the whole pipeline end to end (built-in synthetic data, or --data DIR)"
DESCRIPTION = """\
Generate a small SYNTHETIC aerial dataset (10 scene classes, 5 captions per image), train the
prior, train small open-domain PriorCLIP (frozen prior, stage 1 + 2, Attribution loss) and the same
CLIP without the prior, with the same pairs and seed,
evaluate both (R@1/5/10 both ways, mR, next to chance), index the images and run a few
example queries. A few minutes on two CPU cores (7 on a busy one). Each run replaces the previous outputs in
--out, except `--serve`, which serves a finished demo of the same settings at once (--rerun to
run it again).

examples:
  priorclip demo                                      # built-in synthetic data
  priorclip demo --serve                              # ... then open http://127.0.0.1:8000/
  priorclip demo --data ../shared/data/ucm-captions --epochs 15 --out ucm-demo   # a real dataset
"""


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="priorclip-demo", help="output folder (default priorclip-demo)")
    parser.add_argument("--data", default=None, help="a Karpathy-layout dataset (dataset.json or its folder) instead of synthetic data")
    parser.add_argument("--labels", default=None, help="scene labels for --data: prefix, csv:PATH, none (default: labels.csv beside it, else prefix)")
    parser.add_argument("--n-per-class", type=int, default=16, help="synthetic images per class (default 16)")
    parser.add_argument("--image-size", type=int, default=96, help="model input size in pixels (default 96)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs of each retrieval model (default 6)")
    parser.add_argument("--prior-epochs", type=int, default=8, help="training epochs of the prior (default 8)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--serve", action="store_true",
                        help="serve the search page on the demo's index (a finished demo in --out with the same "
                             "settings is served without running again)")
    parser.add_argument("--rerun", action="store_true", help="with --serve: run the demo again even if it is finished")
    parser.add_argument("--port", type=int, default=8000)


def run(args) -> int:
    import shutil

    from priorclip.demo import DemoSettings, previous_run, print_next_steps, run_demo, serve_index

    out = Path(args.out)
    settings = DemoSettings(out=out, data=Path(args.data) if args.data else None, labels=args.labels,
                            n_per_class=args.n_per_class, image_size=args.image_size, epochs=args.epochs, prior_epochs=args.prior_epochs,
                            batch_size=args.batch_size, workers=args.workers, seed=args.seed, device=args.device)
    if args.serve and not args.rerun:
        summary, why_not = previous_run(settings)
        if summary is not None:
            print(f"priorclip demo: serving the finished demo in {out}/ (made earlier with the same settings; "
                  "--rerun runs it again)")
            print_next_steps(out / "index")
            serve_index(out / "index", args.port, args.device)
            return 0
        print(f"priorclip demo: {why_not}: running it")
    if (out / "runs").exists():
        print(f"priorclip demo: replacing the previous demo outputs in {out}/")
        shutil.rmtree(out)
    run_demo(settings, serve=args.serve, port=args.port)
    return 0

"""The feature verb: `encode` fills the feature store of one (backbone, dataset)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .args import backbone_args, count_type


def register(sub) -> None:
    p = sub.add_parser("encode", help="fill the feature store of one (backbone, dataset)")
    backbone_args(p)
    p.add_argument("--data-root", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--manifests", nargs="*", default=[], help="manifests whose images to encode (+ views)")
    p.add_argument("--views", type=count_type, default=10, help="augmented views per few-shot train image")
    p.add_argument("--views-only", action="store_true",
                   help="encode only the augmented views (views.pt, views.json): the workflow's rule encode_views")
    p.add_argument("--templates", nargs="*", default=["dataset", "ensemble7"])
    p.add_argument("--out", required=True, help="the store folder: results/features/{backbone}/{dataset}")
    p.add_argument("--workers", type=count_type, default=0)
    p.set_defaults(func=cmd_encode)


def cmd_encode(args) -> int:
    from ..gpus import claim

    claim(args.device)  # before torch touches CUDA: one device of the lock-file pool (see fewclip.gpus)
    from ..data.datasets import Item, load_dataset
    from ..data.fewshot import read_manifest
    from ..engine.device import resolve_device
    from ..engine.features import FeatureStore
    from ..models.backbone import load_backbone

    ds = load_dataset(args.dataset, args.data_root)
    backbone = load_backbone(args.backbone, args.pretrained, resolve_device(args.device))
    store = FeatureStore(Path(args.out), ds, lambda: backbone, args.workers,
                         model=args.backbone, pretrained=args.pretrained)
    if args.views_only and not args.views:
        raise ConfigError("fewclip encode --views-only: --views is 0; ask for at least one view")
    if not args.views_only:
        for t in args.templates:
            store.text(t)
        store.logit_head()  # the fits read it (feature-level methods never load the model)
        store.test()
    train, every = [], []
    for path in args.manifests:
        m = read_manifest(path)
        if m["dataset"] != ds.name:
            raise ConfigError(f"manifest {path} is for {m['dataset']}, not {ds.name}")
        t = [Item(p, lab, ds.classnames[lab]) for p, lab in m["train"]]
        train += t
        every += t + [Item(p, lab, ds.classnames[lab]) for p, lab in m["val"]]
    if every and not args.views_only:
        store.fewshot(every)
    if train and args.views:
        store.views(train, args.views)
    written = {"pretrained": backbone.pretrained, "sha256": backbone.sha256, "views": args.views}
    if args.views:
        store.write_manifest(written, "views.json")
    if not args.views_only:
        store.write_manifest(written)
    print(f"{ds.name}: {store.images_encoded} image encodings written to {args.out}")
    return 0

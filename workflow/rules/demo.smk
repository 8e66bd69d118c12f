# The embedded demo's micro-CLIP: pretrained contrastively on generated image-caption pairs
# (disjoint from the demo datasets' images), deterministic for a seed; encode loads it as a
# local checkpoint (backbones: {micro: {model: fewclip-micro-vit, pretrained: results/demo/micro_clip.pt}}).


rule pretrain_demo:
    """Pretrain the demo's micro-CLIP (CPU, about a minute on 2 cores)."""
    output:
        ckpt="results/demo/micro_clip.pt",
    params:
        seed=config.get("demo_seed", 0),
    threads: 2
    log:
        "logs/pretrain_demo/micro_clip.log",
    benchmark:
        "benchmarks/pretrain_demo/micro_clip.tsv"
    conda:
        "../envs/fewclip.yaml"
    shell:
        "fewclip pretrain-demo --out {output.ckpt:q} --seed {params.seed} > {log:q} 2>&1"

"""CLIP's text transformer without wasted positions (issue 19).

CLIP's text transformer is causal and pools at the end-of-text (EOT) token, so a prompt's feature
depends only on the positions up to its EOT. Two consequences, both exact:

- **No padding**: prompts are grouped by EOT position and each group runs only up to its EOT
  (`length_groups`); the pooled token is the group's last position.
- **Shared prefix**: when the first P positions are the same for every prompt of a group (CoOp's
  [SOS, v₁ … v_M], CoCoOp's [SOS, v₁+h(f) … v_M+h(f)] per image), their hidden states are the same
  too. They are computed once (`prefix` [G, P, w]) and, per layer, their keys/values are
  broadcast to the prompts' own positions (`suffix`), which attend to [prefix; themselves] with a
  lower-right causal mask (a small boolean [n, P + n]).

- **Deep context**: deep text prompts (MaPLe, IVLP/PromptSRC) replace the hidden states at positions
  1..n before a layer. Those positions lie in the shared prefix, before every EOT, so both points
  above still hold: the prefix is computed once per layer with its replaced tokens (`deep`).

Each block is open_clip's `ResidualAttentionBlock` computed from its own weights (ln_1 → in_proj →
scaled_dot_product_attention → out_proj → ls_1 residual → ln_2 → mlp → ls_2 residual), with
`is_causal` instead of an explicit mask, so GPUs can use fused attention kernels. Models whose
blocks or pooling differ fall back to open_clip's own transformer (`encode_text_open_clip`).

Activations are recomputed in the backward (gradient checkpointing per block) only when their
estimated size does not fit: `should_recompute`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

GPU_MEMORY_FRACTION = 0.6  # share of the free GPU memory the text activations may take
CPU_ACTIVATION_BYTES = 2 << 30  # on the CPU (no free-memory figure to trust on a shared machine)


# ----------------------------------------------------------------------------- pooling, groups, counts


def eot_index(model, tokens: torch.Tensor) -> torch.Tensor:
    """The position open_clip's `text_global_pool` reads, per row of `tokens` [N, L]."""
    if getattr(model, "text_pool_type", "argmax") == "eos":
        return (tokens == model.text_eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def length_groups(ends) -> list[tuple[int, torch.Tensor]]:
    """[(end, indices of the prompts whose EOT is at `end`)], by increasing end."""
    ends = torch.as_tensor(ends).cpu()
    return [(int(e), (ends == e).nonzero().flatten()) for e in torch.unique(ends)]


def token_positions(ends, prefix_len: int = 0, groups: int = 1) -> int:
    """Token positions the fast path pushes through the transformer: the shared prefix once per
    group, then every prompt up to its EOT (`ends`: EOT index within the part after the prefix)."""
    ends = torch.as_tensor(ends)
    return groups * (prefix_len + int((ends + 1).sum()))


# ----------------------------------------------------------------------------- memory


def activation_bytes(model, positions: int, keys: int, elem_bytes: int = 4) -> int:
    """Estimate of the activations the backward keeps for `positions` token positions through
    the whole text transformer (`keys`: attention length per query). Per position and layer:
    ~10 width-sized tensors (block input, ln_1 out, q/k/v and the concatenated prefix keys/values,
    attention out, residual, ln_2 in/out), 3 MLP-sized ones (c_fc out, activation in/out) and one
    attention row per head."""
    blocks = model.transformer.resblocks
    width = int(model.ln_final.weight.shape[0])
    mlp = int(blocks[0].mlp.c_fc.out_features)
    heads = int(blocks[0].attn.num_heads)
    return positions * len(blocks) * (10 * width + 3 * mlp + heads * keys) * elem_bytes


def free_memory(device: torch.device) -> int | None:
    """Bytes the next allocations can take on a GPU (driver-free plus PyTorch's cached, unused
    blocks); None on the CPU."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def should_recompute(act_bytes: int, free_bytes: int | None) -> bool:
    """Recompute activations in the backward iff they would not fit: more than
    GPU_MEMORY_FRACTION of the free GPU memory, or (CPU, free_bytes None) CPU_ACTIVATION_BYTES."""
    if free_bytes is None:
        return act_bytes > CPU_ACTIVATION_BYTES
    return act_bytes > GPU_MEMORY_FRACTION * free_bytes


# ----------------------------------------------------------------------------- blocks


def fast_path_supported(model) -> bool:
    """Whether `encode_causal` computes exactly what open_clip's text transformer does: causal
    mask, pooling at the EOT token, plain ResidualAttentionBlocks with packed q/k/v."""
    from open_clip.transformer import ResidualAttentionBlock

    if getattr(model, "attn_mask", None) is None or getattr(model, "text_pool_type", "argmax") not in ("argmax", "eos"):
        return False
    for blk in model.transformer.resblocks:
        attn = blk.attn
        if (type(blk) is not ResidualAttentionBlock or hasattr(blk, "ln_1_kv") or not attn._qkv_same_embed_dim
                or attn.bias_k is not None or attn.add_zero_attn or attn.dropout):
            return False
    return True


def _attend(attn: nn.MultiheadAttention, h: torch.Tensor, past=None):
    """Causal self-attention of `attn` on normalised tokens h [N, n, w], after the keys/values
    `past` ([N, heads, P, w/heads] each) of a shared prefix. Returns (output, (k, v))."""
    N, n, w = h.shape
    H = attn.num_heads
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).view(N, n, 3, H, w // H).permute(2, 0, 3, 1, 4)
    if past is None:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:  # every prefix position is visible, the prompt's own positions causally (lower-right)
        kp, vp = past
        P = kp.shape[2]
        visible = torch.ones(n, P + n, dtype=torch.bool, device=h.device).tril(P)
        out = F.scaled_dot_product_attention(q, torch.cat([kp, k], 2), torch.cat([vp, v], 2), attn_mask=visible)
    out = out.transpose(1, 2).reshape(N, n, w)
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias), (k, v)


def _block(blk, x: torch.Tensor, past=None):
    """open_clip's ResidualAttentionBlock.forward (causal), from its weights."""
    a, kv = _attend(blk.attn, blk.ln_1(x), past)
    x = x + blk.ls_1(a)
    x = x + blk.ls_2(blk.mlp(blk.ln_2(x)))
    return x, kv


def _project(model, pooled: torch.Tensor) -> torch.Tensor:
    """ln_final and the text projection of pooled tokens (ln_final is per token)."""
    pooled = model.ln_final(pooled)
    proj = model.text_projection
    if proj is None:
        return pooled
    return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj


# ----------------------------------------------------------------------------- encoders


def replace_context(x: torch.Tensor, tokens: torch.Tensor, start: int = 1) -> torch.Tensor:
    """x [N, L, w] with positions start..start+n-1 replaced by `tokens` [n, w] (the same for every
    row) or [N, n, w]; start: where the text begins (1 after CLIP's start-of-text token)."""
    tokens = tokens.to(x.dtype)
    if tokens.dim() == 2:
        tokens = tokens.unsqueeze(0).expand(x.shape[0], -1, -1)
    return torch.cat([x[:, :start], tokens, x[:, start + tokens.shape[1]:]], dim=1)


def encode_causal(model, suffix: torch.Tensor, ends, prefix: torch.Tensor | None = None,
                  deep=None, deep_start: int = 1) -> torch.Tensor:
    """Unnormalised text features [G, C, d] of the prompts [prefix[g]; suffix[c]].

    prefix: [G, P, w] token embeddings shared by all C prompts of group g (None: no prefix, G = 1);
    suffix: [C, S, w] token embeddings of each prompt after the prefix (the same for every group);
    ends: [C] index in `suffix` of each prompt's EOT token. Positions after a prompt's EOT are
    never computed. deep: per layer i, None or tokens [n, w] that replace the prefix's positions
    deep_start..deep_start+n-1 before layer i (deep text prompts; they must lie in the prefix)."""
    cast = model.transformer.get_cast_dtype()
    pos = model.positional_embedding.to(cast)
    blocks = model.transformer.resblocks
    G, P = (1, 0) if prefix is None else prefix.shape[:2]
    groups = length_groups(ends)
    grad = torch.is_grad_enabled() and (suffix.requires_grad or (prefix is not None and prefix.requires_grad))
    recompute = model.transformer.grad_checkpointing
    if grad and not recompute:
        n_max = groups[-1][0] + 1
        elem = 2 if torch.is_autocast_enabled(suffix.device.type) else torch.finfo(cast).bits // 8
        positions = G * (P + sum((end + 1) * len(idx) for end, idx in groups))  # = token_positions, no GPU sync
        act = activation_bytes(model, positions, P + n_max, elem)
        recompute = should_recompute(act, free_memory(suffix.device))

    def run(*args):
        return checkpoint(_block, *args, use_reentrant=False) if grad and recompute else _block(*args)

    deep = list(deep or [])
    if any(t is not None and deep_start + t.shape[-2] > P for t in deep):
        raise ValueError("deep text prompts replace positions of the shared prefix: they must end within it")
    past = [None] * len(blocks)
    if P:
        x = prefix.to(cast) + pos[:P]
        for i, blk in enumerate(blocks):
            if i < len(deep) and deep[i] is not None:
                x = replace_context(x, deep[i], deep_start)
            x, past[i] = run(blk, x)
    feats, order = [], []
    for end, idx in groups:
        n, Cg = end + 1, len(idx)
        idx = idx.to(suffix.device)
        x = (suffix[idx, :n].to(cast) + pos[P : P + n]).unsqueeze(0).expand(G, -1, -1, -1).reshape(G * Cg, n, -1)
        for blk, kv in zip(blocks, past):
            if kv is not None:  # the prefix's keys/values, broadcast over the group's prompts
                kv = tuple(t.unsqueeze(1).expand(-1, Cg, -1, -1, -1).flatten(0, 1) for t in kv)
            x, _ = run(blk, x, kv)
        feats.append(x[:, -1].reshape(G, Cg, -1))
        order.append(idx)
    pooled = torch.cat(feats, 1)[:, torch.cat(order).argsort()]
    return _project(model, pooled)


def encode_text_open_clip(model, x: torch.Tensor, tokens: torch.Tensor, deep=None, deep_start: int = 1) -> torch.Tensor:
    """open_clip's own `encode_text` from token embeddings x [N, L, w] (every prompt padded to L,
    explicit mask); unnormalised features [N, d]. The fallback, and the reference of the tests.
    deep: per layer i, None or tokens [n, w] replacing positions deep_start.. before layer i (then
    the blocks run one by one, as the official deep-prompt transformers do). `model`: a text tower
    under CLIP's names (`towers.text_tower`), causal or not, pooled where it pools."""
    from open_clip.transformer import text_global_pool

    cast = model.transformer.get_cast_dtype()
    L = x.shape[1]
    x = x.to(cast) + model.positional_embedding[:L].to(cast)
    mask = model.attn_mask[:L, :L] if model.attn_mask is not None else None
    before = model.transformer.grad_checkpointing
    if torch.is_grad_enabled() and x.requires_grad and not before:
        act = activation_bytes(model, x.shape[0] * L, L, torch.finfo(cast).bits // 8)
        model.transformer.grad_checkpointing = should_recompute(act, free_memory(x.device))
    try:
        if deep is None or all(t is None for t in deep):
            x = model.transformer(x, attn_mask=mask)
        else:
            x = _deep_transformer(model.transformer, x, mask, list(deep), deep_start)
    finally:
        model.transformer.grad_checkpointing = before
    x = model.ln_final(x)
    pooled = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if isinstance(pooled, tuple):  # older open_clip returns (pooled, tokens)
        pooled = pooled[0]
    proj = model.text_projection
    if proj is None:
        return pooled
    return proj(pooled) if isinstance(proj, nn.Linear) else pooled @ proj


def _deep_transformer(transformer, x: torch.Tensor, mask, deep: list, start: int = 1) -> torch.Tensor:
    """open_clip's `Transformer.forward` on [N, L, w], with positions start.. replaced by deep[i]
    before block i."""
    batch_first = getattr(transformer, "batch_first", True)
    for i, blk in enumerate(transformer.resblocks):
        if i < len(deep) and deep[i] is not None:
            x = replace_context(x, deep[i], start)
        if transformer.grad_checkpointing:
            x = checkpoint(blk, x, None, None, mask, use_reentrant=False) if batch_first else checkpoint(
                blk, x.transpose(0, 1), None, None, mask, use_reentrant=False).transpose(0, 1)
        else:
            x = blk(x, attn_mask=mask) if batch_first else blk(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
    return x

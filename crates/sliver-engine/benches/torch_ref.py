"""PyTorch reference for sliver-engine's benchmarks: nanoGPT's model and training step.

The model is nanoGPT's (Karpathy, model.py) at the shakespeare-char CPU configuration: pre-norm
blocks, no biases, dropout 0, tied embeddings, GELU, causal attention via
scaled_dot_product_attention; AdamW (fused off), lr warm-up + cosine, clipping 1.0. The
tokenizer is byte-level (vocabulary 256), like the engine's, so both sides run identical shapes.

  python torch_ref.py speed   --data FILE --steps 30 --threads 2
  python torch_ref.py quality --data FILE --iters 2000 --threads 2 --seed 1337
Prints one JSON object on the last line.
"""
import argparse, json, math, time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(s, d, h):
        super().__init__()
        s.ln_1 = nn.LayerNorm(d, bias=False)
        s.c_attn = nn.Linear(d, 3 * d, bias=False)
        s.c_proj = nn.Linear(d, d, bias=False)
        s.ln_2 = nn.LayerNorm(d, bias=False)
        s.c_fc = nn.Linear(d, 4 * d, bias=False)
        s.mlp_proj = nn.Linear(4 * d, d, bias=False)
        s.h = h

    def forward(s, x):
        B, T, C = x.shape
        q, k, v = s.c_attn(s.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, s.h, C // s.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + s.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + s.mlp_proj(F.gelu(s.c_fc(s.ln_2(x))))


class GPT(nn.Module):
    def __init__(s, vocab=256, n_layer=4, n_head=4, d=128, block=64):
        super().__init__()
        s.wte = nn.Embedding(vocab, d)
        s.wpe = nn.Embedding(block, d)
        s.h = nn.ModuleList([Block(d, n_head) for _ in range(n_layer)])
        s.ln_f = nn.LayerNorm(d, bias=False)
        s.lm_head = nn.Linear(d, vocab, bias=False)
        s.lm_head.weight = s.wte.weight
        for name, p in s.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") or name.endswith("mlp_proj.weight") else 0.02
                nn.init.normal_(p, 0.0, std)

    def forward(s, idx, targets):
        T = idx.shape[1]
        x = s.wte(idx) + s.wpe(torch.arange(T))
        for b in s.h:
            x = b(x)
        logits = s.lm_head(s.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def lr_at(it, lr=1e-3, min_lr=1e-4, warmup=100, decay=2000):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    r = (it - warmup) / (decay - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * r)) * (lr - min_lr)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["speed", "quality"])
    ap.add_argument("--data", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--eval-batches", type=int, default=400)
    ap.add_argument("--seed", type=int, default=1337)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    data = torch.tensor(list(open(a.data, "rb").read()), dtype=torch.long)
    n = int(0.9 * len(data))
    train, val = data[:n], data[n:]

    def batch(src):
        ix = torch.randint(len(src) - a.block - 1, (a.batch,))
        x = torch.stack([src[i:i + a.block] for i in ix])
        y = torch.stack([src[i + 1:i + 1 + a.block] for i in ix])
        return x, y

    model = GPT(block=a.block)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    nodecay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99), fused=False, foreach=True)

    def step(it):
        for g in opt.param_groups:
            g["lr"] = lr_at(it)
        x, y = batch(train)
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    tokens = a.batch * a.block
    if a.mode == "speed":
        for it in range(5):
            step(it)
        t0 = time.perf_counter()
        for it in range(a.steps):
            step(it)
        dt = time.perf_counter() - t0
        print(json.dumps({"ms_per_step": 1000 * dt / a.steps, "tokens_per_s": tokens * a.steps / dt}))
        return
    t0 = time.perf_counter()
    for it in range(a.iters):
        step(it)
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        losses = [model(*batch(val)).item() for _ in range(a.eval_batches)]
    print(json.dumps({"val_loss": sum(losses) / len(losses), "train_s": train_s,
                      "tokens_per_s": tokens * a.iters / train_s}))


if __name__ == "__main__":
    main()
